//! Application reset, as Kafka Streams' `kafka-streams-application-reset`:
//! input offsets moved (earliest, latest, a date-time or a duration back),
//! the internal topics this application created deleted, the local state
//! on this machine wiped — so the same application id processes its input
//! again from scratch.
//!
//! What is deleted comes from the topology, not from name patterns: the
//! repartition topics and the changelogs of stores logged to
//! `<application.id>-<store>-changelog`. A store logged to a topic the
//! application does not own (the tutorial's shared `watchlist`) cannot be
//! reset that way — its state would come back from that topic at the next
//! start — so the reset refuses and names it. The dead-letter topic is
//! kept: it holds records a person still has to look at.
//!
//! The reset refuses, in one line, while the group has members; it needs
//! Describe and Read on the group, Describe on the input topics and Delete
//! on the internal topics. Offsets are committed with this application's
//! commit tag ([`super::ownership`]), so the next start trusts them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::config::{KafkaClient, StreamsConfig};
use super::connect::{ErrorCapture, METADATA_TIMEOUT};
use super::error::RuntimeError;
use crate::graph::{Changelog, TopicRef, Topology};

/// Where the input offsets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// The beginning of every input partition (the default).
    Earliest,
    /// The end: everything already in the input is skipped.
    Latest,
    /// The first record at or after this time (ms since the epoch).
    DateTime(i64),
    /// The first record at or after now minus this duration.
    Back(Duration),
}

impl fmt::Display for ResetTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResetTo::Earliest => write!(f, "earliest"),
            ResetTo::Latest => write!(f, "latest"),
            ResetTo::DateTime(ms) => write!(f, "the first record at or after {ms} ms"),
            ResetTo::Back(d) => write!(f, "{} s back", d.as_secs()),
        }
    }
}

/// One thing the reset does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetAction {
    /// Commit `to` for an input partition (committed now: `from`).
    Seek {
        /// Input topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The group's committed offset now, if any.
        from: Option<i64>,
        /// The offset committed by the reset.
        to: i64,
    },
    /// Delete an internal topic.
    DeleteTopic(String),
    /// Remove this machine's state directory of the application.
    WipeState(PathBuf),
}

impl fmt::Display for ResetAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResetAction::Seek {
                topic,
                partition,
                from,
                to,
            } => write!(
                f,
                "seek   {topic}[{partition}]: committed {} -> {to}",
                from.map_or_else(|| "none".to_string(), |o| o.to_string())
            ),
            ResetAction::DeleteTopic(t) => write!(f, "delete topic {t}"),
            ResetAction::WipeState(p) => write!(f, "wipe   local state {}", p.display()),
        }
    }
}

/// Every action of one reset, in the order they run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResetPlan {
    /// The consumer group (the application id).
    pub group: String,
    /// The actions.
    pub actions: Vec<ResetAction>,
}

impl fmt::Display for ResetPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "reset of application `{}`:", self.group)?;
        for a in &self.actions {
            writeln!(f, "  {a}")?;
        }
        Ok(())
    }
}

fn admin(cfg: &StreamsConfig) -> Result<AdminClient<ErrorCapture>, RuntimeError> {
    cfg.admin_config()
        .create_with_context(ErrorCapture::default())
        .map_err(|e| RuntimeError::Config(format!("cannot create the Kafka admin client: {e}")))
}

fn group_client(cfg: &StreamsConfig) -> Result<BaseConsumer<ErrorCapture>, RuntimeError> {
    let mut cc = cfg.client_config();
    cfg.apply_aimed_extra(&mut cc, KafkaClient::GroupReader);
    cc.set("group.id", &cfg.application_id)
        .set("enable.auto.commit", "false");
    cc.create_with_context(ErrorCapture::default())
        .map_err(|e| RuntimeError::kafka("create the reset's consumer", e))
}

