//! The join operator: buffers each input's rows per key, pairs them up (interval join:
//! on arrival of the second row of a pair; window join: when the window fires), emits
//! unmatched rows of outer joins padded with nulls once the watermark says no partner
//! can come, prunes each buffer as the watermark passes, and writes the buffers to
//! keyed state at checkpoints (read back in `open`).
//!
//! Hot path, per batch: the event times, the key bytes ([`KeyCodec::encode`]) and the
//! [`arrow::row`] encoding of the whole batch, once each; then per row one hash lookup
//! of its key and a range scan of the other side's buffer (ordered by event time).
//! Output rows are gathered as row bytes in two arenas and decoded back into columns
//! once per batch. Keyed state is touched only at checkpoints and in `open`.
//!
//! [`KeyCodec::encode`]: weir_engine::state::KeyCodec::encode

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::{
    new_null_array, Array, ArrayRef, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, RowParser, SortField};
use serde::{Deserialize, Serialize};
use weir_engine::message::EventTime;
use weir_engine::metrics::OperatorMetrics;
use weir_engine::operator::{Collector, Operator, OperatorContext};
use weir_engine::state::{
    hash_key, key_group_for_hash, restore_watermarks, StateDescriptor, StateKey,
};
use weir_engine::time::event_times_ms;
use weir_engine::{EngineError, Result};

use super::plan::{JoinMode, JoinPlan, OutputColumn, LATE_LEFT, LATE_RIGHT};
use crate::window::WindowKind;
use weir_engine::state::StateAddr;

/// Name of the keyed state holding the left buffer of each key: (key group, key bytes,
/// empty namespace) → the buffered rows (postcard, see [`StoredRow`]).
pub const JOIN_LEFT_STATE: &str = "join-left";
/// Name of the keyed state holding the right buffer of each key.
pub const JOIN_RIGHT_STATE: &str = "join-right";
/// Name of the keyed state holding the operator's watermark (one entry per owned key
/// group, empty key).
pub const JOIN_WATERMARK_STATE: &str = "join-watermark";

/// A buffered row as written at checkpoints.
#[derive(Debug, Serialize, Deserialize)]
struct StoredRow {
    ts: i64,
    matched: bool,
    /// The row in [`arrow::row`] format of the side's [`RowConverter`].
    row: Vec<u8>,
}

/// A buffered row.
struct Entry {
    ts: i64,
    row: Box<[u8]>,
    /// Whether it met a partner (outer interval joins emit it padded if not).
    matched: bool,
}

/// One side's rows of one key, ordered by event time (rows of equal time in arrival
/// order). A sorted ring buffer: rows mostly arrive in time order (a push at the back),
/// expire from the front (a pop, however many rows the key holds), a row out of order
/// moves the nearer end only, and a drained buffer keeps its allocation for the key's
/// next rows (up to [`Buffer::shrink`]).
#[derive(Default)]
struct Buffer {
    rows: VecDeque<Entry>,
}

/// Buffered rows in time order.
type Rows<'a> = std::collections::vec_deque::Iter<'a, Entry>;

impl Buffer {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn insert(&mut self, entry: Entry) {
        let at = match self.rows.back() {
            Some(last) if last.ts > entry.ts => self.rows.partition_point(|e| e.ts <= entry.ts),
            _ => self.rows.len(),
        };
        self.rows.insert(at, entry);
    }

    /// The index range of the rows with `lo <= ts` and `ts <= hi` (`inclusive`) or
    /// `ts < hi`.
    fn bounds(&self, lo: i64, hi: i64, inclusive: bool) -> std::ops::Range<usize> {
        if self.rows.is_empty() {
            return 0..0;
        }
        let start = self.rows.partition_point(|e| e.ts < lo);
        let end = if inclusive {
            self.rows.partition_point(|e| e.ts <= hi)
        } else {
            self.rows.partition_point(|e| e.ts < hi)
        };
        start..end.max(start)
    }

