//! A serde adapter that refuses input nested deeper than a limit. postcard has no nesting limit
//! and serde's derived `Deserialize` recurses once per level, so a record with a recursive type
//! in it (`Command::Batch`, or openraft's errors, whose `AnyError` carries an optional boxed
//! source) could nest a few thousand levels in a few kilobytes and overflow the decoding
//! thread's stack: an abort, not an error. Every nested value (a field, an element, a map key
//! or value, a variant's content, a `Some`, a newtype's content) counts one level; past the
//! limit decoding fails with an error instead.
//!
//! (`serde_stacker` grows the stack instead, which bounds nothing: a 16-MiB frame could then
//! ask for gigabytes of stack.)

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde::Deserialize;

/// Why [`deserialize`] failed.
#[derive(Debug)]
pub(crate) enum Refused<E> {
    /// The input nests deeper than the limit.
    TooDeep,
    /// The format's own error.
    Format(E),
}

thread_local! {
    /// Set when a wrapper refused a level: formats such as postcard drop a custom error's
    /// message, so the cause is told beside the error instead.
    static TOO_DEEP: Cell<bool> = const { Cell::new(false) };
}

/// Deserializes a `T` from `de`, nesting at most `limit` levels.
pub(crate) fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(de: D, limit: usize) -> Result<T, Refused<D::Error>> {
    TOO_DEEP.with(|f| f.set(false));
    T::deserialize(Limited { inner: de, left: limit }).map_err(|e| if TOO_DEEP.with(|f| f.replace(false)) { Refused::TooDeep } else { Refused::Format(e) })
}

/// The error every wrapper returns past the limit.
fn too_deep<E: de::Error>() -> E {
    TOO_DEEP.with(|f| f.set(true));
    E::custom("nested too deep")
}

/// A deserializer whose nested values may go `left` levels deeper.
struct Limited<D> {
    inner: D,
    left: usize,
}

/// Wraps a visitor so that what it is handed (sequences, maps, enums, options) stays limited.
struct LimitedVisitor<V> {
    inner: V,
    left: usize,
}

/// Wraps the seed of one nested value: the place where a level is counted.
struct Seed<S> {
    inner: S,
    left: usize,
}

/// Wraps sequence, map, enum and variant accessors alike (each hands out seeds).
struct Access<A> {
    inner: A,
    left: usize,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let left = self.left.checked_sub(1).ok_or_else(too_deep::<D::Error>)?;
        self.inner.deserialize(Limited { inner: d, left })
    }
}

macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, Self::Error> {
                self.inner.$method($($arg,)* LimitedVisitor { inner: visitor, left: self.left })
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Limited<D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any(); deserialize_bool(); deserialize_i8(); deserialize_i16(); deserialize_i32();
        deserialize_i64(); deserialize_i128(); deserialize_u8(); deserialize_u16(); deserialize_u32();
        deserialize_u64(); deserialize_u128(); deserialize_f32(); deserialize_f64(); deserialize_char();
        deserialize_str(); deserialize_string(); deserialize_bytes(); deserialize_byte_buf();
        deserialize_option(); deserialize_unit(); deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str); deserialize_seq(); deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize); deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier(); deserialize_ignored_any();
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                self.inner.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for LimitedVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool(bool); visit_i8(i8); visit_i16(i16); visit_i32(i32); visit_i64(i64);
        visit_i128(i128); visit_u8(u8); visit_u16(u16); visit_u32(u32); visit_u64(u64);
        visit_u128(u128); visit_f32(f32); visit_f64(f64); visit_char(char); visit_str(&str);
        visit_borrowed_str(&'de str); visit_string(String); visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]); visit_byte_buf(Vec<u8>);
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let left = self.left.checked_sub(1).ok_or_else(too_deep::<D::Error>)?;
        self.inner.visit_some(Limited { inner: d, left })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let left = self.left.checked_sub(1).ok_or_else(too_deep::<D::Error>)?;
        self.inner.visit_newtype_struct(Limited { inner: d, left })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_seq(Access { inner: seq, left: self.left })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_map(Access { inner: map, left: self.left })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_enum(Access { inner: data, left: self.left })
    }
}

impl<A> Access<A> {
    fn seed<S>(&self, inner: S) -> Seed<S> {
        Seed { inner, left: self.left }
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Access<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, A::Error> {
        let seed = self.seed(seed);
        self.inner.next_element_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Access<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        let seed = self.seed(seed);
        self.inner.next_key_seed(seed)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        let seed = self.seed(seed);
        self.inner.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Access<A> {
    type Error = A::Error;
    type Variant = Access<A::Variant>;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self::Variant), A::Error> {
        let left = self.left;
        let (value, variant) = self.inner.variant_seed(Seed { inner: seed, left })?;
        Ok((value, Access { inner: variant, left }))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Access<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        let seed = self.seed(seed);
        self.inner.newtype_variant_seed(seed)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner.tuple_variant(len, LimitedVisitor { inner: visitor, left: self.left })
    }

    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], visitor: V) -> Result<V::Value, A::Error> {
        self.inner.struct_variant(fields, LimitedVisitor { inner: visitor, left: self.left })
    }
}
