//! The topology DSL: describe a stream application the way the problem
//! reads, and get a [`stream_core::Topology`] that the Kafka runtime and the
//! test driver run.
//!
//! ```
//! use stream_dsl::prelude::*;
//!
//! let builder = StreamsBuilder::new();
//! builder
//!     .source("new_users")
//!     .filter(|_k, user| user.contains("hotmail"))
//!     .group_by(|_k, user| user.split('@').nth(1).unwrap_or("").to_string())
//!     .count(Materialized::as_store("flags"))
//!     .to_topic("watchlist");
//! let topology = builder.build().unwrap();
//! println!("{}", topology.describe("team-1"));
//! ```
//!
//! # Layout
//!
//! | module | what |
//! |---|---|
//! | [`builder`] | [`StreamsBuilder`]: sources, stores, `build()` |
//! | [`kstream`] | [`KStream`] and its stateless operators, sinks, grouping |
//! | [`global`] | [`GlobalKTable`](global::GlobalKTable): a table every instance holds whole, joined by any key |
//! | [`grouped`] | [`KGroupedStream`]: `count`, `reduce`, `aggregate` |
//! | [`cogroup`] | [`CogroupedKStream`](cogroup::CogroupedKStream): several grouped streams, one aggregate |
//! | [`grouped_table`] | [`KGroupedTable`](grouped_table::KGroupedTable): a table regrouped, aggregated with a subtractor |
//! | [`ktable`] | [`KTable`]: a table's changes (`filter`, `map_values`, sinks) |
//! | [`table`] | tables read from topics, stream–table joins |
//! | [`stream_join`] | stream–stream windowed joins, [`JoinWindows`](stream_join::JoinWindows) |
//! | [`change`] | [`Change`](change::Change): a row's new and old value |
//! | [`options`] | serdes, store naming and changelog choices |
//! | [`windows`] | [`TimeWindows`](windows::TimeWindows), windowed keys and their serde, `Suppressed` |
//! | [`sessions`] | session windows: `count`, `reduce`, `aggregate` with a merger |
//! | [`windowed`] | windowed `count`, `reduce`, `aggregate`; `suppress` (emit-final) |
//!
//! The DSL never touches Kafka or sled: it only builds the graph.
#![deny(missing_docs)]

pub mod builder;
pub mod change;
pub mod cogroup;
mod fns;
pub mod global;
pub mod grouped;
pub mod grouped_table;
mod joiner;
pub mod kstream;
pub mod ktable;
mod ops;
pub mod options;
pub mod sessions;
mod sliding;
pub mod stream_join;
pub mod table;
mod table_join;
pub mod windowed;
pub mod windows;

pub use builder::StreamsBuilder;
pub use grouped::KGroupedStream;
pub use kstream::{KStream, RecordMeta};
pub use ktable::KTable;
pub use options::{Consumed, Grouped, Materialized, Produced};

/// Everything a topology needs, in one import.
pub mod prelude {
    pub use crate::change::Change;
    pub use crate::global::GlobalKTable;
    pub use crate::sessions::SessionWindowedKStream;
    pub use crate::stream_join::JoinWindows;
    pub use crate::windowed::TimeWindowedKStream;
    pub use crate::windows::{
        SessionWindows, SlidingWindows, Suppressed, TimeWindowing, TimeWindows, Window, WindowSpec,
        Windowed, WindowedSerde,
    };
    pub use crate::{
        Consumed, Grouped, KGroupedStream, KStream, KTable, Materialized, Produced, RecordMeta,
        StreamsBuilder,
    };
    pub use stream_core::driver::{CrashInput, CrashTest, TestDriver};
    pub use stream_core::serde::{I64Serde, StringSerde};
}
