//! Per-key timers in event time and processing time. An operator registers a timer for
//! `(timestamp, key group, key, namespace)`; when the watermark (or the wall clock)
//! reaches the timestamp, the timer is handed back once, in timestamp order. Timers are
//! part of the checkpointed state: [`TimerService::snapshot_into`] writes them into the
//! key groups of a [`StateSnapshot`]; with a journal
//! ([`TimerService::enable_journal`]) the runtime instead writes only the timers
//! registered or removed since the last checkpoint into the keyed state backend
//! ([`TimerService::flush_journal`]), so that checkpoints of a RocksDB backend stay
//! incremental, and reads them back with [`TimerService::restore_from_backend`].

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::backend::KeyedStateBackend;
use super::key_group::KeyGroupRange;
use super::snapshot::{SnapshotTimer, StateSnapshot};
use super::StateAddr;
use super::{decode_namespace_i64, namespace_i64, state_error, StateDescriptor};
use crate::error::Result;

/// The keyed state in which journaled timers are stored: one empty value per timer at
/// `(key group, key, domain | timestamp | namespace)`.
pub const TIMER_STATE: &str = "__weir_timers";

/// Which clock a timer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TimeDomain {
    /// Fires when the watermark reaches the timestamp.
    EventTime,
    /// Fires when the wall clock reaches the timestamp.
    ProcessingTime,
}

/// One timer. Timers order by timestamp, then key group, key and namespace, which is
/// the order in which timers of equal timestamp fire.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timer {
    /// When it fires (ms).
    pub timestamp: i64,
    /// The key group of the key.
    pub key_group: u16,
    /// The key bytes.
    pub key: Vec<u8>,
    /// The namespace bytes (e.g. the window).
    pub namespace: Vec<u8>,
}

impl Timer {
    /// A timer.
    pub fn new(timestamp: i64, key_group: u16, key: &[u8], namespace: &[u8]) -> Self {
        Timer {
            timestamp,
            key_group,
            key: key.to_vec(),
            namespace: namespace.to_vec(),
        }
    }

    /// The smallest timer with timestamp `timestamp`.
    fn lowest_at(timestamp: i64) -> Self {
        Timer {
            timestamp,
            key_group: 0,
            key: Vec::new(),
            namespace: Vec::new(),
        }
    }
}

/// The timers of one time domain, ordered and without duplicates.
#[derive(Debug, Clone, Default)]
struct TimerQueue {
    timers: BTreeSet<Timer>,
}

impl TimerQueue {
    /// Removes and returns every timer with `timestamp <= time`, in order.
    fn take_due(&mut self, time: i64) -> Vec<Timer> {
        let due = match time.checked_add(1) {
            Some(next) => {
                let later = self.timers.split_off(&Timer::lowest_at(next));
                std::mem::replace(&mut self.timers, later)
            }
            None => std::mem::take(&mut self.timers),
        };
        due.into_iter().collect()
    }

    /// Removes and returns the first timer if it is due at `time`.
    fn poll(&mut self, time: i64) -> Option<Timer> {
        if self.timers.first()?.timestamp <= time {
            self.timers.pop_first()
        } else {
            None
        }
    }
}

/// The timers of one operator subtask.
#[derive(Debug, Clone)]
pub struct TimerService {
    event: TimerQueue,
    processing: TimerQueue,
    watermark: i64,
    processing_time: i64,
    /// Timers registered (`true`) or removed (`false`) since the last flush.
    journal: Option<HashMap<(TimeDomain, Timer), bool>>,
}

impl Default for TimerService {
    fn default() -> Self {
        TimerService::new()
    }
}

impl TimerService {
    /// No timers; watermark and processing time at `i64::MIN`.
    pub fn new() -> Self {
        TimerService {
            event: TimerQueue::default(),
            processing: TimerQueue::default(),
            watermark: i64::MIN,
            processing_time: i64::MIN,
            journal: None,
        }
    }