    /// The rows with `lo <= ts <= hi`.
    fn range_mut(&mut self, lo: i64, hi: i64) -> std::collections::vec_deque::IterMut<'_, Entry> {
        let r = self.bounds(lo, hi, true);
        self.rows.range_mut(r)
    }

    /// The rows with `lo <= ts <= hi`.
    fn range(&self, lo: i64, hi: i64) -> Rows<'_> {
        self.rows.range(self.bounds(lo, hi, true))
    }

    /// The rows with `lo <= ts < hi`.
    fn range_below(&self, lo: i64, hi: i64) -> Rows<'_> {
        self.rows.range(self.bounds(lo, hi, false))
    }

    /// Removes the rows at or before `bound`; they are yielded in order.
    fn take_until(&mut self, bound: i64) -> std::collections::vec_deque::Drain<'_, Entry> {
        let n = match (self.rows.front(), self.rows.back()) {
            (Some(first), _) if first.ts > bound => 0,
            (_, Some(last)) if last.ts <= bound => self.rows.len(),
            _ => self.rows.partition_point(|e| e.ts <= bound),
        };
        self.rows.drain(..n)
    }

    /// Gives back most of the memory of a buffer that once held many more rows.
    fn shrink(&mut self) {
        if self.rows.capacity() > 64 && self.rows.len() * 4 < self.rows.capacity() {
            self.rows.shrink_to(self.rows.len() * 2);
        }
    }
}

/// Both buffers of one key.
struct KeyState {
    key: Arc<[u8]>,
    key_group: u16,
    sides: [Buffer; 2],
    /// Changed since the last checkpoint.
    dirty: bool,
    /// Which sides are in keyed state (and must be deleted there when emptied).
    persisted: [bool; 2],
}

impl KeyState {
    fn is_empty(&self) -> bool {
        self.sides[0].len() == 0 && self.sides[1].len() == 0
    }
}

/// `(time, key, extra)`: interval joins expire side `extra` of `key` at `time`; fixed
/// window joins fire the window starting at `extra`; session joins look at `key`.
type QueueEntry = (i64, Arc<[u8]>, i64);

/// Row bytes laid end to end.
#[derive(Default)]
struct Arena {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl Arena {
    fn push(&mut self, row: &[u8]) {
        self.data.extend_from_slice(row);
        self.ends.push(self.data.len());
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let row = &self.data[start..end];
            start = end;
            row
        })
    }
}

/// Output rows gathered while a batch or a watermark is handled.
#[derive(Default)]
struct Output {
    /// Matched pairs: left rows and right rows, in step.
    pairs: [Arena; 2],
    pair_windows: Vec<(i64, i64)>,
    /// Unmatched rows per side.
    only: [Arena; 2],
    only_windows: [Vec<(i64, i64)>; 2],
}

/// The `join` step's operator. Create it with [`JoinOperator::new`] from a
/// [`JoinPlan`] (what the `join` step factory does for every subtask).
pub struct JoinOperator {
    plan: Arc<JoinPlan>,
    converters: [RowConverter; 2],
    parsers: [RowParser; 2],
    keys: hashbrown::HashMap<Arc<[u8]>, KeyState, ahash::RandomState>,
    queue: BTreeSet<QueueEntry>,
    /// Persisted keys dropped since the last checkpoint.
    removed: Vec<(u16, Arc<[u8]>, [bool; 2])>,
    buffered: usize,
    /// Keys in `keys` whose buffers are both empty. They stay (a key that comes back
    /// soon costs no allocation) until they are half of all keys; see [`Self::sweep`].
    empty_keys: usize,
    watermark: EventTime,
    /// Number of key groups (from the context), to file new keys under theirs.
    max_parallelism: u16,
    states: [StateDescriptor; 2],
    watermark_state: StateDescriptor,
}

impl std::fmt::Debug for JoinOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinOperator")
            .field("plan", &self.plan.describe())
            .field("buffered_rows", &self.buffered)
            .field("watermark", &self.watermark)
            .finish()
    }
}

