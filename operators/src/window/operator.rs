//! The window operator: assigns records to (key, window), keeps one accumulator per
//! aggregate per window in memory, fires on the watermark (or the wall clock), emits
//! update rows for late changes, sends late records to the `late` side output, purges
//! state once the allowed lateness has passed, and checkpoints its windows as a table log
//! (the windows changed since the last barrier; read back in `open`).
//!
//! Hot path, per batch: the key bytes of every row ([`KeyCodec::encode`], once), the
//! event times (once), every aggregate argument (one [`SqlExpr`] evaluation each), then
//! the rows grouped per (key, window) and one [`Accumulator::update`] call per group and
//! aggregate. State storage is touched only at checkpoints and in `open`.
//!
//! [`SqlExpr`]: weir_engine::expr::SqlExpr

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, TimestampMillisecondArray, UInt32Array};
use arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use hashbrown::HashTable;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use weir_engine::aggregate::Accumulator;
use weir_engine::message::EventTime;
use weir_engine::metrics::OperatorMetrics;
use weir_engine::operator::{
    Collector, Operator, OperatorContext, StateAnswer, StateRead, TableSnapshot,
};
use weir_engine::state::{
    decode_namespace_window, hash_key, key_group_for_hash, restore_watermarks, Clock,
    StateDescriptor, StateKey, SystemClock, TableLogWriter,
};
use weir_engine::time::event_times_ms;
use weir_engine::{EngineError, Result};

use super::keys::{KeyIds, WKey};
use super::plan::{TimeMode, WindowKind, WindowPlan, LATE_OUTPUT};

mod spill;

/// Name of the keyed state holding the windows: (key group, key bytes,
/// `namespace_window(start, end)`) → the window's fired flag and the
/// [`Accumulator::state`] of each aggregate (postcard).
pub const WINDOW_STATE: &str = "window";
/// Name of the keyed state holding the operator's watermark (one entry per owned key
/// group, empty key), so that a restored operator judges lateness as before.
pub const WATERMARK_STATE: &str = "window-watermark";

/// How often processing-time windows are checked.
const TICK: Duration = Duration::from_millis(100);

/// A window as written at checkpoints.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct StoredWindow {
    /// Whether it has emitted its first result.
    pub(super) fired: bool,
    /// [`Accumulator::state`] of each aggregate, in output order.
    pub(super) accumulators: Vec<Vec<u8>>,
}

/// The key of a window in the operator's table log: `start | end` (big-endian) then
/// the key bytes.
fn encode_table_key(out: &mut Vec<u8>, start: i64, end: i64, key: &[u8]) {
    out.clear();
    out.extend_from_slice(&start.to_be_bytes());
    out.extend_from_slice(&end.to_be_bytes());
    out.extend_from_slice(key);
}

fn decode_table_key(rk: &[u8]) -> Result<(i64, i64, &[u8])> {
    if rk.len() < 16 {
        return Err(op_error("corrupt window key in the table log"));
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&rk[..8]);
    let mut b = [0u8; 8];
    b.copy_from_slice(&rk[8..16]);
    Ok((i64::from_be_bytes(a), i64::from_be_bytes(b), &rk[16..]))
}

/// A table snapshot being written after its barrier (see `Operator::snapshot_table`).
struct PendingLog {
    log: TableLogWriter,
    /// The windows marked `snap` at the barrier, by key and start.
    todo: Vec<(WKey, i64)>,
    /// How many of `todo` were handled.
    next: usize,
    rk: Vec<u8>,
}

/// Logs a window's value: its fired flag, then each aggregate's state with its length.
fn log_window(
    log: &mut TableLogWriter,
    rk: &mut Vec<u8>,
    key_group: u16,
    key: &[u8],
    start: i64,
    w: &Window,
) -> Result<()> {
    encode_table_key(rk, start, w.end, key);
    log.put_with(key_group, rk, |b| encode_window_value(b, w))
}

