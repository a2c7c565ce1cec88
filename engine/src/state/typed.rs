//! Typed keyed state over serde types: [`ValueState`], [`MapState`] and [`ListState`].
//! They hold only a [`StateDescriptor`] and serialize with postcard through any
//! [`KeyedStateBackend`], including `ctx.state` (a `Box<dyn KeyedStateBackend>`):
//!
//! ```
//! use weir_engine::operator::OperatorContext;
//! use weir_engine::state::{ListState, StateDescriptor, VOID_NAMESPACE};
//!
//! let mut ctx = OperatorContext::for_test("buffer");
//! let buffer: ListState<(i64, String)> = ListState::new(StateDescriptor::new("buffer"));
//! buffer.add(&mut ctx.state, 3, b"key", VOID_NAMESPACE, &(1, "a".into()))?;
//! assert_eq!(buffer.get(&ctx.state, 3, b"key", VOID_NAMESPACE)?, vec![(1, "a".to_string())]);
//! # Ok::<(), weir_engine::EngineError>(())
//! ```

use std::fmt;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::backend::KeyedStateBackend;
use super::{state_error, StateDescriptor};
use crate::error::Result;

fn encode<T: Serialize + ?Sized>(state: &StateDescriptor, value: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(value)
        .map_err(|e| state_error(&state.name, format!("cannot serialize: {e}")))
}

fn decode<T: DeserializeOwned>(state: &StateDescriptor, bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes)
        .map_err(|e| state_error(&state.name, format!("cannot deserialize: {e}")))
}

macro_rules! typed_common {
    ($name:ident < $($p:ident),+ >) => {
        impl<$($p),+> $name<$($p),+> {
            /// A handle on the state `descriptor`.
            pub fn new(descriptor: StateDescriptor) -> Self {
                $name {
                    descriptor,
                    _marker: PhantomData,
                }
            }

            /// The state's descriptor.
            pub fn descriptor(&self) -> &StateDescriptor {
                &self.descriptor
            }
        }

        impl<$($p),+> Clone for $name<$($p),+> {
            fn clone(&self) -> Self {
                $name::new(self.descriptor.clone())
            }
        }

        impl<$($p),+> fmt::Debug for $name<$($p),+> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("descriptor", &self.descriptor)
                    .finish()
            }
        }
    };
}

/// One value of type `T` per (key group, key, namespace).
pub struct ValueState<T> {
    descriptor: StateDescriptor,
    _marker: PhantomData<fn() -> T>,
}

typed_common!(ValueState<T>);

impl<T: Serialize + DeserializeOwned> ValueState<T> {
    /// The value, if set.
    pub fn get<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &B,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<Option<T>> {
        backend
            .value_get(&self.descriptor, key_group, key, namespace)?
            .map(|b| decode(&self.descriptor, &b))
            .transpose()
    }

    /// Sets the value.
    pub fn put<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &mut B,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
        value: &T,
    ) -> Result<()> {
        let bytes = encode(&self.descriptor, value)?;
        backend.value_put(&self.descriptor, key_group, key, namespace, &bytes)
    }

    /// Reads the value, applies `f` and stores the result (`None` clears); returns
    /// the new value.
    pub fn update<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &mut B,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
        f: impl FnOnce(Option<T>) -> Option<T>,
    ) -> Result<Option<T>> {
        let old = self.get(backend, key_group, key, namespace)?;
        let new = f(old);
        match &new {
            Some(v) => self.put(backend, key_group, key, namespace, v)?,
            None => self.clear(backend, key_group, key, namespace)?,
        }
        Ok(new)
    }

    /// Removes the value.
    pub fn clear<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &mut B,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<()> {
        backend.value_delete(&self.descriptor, key_group, key, namespace)
    }
}

/// A map from `K` to `V` per (key group, key, namespace). Entries iterate in the byte
/// order of the serialized user keys, which is not `K`'s order in general.
pub struct MapState<K, V> {
    descriptor: StateDescriptor,
    _marker: PhantomData<fn() -> (K, V)>,
}

