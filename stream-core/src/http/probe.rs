//! A side Kafka client of the HTTP server: consumer lag and the group's
//! members, read without touching the stream thread (which may be busy
//! restoring inside a rebalance).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::runtime::topics::ErrorCapture;
use crate::runtime::{KafkaClient, StreamsConfig};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Lag of one input partition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// High watermark.
    pub end: i64,
    /// Committed offset of the group (`None`: nothing committed yet).
    pub committed: Option<i64>,
    /// Records between the committed offset and the end.
    pub lag: i64,
}

/// A member of the application's consumer group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    /// The member's `client.id`.
    pub client_id: String,
    /// The host the broker saw.
    pub host: String,
    /// `application.server` advertised in the client id, if any.
    pub server: Option<String>,
    /// Partitions assigned to it.
    pub partitions: Vec<(String, i32)>,
}

/// The side client.
pub struct Probe {
    consumer: BaseConsumer<ErrorCapture>,
    group: String,
}

impl Probe {
    /// A consumer that never subscribes; its group id is the application's,
    /// so committed offsets are the application's.
    pub fn new(cfg: &StreamsConfig) -> Result<Probe, String> {
        let mut c = cfg.client_config();
        cfg.apply_aimed_extra(&mut c, KafkaClient::GroupReader);
        c.set("group.id", &cfg.application_id)
            .set("enable.auto.commit", "false")
            .set(
                "client.id",
                format!(
                    "{}-http",
                    cfg.client_id.as_deref().unwrap_or(&cfg.application_id)
                ),
            );
        let consumer = c
            .create_with_context(ErrorCapture::default())
            .map_err(|e| format!("cannot create the HTTP server's Kafka client: {e}"))?;
        Ok(Probe {
            consumer,
            group: cfg.application_id.clone(),
        })
    }

    /// Lag of each partition: high watermark − committed offset (the
    /// definition `kafka-consumer-groups.sh` uses).
    pub fn lags(&self, partitions: &[(String, i32)]) -> Result<Vec<Lag>, String> {
        let mut tpl = TopicPartitionList::new();
        for (t, p) in partitions {
            tpl.add_partition(t, *p);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, TIMEOUT)
            .map_err(|e| format!("committed offsets: {e}"))?;
        // Every partition's bounds in two requests; one the answer lacks
        // is read alone.
        let bounds = crate::runtime::log_offsets::bounds(&self.consumer, partitions);
        let mut out = Vec::with_capacity(partitions.len());
        for (t, p) in partitions {
            let (low, end) = match bounds.get(&(t.clone(), *p)) {
                Some(&b) => b,
                None => self
                    .consumer
                    .fetch_watermarks(t, *p, TIMEOUT)
                    .map_err(|e| format!("watermarks of {t}-{p}: {e}"))?,
            };
            let committed = committed
                .find_partition(t, *p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            let from = committed.unwrap_or(low);
            out.push(Lag {
                topic: t.clone(),
                partition: *p,
                end,
                committed,
                lag: (end - from).max(0),
            });
        }
        Ok(out)
    }

    /// The group's members and their assignments.
    pub fn members(&self) -> Result<Vec<Member>, String> {
        let list = self
            .consumer
            .fetch_group_list(Some(&self.group), TIMEOUT)
            .map_err(|e| format!("describe group {}: {e}", self.group))?;
        let mut out = Vec::new();
        for g in list.groups() {
            for m in g.members() {
                let client_id = m.client_id().to_string();
                out.push(Member {
                    server: advertised(&client_id),
                    client_id,
                    host: m.client_host().to_string(),
                    partitions: m.assignment().map(parse_assignment).unwrap_or_default(),
                });
            }
        }
        Ok(out)
    }
}

/// The `application.server` a member advertises: its client id ends in
/// `@host:port` (see [`crate::runtime::StreamsConfig::advertised_server`]).
pub fn advertised(client_id: &str) -> Option<String> {
    client_id
        .rsplit_once('@')
        .map(|(_, s)| s.to_string())
        .filter(|s| !s.is_empty())
}

/// Parses a consumer-protocol assignment: version (i16), then an array of
/// (topic string, array of i32 partitions), then user data (ignored).
pub fn parse_assignment(bytes: &[u8]) -> Vec<(String, i32)> {
    let mut r = Reader { b: bytes, at: 0 };
    let mut out = Vec::new();
    let parsed = (|| {
        r.i16()?;
        let topics = r.i32()?;
        for _ in 0..topics.max(0) {
            let len = r.i16()?;
            let name = String::from_utf8_lossy(r.take(len.max(0) as usize)?).into_owned();
            let n = r.i32()?;
            for _ in 0..n.max(0) {
                out.push((name.clone(), r.i32()?));
            }
        }
        Some(())
    })();
    if parsed.is_none() {
        tracing::debug!("unreadable group assignment ({} bytes)", bytes.len());
    }
    out
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_parse_a_consumer_protocol_assignment() {
        let mut b = vec![0, 1, 0, 0, 0, 2];
        for (t, ps) in [("in", vec![0i32, 3]), ("x-repartition", vec![1])] {
            b.extend((t.len() as i16).to_be_bytes());
            b.extend(t.as_bytes());
            b.extend((ps.len() as i32).to_be_bytes());
            for p in ps {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1i32).to_be_bytes());
        assert_eq!(
            parse_assignment(&b),
            vec![
                ("in".to_string(), 0),
                ("in".to_string(), 3),
                ("x-repartition".to_string(), 1)
            ]
        );
        // truncated: what was read is kept, no panic
        assert_eq!(parse_assignment(&b[..12]), vec![]);
    }

    #[test]
    fn should_read_the_advertised_server_from_a_client_id() {
        assert_eq!(
            advertised("app@127.0.0.1:8080").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(advertised("app"), None);
    }
}