fn op_error(message: impl Into<String>) -> EngineError {
    EngineError::operator("join", message)
}

fn arrow_error(what: &str, e: arrow::error::ArrowError) -> EngineError {
    EngineError::arrow(format!("join: {what}"), e)
}

fn converter(schema: &SchemaRef) -> Result<RowConverter> {
    RowConverter::new(
        schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )
    .map_err(|e| arrow_error("these columns cannot be buffered", e))
}

/// The newest window start of a record at `t` in fixed windows (`size`, `slide`), or
/// `None` when one of its windows would reach past the range of `i64`.
fn newest_start(t: i64, size: i64, slide: i64) -> Option<i64> {
    let newest = t.checked_sub(t.rem_euclid(slide))?;
    newest.checked_add(size)?;
    t.checked_sub(size)?;
    Some(newest)
}

impl JoinOperator {
    /// An operator for `plan`.
    pub fn new(plan: Arc<JoinPlan>) -> Result<Self> {
        let converters = [
            converter(&plan.sides[0].schema)?,
            converter(&plan.sides[1].schema)?,
        ];
        let parsers = [converters[0].parser(), converters[1].parser()];
        Ok(JoinOperator {
            plan,
            converters,
            parsers,
            keys: hashbrown::HashMap::default(),
            queue: BTreeSet::new(),
            removed: Vec::new(),
            buffered: 0,
            empty_keys: 0,
            watermark: EventTime::MIN,
            max_parallelism: 128,
            states: [
                StateDescriptor::new(JOIN_LEFT_STATE),
                StateDescriptor::new(JOIN_RIGHT_STATE),
            ],
            watermark_state: StateDescriptor::new(JOIN_WATERMARK_STATE),
        })
    }

    /// Rows held in the buffers (both sides, all keys).
    pub fn buffered_rows(&self) -> usize {
        self.buffered
    }

    /// Keys with buffered rows.
    pub fn buffered_keys(&self) -> usize {
        self.keys.len().saturating_sub(self.empty_keys)
    }

    fn current_watermark(&self, ctx: &OperatorContext) -> EventTime {
        self.watermark.max(ctx.watermark)
    }

    /// Whether a row of side `side` at `t` is too late at watermark `w`: some of its
    /// partners may already be gone.
    fn is_late(&self, t: i64, w: EventTime) -> bool {
        match self.plan.options.mode {
            JoinMode::Interval { .. } => t <= w,
            // Not `t + gap - 1 <= w`: a row behind the watermark may belong to a session
            // that already fired (and whose rows are gone).
            JoinMode::Window(WindowKind::Session { .. }) => t <= w,
            JoinMode::Window(WindowKind::Tumbling { size }) => {
                newest_start(t, size, size).is_none_or(|s| s + size - 1 <= w)
            }
            JoinMode::Window(WindowKind::Sliding { size, slide }) => {
                newest_start(t, size, slide).is_none_or(|s| s + size - 1 <= w)
            }
        }
    }

    fn fixed(&self) -> Option<(i64, i64)> {
        match self.plan.options.mode {
            JoinMode::Window(WindowKind::Tumbling { size }) => Some((size, size)),
            JoinMode::Window(WindowKind::Sliding { size, slide }) => Some((size, slide)),
            _ => None,
        }
    }

