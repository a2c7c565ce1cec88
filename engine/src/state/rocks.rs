//! The RocksDB keyed state backend: keyed state larger than memory, spilled to an
//! embedded RocksDB database on local disk, with cheap incremental checkpoints.
//!
//! It behaves exactly like [`InMemoryStateBackend`](super::InMemoryStateBackend)
//! (same reads, iteration order, TTL, merge rules on restore and canonical
//! [`StateSnapshot`]); only where the bytes live differs.
//!
//! # Layout
//!
//! All state lives in RocksDB's default column family under keys
//!
//! ```text
//! kg (u16 BE) | state id (u32 BE) | esc(key) | esc(namespace) | user key (maps only)
//! ```
//!
//! where `esc` is an order-preserving, prefix-free escaping (`0x00` → `0x00 0xFF`, then
//! the terminator `0x00 0x01`). So a key-group range is a contiguous key range (cheap to
//! split when rescaling), addresses iterate in `(key group, key, namespace)` byte order
//! like the in-memory backend, and a prefix scan for one address or one key is exact.
//!
//! - Values and map entries are stored as `written_ms (i64 BE) | value bytes`; the write
//!   time (from the backend's [`Clock`]) drives TTL.
//! - A list is one RocksDB value holding `written_ms (i64 BE) | len (u32 BE) | bytes`
//!   per element; [`KeyedStateBackend::list_append`] is a RocksDB *merge* (an
//!   associative concatenation), so appending never reads.
//! - State names map to small numeric ids through a registry (`name → id, kind, ttl`)
//!   kept in the `weir_meta` column family, so it travels with every checkpoint. Ids are
//!   never reused, even after [`KeyedStateBackend::clear_state`].
//!
//! # Memory and durability
//!
//! A memory budget is split between a shared LRU block cache (half) and the
//! memtables (the rest, enforced by a write buffer manager); state beyond that lives in
//! SST files on disk. Writes skip the write-ahead log and are never fsynced: durability
//! comes from checkpoints. [`KeyedStateBackend::prepare_snapshot`] flushes the memtables
//! and takes a RocksDB checkpoint into a sibling directory; its SST files are hard links,
//! immutable, and named uniquely per database instance, so the checkpoint writer uploads
//! only the SST files that an earlier checkpoint of the same [`instance`] did not hold.
//!
//! [`instance`]: RocksDbStateBackend::instance

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor,
    DBCompressionType, DBRawIteratorWithThreadMode, DBWithThreadMode, FlushOptions, MergeOperands,
    Options, ReadOptions, SingleThreaded, WriteBatch, WriteBufferManager, WriteOptions,
    DEFAULT_COLUMN_FAMILY_NAME,
};

use super::backend::{
    KeyIter, KeyedStateBackend, LocalCheckpoint, LocalFile, MapEntryIter, PreparedSnapshot,
    StateKey, ValueIter,
};
use super::key_group::KeyGroupRange;
use super::snapshot::{EntryData, SnapshotEntry, Stamped, StateInfo, StateSnapshot};
use super::StateAddr;
use super::{state_error, Clock, StateDescriptor, StateKind};
use crate::error::{EngineError, Result};

/// The database type: single-threaded column family handling (the backend is used by
/// one subtask at a time).
type Db = DBWithThreadMode<SingleThreaded>;
type RawIter<'a> = DBRawIteratorWithThreadMode<'a, Db>;
type Hasher = ahash::RandomState;

/// The column family of the state registry.
const META_CF: &str = "weir_meta";
/// Registry key prefix of a state: `s | name`.
const META_STATE: u8 = b's';
/// Registry key of the next state id.
const META_NEXT_ID: &[u8] = b"n";
/// The name of the list merge operator (stored in the SST files' properties).
const LIST_MERGE: &str = "weir_list_append";
/// `kg (2) | state id (4)`.
const HEADER: usize = 6;
/// Bytes of the write time in front of every value.
const STAMP: usize = 8;
/// A write batch is written once it holds this many bytes.
const BATCH_BYTES: usize = 4 << 20;
/// The smallest memory budget used, whatever is asked for.
const MIN_BUDGET: usize = 512 << 10;
/// The error context when no state name applies.
const ROCKSDB: &str = "rocksdb";

/// Numbers instances created by this process.
static INSTANCE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A state's registry entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StateMeta {
    id: u32,
    kind: StateKind,
    ttl_ms: Option<i64>,
}

impl StateMeta {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(14);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.push(match self.kind {
            StateKind::Value => 0,
            StateKind::Map => 1,
            StateKind::List => 2,
        });
        match self.ttl_ms {
            None => out.push(0),
            Some(ttl) => {
                out.push(1);
                out.extend_from_slice(&ttl.to_be_bytes());
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<StateMeta> {
        let id = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?);
        let kind = match *bytes.get(4)? {
            0 => StateKind::Value,
            1 => StateKind::Map,
            2 => StateKind::List,
            _ => return None,
        };
        let ttl_ms = match *bytes.get(5)? {
            0 => None,
            1 => Some(i64::from_be_bytes(bytes.get(6..14)?.try_into().ok()?)),
            _ => return None,
        };
        Some(StateMeta { id, kind, ttl_ms })
    }
}

/// Decides whether a stamped value is alive; reads the clock only for TTL states.
#[derive(Debug, Clone, Copy)]
struct Liveness {
    ttl_ms: Option<i64>,
    now: i64,
}

impl Liveness {
    fn alive(&self, written_ms: i64) -> bool {
        match self.ttl_ms {
            None => true,
            Some(ttl) => self.now.saturating_sub(written_ms) < ttl,
        }
    }
}

// ---------------------------------------------------------------------------------
// Key and value encoding.

/// Appends `bytes` escaped (`0x00` → `0x00 0xFF`) and terminated by `0x00 0x01`: the
/// encoding keeps byte order and no encoding is a prefix of another.
fn push_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

/// The offset just after the escaped component starting at `from`.
fn skip_escaped(raw: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        if *raw.get(i)? == 0 {
            match *raw.get(i + 1)? {
                0xFF => {}
                0x01 => return Some(i + 2),
                _ => return None,
            }
            i += 2;
        } else {
            i += 1;
        }
    }
}

/// Decodes an escaped component (terminator included).
fn unescape(escaped: &[u8]) -> Vec<u8> {
    let body = escaped
        .get(..escaped.len().saturating_sub(2))
        .unwrap_or(&[]);
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        out.push(body[i]);
        i += if body[i] == 0 { 2 } else { 1 };
    }
    out
}

fn state_prefix(key_group: u16, id: u32) -> [u8; HEADER] {
    let mut out = [0u8; HEADER];
    out[..2].copy_from_slice(&key_group.to_be_bytes());
    out[2..].copy_from_slice(&id.to_be_bytes());
    out
}

/// `kg | id | esc(key)`: every address of one key.
fn key_prefix(key_group: u16, id: u32, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + key.len() + 16);
    out.extend_from_slice(&state_prefix(key_group, id));
    push_escaped(&mut out, key);
    out
}

/// `kg | id | esc(key) | esc(namespace)`: the RocksDB key of a value or list, the prefix
/// of every entry of a map.
fn address(key_group: u16, id: u32, key: &[u8], namespace: &[u8]) -> Vec<u8> {
    let mut out = key_prefix(key_group, id, key);
    push_escaped(&mut out, namespace);
    out
}

fn map_key(key_group: u16, id: u32, key: &[u8], namespace: &[u8], user_key: &[u8]) -> Vec<u8> {
    let mut out = address(key_group, id, key, namespace);
    out.extend_from_slice(user_key);
    out
}

/// The smallest byte string greater than every string starting with `prefix`, if any.
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < 0xFF {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

/// A parsed RocksDB key of the default column family.
#[derive(Debug, Clone, Copy)]
struct Row<'r> {
    raw: &'r [u8],
    key_group: u16,
    id: u32,
    key_end: usize,
    ns_end: usize,
}

impl<'r> Row<'r> {
    fn parse(raw: &'r [u8]) -> Option<Row<'r>> {
        let (key_group, id) = header(raw)?;
        let key_end = skip_escaped(raw, HEADER)?;
        let ns_end = skip_escaped(raw, key_end)?;
        Some(Row {
            raw,
            key_group,
            id,
            key_end,
            ns_end,
        })
    }

    fn key(&self) -> Vec<u8> {
        unescape(&self.raw[HEADER..self.key_end])
    }

    fn namespace(&self) -> Vec<u8> {
        unescape(self.escaped_namespace())
    }

    fn escaped_namespace(&self) -> &'r [u8] {
        &self.raw[self.key_end..self.ns_end]
    }

    /// `kg | id | esc(key) | esc(namespace)`.
    fn address(&self) -> &'r [u8] {
        &self.raw[..self.ns_end]
    }

    /// The user key of a map entry (empty for values and lists).
    fn user_key(&self) -> &'r [u8] {
        &self.raw[self.ns_end..]
    }
}

/// `(key group, state id)` of a RocksDB key.
fn header(raw: &[u8]) -> Option<(u16, u32)> {
    let kg = u16::from_be_bytes(raw.get(..2)?.try_into().ok()?);
    let id = u32::from_be_bytes(raw.get(2..HEADER)?.try_into().ok()?);
    Some((kg, id))
}

