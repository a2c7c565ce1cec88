//! The portable, full snapshot of one subtask's keyed state and timers, grouped by key
//! group so that it can be split by key-group range when a job is restored with another
//! parallelism. It is the canonical format (savepoints, rescaling, the in-memory
//! backend's checkpoints); a RocksDB backend can produce it from its files too.
//!
//! [`StateSnapshot::to_bytes`] writes a versioned binary form (a magic header, then
//! postcard).

use serde::{Deserialize, Serialize};

use super::backend::KeyedStateBackend;
use super::key_group::KeyGroupRange;
use super::timers::{TimeDomain, TimerService};
use super::{state_error, StateKind};
use crate::error::Result;

const MAGIC: &[u8; 6] = b"WEIRKS";
const VERSION: u16 = 1;
const SNAPSHOT: &str = "snapshot";

/// A stored value and when it was last written (ms, by the backend's clock), for TTL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamped {
    /// The value bytes.
    pub value: Vec<u8>,
    /// Processing time of the last write in ms.
    pub written_ms: i64,
}

/// A state in a snapshot or a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateInfo {
    /// The state's name.
    pub name: String,
    /// Value, map or list.
    pub kind: StateKind,
    /// The TTL in ms, if any.
    pub ttl_ms: Option<i64>,
}

/// What a state holds at one `(key group, key, namespace)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryData {
    /// One value.
    Value(Stamped),
    /// Map entries sorted by user key.
    Map(Vec<(Vec<u8>, Stamped)>),
    /// List values, oldest first.
    List(Vec<Stamped>),
}

impl EntryData {
    /// The kind of state this data belongs to.
    pub fn kind(&self) -> StateKind {
        match self {
            EntryData::Value(_) => StateKind::Value,
            EntryData::Map(_) => StateKind::Map,
            EntryData::List(_) => StateKind::List,
        }
    }
}

/// The data of one state at one `(key, namespace)` of a key group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEntry {
    /// Index into [`StateSnapshot::states`].
    pub state: u32,
    /// The key bytes.
    pub key: Vec<u8>,
    /// The namespace bytes.
    pub namespace: Vec<u8>,
    /// The data.
    pub data: EntryData,
}

/// One timer of a key group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SnapshotTimer {
    /// Event or processing time.
    pub domain: TimeDomain,
    /// When it fires (ms).
    pub timestamp: i64,
    /// The key bytes.
    pub key: Vec<u8>,
    /// The namespace bytes.
    pub namespace: Vec<u8>,
}

/// Everything of one key group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyGroupSnapshot {
    /// The key group.
    pub key_group: u16,
    /// State entries, sorted by (state, key, namespace).
    pub entries: Vec<SnapshotEntry>,
    /// Timers, sorted.
    pub timers: Vec<SnapshotTimer>,
}

/// A full snapshot of one subtask's keyed state and timers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSnapshot {
    /// The states; entries refer to them by index.
    pub states: Vec<StateInfo>,
    /// The key groups holding data, sorted by key group, each at most once.
    pub key_groups: Vec<KeyGroupSnapshot>,
}

impl StateSnapshot {
    /// An empty snapshot.
    pub fn new() -> Self {
        StateSnapshot::default()
    }

    /// Whether the snapshot holds no entry and no timer.
    pub fn is_empty(&self) -> bool {
        self.key_groups
            .iter()
            .all(|g| g.entries.is_empty() && g.timers.is_empty())
    }

    /// Number of state entries (addresses) over all key groups.
    pub fn entry_count(&self) -> usize {
        self.key_groups.iter().map(|g| g.entries.len()).sum()
    }

    /// Number of timers over all key groups.
    pub fn timer_count(&self) -> usize {
        self.key_groups.iter().map(|g| g.timers.len()).sum()
    }

    /// The index of the state named `name`.
    pub fn state_index(&self, name: &str) -> Option<u32> {
        self.states
            .iter()
            .position(|s| s.name == name)
            .and_then(|i| u32::try_from(i).ok())
    }

    /// The index of state `info`, added if missing; an error if a state of that name
    /// has another kind.
    pub fn ensure_state(&mut self, info: &StateInfo) -> Result<u32> {
        if let Some(i) = self.state_index(&info.name) {
            let existing = &self.states[i as usize];
            if existing.kind != info.kind {
                return Err(state_error(
                    &info.name,
                    format!(
                        "is a {} state in one snapshot and a {} state in another",
                        existing.kind, info.kind
                    ),
                ));
            }
            return Ok(i);
        }
        let i = u32::try_from(self.states.len())
            .map_err(|_| state_error(&info.name, "too many states in one snapshot"))?;
        self.states.push(info.clone());
        Ok(i)
    }

