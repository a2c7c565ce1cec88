//! The window operator's memory tier: with a memory budget (`state: { backend: rocksdb,
//! memory_budget: ... }`), open windows stay in memory while they fit, and beyond the
//! budget the coldest keys move into keyed state (RocksDB) with all their windows, and
//! come back when a record of theirs arrives or one of their windows is due.
//!
//! Layout in keyed state, both at the key's key group (so rescaling moves them with the
//! key):
//! - `window-spill`, value at (key group, key): `min due i64 LE`, then per window
//!   `start i64 LE | end i64 LE | len u32 LE | value` (the table log's window value);
//! - `window-spill-due`, a map at (key group, empty key): `due (order-preserving
//!   big-endian) | key` → empty: the keys of the group by their earliest due time (the
//!   fire time of an unfired window, the purge time of a fired one), which the
//!   watermark walks.
//!
//! A key lives in exactly one tier: moving it out writes it to keyed state and
//! removes it from memory (its windows that the table log holds are deleted there at
//! the next checkpoint); moving it back deletes it from keyed state and marks its
//! windows changed (logged at the next checkpoint). So a checkpoint's keyed state and
//! table log together hold each window once, and restoring either tier restores it.
//!
//! The sweep is a clock: it walks the key table, sparing a key used since the last
//! sweep once, and moves keys out until the estimate is a quarter below the budget
//! (one sweep moves many keys: RocksDB takes them as one run of writes).

use std::collections::{BTreeSet, HashMap};

use weir_engine::operator::OperatorContext;
use weir_engine::state::{hash_key, key_group_for_hash, StateAddr, StateDescriptor};
use weir_engine::Result;

use super::super::keys::{KeyIds, WKey};
use super::{encode_window_value, op_error, KeyWindows, QueueEntry, Window, WindowOperator};

/// Name of the keyed state holding the keys moved out of memory.
pub const SPILL_STATE: &str = "window-spill";
/// Name of the map (per key group) of moved keys by their earliest due time.
pub const SPILL_DUE_STATE: &str = "window-spill-due";

/// How many due keys come back to memory at a time when the watermark passes them.
const DUE_CHUNK: usize = 4096;
/// How many chunks one firing call takes before it lets its output flow.
pub(super) const CHUNKS_PER_CALL: usize = 4;
/// How many keys the memory estimate samples.
const SAMPLE: usize = 64;
/// Batches between two samples of the memory estimate.
const RESAMPLE_BATCHES: u32 = 64;

/// The memory tier's bookkeeping.
pub(super) struct Spill {
    /// Bytes the windows in memory may take.
    budget: usize,
    state: StateDescriptor,
    due: StateDescriptor,
    /// Whether keyed state may hold moved keys (a key missing in memory is looked up).
    active: bool,
    /// Per key group holding moved keys: a lower bound of their earliest due time.
    bound: HashMap<u16, i64>,
    /// `bound` ordered by time: the key groups to walk when the watermark passes.
    by_due: BTreeSet<(i64, u16)>,
    /// Per key group: the index entry the last walk stopped at. Entries before it were
    /// taken (their deletions are still in RocksDB's way until compaction), so the next
    /// walk seeks there instead of skipping them again; forgotten when an entry is
    /// added at or before it.
    resume: HashMap<u16, Vec<u8>>,
    /// Estimated bytes per key in memory (with its windows and queue entries).
    bytes_per_key: usize,
    /// Batches since the estimate was sampled.
    since_sample: u32,
    /// Keys moved out and back in (for tests and the debug log).
    moved_out: u64,
    moved_in: u64,
    buf: Vec<u8>,
}

impl Spill {
    /// The tier for an operator opened with `ctx`: bounded by `ctx.memory_budget`, and
    /// present without a budget too when the restored state holds moved keys (they
    /// come back; none moves out).
    pub(super) fn open(ctx: &mut OperatorContext) -> Result<Option<Spill>> {
        let state = StateDescriptor::new(SPILL_STATE);
        let mut bound = HashMap::new();
        let mut by_due = BTreeSet::new();
        // Restored moved keys: their due times are unknown until each group is walked.
        let restored = ctx.state.keys(&state)?.next().transpose()?.is_some();
        if restored {
            for kg in ctx.key_groups.start..ctx.key_groups.end {
                bound.insert(kg, i64::MIN);
                by_due.insert((i64::MIN, kg));
            }
        }
        if ctx.memory_budget.is_none() && !restored {
            return Ok(None);
        }
        Ok(Some(Spill {
            budget: ctx.memory_budget.unwrap_or(usize::MAX),
            state,
            due: StateDescriptor::new(SPILL_DUE_STATE),
            active: restored,
            bound,
            by_due,
            resume: HashMap::new(),
            bytes_per_key: 0,
            since_sample: RESAMPLE_BATCHES,
            moved_out: 0,
            moved_in: 0,
            buf: Vec::new(),
        }))
    }