    /// Queues what a row of `side` at `t` needs: its expiry (interval), its windows
    /// that fire after `w` (fixed windows) or a look at its key's sessions.
    fn enqueue(&mut self, side: usize, t: i64, key: &Arc<[u8]>, w: EventTime) {
        match self.plan.options.mode {
            JoinMode::Interval { lower, upper } => {
                let expiry = if side == 0 {
                    t.saturating_sub(lower)
                } else {
                    t.saturating_add(upper)
                };
                self.queue.insert((expiry, key.clone(), side as i64));
            }
            JoinMode::Window(WindowKind::Session { gap }) => {
                self.queue
                    .insert((t.saturating_add(gap - 1), key.clone(), 0));
            }
            JoinMode::Window(_) => {
                let Some((size, slide)) = self.fixed() else {
                    return;
                };
                let Some(newest) = newest_start(t, size, slide) else {
                    return;
                };
                let mut s = newest;
                while s > t - size {
                    let fire = s + size - 1;
                    if fire > w {
                        self.queue.insert((fire, key.clone(), s));
                    }
                    match s.checked_sub(slide) {
                        Some(next) => s = next,
                        None => break,
                    }
                }
            }
        }
    }

    /// The key's state, created if missing (one hash lookup either way).
    fn key_state(&mut self, key: &[u8]) -> &mut KeyState {
        match self.keys.entry_ref(key) {
            hashbrown::hash_map::EntryRef::Occupied(e) => {
                let ks = e.into_mut();
                if ks.is_empty() {
                    // An empty key kept by `advance` is about to get a row.
                    self.empty_keys = self.empty_keys.saturating_sub(1);
                }
                ks
            }
            hashbrown::hash_map::EntryRef::Vacant(e) => {
                let k: Arc<[u8]> = Arc::from(key);
                let state = KeyState {
                    key: k.clone(),
                    key_group: key_group_for_hash(hash_key(key), self.max_parallelism),
                    sides: [Buffer::default(), Buffer::default()],
                    dirty: false,
                    persisted: [false, false],
                };
                e.insert_with_key(k, state)
            }
        }
    }

    /// Buffers one row of `side` and, in an interval join, pairs it with the other
    /// side's buffered rows in its interval.
    fn insert(
        &mut self,
        side: usize,
        t: i64,
        key: &[u8],
        row: &[u8],
        w: EventTime,
        out: &mut Output,
    ) {
        let mode = self.plan.options.mode;
        let ks = self.key_state(key);
        let mut matched = false;
        if let JoinMode::Interval { lower, upper } = mode {
            let other = 1 - side;
            // left.ts - right.ts ∈ [lower, upper].
            let (lo, hi) = if side == 0 {
                (t.saturating_sub(upper), t.saturating_sub(lower))
            } else {
                (t.saturating_add(lower), t.saturating_add(upper))
            };
            for e in ks.sides[other].range_mut(lo, hi) {
                e.matched = true;
                matched = true;
                out.pairs[side].push(row);
                out.pairs[other].push(&e.row);
            }
        }
        ks.sides[side].insert(Entry {
            ts: t,
            row: row.into(),
            matched,
        });
        ks.dirty = true;
        let k = ks.key.clone();
        self.buffered += 1;
        self.enqueue(side, t, &k, w);
    }

    /// A row whose key has a null never matches: an outer join on its side emits it
    /// at once (once per window in a window join); an inner join drops it.
    fn unmatchable(&self, side: usize, t: i64, row: &[u8], w: EventTime, out: &mut Output) {
        if !self.plan.options.join_type.keeps(side) {
            return;
        }
        match self.plan.options.mode {
            JoinMode::Interval { .. } => out.only[side].push(row),
            JoinMode::Window(WindowKind::Session { gap }) => {
                out.only[side].push(row);
                out.only_windows[side].push((t, t.saturating_add(gap)));
            }
            JoinMode::Window(_) => {
                let Some((size, slide)) = self.fixed() else {
                    return;
                };
                let Some(newest) = newest_start(t, size, slide) else {
                    return;
                };
                let mut s = newest;
                while s > t - size {
                    if s + size - 1 > w {
                        out.only[side].push(row);
                        out.only_windows[side].push((s, s + size));
                    }
                    match s.checked_sub(slide) {
                        Some(next) => s = next,
                        None => break,
                    }
                }
            }
        }
    }