    /// Records every change from now on, for [`TimerService::flush_journal`].
    pub fn enable_journal(&mut self) {
        if self.journal.is_none() {
            self.journal = Some(HashMap::new());
        }
    }

    fn record(&mut self, domain: TimeDomain, timer: &Timer, present: bool) {
        if let Some(j) = self.journal.as_mut() {
            j.insert((domain, timer.clone()), present);
        }
    }

    fn record_removed(&mut self, domain: TimeDomain, timers: &[Timer]) {
        if let Some(j) = self.journal.as_mut() {
            for t in timers {
                j.insert((domain, t.clone()), false);
            }
        }
    }

    /// Writes the changes since the last flush into `backend` (state [`TIMER_STATE`]);
    /// the number of changes written.
    pub fn flush_journal(&mut self, backend: &mut dyn KeyedStateBackend) -> Result<usize> {
        let Some(journal) = self.journal.as_mut() else {
            return Ok(0);
        };
        let changes = std::mem::take(journal);
        let desc = StateDescriptor::new(TIMER_STATE);
        let n = changes.len();
        for ((domain, t), present) in changes {
            let ns = timer_namespace(domain, t.timestamp, &t.namespace);
            if present {
                backend.value_put(&desc, StateAddr::new(t.key_group, &t.key, &ns), &[])?;
            } else {
                backend.value_delete(&desc, StateAddr::new(t.key_group, &t.key, &ns))?;
            }
        }
        Ok(n)
    }

    /// Registers the timers stored by [`TimerService::flush_journal`] in `backend`
    /// whose key group is in `range`; the number registered.
    pub fn restore_from_backend(
        &mut self,
        backend: &dyn KeyedStateBackend,
        range: &KeyGroupRange,
    ) -> Result<usize> {
        if !backend.states().iter().any(|s| s.name == TIMER_STATE) {
            return Ok(0);
        }
        let desc = StateDescriptor::new(TIMER_STATE);
        let mut n = 0;
        for k in backend.keys(&desc)? {
            let k = k?;
            if !range.contains(k.key_group) {
                continue;
            }
            let (domain, ts, ns) = parse_timer_namespace(&k.namespace)
                .ok_or_else(|| state_error(TIMER_STATE, "corrupt timer entry"))?;
            let t = Timer::new(ts, k.key_group, &k.key, ns);
            self.queue(domain).timers.insert(t);
            n += 1;
        }
        Ok(n)
    }

    fn queue(&mut self, domain: TimeDomain) -> &mut TimerQueue {
        match domain {
            TimeDomain::EventTime => &mut self.event,
            TimeDomain::ProcessingTime => &mut self.processing,
        }
    }

    /// Registers `timer`; `false` if the same timer was already registered (it still
    /// fires once). A timer at or behind the current time fires at the next advance.
    pub fn register(&mut self, domain: TimeDomain, timer: Timer) -> bool {
        self.record(domain, &timer, true);
        self.queue(domain).timers.insert(timer)
    }

    /// Deletes `timer`; whether it was registered.
    pub fn delete(&mut self, domain: TimeDomain, timer: &Timer) -> bool {
        let removed = self.queue(domain).timers.remove(timer);
        if removed {
            self.record(domain, timer, false);
        }
        removed
    }

    /// Registers an event-time timer; `false` if it was already registered.
    pub fn register_event_timer(
        &mut self,
        timestamp: i64,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
    ) -> bool {
        self.register(
            TimeDomain::EventTime,
            Timer::new(timestamp, key_group, key, namespace),
        )
    }

    /// Deletes an event-time timer; whether it was registered.
    pub fn delete_event_timer(
        &mut self,
        timestamp: i64,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
    ) -> bool {
        self.delete(
            TimeDomain::EventTime,
            &Timer::new(timestamp, key_group, key, namespace),
        )
    }

