//! Serdes: how keys and values become bytes and back.
//!
//! [`Serde`] is typed; [`DynSerde`] is its type-erased form used by source
//! and sink nodes of the processor graph. [`DefaultSerde`] names the serde a
//! type gets when the user does not choose one.

use std::any::{Any, TypeId};
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::data::{Data, DynData};
use crate::error::SerdeError;

/// Turns values of `T` into bytes and back.
pub trait Serde<T>: Send + Sync + 'static {
    /// Serializes a value.
    fn serialize(&self, value: &T) -> Result<Vec<u8>, SerdeError>;
    /// Deserializes bytes.
    fn deserialize(&self, bytes: &[u8]) -> Result<T, SerdeError>;
    /// Serializes a value that may be a tombstone: `Ok(None)` writes a
    /// record with a null value. Only [`NullableSerde`] returns `None`.
    fn serialize_nullable(&self, value: &T) -> Result<Option<Vec<u8>>, SerdeError> {
        self.serialize(value).map(Some)
    }
    /// What identifies this format in a topology description (the upgrade
    /// check compares it): by default the serde's Rust type name, e.g.
    /// `stream_core::serde::JsonSerde<app::User>`. A serde whose type name
    /// may change while its bytes do not (a moved module) returns a stable
    /// name of its own, e.g. `"user-json-v1"`; wrappers include their
    /// inner serde's identity.
    fn identity(&self) -> String {
        std::any::type_name::<Self>().to_string()
    }
}

/// `Option<T>` as a nullable value: `None` is a tombstone (a record with a
/// null value) when written by a sink, and `Some(v)` is `v`'s bytes. A
/// session window that another session absorbed is forwarded as `None`.
///
/// ```
/// use std::sync::Arc;
/// use stream_core::serde::{I64Serde, NullableSerde, Serde};
/// let s = NullableSerde::new(Arc::new(I64Serde));
/// assert_eq!(s.serialize_nullable(&None).unwrap(), None);
/// assert_eq!(s.deserialize(&s.serialize(&Some(7)).unwrap()).unwrap(), Some(7));
/// ```
pub struct NullableSerde<T>(Arc<dyn Serde<T>>);

impl<T> NullableSerde<T> {
    /// Wraps the serde of the present values.
    pub fn new(inner: Arc<dyn Serde<T>>) -> Self {
        NullableSerde(inner)
    }
}

impl<T: 'static> Serde<Option<T>> for NullableSerde<T> {
    fn identity(&self) -> String {
        format!("nullable({})", self.0.identity())
    }
    fn serialize(&self, value: &Option<T>) -> Result<Vec<u8>, SerdeError> {
        match value {
            Some(v) => self.0.serialize(v),
            None => Ok(Vec::new()),
        }
    }
    fn deserialize(&self, bytes: &[u8]) -> Result<Option<T>, SerdeError> {
        if bytes.is_empty() {
            return Ok(None);
        }
        self.0.deserialize(bytes).map(Some)
    }
    fn serialize_nullable(&self, value: &Option<T>) -> Result<Option<Vec<u8>>, SerdeError> {
        // Nested (`Option<Option<T>>`): the inner `None` is a tombstone too.
        match value {
            Some(v) => self.0.serialize_nullable(v),
            None => Ok(None),
        }
    }
}

/// UTF-8 strings. An absent key deserializes as the empty string.
#[derive(Debug, Clone, Copy, Default)]
pub struct StringSerde;

impl Serde<String> for StringSerde {
    fn serialize(&self, value: &String) -> Result<Vec<u8>, SerdeError> {
        Ok(value.as_bytes().to_vec())
    }
    fn deserialize(&self, bytes: &[u8]) -> Result<String, SerdeError> {
        String::from_utf8(bytes.to_vec()).map_err(|e| SerdeError::Utf8(e.to_string()))
    }
}

/// Raw bytes, unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesSerde;

impl Serde<Vec<u8>> for BytesSerde {
    fn serialize(&self, value: &Vec<u8>) -> Result<Vec<u8>, SerdeError> {
        Ok(value.clone())
    }
    fn deserialize(&self, bytes: &[u8]) -> Result<Vec<u8>, SerdeError> {
        Ok(bytes.to_vec())
    }
}

/// 64-bit integers as 8 big-endian bytes (Kafka's `LongSerde` format).
#[derive(Debug, Clone, Copy, Default)]
pub struct I64Serde;

