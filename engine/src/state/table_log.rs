//! Table logs: how an operator that keeps its state in its own in-memory table (the
//! window operator) checkpoints it at a cost proportional to what changed, not to the
//! whole table.
//!
//! For a barrier the operator appends the entries it changed since the last barrier to a
//! [`TableLogWriter`] — `put(key group, key, value)` or `delete(key group, key)`, raw
//! bytes into one buffer, no allocation per entry — at the barrier or, deferred, after
//! it (see `Operator::snapshot_table`: the operator logs an entry's barrier-time value
//! before it changes it). The task stores that buffer as one immutable *delta* file in
//! the checkpoint's shared
//! space; a checkpoint refers to the *chain* of files that rebuilds the table (a *full*
//! file, then deltas, oldest first). When the deltas outgrow the full file, the
//! background part of a checkpoint replays the chain into a new full file
//! ([`compact`]): the work that grows with the table happens off the processing path.
//! On restore the chain is replayed ([`replay`]), keeping the key groups the subtask
//! owns, and the operator reads the live entries back in `open`.
//!
//! File format: the magic `WEIRLOG1`, one kind byte (0 delta, 1 full), then records
//! `key group (u16 LE) | tag (1 put, 0 delete) | key length (u32 LE) | key | [value
//! length (u32 LE) | value]`. Within a chain the last record of a (key group, key) wins.

use std::collections::HashMap;

use crate::error::{EngineError, Result};
use crate::state::KeyGroupRange;

/// The first bytes of every log file.
pub const LOG_MAGIC: &[u8; 8] = b"WEIRLOG1";
const KIND_DELTA: u8 = 0;
const KIND_FULL: u8 = 1;
const TAG_DELETE: u8 = 0;
const TAG_PUT: u8 = 1;

fn corrupt(what: &str) -> EngineError {
    crate::state::state_error("table log", format!("corrupt table log: {what}"))
}

/// The changes an operator writes at a barrier (see the module docs).
#[derive(Debug)]
pub struct TableLogWriter {
    buf: Vec<u8>,
    full: bool,
    records: u64,
}

impl TableLogWriter {
    /// An empty log; `full`: the operator must write every live entry (the first
    /// checkpoint, savepoints, after a failed upload) instead of its changes.
    pub fn new(full: bool) -> Self {
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(LOG_MAGIC);
        buf.push(if full { KIND_FULL } else { KIND_DELTA });
        TableLogWriter {
            buf,
            full,
            records: 0,
        }
    }

    /// Whether every live entry must be written (and the operator's record of changes
    /// reset): the file starts a new chain.
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// Records written.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Whether no record was written.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    fn head(&mut self, key_group: u16, tag: u8, key: &[u8]) {
        self.buf.extend_from_slice(&key_group.to_le_bytes());
        self.buf.push(tag);
        self.buf
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(key);
        self.records += 1;
    }

    /// Sets `key` of `key_group` to `value`.
    pub fn put(&mut self, key_group: u16, key: &[u8], value: &[u8]) {
        self.head(key_group, TAG_PUT, key);
        self.buf
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(value);
    }

    /// Sets `key` to the bytes `write` appends to the buffer it is given (no copy).
    pub fn put_with(
        &mut self,
        key_group: u16,
        key: &[u8],
        write: impl FnOnce(&mut Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        self.head(key_group, TAG_PUT, key);
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        write(&mut self.buf)?;
        let len = u32::try_from(self.buf.len() - at - 4)
            .map_err(|_| crate::state::state_error("table log", "a value over 4 GiB"))?;
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        Ok(())
    }

    /// Removes `key` of `key_group`.
    pub fn delete(&mut self, key_group: u16, key: &[u8]) {
        self.head(key_group, TAG_DELETE, key);
    }

    /// The file's bytes.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// One record of a log file: `value` is `None` for a deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord<'a> {
    /// The key group.
    pub key_group: u16,
    /// The key.
    pub key: &'a [u8],
    /// The value, or `None` for a deletion.
    pub value: Option<&'a [u8]>,
}

/// Whether a log file is a full one (starts a chain).
pub fn is_full(file: &[u8]) -> Result<bool> {
    if file.len() < 9 || &file[..8] != LOG_MAGIC {
        return Err(corrupt("not a table log file (bad magic)"));
    }
    match file[8] {
        KIND_DELTA => Ok(false),
        KIND_FULL => Ok(true),
        k => Err(corrupt(&format!("unknown file kind {k}"))),
    }
}

/// The records of one log file, in order.
pub fn records(file: &[u8]) -> Result<Records<'_>> {
    is_full(file)?;
    Ok(Records { rest: &file[9..] })
}

