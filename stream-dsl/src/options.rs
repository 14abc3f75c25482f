//! Options of operators: serdes for sources, sinks and groupings, and how
//! an aggregation's store is named and changelogged.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use stream_core::data::Data;
use stream_core::graph::Partitioner;
use stream_core::serde::{DefaultSerde, JsonSerde, Serde};
use stream_core::time::TimestampExtractor;

/// Serdes of a source topic.
pub struct Consumed<K, V> {
    pub(crate) key: Arc<dyn Serde<K>>,
    pub(crate) value: Arc<dyn Serde<V>>,
    pub(crate) timestamps: Option<TimestampExtractor>,
}

impl<K, V> Clone for Consumed<K, V> {
    fn clone(&self) -> Self {
        Consumed {
            key: self.key.clone(),
            value: self.value.clone(),
            timestamps: self.timestamps.clone(),
        }
    }
}

impl<K, V> Consumed<K, V> {
    /// Reads keys and values with the given serdes.
    pub fn with(key: impl Serde<K>, value: impl Serde<V>) -> Self {
        Consumed {
            key: Arc::new(key),
            value: Arc::new(value),
            timestamps: None,
        }
    }

    /// Takes event time from `extractor` instead of the Kafka record's
    /// timestamp (e.g. [`TimestampExtractor::json_field`], or
    /// [`TimestampExtractor::WallClock`] for processing time).
    ///
    /// ```
    /// use std::time::Duration;
    /// use stream_core::time::TimestampExtractor;
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source_with("events", Consumed::<String, serde_json::Value>::json()
    ///         .with_timestamp_extractor(TimestampExtractor::json_field("at")))
    ///     .map_values(|v| v.to_string())
    ///     .to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("events", "k", r#"{"at": 90000}"#);
    /// assert_eq!(d.records("out")[0].timestamp, 90_000);
    /// d.pipe_str("events", "k", r#"{"at": -5}"#); // negative: dead-lettered
    /// assert_eq!(d.dead_letters().len(), 1);
    /// ```
    pub fn with_timestamp_extractor(mut self, extractor: TimestampExtractor) -> Self {
        self.timestamps = Some(extractor);
        self
    }
}

impl<K: Data + Clone, V: Data + Clone> Consumed<K, V> {
    /// Takes event time from `f(key, value, record timestamp)`: `Err`
    /// (or a negative time) dead-letters the record, stage `timestamp`.
    pub fn with_timestamp_fn(
        self,
        f: impl Fn(&K, &V, i64) -> Result<i64, String> + Send + Sync + 'static,
    ) -> Self {
        let f = Arc::new(f);
        self.with_timestamp_extractor(TimestampExtractor::Custom(Arc::new(move |k, v, ts| {
            let k = k
                .as_ref()
                .as_any()
                .downcast_ref::<K>()
                .ok_or("key of another type")?;
            let v = v
                .as_ref()
                .as_any()
                .downcast_ref::<V>()
                .ok_or("value of another type")?;
            f(k, v, ts)
        })))
    }
}

impl<V: Serialize + DeserializeOwned + 'static> Consumed<String, V> {
    /// String keys (an absent key reads as `""`) and JSON values.
    pub fn json() -> Self {
        Consumed {
            key: String::default_serde(),
            value: Arc::new(JsonSerde::<V>::new()),
            timestamps: None,
        }
    }
}

/// Serdes and partitioner of a sink topic.
pub struct Produced<K, V> {
    pub(crate) key: Arc<dyn Serde<K>>,
    pub(crate) value: Arc<dyn Serde<V>>,
    pub(crate) partitioner: Option<Partitioner>,
}

impl<K, V> Produced<K, V> {
    /// Writes keys and values with the given serdes.
    pub fn with(key: impl Serde<K>, value: impl Serde<V>) -> Self {
        Produced {
            key: Arc::new(key),
            value: Arc::new(value),
            partitioner: None,
        }
    }

    /// Chooses partitions with `f(key bytes, value bytes, partition count)`
    /// instead of murmur2 of the key.
    pub fn with_partitioner(
        mut self,
        f: impl Fn(&[u8], &[u8], i32) -> i32 + Send + Sync + 'static,
    ) -> Self {
        self.partitioner = Some(Arc::new(f));
        self
    }
}

impl<V: Serialize + DeserializeOwned + 'static> Produced<String, V> {
    /// String keys and JSON values.
    pub fn json() -> Self {
        Produced {
            key: String::default_serde(),
            value: Arc::new(JsonSerde::<V>::new()),
            partitioner: None,
        }
    }
}