fn stamped(written_ms: i64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(STAMP + value.len());
    out.extend_from_slice(&written_ms.to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// `(written_ms, value)` of a stored value or map entry.
fn split_stamp(raw: &[u8]) -> Option<(i64, &[u8])> {
    let written = i64::from_be_bytes(raw.get(..STAMP)?.try_into().ok()?);
    Some((written, &raw[STAMP..]))
}

fn push_list_item(out: &mut Vec<u8>, written_ms: i64, value: &[u8]) -> Result<()> {
    let len = u32::try_from(value.len())
        .map_err(|_| state_error(ROCKSDB, "a list element is larger than 4 GiB"))?;
    out.extend_from_slice(&written_ms.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    Ok(())
}

/// The elements `(written_ms, value)` of a stored list, oldest first.
fn decode_list(raw: &[u8]) -> Option<Vec<(i64, &[u8])>> {
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let written = i64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
        let len = u32::from_be_bytes(rest.get(8..12)?.try_into().ok()?) as usize;
        let value = rest.get(12..12 + len)?;
        out.push((written, value));
        rest = &rest[12 + len..];
    }
    Some(out)
}

/// The list merge operator: appends the operands (encoded elements) to the list.
fn concat_lists(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let len = existing.map_or(0, <[u8]>::len) + operands.iter().map(<[u8]>::len).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    if let Some(existing) = existing {
        out.extend_from_slice(existing);
    }
    for op in operands {
        out.extend_from_slice(op);
    }
    Some(out)
}

// ---------------------------------------------------------------------------------
// Errors.

fn kind_error(name: &str, is: StateKind, used_as: StateKind) -> EngineError {
    state_error(name, format!("is a {is} state, used as a {used_as} state"))
}

fn db_error(state: &str, op: &str, dir: &Path, e: rocksdb::Error) -> EngineError {
    state_error(
        state,
        format!("rocksdb {op} failed in {}: {e}", dir.display()),
    )
}

fn corrupt(state: &str, what: &str, dir: &Path) -> EngineError {
    state_error(
        state,
        format!("corrupt {what} in rocksdb state at {}", dir.display()),
    )
}

// ---------------------------------------------------------------------------------
// Options.

/// The memory of one database: a block cache and a limit on memtables.
struct Memory {
    cache: Cache,
    write_buffers: WriteBufferManager,
    write_buffer_size: usize,
}

impl Memory {
    fn new(budget_bytes: usize) -> Memory {
        let budget = budget_bytes.max(MIN_BUDGET);
        let cache_bytes = budget / 2;
        let write_bytes = budget - cache_bytes;
        Memory {
            cache: Cache::new_lru_cache(cache_bytes),
            write_buffers: WriteBufferManager::new_write_buffer_manager(write_bytes, false),
            // Two memtables per column family: one filling while one flushes.
            write_buffer_size: (write_bytes / 2).max(64 << 10),
        }
    }

    fn options(&self) -> Options {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&self.cache);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        table.set_bloom_filter(10.0, false);
        // Partitioned index and filters: a large file's whole filter (MBs) would not
        // fit in one shard of the block cache and be read again for every lookup of a
        // key it does not hold (measured: 30x fewer lookups per second once state
        // reached ~100 MB); its partitions (4 KB) are cached like data blocks.
        table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(4096);
        table.set_pin_top_level_index_and_filter(true);
        let mut opts = Options::default();
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_manager(&self.write_buffers);
        opts.set_write_buffer_size(self.write_buffer_size);
        opts.set_max_write_buffer_number(2);
        opts.set_compression_type(DBCompressionType::Lz4);
        opts.set_merge_operator_associative(LIST_MERGE, concat_lists);
        opts.set_keep_log_file_num(2);
        opts.set_max_log_file_size(1 << 20);
        opts
    }

    fn column_families(&self, opts: &Options) -> Vec<ColumnFamilyDescriptor> {
        vec![
            ColumnFamilyDescriptor::new(DEFAULT_COLUMN_FAMILY_NAME, opts.clone()),
            ColumnFamilyDescriptor::new(META_CF, opts.clone()),
        ]
    }
}

fn new_instance_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = INSTANCE_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:x}-{:x}-{n:x}", std::process::id())
}

/// Reads the state registry of a database.
fn read_registry(db: &Db, dir: &Path) -> Result<(HashMap<String, StateMeta, Hasher>, u32)> {
    let cf = db.cf_handle(META_CF).ok_or_else(|| {
        state_error(
            ROCKSDB,
            format!("no {META_CF} column family in {}", dir.display()),
        )
    })?;
    let mut states = HashMap::default();
    let mut next_id = 0u32;
    let mut it = db.raw_iterator_cf_opt(cf, ReadOptions::default());
    it.seek_to_first();
    while let Some((k, v)) = it.item() {
        if k == META_NEXT_ID {
            let b: [u8; 4] = v
                .try_into()
                .map_err(|_| corrupt(ROCKSDB, "next state id", dir))?;
            next_id = next_id.max(u32::from_be_bytes(b));
        } else if k.first() == Some(&META_STATE) {
            let name = String::from_utf8(k[1..].to_vec())
                .map_err(|_| corrupt(ROCKSDB, "state name", dir))?;
            let meta =
                StateMeta::decode(v).ok_or_else(|| corrupt(&name, "state registry entry", dir))?;
            next_id = next_id.max(meta.id.saturating_add(1));
            states.insert(name, meta);
        }
        it.next();
    }
    it.status()
        .map_err(|e| db_error(ROCKSDB, "reading the state registry", dir, e))?;
    Ok((states, next_id))
}

// ---------------------------------------------------------------------------------
// Cursors.

/// Walks the rows of one state over a range of key groups, jumping from key group to
/// key group (the state's rows are contiguous within each key group).
struct StateCursor<'a> {
    it: RawIter<'a>,
    id: u32,
    /// One past the last key group (up to 65536).
    end: u32,
}

impl<'a> StateCursor<'a> {
    fn new(db: &'a Db, id: u32, range: Option<&KeyGroupRange>, fill_cache: bool) -> Self {
        let (start, end) = range.map_or((0, 1 << 16), |r| (r.start, u32::from(r.end)));
        let mut opts = ReadOptions::default();
        opts.fill_cache(fill_cache);
        let mut it = db.raw_iterator_opt(opts);
        it.seek(state_prefix(start, id));
        StateCursor { it, id, end }
    }

    /// Moves to the first row of the state at or after the current position; whether
    /// there is one in the range.
    fn settle(&mut self, dir: &Path) -> Result<bool> {
        loop {
            let (kg, id) = match self.it.key() {
                None => {
                    self.it
                        .status()
                        .map_err(|e| db_error(ROCKSDB, "iterating", dir, e))?;
                    return Ok(false);
                }
                Some(k) => header(k).ok_or_else(|| corrupt(ROCKSDB, "key", dir))?,
            };
            if u32::from(kg) >= self.end {
                return Ok(false);
            }
            match id.cmp(&self.id) {
                std::cmp::Ordering::Equal => return Ok(true),
                std::cmp::Ordering::Less => self.it.seek(state_prefix(kg, self.id)),
                std::cmp::Ordering::Greater => {
                    if kg == u16::MAX {
                        return Ok(false);
                    }
                    self.it.seek(state_prefix(kg + 1, self.id));
                }
            }
        }
    }
}

/// Moves `it` to the first key not starting with `prefix`.
fn skip_prefix(it: &mut RawIter<'_>, prefix: &[u8]) {
    match successor(prefix) {
        Some(next) => it.seek(next),
        None => {
            it.seek_to_last();
            it.next();
        }
    }
}

/// Whether a row holds live data.
fn row_alive(kind: StateKind, value: &[u8], live: Liveness, dir: &Path) -> Result<bool> {
    match kind {
        StateKind::Value | StateKind::Map => split_stamp(value)
            .map(|(w, _)| live.alive(w))
            .ok_or_else(|| corrupt(ROCKSDB, "value", dir)),
        StateKind::List => decode_list(value)
            .map(|l| l.iter().any(|(w, _)| live.alive(*w)))
            .ok_or_else(|| corrupt(ROCKSDB, "list", dir)),
    }
}

/// [`KeyedStateBackend::keys`]: the live addresses of one state.
struct KeysIter<'a> {
    cursor: StateCursor<'a>,
    kind: StateKind,
    live: Liveness,
    dir: &'a Path,
    done: bool,
}

impl KeysIter<'_> {
    fn advance(&mut self) -> Result<Option<StateKey>> {
        loop {
            if !self.cursor.settle(self.dir)? {
                return Ok(None);
            }
            let Some((k, v)) = self.cursor.it.item() else {
                return Ok(None);
            };
            let row = Row::parse(k).ok_or_else(|| corrupt(ROCKSDB, "key", self.dir))?;
            if row_alive(self.kind, v, self.live, self.dir)? {
                let key = StateKey {
                    key_group: row.key_group,
                    key: row.key(),
                    namespace: row.namespace(),
                };
                if self.kind == StateKind::Map {
                    let address = row.address().to_vec();
                    skip_prefix(&mut self.cursor.it, &address);
                } else {
                    self.cursor.it.next();
                }
                return Ok(Some(key));
            }
            self.cursor.it.next();
        }
    }
}