typed_common!(MapState<K, V>);

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> MapState<K, V> {
    /// The value of `user_key`.
    pub fn get<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &B,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
        user_key: &K,
    ) -> Result<Option<V>> {
        let uk = encode(&self.descriptor, user_key)?;
        backend
            .map_get(&self.descriptor, key_group, key, namespace, &uk)?
            .map(|b| decode(&self.descriptor, &b))
            .transpose()
    }

    /// Sets `user_key` to `value`.
    pub fn put<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &mut B,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
        user_key: &K,
        value: &V,
    ) -> Result<()> {
        let uk = encode(&self.descriptor, user_key)?;
        let v = encode(&self.descriptor, value)?;
        backend.map_put(&self.descriptor, key_group, key, namespace, &uk, &v)
    }

    /// Removes `user_key`; whether it was there.
    pub fn remove<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &mut B,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
        user_key: &K,
    ) -> Result<bool> {
        let uk = encode(&self.descriptor, user_key)?;
        backend.map_remove(&self.descriptor, key_group, key, namespace, &uk)
    }

    /// Whether the map holds `user_key`.
    pub fn contains<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &B,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
        user_key: &K,
    ) -> Result<bool> {
        let uk = encode(&self.descriptor, user_key)?;
        backend.map_contains(&self.descriptor, key_group, key, namespace, &uk)
    }

    /// All entries.
    pub fn entries<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &B,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<Vec<(K, V)>> {
        backend
            .map_entries(&self.descriptor, key_group, key, namespace)?
            .map(|e| {
                let (k, v) = e?;
                Ok((decode(&self.descriptor, &k)?, decode(&self.descriptor, &v)?))
            })
            .collect()
    }

    /// All user keys.
    pub fn keys<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &B,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<Vec<K>> {
        backend
            .map_entries(&self.descriptor, key_group, key, namespace)?
            .map(|e| decode(&self.descriptor, &e?.0))
            .collect()
    }

    /// Whether the map is empty.
    pub fn is_empty<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &B,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<bool> {
        Ok(backend
            .map_entries(&self.descriptor, key_group, key, namespace)?
            .next()
            .transpose()?
            .is_none())
    }

    /// Removes the whole map.
    pub fn clear<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &mut B,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<()> {
        backend.clear(&self.descriptor, key_group, key, namespace)
    }
}

/// A list of `T` per (key group, key, namespace), in insertion order.
pub struct ListState<T> {
    descriptor: StateDescriptor,
    _marker: PhantomData<fn() -> T>,
}

typed_common!(ListState<T>);