/// Appends a window's value (as in the table log): its fired flag, then each
/// aggregate's state with its length (u32 LE).
fn encode_window_value(b: &mut Vec<u8>, w: &Window) -> Result<()> {
    b.push(u8::from(w.fired));
    for a in w.accumulators.iter() {
        let at = b.len();
        b.extend_from_slice(&[0; 4]);
        a.write_state(b)?;
        let len = (b.len() - at - 4) as u32;
        b[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    Ok(())
}

/// Copy-on-write: before a window marked for the snapshot being written changes (or
/// goes), its barrier-time value is logged.
fn before_change(
    pending: &mut Option<PendingLog>,
    key_group: u16,
    key: &[u8],
    start: i64,
    w: &mut Window,
) -> Result<()> {
    if w.snap {
        w.snap = false;
        if let Some(p) = pending.as_mut() {
            log_window(&mut p.log, &mut p.rk, key_group, key, start, w)?;
        }
    }
    Ok(())
}

/// One live window of one key.
struct Window {
    end: i64,
    /// One per aggregate; the first two inline (one pointer less to follow per update).
    accumulators: Accumulators,
    fired: bool,
    /// Changed since the last checkpoint.
    dirty: bool,
    /// Written to keyed state at a checkpoint (must be deleted there when dropped).
    persisted: bool,
    /// Part of the table snapshot being written (deferred): its value as of the barrier
    /// is still to be logged, before it changes.
    snap: bool,
    /// The ends its fire-queue and purge-queue entries carry (the queues are lazy: a
    /// session that grew keeps its earlier entries until they come due). Set when it
    /// is queued; what removes the window removes exactly these entries.
    queued: (i64, i64),
}

/// The live windows of one key.
struct KeyWindows {
    /// `hasher.hash_one(key bytes)`: the key table's hash.
    hash: u64,
    key: WKey,
    key_group: u16,
    /// Used since the last eviction sweep passed it (the clock of the memory tier:
    /// a sweep spares a touched key once).
    touched: bool,
    windows: Windows,
}

/// The live windows of one key, sorted by start. Most keys have one or a few (one per
/// pane of a sliding window, a few sessions), so a sorted inline vector beats a tree:
/// no node allocation and no pointer to chase for the first window.
#[derive(Default)]
struct Windows(SmallVec<[(i64, Window); 1]>);

impl Windows {
    fn position(&self, start: i64) -> Result<usize, usize> {
        self.0.binary_search_by_key(&start, |(s, _)| *s)
    }

    fn get(&self, start: i64) -> Option<&Window> {
        let i = self.position(start).ok()?;
        self.0.get(i).map(|(_, w)| w)
    }

    fn get_mut(&mut self, start: i64) -> Option<&mut Window> {
        let i = self.position(start).ok()?;
        self.0.get_mut(i).map(|(_, w)| w)
    }

    /// Inserts or replaces the window at `start`; the replaced one is returned.
    fn insert(&mut self, start: i64, window: Window) -> Option<Window> {
        match self.position(start) {
            Ok(i) => self.0.get_mut(i).map(|(_, w)| std::mem::replace(w, window)),
            Err(i) => {
                self.0.insert(i, (start, window));
                None
            }
        }
    }

    fn remove(&mut self, start: i64) -> Option<Window> {
        let i = self.position(start).ok()?;
        Some(self.0.remove(i).1)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> impl DoubleEndedIterator<Item = (i64, &Window)> {
        self.0.iter().map(|(s, w)| (*s, w))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (i64, &mut Window)> {
        self.0.iter_mut().map(|(s, w)| (*s, w))
    }

    /// The windows starting before `hi`, latest start first.
    fn before(&self, hi: i64) -> impl Iterator<Item = (i64, &Window)> {
        let n = self.0.partition_point(|(s, _)| *s < hi);
        self.0[..n].iter().rev().map(|(s, w)| (*s, w))
    }
}

/// The accumulators of one window.
type Accumulators = SmallVec<[Box<dyn Accumulator>; 2]>;

/// `(end or time, key, start)`: an entry of the fire and purge queues.
type QueueEntry = (i64, WKey, i64);

/// No group (the end of a key's chain of groups).
const NO_GROUP: u32 = u32::MAX;

/// Per-batch working memory of the window assignment, kept in the operator so that its
/// buffers are allocated once, not per batch.
#[derive(Default)]
struct Scratch {
    ids: KeyIds,
    /// Per key id: its latest group, the head of its chain (tumbling windows).
    head: Vec<u32>,
    /// Per group: (key id, window start, the key's previous group or [`NO_GROUP`]).
    groups: Vec<(u32, i64, u32)>,
    /// (key id, window start) → group (sliding windows).
    group_of: std::collections::HashMap<(u32, i64), u32, ahash::RandomState>,
    /// (group, row) of every row in a window.
    pairs: Vec<(u32, u32)>,
    /// `ordered[offsets[g]..offsets[g + 1]]`: the rows of group `g`, in arrival order.
    offsets: Vec<usize>,
    fill: Vec<usize>,
    ordered: Vec<u32>,
    /// Event times of one group's rows.
    event_times: Vec<i64>,
}

impl Scratch {
    /// The group of (`kid`, `start`), found on the key's chain or added.
    fn tumbling_group(&mut self, kid: u32, start: i64) -> u32 {
        let head = self.head[kid as usize];
        let mut g = head;
        while g != NO_GROUP {
            let (_, s, next) = self.groups[g as usize];
            if s == start {
                return g;
            }
            g = next;
        }
        let g = self.groups.len() as u32;
        self.groups.push((kid, start, head));
        self.head[kid as usize] = g;
        g
    }

    /// The group of (`kid`, `start`), found in the map or added.
    fn sliding_group(&mut self, kid: u32, start: i64) -> u32 {
        let groups = &mut self.groups;
        *self.group_of.entry((kid, start)).or_insert_with(|| {
            groups.push((kid, start, NO_GROUP));
            (groups.len() - 1) as u32
        })
    }

    /// Orders the rows of `pairs` by group (a counting sort of `groups` groups) into
    /// `ordered`/`offsets`.
    fn order_by_group(&mut self, groups: usize) {
        self.offsets.clear();
        self.offsets.resize(groups + 1, 0);
        for &(g, _) in &self.pairs {
            self.offsets[g as usize + 1] += 1;
        }
        for i in 1..self.offsets.len() {
            self.offsets[i] += self.offsets[i - 1];
        }
        self.fill.clear();
        self.fill.extend_from_slice(&self.offsets);
        self.ordered.clear();
        self.ordered.resize(self.pairs.len(), 0);
        for &(g, row) in &self.pairs {
            self.ordered[self.fill[g as usize]] = row;
            self.fill[g as usize] += 1;
        }
    }
}

/// A session being built while a batch is processed.
struct Work {
    end: i64,
    /// Starts of the live sessions it absorbs.
    existing: Vec<i64>,
    /// New rows, in any order (sorted before the update).
    rows: Vec<u32>,
    fired: bool,
}

/// The `window` step's operator. Create it with [`WindowOperator::new`] from a
/// [`WindowPlan`] (what the `window` step factory does for every subtask).
pub struct WindowOperator {
    plan: Arc<WindowPlan>,
    /// The keys with live windows (probed with `hasher`'s hash of the key bytes).
    keys: HashTable<KeyWindows>,
    hasher: ahash::RandomState,
    /// Per-batch working memory, kept to reuse its buffers.
    scratch: Scratch,
    /// Windows that have not fired, by (end, key, start): the firing order. Lazy: an
    /// entry may be early (a session that grew) or stale (see `fire_and_purge`).
    to_fire: BTreeSet<QueueEntry>,
    /// Every live window by (purge time, key, start); lazy like `to_fire`.
    to_purge: BTreeSet<QueueEntry>,
    /// Persisted windows dropped since the last checkpoint: (key group, key, start, end).
    removed: Vec<(u16, WKey, i64, i64)>,
    /// The table snapshot being written, if deferred.
    pending: Option<PendingLog>,
    /// Number of live windows.
    live: usize,
    /// The highest watermark seen (or restored).
    watermark: EventTime,
    /// The memory tier's bound and the keys moved to keyed state beyond it (`None`:
    /// unbounded, nothing moves).
    spill: Option<spill::Spill>,
    /// The last firing stopped part-way (see `Operator::more_to_fire`).
    more: bool,
    clock: Arc<dyn Clock>,
    window_state: StateDescriptor,
    watermark_state: StateDescriptor,
}

impl std::fmt::Debug for WindowOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowOperator")
            .field("plan", &self.plan)
            .field("live_windows", &self.live)
            .field("watermark", &self.watermark)
            .finish()
    }
}

fn op_error(message: impl Into<String>) -> EngineError {
    EngineError::operator("window", message)
}

/// What one input batch gives the window assignment: its keys, event times and
/// aggregate arguments, all computed once per batch, and the current watermark.
#[derive(Clone, Copy)]
struct BatchInput<'a> {
    keys: &'a weir_engine::state::EncodedKeys,
    times: &'a [Option<i64>],
    args: &'a [Option<ArrayRef>],
    watermark: EventTime,
    max_parallelism: u16,
}

impl WindowOperator {
    /// An operator for `plan`, with the system clock for processing time.
    pub fn new(plan: Arc<WindowPlan>) -> Self {
        WindowOperator {
            plan,
            keys: HashTable::new(),
            // Fixed seeds: the same run does the same work (callgrind counts repeat).
            hasher: ahash::RandomState::with_seeds(
                0x5745_4952_5f57_494e,
                0x646f_7773_5f6b_6579,
                0x7461_626c_655f_6861,
                0x7368_5f73_6565_6421,
            ),
            scratch: Scratch::default(),
            to_fire: BTreeSet::new(),
            to_purge: BTreeSet::new(),
            removed: Vec::new(),
            pending: None,
            live: 0,
            watermark: EventTime::MIN,
            spill: None,
            more: false,
            clock: Arc::new(SystemClock),
            window_state: StateDescriptor::new(WINDOW_STATE),
            watermark_state: StateDescriptor::new(WATERMARK_STATE),
        }
    }

    /// The same operator reading processing time from `clock` (for tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Number of windows held in memory (fired or not, not yet purged).
    pub fn live_windows(&self) -> usize {
        self.live
    }

    fn processing(&self) -> bool {
        self.plan.options.time == TimeMode::Processing
    }

    /// Allowed lateness in ms (processing time: none, windows purge when they fire).
    fn lateness(&self) -> i64 {
        if self.processing() {
            0
        } else {
            self.plan.options.allowed_lateness
        }
    }

    /// When the window ending at `end` is dropped: `end - 1 + L`.
    fn purge_time(&self, end: i64) -> i64 {
        end.saturating_sub(1).saturating_add(self.lateness())
    }

    /// Whether a window ending at `end` is late at watermark `w`.
    fn is_late(&self, end: i64, w: EventTime) -> bool {
        !self.processing() && self.purge_time(end) <= w
    }

    fn new_accumulators(&self) -> Result<Accumulators> {
        self.plan
            .aggregates
            .iter()
            .map(|a| a.function.create_accumulator(a.argument_type.as_ref()))
            .collect()
    }

    /// The hash the key table is probed with.
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The live windows of `key` (whose hash is `hash`).
    fn find(&self, key: &[u8], hash: u64) -> Option<&KeyWindows> {
        self.keys
            .find(hash, |kw| kw.hash == hash && kw.key.as_slice() == key)
    }

    /// The live windows of `key` (whose hash is `hash`), to change.
    fn find_mut(&mut self, key: &[u8], hash: u64) -> Option<&mut KeyWindows> {
        self.keys
            .find_mut(hash, |kw| kw.hash == hash && kw.key.as_slice() == key)
    }

    /// Puts back a window read from a checkpoint (its key group as stored).
    fn restore_window(
        &mut self,
        key: &[u8],
        key_group: u16,
        max_parallelism: u16,
        start: i64,
        window: Window,
    ) {
        let hash = self.hash(key);
        self.insert_window(key, hash, max_parallelism, start, window);
        if let Some(kw) = self.find_mut(key, hash) {
            kw.key_group = key_group;
        }
    }

    /// A window's value in the table log: its fired flag, then each aggregate's state
    /// with its length (u32 LE).
    fn decode_table_value(&self, value: &[u8]) -> Result<(bool, Accumulators)> {
        let corrupt = || op_error("corrupt window value in the table log");
        let (&fired, mut rest) = value.split_first().ok_or_else(corrupt)?;
        let mut accumulators = self.new_accumulators()?;
        for acc in accumulators.iter_mut() {
            if rest.len() < 4 {
                return Err(op_error(format!(
                    "the checkpoint holds fewer aggregates per window than the job's {}",
                    self.plan.aggregates.len()
                )));
            }
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let state = rest.get(4..4 + len).ok_or_else(corrupt)?;
            acc.merge_state(state)?;
            rest = &rest[4 + len..];
        }
        if !rest.is_empty() {
            return Err(op_error(format!(
                "the checkpoint holds more aggregates per window than the job's {}",
                self.plan.aggregates.len()
            )));
        }
        Ok((fired != 0, accumulators))
    }

    /// Inserts a new window (fresh accumulators unless given) and queues it.
    fn insert_window(
        &mut self,
        key: &[u8],
        hash: u64,
        max_parallelism: u16,
        start: i64,
        window: Window,
    ) -> WKey {
        let end = window.end;
        let fired = window.fired;
        let kw = match self
            .keys
            .find_entry(hash, |kw| kw.hash == hash && kw.key.as_slice() == key)
        {
            Ok(entry) => entry.into_mut(),
            Err(_) => {
                let key_group = key_group_for_hash(hash_key(key), max_parallelism);
                self.keys
                    .insert_unique(
                        hash,
                        KeyWindows {
                            hash,
                            key: WKey::new(key),
                            key_group,
                            touched: true,
                            windows: Windows::default(),
                        },
                        |kw| kw.hash,
                    )
                    .into_mut()
            }
        };
        kw.touched = true;
        let wkey = kw.key.clone();
        let mut window = window;
        window.queued = (end, end);
        match kw.windows.insert(start, window) {
            None => self.live += 1,
            Some(mut old) => {
                let kg = kw.key_group;
                if let Err(e) =
                    before_change(&mut self.pending, kg, wkey.as_slice(), start, &mut old)
                {
                    tracing::warn!(error = %e, "could not log a replaced window");
                }
            }
        }
        if !fired {
            self.to_fire.insert((end, wkey.clone(), start));
        }
        let purge = self.purge_time(end);
        self.to_purge.insert((purge, wkey.clone(), start));
        wkey
    }

    /// Removes a window and its queue entries; remembers it for deletion from keyed
    /// state if it was written there.
    fn remove_window(&mut self, key: &WKey, start: i64) -> Option<Window> {
        self.remove_window_queued(key, start, true)
    }

    /// [`Self::remove_window`], where `in_purge_queue` says whether the window is still
    /// in the purge queue (`false`: its entry was just popped, no search needed).
    fn remove_window_queued(
        &mut self,
        key: &WKey,
        start: i64,
        in_purge_queue: bool,
    ) -> Option<Window> {
        let bytes = key.as_slice();
        let hash = self.hash(bytes);
        let Ok(mut entry) = self
            .keys
            .find_entry(hash, |kw| kw.hash == hash && kw.key.as_slice() == bytes)
        else {
            return None;
        };
        let kw = entry.get_mut();
        let mut w = kw.windows.remove(start)?;
        let key_group = kw.key_group;
        if w.snap {
            if let Err(e) = before_change(&mut self.pending, key_group, bytes, start, &mut w) {
                tracing::warn!(error = %e, "could not log a removed window");
            }
        }
        if kw.windows.is_empty() {
            entry.remove();
        }
        self.live -= 1;
        // Only unfired windows are in the fire queue.
        if !w.fired {
            self.to_fire.remove(&(w.queued.0, key.clone(), start));
        }
        if in_purge_queue {
            let purge = self.purge_time(w.queued.1);
            self.to_purge.remove(&(purge, key.clone(), start));
        }
        if w.persisted {
            self.removed.push((key_group, key.clone(), start, w.end));
        }
        Some(w)
    }

    /// The watermark lateness is judged against.
    fn current_watermark(&self, ctx: &OperatorContext) -> EventTime {
        if self.processing() {
            EventTime::MIN
        } else {
            self.watermark.max(ctx.watermark)
        }
    }

    /// Tumbling and sliding windows: group rows by (key, window), one update per group.
    fn process_fixed(
        &mut self,
        sc: &mut Scratch,
        input: &BatchInput<'_>,
        late: &mut Vec<u32>,
        updated: &mut Vec<QueueEntry>,
    ) -> Result<()> {
        let BatchInput {
            keys,
            times,
            args,
            watermark: w,
            max_parallelism,
        } = *input;
        let (size, slide) = match self.plan.options.kind {
            WindowKind::Tumbling { size } => (size, size),
            WindowKind::Sliding { size, slide } => (size, slide),
            WindowKind::Session { .. } => return Err(op_error("not a fixed window")),
        };
        let tumbling = size == slide;
        // Rows are grouped by (key, window) without a vector per group: each row's
        // group goes into `pairs`, then one counting sort orders the rows by group
        // (keeping arrival order within a group). Tumbling windows find a row's group
        // on its key's chain of groups (one or two long); sliding ones, where a key
        // has a group per pane, in a hash map.
        sc.head.clear();
        sc.head.resize(sc.ids.len(), NO_GROUP);
        sc.groups.clear();
        sc.group_of.clear();
        sc.pairs.clear();
        sc.pairs.reserve(times.len());
        let mut last: Option<(u32, i64, u32)> = None;
        for (row, t) in times.iter().enumerate() {
            let row32 = row as u32;
            let Some(t) = *t else {
                late.push(row32);
                continue;
            };
            // A record whose windows cannot all be represented (a start below
            // `i64::MIN` or an end above `i64::MAX`: event times within about one
            // window size of the limits) is treated as late: it goes to the `late`
            // side output and changes no window (docs/WINDOWS.md, "Edge cases").
            let Some(newest) = fixed_windows_fit(t, size, slide) else {
                late.push(row32);
                continue;
            };
            let kid = sc.ids.row_key[row];
            let mut any = false;
            let mut s = newest;
            loop {
                // Windows `[s, s + size)` with `s > t - size` (all representable, see
                // `fixed_windows_fit`; `t - size` itself may not be).
                if t.checked_sub(size).is_some_and(|lowest| s <= lowest) {
                    break;
                }
                let end = s.saturating_add(size);
                if !self.is_late(end, w) {
                    any = true;
                    let g = match last {
                        Some((k, st, g)) if k == kid && st == s => g,
                        _ => {
                            let g = if tumbling {
                                sc.tumbling_group(kid, s)
                            } else {
                                sc.sliding_group(kid, s)
                            };
                            last = Some((kid, s, g));
                            g
                        }
                    };
                    sc.pairs.push((g, row32));
                }
                match s.checked_sub(slide) {
                    Some(next) => s = next,
                    None => break,
                }
            }
            if !any {
                late.push(row32);
            }
        }
        sc.order_by_group(sc.groups.len());
        for (g, &(kid, start, _)) in sc.groups.iter().enumerate() {
            let rows = &sc.ordered[sc.offsets[g]..sc.offsets[g + 1]];
            let (first_row, hash) = sc.ids.uniq[kid as usize];
            let key = keys.row(first_row as usize);
            let end = start.saturating_add(size);
            sc.event_times.clear();
            sc.event_times
                .extend(rows.iter().map(|&r| times[r as usize].unwrap_or(0)));
            // One probe of the key table when the window exists (the common case).
            let found = self
                .keys
                .find_mut(hash, |kw| kw.hash == hash && kw.key.as_slice() == key);
            let existing = match found {
                Some(kw) => match kw.windows.get_mut(start) {
                    Some(win) => {
                        kw.touched = true;
                        if win.snap {
                            before_change(&mut self.pending, kw.key_group, key, start, win)?;
                        }
                        for (acc, arg) in win.accumulators.iter_mut().zip(args) {
                            acc.update(arg.as_ref(), rows, &sc.event_times)?;
                        }
                        win.dirty = true;
                        if win.fired {
                            updated.push((end, kw.key.clone(), start));
                        }
                        true
                    }
                    None => false,
                },
                None => false,
            };
            if !existing {
                let mut accumulators = self.new_accumulators()?;
                for (acc, arg) in accumulators.iter_mut().zip(args) {
                    acc.update(arg.as_ref(), rows, &sc.event_times)?;
                }
                let window = Window {
                    end,
                    accumulators,
                    fired: false,
                    dirty: true,
                    persisted: false,
                    snap: false,
                    queued: (0, 0),
                };
                self.insert_window(key, hash, max_parallelism, start, window);
            }
        }
        Ok(())
    }

    /// Session windows: rows of one key are taken in arrival order, merging with the
    /// live sessions they overlap; then each changed session gets its merged
    /// accumulators and one update per aggregate.
    fn process_sessions(
        &mut self,
        sc: &mut Scratch,
        input: &BatchInput<'_>,
        late: &mut Vec<u32>,
        updated: &mut Vec<QueueEntry>,
    ) -> Result<()> {
        let BatchInput {
            keys,
            times,
            args,
            watermark: w,
            max_parallelism,
        } = *input;
        let WindowKind::Session { gap } = self.plan.options.kind else {
            return Err(op_error("not a session window"));
        };
        // The rows of each key in arrival order: a counting sort by key id.
        sc.pairs.clear();
        sc.pairs.extend(
            sc.ids
                .row_key
                .iter()
                .enumerate()
                .map(|(row, &kid)| (kid, row as u32)),
        );
        sc.order_by_group(sc.ids.len());
        let mut event_times: Vec<i64> = Vec::new();
        for (kid, &(first_row, hash)) in sc.ids.uniq.iter().enumerate() {
            let rows = &sc.ordered[sc.offsets[kid]..sc.offsets[kid + 1]];
            let key = keys.row(first_row as usize);
            if let [row] = rows[..] {
                if self.session_fast_path(
                    key,
                    hash,
                    row,
                    times,
                    args,
                    w,
                    max_parallelism,
                    gap,
                    updated,
                )? {
                    continue;
                }
            }
            // The working set starts as the key's live sessions.
            let mut work: BTreeMap<i64, Work> = BTreeMap::new();
            if let Some(kw) = self.find(key, hash) {
                for (start, win) in kw.windows.iter() {
                    work.insert(
                        start,
                        Work {
                            end: win.end,
                            existing: vec![start],
                            rows: Vec::new(),
                            fired: win.fired,
                        },
                    );
                }
            }
            for &row in rows {
                let Some(t) = times[row as usize] else {
                    late.push(row);
                    continue;
                };
                // A session whose end `t + gap` cannot be represented: the record is
                // late (docs/WINDOWS.md, "Edge cases").
                let Some(hi) = t.checked_add(gap) else {
                    late.push(row);
                    continue;
                };
                let lo = t;
                // Sessions are disjoint and sorted, so the overlapping ones are the
                // last ones starting before `hi` whose end is after `lo`.
                let overlapping: Vec<i64> = work
                    .range(..hi)
                    .rev()
                    .take_while(|(_, s)| s.end > lo)
                    .map(|(&start, _)| start)
                    .collect();
                let mut start = lo;
                let mut end = hi;
                for s in &overlapping {
                    if let Some(ws) = work.get(s) {
                        start = start.min(*s);
                        end = end.max(ws.end);
                    }
                }
                if self.is_late(end, w) {
                    late.push(row);
                    continue;
                }
                let mut merged = Work {
                    end,
                    existing: Vec::new(),
                    rows: vec![row],
                    fired: false,
                };
                for s in overlapping {
                    if let Some(ws) = work.remove(&s) {
                        merged.existing.extend(ws.existing);
                        merged.rows.extend(ws.rows);
                        merged.fired |= ws.fired;
                    }
                }
                work.insert(start, merged);
            }
            // Apply the changed sessions.
            for (start, mut ws) in work {
                if ws.rows.is_empty() {
                    continue; // an untouched live session
                }
                let wkey: Option<WKey> = self.find(key, hash).map(|kw| kw.key.clone());
                ws.existing.sort_unstable();
                let mut base: Option<Window> = None;
                if let Some(wkey) = &wkey {
                    for old_start in &ws.existing {
                        let Some(old) = self.remove_window(wkey, *old_start) else {
                            continue;
                        };
                        match base.as_mut() {
                            None => base = Some(old),
                            Some(b) => {
                                for (acc, other) in b.accumulators.iter_mut().zip(&old.accumulators)
                                {
                                    acc.merge_state(&other.state()?)?;
                                }
                            }
                        }
                    }
                }
                let mut window = match base {
                    Some(b) => b,
                    None => Window {
                        end: ws.end,
                        accumulators: self.new_accumulators()?,
                        fired: false,
                        dirty: true,
                        persisted: false,
                        snap: false,
                        queued: (0, 0),
                    },
                };
                ws.rows.sort_unstable();
                event_times.clear();
                event_times.extend(ws.rows.iter().map(|&r| times[r as usize].unwrap_or(0)));
                for (acc, arg) in window.accumulators.iter_mut().zip(args) {
                    acc.update(arg.as_ref(), &ws.rows, &event_times)?;
                }
                window.end = ws.end;
                window.fired = ws.fired;
                window.dirty = true;
                // A new address in keyed state (the old ones are in `removed`).
                window.persisted = false;
                let end = window.end;
                let wkey = self.insert_window(key, hash, max_parallelism, start, window);
                if ws.fired {
                    updated.push((end, wkey, start));
                }
            }
        }
        Ok(())
    }

    /// The common case of session windows, without the general merge machinery: one
    /// row of a key in this batch that either starts a session (no live session of the
    /// key overlaps it) or falls into exactly one live session at or after its start,
    /// which it may extend. Returns `false` (nothing done) for any other case, which the
    /// general path handles.
    #[allow(clippy::too_many_arguments)]
    fn session_fast_path(
        &mut self,
        key: &[u8],
        hash: u64,
        row: u32,
        times: &[Option<i64>],
        args: &[Option<ArrayRef>],
        w: EventTime,
        max_parallelism: u16,
        gap: i64,
        updated: &mut Vec<QueueEntry>,
    ) -> Result<bool> {
        let Some(t) = times[row as usize] else {
            return Ok(false);
        };
        let Some(hi) = t.checked_add(gap) else {
            return Ok(false);
        };
        let processing = self.processing();
        let purge_of = |end: i64| end.saturating_sub(1).saturating_add(self.lateness());
        let late = |end: i64| !processing && purge_of(end) <= w;
        // The live sessions of the key that the row's `[t, t + gap)` overlaps.
        let found = match self.find(key, hash) {
            None => None,
            Some(kw) => {
                let mut overlapping = kw.windows.before(hi).take_while(|(_, s)| s.end > t);
                match (overlapping.next(), overlapping.next()) {
                    (None, _) => None,
                    (Some((start, win)), None) if start <= t => Some((start, win.end)),
                    _ => return Ok(false),
                }
            }
        };
        let Some((start, old_end)) = found else {
            // A new session.
            if late(hi) {
                return Ok(false);
            }
            let mut accumulators = self.new_accumulators()?;
            for (acc, arg) in accumulators.iter_mut().zip(args) {
                acc.update(arg.as_ref(), &[row], &[t])?;
            }
            let window = Window {
                end: hi,
                accumulators,
                fired: false,
                dirty: true,
                persisted: false,
                snap: false,
                queued: (0, 0),
            };
            self.insert_window(key, hash, max_parallelism, t, window);
            return Ok(true);
        };
        let new_end = old_end.max(hi);
        if late(new_end) {
            return Ok(false); // late: the general path routes it
        }
        let kw = self
            .keys
            .find_mut(hash, |kw| kw.hash == hash && kw.key.as_slice() == key)
            .ok_or_else(|| op_error("session vanished"))?;
        kw.touched = true;
        let arc = kw.key.clone();
        let key_group = kw.key_group;
        let win = kw
            .windows
            .get_mut(start)
            .ok_or_else(|| op_error("session vanished"))?;
        if win.snap {
            before_change(&mut self.pending, key_group, key, start, win)?;
        }
        for (acc, arg) in win.accumulators.iter_mut().zip(args) {
            acc.update(arg.as_ref(), &[row], &[t])?;
        }
        win.dirty = true;
        let fired = win.fired;
        if new_end != old_end {
            win.end = new_end;
            // The session's address in keyed state names its end: the old one goes.
            if win.persisted {
                win.persisted = false;
                self.removed.push((key_group, arc.clone(), start, old_end));
            }
            // The queues keep the old, earlier entries: they are corrected when they
            // come due (see `fire_and_purge`), which costs one re-insertion per
            // session instead of four tree operations per extending record.
        }
        if fired {
            updated.push((new_end, arc, start));
        }
        Ok(true)
    }

    /// Builds output rows for `windows` (end, key, start), evaluating their aggregates.
    fn rows(&self, windows: &[QueueEntry], is_update: bool) -> Result<Option<RecordBatch>> {
        if windows.is_empty() {
            return Ok(None);
        }
        let plan = &self.plan;
        let mut found: Vec<&Window> = Vec::with_capacity(windows.len());
        for (_, key, start) in windows {
            let bytes = key.as_slice();
            let w = self
                .find(bytes, self.hash(bytes))
                .and_then(|kw| kw.windows.get(*start))
                .ok_or_else(|| op_error("a window to emit is missing"))?;
            found.push(w);
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(plan.output.fields().len());
        let key_arrays = plan
            .codec
            .decode(windows.iter().map(|(_, k, _)| k.as_slice()))?;
        for (array, &col) in key_arrays.into_iter().zip(&plan.key_columns) {
            let want = plan.input.field(col).data_type();
            if array.data_type() == want {
                columns.push(array);
            } else {
                columns.push(
                    arrow::compute::cast(&array, want)
                        .map_err(|e| EngineError::arrow("window key column", e))?,
                );
            }
        }
        columns.push(Arc::new(TimestampMillisecondArray::from_iter_values(
            windows.iter().map(|(_, _, s)| *s),
        )));
        columns.push(Arc::new(TimestampMillisecondArray::from_iter_values(
            found.iter().map(|w| w.end),
        )));
        for (i, agg) in plan.aggregates.iter().enumerate() {
            let values = found
                .iter()
                .map(|w| match w.accumulators.get(i) {
                    Some(a) => a.evaluate(),
                    None => Err(op_error("accumulator missing")),
                })
                .collect::<Result<Vec<ScalarValue>>>()?;
            let array = ScalarValue::iter_to_array(values).map_err(|e| {
                op_error(format!(
                    "aggregate {}: {}",
                    agg.output,
                    e.find_root().strip_backtrace()
                ))
            })?;
            let array = if array.data_type() == &agg.return_type {
                array
            } else {
                arrow::compute::cast(&array, &agg.return_type)
                    .map_err(|e| EngineError::arrow("window aggregate result", e))?
            };
            columns.push(array);
        }
        columns.push(Arc::new(BooleanArray::from(vec![is_update; windows.len()])));
        let batch = RecordBatch::try_new(plan.output.clone(), columns)
            .map_err(|e| EngineError::arrow("window output", e))?;
        Ok(Some(batch))
    }

    /// Fires every window with `end - 1 <= time` (in order of end, then key), then
    /// drops every window with `end - 1 + L <= time`.
    ///
    /// The queues are corrected lazily: every live window has an entry in `to_purge`
    /// (and, unfired, in `to_fire`) at or before its due time, but a session that grew
    /// keeps its earlier entries, and a removed window may leave entries behind. So an
    /// entry that comes due is checked against the window it names: gone or already
    /// fired, it is dropped; not yet due (it grew), it is queued again at its real
    /// time.
    fn fire_and_purge(
        &mut self,
        time: i64,
        ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        // Keys in keyed state with a window due come back in chunks; each chunk fires
        // and purges with the windows in memory, and the memory tier is trimmed again.
        // After a few chunks the call returns with `more_to_fire`, so that the runtime
        // sends the output on before the next ones.
        self.more = false;
        for _ in 0..spill::CHUNKS_PER_CALL {
            if !self.load_due_keys(time, ctx)? {
                self.fire_and_purge_memory(time, out)?;
                return self.evict(ctx);
            }
            self.fire_and_purge_memory(time, out)?;
            self.evict(ctx)?;
        }
        self.more = true;
        Ok(())
    }

    /// [`Self::fire_and_purge`] of the windows in memory.
    fn fire_and_purge_memory(&mut self, time: i64, out: &mut Collector) -> Result<()> {
        let mut fired: Vec<QueueEntry> = Vec::new();
        while let Some(first) = self.to_fire.first() {
            if first.0.saturating_sub(1) > time {
                break;
            }
            let Some((at, key, start)) = self.to_fire.pop_first() else {
                break;
            };
            let bytes = key.as_slice();
            let hash = self.hash(bytes);
            let Some(kw) = self
                .keys
                .find_mut(hash, |kw| kw.hash == hash && kw.key.as_slice() == bytes)
            else {
                continue;
            };
            let key_group = kw.key_group;
            let Some(w) = kw.windows.get_mut(start) else {
                continue;
            };
            if w.fired || at != w.queued.0 {
                continue; // fired, or not the window's entry
            }
            let end = w.end;
            if end.saturating_sub(1) > time {
                // It grew: queued again at its real end.
                w.queued.0 = end;
                self.to_fire.insert((end, key, start));
                continue;
            }
            if w.snap {
                before_change(&mut self.pending, key_group, bytes, start, w)?;
            }
            w.fired = true;
            w.dirty = true;
            fired.push((end, key, start));
        }
        // Entries queued again come out of order: emit by (end, key, start).
        fired.sort_unstable();
        if let Some(batch) = self.rows(&fired, false)? {
            out.emit(batch);
        }
        while let Some(first) = self.to_purge.first() {
            if first.0 > time {
                break;
            }
            let Some((at, key, start)) = self.to_purge.pop_first() else {
                break;
            };
            let bytes = key.as_slice();
            let hash = self.hash(bytes);
            let lateness = self.lateness();
            let Some(w) = self
                .keys
                .find_mut(hash, |kw| kw.hash == hash && kw.key.as_slice() == bytes)
                .and_then(|kw| kw.windows.get_mut(start))
            else {
                continue;
            };
            let purge_of = |end: i64| end.saturating_sub(1).saturating_add(lateness);
            if at != purge_of(w.queued.1) {
                continue; // not the window's entry
            }
            let purge = purge_of(w.end);
            if purge > time {
                w.queued.1 = w.end;
                self.to_purge.insert((purge, key, start));
            } else {
                self.remove_window_queued(&key, start, false);
            }
        }
        Ok(())
    }
}

/// The newest window start of a record at `t` in fixed windows of `size` every `slide`
/// ms, or `None` when one of its windows `[s, s + size)` (`s = newest - k·slide > t -
/// size`) has a start below `i64::MIN` or an end above `i64::MAX`: such a record is
/// treated as late. Computed in `i128` near the limits, so no input overflows.
fn fixed_windows_fit(t: i64, size: i64, slide: i64) -> Option<i64> {
    /// Within ±2^60 every window of a size and slide below 2^60 fits, and `i64`
    /// arithmetic cannot overflow (the hot path: no 128-bit division per record).
    const SAFE: i64 = 1 << 60;
    if size <= 0 || slide <= 0 {
        return None;
    }
    if (-SAFE..SAFE).contains(&t) && size < SAFE && slide < SAFE {
        return Some(t - t.rem_euclid(slide));
    }
    fixed_windows_fit_wide(t, size, slide)
}

/// [`fixed_windows_fit`] in `i128`, for any input (`size`, `slide` positive).
fn fixed_windows_fit_wide(t: i64, size: i64, slide: i64) -> Option<i64> {
    let (t, size, slide) = (i128::from(t), i128::from(size), i128::from(slide));
    let newest = t - t.rem_euclid(slide);
    // Number of windows: the `k >= 0` with `newest - k·slide > t - size`.
    let span = newest - (t - size);
    let count = (span + slide - 1) / slide;
    let oldest = newest - (count - 1).max(0) * slide;
    let fits = oldest >= i128::from(i64::MIN) && newest + size <= i128::from(i64::MAX);
    if fits {
        i64::try_from(newest).ok()
    } else {
        None
    }
}

impl Operator for WindowOperator {
    fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        if let Some(entries) = ctx.restored_table.take() {
            for (key_group, rk, value) in entries {
                let (start, end, key) = decode_table_key(&rk)?;
                let (fired, accumulators) = self.decode_table_value(&value)?;
                let window = Window {
                    end,
                    accumulators,
                    fired,
                    dirty: false,
                    persisted: true,
                    snap: false,
                    queued: (0, 0),
                };
                self.restore_window(key, key_group, ctx.max_parallelism, start, window);
            }
        }
        // Checkpoints written before table logs hold the windows in keyed state: read
        // them, then drop them there; they go into the log at the next barrier.
        let addresses: Vec<StateKey> = ctx
            .state
            .keys(&self.window_state)?
            .collect::<Result<Vec<_>>>()?;
        for a in &addresses {
            if !ctx.key_groups.contains(a.key_group) {
                continue;
            }
            let (start, end) = decode_namespace_window(&a.namespace)
                .ok_or_else(|| op_error("corrupt window namespace in keyed state"))?;
            let bytes = ctx
                .state
                .value_get(&self.window_state, a.addr())?
                .ok_or_else(|| op_error("window state vanished while restoring"))?;
            let stored: StoredWindow = postcard::from_bytes(&bytes)
                .map_err(|e| op_error(format!("corrupt window state: {e}")))?;
            let mut accumulators = self.new_accumulators()?;
            if stored.accumulators.len() != accumulators.len() {
                return Err(op_error(format!(
                    "the checkpoint holds {} aggregates per window, the job has {}",
                    stored.accumulators.len(),
                    accumulators.len()
                )));
            }
            for (acc, s) in accumulators.iter_mut().zip(&stored.accumulators) {
                acc.merge_state(s)?;
            }
            let window = Window {
                end,
                accumulators,
                fired: stored.fired,
                dirty: true,
                persisted: false,
                snap: false,
                queued: (0, 0),
            };
            self.restore_window(&a.key, a.key_group, ctx.max_parallelism, start, window);
        }
        if !addresses.is_empty() {
            ctx.state.clear_state(&self.window_state)?;
        }
        // The runtime restores the watermark; checkpoints written before it did keep
        // it in keyed state.
        self.watermark = self.watermark.max(ctx.watermark);
        let legacy = restore_watermarks(&*ctx.state, &self.watermark_state, &ctx.key_groups)?;
        if let Some(w) = legacy.iter().map(|(_, w)| *w).min() {
            self.watermark = self.watermark.max(w);
            ctx.state.clear_state(&self.watermark_state)?;
        }
        self.spill = spill::Spill::open(ctx)?;
        self.evict(ctx)
    }

    fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        if n > u32::MAX as usize {
            return Err(op_error("batch too large"));
        }
        let plan = self.plan.clone();
        let times: Vec<Option<i64>> = match &plan.event_time {
            Some(field) => event_times_ms(&batch, field)?,
            None => vec![Some(self.clock.now_ms()); n],
        };
        let keys = plan.codec.encode(&batch)?;
        let args: Vec<Option<ArrayRef>> = plan
            .aggregates
            .iter()
            .map(|a| a.argument.as_ref().map(|e| e.evaluate(&batch)).transpose())
            .collect::<Result<_>>()?;
        let w = self.current_watermark(ctx);
        let mut late: Vec<u32> = Vec::new();
        let mut updated: Vec<QueueEntry> = Vec::new();
        let maxp = ctx.max_parallelism;
        let input = BatchInput {
            keys: &keys,
            times: &times,
            args: &args,
            watermark: w,
            max_parallelism: maxp,
        };
        // The batch buffers are taken out of `self` while the operator changes.
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.ids.assign(&keys, &self.hasher);
        // Keys moved to keyed state come back to memory before their rows apply.
        if let Err(e) = self.load_batch_keys(&scratch.ids, &keys, ctx) {
            self.scratch = scratch;
            return Err(e);
        }
        let result = match plan.options.kind {
            WindowKind::Session { .. } => {
                self.process_sessions(&mut scratch, &input, &mut late, &mut updated)
            }
            _ => self.process_fixed(&mut scratch, &input, &mut late, &mut updated),
        };
        self.scratch = scratch;
        result?;
        if !late.is_empty() {
            late.sort_unstable();
            OperatorMetrics::add(&ctx.metrics.late_records, late.len() as u64);
            let idx = UInt32Array::from(late);
            let rows = arrow::compute::take_record_batch(&batch, &idx)
                .map_err(|e| EngineError::arrow("window late records", e))?;
            out.emit_side(LATE_OUTPUT, rows);
        }
        if !updated.is_empty() {
            updated.sort();
            updated.dedup();
            if let Some(rows) = self.rows(&updated, true)? {
                out.emit(rows);
            }
        }
        self.evict(ctx)
    }

    fn handle_watermark(
        &mut self,
        watermark: EventTime,
        ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        if self.processing() {
            return Ok(());
        }
        self.watermark = self.watermark.max(watermark).max(ctx.watermark);
        // Timers registered at checkpoints mirror the queues; drop the due ones.
        let _ = ctx.timers.advance_watermark(self.watermark);
        self.fire_and_purge(self.watermark, ctx, out)
    }

    fn more_to_fire(&self) -> bool {
        self.more
    }

    fn tick_interval(&self) -> Option<Duration> {
        self.processing().then_some(TICK)
    }

    fn handle_tick(
        &mut self,
        now_ms: i64,
        ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        if !self.processing() {
            return Ok(());
        }
        let now = now_ms.max(self.clock.now_ms());
        let _ = ctx.timers.advance_processing_time(now);
        self.fire_and_purge(now, ctx, out)
    }

    fn snapshot_table(&mut self, _epoch: u64, mut log: TableLogWriter) -> Result<TableSnapshot> {
        if self.pending.is_some() {
            return Err(op_error(
                "a table snapshot began before the previous one was finished",
            ));
        }
        let full = log.is_full();
        let removed = std::mem::take(&mut self.removed);
        let mut rk = Vec::with_capacity(64);
        if !full {
            // Deletions first: a merged session may reuse an address it replaced.
            for (kg, key, start, end) in removed {
                encode_table_key(&mut rk, start, end, key.as_slice());
                log.delete(kg, &rk);
            }
        }
        // Only mark the windows here; their values are logged after the barrier,
        // between batches, or just before they change (copy-on-write).
        let mut todo = Vec::new();
        for kw in self.keys.iter_mut() {
            for (start, w) in kw.windows.iter_mut() {
                if full || w.dirty {
                    w.snap = true;
                    w.dirty = false;
                    w.persisted = true;
                    todo.push((kw.key.clone(), start));
                }
            }
        }
        if todo.is_empty() {
            return Ok(TableSnapshot::Done(log));
        }
        self.pending = Some(PendingLog {
            log,
            todo,
            next: 0,
            rk,
        });
        Ok(TableSnapshot::Deferred)
    }

    fn continue_table_snapshot(&mut self, budget: usize) -> Result<Option<TableLogWriter>> {
        let Some(p) = self.pending.as_mut() else {
            return Ok(None);
        };
        let end = p.next.saturating_add(budget).min(p.todo.len());
        for i in p.next..end {
            let (key, start) = &p.todo[i];
            let bytes = key.as_slice();
            let hash = self.hasher.hash_one(bytes);
            let Some(kw) = self
                .keys
                .find_mut(hash, |kw| kw.hash == hash && kw.key.as_slice() == bytes)
            else {
                continue; // gone: logged when it went
            };
            let Some(w) = kw.windows.get_mut(*start) else {
                continue;
            };
            if w.snap {
                w.snap = false;
                log_window(&mut p.log, &mut p.rk, kw.key_group, bytes, *start, w)?;
            }
        }
        p.next = end;
        if end < p.todo.len() {
            return Ok(None);
        }
        Ok(self.pending.take().map(|p| p.log))
    }

    fn handle_end_of_input(
        &mut self,
        ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        // The final watermark normally did this already; processing-time windows and
        // inputs that never sent it close here.
        self.fire_and_purge(i64::MAX, ctx, out)
    }

    fn queryable_key(&self) -> Option<(SchemaRef, Vec<usize>)> {
        (!self.plan.key_columns.is_empty())
            .then(|| (self.plan.input.clone(), self.plan.key_columns.clone()))
    }

    /// The open windows of a key (still in state: not fired, or fired and within the
    /// allowed lateness), each with its aggregates so far and whether it fired.
    fn read_state(&mut self, read: &StateRead, ctx: &mut OperatorContext) -> Result<StateAnswer> {
        let windows_of = |op: &Self, key: &[u8]| -> Result<Option<serde_json::Value>> {
            let Some(kw) = op.find(key, op.hash(key)) else {
                return Ok(None);
            };
            let entries: Vec<QueueEntry> = kw
                .windows
                .iter()
                .map(|(start, w)| (w.end, kw.key.clone(), start))
                .collect();
            let fired: Vec<bool> = kw.windows.iter().map(|(_, w)| w.fired).collect();
            let Some(batch) = op.rows(&entries, false)? else {
                return Ok(None);
            };
            let mut rows = crate::steps::rows_json(&batch)?;
            for (r, f) in rows.iter_mut().zip(fired) {
                if let Some(o) = r.as_object_mut() {
                    o.remove(super::plan::IS_UPDATE);
                    o.insert("fired".into(), serde_json::Value::Bool(f));
                }
            }
            Ok(Some(serde_json::json!({ "windows": rows })))
        };
        // A key moved to keyed state comes back to memory to be answered.
        let load = |op: &mut Self, ctx: &mut OperatorContext, key: &[u8]| -> Result<()> {
            let hash = op.hash(key);
            if op.find(key, hash).is_none() {
                let kg = ctx.key_group_of(key);
                op.load_key(key, kg, ctx)?;
            }
            Ok(())
        };
        let answer = match read {
            StateRead::Get { key, .. } => {
                load(self, ctx, key)?;
                StateAnswer::Value(windows_of(self, key)?)
            }
            StateRead::Scan {
                prefix,
                after,
                limit,
            } => {
                let mut keys: Vec<Vec<u8>> = self
                    .keys
                    .iter()
                    .map(|kw| kw.key.as_slice().to_vec())
                    .collect();
                keys.extend(self.moved_keys_list(ctx)?.into_iter().map(|(_, k)| k));
                let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                let texts = crate::steps::key_texts(&self.plan.codec, &refs)?;
                let chosen =
                    crate::steps::scan_choice(texts, prefix.as_deref(), after.as_deref(), *limit);
                let mut out = Vec::with_capacity(chosen.len());
                for (text, i) in chosen {
                    load(self, ctx, &keys[i])?;
                    if let Some(v) = windows_of(self, &keys[i])? {
                        out.push((text, v));
                    }
                }
                StateAnswer::Entries(out)
            }
        };
        self.evict(ctx)?;
        Ok(answer)
    }

    fn side_outputs(&self) -> Vec<(String, SchemaRef)> {
        vec![(LATE_OUTPUT.to_string(), self.plan.input.clone())]
    }
}

#[cfg(test)]
mod fit_tests {
    use super::*;
    use proptest::prelude::*;

    fn around(v: i64) -> impl Strategy<Value = i64> {
        (-3i64..=3).prop_map(move |d| v.saturating_add(d))
    }

    proptest! {
        /// The `i64` fast path agrees with the `i128` computation, near its bounds too.
        #[test]
        fn fast_path_matches_wide(
            t in prop_oneof![any::<i64>(), -100_000i64..100_000, around(1 << 60), around(-(1 << 60)), around(i64::MAX), around(i64::MIN)],
            size in prop_oneof![1i64..100_000, around(1 << 60), around(i64::MAX), 1i64..10],
            slide in prop_oneof![1i64..100_000, around(1 << 60), around(i64::MAX), 1i64..10],
        ) {
            prop_assume!(size > 0 && slide > 0);
            prop_assert_eq!(fixed_windows_fit(t, size, slide), fixed_windows_fit_wide(t, size, slide));
        }
    }
}