impl Iterator for KeysIter<'_> {
    type Item = Result<StateKey>;

    fn next(&mut self) -> Option<Result<StateKey>> {
        if self.done {
            return None;
        }
        match self.advance() {
            Ok(Some(k)) => Some(Ok(k)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// [`KeyedStateBackend::map_entries`]: the live entries of one map.
struct MapEntries<'a> {
    it: RawIter<'a>,
    prefix_len: usize,
    live: Liveness,
    dir: &'a Path,
    started: bool,
    done: bool,
}

impl<'a> Iterator for MapEntries<'a> {
    type Item = Result<(Cow<'a, [u8]>, Cow<'a, [u8]>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            if self.started {
                self.it.next();
            }
            self.started = true;
            let Some((k, v)) = self.it.item() else {
                self.done = true;
                return match self.it.status() {
                    Ok(()) => None,
                    Err(e) => Some(Err(db_error(ROCKSDB, "iterating a map", self.dir, e))),
                };
            };
            let Some((written, value)) = split_stamp(v) else {
                self.done = true;
                return Some(Err(corrupt(ROCKSDB, "map entry", self.dir)));
            };
            if self.live.alive(written) {
                let user_key = k.get(self.prefix_len..).unwrap_or(&[]).to_vec();
                return Some(Ok((Cow::Owned(user_key), Cow::Owned(value.to_vec()))));
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// The backend.

/// Keyed state in an embedded RocksDB database, for state larger than memory. It
/// behaves exactly like [`InMemoryStateBackend`](super::InMemoryStateBackend): same
/// reads, iteration order, TTL, restore merge rules and canonical snapshots.
///
/// Keys are laid out as `kg (u16 BE) | state id (u32 BE) | esc(key) | esc(namespace) |
/// user key`, with an order-preserving escaping, so that a key-group range is a
/// contiguous key range. A memory budget bounds the block cache (half) and memtables
/// (the rest); the rest of the state lives in SST files. Writes skip the WAL:
/// durability comes from checkpoints, which [`KeyedStateBackend::prepare_snapshot`]
/// takes as a RocksDB checkpoint (hard-linked SST files) in the sibling directory
/// `<dir>.chk-<epoch>`.
pub struct RocksDbStateBackend {
    db: Db,
    dir: PathBuf,
    instance: String,
    clock: Arc<dyn Clock>,
    memory: Memory,
    read_opts: ReadOptions,
    write_opts: WriteOptions,
    /// The registry: state name -> id, kind, TTL.
    states: HashMap<String, StateMeta, Hasher>,
    next_id: u32,
}

impl std::fmt::Debug for RocksDbStateBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksDbStateBackend")
            .field("dir", &self.dir)
            .field("instance", &self.instance)
            .field("states", &self.states.len())
            .finish_non_exhaustive()
    }
}

impl RocksDbStateBackend {
    /// A new empty database in `dir` (created; an existing dir is removed first), with a
    /// fresh unique instance id. `memory_budget_bytes` bounds the block cache and the
    /// memtables (at least 512 KiB is used); state beyond it spills to disk.
    pub fn create(dir: &Path, memory_budget_bytes: usize, clock: Arc<dyn Clock>) -> Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .map_err(|e| EngineError::io("remove old state dir", dir, e))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| EngineError::io("create state dir", dir, e))?;
        let backend = Self::open(dir, new_instance_id(), true, memory_budget_bytes, clock)?;
        tracing::debug!(dir = %backend.dir.display(), instance = %backend.instance, "created rocksdb state backend");
        Ok(backend)
    }

    /// Opens a database whose files were downloaded from a checkpoint into `dir`,
    /// keeping `instance` as its instance id so that its SST files already in storage
    /// are not uploaded again.
    ///
    /// RocksDB numbers new files on from the checkpoint's manifest. If files of this
    /// instance *newer* than the restored checkpoint reached storage (a later
    /// checkpoint, complete or not), a new SST file may get the name of one of them with
    /// other contents: restore an instance from its latest checkpoint, or have the
    /// checkpoint writer not trust such names.
    pub fn open_restored(
        dir: &Path,
        instance: &str,
        memory_budget_bytes: usize,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        if !dir.is_dir() {
            return Err(EngineError::io(
                "open restored state dir",
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            ));
        }
        let backend = Self::open(dir, instance.to_string(), false, memory_budget_bytes, clock)?;
        tracing::debug!(
            dir = %backend.dir.display(),
            instance = %backend.instance,
            states = backend.states.len(),
            "opened restored rocksdb state backend"
        );
        Ok(backend)
    }

    fn open(
        dir: &Path,
        instance: String,
        create: bool,
        memory_budget_bytes: usize,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let dir = dir
            .canonicalize()
            .map_err(|e| EngineError::io("resolve state dir", dir, e))?;
        let memory = Memory::new(memory_budget_bytes);
        let mut opts = memory.options();
        opts.create_if_missing(create);
        opts.create_missing_column_families(true);
        let cfs = memory.column_families(&opts);
        let db = Db::open_cf_descriptors(&opts, &dir, cfs)
            .map_err(|e| db_error(ROCKSDB, "open", &dir, e))?;
        let (states, next_id) = read_registry(&db, &dir)?;
        let mut write_opts = WriteOptions::default();
        write_opts.disable_wal(true);
        write_opts.set_sync(false);
        Ok(RocksDbStateBackend {
            db,
            dir,
            instance,
            clock,
            memory,
            read_opts: ReadOptions::default(),
            write_opts,
            states,
            next_id,
        })
    }

    /// Adds every entry of the key groups in `range` from the database files in
    /// `other_dir` (a checkpoint of another subtask, e.g. after a change of
    /// parallelism), opened read-only. The merge rules are those of
    /// [`KeyedStateBackend::restore`]: an address present in both keeps the imported
    /// value, maps are merged (imported entries win) and lists appended. States are
    /// matched by name; a kind conflict is an error before anything changes.
    pub fn import_range(&mut self, other_dir: &Path, range: &KeyGroupRange) -> Result<()> {
        if !other_dir.is_dir() {
            return Err(EngineError::io(
                "open state checkpoint to import",
                other_dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            ));
        }
        let opts = self.memory.options();
        let cfs = self.memory.column_families(&opts);
        let other = Db::open_cf_descriptors_read_only(&opts, other_dir, cfs, false)
            .map_err(|e| db_error(ROCKSDB, "open read-only for import", other_dir, e))?;
        let (other_states, _) = read_registry(&other, other_dir)?;
        for (name, meta) in &other_states {
            if let Some(mine) = self.states.get(name) {
                if mine.kind != meta.kind {
                    return Err(kind_error(name, mine.kind, meta.kind));
                }
            }
        }
        let mut names: Vec<(&String, &StateMeta)> = other_states.iter().collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        let mut batch = WriteBatch::default();
        let mut rows = 0usize;
        for (name, meta) in names {
            let mut my_id = self.states.get(name).map(|m| m.id);
            let mut cursor = StateCursor::new(&other, meta.id, Some(range), false);
            while cursor.settle(other_dir)? {
                let Some((k, v)) = cursor.it.item() else {
                    break;
                };
                let id = match my_id {
                    Some(id) => id,
                    None => {
                        let id = self.insert_state(name, meta.kind, meta.ttl_ms)?;
                        my_id = Some(id);
                        id
                    }
                };
                let (kg, _) = header(k).ok_or_else(|| corrupt(name, "key", other_dir))?;
                let mut key = Vec::with_capacity(k.len());
                key.extend_from_slice(&state_prefix(kg, id));
                key.extend_from_slice(&k[HEADER..]);
                match meta.kind {
                    StateKind::List => batch.merge(key, v),
                    StateKind::Value | StateKind::Map => batch.put(key, v),
                }
                rows += 1;
                self.write_if_full(&mut batch)?;
                cursor.it.next();
            }
        }
        self.write(batch, "import")?;
        tracing::debug!(
            from = %other_dir.display(),
            into = %self.dir.display(),
            range = ?range,
            rows,
            "imported rocksdb state"
        );
        Ok(())
    }

    /// Identifies this database instance: its SST files are known by `(instance, name)`.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The database directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn meta_cf(&self) -> Result<&ColumnFamily> {
        self.db
            .cf_handle(META_CF)
            .ok_or_else(|| state_error(ROCKSDB, format!("no {META_CF} column family")))
    }

    fn db_err(&self, state: &str, op: &str, e: rocksdb::Error) -> EngineError {
        db_error(state, op, &self.dir, e)
    }

    fn liveness(&self, ttl_ms: Option<i64>) -> Liveness {
        Liveness {
            ttl_ms,
            now: if ttl_ms.is_some() {
                self.clock.now_ms()
            } else {
                0
            },
        }
    }

    /// The registry entry of `state` if it exists, after checking its kind.
    fn lookup(&self, state: &StateDescriptor, kind: StateKind) -> Result<Option<StateMeta>> {
        match self.states.get(&state.name) {
            Some(m) if m.kind != kind => Err(kind_error(&state.name, m.kind, kind)),
            other => Ok(other.copied()),
        }
    }

    /// The id of `state` for a write: registered if missing; the kind is checked and
    /// the TTL updated to the descriptor's.
    fn register(&mut self, state: &StateDescriptor, kind: StateKind) -> Result<u32> {
        let ttl_ms = state.ttl_ms();
        let Some(meta) = self.states.get_mut(&state.name) else {
            return self.insert_state(&state.name, kind, ttl_ms);
        };
        if meta.kind != kind {
            return Err(kind_error(&state.name, meta.kind, kind));
        }
        let id = meta.id;
        if meta.ttl_ms != ttl_ms {
            meta.ttl_ms = ttl_ms;
            let meta = *meta;
            let cf = self.meta_cf()?;
            self.db
                .put_cf_opt(cf, meta_key(&state.name), meta.encode(), &self.write_opts)
                .map_err(|e| self.db_err(&state.name, "register state", e))?;
        }
        Ok(id)
    }

    /// Registers a new state under a fresh id.
    fn insert_state(&mut self, name: &str, kind: StateKind, ttl_ms: Option<i64>) -> Result<u32> {
        let id = self.next_id;
        let next = id
            .checked_add(1)
            .ok_or_else(|| state_error(name, "no state ids left"))?;
        let meta = StateMeta { id, kind, ttl_ms };
        let cf = self.meta_cf()?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf, meta_key(name), meta.encode());
        batch.put_cf(cf, META_NEXT_ID, next.to_be_bytes());
        self.db
            .write_opt(batch, &self.write_opts)
            .map_err(|e| self.db_err(name, "register state", e))?;
        self.next_id = next;
        self.states.insert(name.to_string(), meta);
        Ok(id)
    }

    fn write(&self, batch: WriteBatch, op: &str) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.db
            .write_opt(batch, &self.write_opts)
            .map_err(|e| self.db_err(ROCKSDB, op, e))
    }

    fn write_if_full(&self, batch: &mut WriteBatch) -> Result<()> {
        if batch.size_in_bytes() >= BATCH_BYTES {
            self.write(std::mem::take(batch), "write batch")?;
        }
        Ok(())
    }

    fn get(&self, state: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db
            .get_pinned_opt(key, &self.read_opts)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.db_err(state, "get", e))
    }

    /// An iterator over the keys starting with `prefix`, positioned on the first.
    fn prefix_iter(&self, prefix: &[u8]) -> RawIter<'_> {
        let mut opts = ReadOptions::default();
        if let Some(end) = successor(prefix) {
            opts.set_iterate_upper_bound(end);
        }
        let mut it = self.db.raw_iterator_opt(opts);
        it.seek(prefix);
        it
    }

    /// Deletes every key starting with `prefix` through `batch`; how many.
    fn delete_prefix(&self, prefix: &[u8], batch: &mut WriteBatch) -> Result<usize> {
        let mut it = self.prefix_iter(prefix);
        let mut n = 0;
        while let Some(k) = it.key() {
            batch.delete(k);
            n += 1;
            it.next();
        }
        it.status()
            .map_err(|e| self.db_err(ROCKSDB, "iterating for delete", e))?;
        Ok(n)
    }

    /// Writes a list (with one write time for all values).
    fn encode_list(now: i64, values: &[&[u8]]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(values.iter().map(|v| 12 + v.len()).sum());
        for v in values {
            push_list_item(&mut out, now, v)?;
        }
        Ok(out)
    }

    fn flush(&self) -> Result<()> {
        let mut fo = FlushOptions::default();
        fo.set_wait(true);
        let meta = self.meta_cf()?;
        self.db
            .flush_opt(&fo)
            .map_err(|e| self.db_err(ROCKSDB, "flush", e))?;
        self.db
            .flush_cf_opt(meta, &fo)
            .map_err(|e| self.db_err(ROCKSDB, "flush registry", e))
    }

    fn checkpoint_dir(&self, epoch: u64) -> Result<PathBuf> {
        let name = self.dir.file_name().ok_or_else(|| {
            state_error(
                ROCKSDB,
                format!("state dir {} has no name", self.dir.display()),
            )
        })?;
        let mut name = name.to_os_string();
        name.push(format!(".chk-{epoch}"));
        Ok(self.dir.with_file_name(name))
    }
}

fn meta_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(META_STATE);
    k.extend_from_slice(name.as_bytes());
    k
}