    /// The data of key group `key_group`, if it holds any.
    pub fn key_group(&self, key_group: u16) -> Option<&KeyGroupSnapshot> {
        self.key_groups
            .binary_search_by_key(&key_group, |g| g.key_group)
            .ok()
            .map(|i| &self.key_groups[i])
    }

    /// The data of key group `key_group`, created empty (in order) if missing.
    pub fn key_group_mut(&mut self, key_group: u16) -> &mut KeyGroupSnapshot {
        let i = match self
            .key_groups
            .binary_search_by_key(&key_group, |g| g.key_group)
        {
            Ok(i) => i,
            Err(i) => {
                self.key_groups.insert(
                    i,
                    KeyGroupSnapshot {
                        key_group,
                        ..KeyGroupSnapshot::default()
                    },
                );
                i
            }
        };
        &mut self.key_groups[i]
    }

    /// The part of the snapshot in `range`.
    pub fn filter(&self, range: &KeyGroupRange) -> StateSnapshot {
        StateSnapshot {
            states: self.states.clone(),
            key_groups: self
                .key_groups
                .iter()
                .filter(|g| range.contains(g.key_group))
                .cloned()
                .collect(),
        }
    }

    /// Adds everything of `other` (e.g. the snapshots of several previous subtasks).
    pub fn merge(&mut self, other: StateSnapshot) -> Result<()> {
        let mapping = other
            .states
            .iter()
            .map(|info| self.ensure_state(info))
            .collect::<Result<Vec<u32>>>()?;
        for group in other.key_groups {
            let target = self.key_group_mut(group.key_group);
            for mut entry in group.entries {
                entry.state = *mapping.get(entry.state as usize).ok_or_else(|| {
                    state_error(
                        SNAPSHOT,
                        format!("entry refers to unknown state {}", entry.state),
                    )
                })?;
                target.entries.push(entry);
            }
            target.entries.sort_by(|a, b| {
                (a.state, &a.key, &a.namespace).cmp(&(b.state, &b.key, &b.namespace))
            });
            target.timers.extend(group.timers);
            target.timers.sort();
            target.timers.dedup();
        }
        Ok(())
    }

