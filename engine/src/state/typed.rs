//! Typed keyed state over serde types: [`ValueState`], [`MapState`] and [`ListState`].
//! They hold only a [`StateDescriptor`] and serialize with postcard through any
//! [`KeyedStateBackend`], including `ctx.state` (a `Box<dyn KeyedStateBackend>`):
//!
//! ```
//! use weir_engine::operator::OperatorContext;
//! use weir_engine::state::{ListState, StateAddr, StateDescriptor};
//!
//! let mut ctx = OperatorContext::for_test("buffer");
//! let buffer: ListState<(i64, String)> = ListState::new(StateDescriptor::new("buffer"));
//! let addr = StateAddr::key(3, b"key");
//! buffer.add(&mut ctx.state, addr, &(1, "a".into()))?;
//! assert_eq!(buffer.get(&ctx.state, addr)?, vec![(1, "a".to_string())]);
//! # Ok::<(), weir_engine::EngineError>(())
//! ```

use std::fmt;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::backend::KeyedStateBackend;
use super::StateAddr;
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
        addr: StateAddr<'_>,
    ) -> Result<Option<T>> {
        backend
            .value_get(&self.descriptor, addr)?
            .map(|b| decode(&self.descriptor, &b))
            .transpose()
    }

    /// Sets the value.
    pub fn put<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &mut B,
        addr: StateAddr<'_>,
        value: &T,
    ) -> Result<()> {
        let bytes = encode(&self.descriptor, value)?;
        backend.value_put(&self.descriptor, addr, &bytes)
    }

    /// Reads the value, applies `f` and stores the result (`None` clears); returns
    /// the new value.
    pub fn update<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &mut B,
        addr: StateAddr<'_>,
        f: impl FnOnce(Option<T>) -> Option<T>,
    ) -> Result<Option<T>> {
        let old = self.get(backend, addr)?;
        let new = f(old);
        match &new {
            Some(v) => self.put(backend, addr, v)?,
            None => self.clear(backend, addr)?,
        }
        Ok(new)
    }

    /// Removes the value.
    pub fn clear<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &mut B,
        addr: StateAddr<'_>,
    ) -> Result<()> {
        backend.value_delete(&self.descriptor, addr)
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
        addr: StateAddr<'_>,
        user_key: &K,
    ) -> Result<Option<V>> {
        let uk = encode(&self.descriptor, user_key)?;
        backend
            .map_get(&self.descriptor, addr, &uk)?
            .map(|b| decode(&self.descriptor, &b))
            .transpose()
    }

    /// Sets `user_key` to `value`.
    pub fn put<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &mut B,
        addr: StateAddr<'_>,
        user_key: &K,
        value: &V,
    ) -> Result<()> {
        let uk = encode(&self.descriptor, user_key)?;
        let v = encode(&self.descriptor, value)?;
        backend.map_put(&self.descriptor, addr, &uk, &v)
    }

    /// Removes `user_key`; whether it was there.
    pub fn remove<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &mut B,
        addr: StateAddr<'_>,
        user_key: &K,
    ) -> Result<bool> {
        let uk = encode(&self.descriptor, user_key)?;
        backend.map_remove(&self.descriptor, addr, &uk)
    }

    /// Whether the map holds `user_key`.
    pub fn contains<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &B,
        addr: StateAddr<'_>,
        user_key: &K,
    ) -> Result<bool> {
        let uk = encode(&self.descriptor, user_key)?;
        backend.map_contains(&self.descriptor, addr, &uk)
    }

    /// All entries.
    pub fn entries<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &B,
        addr: StateAddr<'_>,
    ) -> Result<Vec<(K, V)>> {
        backend
            .map_entries(&self.descriptor, addr)?
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
        addr: StateAddr<'_>,
    ) -> Result<Vec<K>> {
        backend
            .map_entries(&self.descriptor, addr)?
            .map(|e| decode(&self.descriptor, &e?.0))
            .collect()
    }

    /// Whether the map is empty.
    pub fn is_empty<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &B,
        addr: StateAddr<'_>,
    ) -> Result<bool> {
        Ok(backend
            .map_entries(&self.descriptor, addr)?
            .next()
            .transpose()?
            .is_none())
    }

    /// Removes the whole map.
    pub fn clear<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &mut B,
        addr: StateAddr<'_>,
    ) -> Result<()> {
        backend.clear(&self.descriptor, addr)
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
        addr: StateAddr<'_>,
        value: &T,
    ) -> Result<()> {
        let bytes = encode(&self.descriptor, value)?;
        backend.list_append(&self.descriptor, addr, &bytes)
    }

    /// Appends every value of `values`.
    pub fn add_all<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &mut B,
        addr: StateAddr<'_>,
        values: &[T],
    ) -> Result<()> {
        for v in values {
            self.add(backend, addr, v)?;
        }
        Ok(())
    }

    /// The values, oldest first.
    pub fn get<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &B,
        addr: StateAddr<'_>,
    ) -> Result<Vec<T>> {
        backend
            .list_get(&self.descriptor, addr)?
            .map(|v| decode(&self.descriptor, &v?))
            .collect()
    }

    /// Replaces the list by `values`.
    pub fn update<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &mut B,
        addr: StateAddr<'_>,
        values: &[T],
    ) -> Result<()> {
        let encoded = values
            .iter()
            .map(|v| encode(&self.descriptor, v))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
        backend.list_replace(&self.descriptor, addr, &refs)
    }

    /// Removes the list.
    pub fn clear<B: KeyedStateBackend + ?Sized>(
        &self,
        backend: &mut B,
        addr: StateAddr<'_>,
    ) -> Result<()> {
        backend.clear(&self.descriptor, addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{namespace_window, InMemoryStateBackend};
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
        acc.put(&mut b, StateAddr::new(1, b"k", &w1), &a)
            .expect("put");
        assert_eq!(
            acc.get(&b, StateAddr::new(1, b"k", &w1)).expect("get"),
            Some(a.clone())
        );
        assert_eq!(
            acc.get(&b, StateAddr::new(1, b"k", &w2)).expect("get"),
            None
        );
        let updated = acc
            .update(&mut b, StateAddr::new(1, b"k", &w1), |old| {
                old.map(|mut o| {
                    o.count += 1;
                    o
                })
            })
            .expect("update");
        assert_eq!(updated.map(|a| a.count), Some(3));
        acc.update(&mut b, StateAddr::new(1, b"k", &w1), |_| None)
            .expect("clear");
        assert_eq!(
            acc.get(&b, StateAddr::new(1, b"k", &w1)).expect("get"),
            None
        );
    }

    #[test]
    fn map_state_typed() {
        let mut b = InMemoryStateBackend::new();
        let m: MapState<String, i64> = MapState::new(StateDescriptor::new("m"));
        assert!(m.is_empty(&b, StateAddr::key(0, b"k")).expect("empty"));
        m.put(&mut b, StateAddr::key(0, b"k"), &"a".into(), &1)
            .expect("put");
        m.put(&mut b, StateAddr::key(0, b"k"), &"b".into(), &-2)
            .expect("put");
        assert_eq!(
            m.get(&b, StateAddr::key(0, b"k"), &"b".into())
                .expect("get"),
            Some(-2)
        );
        assert!(m
            .contains(&b, StateAddr::key(0, b"k"), &"a".into())
            .expect("contains"));
        let mut entries = m.entries(&b, StateAddr::key(0, b"k")).expect("entries");
        entries.sort();
        assert_eq!(entries, vec![("a".to_string(), 1), ("b".to_string(), -2)]);
        assert_eq!(m.keys(&b, StateAddr::key(0, b"k")).expect("keys").len(), 2);
        assert!(m
            .remove(&mut b, StateAddr::key(0, b"k"), &"a".into())
            .expect("remove"));
        m.clear(&mut b, StateAddr::key(0, b"k")).expect("clear");
        assert!(m.is_empty(&b, StateAddr::key(0, b"k")).expect("empty"));
    }

    #[test]
    fn list_state_through_a_boxed_backend() {
        let mut b: Box<dyn KeyedStateBackend> = Box::new(InMemoryStateBackend::new());
        let l: ListState<u32> = ListState::new(StateDescriptor::new("l"));
        l.add_all(&mut b, StateAddr::key(2, b"k"), &[3, 1, 2])
            .expect("add");
        assert_eq!(
            l.get(&b, StateAddr::key(2, b"k")).expect("get"),
            vec![3, 1, 2]
        );
        l.update(&mut b, StateAddr::key(2, b"k"), &[9])
            .expect("update");
        assert_eq!(
            l.get(b.as_ref(), StateAddr::key(2, b"k")).expect("get"),
            vec![9]
        );
        l.clear(&mut b, StateAddr::key(2, b"k")).expect("clear");
        assert!(l.get(&b, StateAddr::key(2, b"k")).expect("get").is_empty());
    }

    #[test]
    fn wrong_type_is_an_error() {
        let mut b = InMemoryStateBackend::new();
        let s: ValueState<String> = ValueState::new(StateDescriptor::new("s"));
        s.put(&mut b, StateAddr::key(0, b"k"), &"not a float".into())
            .expect("put");
        let f: ValueState<(f64, f64, f64)> = ValueState::new(StateDescriptor::new("s"));
        let err = f.get(&b, StateAddr::key(0, b"k")).expect_err("error");
        assert!(err.to_string().contains("state s"), "{err}");
    }
}