    /// Registers a processing-time timer; `false` if it was already registered.
    pub fn register_processing_timer(
        &mut self,
        timestamp: i64,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
    ) -> bool {
        self.register(
            TimeDomain::ProcessingTime,
            Timer::new(timestamp, key_group, key, namespace),
        )
    }

    /// Deletes a processing-time timer; whether it was registered.
    pub fn delete_processing_timer(
        &mut self,
        timestamp: i64,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
    ) -> bool {
        self.delete(
            TimeDomain::ProcessingTime,
            &Timer::new(timestamp, key_group, key, namespace),
        )
    }

    /// Advances the watermark to `watermark` (it never goes back) and removes and
    /// returns the event-time timers with `timestamp <= watermark`, in timer order.
    /// Timers that handlers register while firing fire at the next advance; use
    /// [`TimerService::poll_event_timer`] to fire them in the same pass.
    pub fn advance_watermark(&mut self, watermark: i64) -> Vec<Timer> {
        self.watermark = self.watermark.max(watermark);
        let due = self.event.take_due(watermark);
        self.record_removed(TimeDomain::EventTime, &due);
        due
    }

    /// Advances processing time to `now_ms` and removes and returns the
    /// processing-time timers with `timestamp <= now_ms`, in timer order.
    pub fn advance_processing_time(&mut self, now_ms: i64) -> Vec<Timer> {
        self.processing_time = self.processing_time.max(now_ms);
        let due = self.processing.take_due(now_ms);
        self.record_removed(TimeDomain::ProcessingTime, &due);
        due
    }

    /// Removes and returns the first event-time timer if `timestamp <= watermark`.
    /// Calling this in a loop also fires timers registered by earlier handlers.
    pub fn poll_event_timer(&mut self, watermark: i64) -> Option<Timer> {
        self.watermark = self.watermark.max(watermark);
        let t = self.event.poll(watermark)?;
        self.record(TimeDomain::EventTime, &t, false);
        Some(t)
    }

    /// Removes and returns the first processing-time timer if `timestamp <= now_ms`.
    pub fn poll_processing_timer(&mut self, now_ms: i64) -> Option<Timer> {
        self.processing_time = self.processing_time.max(now_ms);
        let t = self.processing.poll(now_ms)?;
        self.record(TimeDomain::ProcessingTime, &t, false);
        Some(t)
    }

    /// The timestamp of the earliest event-time timer.
    pub fn next_event_timer(&self) -> Option<i64> {
        self.event.timers.first().map(|t| t.timestamp)
    }

    /// The timestamp of the earliest processing-time timer (for scheduling a wake-up).
    pub fn next_processing_timer(&self) -> Option<i64> {
        self.processing.timers.first().map(|t| t.timestamp)
    }

    /// The highest watermark seen by [`TimerService::advance_watermark`].
    pub fn current_watermark(&self) -> i64 {
        self.watermark
    }

    /// The highest processing time seen by [`TimerService::advance_processing_time`].
    pub fn current_processing_time(&self) -> i64 {
        self.processing_time
    }

    /// The pending event-time timers, in order.
    pub fn event_timers(&self) -> impl Iterator<Item = &Timer> + '_ {
        self.event.timers.iter()
    }

    /// The pending processing-time timers, in order.
    pub fn processing_timers(&self) -> impl Iterator<Item = &Timer> + '_ {
        self.processing.timers.iter()
    }

    /// Number of pending timers of both domains.
    pub fn len(&self) -> usize {
        self.event.timers.len() + self.processing.timers.len()
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes every pending timer into the key groups of `snapshot`.
    pub fn snapshot_into(&self, snapshot: &mut StateSnapshot) {
        for (domain, queue) in [
            (TimeDomain::EventTime, &self.event),
            (TimeDomain::ProcessingTime, &self.processing),
        ] {
            for t in &queue.timers {
                snapshot
                    .key_group_mut(t.key_group)
                    .timers
                    .push(SnapshotTimer {
                        domain,
                        timestamp: t.timestamp,
                        key: t.key.clone(),
                        namespace: t.namespace.clone(),
                    });
            }
        }
        for g in &mut snapshot.key_groups {
            g.timers.sort();
            g.timers.dedup();
        }
    }

    /// Adds the timers of `snapshot` whose key group is in `range`.
    pub fn restore(&mut self, snapshot: &StateSnapshot, range: &KeyGroupRange) {
        for g in &snapshot.key_groups {
            if !range.contains(g.key_group) {
                continue;
            }
            for t in &g.timers {
                self.register(
                    t.domain,
                    Timer::new(t.timestamp, g.key_group, &t.key, &t.namespace),
                );
            }
        }
    }
}

