//! Typed Kafka coordinates used as map keys in progress and checkpoints:
//! [`TopicPartition`] and the repartition dedup key [`UpstreamKey`].
//!
//! Both are written as strings in the sled checkpoint (`topic/partition`,
//! `repartition-topic/upstream-topic/upstream-partition`), the format
//! checkpoints have always had; Kafka topic names cannot contain `/`, so
//! the strings parse back unambiguously.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A partition of a topic.
///
/// ```
/// use stream_core::coordinates::TopicPartition;
/// let tp = TopicPartition::new("new_users", 2);
/// assert_eq!(tp.to_string(), "new_users/2");
/// assert_eq!("new_users/2".parse::<TopicPartition>(), Ok(tp.clone()));
/// assert!(tp.is("new_users", 2));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}

impl TopicPartition {
    /// Partition `partition` of `topic`.
    pub fn new(topic: &str, partition: i32) -> Self {
        TopicPartition {
            topic: topic.to_string(),
            partition,
        }
    }

    /// Whether this is partition `partition` of `topic` (no allocation).
    pub fn is(&self, topic: &str, partition: i32) -> bool {
        self.partition == partition && self.topic == topic
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// A string that is not `topic/partition`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCoordinates(pub String);

impl fmt::Display for BadCoordinates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a topic/partition: {:?}", self.0)
    }
}

impl std::error::Error for BadCoordinates {}

impl FromStr for TopicPartition {
    type Err = BadCoordinates;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (topic, partition) = s
            .rsplit_once('/')
            .ok_or_else(|| BadCoordinates(s.to_string()))?;
        let partition = partition
            .parse()
            .map_err(|_| BadCoordinates(s.to_string()))?;
        Ok(TopicPartition {
            topic: topic.to_string(),
            partition,
        })
    }
}

/// Where a repartition record came from: upstream partition `upstream`
/// as seen through repartition topic `via` (the dedup marks' key).
///
/// ```
/// use stream_core::coordinates::{TopicPartition, UpstreamKey};
/// let k = UpstreamKey { via: "app-rep".into(), upstream: TopicPartition::new("in", 1) };
/// assert_eq!(k.to_string(), "app-rep/in/1");
/// assert_eq!("app-rep/in/1".parse::<UpstreamKey>(), Ok(k));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UpstreamKey {
    /// The repartition topic.
    pub via: String,
    /// The upstream partition that wrote to it.
    pub upstream: TopicPartition,
}

impl UpstreamKey {
    /// Whether this is `up_topic`/`up_partition` through `via` (no allocation).
    pub fn is(&self, via: &str, up_topic: &str, up_partition: i32) -> bool {
        self.upstream.is(up_topic, up_partition) && self.via == via
    }
}

impl fmt::Display for UpstreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.via, self.upstream)
    }
}

impl FromStr for UpstreamKey {
    type Err = BadCoordinates;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (via, rest) = s
            .split_once('/')
            .ok_or_else(|| BadCoordinates(s.to_string()))?;
        Ok(UpstreamKey {
            via: via.to_string(),
            upstream: rest.parse().map_err(|_| BadCoordinates(s.to_string()))?,
        })
    }
}

macro_rules! string_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

string_serde!(TopicPartition);
string_serde!(UpstreamKey);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn should_keep_the_checkpoint_format_as_string_keys() {
        let m: BTreeMap<TopicPartition, i64> = [(TopicPartition::new("a-b.c", 10), 7)].into();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, r#"{"a-b.c/10":7}"#);
        let back: BTreeMap<TopicPartition, i64> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert!(serde_json::from_str::<BTreeMap<TopicPartition, i64>>(r#"{"x":1}"#).is_err());
    }
}
