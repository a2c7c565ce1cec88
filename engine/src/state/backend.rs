//! The byte-level keyed state trait that every backend (in-memory, RocksDB) implements.
//!
//! Everything is addressed by a [`StateDescriptor`] plus `(key group, key, namespace)`
//! byte strings; maps add a user key. Reads borrow from the backend where they can
//! ([`Cow::Borrowed`] in memory) and own where they must ([`Cow::Owned`] from RocksDB).
//! Iterators yield `Result` items so that a backend reading from disk can fail midway.

use std::borrow::Cow;
use std::path::PathBuf;

use super::key_group::KeyGroupRange;
use super::snapshot::{StateInfo, StateSnapshot};
use super::StateAddr;
use super::StateDescriptor;
use crate::error::Result;

/// Values of a list state, in insertion order.
pub type ValueIter<'a> = Box<dyn Iterator<Item = Result<Cow<'a, [u8]>>> + 'a>;

/// `(user key, value)` entries of a map state, in byte order of the user key.
pub type MapEntryIter<'a> = Box<dyn Iterator<Item = Result<(Cow<'a, [u8]>, Cow<'a, [u8]>)>> + 'a>;

/// Addresses of a state holding data, in `(key group, key, namespace)` order.
pub type KeyIter<'a> = Box<dyn Iterator<Item = Result<StateKey>> + 'a>;

/// The address of keyed state within one state: `(key group, key, namespace)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StateKey {
    /// The key group of the key.
    pub key_group: u16,
    /// The key bytes (see [`KeyCodec`](super::KeyCodec)).
    pub key: Vec<u8>,
    /// The namespace bytes.
    pub namespace: Vec<u8>,
}

/// What a backend hands to the checkpoint writer at a barrier: the synchronous part of
/// a snapshot. Writing it to storage happens afterwards, asynchronously, while the
/// subtask goes on processing.
#[derive(Debug)]
pub enum PreparedSnapshot {
    /// A full copy of the live state in the canonical format (the in-memory backend;
    /// also what savepoints hold).
    Full(StateSnapshot),
    /// A local, immutable copy of the backend's files (a RocksDB checkpoint: SST files
    /// hard-linked, so taking it is cheap). Shared files are uploaded only once.
    Files(LocalCheckpoint),
}

/// A local directory holding a consistent copy of a backend's files.
#[derive(Debug, Clone)]
pub struct LocalCheckpoint {
    /// The directory; the checkpoint writer deletes it once uploaded.
    pub dir: PathBuf,
    /// Identifies the backend instance whose files these are: a shared file is known by
    /// `(instance, name)`, since two database instances may reuse a file name for
    /// different contents.
    pub instance: String,
    /// Every file of the directory.
    pub files: Vec<LocalFile>,
}

/// One file of a [`LocalCheckpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    /// The file name within the directory.
    pub name: String,
    /// Its size.
    pub bytes: u64,
    /// Whether the file is immutable once written (an SST file) and can be shared by
    /// later checkpoints; other files (manifest, options) are uploaded every time.
    pub shared: bool,
}

