//! Type-erased keys and values flowing between processors.
//!
//! The DSL is typed; the processor graph is not, so that one graph type can
//! hold any mix of operators. Values cross node boundaries as [`DynData`] and
//! are downcast by the node that knows their type.

use std::any::Any;

use crate::error::ProcessError;

/// A value that can flow through the processor graph.
pub trait Data: Any + Send + Sync {
    /// Clones into a new box (records forwarded to several children).
    fn clone_data(&self) -> DynData;
    /// Borrows as `Any`, for downcasting.
    fn as_any(&self) -> &dyn Any;
    /// Converts into `Any`, for downcasting by value.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
    /// The Rust type name, for error messages.
    fn type_name(&self) -> &'static str;
}

impl<T: Any + Clone + Send + Sync> Data for T {
    fn clone_data(&self) -> DynData {
        Box::new(self.clone())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
}

/// A boxed, type-erased key or value.
pub type DynData = Box<dyn Data>;

/// Clones a [`DynData`] (dispatching on the boxed value, not on the box).
pub fn clone_dyn(data: &DynData) -> DynData {
    data.as_ref().clone_data()
}

/// Takes the typed value out of a [`DynData`].
pub fn downcast<T: Any>(data: DynData, node: &str) -> Result<T, ProcessError> {
    let found = data.as_ref().type_name();
    data.into_any()
        .downcast::<T>()
        .map(|b| *b)
        .map_err(|_| ProcessError::TypeMismatch {
            node: node.to_string(),
            expected: std::any::type_name::<T>(),
            found,
        })
}

/// Borrows the typed value inside a [`DynData`].
pub fn downcast_ref<'a, T: Any>(data: &'a DynData, node: &str) -> Result<&'a T, ProcessError> {
    let found = data.as_ref().type_name();
    data.as_ref()
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| ProcessError::TypeMismatch {
            node: node.to_string(),
            expected: std::any::type_name::<T>(),
            found,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_downcast_to_the_boxed_type_and_refuse_others() {
        let d: DynData = Box::new(41i64);
        assert_eq!(*downcast_ref::<i64>(&d, "n").unwrap(), 41);
        let c = clone_dyn(&d);
        assert_eq!(downcast::<i64>(c, "n").unwrap(), 41);
        let err = downcast::<String>(d, "n").unwrap_err();
        assert!(
            err.to_string().contains("expected alloc::string::String"),
            "{err}"
        );
    }
}
