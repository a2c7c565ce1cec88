//! The in-memory keyed state backend: hash maps per state and key group. The default
//! for small jobs and tests; its snapshots are full copies of the live state.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::backend::{KeyIter, KeyedStateBackend, MapEntryIter, StateKey, ValueIter};
use super::key_group::KeyGroupRange;
use super::snapshot::{EntryData, SnapshotEntry, Stamped, StateInfo, StateSnapshot};
use super::StateAddr;
use super::{state_error, Clock, StateDescriptor, StateKind, SystemClock};
use crate::error::Result;

type Hasher = ahash::RandomState;

/// What one state holds at one `(key group, key, namespace)`.
#[derive(Debug, Clone)]
enum Entry {
    Value(Stamped),
    Map(BTreeMap<Vec<u8>, Stamped>),
    List(Vec<Stamped>),
}

impl Entry {
    fn empty(kind: StateKind) -> Entry {
        match kind {
            StateKind::Value => Entry::Value(Stamped {
                value: Vec::new(),
                written_ms: i64::MIN,
            }),
            StateKind::Map => Entry::Map(BTreeMap::new()),
            StateKind::List => Entry::List(Vec::new()),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Entry::Value(_) => false,
            Entry::Map(m) => m.is_empty(),
            Entry::List(l) => l.is_empty(),
        }
    }

    fn size_bytes(&self) -> usize {
        match self {
            Entry::Value(s) => s.value.len(),
            Entry::Map(m) => m.iter().map(|(k, v)| k.len() + v.value.len()).sum(),
            Entry::List(l) => l.iter().map(|v| v.value.len()).sum(),
        }
    }
}

/// Namespace -> entry, ordered so that namespaces iterate in byte order.
type Namespaces = BTreeMap<Vec<u8>, Entry>;
/// Key -> namespaces of one key group.
type Group = HashMap<Vec<u8>, Namespaces, Hasher>;

/// All data of one state.
#[derive(Debug, Clone)]
struct Table {
    kind: StateKind,
    ttl_ms: Option<i64>,
    groups: HashMap<u16, Group, Hasher>,
}

/// Decides whether a stamped value is alive; reads the clock only for TTL states.
#[derive(Debug, Clone, Copy)]
struct Liveness {
    ttl_ms: Option<i64>,
    now: i64,
}

impl Liveness {
    fn alive(&self, s: &Stamped) -> bool {
        match self.ttl_ms {
            None => true,
            Some(ttl) => self.now.saturating_sub(s.written_ms) < ttl,
        }
    }

    /// The live part of an entry, or `None` if nothing in it is alive.
    fn live_data(&self, entry: &Entry) -> Option<EntryData> {
        match entry {
            Entry::Value(s) => self.alive(s).then(|| EntryData::Value(s.clone())),
            Entry::Map(m) => {
                let v: Vec<(Vec<u8>, Stamped)> = m
                    .iter()
                    .filter(|(_, s)| self.alive(s))
                    .map(|(k, s)| (k.clone(), s.clone()))
                    .collect();
                (!v.is_empty()).then_some(EntryData::Map(v))
            }
            Entry::List(l) => {
                let v: Vec<Stamped> = l.iter().filter(|s| self.alive(s)).cloned().collect();
                (!v.is_empty()).then_some(EntryData::List(v))
            }
        }
    }

    fn any_alive(&self, entry: &Entry) -> bool {
        match entry {
            Entry::Value(s) => self.alive(s),
            Entry::Map(m) => m.values().any(|s| self.alive(s)),
            Entry::List(l) => l.iter().any(|s| self.alive(s)),
        }
    }
}

/// Keyed state held in memory. Reads borrow the stored bytes; snapshots copy the live
/// entries.
#[derive(Debug, Clone)]
pub struct InMemoryStateBackend {
    clock: Arc<dyn Clock>,
    tables: HashMap<String, Table, Hasher>,
}

impl Default for InMemoryStateBackend {
    fn default() -> Self {
        InMemoryStateBackend::new()
    }
}

impl InMemoryStateBackend {
    /// An empty backend whose TTL follows the wall clock.
    pub fn new() -> Self {
        InMemoryStateBackend::with_clock(Arc::new(SystemClock))
    }