    /// Checks internal consistency: known state indexes, kinds that match, key groups
    /// sorted and unique.
    pub fn validate(&self) -> Result<()> {
        for (i, s) in self.states.iter().enumerate() {
            if self.states[..i].iter().any(|t| t.name == s.name) {
                return Err(state_error(&s.name, "appears twice in a snapshot"));
            }
        }
        for w in self.key_groups.windows(2) {
            if w[0].key_group >= w[1].key_group {
                return Err(state_error(SNAPSHOT, "key groups are not sorted"));
            }
        }
        for g in &self.key_groups {
            for e in &g.entries {
                let info = self.states.get(e.state as usize).ok_or_else(|| {
                    state_error(
                        SNAPSHOT,
                        format!("entry refers to unknown state {}", e.state),
                    )
                })?;
                if info.kind != e.data.kind() {
                    return Err(state_error(
                        &info.name,
                        format!("is a {} state but holds {} data", info.kind, e.data.kind()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The versioned binary form.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        let body = postcard::to_allocvec(self)
            .map_err(|e| state_error(SNAPSHOT, format!("cannot serialize: {e}")))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Reads the binary form written by [`StateSnapshot::to_bytes`], and validates it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let header = MAGIC.len() + 2;
        if bytes.len() < header || &bytes[..MAGIC.len()] != MAGIC {
            return Err(state_error(SNAPSHOT, "not a weir keyed-state snapshot"));
        }
        let version = u16::from_be_bytes([bytes[MAGIC.len()], bytes[MAGIC.len() + 1]]);
        if version != VERSION {
            return Err(state_error(
                SNAPSHOT,
                format!("unsupported snapshot version {version} (this build reads {VERSION})"),
            ));
        }
        let snapshot: StateSnapshot = postcard::from_bytes(&bytes[header..])
            .map_err(|e| state_error(SNAPSHOT, format!("corrupt snapshot: {e}")))?;
        snapshot.validate()?;
        Ok(snapshot)
    }
}

/// Snapshots a subtask's keyed state and its timers into one [`StateSnapshot`].
pub fn snapshot_keyed_state<B: KeyedStateBackend + ?Sized>(
    backend: &B,
    timers: &TimerService,
) -> Result<StateSnapshot> {
    let mut snapshot = backend.snapshot()?;
    timers.snapshot_into(&mut snapshot);
    Ok(snapshot)
}

/// Restores the part of `snapshot` in `range` into a subtask's keyed state and timers.
/// Call once per snapshot of the previous run whose key groups overlap `range`.
pub fn restore_keyed_state<B: KeyedStateBackend + ?Sized>(
    backend: &mut B,
    timers: &mut TimerService,
    snapshot: &StateSnapshot,
    range: &KeyGroupRange,
) -> Result<()> {
    snapshot.validate()?;
    backend.restore(snapshot, range)?;
    timers.restore(snapshot, range);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped(v: &[u8]) -> Stamped {
        Stamped {
            value: v.to_vec(),
            written_ms: 7,
        }
    }

    fn sample() -> StateSnapshot {
        let mut s = StateSnapshot::new();
        let a = s
            .ensure_state(&StateInfo {
                name: "a".into(),
                kind: StateKind::Value,
                ttl_ms: None,
            })
            .expect("a");
        let m = s
            .ensure_state(&StateInfo {
                name: "m".into(),
                kind: StateKind::Map,
                ttl_ms: Some(5),
            })
            .expect("m");
        s.key_group_mut(9).entries.push(SnapshotEntry {
            state: a,
            key: b"k".to_vec(),
            namespace: vec![],
            data: EntryData::Value(stamped(b"v")),
        });
        s.key_group_mut(2).entries.push(SnapshotEntry {
            state: m,
            key: b"k2".to_vec(),
            namespace: b"ns".to_vec(),
            data: EntryData::Map(vec![(b"u".to_vec(), stamped(b"x"))]),
        });
        s.key_group_mut(2).timers.push(SnapshotTimer {
            domain: TimeDomain::EventTime,
            timestamp: 10,
            key: b"k2".to_vec(),
            namespace: vec![],
        });
        s
    }

    #[test]
    fn bytes_roundtrip_and_reject_garbage() {
        let s = sample();
        assert_eq!(
            s.key_groups.iter().map(|g| g.key_group).collect::<Vec<_>>(),
            vec![2, 9]
        );
        let bytes = s.to_bytes().expect("to bytes");
        assert_eq!(StateSnapshot::from_bytes(&bytes).expect("from bytes"), s);
        assert!(StateSnapshot::from_bytes(b"nope").is_err());
        let mut wrong_version = bytes.clone();
        wrong_version[7] = 9;
        assert!(StateSnapshot::from_bytes(&wrong_version).is_err());
        assert!(StateSnapshot::from_bytes(&bytes[..bytes.len() - 3]).is_err());
    }

    #[test]
    fn validate_catches_inconsistencies() {
        let mut s = sample();
        s.key_groups[0].entries[0].state = 0; // a value state holding map data
        assert!(s.validate().is_err());
        let mut s = sample();
        s.key_groups[0].entries[0].state = 5;
        assert!(s.validate().is_err());
        let mut s = sample();
        s.key_groups.swap(0, 1);
        assert!(s.validate().is_err());
    }

    #[test]
    fn filter_and_merge() {
        let s = sample();
        let low = s.filter(&KeyGroupRange::new(0, 5));
        let high = s.filter(&KeyGroupRange::new(5, 128));
        assert_eq!(low.entry_count(), 1);
        assert_eq!(low.timer_count(), 1);
        assert_eq!(high.entry_count(), 1);
        // Merge into a snapshot whose state indexes differ.
        let mut merged = StateSnapshot::new();
        merged
            .ensure_state(&StateInfo {
                name: "m".into(),
                kind: StateKind::Map,
                ttl_ms: Some(5),
            })
            .expect("m");
        merged.merge(high).expect("high");
        merged.merge(low).expect("low");
        merged.validate().expect("valid");
        assert_eq!(merged.entry_count(), 2);
        let e = &merged.key_group(9).expect("kg 9").entries[0];
        assert_eq!(merged.states[e.state as usize].name, "a");
        // A kind conflict is an error.
        let mut conflict = StateSnapshot::new();
        conflict
            .ensure_state(&StateInfo {
                name: "a".into(),
                kind: StateKind::List,
                ttl_ms: None,
            })
            .expect("a");
        assert!(conflict.merge(sample()).is_err());
    }
}