    /// Lowers key group `kg`'s bound to `due` (an entry with that due time was added).
    fn note_due(&mut self, kg: u16, due: i64) {
        if self
            .resume
            .get(&kg)
            .is_some_and(|r| due_of(r).is_none_or(|d| due <= d))
        {
            self.resume.remove(&kg);
        }
        match self.bound.get(&kg) {
            Some(&b) if b <= due => {}
            old => {
                if let Some(&b) = old {
                    self.by_due.remove(&(b, kg));
                }
                self.bound.insert(kg, due);
                self.by_due.insert((due, kg));
            }
        }
    }

    /// Sets key group `kg`'s bound (`None`: it holds no moved key).
    fn set_bound(&mut self, kg: u16, due: Option<i64>) {
        if let Some(b) = self.bound.remove(&kg) {
            self.by_due.remove(&(b, kg));
        }
        if due.is_none() {
            self.resume.remove(&kg);
        }
        if let Some(d) = due {
            self.bound.insert(kg, d);
            self.by_due.insert((d, kg));
        }
    }
}

/// `due`'s big-endian bytes with the sign bit flipped: byte order is numeric order.
fn due_bytes(due: i64) -> [u8; 8] {
    ((due as u64) ^ (1 << 63)).to_be_bytes()
}

fn due_of(bytes: &[u8]) -> Option<i64> {
    let b: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(b) ^ (1 << 63)) as i64)
}

