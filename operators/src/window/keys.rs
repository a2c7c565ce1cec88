//! Keys of the window operator's in-memory state, laid out for the hot path.
//!
//! [`WKey`] keeps a key's bytes inline when they are short (one integer, a short string:
//! the common case), so comparing, hashing or cloning a key touches no other memory and
//! no reference count; longer keys share one `Arc<[u8]>`. [`KeyIds`] gives the rows of
//! one batch dense per-batch key ids and hashes each distinct key once; the operator's
//! key table is probed with that same hash.

use std::cmp::Ordering;
use std::sync::Arc;

use hashbrown::HashTable;
use weir_engine::state::EncodedKeys;

/// Longest key kept inline (the enum is then 24 bytes, like `Arc<[u8]>` plus a tag).
const INLINE: usize = 22;

/// The bytes of a key ([`weir_engine::state::KeyCodec`] encoding). Canonical: a key of
/// at most [`INLINE`] bytes is always `Inline`, so the two variants never hold equal
/// keys. Ordered like the byte slices (the order windows of one end fire in).
#[derive(Clone)]
pub(super) enum WKey {
    /// Zero-padded bytes and their length.
    Inline { len: u8, bytes: [u8; INLINE] },
    /// A longer key.
    Heap(Arc<[u8]>),
}

impl WKey {
    /// The key of `bytes`.
    pub(super) fn new(bytes: &[u8]) -> Self {
        if bytes.len() <= INLINE {
            let mut inline = [0u8; INLINE];
            inline[..bytes.len()].copy_from_slice(bytes);
            WKey::Inline {
                len: bytes.len() as u8,
                bytes: inline,
            }
        } else {
            WKey::Heap(Arc::from(bytes))
        }
    }

    /// The key's bytes.
    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            WKey::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or(bytes),
            WKey::Heap(b) => b,
        }
    }
}

/// The padded bytes as two big-endian words: comparing the words compares the bytes.
fn words(b: &[u8; INLINE]) -> (u128, u64) {
    let mut hi = [0u8; 16];
    hi.copy_from_slice(&b[..16]);
    let mut lo = [0u8; 8];
    lo[..INLINE - 16].copy_from_slice(&b[16..]);
    (u128::from_be_bytes(hi), u64::from_be_bytes(lo))
}

impl PartialEq for WKey {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (WKey::Inline { len: a, bytes: x }, WKey::Inline { len: b, bytes: y }) => {
                a == b && x == y
            }
            (WKey::Heap(a), WKey::Heap(b)) => a == b,
            // Canonical form: a short key is never on the heap.
            _ => false,
        }
    }
}

impl Eq for WKey {}

impl PartialOrd for WKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for WKey {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            // Zero padding: where the padded bytes differ, the keys differ at the same
            // place (or the shorter key's padding meets a non-zero byte of the longer
            // key, which orders it first, as a prefix is); where they are equal, the
            // shorter key is a prefix of the longer one and comes first.
            (WKey::Inline { len: a, bytes: x }, WKey::Inline { len: b, bytes: y }) => {
                words(x).cmp(&words(y)).then(a.cmp(b))
            }
            _ => self.as_slice().cmp(other.as_slice()),
        }
    }
}

impl std::fmt::Debug for WKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WKey({:02x?})", self.as_slice())
    }
}

/// Dense ids for the distinct keys of a batch, reused from batch to batch (no
/// allocation once the buffers have grown).
#[derive(Default)]
pub(super) struct KeyIds {
    /// The key id of every row.
    pub(super) row_key: Vec<u32>,
    /// Per key id: a row holding the key, and the key's hash.
    pub(super) uniq: Vec<(u32, u64)>,
    table: HashTable<u32>,
}

impl KeyIds {
    /// Assigns the ids of `keys`' rows, hashing each key with `hasher`.
    pub(super) fn assign(&mut self, keys: &EncodedKeys, hasher: &ahash::RandomState) {
        self.row_key.clear();
        self.uniq.clear();
        self.table.clear();
        self.row_key.reserve(keys.len());
        let mut last: Option<(&[u8], u32)> = None;
        for (row, k) in keys.iter().enumerate() {
            if let Some((lk, id)) = last {
                if lk == k {
                    self.row_key.push(id);
                    continue;
                }
            }
            let hash = hasher.hash_one(k);
            let uniq = &self.uniq;
            let found = self
                .table
                .find(hash, |&id| {
                    let (r, h) = uniq[id as usize];
                    h == hash && keys.row(r as usize) == k
                })
                .copied();
            let id = match found {
                Some(id) => id,
                None => {
                    let id = self.uniq.len() as u32;
                    self.uniq.push((row as u32, hash));
                    let uniq = &self.uniq;
                    self.table.insert_unique(hash, id, |&i| uniq[i as usize].1);
                    id
                }
            };
            last = Some((k, id));
            self.row_key.push(id);
        }
    }

    /// Number of distinct keys.
    pub(super) fn len(&self) -> usize {
        self.uniq.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// `WKey` orders and compares exactly like the byte slices.
        #[test]
        fn wkey_orders_like_bytes(
            a in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..30),
            b in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..30),
        ) {
            let (x, y) = (WKey::new(&a), WKey::new(&b));
            prop_assert_eq!(x.as_slice(), &a[..]);
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            prop_assert_eq!(x == y, a == b);
            prop_assert_eq!(x.clone(), x);
        }
    }

    #[test]
    fn prefixes_and_padding_order_first() {
        let keys: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            vec![0, 1],
            vec![1],
            vec![1; 22],
            vec![1; 23],
            vec![2],
        ];
        for (i, a) in keys.iter().enumerate() {
            for (j, b) in keys.iter().enumerate() {
                assert_eq!(WKey::new(a).cmp(&WKey::new(b)), i.cmp(&j), "{a:?} {b:?}");
            }
        }
    }
}