impl Serde<i64> for I64Serde {
    fn serialize(&self, value: &i64) -> Result<Vec<u8>, SerdeError> {
        Ok(value.to_be_bytes().to_vec())
    }
    fn deserialize(&self, bytes: &[u8]) -> Result<i64, SerdeError> {
        let arr: [u8; 8] = bytes.try_into().map_err(|_| SerdeError::Length {
            expected: 8,
            found: bytes.len(),
        })?;
        Ok(i64::from_be_bytes(arr))
    }
}

/// The unit value as zero bytes: for streams whose values do not matter
/// (a count sends no values through its repartition topic).
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitSerde;

impl Serde<()> for UnitSerde {
    fn serialize(&self, _value: &()) -> Result<Vec<u8>, SerdeError> {
        Ok(Vec::new())
    }
    fn deserialize(&self, _bytes: &[u8]) -> Result<(), SerdeError> {
        Ok(())
    }
}

/// JSON through `serde_json`.
pub struct JsonSerde<T>(PhantomData<fn() -> T>);

impl<T> JsonSerde<T> {
    /// A JSON serde for `T`.
    pub fn new() -> Self {
        JsonSerde(PhantomData)
    }
}

impl<T> Default for JsonSerde<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for JsonSerde<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<T: Serialize + DeserializeOwned + 'static> Serde<T> for JsonSerde<T> {
    fn serialize(&self, value: &T) -> Result<Vec<u8>, SerdeError> {
        serde_json::to_vec(value).map_err(|e| SerdeError::Json(e.to_string()))
    }
    /// Checks the whole input for UTF-8 once and parses it as text: the
    /// slice parser checks every string on its own, which took a quarter
    /// of the parse of a record of short strings. Input that is not UTF-8
    /// goes to the slice parser, whose error says where.
    fn deserialize(&self, bytes: &[u8]) -> Result<T, SerdeError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::from_str(text),
            Err(_) => serde_json::from_slice(bytes),
        }
        .map_err(|e| SerdeError::Json(e.to_string()))
    }
}

/// The serde a type gets when none is chosen.
pub trait DefaultSerde: Sized + Clone + Send + Sync + 'static {
    /// A fresh default serde for this type.
    fn default_serde() -> Arc<dyn Serde<Self>>;
}

/// The built-in types, each with its default serde and whether a stored
/// value of it is shown as JSON (raw bytes are not: they are shown as text
/// or hex). The one list behind [`DefaultSerde`], [`builtin_serde`] and
/// [`to_json`].
macro_rules! builtin_types {
    ($($t:ty => $serde:expr, $json:literal);* $(;)?) => {
        $(impl DefaultSerde for $t {
            fn default_serde() -> Arc<dyn Serde<Self>> {
                Arc::new($serde)
            }
        })*

        /// The default serde of `T` when `T` is a built-in type (`String`,
        /// `Vec<u8>`, `i64`, `()`, `serde_json::Value`), for code generic
        /// over `T` that cannot name [`DefaultSerde`]; `None` otherwise.
        ///
        /// ```
        /// use stream_core::serde::builtin_serde;
        /// assert!(builtin_serde::<i64>().is_some());
        /// assert!(builtin_serde::<u8>().is_none());
        /// ```
        pub fn builtin_serde<T: 'static>() -> Option<Arc<dyn Serde<T>>> {
            let t = TypeId::of::<T>();
            $(if t == TypeId::of::<$t>() {
                let any: Box<dyn Any> = Box::new(<$t as DefaultSerde>::default_serde());
                return any.downcast::<Arc<dyn Serde<T>>>().ok().map(|b| *b);
            })*
            None
        }

        /// A decoded value as JSON, when it is of a built-in type shown as
        /// JSON (or a plain number or boolean a custom serde produced).
        ///
        /// ```
        /// use stream_core::serde::to_json;
        /// assert_eq!(to_json(&(Box::new(3_i64) as stream_core::data::DynData)), Some(serde_json::json!(3)));
        /// ```
        pub fn to_json(value: &DynData) -> Option<serde_json::Value> {
            let any = value.as_ref().as_any();
            $(if $json {
                if let Some(v) = any.downcast_ref::<$t>() {
                    return serde_json::to_value(v).ok();
                }
            })*
            to_json_plain(any)
        }
    };
}