/// `domain (1 byte) | timestamp (order-preserving) | namespace`.
fn timer_namespace(domain: TimeDomain, timestamp: i64, namespace: &[u8]) -> Vec<u8> {
    let mut ns = Vec::with_capacity(9 + namespace.len());
    ns.push(match domain {
        TimeDomain::EventTime => 0,
        TimeDomain::ProcessingTime => 1,
    });
    ns.extend_from_slice(&namespace_i64(timestamp));
    ns.extend_from_slice(namespace);
    ns
}

fn parse_timer_namespace(ns: &[u8]) -> Option<(TimeDomain, i64, &[u8])> {
    let domain = match ns.first()? {
        0 => TimeDomain::EventTime,
        1 => TimeDomain::ProcessingTime,
        _ => return None,
    };
    let ts = decode_namespace_i64(ns.get(1..9)?)?;
    Some((domain, ts, &ns[9..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn timers_fire_in_order_and_once() {
        let mut t = TimerService::new();
        assert!(t.register_event_timer(30, 1, b"a", b""));
        assert!(t.register_event_timer(10, 2, b"b", b""));
        assert!(t.register_event_timer(20, 1, b"a", b"w1"));
        assert!(!t.register_event_timer(10, 2, b"b", b""), "duplicate");
        assert!(t.register_event_timer(10, 1, b"z", b""));
        assert_eq!(t.next_event_timer(), Some(10));
        assert!(t.advance_watermark(9).is_empty());
        let fired = t.advance_watermark(20);
        let got: Vec<(i64, u16, &[u8])> = fired
            .iter()
            .map(|x| (x.timestamp, x.key_group, x.key.as_slice()))
            .collect();
        // Ties on the timestamp fire by key group, then key.
        assert_eq!(
            got,
            vec![(10, 1, &b"z"[..]), (10, 2, &b"b"[..]), (20, 1, &b"a"[..])]
        );
        assert!(t.advance_watermark(20).is_empty(), "fired once only");
        assert_eq!(t.current_watermark(), 20);
        // A lower watermark does not move the current one back.
        assert!(t.advance_watermark(5).is_empty());
        assert_eq!(t.current_watermark(), 20);
        // Deleting prevents firing.
        assert!(t.delete_event_timer(30, 1, b"a", b""));
        assert!(!t.delete_event_timer(30, 1, b"a", b""));
        assert!(t.advance_watermark(i64::MAX).is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn domains_are_separate() {
        let mut t = TimerService::new();
        t.register_processing_timer(100, 0, b"k", b"");
        t.register_event_timer(100, 0, b"k", b"");
        assert!(t.advance_processing_time(99).is_empty());
        assert_eq!(t.advance_processing_time(100).len(), 1);
        assert_eq!(t.next_processing_timer(), None);
        assert_eq!(t.next_event_timer(), Some(100));
        assert_eq!(t.advance_watermark(i64::MAX).len(), 1);
    }

    #[test]
    fn poll_fires_timers_registered_while_firing() {
        let mut t = TimerService::new();
        t.register_event_timer(5, 0, b"k", b"");
        let mut fired = Vec::new();
        while let Some(timer) = t.poll_event_timer(10) {
            if timer.timestamp == 5 {
                t.register_event_timer(7, 0, b"k", b"");
                t.register_event_timer(11, 0, b"k", b"");
            }
            fired.push(timer.timestamp);
        }
        assert_eq!(fired, vec![5, 7]);
        assert_eq!(t.next_event_timer(), Some(11));
    }

    #[test]
    fn snapshot_restore_splits_by_key_group() {
        let mut t = TimerService::new();
        for kg in 0..8u16 {
            t.register_event_timer(i64::from(kg), kg, b"k", b"n");
            t.register_processing_timer(100 + i64::from(kg), kg, b"k", b"");
        }
        let mut snap = StateSnapshot::new();
        t.snapshot_into(&mut snap);
        assert_eq!(snap.timer_count(), 16);
        let mut low = TimerService::new();
        low.restore(&snap, &KeyGroupRange::new(0, 3));
        let mut high = TimerService::new();
        high.restore(&snap, &KeyGroupRange::new(3, 8));
        assert_eq!(low.len(), 6);
        assert_eq!(high.len(), 10);
        let mut all: Vec<Timer> = low.advance_watermark(i64::MAX);
        all.extend(high.advance_watermark(i64::MAX));
        all.sort();
        assert_eq!(all, t.event_timers().cloned().collect::<Vec<_>>());
        assert_eq!(high.next_processing_timer(), Some(103));
    }

    proptest! {
        #[test]
        fn every_timer_fires_exactly_once_in_order(
            regs in proptest::collection::vec((0i64..50, 0u16..4, 0u8..3), 0..60),
            marks in proptest::collection::vec(0i64..60, 1..10),
        ) {
            let mut t = TimerService::new();
            let mut expected = BTreeSet::new();
            for (ts, kg, k) in &regs {
                t.register_event_timer(*ts, *kg, &[*k], b"");
                expected.insert(Timer::new(*ts, *kg, &[*k], b""));
            }
            let mut fired = Vec::new();
            for m in marks {
                let batch = t.advance_watermark(m);
                for x in &batch {
                    prop_assert!(x.timestamp <= m);
                }
                prop_assert!(batch.windows(2).all(|w| w[0] < w[1]));
                fired.extend(batch);
                prop_assert!(t.next_event_timer().is_none_or(|n| n > m));
            }
            fired.extend(t.advance_watermark(i64::MAX));
            let as_set: BTreeSet<Timer> = fired.iter().cloned().collect();
            prop_assert_eq!(as_set.len(), fired.len(), "a timer fired twice");
            prop_assert_eq!(as_set, expected);
            prop_assert_eq!(t.current_watermark(), i64::MAX);
        }
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn journal_round_trips_through_a_backend() {
        use crate::state::InMemoryStateBackend;
        let mut t = TimerService::new();
        t.enable_journal();
        let mut backend = InMemoryStateBackend::new();
        t.register_event_timer(10, 3, b"k", b"w1");
        t.register_event_timer(20, 3, b"k", b"w2");
        t.register_processing_timer(5, 7, b"x", b"");
        assert_eq!(t.flush_journal(&mut backend).unwrap(), 3);
        // Fired, deleted and new timers after the first flush.
        assert_eq!(t.advance_watermark(10).len(), 1);
        t.delete_processing_timer(5, 7, b"x", b"");
        t.register_event_timer(-4, 100, b"\x00", b"n");
        t.flush_journal(&mut backend).unwrap();
        let mut restored = TimerService::new();
        let all = KeyGroupRange::new(0, 127);
        assert_eq!(restored.restore_from_backend(&backend, &all).unwrap(), 2);
        let got: Vec<_> = restored.event_timers().cloned().collect();
        let want: Vec<_> = t.event_timers().cloned().collect();
        assert_eq!(got, want);
        assert_eq!(restored.processing_timers().count(), 0);
        // Only the owned key groups.
        let mut part = TimerService::new();
        part.restore_from_backend(&backend, &KeyGroupRange::new(0, 50))
            .unwrap();
        assert_eq!(part.len(), 1);
    }
}