/// Serdes of a grouping's repartition topic.
pub struct Grouped<K, V> {
    pub(crate) key: Arc<dyn Serde<K>>,
    pub(crate) value: Option<Arc<dyn Serde<V>>>,
    pub(crate) name: Option<String>,
    pub(crate) repartition: bool,
    pub(crate) partitions: Option<i32>,
}

impl<K, V> Grouped<K, V> {
    /// Groups with these serdes for key and value.
    pub fn with(key: impl Serde<K>, value: impl Serde<V>) -> Self {
        Grouped {
            key: Arc::new(key),
            value: Some(Arc::new(value)),
            name: None,
            repartition: true,
            partitions: None,
        }
    }

    /// Groups with this key serde; the value serde is the stream's.
    pub fn with_key(key: impl Serde<K>) -> Self {
        Grouped {
            key: Arc::new(key),
            value: None,
            name: None,
            repartition: true,
            partitions: None,
        }
    }

    /// Aggregates where the records are, without a repartition topic. Only
    /// correct when one task sees every record of a key: a single instance
    /// that groups all input partitions into one task (the runtime's
    /// single-instance mode), or input already partitioned by the new key.
    pub fn without_repartition(mut self) -> Self {
        self.repartition = false;
        self
    }

    /// Gives the grouping's repartition topic `n` partitions (Kafka Streams'
    /// `Repartitioned.withNumberOfPartitions`) instead of its input's count:
    /// the aggregation then runs as `n` tasks.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in")
    ///     .group_by_with(|_, v: &String| v.clone(), Grouped::with_key(StringSerde).with_partitions(6))
    ///     .count(Materialized::as_store("per-value"))
    ///     .to_topic("out");
    /// let t = b.build().unwrap();
    /// assert!(t.describe("app").contains("app-per-value-repartition (repartition, partitions: 6)"));
    /// ```
    pub fn with_partitions(mut self, n: i32) -> Self {
        self.partitions = Some(n.max(1));
        self
    }

    /// Names the grouping (its repartition topic is `<app>-<name>-repartition`).
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }
}

/// Maps store entries to records of an existing topic and back.
pub(crate) struct ExistingChangelog<K, A> {
    pub(crate) topic: String,
    pub(crate) encode: crate::fns::EncodeFn<K, A>,
    pub(crate) decode: crate::fns::DecodeFn<K, A>,
}

/// How an aggregation's store is named, serialized and changelogged.
pub struct Materialized<K, A> {
    pub(crate) name: Option<String>,
    pub(crate) key: Option<Arc<dyn Serde<K>>>,
    pub(crate) value: Option<Arc<dyn Serde<A>>>,
    pub(crate) changelog: Option<ExistingChangelog<K, A>>,
    pub(crate) logged: bool,
}

impl<K, A> Default for Materialized<K, A> {
    fn default() -> Self {
        Materialized {
            name: None,
            key: None,
            value: None,
            changelog: None,
            logged: true,
        }
    }
}

impl<K, A> Materialized<K, A> {
    /// A store named `name`, changelogged to `<app>-<name>-changelog`.
    pub fn as_store(name: &str) -> Self {
        Materialized {
            name: Some(name.to_string()),
            ..Default::default()
        }
    }

    /// Stores keys with this serde (default: the grouping's key serde).
    pub fn with_key_serde(mut self, serde: impl Serde<K>) -> Self {
        self.key = Some(Arc::new(serde));
        self
    }

    /// Stores values with this serde (default: the type's default serde).
    pub fn with_value_serde(mut self, serde: impl Serde<A>) -> Self {
        self.value = Some(Arc::new(serde));
        self
    }

    /// Changelogs the store to an existing `topic` instead of an internal
    /// one. A record's key is the store key's bytes; its value is
    /// `encode(key, aggregate)`. On restore, `decode(key, value bytes)`
    /// turns records back into entries and returns `None` for records that
    /// are not this application's, which are skipped.
    pub fn changelog_to(
        mut self,
        topic: &str,
        encode: impl Fn(&K, &A) -> Vec<u8> + Send + Sync + 'static,
        decode: impl Fn(&K, &[u8]) -> Option<A> + Send + Sync + 'static,
    ) -> Self {
        self.changelog = Some(ExistingChangelog {
            topic: topic.to_string(),
            encode: Arc::new(encode),
            decode: Arc::new(decode),
        });
        self
    }

    /// Keeps no changelog: the store is lost with its local copy.
    pub fn without_changelog(mut self) -> Self {
        self.logged = false;
        self
    }
}