builtin_types! {
    String => StringSerde, true;
    Vec<u8> => BytesSerde, false;
    i64 => I64Serde, true;
    () => UnitSerde, true;
    serde_json::Value => JsonSerde::<serde_json::Value>::new(), true;
}

/// Plain numbers and booleans, which have no default serde.
fn to_json_plain(any: &dyn Any) -> Option<serde_json::Value> {
    macro_rules! plain {
        ($($t:ty),*) => {
            $(if let Some(v) = any.downcast_ref::<$t>() {
                return serde_json::to_value(v).ok();
            })*
        };
    }
    plain!(u64, i32, u32, f64, bool);
    None
}

/// A type-erased serde, used by source and sink nodes.
pub trait DynSerde: Send + Sync {
    /// Serializes a boxed value (which must be of the serde's type).
    fn serialize_dyn(&self, value: &DynData) -> Result<Vec<u8>, SerdeError>;
    /// Deserializes into a boxed value.
    fn deserialize_dyn(&self, bytes: &[u8]) -> Result<DynData, SerdeError>;
    /// Serializes a boxed value that may be a tombstone (`Ok(None)`).
    fn serialize_nullable_dyn(&self, value: &DynData) -> Result<Option<Vec<u8>>, SerdeError> {
        self.serialize_dyn(value).map(Some)
    }
    /// The wrapped serde's [`Serde::identity`].
    fn identity(&self) -> String;
}

struct Erased<T, S> {
    inner: S,
    _t: PhantomData<fn() -> T>,
}

impl<T, S> DynSerde for Erased<T, S>
where
    T: Data + Clone,
    S: AsRef<dyn Serde<T>> + Send + Sync,
{
    fn serialize_dyn(&self, value: &DynData) -> Result<Vec<u8>, SerdeError> {
        self.inner.as_ref().serialize(typed::<T>(value)?)
    }
    fn identity(&self) -> String {
        self.inner.as_ref().identity()
    }
    fn serialize_nullable_dyn(&self, value: &DynData) -> Result<Option<Vec<u8>>, SerdeError> {
        self.inner.as_ref().serialize_nullable(typed::<T>(value)?)
    }
    fn deserialize_dyn(&self, bytes: &[u8]) -> Result<DynData, SerdeError> {
        Ok(Box::new(self.inner.as_ref().deserialize(bytes)?))
    }
}

fn typed<T: Data>(value: &DynData) -> Result<&T, SerdeError> {
    value.as_ref().as_any().downcast_ref::<T>().ok_or_else(|| {
        SerdeError::Other(format!(
            "serde for {} received a {}",
            std::any::type_name::<T>(),
            value.as_ref().type_name()
        ))
    })
}

/// Erases the type of a serde.
pub fn erase<T: Data + Clone>(serde: Arc<dyn Serde<T>>) -> Arc<dyn DynSerde> {
    Arc::new(Erased {
        inner: serde,
        _t: PhantomData,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_round_trip_each_builtin_serde() {
        assert_eq!(
            StringSerde
                .deserialize(&StringSerde.serialize(&"é".into()).unwrap())
                .unwrap(),
            "é"
        );
        assert_eq!(
            I64Serde
                .deserialize(&I64Serde.serialize(&-3).unwrap())
                .unwrap(),
            -3
        );
        let j = JsonSerde::<Vec<u32>>::new();
        assert_eq!(
            j.deserialize(&j.serialize(&vec![1, 2]).unwrap()).unwrap(),
            vec![1, 2]
        );
    }

    #[test]
    fn should_reject_bad_bytes_with_a_typed_error() {
        assert!(matches!(
            StringSerde.deserialize(&[0xff, 0xfe]),
            Err(SerdeError::Utf8(_))
        ));
        assert!(matches!(
            I64Serde.deserialize(&[1, 2]),
            Err(SerdeError::Length {
                expected: 8,
                found: 2
            })
        ));
        assert!(matches!(
            JsonSerde::<Vec<u32>>::new().deserialize(b"[1,"),
            Err(SerdeError::Json(_))
        ));
    }

    #[test]
    fn should_erase_and_restore_types() {
        let d = erase::<i64>(Arc::new(I64Serde));
        let v = d.deserialize_dyn(&7i64.to_be_bytes()).unwrap();
        assert_eq!(d.serialize_dyn(&v).unwrap(), 7i64.to_be_bytes());
        let wrong: DynData = Box::new(String::from("x"));
        assert!(d.serialize_dyn(&wrong).is_err());
    }
}