    /// Drops the keys that hold nothing (their keyed state, if any, is deleted at the
    /// next checkpoint).
    fn sweep(&mut self) {
        let removed = &mut self.removed;
        self.keys.retain(|_, ks| {
            if !ks.is_empty() {
                return true;
            }
            if ks.persisted.iter().any(|p| *p) {
                removed.push((ks.key_group, ks.key.clone(), ks.persisted));
            }
            false
        });
        self.empty_keys = 0;
    }

    /// Handles every queued entry due at watermark `w`: expiries, windows, sessions.
    fn advance(&mut self, w: EventTime, out: &mut Output) {
        let jt = self.plan.options.join_type;
        // Session keys already looked at for `w`: a key has one queue entry per row
        // time, and looking again at the same watermark finds nothing new.
        let mut seen: std::collections::HashSet<Arc<[u8]>, ahash::RandomState> = Default::default();
        let sessions = matches!(
            self.plan.options.mode,
            JoinMode::Window(WindowKind::Session { .. })
        );
        while let Some(first) = self.queue.first() {
            if first.0 > w {
                break;
            }
            let Some((_, key, extra)) = self.queue.pop_first() else {
                break;
            };
            if sessions && !seen.insert(key.clone()) {
                continue;
            }
            let Some(ks) = self.keys.get_mut(&key) else {
                continue;
            };
            let mut dropped = 0;
            match self.plan.options.mode {
                JoinMode::Interval { lower, upper } => {
                    let side = if extra == 0 { 0 } else { 1 };
                    // Rows of this side no future row of the other side can match.
                    let bound = if w == EventTime::MAX {
                        EventTime::MAX
                    } else if side == 0 {
                        w.saturating_add(lower)
                    } else {
                        w.saturating_sub(upper)
                    };
                    for e in ks.sides[side].take_until(bound) {
                        dropped += 1;
                        if !e.matched && jt.keeps(side) {
                            out.only[side].push(&e.row);
                        }
                    }
                }
                JoinMode::Window(WindowKind::Session { gap }) => {
                    dropped = fire_sessions(ks, gap, w, jt, out);
                }
                JoinMode::Window(WindowKind::Tumbling { size }) => {
                    dropped = fire_window(ks, extra, size, size, jt, out);
                }
                JoinMode::Window(WindowKind::Sliding { size, slide }) => {
                    dropped = fire_window(ks, extra, size, slide, jt, out);
                }
            }
            ks.dirty = true;
            self.buffered -= dropped;
            for b in &mut ks.sides {
                b.shrink();
            }
            if dropped > 0 && ks.is_empty() {
                self.empty_keys += 1;
            }
        }
        if self.empty_keys > 1024 && self.empty_keys * 2 > self.keys.len() {
            self.sweep();
        }
    }

    /// Decodes one side's rows.
    fn decode(&self, side: usize, rows: &Arena) -> Result<Vec<ArrayRef>> {
        let parser = &self.parsers[side];
        self.converters[side]
            .convert_rows(rows.iter().map(|b| parser.parse(b)))
            .map_err(|e| arrow_error("decoding buffered rows", e))
    }

    /// An output batch of `n` rows from left rows, right rows (either may be absent:
    /// nulls) and windows.
    fn assemble(
        &self,
        left: Option<&Arena>,
        right: Option<&Arena>,
        windows: &[(i64, i64)],
        n: usize,
    ) -> Result<RecordBatch> {
        let l = left.map(|a| self.decode(0, a)).transpose()?;
        let r = right.map(|a| self.decode(1, a)).transpose()?;
        let schema = self.plan.output.clone();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for (c, field) in self.plan.columns.iter().zip(schema.fields()) {
            let array = match *c {
                OutputColumn::Left(i) => l.as_ref().map(|a| a[i].clone()),
                OutputColumn::Right(i) => r.as_ref().map(|a| a[i].clone()),
                OutputColumn::Key(li, ri) => match (&l, &r) {
                    (Some(a), _) => Some(a[li].clone()),
                    (None, Some(b)) => Some(b[ri].clone()),
                    (None, None) => None,
                },
                OutputColumn::WindowStart => Some(Arc::new(TimestampMillisecondArray::from(
                    windows.iter().map(|w| w.0).collect::<Vec<_>>(),
                )) as ArrayRef),
                OutputColumn::WindowEnd => Some(Arc::new(TimestampMillisecondArray::from(
                    windows.iter().map(|w| w.1).collect::<Vec<_>>(),
                )) as ArrayRef),
            };
            let array = match array {
                Some(a) if a.data_type() == field.data_type() => a,
                Some(a) => arrow::compute::cast(&a, field.data_type())
                    .map_err(|e| arrow_error("casting an output column", e))?,
                None => new_null_array(field.data_type(), n),
            };
            columns.push(array);
        }
        RecordBatch::try_new(schema, columns).map_err(|e| arrow_error("building output", e))
    }