/// Keyed state storage of one operator subtask.
///
/// A state's kind (value, map or list) is fixed by the first operation on it; using it
/// as another kind later is an [`EngineError::State`](crate::EngineError::State).
/// Entries of a state with a TTL read as absent once they are older than the TTL (by
/// the backend's clock), and are dropped by [`KeyedStateBackend::purge_expired`] and
/// from snapshots. The trait is object safe: operators see it as
/// `Box<dyn KeyedStateBackend>`.
pub trait KeyedStateBackend: Send {
    /// The value at `addr`, if any.
    fn value_get<'a>(
        &'a self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
    ) -> Result<Option<Cow<'a, [u8]>>>;

    /// Sets the value at `addr`.
    fn value_put(
        &mut self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        value: &[u8],
    ) -> Result<()>;

    /// Removes the value at `addr`.
    fn value_delete(&mut self, state: &StateDescriptor, addr: StateAddr<'_>) -> Result<()> {
        self.clear(state, addr)
    }

    /// The value of `user_key` in the map at `addr`.
    fn map_get<'a>(
        &'a self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        user_key: &[u8],
    ) -> Result<Option<Cow<'a, [u8]>>>;

    /// Sets `user_key` to `value` in the map at `addr`.
    fn map_put(
        &mut self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        user_key: &[u8],
        value: &[u8],
    ) -> Result<()>;

    /// Removes `user_key` from the map at `addr`; whether it was
    /// there (and alive).
    fn map_remove(
        &mut self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        user_key: &[u8],
    ) -> Result<bool>;

    /// Whether the map at `addr` holds `user_key`.
    fn map_contains(
        &self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        user_key: &[u8],
    ) -> Result<bool> {
        Ok(self.map_get(state, addr, user_key)?.is_some())
    }

    /// The entries of the map at `addr`, in byte order of the
    /// user keys.
    fn map_entries<'a>(
        &'a self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
    ) -> Result<MapEntryIter<'a>>;

    /// The entries of the map at `addr` whose user key is `from` or after, in byte
    /// order (a backend that can seek starts there instead of skipping the rest).
    fn map_entries_from<'a>(
        &'a self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        from: &[u8],
    ) -> Result<MapEntryIter<'a>> {
        let from = from.to_vec();
        Ok(Box::new(self.map_entries(state, addr)?.skip_while(
            move |e| matches!(e, Ok((k, _)) if k.as_ref() < from.as_slice()),
        )))
    }

    /// Appends `value` to the list at `addr`.
    fn list_append(
        &mut self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        value: &[u8],
    ) -> Result<()>;

    /// The values of the list at `addr`, oldest first.
    fn list_get<'a>(
        &'a self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
    ) -> Result<ValueIter<'a>>;

    /// Replaces the list at `addr` by `values` (an empty slice
    /// clears it).
    fn list_replace(
        &mut self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        values: &[&[u8]],
    ) -> Result<()>;

    /// Removes whatever the state holds at `addr`: the value, the
    /// whole map or the whole list.
    fn clear(&mut self, state: &StateDescriptor, addr: StateAddr<'_>) -> Result<()>;

    /// Removes `namespace` of every key of the state (e.g. a window that ended for all
    /// keys); the number of addresses removed. This scans the whole state: prefer
    /// [`KeyedStateBackend::clear`] per key from a timer where there are many keys.
    fn clear_namespace(&mut self, state: &StateDescriptor, namespace: &[u8]) -> Result<usize>;

    /// Removes all data of the state.
    fn clear_state(&mut self, state: &StateDescriptor) -> Result<()>;

    /// Every address at which the state holds live data, in `(key group, key,
    /// namespace)` order.
    fn keys<'a>(&'a self, state: &StateDescriptor) -> Result<KeyIter<'a>>;

    /// The namespaces holding live data for one key, in byte order (with
    /// [`namespace_window`](super::namespace_window): ordered by window start).
    fn namespaces(
        &self,
        state: &StateDescriptor,
        key_group: u16,
        key: &[u8],
    ) -> Result<Vec<Vec<u8>>>;

    /// The states this backend holds, by name.
    fn states(&self) -> Vec<StateInfo>;

    /// Drops every expired entry of states with a TTL; the number of entries dropped.
    fn purge_expired(&mut self) -> Result<usize>;

    /// An approximate size of the stored keys and values in bytes, for metrics.
    fn approximate_size_bytes(&self) -> usize;

    /// A full, self-contained copy of the live state, grouped by key group. Timers are
    /// added by [`TimerService::snapshot_into`](super::TimerService::snapshot_into);
    /// [`snapshot_keyed_state`](super::snapshot_keyed_state) does both.
    fn snapshot(&self) -> Result<StateSnapshot>;

    /// Adds the entries of `snapshot` whose key group is in `range` (the key groups
    /// this subtask owns) and ignores the others. Restoring after a change of
    /// parallelism calls this once with the snapshot of every previous subtask whose
    /// range overlaps. An address present in both keeps the snapshot's value; maps
    /// are merged and lists appended.
    fn restore(&mut self, snapshot: &StateSnapshot, range: &KeyGroupRange) -> Result<()>;

    /// The synchronous part of a checkpoint: a consistent copy that later writes do not
    /// change. The default is a full [`KeyedStateBackend::snapshot`].
    fn prepare_snapshot(&mut self, _epoch: u64) -> Result<PreparedSnapshot> {
        Ok(PreparedSnapshot::Full(self.snapshot()?))
    }
}

