//! Keyed state: the API through which operators keep per-key data between batches,
//! the in-memory backend, per-key timers, and key groups.
//!
//! # Addressing
//!
//! Every piece of keyed state is addressed by a state and a [`StateAddr`] **(key group,
//! key, namespace)**:
//!
//! - the *state* is named by a [`StateDescriptor`] (name and optional TTL);
//! - the *key group* (`u16`, `0..max_parallelism`) is derived from the key's hash with
//!   [`key_group_for_hash`]; a subtask owns a contiguous [`KeyGroupRange`], so a
//!   snapshot can be split by key group when a job is restored with another
//!   parallelism;
//! - the *key* is the byte encoding of the key columns of a row, made by
//!   [`KeyCodec`] (stable across processes and library upgrades);
//! - the *namespace* separates several instances of state of one key, e.g. one per
//!   window (see [`namespace_i64`] and [`namespace_window`]); use
//!   [`VOID_NAMESPACE`] when there is only one.
//!
//! # Layers
//!
//! - [`KeyedStateBackend`] is the byte-level, object-safe trait every backend
//!   implements: value, map and list operations, key iteration, TTL, and full
//!   snapshot / restore by key-group range. A RocksDB backend lays its keys out as
//!   `kg (2 bytes BE) | state id | key | namespace | user key`; the trait leaks no
//!   in-memory structure so that it can.
//! - [`InMemoryStateBackend`] keeps everything in hash maps: the default for small
//!   jobs and tests.
//! - [`ValueState`], [`MapState`] and [`ListState`] are typed wrappers that serialize
//!   serde types with postcard.
//! - [`table_log`]: operators that keep their own in-memory table (windows) checkpoint
//!   it as a chain of change logs instead of through the backend.
//! - [`TimerService`] keeps per-key event-time and processing-time timers; they go into
//!   the same [`StateSnapshot`] as the state.
//!
//! ```
//! use weir_engine::state::{
//!     key_group_for_hash, InMemoryStateBackend, KeyCodec, StateAddr, StateDescriptor,
//!     ValueState,
//! };
//! # use std::sync::Arc;
//! # use arrow::array::{Int64Array, StringArray};
//! # use arrow::datatypes::{DataType, Field, Schema};
//! # use arrow::record_batch::RecordBatch;
//! # fn main() -> weir_engine::Result<()> {
//! # let schema = Arc::new(Schema::new(vec![
//! #     Field::new("user", DataType::Utf8, false),
//! #     Field::new("n", DataType::Int64, false),
//! # ]));
//! # let batch = RecordBatch::try_new(schema, vec![
//! #     Arc::new(StringArray::from(vec!["a", "b", "a"])),
//! #     Arc::new(Int64Array::from(vec![1, 2, 3])),
//! # ]).map_err(|e| weir_engine::EngineError::arrow("test", e))?;
//! let mut backend = InMemoryStateBackend::new();
//! let count: ValueState<u64> = ValueState::new(StateDescriptor::new("count"));
//!
//! // Key the batch by its first column and count rows per key.
//! let keys = KeyCodec::for_columns(batch.schema_ref(), &[0])?.encode(&batch)?;
//! for key in keys.iter() {
//!     let kg = key_group_for_hash(weir_engine::state::hash_key(key), 128);
//!     let n = count.get(&backend, StateAddr::key(kg, key))?.unwrap_or(0);
//!     count.put(&mut backend, StateAddr::key(kg, key), &(n + 1))?;
//! }
//! let a = keys.row(0);
//! let kg = key_group_for_hash(weir_engine::state::hash_key(a), 128);
//! assert_eq!(count.get(&backend, StateAddr::key(kg, a))?, Some(2));
//! # Ok(())
//! # }
//! ```

mod backend;
mod key_group;
mod keys;
mod memory;
#[cfg(feature = "rocksdb")]
mod rocks;
mod snapshot;
pub mod table_log;
mod timers;
mod typed;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::EngineError;