    /// Emits what `out` gathered: pairs, then unmatched left rows, then unmatched right.
    fn emit(&self, out: Output, collector: &mut Collector) -> Result<()> {
        let n = out.pairs[0].len();
        if n > 0 {
            collector.emit(self.assemble(
                Some(&out.pairs[0]),
                Some(&out.pairs[1]),
                &out.pair_windows,
                n,
            )?);
        }
        for side in 0..2 {
            let n = out.only[side].len();
            if n == 0 {
                continue;
            }
            let rows = Some(&out.only[side]);
            let batch = if side == 0 {
                self.assemble(rows, None, &out.only_windows[0], n)?
            } else {
                self.assemble(None, rows, &out.only_windows[1], n)?
            };
            collector.emit(batch);
        }
        Ok(())
    }
}

/// Fires the fixed window `[start, start + size)` of one key: pairs every left row in
/// it with every right row, or emits the rows of a side alone (outer joins); then
/// drops the rows whose last window this was. Returns the number of rows dropped.
fn fire_window(
    ks: &mut KeyState,
    start: i64,
    size: i64,
    slide: i64,
    jt: super::plan::JoinType,
    out: &mut Output,
) -> usize {
    let end = start.saturating_add(size);
    let window = (start, end);
    pair_up(
        ks.sides[0].range_below(start, end),
        ks.sides[1].range_below(start, end),
        window,
        jt,
        out,
    );
    // Rows whose newest window starts at `start`: every window of theirs has fired.
    let bound = start.saturating_add(slide).saturating_sub(1);
    let mut dropped = 0;
    for side in 0..2 {
        dropped += ks.sides[side].take_until(bound).len();
    }
    dropped
}

/// Pairs every left row with every right row of one window; in outer joins, a side
/// alone is emitted padded.
fn pair_up(
    lefts: Rows<'_>,
    rights: Rows<'_>,
    window: (i64, i64),
    jt: super::plan::JoinType,
    out: &mut Output,
) {
    if lefts.len() > 0 && rights.len() > 0 {
        for l in lefts {
            for r in rights.clone() {
                out.pairs[0].push(&l.row);
                out.pairs[1].push(&r.row);
                out.pair_windows.push(window);
            }
        }
        return;
    }
    for (side, rows) in [(0usize, lefts), (1, rights)] {
        if jt.keeps(side) {
            for e in rows {
                out.only[side].push(&e.row);
                out.only_windows[side].push(window);
            }
        }
    }
}