/// Refuses while the group has members (an instance still runs).
fn refuse_if_active(
    consumer: &BaseConsumer<ErrorCapture>,
    group: &str,
) -> Result<(), RuntimeError> {
    let groups = consumer
        .fetch_group_list(Some(group), METADATA_TIMEOUT)
        .map_err(|e| RuntimeError::kafka("describe the consumer group", e))?;
    for g in groups.groups() {
        if g.name() == group && !g.members().is_empty() {
            let ids: Vec<&str> = g.members().iter().map(|m| m.client_id()).collect();
            return Err(RuntimeError::Config(format!(
                "consumer group `{group}` has {} active member(s) ({}): stop every instance first (a killed one leaves the group after session.timeout.ms)",
                ids.len(),
                ids.join(", ")
            )));
        }
    }
    Ok(())
}

/// Stores whose changelog the application does not own: a reset cannot
/// empty them.
/// (A table's own source topic is input: resetting its offsets re-reads
/// it, which is what a reset means for it.)
fn shared_changelogs(topology: &Topology) -> Vec<(String, String)> {
    topology
        .stores()
        .iter()
        .filter_map(|s| match &s.changelog {
            Changelog::Existing { topic, .. } => Some((s.name.clone(), topic.clone())),
            _ => None,
        })
        .collect()
}

/// The internal topics this application created, that exist now.
fn internal_topics(
    topology: &Topology,
    app: &str,
    consumer: &BaseConsumer<ErrorCapture>,
) -> Result<Vec<String>, RuntimeError> {
    let md = consumer
        .fetch_metadata(None, METADATA_TIMEOUT)
        .map_err(|e| RuntimeError::kafka("list topics", e))?;
    let existing: std::collections::BTreeSet<&str> = md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| t.name())
        .collect();
    let mut mine: Vec<String> = topology
        .repartition_topics()
        .keys()
        .map(|s| crate::graph::internal_topic_name(app, s))
        .collect();
    mine.extend(
        topology
            .stores()
            .iter()
            .filter(|s| matches!(s.changelog, Changelog::Internal))
            .filter_map(|s| s.changelog_topic(app)),
    );
    mine.sort();
    mine.dedup();
    Ok(mine
        .into_iter()
        .filter(|t| existing.contains(t.as_str()))
        .collect())
}

/// The offset of `to` in each partition of `topics`.
fn targets(
    consumer: &BaseConsumer<ErrorCapture>,
    topics: &[String],
    to: ResetTo,
) -> Result<BTreeMap<(String, i32), i64>, RuntimeError> {
    let mut out = BTreeMap::new();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    for topic in topics {
        let md = consumer
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(|e| RuntimeError::kafka(format!("describe topic `{topic}`"), e))?;
        let parts: Vec<i32> = md
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if parts.is_empty() {
            return Err(RuntimeError::MissingTopic {
                topic: topic.clone(),
                hint: "the reset moves the offsets of every input topic".into(),
            });
        }
        let at = match to {
            ResetTo::DateTime(ms) => Some(ms),
            ResetTo::Back(d) => Some(now_ms - d.as_millis() as i64),
            ResetTo::Earliest | ResetTo::Latest => None,
        };
        let by_time = match at {
            Some(ms) => {
                let mut tpl = TopicPartitionList::new();
                for &p in &parts {
                    tpl.add_partition_offset(topic, p, Offset::Offset(ms))
                        .map_err(|e| RuntimeError::kafka("build the time lookup", e))?;
                }
                Some(
                    consumer
                        .offsets_for_times(tpl, METADATA_TIMEOUT)
                        .map_err(|e| RuntimeError::kafka("look up offsets by time", e))?,
                )
            }
            None => None,
        };
        for p in parts {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, METADATA_TIMEOUT)
                .map_err(|e| RuntimeError::kafka(format!("read the offsets of `{topic}`"), e))?;
            let target = match (to, &by_time) {
                (ResetTo::Earliest, _) => low,
                (ResetTo::Latest, _) => high,
                (_, Some(tpl)) => match tpl.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    // No record at or after the time: the end.
                    _ => high,
                },
                (_, None) => low,
            };
            out.insert((topic.clone(), p), target);
        }
    }
    Ok(out)
}