pub use backend::{
    KeyIter, KeyedStateBackend, LocalCheckpoint, LocalFile, MapEntryIter, PreparedSnapshot,
    StateKey, ValueIter,
};
pub use key_group::{
    key_group_for_hash, subtask_for_key_group, KeyGroupRange, DEFAULT_MAX_PARALLELISM,
};
pub use keys::{hash_columns, hash_key, key_bytes, key_groups_for_batch, EncodedKeys, KeyCodec};
pub use memory::InMemoryStateBackend;
#[cfg(feature = "rocksdb")]
pub use rocks::RocksDbStateBackend;

/// The error of a job that asks for RocksDB from a binary built without it.
pub const NO_ROCKSDB: &str = "this weir was built without the RocksDB state backend \
(cargo feature `rocksdb`, on by default): build it with default features, e.g. \
`cargo install --path .`, or use `state: { backend: memory }`";
pub use snapshot::{
    restore_keyed_state, snapshot_keyed_state, EntryData, KeyGroupSnapshot, SnapshotEntry,
    SnapshotTimer, Stamped, StateInfo, StateSnapshot,
};
pub use table_log::{TableEntry, TableLogWriter};
pub use timers::{TimeDomain, Timer, TimerService};
pub use typed::{ListState, MapState, ValueState};

/// The namespace of state that has only one instance per key.
pub const VOID_NAMESPACE: &[u8] = &[];

/// Where one piece of keyed state lives within a state: its key group, key bytes and
/// namespace — the one address every state method takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateAddr<'a> {
    /// The key group of the key (see [`key_group_for_hash`]).
    pub key_group: u16,
    /// The key bytes (see [`KeyCodec`]).
    pub key: &'a [u8],
    /// The namespace (e.g. a window; [`VOID_NAMESPACE`] when there is one instance).
    pub namespace: &'a [u8],
}

impl<'a> StateAddr<'a> {
    /// `key` of `key_group` in `namespace`.
    pub fn new(key_group: u16, key: &'a [u8], namespace: &'a [u8]) -> Self {
        StateAddr {
            key_group,
            key,
            namespace,
        }
    }

    /// `key` of `key_group` in the void namespace.
    pub fn key(key_group: u16, key: &'a [u8]) -> Self {
        StateAddr::new(key_group, key, VOID_NAMESPACE)
    }

    /// The same key in `namespace`.
    pub fn in_namespace(self, namespace: &'a [u8]) -> Self {
        StateAddr { namespace, ..self }
    }
}

impl StateKey {
    /// This address, borrowed.
    pub fn addr(&self) -> StateAddr<'_> {
        StateAddr::new(self.key_group, &self.key, &self.namespace)
    }
}

/// Names one piece of keyed state and its options. Operators create descriptors once
/// (usually in `open`) and pass them with every access; the backend registers a state
/// the first time it is written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StateDescriptor {
    /// Unique name of the state within one operator.
    pub name: String,
    /// Time to live: an entry not written for this long (processing time, by the
    /// backend's [`Clock`]) reads as absent and is dropped from snapshots. `None`:
    /// entries live until cleared.
    pub ttl: Option<Duration>,
}

impl StateDescriptor {
    /// A state without TTL.
    pub fn new(name: impl Into<String>) -> Self {
        StateDescriptor {
            name: name.into(),
            ttl: None,
        }
    }

    /// The same state with a time to live (refreshed on every write).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The TTL in milliseconds, saturated to `i64::MAX`.
    pub fn ttl_ms(&self) -> Option<i64> {
        self.ttl
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// The shape of a state: fixed by the first operation on it, checked on every later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StateKind {
    /// One value per (key group, key, namespace).
    Value,
    /// A map from user keys to values per (key group, key, namespace).
    Map,
    /// An ordered list of values per (key group, key, namespace).
    List,
}

impl std::fmt::Display for StateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StateKind::Value => "value",
            StateKind::Map => "map",
            StateKind::List => "list",
        })
    }
}

/// A processing-time clock in milliseconds since the Unix epoch, used for state TTL.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time in ms.
    fn now_ms(&self) -> i64;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to; clones share the same time. For tests and