/// Fires the complete sessions of one key at watermark `w`: the rows of both sides
/// ordered by time split where two neighbours are `gap` or more apart; a session
/// `[first, last + gap)` is complete once `last + gap - 1 <= w`. Returns the number of
/// rows dropped.
fn fire_sessions(
    ks: &mut KeyState,
    gap: i64,
    w: EventTime,
    jt: super::plan::JoinType,
    out: &mut Output,
) -> usize {
    let mut times: Vec<i64> = ks.sides[0]
        .rows
        .iter()
        .chain(&ks.sides[1].rows)
        .map(|e| e.ts)
        .collect();
    times.sort_unstable();
    times.dedup();
    // Complete sessions as (first, last).
    let mut sessions: Vec<(i64, i64)> = Vec::new();
    let mut current: Option<(i64, i64)> = None;
    for t in times {
        current = match current {
            Some((first, last)) if t.saturating_sub(last) < gap => Some((first, t)),
            Some(s) => {
                sessions.push(s);
                Some((t, t))
            }
            None => Some((t, t)),
        };
    }
    sessions.extend(current);
    let mut last_complete = None;
    for (first, last) in sessions {
        let end = last.saturating_add(gap);
        if end.saturating_sub(1) > w && w != EventTime::MAX {
            break;
        }
        pair_up(
            ks.sides[0].range(first, last),
            ks.sides[1].range(first, last),
            (first, end),
            jt,
            out,
        );
        last_complete = Some(last);
    }
    let Some(bound) = last_complete else {
        return 0;
    };
    let mut dropped = 0;
    for side in 0..2 {
        dropped += ks.sides[side].take_until(bound).len();
    }
    dropped
}

/// Whether row `i` has a null in one of `columns`.
fn null_keys(batch: &RecordBatch, columns: &[usize]) -> Vec<bool> {
    let mut out = vec![false; batch.num_rows()];
    for &c in columns {
        let col = batch.column(c);
        if let Some(nulls) = col.logical_nulls() {
            for (i, valid) in nulls.iter().enumerate() {
                if !valid {
                    out[i] = true;
                }
            }
        }
    }
    out
}