    /// An empty backend whose TTL follows `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        InMemoryStateBackend {
            clock,
            tables: HashMap::default(),
        }
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

    /// The table of `state` if it exists, after checking its kind.
    fn table(&self, state: &StateDescriptor, kind: StateKind) -> Result<Option<&Table>> {
        match self.tables.get(&state.name) {
            Some(t) if t.kind != kind => Err(kind_error(&state.name, t.kind, kind)),
            other => Ok(other),
        }
    }

    /// The table of `state`, created if missing, after checking its kind.
    fn table_mut(&mut self, state: &StateDescriptor, kind: StateKind) -> Result<&mut Table> {
        if !self.tables.contains_key(&state.name) {
            self.tables.insert(
                state.name.clone(),
                Table {
                    kind,
                    ttl_ms: state.ttl_ms(),
                    groups: HashMap::default(),
                },
            );
        }
        let table = self
            .tables
            .get_mut(&state.name)
            .ok_or_else(|| state_error(&state.name, "table vanished"))?;
        if table.kind != kind {
            return Err(kind_error(&state.name, table.kind, kind));
        }
        table.ttl_ms = state.ttl_ms();
        Ok(table)
    }

    /// The existing table of `state` of any kind.
    fn table_any_mut(&mut self, state: &StateDescriptor) -> Option<&mut Table> {
        self.tables.get_mut(&state.name)
    }

    fn entry(
        &self,
        state: &StateDescriptor,
        kind: StateKind,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<Option<&Entry>> {
        Ok(self.table(state, kind)?.and_then(|t| {
            t.groups
                .get(&key_group)
                .and_then(|g| g.get(key))
                .and_then(|n| n.get(namespace))
        }))
    }

    /// The entry at an address, created empty if missing. Also returns the write time.
    fn entry_mut(
        &mut self,
        state: &StateDescriptor,
        kind: StateKind,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<(&mut Entry, i64)> {
        let now = self.clock.now_ms();
        let table = self.table_mut(state, kind)?;
        let group = table.groups.entry(key_group).or_default();
        if !group.contains_key(key) {
            group.insert(key.to_vec(), Namespaces::new());
        }
        let namespaces = group
            .get_mut(key)
            .ok_or_else(|| state_error(&state.name, "key vanished"))?;
        if !namespaces.contains_key(namespace) {
            namespaces.insert(namespace.to_vec(), Entry::empty(kind));
        }
        let entry = namespaces
            .get_mut(namespace)
            .ok_or_else(|| state_error(&state.name, "namespace vanished"))?;
        Ok((entry, now))
    }

    /// Removes the address if its entry is empty, and empty parents with it.
    fn prune(&mut self, state: &StateDescriptor, key_group: u16, key: &[u8], namespace: &[u8]) {
        let Some(table) = self.table_any_mut(state) else {
            return;
        };
        let Some(group) = table.groups.get_mut(&key_group) else {
            return;
        };
        if let Some(namespaces) = group.get_mut(key) {
            if namespaces.get(namespace).is_some_and(Entry::is_empty) {
                namespaces.remove(namespace);
            }
            if namespaces.is_empty() {
                group.remove(key);
            }
        }
        if group.is_empty() {
            table.groups.remove(&key_group);
        }
    }
}

fn kind_error(name: &str, is: StateKind, used_as: StateKind) -> crate::EngineError {
    state_error(name, format!("is a {is} state, used as a {used_as} state"))
}

fn borrowed(s: &Stamped) -> Cow<'_, [u8]> {
    Cow::Borrowed(s.value.as_slice())
}