/// for replaying with deterministic TTL.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock standing at `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        ManualClock(Arc::new(AtomicI64::new(now_ms)))
    }

    /// Sets the time.
    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(ms))
            });
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// An order-preserving namespace for one `i64` (e.g. a window end): big-endian with
/// the sign bit flipped, so byte order equals numeric order.
pub fn namespace_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

/// Reads a namespace made by [`namespace_i64`].
pub fn decode_namespace_i64(ns: &[u8]) -> Option<i64> {
    let b: [u8; 8] = ns.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(b) ^ (1 << 63)) as i64)
}

/// An order-preserving namespace for a window `[start, end)`: ordered by start, then
/// end.
pub fn namespace_window(start: i64, end: i64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&namespace_i64(start));
    out[8..].copy_from_slice(&namespace_i64(end));
    out
}

/// Reads a namespace made by [`namespace_window`] as `(start, end)`.
pub fn decode_namespace_window(ns: &[u8]) -> Option<(i64, i64)> {
    if ns.len() != 16 {
        return None;
    }
    Some((
        decode_namespace_i64(&ns[..8])?,
        decode_namespace_i64(&ns[8..])?,
    ))
}

/// Writes an operator's watermark under `state` for every key group of `range` (empty
/// key, void namespace), so that a restored operator — also one owning other key groups
/// after rescaling — judges lateness and firing as before. Read back with
/// [`restore_watermarks`].
pub fn store_watermark(
    backend: &mut dyn KeyedStateBackend,
    state: &StateDescriptor,
    range: &KeyGroupRange,
    watermark: i64,
) -> crate::error::Result<()> {
    let bytes = postcard::to_allocvec(&watermark)
        .map_err(|e| state_error(&state.name, format!("serialising the watermark: {e}")))?;
    for kg in range.iter() {
        backend.value_put(state, StateAddr::key(kg, &[]), &bytes)?;
    }
    Ok(())
}

/// The watermarks [`store_watermark`] wrote for the key groups of `range`, by key group.
pub fn restore_watermarks(
    backend: &dyn KeyedStateBackend,
    state: &StateDescriptor,
    range: &KeyGroupRange,
) -> crate::error::Result<Vec<(u16, i64)>> {
    let mut out = Vec::new();
    for kg in range.iter() {
        if let Some(b) = backend.value_get(state, StateAddr::key(kg, &[]))? {
            let w: i64 = postcard::from_bytes(&b)
                .map_err(|e| state_error(&state.name, format!("corrupt watermark: {e}")))?;
            out.push((kg, w));
        }
    }
    Ok(out)
}

/// The error for state `state`.
pub(crate) fn state_error(state: impl Into<String>, message: impl Into<String>) -> EngineError {
    EngineError::State {
        state: state.into(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_preserve_order_and_roundtrip() {
        let values = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        for w in values.windows(2) {
            assert!(namespace_i64(w[0]) < namespace_i64(w[1]));
        }
        for v in values {
            assert_eq!(decode_namespace_i64(&namespace_i64(v)), Some(v));
        }
        assert_eq!(
            decode_namespace_window(&namespace_window(-3, 10)),
            Some((-3, 10))
        );
        assert!(namespace_window(0, 10) < namespace_window(0, 11));
        assert!(namespace_window(0, 10) < namespace_window(1, 2));
        assert_eq!(decode_namespace_window(b"short"), None);
    }

    #[test]
    fn manual_clock_is_shared_between_clones() {
        let c = ManualClock::new(5);
        let d = c.clone();
        d.advance(Duration::from_millis(10));
        assert_eq!(c.now_ms(), 15);
        c.set(1);
        assert_eq!(d.now_ms(), 1);
    }

    #[test]
    fn ttl_ms_saturates() {
        let d = StateDescriptor::new("x").with_ttl(Duration::from_secs(u64::MAX));
        assert_eq!(d.ttl_ms(), Some(i64::MAX));
        assert_eq!(StateDescriptor::new("x").ttl_ms(), None);
    }
}