impl Operator for JoinOperator {
    fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        self.max_parallelism = ctx.max_parallelism;
        // The watermark of each owned key group, so that windows that fired before the
        // checkpoint do not fire again: restored by the runtime, or (checkpoints written
        // before it did) from keyed state.
        let group_wm: HashMap<u16, EventTime> =
            restore_watermarks(&*ctx.state, &self.watermark_state, &ctx.key_groups)?
                .into_iter()
                .collect();
        self.watermark = self.watermark.max(ctx.watermark);
        if let Some(w) = group_wm.values().min() {
            self.watermark = self.watermark.max(*w);
            ctx.state.clear_state(&self.watermark_state)?;
        }
        let mut restored: Vec<(usize, i64, Arc<[u8]>, u16)> = Vec::new();
        for side in 0..2 {
            let state = self.states[side].clone();
            let addresses: Vec<StateKey> = ctx.state.keys(&state)?.collect::<Result<Vec<_>>>()?;
            for a in addresses {
                if !ctx.key_groups.contains(a.key_group) {
                    continue;
                }
                let bytes = ctx
                    .state
                    .value_get(&state, a.addr())?
                    .ok_or_else(|| op_error("join state vanished while restoring"))?;
                let rows: Vec<StoredRow> = postcard::from_bytes(&bytes)
                    .map_err(|e| op_error(format!("corrupt join state: {e}")))?;
                if rows.is_empty() {
                    // Never written so; an empty key would not be counted as one.
                    continue;
                }
                let ks = self.key_state(&a.key);
                ks.key_group = a.key_group;
                ks.persisted[side] = true;
                let key = ks.key.clone();
                for r in rows {
                    ks.sides[side].insert(Entry {
                        ts: r.ts,
                        row: r.row.into_boxed_slice(),
                        matched: r.matched,
                    });
                    restored.push((side, r.ts, key.clone(), a.key_group));
                }
            }
        }
        self.buffered = restored.len();
        for (side, t, key, kg) in restored {
            let w = group_wm
                .get(&kg)
                .copied()
                .unwrap_or_else(|| ctx.restored_watermark(kg));
            self.enqueue(side, t, &key, w);
        }
        Ok(())
    }

    fn process_batch(
        &mut self,
        input: usize,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        if input > 1 {
            return Err(op_error(format!(
                "a join has two inputs, got input {input}"
            )));
        }
        let side = input;
        let plan = self.plan.clone();
        let spec = &plan.sides[side];
        let times = event_times_ms(&batch, &spec.time)?;
        let keys = spec.codec.encode(&batch)?;
        let nulls = null_keys(&batch, &spec.key_columns);
        let rows = self.converters[side]
            .convert_columns(batch.columns())
            .map_err(|e| arrow_error("encoding rows", e))?;
        let w = self.current_watermark(ctx);
        self.max_parallelism = ctx.max_parallelism;
        let mut late: Vec<u32> = Vec::new();
        let mut output = Output::default();
        for i in 0..n {
            let t = match times[i] {
                Some(t) if !self.is_late(t, w) => t,
                _ => {
                    late.push(i as u32);
                    continue;
                }
            };
            let row = rows.row(i);
            if nulls[i] {
                self.unmatchable(side, t, row.data(), w, &mut output);
                continue;
            }
            self.insert(side, t, keys.row(i), row.data(), w, &mut output);
        }
        if !late.is_empty() {
            OperatorMetrics::add(&ctx.metrics.late_records, late.len() as u64);
            let idx = UInt32Array::from(late);
            let rows = arrow::compute::take_record_batch(&batch, &idx)
                .map_err(|e| arrow_error("late records", e))?;
            out.emit_side(if side == 0 { LATE_LEFT } else { LATE_RIGHT }, rows);
        }
        self.emit(output, out)
    }

    fn handle_watermark(
        &mut self,
        watermark: EventTime,
        ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        self.watermark = self.watermark.max(watermark).max(ctx.watermark);
        let mut output = Output::default();
        self.advance(self.watermark, &mut output);
        self.emit(output, out)
    }

    fn output_watermark(&self, input: EventTime) -> EventTime {
        if input == EventTime::MAX {
            input
        } else {
            input.saturating_sub(self.plan.holdback())
        }
    }

    fn handle_checkpoint(&mut self, _epoch: u64, ctx: &mut OperatorContext) -> Result<()> {
        for (kg, key, persisted) in std::mem::take(&mut self.removed) {
            for (state, persisted) in self.states.iter().zip(persisted) {
                if persisted {
                    ctx.state.value_delete(state, StateAddr::key(kg, &key))?;
                }
            }
        }
        for ks in self.keys.values_mut() {
            if !ks.dirty {
                continue;
            }
            for side in 0..2 {
                let buffer = &ks.sides[side];
                if buffer.len() == 0 {
                    if ks.persisted[side] {
                        ctx.state.value_delete(
                            &self.states[side],
                            StateAddr::key(ks.key_group, &ks.key),
                        )?;
                        ks.persisted[side] = false;
                    }
                    continue;
                }
                let rows: Vec<StoredRow> = buffer
                    .rows
                    .iter()
                    .map(|e| StoredRow {
                        ts: e.ts,
                        matched: e.matched,
                        row: e.row.to_vec(),
                    })
                    .collect();
                let bytes = postcard::to_allocvec(&rows)
                    .map_err(|e| op_error(format!("serialising a join buffer: {e}")))?;
                ctx.state.value_put(
                    &self.states[side],
                    StateAddr::key(ks.key_group, &ks.key),
                    &bytes,
                )?;
                ks.persisted[side] = true;
            }
            ks.dirty = false;
        }
        // Empty keys were deleted from keyed state just above.
        self.sweep();
        Ok(())
    }

    fn handle_end_of_input(
        &mut self,
        _ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        // The final watermark normally did this already.
        self.watermark = EventTime::MAX;
        let mut output = Output::default();
        self.advance(EventTime::MAX, &mut output);
        self.emit(output, out)
    }

    fn side_outputs(&self) -> Vec<(String, SchemaRef)> {
        vec![
            (LATE_LEFT.to_string(), self.plan.sides[0].schema.clone()),
            (LATE_RIGHT.to_string(), self.plan.sides[1].schema.clone()),
        ]
    }
}