/// Works out what a reset of `topology`'s application would do; changes
/// nothing. Refuses while the group has members, or when a store logs to a
/// topic the application does not own.
pub fn plan_reset(
    topology: &Topology,
    cfg: &StreamsConfig,
    to: ResetTo,
) -> Result<ResetPlan, RuntimeError> {
    let app = &cfg.application_id;
    let shared = shared_changelogs(topology);
    if let Some((store, topic)) = shared.first() {
        return Err(RuntimeError::Config(format!(
            "store `{store}` is logged to `{topic}`, which this application does not own and a reset does not delete: its state would come back from it at the next start. Reset a version whose stores log to their own changelogs (the watchlist: --private-changelog)"
        )));
    }
    let consumer = group_client(cfg)?;
    refuse_if_active(&consumer, app)?;
    let inputs: Vec<String> = {
        let mut v: Vec<String> = topology
            .subtopologies()
            .iter()
            .flat_map(|st| st.sources.iter())
            .filter_map(|t| match t {
                TopicRef::External(name) => Some(name.clone()),
                TopicRef::Internal(_) => None,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let targets = targets(&consumer, &inputs, to)?;
    let mut tpl = TopicPartitionList::new();
    for (topic, p) in targets.keys() {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer
        .committed_offsets(tpl, METADATA_TIMEOUT)
        .map_err(|e| RuntimeError::kafka("read the group's committed offsets", e))?;
    let mut actions = Vec::new();
    for ((topic, p), to) in targets {
        let from = match committed.find_partition(&topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        };
        actions.push(ResetAction::Seek {
            topic,
            partition: p,
            from,
            to,
        });
    }
    for t in internal_topics(topology, app, &consumer)? {
        actions.push(ResetAction::DeleteTopic(t));
    }
    let dir = cfg.state_dir.join(app);
    if dir.exists() {
        actions.push(ResetAction::WipeState(dir));
    }
    Ok(ResetPlan {
        group: app.clone(),
        actions,
    })
}

/// Carries out `plan` (from [`plan_reset`]), checking again that the group
/// has no members. Offsets are committed with the application's tag.
pub async fn execute_reset(
    topology: &Topology,
    cfg: &StreamsConfig,
    plan: &ResetPlan,
) -> Result<(), RuntimeError> {
    let consumer = group_client(cfg)?;
    refuse_if_active(&consumer, &plan.group)?;
    let mut tpl = TopicPartitionList::new();
    let mut deletes = Vec::new();
    for a in &plan.actions {
        match a {
            ResetAction::Seek {
                topic,
                partition,
                to,
                ..
            } => {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*to))
                    .map_err(|e| RuntimeError::kafka("build the offsets to commit", e))?;
            }
            ResetAction::DeleteTopic(t) => deletes.push(t.as_str()),
            ResetAction::WipeState(_) => {}
        }
    }
    if tpl.count() > 0 {
        super::ownership::stamp(
            &mut tpl,
            &super::ownership::commit_tag(topology, &cfg.application_id),
        );
        consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| RuntimeError::kafka("commit the reset offsets", e))?;
    }
    if !deletes.is_empty() {
        let admin = admin(cfg)?;
        let results = admin
            .delete_topics(
                &deletes,
                &AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT)),
            )
            .await
            .map_err(|e| RuntimeError::kafka("delete the internal topics", e))?;
        for r in results {
            if let Err((topic, code)) = r {
                return Err(RuntimeError::Config(format!(
                    "cannot delete internal topic `{topic}`: {code} (grant Delete on it, or delete it by hand)"
                )));
            }
        }
        wait_deleted(&consumer, &deletes)?;
    }
    for a in &plan.actions {
        if let ResetAction::WipeState(dir) = a {
            std::fs::remove_dir_all(dir).map_err(|e| {
                RuntimeError::Config(format!("cannot wipe local state {}: {e}", dir.display()))
            })?;
        }
    }
    Ok(())
}

/// Topic deletion completes asynchronously: waits, with a deadline, until
/// the metadata no longer lists them (a start right after the reset would
/// otherwise find the old changelog).
fn wait_deleted(
    consumer: &BaseConsumer<ErrorCapture>,
    topics: &[&str],
) -> Result<(), RuntimeError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let md = consumer
            .fetch_metadata(None, METADATA_TIMEOUT)
            .map_err(|e| RuntimeError::kafka("list topics", e))?;
        let left: Vec<&str> = md
            .topics()
            .iter()
            .map(|t| t.name())
            .filter(|n| topics.contains(n))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(RuntimeError::Config(format!(
                "topics still listed 60 s after their deletion: {}",
                left.join(", ")
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