impl KeyedStateBackend for InMemoryStateBackend {
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
        let live = self.liveness(state.ttl_ms());
        Ok(
            match self.entry(state, StateKind::Value, key_group, key, namespace)? {
                Some(Entry::Value(s)) if live.alive(s) => Some(borrowed(s)),
                _ => None,
            },
        )
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
        let (entry, now) = self.entry_mut(state, StateKind::Value, key_group, key, namespace)?;
        match entry {
            Entry::Value(s) => {
                s.value.clear();
                s.value.extend_from_slice(value);
                s.written_ms = now;
            }
            other => {
                *other = Entry::Value(Stamped {
                    value: value.to_vec(),
                    written_ms: now,
                })
            }
        }
        Ok(())
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
        let live = self.liveness(state.ttl_ms());
        Ok(
            match self.entry(state, StateKind::Map, key_group, key, namespace)? {
                Some(Entry::Map(m)) => m.get(user_key).filter(|s| live.alive(s)).map(borrowed),
                _ => None,
            },
        )
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
        let (entry, now) = self.entry_mut(state, StateKind::Map, key_group, key, namespace)?;
        if !matches!(entry, Entry::Map(_)) {
            *entry = Entry::Map(BTreeMap::new());
        }
        if let Entry::Map(m) = entry {
            if let Some(s) = m.get_mut(user_key) {
                s.value.clear();
                s.value.extend_from_slice(value);
                s.written_ms = now;
            } else {
                m.insert(
                    user_key.to_vec(),
                    Stamped {
                        value: value.to_vec(),
                        written_ms: now,
                    },
                );
            }
        }
        Ok(())
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
        if self.table(state, StateKind::Map)?.is_none() {
            return Ok(false);
        }
        let removed = self
            .tables
            .get_mut(&state.name)
            .and_then(|t| t.groups.get_mut(&key_group))
            .and_then(|g| g.get_mut(key))
            .and_then(|n| n.get_mut(namespace))
            .and_then(|e| match e {
                Entry::Map(m) => m.remove(user_key),
                _ => None,
            });
        self.prune(state, key_group, key, namespace);
        Ok(removed.is_some_and(|s| live.alive(&s)))
    }

    fn map_entries<'a>(
        &'a self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
    ) -> Result<MapEntryIter<'a>> {
        let StateAddr {
            key_group,
            key,
            namespace,
        } = addr;
        let live = self.liveness(state.ttl_ms());
        Ok(
            match self.entry(state, StateKind::Map, key_group, key, namespace)? {
                Some(Entry::Map(m)) => Box::new(
                    m.iter()
                        .filter(move |(_, s)| live.alive(s))
                        .map(|(k, s)| Ok((Cow::Borrowed(k.as_slice()), borrowed(s)))),
                ),
                _ => Box::new(std::iter::empty()),
            },
        )
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
        let (entry, now) = self.entry_mut(state, StateKind::List, key_group, key, namespace)?;
        let stamped = Stamped {
            value: value.to_vec(),
            written_ms: now,
        };
        match entry {
            Entry::List(l) => l.push(stamped),
            other => *other = Entry::List(vec![stamped]),
        }
        Ok(())
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
        let live = self.liveness(state.ttl_ms());
        Ok(
            match self.entry(state, StateKind::List, key_group, key, namespace)? {
                Some(Entry::List(l)) => Box::new(
                    l.iter()
                        .filter(move |s| live.alive(s))
                        .map(|s| Ok(borrowed(s))),
                ),
                _ => Box::new(std::iter::empty()),
            },
        )
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
            self.table(state, StateKind::List)?;
            return self.clear(state, addr);
        }
        let (entry, now) = self.entry_mut(state, StateKind::List, key_group, key, namespace)?;
        *entry = Entry::List(
            values
                .iter()
                .map(|v| Stamped {
                    value: v.to_vec(),
                    written_ms: now,
                })
                .collect(),
        );
        Ok(())
    }

    fn clear(&mut self, state: &StateDescriptor, addr: StateAddr<'_>) -> Result<()> {
        let StateAddr {
            key_group,
            key,
            namespace,
        } = addr;
        let Some(table) = self.table_any_mut(state) else {
            return Ok(());
        };
        let Some(group) = table.groups.get_mut(&key_group) else {
            return Ok(());
        };
        if let Some(namespaces) = group.get_mut(key) {
            namespaces.remove(namespace);
            if namespaces.is_empty() {
                group.remove(key);
            }
        }
        if group.is_empty() {
            table.groups.remove(&key_group);
        }
        Ok(())
    }

    fn clear_namespace(&mut self, state: &StateDescriptor, namespace: &[u8]) -> Result<usize> {
        let Some(table) = self.table_any_mut(state) else {
            return Ok(0);
        };
        let mut removed = 0;
        for group in table.groups.values_mut() {
            group.retain(|_, namespaces| {
                if namespaces.remove(namespace).is_some() {
                    removed += 1;
                }
                !namespaces.is_empty()
            });
        }
        table.groups.retain(|_, g| !g.is_empty());
        Ok(removed)
    }

    fn clear_state(&mut self, state: &StateDescriptor) -> Result<()> {
        self.tables.remove(&state.name);
        Ok(())
    }

    fn keys<'a>(&'a self, state: &StateDescriptor) -> Result<KeyIter<'a>> {
        let Some(table) = self.tables.get(&state.name) else {
            return Ok(Box::new(std::iter::empty()));
        };
        let live = self.liveness(state.ttl_ms());
        let mut keys = Vec::new();
        for (&key_group, group) in &table.groups {
            for (key, namespaces) in group {
                for (namespace, entry) in namespaces {
                    if live.any_alive(entry) {
                        keys.push(StateKey {
                            key_group,
                            key: key.clone(),
                            namespace: namespace.clone(),
                        });
                    }
                }
            }
        }
        keys.sort_unstable();
        Ok(Box::new(keys.into_iter().map(Ok)))
    }

    fn namespaces(
        &self,
        state: &StateDescriptor,
        key_group: u16,
        key: &[u8],
    ) -> Result<Vec<Vec<u8>>> {
        let live = self.liveness(state.ttl_ms());
        Ok(self
            .tables
            .get(&state.name)
            .and_then(|t| t.groups.get(&key_group))
            .and_then(|g| g.get(key))
            .map(|namespaces| {
                namespaces
                    .iter()
                    .filter(|(_, e)| live.any_alive(e))
                    .map(|(ns, _)| ns.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    fn states(&self) -> Vec<StateInfo> {
        let mut states: Vec<StateInfo> = self
            .tables
            .iter()
            .map(|(name, t)| StateInfo {
                name: name.clone(),
                kind: t.kind,
                ttl_ms: t.ttl_ms,
            })
            .collect();
        states.sort_by(|a, b| a.name.cmp(&b.name));
        states
    }

    fn purge_expired(&mut self) -> Result<usize> {
        let now = self.clock.now_ms();
        let mut dropped = 0;
        for table in self.tables.values_mut() {
            let Some(ttl_ms) = table.ttl_ms else {
                continue;
            };
            let live = Liveness {
                ttl_ms: Some(ttl_ms),
                now,
            };
            for group in table.groups.values_mut() {
                group.retain(|_, namespaces| {
                    namespaces.retain(|_, entry| {
                        match entry {
                            Entry::Value(s) => {
                                if !live.alive(s) {
                                    dropped += 1;
                                    return false;
                                }
                            }
                            Entry::Map(m) => {
                                let before = m.len();
                                m.retain(|_, s| live.alive(s));
                                dropped += before - m.len();
                            }
                            Entry::List(l) => {
                                let before = l.len();
                                l.retain(|s| live.alive(s));
                                dropped += before - l.len();
                            }
                        }
                        !entry.is_empty()
                    });
                    !namespaces.is_empty()
                });
            }
            table.groups.retain(|_, g| !g.is_empty());
        }
        Ok(dropped)
    }

    fn approximate_size_bytes(&self) -> usize {
        self.tables
            .values()
            .flat_map(|t| t.groups.values())
            .flat_map(|g| g.iter())
            .map(|(key, namespaces)| {
                namespaces
                    .iter()
                    .map(|(ns, e)| 2 + key.len() + ns.len() + e.size_bytes())
                    .sum::<usize>()
            })
            .sum()
    }

    fn snapshot(&self) -> Result<StateSnapshot> {
        let mut snapshot = StateSnapshot::new();
        let now = self.clock.now_ms();
        for info in self.states() {
            let Some(table) = self.tables.get(&info.name) else {
                continue;
            };
            let index = snapshot.ensure_state(&info)?;
            let live = Liveness {
                ttl_ms: table.ttl_ms,
                now,
            };
            for (&key_group, group) in &table.groups {
                let target = snapshot.key_group_mut(key_group);
                for (key, namespaces) in group {
                    for (namespace, entry) in namespaces {
                        if let Some(data) = live.live_data(entry) {
                            target.entries.push(SnapshotEntry {
                                state: index,
                                key: key.clone(),
                                namespace: namespace.clone(),
                                data,
                            });
                        }
                    }
                }
            }
        }
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
            if let Some(t) = self.tables.get(&info.name) {
                if t.kind != info.kind {
                    return Err(kind_error(&info.name, t.kind, info.kind));
                }
            }
        }
        for group in &snapshot.key_groups {
            if !range.contains(group.key_group) {
                continue;
            }
            for e in &group.entries {
                let info = snapshot
                    .states
                    .get(e.state as usize)
                    .ok_or_else(|| state_error("snapshot", "unknown state index"))?;
                let table = self
                    .tables
                    .entry(info.name.clone())
                    .or_insert_with(|| Table {
                        kind: info.kind,
                        ttl_ms: info.ttl_ms,
                        groups: HashMap::default(),
                    });
                let namespaces = table
                    .groups
                    .entry(group.key_group)
                    .or_default()
                    .entry(e.key.clone())
                    .or_default();
                match (&e.data, namespaces.get_mut(&e.namespace)) {
                    (EntryData::Map(entries), Some(Entry::Map(m))) => {
                        m.extend(entries.iter().cloned());
                    }
                    (EntryData::List(values), Some(Entry::List(l))) => {
                        l.extend(values.iter().cloned());
                    }
                    (data, _) => {
                        let entry = match data {
                            EntryData::Value(s) => Entry::Value(s.clone()),
                            EntryData::Map(m) => Entry::Map(m.iter().cloned().collect()),
                            EntryData::List(l) => Entry::List(l.clone()),
                        };
                        namespaces.insert(e.namespace.clone(), entry);
                    }
                }
            }
        }
        // Drop what restored empty (a snapshot may hold empty maps or lists).
        for table in self.tables.values_mut() {
            for group in table.groups.values_mut() {
                group.retain(|_, namespaces| {
                    namespaces.retain(|_, e| !e.is_empty());
                    !namespaces.is_empty()
                });
            }
            table.groups.retain(|_, g| !g.is_empty());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{hash_key, key_group_for_hash, ManualClock};
    use proptest::prelude::*;
    use std::time::Duration;

    fn desc(name: &str) -> StateDescriptor {
        StateDescriptor::new(name)
    }

    fn list(
        b: &InMemoryStateBackend,
        s: &StateDescriptor,
        kg: u16,
        k: &[u8],
        ns: &[u8],
    ) -> Vec<Vec<u8>> {
        b.list_get(s, StateAddr::new(kg, k, ns))
            .expect("list")
            .map(|v| v.expect("item").into_owned())
            .collect()
    }

    #[test]
    fn value_semantics() {
        let mut b = InMemoryStateBackend::new();
        let s = desc("v");
        assert_eq!(
            b.value_get(&s, StateAddr::new(1, b"k", b"")).expect("get"),
            None
        );
        b.value_put(&s, StateAddr::new(1, b"k", b""), b"one")
            .expect("put");
        assert_eq!(
            b.value_get(&s, StateAddr::new(1, b"k", b""))
                .expect("get")
                .as_deref(),
            Some(&b"one"[..])
        );
        b.value_put(&s, StateAddr::new(1, b"k", b""), b"two")
            .expect("put");
        assert_eq!(
            b.value_get(&s, StateAddr::new(1, b"k", b""))
                .expect("get")
                .as_deref(),
            Some(&b"two"[..])
        );
        // Another key group, key or namespace is another address.
        assert_eq!(
            b.value_get(&s, StateAddr::new(2, b"k", b"")).expect("get"),
            None
        );
        assert_eq!(
            b.value_get(&s, StateAddr::new(1, b"j", b"")).expect("get"),
            None
        );
        assert_eq!(
            b.value_get(&s, StateAddr::new(1, b"k", b"w")).expect("get"),
            None
        );
        // An empty value is a value.
        b.value_put(&s, StateAddr::new(1, b"e", b""), b"")
            .expect("put");
        assert_eq!(
            b.value_get(&s, StateAddr::new(1, b"e", b""))
                .expect("get")
                .as_deref(),
            Some(&b""[..])
        );
        b.value_delete(&s, StateAddr::new(1, b"k", b""))
            .expect("delete");
        assert_eq!(
            b.value_get(&s, StateAddr::new(1, b"k", b"")).expect("get"),
            None
        );
        b.value_delete(&s, StateAddr::new(1, b"e", b""))
            .expect("delete");
        assert_eq!(
            b.approximate_size_bytes(),
            0,
            "deleted addresses leave nothing behind"
        );
        assert!(b.snapshot().expect("snapshot").is_empty());
    }

    #[test]
    fn map_semantics() {
        let mut b = InMemoryStateBackend::new();
        let s = desc("m");
        b.map_put(&s, StateAddr::new(0, b"k", b""), b"b", b"2")
            .expect("put");
        b.map_put(&s, StateAddr::new(0, b"k", b""), b"a", b"1")
            .expect("put");
        b.map_put(&s, StateAddr::new(0, b"k", b""), b"b", b"3")
            .expect("overwrite");
        assert!(b
            .map_contains(&s, StateAddr::new(0, b"k", b""), b"a")
            .expect("contains"));
        assert!(!b
            .map_contains(&s, StateAddr::new(0, b"k", b""), b"c")
            .expect("contains"));
        assert_eq!(
            b.map_get(&s, StateAddr::new(0, b"k", b""), b"b")
                .expect("get")
                .as_deref(),
            Some(&b"3"[..])
        );
        let entries: Vec<(Vec<u8>, Vec<u8>)> = b
            .map_entries(&s, StateAddr::new(0, b"k", b""))
            .expect("entries")
            .map(|e| {
                e.map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .expect("entry")
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"3".to_vec())
            ]
        );
        assert!(b
            .map_remove(&s, StateAddr::new(0, b"k", b""), b"a")
            .expect("remove"));
        assert!(!b
            .map_remove(&s, StateAddr::new(0, b"k", b""), b"a")
            .expect("remove again"));
        assert!(b
            .map_remove(&s, StateAddr::new(0, b"k", b""), b"b")
            .expect("remove"));
        assert_eq!(
            b.keys(&s).expect("keys").count(),
            0,
            "an emptied map is gone"
        );
        b.map_put(&s, StateAddr::new(0, b"k", b""), b"x", b"y")
            .expect("put");
        b.clear(&s, StateAddr::new(0, b"k", b"")).expect("clear");
        assert_eq!(
            b.map_entries(&s, StateAddr::new(0, b"k", b""))
                .expect("entries")
                .count(),
            0
        );
    }

    #[test]
    fn list_semantics() {
        let mut b = InMemoryStateBackend::new();
        let s = desc("l");
        assert!(list(&b, &s, 3, b"k", b"").is_empty());
        b.list_append(&s, StateAddr::new(3, b"k", b""), b"a")
            .expect("append");
        b.list_append(&s, StateAddr::new(3, b"k", b""), b"b")
            .expect("append");
        b.list_append(&s, StateAddr::new(3, b"k", b""), b"a")
            .expect("append");
        assert_eq!(
            list(&b, &s, 3, b"k", b""),
            vec![b"a".to_vec(), b"b".to_vec(), b"a".to_vec()]
        );
        b.list_replace(&s, StateAddr::new(3, b"k", b""), &[b"z"])
            .expect("replace");
        assert_eq!(list(&b, &s, 3, b"k", b""), vec![b"z".to_vec()]);
        b.list_replace(&s, StateAddr::new(3, b"k", b""), &[])
            .expect("replace empty");
        assert!(list(&b, &s, 3, b"k", b"").is_empty());
        assert_eq!(b.keys(&s).expect("keys").count(), 0);
    }

    #[test]
    fn kinds_are_checked() {
        let mut b = InMemoryStateBackend::new();
        let s = desc("x");
        b.value_put(&s, StateAddr::new(0, b"k", b""), b"1")
            .expect("put");
        assert!(b
            .map_put(&s, StateAddr::new(0, b"k", b""), b"u", b"v")
            .is_err());
        assert!(b
            .list_append(&s, StateAddr::new(0, b"k", b""), b"v")
            .is_err());
        assert!(b.map_get(&s, StateAddr::new(0, b"k", b""), b"u").is_err());
        assert!(b
            .list_replace(&s, StateAddr::new(0, b"k", b""), &[])
            .is_err());
        let err = b
            .list_get(&s, StateAddr::new(0, b"k", b""))
            .err()
            .expect("error");
        assert!(err.to_string().contains("value state"), "{err}");
        // Nothing changed.
        assert_eq!(
            b.value_get(&s, StateAddr::new(0, b"k", b""))
                .expect("get")
                .as_deref(),
            Some(&b"1"[..])
        );
    }

    #[test]
    fn namespaces_and_states_are_isolated() {
        let mut b = InMemoryStateBackend::new();
        let a = desc("a");
        let c = desc("c");
        b.value_put(&a, StateAddr::new(0, b"k", b"w1"), b"1")
            .expect("put");
        b.value_put(&a, StateAddr::new(0, b"k", b"w2"), b"2")
            .expect("put");
        b.value_put(&a, StateAddr::new(0, b"j", b"w1"), b"3")
            .expect("put");
        b.value_put(&c, StateAddr::new(0, b"k", b"w1"), b"4")
            .expect("put");
        assert_eq!(
            b.namespaces(&a, 0, b"k").expect("ns"),
            vec![b"w1".to_vec(), b"w2".to_vec()]
        );
        b.clear(&a, StateAddr::new(0, b"k", b"w1")).expect("clear");
        assert_eq!(
            b.value_get(&a, StateAddr::new(0, b"k", b"w1"))
                .expect("get"),
            None
        );
        assert_eq!(
            b.value_get(&a, StateAddr::new(0, b"k", b"w2"))
                .expect("get")
                .as_deref(),
            Some(&b"2"[..])
        );
        assert_eq!(
            b.value_get(&a, StateAddr::new(0, b"j", b"w1"))
                .expect("get")
                .as_deref(),
            Some(&b"3"[..])
        );
        assert_eq!(
            b.value_get(&c, StateAddr::new(0, b"k", b"w1"))
                .expect("get")
                .as_deref(),
            Some(&b"4"[..])
        );
        // Clearing a namespace for every key leaves other namespaces and states.
        b.value_put(&a, StateAddr::new(5, b"z", b"w2"), b"5")
            .expect("put");
        assert_eq!(b.clear_namespace(&a, b"w2").expect("clear ns"), 2);
        let keys: Vec<StateKey> = b.keys(&a).expect("keys").map(|k| k.expect("key")).collect();
        assert_eq!(
            keys,
            vec![StateKey {
                key_group: 0,
                key: b"j".to_vec(),
                namespace: b"w1".to_vec()
            }]
        );
        assert_eq!(
            b.value_get(&c, StateAddr::new(0, b"k", b"w1"))
                .expect("get")
                .as_deref(),
            Some(&b"4"[..])
        );
        b.clear_state(&c).expect("clear state");
        assert_eq!(b.states().len(), 1);
    }

    #[test]
    fn ttl_expires_on_read_and_is_refreshed_by_writes() {
        let clock = ManualClock::new(1_000);
        let mut b = InMemoryStateBackend::with_clock(Arc::new(clock.clone()));
        let v = desc("v").with_ttl(Duration::from_millis(100));
        let m = desc("m").with_ttl(Duration::from_millis(100));
        let l = desc("l").with_ttl(Duration::from_millis(100));
        let forever = desc("forever");
        b.value_put(&v, StateAddr::new(0, b"k", b""), b"x")
            .expect("put");
        b.value_put(&forever, StateAddr::new(0, b"k", b""), b"x")
            .expect("put");
        b.map_put(&m, StateAddr::new(0, b"k", b""), b"old", b"1")
            .expect("put");
        b.list_append(&l, StateAddr::new(0, b"k", b""), b"old")
            .expect("append");
        clock.advance(Duration::from_millis(60));
        b.map_put(&m, StateAddr::new(0, b"k", b""), b"new", b"2")
            .expect("put");
        b.list_append(&l, StateAddr::new(0, b"k", b""), b"new")
            .expect("append");
        clock.advance(Duration::from_millis(39));
        assert!(
            b.value_get(&v, StateAddr::new(0, b"k", b""))
                .expect("get")
                .is_some(),
            "99 ms old"
        );
        clock.advance(Duration::from_millis(1));
        assert!(
            b.value_get(&v, StateAddr::new(0, b"k", b""))
                .expect("get")
                .is_none(),
            "100 ms old"
        );
        assert!(b
            .value_get(&forever, StateAddr::new(0, b"k", b""))
            .expect("get")
            .is_some());
        assert!(b
            .map_get(&m, StateAddr::new(0, b"k", b""), b"old")
            .expect("get")
            .is_none());
        assert!(b
            .map_get(&m, StateAddr::new(0, b"k", b""), b"new")
            .expect("get")
            .is_some());
        assert_eq!(
            b.map_entries(&m, StateAddr::new(0, b"k", b""))
                .expect("entries")
                .count(),
            1
        );
        assert_eq!(list(&b, &l, 0, b"k", b""), vec![b"new".to_vec()]);
        // Expired entries are not snapshotted, and purge drops them.
        let snap = b.snapshot().expect("snapshot");
        assert_eq!(
            snap.entry_count(),
            3,
            "forever, m (1 entry) and l (1 value)"
        );
        assert_eq!(b.purge_expired().expect("purge"), 3);
        assert_eq!(b.keys(&v).expect("keys").count(), 0);
        // A write refreshes: rewrite and read before the TTL passes again.
        b.value_put(&v, StateAddr::new(0, b"k", b""), b"y")
            .expect("put");
        clock.advance(Duration::from_millis(99));
        assert!(b
            .value_get(&v, StateAddr::new(0, b"k", b""))
            .expect("get")
            .is_some());
        clock.advance(Duration::from_millis(1_000));
        assert_eq!(b.keys(&m).expect("keys").count(), 0);
        assert!(b.namespaces(&l, 0, b"k").expect("ns").is_empty());
    }

    #[test]
    fn snapshot_roundtrips_through_bytes() {
        let mut b = InMemoryStateBackend::new();
        b.value_put(&desc("v"), StateAddr::new(7, b"k", b"n"), b"1")
            .expect("put");
        b.map_put(&desc("m"), StateAddr::new(9, b"k", b""), b"u", b"2")
            .expect("put");
        b.list_append(&desc("l"), StateAddr::new(7, b"j", b""), b"3")
            .expect("append");
        let snap = b.snapshot().expect("snapshot");
        let bytes = snap.to_bytes().expect("bytes");
        let back = StateSnapshot::from_bytes(&bytes).expect("read");
        assert_eq!(back, snap);
        let mut r = InMemoryStateBackend::new();
        r.restore(&back, &KeyGroupRange::all(128)).expect("restore");
        assert_eq!(r.snapshot().expect("snapshot"), snap);
        assert_eq!(r.states(), b.states());
    }

    #[test]
    fn restore_rejects_kind_conflicts() {
        let mut b = InMemoryStateBackend::new();
        b.value_put(&desc("x"), StateAddr::new(0, b"k", b""), b"1")
            .expect("put");
        let snap = b.snapshot().expect("snapshot");
        let mut r = InMemoryStateBackend::new();
        r.list_append(&desc("x"), StateAddr::new(1, b"k", b""), b"1")
            .expect("append");
        assert!(r.restore(&snap, &KeyGroupRange::all(128)).is_err());
    }

    /// One operation of the model test.
    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, u8, u8),
        Delete(u8, u8),
        MapPut(u8, u8, u8, u8),
        MapRemove(u8, u8, u8),
        Append(u8, u8, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..20, 0u8..3, any::<u8>()).prop_map(|(k, n, v)| Op::Put(k, n, v)),
            (0u8..20, 0u8..3).prop_map(|(k, n)| Op::Delete(k, n)),
            (0u8..20, 0u8..3, 0u8..4, any::<u8>()).prop_map(|(k, n, u, v)| Op::MapPut(k, n, u, v)),
            (0u8..20, 0u8..3, 0u8..4).prop_map(|(k, n, u)| Op::MapRemove(k, n, u)),
            (0u8..20, 0u8..3, any::<u8>()).prop_map(|(k, n, v)| Op::Append(k, n, v)),
        ]
    }

    /// The model: (state, key group, key, namespace[, user key]) -> data.
    type Model = BTreeMap<(&'static str, u16, Vec<u8>, Vec<u8>), Vec<(Vec<u8>, Vec<u8>)>>;

    fn kg_of(key: &[u8], max: u16) -> u16 {
        key_group_for_hash(hash_key(key), max)
    }

    /// Reads back every address of the model from a backend.
    fn read_all(b: &InMemoryStateBackend) -> Model {
        let mut out = Model::new();
        for (name, state) in [("v", desc("v")), ("m", desc("m")), ("l", desc("l"))] {
            for k in b.keys(&state).expect("keys") {
                let k = k.expect("key");
                let data: Vec<(Vec<u8>, Vec<u8>)> = match name {
                    "v" => b
                        .value_get(&state, k.addr())
                        .expect("get")
                        .map(|v| vec![(Vec::new(), v.into_owned())])
                        .unwrap_or_default(),
                    "m" => b
                        .map_entries(&state, k.addr())
                        .expect("entries")
                        .map(|e| {
                            e.map(|(u, v)| (u.into_owned(), v.into_owned()))
                                .expect("entry")
                        })
                        .collect(),
                    _ => b
                        .list_get(&state, k.addr())
                        .expect("list")
                        .map(|v| (Vec::new(), v.expect("value").into_owned()))
                        .collect(),
                };
                out.insert((name, k.key_group, k.key, k.namespace), data);
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn rescaling_keeps_exactly_the_owned_key_groups(
            ops in proptest::collection::vec(op(), 0..200),
            old_p in 1usize..5,
            new_p in 1usize..6,
            max in prop_oneof![Just(8u16), Just(128u16), Just(13u16)],
        ) {
            // Run the ops on `old_p` subtasks, each applying the ops of its keys.
            let mut olds: Vec<InMemoryStateBackend> =
                (0..old_p).map(|_| InMemoryStateBackend::new()).collect();
            let mut model = Model::new();
            for op in &ops {
                let (key, ns) = match op {
                    Op::Put(k, n, _) | Op::Delete(k, n) | Op::Append(k, n, _)
                    | Op::MapPut(k, n, _, _) | Op::MapRemove(k, n, _) => (vec![*k], vec![*n]),
                };
                let kg = kg_of(&key, max);
                let b = &mut olds[crate::state::subtask_for_key_group(kg, max, old_p)];
                prop_assert!(KeyGroupRange::for_subtask(max, old_p,
                    crate::state::subtask_for_key_group(kg, max, old_p)).contains(kg));
                match op {
                    Op::Put(_, _, v) => {
                        b.value_put(&desc("v"), StateAddr::new(kg, &key, &ns), &[*v]).expect("put");
                        model.insert(("v", kg, key, ns), vec![(Vec::new(), vec![*v])]);
                    }
                    Op::Delete(..) => {
                        b.value_delete(&desc("v"), StateAddr::new(kg, &key, &ns)).expect("delete");
                        model.remove(&("v", kg, key, ns));
                    }
                    Op::MapPut(_, _, u, v) => {
                        b.map_put(&desc("m"), StateAddr::new(kg, &key, &ns), &[*u], &[*v]).expect("put");
                        let e = model.entry(("m", kg, key, ns)).or_default();
                        e.retain(|(k, _)| k != &[*u]);
                        e.push((vec![*u], vec![*v]));
                        e.sort();
                    }
                    Op::MapRemove(_, _, u) => {
                        b.map_remove(&desc("m"), StateAddr::new(kg, &key, &ns), &[*u]).expect("remove");
                        let addr = ("m", kg, key, ns);
                        if let Some(e) = model.get_mut(&addr) {
                            e.retain(|(k, _)| k != &[*u]);
                            if e.is_empty() {
                                model.remove(&addr);
                            }
                        }
                    }
                    Op::Append(_, _, v) => {
                        b.list_append(&desc("l"), StateAddr::new(kg, &key, &ns), &[*v]).expect("append");
                        model.entry(("l", kg, key, ns)).or_default().push((Vec::new(), vec![*v]));
                    }
                }
            }
            // Snapshot every old subtask (through bytes), restore into `new_p` subtasks.
            let snaps: Vec<StateSnapshot> = olds
                .iter()
                .map(|b| {
                    let bytes = b.snapshot().expect("snapshot").to_bytes().expect("bytes");
                    StateSnapshot::from_bytes(&bytes).expect("read")
                })
                .collect();
            let mut union = Model::new();
            for i in 0..new_p {
                let range = KeyGroupRange::for_subtask(max, new_p, i);
                let mut b = InMemoryStateBackend::new();
                for s in &snaps {
                    b.restore(s, &range).expect("restore");
                }
                let got = read_all(&b);
                let expected: Model = model
                    .iter()
                    .filter(|((_, kg, _, _), _)| range.contains(*kg))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                prop_assert_eq!(&got, &expected, "subtask {} of {}", i, new_p);
                for (k, v) in got {
                    prop_assert!(union.insert(k, v).is_none(), "an address restored twice");
                }
            }
            prop_assert_eq!(union, model);
        }
    }

    #[test]
    fn box_dyn_backend_is_a_backend() {
        let mut boxed: Box<dyn KeyedStateBackend> = Box::new(InMemoryStateBackend::new());
        let s = desc("v");
        boxed
            .value_put(&s, StateAddr::key(0, b"k"), b"1")
            .expect("put");
        fn read<B: KeyedStateBackend + ?Sized>(b: &B) -> Option<Vec<u8>> {
            b.value_get(&desc("v"), StateAddr::key(0, b"k"))
                .expect("get")
                .map(Cow::into_owned)
        }
        assert_eq!(read(&boxed), Some(b"1".to_vec()));
        assert_eq!(read(boxed.as_ref()), Some(b"1".to_vec()));
    }
}
