//! Runtime, processor graph, state stores, Kafka I/O and test driver of a
//! Kafka Streams–style stream-processing framework.
//!
//! # Layout
//!
//! | module | responsibility |
//! |---|---|
//! | [`graph`] | the processor graph: nodes, stores, internal topics, sub-topologies, `describe()` |
//! | [`processor`] | the [`Processor`] trait and its [`Context`] |
//! | [`record`] | records inside the graph and on their way out |
//! | [`data`] | type-erased keys and values |
//! | [`serde`] | serdes, typed and erased |
//! | [`store`] | the store trait, its layers, memory and sled backends, checkpoints |
//! | [`task`] | one sub-topology for one partition: its graph, output records, progress and restore filter |
//! | [`driver`] | the in-process test driver |
//! | [`runtime`] | the Kafka runtime: config, topics, consumer/producer loop, restore, commit |
//! | [`http`] | the optional HTTP server: metrics, health, topology, store queries, status page |
//! | [`logging`] | logging to stderr that survives a closed stderr |
//! | [`partitioner`] | Java-compatible murmur2 partitioning |
//! | [`error`] | typed errors |
//!
//! The DSL (crate `stream-dsl`) builds a [`graph::Topology`]; the runtime
//! and the test driver both run it through [`task::Task`].
#![deny(missing_docs)]

pub mod alloc_count;
pub mod coordinates;
pub mod data;
pub mod driver;
pub mod error;
pub mod graph;
pub mod http;
mod huge_pages;
pub mod instance;
pub mod logging;
pub mod partitioner;
pub mod processor;
pub mod record;
pub mod runtime;
pub mod serde;
pub mod store;
pub mod task;
pub mod time;

pub use error::{Origin, ProcessError, SerdeError, StoreError, TopologyError};
pub use graph::{Topology, TopologyBuilder};
pub use processor::{Context, Processor};
pub use record::Record;
pub use store::KeyValueStore;