impl<T: Serialize + DeserializeOwned> ListState<T> {
    /// Appends `value`.
    pub fn add<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &mut B,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
        value: &T,
    ) -> Result<()> {
        let bytes = encode(&self.descriptor, value)?;
        backend.list_append(&self.descriptor, key_group, key, namespace, &bytes)
    }

    /// Appends every value of `values`.
    pub fn add_all<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &mut B,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
        values: &[T],
    ) -> Result<()> {
        for v in values {
            self.add(backend, key_group, key, namespace, v)?;
        }
        Ok(())
    }

    /// The values, oldest first.
    pub fn get<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &B,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<Vec<T>> {
        backend
            .list_get(&self.descriptor, key_group, key, namespace)?
            .map(|v| decode(&self.descriptor, &v?))
            .collect()
    }

    /// Replaces the list by `values`.
    pub fn update<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &mut B,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
        values: &[T],
    ) -> Result<()> {
        let encoded = values
            .iter()
            .map(|v| encode(&self.descriptor, v))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
        backend.list_replace(&self.descriptor, key_group, key, namespace, &refs)
    }

    /// Removes the list.
    pub fn clear<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &mut B,
        key_group: u16,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<()> {
        backend.clear(&self.descriptor, key_group, key, namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{namespace_window, InMemoryStateBackend, VOID_NAMESPACE};
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Acc {
        count: u64,
        sum: f64,
        last: Option<String>,
    }

    #[test]
    fn value_state_roundtrips_structs_per_namespace() {
        let mut b = InMemoryStateBackend::new();
        let acc: ValueState<Acc> = ValueState::new(StateDescriptor::new("acc"));
        let w1 = namespace_window(0, 60_000);
        let w2 = namespace_window(60_000, 120_000);
        let a = Acc {
            count: 2,
            sum: 3.5,
            last: Some("x".into()),
        };
        acc.put(&mut b, 1, b"k", &w1, &a).expect("put");
        assert_eq!(acc.get(&b, 1, b"k", &w1).expect("get"), Some(a.clone()));
        assert_eq!(acc.get(&b, 1, b"k", &w2).expect("get"), None);
        let updated = acc
            .update(&mut b, 1, b"k", &w1, |old| {
                old.map(|mut o| {
                    o.count += 1;
                    o
                })
            })
            .expect("update");
        assert_eq!(updated.map(|a| a.count), Some(3));
        acc.update(&mut b, 1, b"k", &w1, |_| None).expect("clear");
        assert_eq!(acc.get(&b, 1, b"k", &w1).expect("get"), None);
    }

    #[test]
    fn map_state_typed() {
        let mut b = InMemoryStateBackend::new();
        let m: MapState<String, i64> = MapState::new(StateDescriptor::new("m"));
        assert!(m.is_empty(&b, 0, b"k", VOID_NAMESPACE).expect("empty"));
        m.put(&mut b, 0, b"k", VOID_NAMESPACE, &"a".into(), &1)
            .expect("put");
        m.put(&mut b, 0, b"k", VOID_NAMESPACE, &"b".into(), &-2)
            .expect("put");
        assert_eq!(
            m.get(&b, 0, b"k", VOID_NAMESPACE, &"b".into())
                .expect("get"),
            Some(-2)
        );
        assert!(m
            .contains(&b, 0, b"k", VOID_NAMESPACE, &"a".into())
            .expect("contains"));
        let mut entries = m.entries(&b, 0, b"k", VOID_NAMESPACE).expect("entries");
        entries.sort();
        assert_eq!(entries, vec![("a".to_string(), 1), ("b".to_string(), -2)]);
        assert_eq!(m.keys(&b, 0, b"k", VOID_NAMESPACE).expect("keys").len(), 2);
        assert!(m
            .remove(&mut b, 0, b"k", VOID_NAMESPACE, &"a".into())
            .expect("remove"));
        m.clear(&mut b, 0, b"k", VOID_NAMESPACE).expect("clear");
        assert!(m.is_empty(&b, 0, b"k", VOID_NAMESPACE).expect("empty"));
    }

    #[test]
    fn list_state_through_a_boxed_backend() {
        let mut b: Box<dyn KeyedStateBackend> = Box::new(InMemoryStateBackend::new());
        let l: ListState<u32> = ListState::new(StateDescriptor::new("l"));
        l.add_all(&mut b, 2, b"k", VOID_NAMESPACE, &[3, 1, 2])
            .expect("add");
        assert_eq!(
            l.get(&b, 2, b"k", VOID_NAMESPACE).expect("get"),
            vec![3, 1, 2]
        );
        l.update(&mut b, 2, b"k", VOID_NAMESPACE, &[9])
            .expect("update");
        assert_eq!(
            l.get(b.as_ref(), 2, b"k", VOID_NAMESPACE).expect("get"),
            vec![9]
        );
        l.clear(&mut b, 2, b"k", VOID_NAMESPACE).expect("clear");
        assert!(l.get(&b, 2, b"k", VOID_NAMESPACE).expect("get").is_empty());
    }

    #[test]
    fn wrong_type_is_an_error() {
        let mut b = InMemoryStateBackend::new();
        let s: ValueState<String> = ValueState::new(StateDescriptor::new("s"));
        s.put(&mut b, 0, b"k", VOID_NAMESPACE, &"not a float".into())
            .expect("put");
        let f: ValueState<(f64, f64, f64)> = ValueState::new(StateDescriptor::new("s"));
        let err = f.get(&b, 0, b"k", VOID_NAMESPACE).expect_err("error");
        assert!(err.to_string().contains("state s"), "{err}");
    }
}