/// Iterator over the records of a log file.
pub struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Records<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(corrupt(&format!("truncated {what}")));
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }

    fn len(&mut self, what: &str) -> Result<usize> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn next_record(&mut self) -> Result<LogRecord<'a>> {
        let kg = self.take(2, "key group")?;
        let key_group = u16::from_le_bytes([kg[0], kg[1]]);
        let tag = self.take(1, "tag")?[0];
        let n = self.len("key length")?;
        let key = self.take(n, "key")?;
        let value = match tag {
            TAG_PUT => {
                let n = self.len("value length")?;
                Some(self.take(n, "value")?)
            }
            TAG_DELETE => None,
            t => return Err(corrupt(&format!("unknown record tag {t}"))),
        };
        Ok(LogRecord {
            key_group,
            key,
            value,
        })
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<LogRecord<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let r = self.next_record();
        if r.is_err() {
            self.rest = &[];
        }
        Some(r)
    }
}

/// A live entry of a replayed table.
pub type TableEntry = (u16, Vec<u8>, Vec<u8>);

/// Replays a chain (a full file, then deltas, oldest first; or deltas only when the
/// chain began empty) and returns the live entries whose key group is in `range`,
/// sorted by (key group, key).
pub fn replay(chain: &[impl AsRef<[u8]>], range: &KeyGroupRange) -> Result<Vec<TableEntry>> {
    let mut live: HashMap<(u16, &[u8]), &[u8], ahash::RandomState> = HashMap::default();
    for (i, file) in chain.iter().enumerate() {
        let file = file.as_ref();
        if i > 0 && is_full(file)? {
            return Err(corrupt("a full file inside a chain"));
        }
        for r in records(file)? {
            let r = r?;
            if !range.contains(r.key_group) {
                continue;
            }
            match r.value {
                Some(v) => {
                    live.insert((r.key_group, r.key), v);
                }
                None => {
                    live.remove(&(r.key_group, r.key));
                }
            }
        }
    }
    let mut out: Vec<TableEntry> = live
        .into_iter()
        .map(|((kg, k), v)| (kg, k.to_vec(), v.to_vec()))
        .collect();
    out.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    Ok(out)
}

/// Replays a chain into one full file holding its live entries.
pub fn compact(chain: &[impl AsRef<[u8]>]) -> Result<Vec<u8>> {
    let all = KeyGroupRange::new(0, u16::MAX);
    let entries = replay(chain, &all)?;
    let mut w = TableLogWriter::new(true);
    for (kg, k, v) in &entries {
        w.put(*kg, k, v);
    }
    Ok(w.finish())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Put(u16, u8, u8),
        Delete(u16, u8),
        Checkpoint,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u16..8, 0u8..6, any::<u8>()).prop_map(|(g, k, v)| Op::Put(g, k, v)),
            2 => (0u16..8, 0u8..6).prop_map(|(g, k)| Op::Delete(g, k)),
            1 => Just(Op::Checkpoint),
        ]
    }

    proptest! {
        /// Writing changes as deltas and replaying the chain (compacted or not, over
        /// any key-group range) gives the model's table.
        #[test]
        fn chains_replay_to_the_model(ops in proptest::collection::vec(op(), 0..80),
                                      compact_at in 0usize..6, lo in 0u16..8, hi in 0u16..9) {
            let mut model: BTreeMap<(u16, Vec<u8>), Vec<u8>> = BTreeMap::new();
            let mut chain: Vec<Vec<u8>> = Vec::new();
            let mut w = TableLogWriter::new(false);
            for o in ops.iter().chain(std::iter::once(&Op::Checkpoint)) {
                match o {
                    Op::Put(g, k, v) => {
                        model.insert((*g, vec![*k]), vec![*v; (*v % 5) as usize]);
                        w.put_with(*g, &[*k], |b| { b.extend(vec![*v; (*v % 5) as usize]); Ok(()) }).unwrap();
                    }
                    Op::Delete(g, k) => {
                        model.remove(&(*g, vec![*k]));
                        w.delete(*g, &[*k]);
                    }
                    Op::Checkpoint => {
                        chain.push(std::mem::replace(&mut w, TableLogWriter::new(false)).finish());
                        if chain.len() == compact_at {
                            chain = vec![compact(&chain).unwrap()];
                        }
                    }
                }
            }
            let range = KeyGroupRange::new(lo.min(hi), hi.max(lo));
            let got = replay(&chain, &range).unwrap();
            let want: Vec<TableEntry> = model
                .into_iter()
                .filter(|((g, _), _)| range.contains(*g))
                .map(|((g, k), v)| (g, k, v))
                .collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn corrupt_files_are_errors_not_panics() {
        let mut w = TableLogWriter::new(false);
        w.put(3, b"key", b"value");
        let good = w.finish();
        for cut in 0..good.len() {
            let _ = replay(&[&good[..cut]], &KeyGroupRange::new(0, 10));
        }
        assert!(replay(&[b"nonsense".as_slice()], &KeyGroupRange::new(0, 1)).is_err());
        let mut bad = good.clone();
        bad[11] = 9; // the tag
        assert!(replay(&[&bad], &KeyGroupRange::new(0, 10)).is_err());
        let full = TableLogWriter::new(true).finish();
        assert!(replay(&[good.clone(), full], &KeyGroupRange::new(0, 10)).is_err());
    }
}