/// Lets `&ctx.state` (a `Box<dyn KeyedStateBackend>`) be passed where a backend is
/// expected.
impl<B: KeyedStateBackend + ?Sized> KeyedStateBackend for Box<B> {
    fn value_get<'a>(
        &'a self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
    ) -> Result<Option<Cow<'a, [u8]>>> {
        (**self).value_get(state, addr)
    }

    fn value_put(
        &mut self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        value: &[u8],
    ) -> Result<()> {
        (**self).value_put(state, addr, value)
    }

    fn value_delete(&mut self, state: &StateDescriptor, addr: StateAddr<'_>) -> Result<()> {
        (**self).value_delete(state, addr)
    }

    fn map_get<'a>(
        &'a self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        user_key: &[u8],
    ) -> Result<Option<Cow<'a, [u8]>>> {
        (**self).map_get(state, addr, user_key)
    }

    fn map_put(
        &mut self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        user_key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        (**self).map_put(state, addr, user_key, value)
    }

    fn map_remove(
        &mut self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        user_key: &[u8],
    ) -> Result<bool> {
        (**self).map_remove(state, addr, user_key)
    }

    fn map_contains(
        &self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        user_key: &[u8],
    ) -> Result<bool> {
        (**self).map_contains(state, addr, user_key)
    }

    fn map_entries<'a>(
        &'a self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
    ) -> Result<MapEntryIter<'a>> {
        (**self).map_entries(state, addr)
    }

    fn map_entries_from<'a>(
        &'a self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        from: &[u8],
    ) -> Result<MapEntryIter<'a>> {
        (**self).map_entries_from(state, addr, from)
    }

    fn list_append(
        &mut self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        value: &[u8],
    ) -> Result<()> {
        (**self).list_append(state, addr, value)
    }

    fn list_get<'a>(
        &'a self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
    ) -> Result<ValueIter<'a>> {
        (**self).list_get(state, addr)
    }

    fn list_replace(
        &mut self,
        state: &StateDescriptor,
        addr: StateAddr<'_>,
        values: &[&[u8]],
    ) -> Result<()> {
        (**self).list_replace(state, addr, values)
    }

    fn clear(&mut self, state: &StateDescriptor, addr: StateAddr<'_>) -> Result<()> {
        (**self).clear(state, addr)
    }

    fn clear_namespace(&mut self, state: &StateDescriptor, namespace: &[u8]) -> Result<usize> {
        (**self).clear_namespace(state, namespace)
    }

    fn clear_state(&mut self, state: &StateDescriptor) -> Result<()> {
        (**self).clear_state(state)
    }

    fn keys<'a>(&'a self, state: &StateDescriptor) -> Result<KeyIter<'a>> {
        (**self).keys(state)
    }

    fn namespaces(
        &self,
        state: &StateDescriptor,
        key_group: u16,
        key: &[u8],
    ) -> Result<Vec<Vec<u8>>> {
        (**self).namespaces(state, key_group, key)
    }

    fn states(&self) -> Vec<StateInfo> {
        (**self).states()
    }

    fn purge_expired(&mut self) -> Result<usize> {
        (**self).purge_expired()
    }

    fn approximate_size_bytes(&self) -> usize {
        (**self).approximate_size_bytes()
    }

    fn snapshot(&self) -> Result<StateSnapshot> {
        (**self).snapshot()
    }

    fn restore(&mut self, snapshot: &StateSnapshot, range: &KeyGroupRange) -> Result<()> {
        (**self).restore(snapshot, range)
    }

    fn prepare_snapshot(&mut self, epoch: u64) -> Result<PreparedSnapshot> {
        (**self).prepare_snapshot(epoch)
    }
}