impl KeyedStateBackend for RocksDbStateBackend {
    fn value_get<'a>(
        &'a self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
    ) -> Result<Option<Cow<'a, [u8]>>> {
        let StateAddr {
            key_group,
            key,
            namespace,
        } = addr;
        let Some(meta) = self.lookup(state, StateKind::Value)? else {
            return Ok(None);
        };
        let live = self.liveness(state.ttl_ms());
        let raw = self
            .db
            .get_pinned_opt(address(key_group, meta.id, key, namespace), &self.read_opts)
            .map_err(|e| self.db_err(&state.name, "get", e))?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let (written, value) =
            split_stamp(&raw).ok_or_else(|| corrupt(&state.name, "value", &self.dir))?;
        Ok(live.alive(written).then(|| Cow::Owned(value.to_vec())))
    }

    fn value_put(
        &mut self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        value: &[u8],
    ) -> Result<()> {
        let StateAddr {
            key_group,
            key,
            namespace,
        } = addr;
        let now = self.clock.now_ms();
        let id = self.register(state, StateKind::Value)?;
        self.db
            .put_opt(
                address(key_group, id, key, namespace),
                stamped(now, value),
                &self.write_opts,
            )
            .map_err(|e| self.db_err(&state.name, "put", e))
    }

    fn map_get<'a>(
        &'a self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        user_key: &[u8],
    ) -> Result<Option<Cow<'a, [u8]>>> {
        let StateAddr {
            key_group,
            key,
            namespace,
        } = addr;
        let Some(meta) = self.lookup(state, StateKind::Map)? else {
            return Ok(None);
        };
        let live = self.liveness(state.ttl_ms());
        let raw = self
            .db
            .get_pinned_opt(
                map_key(key_group, meta.id, key, namespace, user_key),
                &self.read_opts,
            )
            .map_err(|e| self.db_err(&state.name, "get", e))?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let (written, value) =
            split_stamp(&raw).ok_or_else(|| corrupt(&state.name, "map entry", &self.dir))?;
        Ok(live.alive(written).then(|| Cow::Owned(value.to_vec())))
    }

    fn map_put(
        &mut self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        user_key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        let StateAddr {
            key_group,
            key,
            namespace,
        } = addr;
        let now = self.clock.now_ms();
        let id = self.register(state, StateKind::Map)?;
        self.db
            .put_opt(
                map_key(key_group, id, key, namespace, user_key),
                stamped(now, value),
                &self.write_opts,
            )
            .map_err(|e| self.db_err(&state.name, "put", e))
    }

    fn map_remove(
        &mut self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        user_key: &[u8],
    ) -> Result<bool> {
        let StateAddr {
            key_group,
            key,
            namespace,
        } = addr;
        let live = self.liveness(state.ttl_ms());
        let Some(meta) = self.lookup(state, StateKind::Map)? else {
            return Ok(false);
        };
        let k = map_key(key_group, meta.id, key, namespace, user_key);
        let Some(raw) = self.get(&state.name, &k)? else {
            return Ok(false);
        };
        let (written, _) =
            split_stamp(&raw).ok_or_else(|| corrupt(&state.name, "map entry", &self.dir))?;
        self.db
            .delete_opt(&k, &self.write_opts)
            .map_err(|e| self.db_err(&state.name, "delete", e))?;
        Ok(live.alive(written))
    }

    fn map_entries<'a>(
        &'a self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
    ) -> Result<MapEntryIter<'a>> {
        self.map_entries_from(state, addr, &[])
    }

    fn map_entries_from<'a>(
        &'a self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        from: &[u8],
    ) -> Result<MapEntryIter<'a>> {
        let StateAddr {
            key_group,
            key,
            namespace,
        } = addr;
        let Some(meta) = self.lookup(state, StateKind::Map)? else {
            return Ok(Box::new(std::iter::empty()));
        };
        let live = self.liveness(state.ttl_ms());
        let prefix = address(key_group, meta.id, key, namespace);
        let mut it = self.prefix_iter(&prefix);
        let mut start = prefix.clone();
        start.extend_from_slice(from);
        it.seek(&start);
        Ok(Box::new(MapEntries {
            it,
            prefix_len: prefix.len(),
            live,
            dir: &self.dir,
            started: false,
            done: false,
        }))
    }

    fn list_append(
        &mut self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        value: &[u8],
    ) -> Result<()> {
        let StateAddr {
            key_group,
            key,
            namespace,
        } = addr;
        let now = self.clock.now_ms();
        let id = self.register(state, StateKind::List)?;
        let mut item = Vec::with_capacity(12 + value.len());
        push_list_item(&mut item, now, value)?;
        self.db
            .merge_opt(
                address(key_group, id, key, namespace),
                item,
                &self.write_opts,
            )
            .map_err(|e| self.db_err(&state.name, "append", e))
    }

    fn list_get<'a>(
        &'a self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
    ) -> Result<ValueIter<'a>> {
        let StateAddr {
            key_group,
            key,
            namespace,
        } = addr;
        let Some(meta) = self.lookup(state, StateKind::List)? else {
            return Ok(Box::new(std::iter::empty()));
        };
        let live = self.liveness(state.ttl_ms());
        let raw = self
            .db
            .get_pinned_opt(address(key_group, meta.id, key, namespace), &self.read_opts)
            .map_err(|e| self.db_err(&state.name, "get", e))?;
        let Some(raw) = raw else {
            return Ok(Box::new(std::iter::empty()));
        };
        let values: Vec<Result<Cow<'a, [u8]>>> = decode_list(&raw)
            .ok_or_else(|| corrupt(&state.name, "list", &self.dir))?
            .into_iter()
            .filter(|(w, _)| live.alive(*w))
            .map(|(_, v)| Ok(Cow::Owned(v.to_vec())))
            .collect();
        Ok(Box::new(values.into_iter()))
    }

    fn list_replace(
        &mut self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        values: &[&[u8]],
    ) -> Result<()> {
        let StateAddr {
            key_group,
            key,
            namespace,
        } = addr;
        if values.is_empty() {
            // Still checks the kind.
            self.lookup(state, StateKind::List)?;
            return self.clear(state, addr);
        }
        let now = self.clock.now_ms();
        let id = self.register(state, StateKind::List)?;
        self.db
            .put_opt(
                address(key_group, id, key, namespace),
                Self::encode_list(now, values)?,
                &self.write_opts,
            )
            .map_err(|e| self.db_err(&state.name, "put", e))
    }

    fn clear(&mut self, state: &StateDescriptor, addr: StateAddr<'_>) -> Result<()> {
        let StateAddr {
            key_group,
            key,
            namespace,
        } = addr;
        let Some(meta) = self.states.get(&state.name).copied() else {
            return Ok(());
        };
        let addr = address(key_group, meta.id, key, namespace);
        match meta.kind {
            StateKind::Value | StateKind::List => self
                .db
                .delete_opt(&addr, &self.write_opts)
                .map_err(|e| self.db_err(&state.name, "delete", e)),
            StateKind::Map => {
                let mut batch = WriteBatch::default();
                self.delete_prefix(&addr, &mut batch)?;
                self.write(batch, "clear")
            }
        }
    }

    fn clear_namespace(&mut self, state: &StateDescriptor, namespace: &[u8]) -> Result<usize> {
        let Some(meta) = self.states.get(&state.name).copied() else {
            return Ok(0);
        };
        let mut wanted = Vec::with_capacity(namespace.len() + 4);
        push_escaped(&mut wanted, namespace);
        let mut batch = WriteBatch::default();
        let mut removed = 0;
        let mut last: Option<Vec<u8>> = None;
        let mut cursor = StateCursor::new(&self.db, meta.id, None, false);
        while cursor.settle(&self.dir)? {
            let Some(k) = cursor.it.key() else {
                break;
            };
            let row = Row::parse(k).ok_or_else(|| corrupt(&state.name, "key", &self.dir))?;
            if row.escaped_namespace() == wanted.as_slice() {
                batch.delete(k);
                if last.as_deref() != Some(row.address()) {
                    removed += 1;
                    last = Some(row.address().to_vec());
                }
                self.write_if_full(&mut batch)?;
            }
            cursor.it.next();
        }
        drop(cursor);
        self.write(batch, "clear namespace")?;
        Ok(removed)
    }

    fn clear_state(&mut self, state: &StateDescriptor) -> Result<()> {
        let Some(meta) = self.states.get(&state.name).copied() else {
            return Ok(());
        };
        let mut batch = WriteBatch::default();
        let mut cursor = StateCursor::new(&self.db, meta.id, None, false);
        while cursor.settle(&self.dir)? {
            let Some((kg, _)) = cursor.it.key().and_then(header) else {
                break;
            };
            let from = state_prefix(kg, meta.id);
            match successor(&from) {
                Some(to) => {
                    batch.delete_range(from.to_vec(), to);
                }
                None => {
                    // kg 0xFFFF and id u32::MAX: the very last keys; delete one by one.
                    while let Some(k) = cursor.it.key() {
                        batch.delete(k);
                        cursor.it.next();
                    }
                    break;
                }
            }
            if kg == u16::MAX {
                break;
            }
            cursor.it.seek(state_prefix(kg + 1, meta.id));
        }
        drop(cursor);
        let cf = self.meta_cf()?;
        batch.delete_cf(cf, meta_key(&state.name));
        self.db
            .write_opt(batch, &self.write_opts)
            .map_err(|e| self.db_err(&state.name, "clear state", e))?;
        self.states.remove(&state.name);
        Ok(())
    }

    fn keys<'a>(&'a self, state: &StateDescriptor) -> Result<KeyIter<'a>> {
        let Some(meta) = self.states.get(&state.name).copied() else {
            return Ok(Box::new(std::iter::empty()));
        };
        Ok(Box::new(KeysIter {
            cursor: StateCursor::new(&self.db, meta.id, None, true),
            kind: meta.kind,
            live: self.liveness(state.ttl_ms()),
            dir: &self.dir,
            done: false,
        }))
    }

    fn namespaces(
        &self,
        state: &StateDescriptor,
        key_group: u16,
        key: &[u8],
    ) -> Result<Vec<Vec<u8>>> {
        let Some(meta) = self.states.get(&state.name).copied() else {
            return Ok(Vec::new());
        };
        let live = self.liveness(state.ttl_ms());
        let mut it = self.prefix_iter(&key_prefix(key_group, meta.id, key));
        let mut out = Vec::new();
        while let Some((k, v)) = it.item() {
            let row = Row::parse(k).ok_or_else(|| corrupt(&state.name, "key", &self.dir))?;
            if row_alive(meta.kind, v, live, &self.dir)? {
                out.push(row.namespace());
                let address = row.address().to_vec();
                skip_prefix(&mut it, &address);
            } else {
                it.next();
            }
        }
        it.status()
            .map_err(|e| self.db_err(&state.name, "iterating namespaces", e))?;
        Ok(out)
    }

    fn states(&self) -> Vec<StateInfo> {
        let mut states: Vec<StateInfo> = self
            .states
            .iter()
            .map(|(name, m)| StateInfo {
                name: name.clone(),
                kind: m.kind,
                ttl_ms: m.ttl_ms,
            })
            .collect();
        states.sort_by(|a, b| a.name.cmp(&b.name));
        states
    }

    fn purge_expired(&mut self) -> Result<usize> {
        let now = self.clock.now_ms();
        let ttl_states: HashMap<u32, (StateKind, Liveness), Hasher> = self
            .states
            .values()
            .filter_map(|m| {
                m.ttl_ms.map(|ttl| {
                    (
                        m.id,
                        (
                            m.kind,
                            Liveness {
                                ttl_ms: Some(ttl),
                                now,
                            },
                        ),
                    )
                })
            })
            .collect();
        if ttl_states.is_empty() {
            return Ok(0);
        }
        let mut dropped = 0;
        let mut batch = WriteBatch::default();
        let mut opts = ReadOptions::default();
        opts.fill_cache(false);
        let mut it = self.db.raw_iterator_opt(opts);
        it.seek_to_first();
        while let Some((k, v)) = it.item() {
            let (kg, id) = header(k).ok_or_else(|| corrupt(ROCKSDB, "key", &self.dir))?;
            let Some(&(kind, live)) = ttl_states.get(&id) else {
                // A state without TTL: skip its rows in this key group.
                skip_prefix(&mut it, &state_prefix(kg, id));
                continue;
            };
            match kind {
                StateKind::Value | StateKind::Map => {
                    let (written, _) =
                        split_stamp(v).ok_or_else(|| corrupt(ROCKSDB, "value", &self.dir))?;
                    if !live.alive(written) {
                        batch.delete(k);
                        dropped += 1;
                    }
                }
                StateKind::List => {
                    let items =
                        decode_list(v).ok_or_else(|| corrupt(ROCKSDB, "list", &self.dir))?;
                    let kept: Vec<&(i64, &[u8])> =
                        items.iter().filter(|(w, _)| live.alive(*w)).collect();
                    if kept.len() < items.len() {
                        dropped += items.len() - kept.len();
                        if kept.is_empty() {
                            batch.delete(k);
                        } else {
                            let mut out = Vec::with_capacity(v.len());
                            for (w, value) in kept {
                                push_list_item(&mut out, *w, value)?;
                            }
                            batch.put(k, out);
                        }
                    }
                }
            }
            self.write_if_full(&mut batch)?;
            it.next();
        }
        it.status()
            .map_err(|e| self.db_err(ROCKSDB, "iterating for purge", e))?;
        drop(it);
        self.write(batch, "purge expired")?;
        Ok(dropped)
    }

    fn approximate_size_bytes(&self) -> usize {
        let prop =
            |name: &str| -> u64 { self.db.property_int_value(name).ok().flatten().unwrap_or(0) };
        let bytes = prop("rocksdb.estimate-live-data-size")
            .saturating_add(prop("rocksdb.cur-size-all-mem-tables"));
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }

    fn snapshot(&self) -> Result<StateSnapshot> {
        let mut snapshot = StateSnapshot::new();
        let now = self.clock.now_ms();
        // State id -> (index in the snapshot, kind, liveness).
        let mut by_id: HashMap<u32, (u32, StateKind, Liveness), Hasher> = HashMap::default();
        for info in self.states() {
            let index = snapshot.ensure_state(&info)?;
            if let Some(meta) = self.states.get(&info.name) {
                let live = Liveness {
                    ttl_ms: meta.ttl_ms,
                    now,
                };
                by_id.insert(meta.id, (index, meta.kind, live));
            }
        }
        // A map being collected: (key group, its address, the entry so far).
        let mut pending: Option<(u16, Vec<u8>, SnapshotEntry)> = None;
        let finish = |snapshot: &mut StateSnapshot,
                      pending: Option<(u16, Vec<u8>, SnapshotEntry)>| {
            if let Some((kg, _, entry)) = pending {
                if matches!(&entry.data, EntryData::Map(m) if !m.is_empty()) {
                    snapshot.key_group_mut(kg).entries.push(entry);
                }
            }
        };
        let mut opts = ReadOptions::default();
        opts.fill_cache(false);
        let mut it = self.db.raw_iterator_opt(opts);
        it.seek_to_first();
        while let Some((k, v)) = it.item() {
            let row = Row::parse(k).ok_or_else(|| corrupt(ROCKSDB, "key", &self.dir))?;
            let Some(&(index, kind, live)) = by_id.get(&row.id) else {
                // Rows of no registered state (cannot happen): skip them.
                let prefix = state_prefix(row.key_group, row.id);
                skip_prefix(&mut it, &prefix);
                continue;
            };
            match kind {
                StateKind::Value => {
                    let (written, value) =
                        split_stamp(v).ok_or_else(|| corrupt(ROCKSDB, "value", &self.dir))?;
                    if live.alive(written) {
                        snapshot
                            .key_group_mut(row.key_group)
                            .entries
                            .push(SnapshotEntry {
                                state: index,
                                key: row.key(),
                                namespace: row.namespace(),
                                data: EntryData::Value(Stamped {
                                    value: value.to_vec(),
                                    written_ms: written,
                                }),
                            });
                    }
                }
                StateKind::List => {
                    let values: Vec<Stamped> = decode_list(v)
                        .ok_or_else(|| corrupt(ROCKSDB, "list", &self.dir))?
                        .into_iter()
                        .filter(|(w, _)| live.alive(*w))
                        .map(|(w, value)| Stamped {
                            value: value.to_vec(),
                            written_ms: w,
                        })
                        .collect();
                    if !values.is_empty() {
                        snapshot
                            .key_group_mut(row.key_group)
                            .entries
                            .push(SnapshotEntry {
                                state: index,
                                key: row.key(),
                                namespace: row.namespace(),
                                data: EntryData::List(values),
                            });
                    }
                }
                StateKind::Map => {
                    let (written, value) =
                        split_stamp(v).ok_or_else(|| corrupt(ROCKSDB, "map entry", &self.dir))?;
                    let same = pending
                        .as_ref()
                        .is_some_and(|(_, addr, _)| addr.as_slice() == row.address());
                    if !same {
                        finish(&mut snapshot, pending.take());
                        pending = Some((
                            row.key_group,
                            row.address().to_vec(),
                            SnapshotEntry {
                                state: index,
                                key: row.key(),
                                namespace: row.namespace(),
                                data: EntryData::Map(Vec::new()),
                            },
                        ));
                    }
                    if live.alive(written) {
                        if let Some((
                            _,
                            _,
                            SnapshotEntry {
                                data: EntryData::Map(m),
                                ..
                            },
                        )) = pending.as_mut()
                        {
                            m.push((
                                row.user_key().to_vec(),
                                Stamped {
                                    value: value.to_vec(),
                                    written_ms: written,
                                },
                            ));
                        }
                    }
                }
            }
            it.next();
        }
        it.status()
            .map_err(|e| self.db_err(ROCKSDB, "iterating for snapshot", e))?;
        finish(&mut snapshot, pending.take());
        snapshot.key_groups.retain(|g| !g.entries.is_empty());
        for g in &mut snapshot.key_groups {
            g.entries.sort_by(|a, b| {
                (a.state, &a.key, &a.namespace).cmp(&(b.state, &b.key, &b.namespace))
            });
        }
        Ok(snapshot)
    }

    fn restore(&mut self, snapshot: &StateSnapshot, range: &KeyGroupRange) -> Result<()> {
        snapshot.validate()?;
        // Check every state's kind before changing anything.
        for info in &snapshot.states {
            if let Some(m) = self.states.get(&info.name) {
                if m.kind != info.kind {
                    return Err(kind_error(&info.name, m.kind, info.kind));
                }
            }
        }
        let mut batch = WriteBatch::default();
        for group in &snapshot.key_groups {
            if !range.contains(group.key_group) {
                continue;
            }
            for e in &group.entries {
                let info = snapshot
                    .states
                    .get(e.state as usize)
                    .ok_or_else(|| state_error("snapshot", "unknown state index"))?;
                let id = match self.states.get(&info.name) {
                    Some(m) => m.id,
                    None => self.insert_state(&info.name, info.kind, info.ttl_ms)?,
                };
                let addr = address(group.key_group, id, &e.key, &e.namespace);
                match &e.data {
                    EntryData::Value(s) => batch.put(&addr, stamped(s.written_ms, &s.value)),
                    EntryData::Map(entries) => {
                        for (user_key, s) in entries {
                            let mut k = Vec::with_capacity(addr.len() + user_key.len());
                            k.extend_from_slice(&addr);
                            k.extend_from_slice(user_key);
                            batch.put(k, stamped(s.written_ms, &s.value));
                        }
                    }
                    EntryData::List(values) => {
                        if !values.is_empty() {
                            let mut out = Vec::new();
                            for s in values {
                                push_list_item(&mut out, s.written_ms, &s.value)?;
                            }
                            batch.merge(&addr, out);
                        }
                    }
                }
                self.write_if_full(&mut batch)?;
            }
        }
        self.write(batch, "restore")
    }

    fn prepare_snapshot(&mut self, epoch: u64) -> Result<PreparedSnapshot> {
        let target = self.checkpoint_dir(epoch)?;
        if target.exists() {
            tracing::warn!(dir = %target.display(), "removing a stale rocksdb checkpoint dir");
            std::fs::remove_dir_all(&target)
                .map_err(|e| EngineError::io("remove stale checkpoint dir", &target, e))?;
        }
        self.flush()?;
        Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(&target))
            .map_err(|e| self.db_err(ROCKSDB, "checkpoint", e))?;
        let mut files = Vec::new();
        let entries = std::fs::read_dir(&target)
            .map_err(|e| EngineError::io("list checkpoint dir", &target, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| EngineError::io("list checkpoint dir", &target, e))?;
            let meta = entry
                .metadata()
                .map_err(|e| EngineError::io("stat checkpoint file", entry.path(), e))?;
            if !meta.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let shared = name.ends_with(".sst");
            files.push(LocalFile {
                name,
                bytes: meta.len(),
                shared,
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        tracing::debug!(
            epoch,
            dir = %target.display(),
            files = files.len(),
            bytes = files.iter().map(|f| f.bytes).sum::<u64>(),
            "prepared rocksdb checkpoint"
        );
        Ok(PreparedSnapshot::Files(LocalCheckpoint {
            dir: target,
            instance: self.instance.clone(),
            files,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{
        hash_key, key_group_for_hash, InMemoryStateBackend, ManualClock, SystemClock,
    };
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;
    use std::collections::BTreeMap;
    use std::fmt::Debug;
    use std::time::Duration;

    const MB: usize = 1 << 20;
    type TestResult = std::result::Result<(), TestCaseError>;

    fn fail(e: impl std::fmt::Display) -> TestCaseError {
        TestCaseError::fail(e.to_string())
    }

    fn read_value<B: KeyedStateBackend + ?Sized>(
        b: &B,
        s: &StateDescriptor,
        kg: u16,
        k: &[u8],
        n: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        Ok(b.value_get(s, StateAddr::new(kg, k, n))?
            .map(Cow::into_owned))
    }

    fn read_map_get<B: KeyedStateBackend + ?Sized>(
        b: &B,
        s: &StateDescriptor,
        kg: u16,
        k: &[u8],
        n: &[u8],
        u: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        Ok(b.map_get(s, StateAddr::new(kg, k, n), u)?
            .map(Cow::into_owned))
    }

    fn read_list<B: KeyedStateBackend + ?Sized>(
        b: &B,
        s: &StateDescriptor,
        kg: u16,
        k: &[u8],
        n: &[u8],
    ) -> Result<Vec<Vec<u8>>> {
        b.list_get(s, StateAddr::new(kg, k, n))?
            .map(|v| v.map(Cow::into_owned))
            .collect()
    }

    fn read_map<B: KeyedStateBackend + ?Sized>(
        b: &B,
        s: &StateDescriptor,
        kg: u16,
        k: &[u8],
        n: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        b.map_entries(s, StateAddr::new(kg, k, n))?
            .map(|e| e.map(|(u, v)| (u.into_owned(), v.into_owned())))
            .collect()
    }

    fn read_keys<B: KeyedStateBackend + ?Sized>(
        b: &B,
        s: &StateDescriptor,
    ) -> Result<Vec<StateKey>> {
        b.keys(s)?.collect()
    }

    /// Both Ok and equal, or both errors with the same message.
    fn same<T: PartialEq + Debug>(what: &str, mem: Result<T>, rocks: Result<T>) -> TestResult {
        match (mem, rocks) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "{}", what),
            (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string(), "{}", what),
            (a, b) => prop_assert!(false, "{}: in-memory {:?}, rocksdb {:?}", what, a, b),
        }
        Ok(())
    }

    #[test]
    fn escaping_round_trips() {
        for s in [&b""[..], b"\x00", b"\x00\x01", b"a\x00\xffb", b"\xff\xff"] {
            let mut enc = Vec::new();
            push_escaped(&mut enc, s);
            assert_eq!(skip_escaped(&enc, 0), Some(enc.len()));
            assert_eq!(unescape(&enc), s.to_vec());
        }
        assert_eq!(successor(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(successor(&[0xFF, 0xFF]), None);
        let meta = StateMeta {
            id: 7,
            kind: StateKind::List,
            ttl_ms: Some(-3),
        };
        assert_eq!(StateMeta::decode(&meta.encode()), Some(meta));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// The encoding of `(key, namespace)` sorts like the pair and parses back.
        #[test]
        fn escaping_preserves_pair_order(
            a in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(0xFFu8), any::<u8>()], 0..5),
            b in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(0xFFu8), any::<u8>()], 0..5),
            c in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(0xFFu8), any::<u8>()], 0..5),
            d in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(0xFFu8), any::<u8>()], 0..5),
        ) {
            let x = address(3, 9, &a, &b);
            let y = address(3, 9, &c, &d);
            prop_assert_eq!((&a, &b).cmp(&(&c, &d)), x.cmp(&y));
            let row = Row::parse(&x).ok_or_else(|| fail("parse"))?;
            prop_assert_eq!((row.key_group, row.id), (3, 9));
            prop_assert_eq!(row.key(), a.clone());
            prop_assert_eq!(row.namespace(), b.clone());
            prop_assert!(row.user_key().is_empty());
            // Exact prefixes: one key's prefix never covers another key's address.
            prop_assert_eq!(y.starts_with(&key_prefix(3, 9, &a)), a == c);
        }
    }

    // ------------------------------------------------------------------------------
    // The model test: every operation on both backends, every read compared.

    const KEYS: &[&[u8]] = &[
        b"",
        b"\x00",
        b"\x00\x00",
        b"\x00\x01",
        b"\x00\xff",
        b"\x01",
        b"\x01\x00",
        b"\xff",
        b"\xff\xff",
        b"a",
    ];
    const USER_KEYS: &[&[u8]] = &[b"", b"\x00", b"\x00\x01", b"\x01", b"\xff"];
    const GROUPS: &[u16] = &[0, 1, 7, 256, u16::MAX];
    const NAMES: &[&str] = &["v", "m", "l", "x"];
    const TTL_MS: u64 = 100;

    /// A descriptor: name index, and whether it has the TTL.
    type D = (usize, bool);
    /// An address: key group, key and namespace indexes.
    type A = (usize, usize, usize);

    #[derive(Debug, Clone)]
    enum Op {
        Put(D, A, Vec<u8>),
        Get(D, A),
        Delete(D, A),
        MapPut(D, A, usize, Vec<u8>),
        MapRemove(D, A, usize),
        MapGet(D, A, usize),
        MapContains(D, A, usize),
        MapEntries(D, A),
        Append(D, A, Vec<u8>),
        Replace(D, A, Vec<Vec<u8>>),
        ListGet(D, A),
        Clear(D, A),
        ClearNamespace(D, usize),
        ClearState(D),
        Keys(D),
        Namespaces(D, usize, usize),
        Advance(u64),
        Purge,
        RestoreSelf(usize, usize),
        Snapshot,
    }

    fn desc((name, ttl): D) -> StateDescriptor {
        let d = StateDescriptor::new(NAMES[name]);
        if ttl {
            d.with_ttl(Duration::from_millis(TTL_MS))
        } else {
            d
        }
    }

    /// Mostly the state of the op's kind, sometimes another (kind errors).
    fn d_for(natural: usize) -> impl Strategy<Value = D> {
        (
            prop_oneof![6 => Just(natural), 1 => Just(3usize), 1 => 0usize..4],
            prop_oneof![3 => Just(false), 1 => Just(true)],
        )
    }

    /// Mostly a few hot indexes (so that ops meet at the same addresses), sometimes any.
    fn index(hot: usize, len: usize) -> impl Strategy<Value = usize> {
        prop_oneof![3 => 0..hot, 1 => 0..len]
    }

    /// Any state: for the operations that work on every kind.
    fn any_d() -> impl Strategy<Value = D> {
        (
            0..NAMES.len(),
            prop_oneof![3 => Just(false), 1 => Just(true)],
        )
    }

    fn a() -> impl Strategy<Value = A> {
        (
            index(2, GROUPS.len()),
            index(3, KEYS.len()),
            index(3, KEYS.len()),
        )
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..4)
    }

    fn op() -> impl Strategy<Value = Op> {
        let u = 0..USER_KEYS.len();
        prop_oneof![
            6 => (d_for(0), a(), bytes()).prop_map(|(d, a, v)| Op::Put(d, a, v)),
            3 => (d_for(0), a()).prop_map(|(d, a)| Op::Get(d, a)),
            2 => (d_for(0), a()).prop_map(|(d, a)| Op::Delete(d, a)),
            6 => (d_for(1), a(), u.clone(), bytes()).prop_map(|(d, a, u, v)| Op::MapPut(d, a, u, v)),
            2 => (d_for(1), a(), u.clone()).prop_map(|(d, a, u)| Op::MapRemove(d, a, u)),
            2 => (d_for(1), a(), u.clone()).prop_map(|(d, a, u)| Op::MapGet(d, a, u)),
            1 => (d_for(1), a(), u).prop_map(|(d, a, u)| Op::MapContains(d, a, u)),
            2 => (d_for(1), a()).prop_map(|(d, a)| Op::MapEntries(d, a)),
            6 => (d_for(2), a(), bytes()).prop_map(|(d, a, v)| Op::Append(d, a, v)),
            2 => (d_for(2), a(), proptest::collection::vec(bytes(), 0..3))
                .prop_map(|(d, a, v)| Op::Replace(d, a, v)),
            2 => (d_for(2), a()).prop_map(|(d, a)| Op::ListGet(d, a)),
            2 => (any_d(), a()).prop_map(|(d, a)| Op::Clear(d, a)),
            1 => (any_d(), index(3, KEYS.len())).prop_map(|(d, n)| Op::ClearNamespace(d, n)),
            1 => any_d().prop_map(Op::ClearState),
            2 => any_d().prop_map(Op::Keys),
            2 => (any_d(), index(2, GROUPS.len()), index(3, KEYS.len())).prop_map(|(d, g, k)| Op::Namespaces(d, g, k)),
            3 => (0u64..120).prop_map(Op::Advance),
            1 => Just(Op::Purge),
            1 => (0..GROUPS.len(), 0..GROUPS.len()).prop_map(|(a, b)| Op::RestoreSelf(a, b)),
            1 => Just(Op::Snapshot),
        ]
    }

    fn apply(
        op: &Op,
        what: &str,
        clock: &ManualClock,
        mem: &mut InMemoryStateBackend,
        rdb: &mut RocksDbStateBackend,
    ) -> TestResult {
        let addr = |(g, k, n): A| (GROUPS[g], KEYS[k], KEYS[n]);
        match op {
            Op::Put(d, a, v) => {
                let (g, k, n) = addr(*a);
                let s = desc(*d);
                same(
                    what,
                    mem.value_put(&s, StateAddr::new(g, k, n), v),
                    rdb.value_put(&s, StateAddr::new(g, k, n), v),
                )
            }
            Op::Get(d, a) => {
                let (g, k, n) = addr(*a);
                let s = desc(*d);
                same(
                    what,
                    read_value(mem, &s, g, k, n),
                    read_value(rdb, &s, g, k, n),
                )
            }
            Op::Delete(d, a) => {
                let (g, k, n) = addr(*a);
                let s = desc(*d);
                same(
                    what,
                    mem.value_delete(&s, StateAddr::new(g, k, n)),
                    rdb.value_delete(&s, StateAddr::new(g, k, n)),
                )
            }
            Op::MapPut(d, a, u, v) => {
                let (g, k, n) = addr(*a);
                let s = desc(*d);
                let u = USER_KEYS[*u];
                same(
                    what,
                    mem.map_put(&s, StateAddr::new(g, k, n), u, v),
                    rdb.map_put(&s, StateAddr::new(g, k, n), u, v),
                )
            }
            Op::MapRemove(d, a, u) => {
                let (g, k, n) = addr(*a);
                let s = desc(*d);
                let u = USER_KEYS[*u];
                same(
                    what,
                    mem.map_remove(&s, StateAddr::new(g, k, n), u),
                    rdb.map_remove(&s, StateAddr::new(g, k, n), u),
                )
            }
            Op::MapGet(d, a, u) => {
                let (g, k, n) = addr(*a);
                let s = desc(*d);
                let u = USER_KEYS[*u];
                same(
                    what,
                    read_map_get(mem, &s, g, k, n, u),
                    read_map_get(rdb, &s, g, k, n, u),
                )
            }
            Op::MapContains(d, a, u) => {
                let (g, k, n) = addr(*a);
                let s = desc(*d);
                let u = USER_KEYS[*u];
                same(
                    what,
                    mem.map_contains(&s, StateAddr::new(g, k, n), u),
                    rdb.map_contains(&s, StateAddr::new(g, k, n), u),
                )
            }
            Op::MapEntries(d, a) => {
                let (g, k, n) = addr(*a);
                let s = desc(*d);
                same(what, read_map(mem, &s, g, k, n), read_map(rdb, &s, g, k, n))?;
                // From each user key (and between): the backends' seek agrees with
                // the default's skip.
                for u in USER_KEYS.iter() {
                    let mut between = u.to_vec();
                    between.push(0);
                    for from in [u.to_vec(), between] {
                        let read = |b: &dyn KeyedStateBackend| -> Result<Vec<Vec<u8>>> {
                            b.map_entries_from(&s, StateAddr::new(g, k, n), &from)?
                                .map(|e| e.map(|(u, _)| u.into_owned()))
                                .collect()
                        };
                        same(what, read(mem), read(rdb))?;
                    }
                }
                Ok(())
            }
            Op::Append(d, a, v) => {
                let (g, k, n) = addr(*a);
                let s = desc(*d);
                same(
                    what,
                    mem.list_append(&s, StateAddr::new(g, k, n), v),
                    rdb.list_append(&s, StateAddr::new(g, k, n), v),
                )
            }
            Op::Replace(d, a, values) => {
                let (g, k, n) = addr(*a);
                let s = desc(*d);
                let vs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
                same(
                    what,
                    mem.list_replace(&s, StateAddr::new(g, k, n), &vs),
                    rdb.list_replace(&s, StateAddr::new(g, k, n), &vs),
                )
            }
            Op::ListGet(d, a) => {
                let (g, k, n) = addr(*a);
                let s = desc(*d);
                same(
                    what,
                    read_list(mem, &s, g, k, n),
                    read_list(rdb, &s, g, k, n),
                )
            }
            Op::Clear(d, a) => {
                let (g, k, n) = addr(*a);
                let s = desc(*d);
                same(
                    what,
                    mem.clear(&s, StateAddr::new(g, k, n)),
                    rdb.clear(&s, StateAddr::new(g, k, n)),
                )
            }
            Op::ClearNamespace(d, n) => {
                let s = desc(*d);
                same(
                    what,
                    mem.clear_namespace(&s, KEYS[*n]),
                    rdb.clear_namespace(&s, KEYS[*n]),
                )
            }
            Op::ClearState(d) => {
                let s = desc(*d);
                same(what, mem.clear_state(&s), rdb.clear_state(&s))?;
                prop_assert_eq!(mem.states(), rdb.states(), "{}", what);
                Ok(())
            }
            Op::Keys(d) => {
                let s = desc(*d);
                same(what, read_keys(mem, &s), read_keys(rdb, &s))
            }
            Op::Namespaces(d, g, k) => {
                let s = desc(*d);
                same(
                    what,
                    mem.namespaces(&s, GROUPS[*g], KEYS[*k]),
                    rdb.namespaces(&s, GROUPS[*g], KEYS[*k]),
                )
            }
            Op::Advance(ms) => {
                clock.advance(Duration::from_millis(*ms));
                Ok(())
            }
            Op::Purge => same(what, mem.purge_expired(), rdb.purge_expired()),
            Op::RestoreSelf(a, b) => {
                let range = KeyGroupRange::new(GROUPS[*a], GROUPS[*b]);
                let snap = mem.snapshot().map_err(fail)?;
                same(what, mem.restore(&snap, &range), rdb.restore(&snap, &range))
            }
            Op::Snapshot => {
                same(what, mem.snapshot(), rdb.snapshot())?;
                prop_assert_eq!(mem.states(), rdb.states(), "{}", what);
                Ok(())
            }
        }
    }

    /// Compares everything observable of the two backends.
    fn compare_all(
        what: &str,
        mem: &InMemoryStateBackend,
        rdb: &RocksDbStateBackend,
    ) -> TestResult {
        prop_assert_eq!(mem.states(), rdb.states(), "{}: states", what);
        for name in 0..NAMES.len() {
            for ttl in [false, true] {
                let s = desc((name, ttl));
                same(what, read_keys(mem, &s), read_keys(rdb, &s))?;
                for &g in GROUPS {
                    for &k in KEYS {
                        same(what, mem.namespaces(&s, g, k), rdb.namespaces(&s, g, k))?;
                    }
                }
            }
        }
        same(what, mem.snapshot(), rdb.snapshot())
    }

    fn run_model(ops: &[Op]) -> TestResult {
        let tmp = tempfile::tempdir().map_err(fail)?;
        let clock = ManualClock::new(1_000);
        let mut mem = InMemoryStateBackend::with_clock(Arc::new(clock.clone()));
        let mut rdb =
            RocksDbStateBackend::create(&tmp.path().join("db"), MB, Arc::new(clock.clone()))
                .map_err(fail)?;
        for (i, op) in ops.iter().enumerate() {
            apply(op, &format!("op {i}: {op:?}"), &clock, &mut mem, &mut rdb)?;
        }
        compare_all("after all ops", &mem, &rdb)?;
        // The registry and data survive a checkpoint and reopening it.
        let PreparedSnapshot::Files(chk) = rdb.prepare_snapshot(1).map_err(fail)? else {
            return Err(fail("rocksdb must prepare files"));
        };
        let reopened = RocksDbStateBackend::open_restored(
            &chk.dir,
            rdb.instance(),
            MB,
            Arc::new(clock.clone()),
        )
        .map_err(fail)?;
        compare_all("reopened from a checkpoint", &mem, &reopened)?;
        // Everything with a TTL expires.
        clock.advance(Duration::from_millis(TTL_MS));
        compare_all("after the TTL", &mem, &rdb)?;
        same("purge", mem.purge_expired(), rdb.purge_expired())?;
        compare_all("after the purge", &mem, &rdb)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn behaves_exactly_like_the_in_memory_backend(ops in proptest::collection::vec(op(), 0..200)) {
            run_model(&ops)?;
        }
    }

    /// A hand-picked sequence touching the trickiest cases, so that they are always run.
    #[test]
    fn model_covers_prefixes_kinds_and_ttl() {
        let t = (0usize, true);
        let ops = vec![
            Op::Put((0, false), (0, 1, 0), vec![1]),
            Op::Put((0, false), (0, 3, 0), vec![2]),
            Op::Put((0, false), (0, 0, 1), vec![3]),
            Op::Put((0, false), (4, 8, 8), vec![]),
            Op::MapPut((1, false), (0, 1, 2), 0, vec![0]),
            Op::MapPut((1, false), (0, 1, 2), 2, vec![0]),
            Op::MapPut((1, false), (0, 2, 1), 1, vec![0]),
            Op::Append((2, true), (1, 1, 1), vec![9]),
            Op::Advance(60),
            Op::Append((2, true), (1, 1, 1), vec![8]),
            Op::MapPut((1, false), (0, 1, 0), 1, vec![5]),
            Op::Keys((1, false)),
            Op::Namespaces((1, false), 0, 1),
            Op::MapPut((0, false), (0, 1, 0), 1, vec![5]),
            Op::Append((1, false), (0, 1, 0), vec![5]),
            Op::Advance(50),
            Op::ListGet((2, true), (1, 1, 1)),
            Op::ListGet((2, false), (1, 1, 1)),
            Op::Keys((2, true)),
            Op::Put(t, (2, 4, 4), vec![7]),
            Op::Snapshot,
            Op::ClearNamespace((0, false), 0),
            // Two entries of one map in the namespace: one address.
            Op::ClearNamespace((1, false), 2),
            // Removing an expired map entry removes it but reports false.
            Op::MapPut((1, true), (3, 1, 1), 0, vec![1]),
            Op::Advance(100),
            Op::MapRemove((1, true), (3, 1, 1), 0),
            Op::MapEntries((1, false), (3, 1, 1)),
            Op::RestoreSelf(0, 4),
            Op::Purge,
            Op::ClearState((1, false)),
            Op::Append((1, false), (0, 1, 0), vec![5]),
            Op::Replace((1, false), (0, 1, 0), vec![]),
            Op::Snapshot,
        ];
        if let Err(e) = run_model(&ops) {
            panic!("{e}");
        }
    }

    // ------------------------------------------------------------------------------
    // Checkpoints.

    fn key_of(i: u32) -> (u16, Vec<u8>) {
        let key = format!("key-{i}").into_bytes();
        (key_group_for_hash(hash_key(&key), 128), key)
    }

    /// Writes value, map and list state for keys `keys` tagged with `tag`, to both.
    fn fill(
        backends: &mut [&mut dyn KeyedStateBackend],
        names: &[&str],
        keys: std::ops::Range<u32>,
        tag: &str,
    ) {
        for i in keys {
            let (kg, key) = key_of(i);
            let ns = crate::state::namespace_i64(i64::from(i % 3));
            for b in backends.iter_mut() {
                for name in names {
                    let s = StateDescriptor::new(*name);
                    match name.chars().next() {
                        Some('m') => b
                            .map_put(
                                &s,
                                StateAddr::new(kg, &key, &ns),
                                format!("u{}", i % 4).as_bytes(),
                                tag.as_bytes(),
                            )
                            .expect("map put"),
                        Some('l') => b
                            .list_append(
                                &s,
                                StateAddr::new(kg, &key, &ns),
                                format!("{tag}{i}").as_bytes(),
                            )
                            .expect("append"),
                        _ => b
                            .value_put(
                                &s,
                                StateAddr::new(kg, &key, &ns),
                                format!("{tag}{i}").as_bytes(),
                            )
                            .expect("put"),
                    }
                }
            }
        }
    }

    fn files(prepared: PreparedSnapshot) -> LocalCheckpoint {
        match prepared {
            PreparedSnapshot::Files(c) => c,
            PreparedSnapshot::Full(_) => panic!("rocksdb must prepare files"),
        }
    }

    fn sst_names(c: &LocalCheckpoint) -> Vec<String> {
        c.files
            .iter()
            .filter(|f| f.shared)
            .map(|f| f.name.clone())
            .collect()
    }

    fn read_dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| {
                let e = e.expect("entry");
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).expect("read file"),
                )
            })
            .collect()
    }

    #[test]
    fn checkpoints_restore_and_are_incremental() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::new(42);
        let db_dir = tmp.path().join("a").join("db");
        let mut a =
            RocksDbStateBackend::create(&db_dir, 4 * MB, Arc::new(clock.clone())).expect("create");
        fill(&mut [&mut a], &["v", "m", "l"], 0..500, "a");
        let snap1 = a.snapshot().expect("snapshot");
        assert_eq!(snap1.entry_count(), 1500);

        let c1 = files(a.prepare_snapshot(1).expect("prepare 1"));
        assert_eq!(c1.instance, a.instance());
        assert_eq!(
            c1.dir,
            a.dir().with_file_name("db.chk-1"),
            "a sibling of the db dir"
        );
        // The listing is the whole directory, with sizes; only SST files are shared.
        let on_disk = read_dir_files(&c1.dir);
        assert_eq!(
            on_disk.keys().cloned().collect::<Vec<_>>(),
            c1.files.iter().map(|f| f.name.clone()).collect::<Vec<_>>()
        );
        for f in &c1.files {
            assert_eq!(f.bytes, on_disk[&f.name].len() as u64, "{}", f.name);
            assert_eq!(f.shared, f.name.ends_with(".sst"), "{}", f.name);
        }
        assert!(!sst_names(&c1).is_empty(), "flushed data is in SST files");
        assert!(on_disk.contains_key("CURRENT"));

        // Writing (and compacting away the old SST files) after the checkpoint does not
        // change it.
        fill(&mut [&mut a], &["v", "m", "l", "v2"], 250..750, "b");
        a.clear_state(&StateDescriptor::new("m")).expect("clear");
        a.flush().expect("flush");
        a.db.compact_range::<&[u8], &[u8]>(None, None);
        assert_eq!(
            read_dir_files(&c1.dir),
            on_disk,
            "the checkpoint is immutable"
        );

        // Restoring a copy of it gives back exactly the state at the checkpoint.
        let restored_dir = tmp.path().join("restored");
        std::fs::create_dir_all(&restored_dir).expect("mkdir");
        for f in &c1.files {
            std::fs::copy(c1.dir.join(&f.name), restored_dir.join(&f.name)).expect("copy");
        }
        let mut b = RocksDbStateBackend::open_restored(
            &restored_dir,
            a.instance(),
            4 * MB,
            Arc::new(clock.clone()),
        )
        .expect("open restored");
        assert_eq!(b.instance(), a.instance());
        assert_eq!(b.snapshot().expect("snapshot"), snap1);
        assert_eq!(
            b.states()
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            vec!["l", "m", "v"]
        );
        // The restored database goes on working.
        fill(&mut [&mut b], &["v"], 0..1, "c");
        let (kg, key) = key_of(0);
        let ns = crate::state::namespace_i64(0);
        assert_eq!(
            read_value(&b, &StateDescriptor::new("v"), kg, &key, &ns).expect("get"),
            Some(b"c0".to_vec())
        );
        assert!(matches!(
            b.value_put(
                &StateDescriptor::new("l"),
                StateAddr::new(kg, &key, &ns),
                b"x"
            ),
            Err(EngineError::State { .. })
        ));

        // Unchanged state: a second checkpoint holds the same SST files, so an
        // incremental upload would send nothing new.
        let c2 = files(a.prepare_snapshot(2).expect("prepare 2"));
        let c3 = files(a.prepare_snapshot(3).expect("prepare 3"));
        assert!(!sst_names(&c2).is_empty());
        assert_eq!(sst_names(&c2), sst_names(&c3));
        // A small change adds only small new SST files.
        a.value_put(
            &StateDescriptor::new("v"),
            StateAddr::new(kg, &key, &ns),
            b"new",
        )
        .expect("put");
        let c4 = files(a.prepare_snapshot(4).expect("prepare 4"));
        let old: std::collections::HashSet<String> = sst_names(&c3).into_iter().collect();
        let new_bytes: u64 = c4
            .files
            .iter()
            .filter(|f| f.shared && !old.contains(&f.name))
            .map(|f| f.bytes)
            .sum();
        let all_bytes: u64 = c4.files.iter().filter(|f| f.shared).map(|f| f.bytes).sum();
        assert!(
            new_bytes > 0 && new_bytes * 4 < all_bytes,
            "{new_bytes} of {all_bytes}"
        );
        // A stale dir of the same epoch is replaced.
        let again = files(a.prepare_snapshot(4).expect("prepare 4 again"));
        assert_eq!(sst_names(&again), sst_names(&c4));
        // The checkpoint of the restored database opens too.
        let cb = files(b.prepare_snapshot(1).expect("prepare b"));
        let b2 = RocksDbStateBackend::open_restored(&cb.dir, b.instance(), MB, Arc::new(clock))
            .expect("reopen b");
        assert_eq!(b2.snapshot().expect("snap"), b.snapshot().expect("snap"));
    }

    #[test]
    fn import_range_takes_exactly_the_range_with_restore_merge_rules() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::new(7);
        let open = |name: &str| {
            RocksDbStateBackend::create(&tmp.path().join(name), 2 * MB, Arc::new(clock.clone()))
                .expect("create")
        };
        let mut x = open("x");
        let mut y = open("y");
        let mut mx = InMemoryStateBackend::with_clock(Arc::new(clock.clone()));
        let mut my = InMemoryStateBackend::with_clock(Arc::new(clock.clone()));
        // Different state orders give the states different ids in the two databases;
        // keys 150..300 are in both (values overwritten, maps merged, lists appended).
        fill(&mut [&mut x, &mut mx], &["v", "m", "l"], 0..300, "x");
        clock.advance(Duration::from_millis(5));
        fill(
            &mut [&mut y, &mut my],
            &["only_y", "l", "m", "v"],
            150..450,
            "y",
        );
        let cx = files(x.prepare_snapshot(1).expect("prepare x"));
        let cy = files(y.prepare_snapshot(1).expect("prepare y"));
        let snap_x = mx.snapshot().expect("snapshot");
        let snap_y = my.snapshot().expect("snapshot");
        assert_eq!(x.snapshot().expect("snapshot"), snap_x);
        assert_eq!(y.snapshot().expect("snapshot"), snap_y);

        let low = KeyGroupRange::new(0, 64);
        let high = KeyGroupRange::new(64, 128);
        x.import_range(&cy.dir, &low).expect("import into x");
        mx.restore(&snap_y, &low).expect("restore");
        y.import_range(&cx.dir, &high).expect("import into y");
        my.restore(&snap_x, &high).expect("restore");
        assert_eq!(
            x.snapshot().expect("snapshot"),
            mx.snapshot().expect("snapshot")
        );
        assert_eq!(
            y.snapshot().expect("snapshot"),
            my.snapshot().expect("snapshot")
        );
        assert_eq!(x.states(), mx.states());

        // A new subtask owning `low` gets exactly the entries of `low` of both.
        let mut z = open("z");
        z.import_range(&cx.dir, &low).expect("import x");
        z.import_range(&cy.dir, &low).expect("import y");
        let mut mz = InMemoryStateBackend::with_clock(Arc::new(clock.clone()));
        mz.restore(&snap_x, &low).expect("restore");
        mz.restore(&snap_y, &low).expect("restore");
        let got = z.snapshot().expect("snapshot");
        assert_eq!(got, mz.snapshot().expect("snapshot"));
        assert!(got.entry_count() > 100);
        assert!(got.key_groups.iter().all(|g| low.contains(g.key_group)));
        let outside = snap_x.filter(&high).entry_count() + snap_y.filter(&high).entry_count();
        assert!(outside > 100, "the other half held data too");

        // A kind conflict fails before anything changes.
        let mut w = open("w");
        let (kg, key) = key_of(1);
        w.list_append(
            &StateDescriptor::new("v"),
            StateAddr::new(kg, &key, b""),
            b"1",
        )
        .expect("append");
        let before = w.snapshot().expect("snapshot");
        let err = w.import_range(&cx.dir, &low).expect_err("kind conflict");
        assert!(err.to_string().contains("is a list state"), "{err}");
        assert_eq!(w.snapshot().expect("snapshot"), before);
        assert!(w.import_range(&tmp.path().join("missing"), &low).is_err());
    }

    #[test]
    fn restore_checks_kinds_first_and_create_starts_empty() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("db");
        let mut mem = InMemoryStateBackend::new();
        mem.value_put(
            &StateDescriptor::new("x"),
            StateAddr::new(0, b"k", b""),
            b"1",
        )
        .expect("put");
        mem.value_put(
            &StateDescriptor::new("y"),
            StateAddr::new(1, b"k", b""),
            b"2",
        )
        .expect("put");
        let snap = mem.snapshot().expect("snapshot");
        {
            let mut r =
                RocksDbStateBackend::create(&dir, MB, Arc::new(SystemClock)).expect("create");
            r.list_append(
                &StateDescriptor::new("y"),
                StateAddr::new(5, b"k", b""),
                b"1",
            )
            .expect("append");
            let before = r.snapshot().expect("snapshot");
            let err = r
                .restore(&snap, &KeyGroupRange::all(128))
                .expect_err("kind conflict");
            let mut m = InMemoryStateBackend::new();
            m.list_append(
                &StateDescriptor::new("y"),
                StateAddr::new(5, b"k", b""),
                b"1",
            )
            .expect("append");
            let mem_err = m
                .restore(&snap, &KeyGroupRange::all(128))
                .expect_err("kind conflict");
            assert_eq!(err.to_string(), mem_err.to_string());
            assert!(matches!(err, EngineError::State { .. }));
            assert_eq!(r.snapshot().expect("snapshot"), before, "nothing restored");
            assert_eq!(r.states(), m.states());
        }
        // `create` on an existing dir starts from nothing; the backend works as a
        // `Box<dyn KeyedStateBackend>`.
        let mut boxed: Box<dyn KeyedStateBackend> =
            Box::new(RocksDbStateBackend::create(&dir, MB, Arc::new(SystemClock)).expect("create"));
        assert!(boxed.states().is_empty());
        assert!(boxed.snapshot().expect("snapshot").is_empty());
        boxed
            .restore(&snap, &KeyGroupRange::new(1, 2))
            .expect("restore");
        let mut m2 = InMemoryStateBackend::new();
        m2.restore(&snap, &KeyGroupRange::new(1, 2))
            .expect("restore");
        assert_eq!(
            boxed.snapshot().expect("snapshot"),
            m2.snapshot().expect("snapshot")
        );
        assert_eq!(
            boxed.states(),
            m2.states(),
            "only states with data in the range"
        );
    }

    /// A value of 256 bytes that does not compress.
    fn big_value(i: u32) -> Vec<u8> {
        let mut x = u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..32)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect()
    }

    #[test]
    fn state_many_times_the_memory_budget_spills_to_disk() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let budget = 2 * MB;
        let mut b =
            RocksDbStateBackend::create(&tmp.path().join("big"), budget, Arc::new(SystemClock))
                .expect("create");
        let s = StateDescriptor::new("big");
        let n = 200_000u32;
        for i in 0..n {
            let key = i.to_be_bytes();
            let kg = key_group_for_hash(hash_key(&key), 128);
            b.value_put(&s, StateAddr::key(kg, &key), &big_value(i))
                .expect("put");
        }
        let memtables =
            b.db.property_int_value("rocksdb.cur-size-all-mem-tables")
                .expect("property")
                .unwrap_or(0);
        assert!(
            memtables <= budget as u64,
            "memtables hold {memtables} bytes"
        );
        for i in 0..n {
            let key = i.to_be_bytes();
            let kg = key_group_for_hash(hash_key(&key), 128);
            let got = b
                .value_get(&s, StateAddr::key(kg, &key))
                .expect("get")
                .map(Cow::into_owned);
            assert_eq!(got, Some(big_value(i)), "key {i}");
        }
        let sst_bytes: u64 = std::fs::read_dir(b.dir())
            .expect("read dir")
            .map(|e| e.expect("entry"))
            .filter(|e| e.file_name().to_string_lossy().ends_with(".sst"))
            .map(|e| e.metadata().expect("metadata").len())
            .sum();
        assert!(sst_bytes > 40 * MB as u64, "{sst_bytes} bytes of SST files");
        assert!(b.approximate_size_bytes() > 20 * MB);
        assert_eq!(b.keys(&s).expect("keys").count(), n as usize);
    }
}