fn read_i64(b: &[u8], at: usize) -> Option<i64> {
    Some(i64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn read_u32(b: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
}

/// Approximate heap bytes of one queue entry (a B-tree slot and its share of a node).
const QUEUE_ENTRY_BYTES: usize = std::mem::size_of::<QueueEntry>() * 3 / 2;
/// What the allocator adds to each allocation.
const ALLOC_OVERHEAD: usize = 16;

/// Approximate bytes one key and its windows take in memory: its slot in the key
/// table (at the table's average load), the key's and windows' heap parts, each
/// accumulator's allocation and the queue entries. Calibrated against the resident
/// memory of a job whose windows grow (`windows_beyond_the_memory_budget_keep_memory_bounded`).
fn key_bytes(kw: &KeyWindows) -> usize {
    let mut n = std::mem::size_of::<KeyWindows>() * 8 / 5 + 2;
    if let WKey::Heap(k) = &kw.key {
        n += k.len() + 16 + ALLOC_OVERHEAD;
    }
    if kw.windows.0.spilled() {
        n += kw.windows.0.capacity() * std::mem::size_of::<(i64, Window)>() + ALLOC_OVERHEAD;
    }
    for (_, w) in kw.windows.iter() {
        n += QUEUE_ENTRY_BYTES * if w.fired { 1 } else { 2 };
        for a in w.accumulators.iter() {
            n += a.size() + ALLOC_OVERHEAD;
        }
        if w.accumulators.spilled() {
            n += w.accumulators.capacity() * std::mem::size_of::<usize>() * 2 + ALLOC_OVERHEAD;
        }
    }
    // What the parts above leave out (table growth by doubling, allocator size classes
    // and fragmentation): resident memory measured ~1.5 times their sum.
    n * 3 / 2
}

impl WindowOperator {
    /// Keys moved out and back in so far (tests).
    pub fn moved_keys(&self) -> (u64, u64) {
        self.spill
            .as_ref()
            .map_or((0, 0), |s| (s.moved_out, s.moved_in))
    }

    /// The time at which a window next needs the operator: its fire time unfired, its
    /// purge time fired.
    fn due_time(&self, w: &Window) -> i64 {
        if w.fired {
            self.purge_time(w.end)
        } else {
            w.end.saturating_sub(1)
        }
    }

    /// Brings back the moved keys of a batch (`ids` assigned) before its rows apply.
    pub(super) fn load_batch_keys(
        &mut self,
        ids: &KeyIds,
        keys: &weir_engine::state::EncodedKeys,
        ctx: &mut OperatorContext,
    ) -> Result<()> {
        if !self.spill.as_ref().is_some_and(|s| s.active) {
            return Ok(());
        }
        for &(first_row, hash) in &ids.uniq {
            let key = keys.row(first_row as usize);
            if self.find(key, hash).is_none() {
                let kg = key_group_for_hash(hash_key(key), ctx.max_parallelism);
                self.load_key(key, kg, ctx)?;
            }
        }
        Ok(())
    }

    /// Moves `key` (not in memory) back from keyed state, if it is there; whether it
    /// was.
    pub(super) fn load_key(
        &mut self,
        key: &[u8],
        kg: u16,
        ctx: &mut OperatorContext,
    ) -> Result<bool> {
        let Some(sp) = self.spill.as_mut() else {
            return Ok(false);
        };
        let addr = StateAddr::new(kg, key, &[]);
        let Some(value) = ctx.state.value_get(&sp.state, addr)? else {
            return Ok(false);
        };
        let value = value.into_owned();
        ctx.state.value_delete(&sp.state, addr)?;
        let corrupt = || op_error("corrupt moved window state");
        let min_due = read_i64(&value, 0).ok_or_else(corrupt)?;
        let mut due_key = Vec::with_capacity(8 + key.len());
        due_key.extend_from_slice(&due_bytes(min_due));
        due_key.extend_from_slice(key);
        ctx.state
            .map_remove(&sp.due, StateAddr::new(kg, &[], &[]), &due_key)?;
        sp.moved_in += 1;
        let mut at = 8;
        while at < value.len() {
            let start = read_i64(&value, at).ok_or_else(corrupt)?;
            let end = read_i64(&value, at + 8).ok_or_else(corrupt)?;
            let len = read_u32(&value, at + 16).ok_or_else(corrupt)?;
            let body = value.get(at + 20..at + 20 + len).ok_or_else(corrupt)?;
            at += 20 + len;
            let (fired, accumulators) = self.decode_table_value(body)?;
            let window = Window {
                end,
                accumulators,
                fired,
                // Not in the table log (it left it when it moved out): logged at the
                // next checkpoint.
                dirty: true,
                persisted: false,
                snap: false,
                queued: (0, 0),
            };
            self.restore_window(key, kg, ctx.max_parallelism, start, window);
        }
        Ok(true)
    }

    /// Brings back up to [`DUE_CHUNK`] moved keys with a window due at `time`; whether
    /// any came back.
    pub(super) fn load_due_keys(&mut self, time: i64, ctx: &mut OperatorContext) -> Result<bool> {
        let Some(sp) = self.spill.as_mut() else {
            return Ok(false);
        };
        let groups: Vec<(i64, u16)> = sp.by_due.range(..=(time, u16::MAX)).copied().collect();
        let mut chosen: Vec<(u16, Vec<u8>)> = Vec::new();
        for (bound, kg) in groups {
            let mut next: Option<i64> = None;
            let mut full = false;
            let from = match sp.resume.remove(&kg) {
                Some(r) => r,
                None => due_bytes(bound).to_vec(),
            };
            let mut last: Option<Vec<u8>> = None;
            let addr = StateAddr::new(kg, &[], &[]);
            for entry in ctx.state.map_entries_from(&sp.due, addr, &from)? {
                let (uk, _) = entry?;
                let due = due_of(&uk).ok_or_else(|| op_error("corrupt moved-key index"))?;
                if due > time || chosen.len() >= DUE_CHUNK {
                    next = Some(due);
                    full = chosen.len() >= DUE_CHUNK;
                    break;
                }
                chosen.push((kg, uk.get(8..).unwrap_or_default().to_vec()));
                last = Some(uk.into_owned());
            }
            sp.set_bound(kg, next);
            if let (Some(_), Some(l)) = (next, last) {
                sp.resume.insert(kg, l);
            }
            if full {
                break;
            }
        }
        if chosen.is_empty() {
            return Ok(false);
        }
        for (kg, key) in &chosen {
            if !self.load_key(key, *kg, ctx)? {
                return Err(op_error(
                    "a moved key in the due index is missing from keyed state",
                ));
            }
        }
        Ok(true)
    }

    /// Moves the coldest keys out of memory while the memory tier is over its budget.
    pub(super) fn evict(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        let Some(sp) = self.spill.as_mut() else {
            return Ok(());
        };
        if sp.budget == usize::MAX || self.keys.is_empty() {
            return Ok(());
        }
        sp.since_sample += 1;
        if sp.since_sample >= RESAMPLE_BATCHES || sp.bytes_per_key == 0 {
            sp.since_sample = 0;
            let (n, total) = self
                .keys
                .iter()
                .take(SAMPLE)
                .fold((0usize, 0usize), |(n, t), kw| (n + 1, t + key_bytes(kw)));
            sp.bytes_per_key = (total / n.max(1)).max(1);
        }
        if self.keys.len().saturating_mul(sp.bytes_per_key) <= sp.budget {
            return Ok(());
        }
        let keep = (sp.budget / 4 * 3) / sp.bytes_per_key;
        let mut excess = self.keys.len().saturating_sub(keep);
        let mut victims: Vec<KeyWindows> = Vec::with_capacity(excess);
        // First pass: keys not used since the last sweep (a used one is spared once);
        // second pass, if that was not enough: any.
        for spare_touched in [true, false] {
            if excess == 0 {
                break;
            }
            victims.extend(self.keys.extract_if(|kw| {
                if excess == 0 {
                    return false;
                }
                if spare_touched && kw.touched {
                    kw.touched = false;
                    return false;
                }
                excess -= 1;
                true
            }));
        }
        let n = victims.len();
        for kw in victims {
            self.move_out(kw, ctx)?;
        }
        tracing::debug!(
            operator = %ctx.operator,
            subtask = ctx.subtask,
            moved = n,
            in_memory = self.keys.len(),
            bytes_per_key = self.spill.as_ref().map_or(0, |s| s.bytes_per_key),
            "window keys moved to keyed state"
        );
        Ok(())
    }

    /// Writes a key taken out of the key table, with its windows, to keyed state.
    fn move_out(&mut self, kw: KeyWindows, ctx: &mut OperatorContext) -> Result<()> {
        let KeyWindows {
            key,
            key_group,
            windows,
            ..
        } = kw;
        let bytes = key.as_slice();
        let mut buf = self
            .spill
            .as_mut()
            .map(|s| std::mem::take(&mut s.buf))
            .unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(&[0; 8]);
        let mut min_due = i64::MAX;
        for (start, mut w) in windows.0 {
            // Its barrier-time value, if a table snapshot still needs it.
            super::before_change(&mut self.pending, key_group, bytes, start, &mut w)?;
            self.live -= 1;
            if !w.fired {
                self.to_fire.remove(&(w.queued.0, key.clone(), start));
            }
            let purge = self.purge_time(w.queued.1);
            self.to_purge.remove(&(purge, key.clone(), start));
            if w.persisted {
                self.removed.push((key_group, key.clone(), start, w.end));
            }
            min_due = min_due.min(self.due_time(&w));
            buf.extend_from_slice(&start.to_le_bytes());
            buf.extend_from_slice(&w.end.to_le_bytes());
            let at = buf.len();
            buf.extend_from_slice(&[0; 4]);
            encode_window_value(&mut buf, &w)?;
            let len = (buf.len() - at - 4) as u32;
            buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
        buf[..8].copy_from_slice(&min_due.to_le_bytes());
        let Some(sp) = self.spill.as_mut() else {
            return Err(op_error("no memory tier"));
        };
        ctx.state
            .value_put(&sp.state, StateAddr::new(key_group, bytes, &[]), &buf)?;
        let mut due_key = Vec::with_capacity(8 + bytes.len());
        due_key.extend_from_slice(&due_bytes(min_due));
        due_key.extend_from_slice(bytes);
        ctx.state
            .map_put(&sp.due, StateAddr::new(key_group, &[], &[]), &due_key, &[])?;
        sp.note_due(key_group, min_due);
        sp.active = true;
        sp.moved_out += 1;
        sp.buf = buf;
        Ok(())
    }

    /// Every moved key of the key groups this subtask owns (queryable state scans).
    pub(super) fn moved_keys_list(&self, ctx: &OperatorContext) -> Result<Vec<(u16, Vec<u8>)>> {
        let Some(sp) = self.spill.as_ref().filter(|s| s.active) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for a in ctx.state.keys(&sp.state)? {
            let a = a?;
            if ctx.key_groups.contains(a.key_group) {
                out.push((a.key_group, a.key));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_bytes_keep_numeric_order() {
        let times = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        for w in times.windows(2) {
            assert!(due_bytes(w[0]) < due_bytes(w[1]), "{w:?}");
        }
        for t in times {
            assert_eq!(due_of(&due_bytes(t)), Some(t));
        }
    }
}
