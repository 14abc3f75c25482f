//! Processors behind the stateless operators: a closure over the context
//! and the record, made once per task from a shared function.

use std::sync::Arc;

use stream_core::data::{downcast, downcast_ref};
use stream_core::graph::ProcessorFactory;
use stream_core::{Context, ProcessError, Processor, Record};

/// The body of a stateless operator.
pub(crate) type OpFn =
    Arc<dyn Fn(&mut Context<'_>, Record) -> Result<(), ProcessError> + Send + Sync>;

struct FnProcessor {
    body: OpFn,
}

impl Processor for FnProcessor {
    fn process(&mut self, ctx: &mut Context<'_>, record: Record) -> Result<(), ProcessError> {
        (self.body)(ctx, record)
    }
}

/// A factory making one [`FnProcessor`] per task.
pub(crate) fn factory(body: OpFn) -> ProcessorFactory {
    Arc::new(move || Box::new(FnProcessor { body: body.clone() }) as Box<dyn Processor>)
}

/// Borrows a record's key and value as their types.
pub(crate) fn borrow_kv<'r, K: 'static, V: 'static>(
    ctx: &Context<'_>,
    r: &'r Record,
) -> Result<(&'r K, &'r V), ProcessError> {
    Ok((
        downcast_ref::<K>(&r.key, ctx.node_name())?,
        downcast_ref::<V>(&r.value, ctx.node_name())?,
    ))
}

/// Takes a record's key and value as their types, with timestamp and headers.
pub(crate) fn take_kv<K: 'static, V: 'static>(
    ctx: &Context<'_>,
    r: Record,
) -> Result<(K, V, i64, stream_core::record::Headers), ProcessError> {
    let node = ctx.node_name();
    Ok((
        downcast::<K>(r.key, node)?,
        downcast::<V>(r.value, node)?,
        r.timestamp,
        r.headers,
    ))
}

/// Builds a record from typed key and value.
pub(crate) fn record<K: stream_core::data::Data, V: stream_core::data::Data>(
    k: K,
    v: V,
    timestamp: i64,
    headers: stream_core::record::Headers,
) -> Record {
    Record {
        key: Box::new(k),
        value: Box::new(v),
        timestamp,
        headers,
    }
}

/// Builds a record from a boxed key and a typed value.
pub(crate) fn record_dyn<V: stream_core::data::Data>(
    key: stream_core::data::DynData,
    v: V,
    timestamp: i64,
    headers: stream_core::record::Headers,
) -> Record {
    Record {
        key,
        value: Box::new(v),
        timestamp,
        headers,
    }
}
