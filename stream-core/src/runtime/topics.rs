//! Topic planning at start: partition counts of every topic the topology
//! touches, co-partitioning checks, and creation or validation of the
//! internal topics (changelogs, repartition topics, dead-letter topic).

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::config::StreamsConfig;
use super::connect::METADATA_TIMEOUT;
pub use super::connect::{check_connection, explain_connect_failure, ErrorCapture};
use super::error::RuntimeError;
use crate::graph::{Changelog, TopicRef, Topology};

/// Partition counts and task counts decided at start.
#[derive(Debug, Clone, Default)]
pub struct TopicPlan {
    /// Partitions of every topic the topology touches (resolved names).
    pub partitions: HashMap<String, i32>,
    /// Number of tasks per sub-topology.
    pub tasks: Vec<i32>,
    /// Whether the dead-letter topic is usable.
    pub dead_letter_topic_ok: bool,
    /// The ids of the source topics, as far as the cluster gives them
    /// (see `runtime/topic_ids.rs`).
    pub source_topic_ids: std::collections::BTreeMap<String, String>,
}

/// What a window store's changelog keeps beyond the store's retention
/// (Kafka Streams' `windowstore.changelog.additional.retention.ms`: a day).
pub const WINDOW_CHANGELOG_EXTRA_MS: i64 = 24 * 60 * 60 * 1000;

/// Plans and prepares every topic of `topology`.
pub async fn prepare(topology: &Topology, cfg: &StreamsConfig) -> Result<TopicPlan, RuntimeError> {
    let capture = ErrorCapture::default();
    let admin: AdminClient<ErrorCapture> = cfg
        .admin_config()
        .create_with_context(capture.clone())
        .map_err(|e| RuntimeError::Config(format!("cannot create the Kafka admin client: {e}")))?;
    let app = &cfg.application_id;
    let mut plan = TopicPlan::default();

    // Reachability and credentials first: one metadata round trip.
    check_connection(cfg)?;

    // External sources must exist; the planner gives every other count.
    let subs = topology.subtopologies();
    let mut external = HashMap::new();
    for st in subs {
        for t in &st.sources {
            if let TopicRef::External(name) = t {
                if !external.contains_key(name) {
                    external.insert(
                        name.clone(),
                        existing_partitions(cfg, &admin, name, "Read").await?,
                    );
                }
            }
        }
    }
    let mut sources: Vec<String> = external.keys().cloned().collect();
    sources.sort();
    plan.source_topic_ids = super::topic_ids::describe(admin.inner(), &sources, METADATA_TIMEOUT);
    let planned = topology
        .plan_partitions(app, &external)
        .map_err(|e| RuntimeError::TopicMismatch {
            reason: format!(
                "it has {} partitions but `{}`, read by the same sub-topology, has {}; co-partitioned topics need equal counts",
                e.count, e.first, e.first_count
            ),
            topic: e.topic,
        })?;
    plan.partitions = planned.partitions;
    plan.tasks = planned.tasks;

    let rf = cfg.replication_factor.unwrap_or(-1);
    // With three or more replicas, an acknowledged write survives one broker loss.
    let isr: Vec<(&str, String)> = if rf >= 3 {
        vec![("min.insync.replicas", "2".into())]
    } else {
        Vec::new()
    };
    let mut to_create: Vec<InternalTopic> = Vec::new();
    for suffix in topology.repartition_topics().keys() {
        let name = crate::graph::internal_topic_name(app, suffix);
        let n = plan.partitions.get(&name).copied().unwrap_or(1);
        let mut configs = vec![("cleanup.policy", "delete".into())];
        configs.extend(isr.iter().cloned());
        to_create.push(InternalTopic {
            name,
            partitions: n,
            configs,
            kind: "repartition",
        });
    }
    for st in subs {
        let n = plan.tasks[st.id];
        for s in &st.stores {
            let Some(spec) = topology.store(s) else {
                continue;
            };
            match &spec.changelog {
                Changelog::Internal => {
                    let name = crate::graph::changelog_topic_name(app, s);
                    plan.partitions.insert(name.clone(), n);
                    let mut configs = match spec.retention_ms {
                        // Window stores: expired windows leave the changelog too.
                        Some(ms) => vec![
                            ("cleanup.policy", "compact,delete".into()),
                            ("retention.ms", (ms + WINDOW_CHANGELOG_EXTRA_MS).to_string()),
                        ],
                        None => vec![("cleanup.policy", "compact".into())],
                    };
                    configs.push(("min.compaction.lag.ms", "3600000".into()));
                    configs.extend(isr.iter().cloned());
                    to_create.push(InternalTopic {
                        name,
                        partitions: n,
                        configs,
                        kind: "changelog",
                    });
                }
                Changelog::Existing { topic, .. } => {
                    let m = existing_partitions(cfg, &admin, topic, "Write").await?;
                    if m != n && !cfg.layout().is_single() {
                        return Err(RuntimeError::TopicMismatch {
                            topic: topic.clone(),
                            reason: format!(
                                "store `{s}` runs in {n} tasks, so its changelog needs {n} partitions, but the topic has {m}"
                            ),
                        });
                    }
                    plan.partitions.insert(topic.clone(), m);
                    check_compacted(&admin, topic).await;
                }
                // The table's source topic: checked and counted as a source.
                Changelog::SourceTopic { .. } | Changelog::Disabled => {}
            }
        }
    }
    // Sinks: partition counts (custom partitioners need them). Checked
    // before anything is created, so that a missing sink creates nothing.
    for st in subs {
        for t in &st.sinks {
            if let TopicRef::External(name) = t {
                let n = existing_partitions(cfg, &admin, name, "Write").await?;
                plan.partitions.insert(name.clone(), n);
            }
        }
    }
    to_create.push(InternalTopic {
        name: cfg.dead_letter_topic(),
        partitions: 1,
        configs: isr,
        kind: "dead-letter",
    });
    let mut outcomes = ensure_topics(cfg, &admin, &to_create, rf).await;
    let dead_letter = outcomes.pop();
    for outcome in outcomes {
        outcome?;
    }
    plan.dead_letter_topic_ok = match dead_letter {
        Some(Ok(())) => true,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "dead-letter topic unavailable; failed records go to the local dead-letter file in the state directory");
            false
        }
        None => false,
    };
    Ok(plan)
}

/// An internal topic the topology needs: created if missing, checked if not.
struct InternalTopic {
    name: String,
    partitions: i32,
    /// Topic configs it is created with.
    configs: Vec<(&'static str, String)>,
    /// "repartition", "changelog" or "dead-letter", for messages.
    kind: &'static str,
}

impl InternalTopic {
    /// The topic to create, with `rf` replicas (-1: the broker's default).
    fn new_topic(&self, rf: i32) -> NewTopic<'_> {
        let mut topic = NewTopic::new(&self.name, self.partitions, TopicReplication::Fixed(rf));
        for (k, v) in &self.configs {
            topic = topic.set(k, v);
        }
        topic
    }
}

/// The partition count of an existing topic, with a clear error if it is
/// missing or hidden by ACLs.
async fn partitions_of(
    admin: &AdminClient<ErrorCapture>,
    topic: &str,
    need: &str,
) -> Result<i32, RuntimeError> {
    let md = admin
        .inner()
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|e| RuntimeError::kafka(format!("metadata of topic {topic}"), e))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Err(RuntimeError::MissingTopic {
            topic: topic.into(),
            hint: "no metadata returned".into(),
        });
    };
    match t.error().map(RDKafkaErrorCode::from) {
        None if !t.partitions().is_empty() => Ok(t.partitions().len() as i32),
        Some(RDKafkaErrorCode::TopicAuthorizationFailed) => Err(RuntimeError::NotAuthorized {
            operation: format!("Describe/{need}"),
            resource: format!("topic `{topic}`"),
            hint: format!("allow Describe and {need} on topic {topic} for this user"),
        }),
        _ => Err(RuntimeError::MissingTopic {
            topic: topic.into(),
            hint: "the application creates only its internal topics, and never lets a lookup create one; create it with the partition count you need".into(),
        }),
    }
}

/// Checks the internal topics of `topics` that exist and creates the
/// others in one request (one controller round trip for them all, about
/// 30 ms on a test broker, instead of one per topic); returns each
/// topic's outcome in the order given.
async fn ensure_topics(
    cfg: &StreamsConfig,
    admin: &AdminClient<ErrorCapture>,
    topics: &[InternalTopic],
    rf: i32,
) -> Vec<Result<(), RuntimeError>> {
    let mut outcomes: Vec<Option<Result<(), RuntimeError>>> = Vec::with_capacity(topics.len());
    let mut missing = Vec::new();
    for (i, t) in topics.iter().enumerate() {
        match partitions_of(admin, &t.name, "Write").await {
            Ok(existing) => {
                outcomes.push(Some(
                    check_existing(admin, &t.name, existing, t.partitions, t.kind).await,
                ));
            }
            Err(_) => {
                outcomes.push(None);
                missing.push(i);
            }
        }
    }
    if !missing.is_empty() {
        let new: Vec<NewTopic<'_>> = missing.iter().map(|&i| topics[i].new_topic(rf)).collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        match admin.create_topics(&new, &opts).await {
            Err(e) => {
                for &i in &missing {
                    let t = &topics[i];
                    let what = format!("create {} topic {}", t.kind, t.name);
                    outcomes[i] = Some(Err(RuntimeError::kafka(what, e.clone())));
                }
            }
            Ok(results) => {
                let mut fresh = Vec::new();
                for r in results {
                    let (name, code) = match r {
                        Ok(name) => (name, None),
                        Err((name, code)) => (name, Some(code)),
                    };
                    if let Some(&i) = missing.iter().find(|&&i| topics[i].name == name) {
                        let outcome = created(admin, &topics[i], code).await;
                        if code.is_none() && outcome.is_ok() {
                            fresh.push(i);
                        }
                        outcomes[i] = Some(outcome);
                    }
                }
                // Listed by the broker the admin client asked; on a
                // cluster of several, by every one before any is used.
                let listed: Vec<(&str, i32)> = fresh
                    .iter()
                    .map(|&i| (topics[i].name.as_str(), topics[i].partitions))
                    .collect();
                // The first topic created carries the error: one stops the
                // start (a dead-letter topic alone only goes unused).
                if let Err(e) = super::broker_listing::wait_for_every_broker(cfg, admin, &listed) {
                    if let Some(&i) = fresh.first() {
                        outcomes[i] = Some(Err(e));
                    }
                }
            }
        }
    }
    outcomes
        .into_iter()
        .zip(topics)
        .map(|(outcome, t)| {
            outcome.unwrap_or_else(|| {
                Err(RuntimeError::Kafka {
                    operation: format!("create {} topic {} (no answer for it)", t.kind, t.name),
                    source: KafkaError::AdminOp(RDKafkaErrorCode::Unknown),
                })
            })
        })
        .collect()
}

/// The outcome of creating `t`: `code` is the broker's error for it, if
/// any.
async fn created(
    admin: &AdminClient<ErrorCapture>,
    t: &InternalTopic,
    code: Option<RDKafkaErrorCode>,
) -> Result<(), RuntimeError> {
    let (name, partitions, kind) = (t.name.as_str(), t.partitions, t.kind);
    match code {
        // Created: the controller has it, but a broker may not list it for
        // a moment, and a consumer subscribing to a topic its metadata
        // does not list stops with "unknown topic". Kafka Streams likewise
        // holds a topic it created as not ready until describing it finds
        // it (`InternalTopicManager::makeReady`).
        None => {
            let started = std::time::Instant::now();
            visible_partitions(admin, name).await.map_err(|e| match e {
                RuntimeError::MissingTopic { topic, .. } => RuntimeError::MissingTopic {
                    topic,
                    hint: format!(
                        "the cluster accepted the creation of this {kind} topic but did not list it within {} s; retry, and check the brokers' logs",
                        METADATA_TIMEOUT.as_secs()
                    ),
                },
                other => other,
            })?;
            let waited_ms = started.elapsed().as_millis() as u64;
            tracing::info!(
                topic = name,
                partitions,
                kind,
                waited_ms,
                "created internal topic"
            );
            Ok(())
        }
        // Created since it was looked up: by another instance starting at
        // the same time, or by the broker for a client whose metadata
        // request asked it to (`auto.create.topics.enable`, with the
        // broker's default partition count and configs). It is checked as
        // any existing topic, not taken for ours.
        Some(RDKafkaErrorCode::TopicAlreadyExists) => {
            let existing = visible_partitions(admin, name).await?;
            check_existing(admin, name, existing, partitions, kind).await
        }
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed,
        ) => {
            let cfg: Vec<String> = t.configs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            Err(RuntimeError::NotAuthorized {
                operation: "Create".into(),
                resource: format!("topic `{name}`"),
                hint: format!(
                    "the {kind} topic `{name}` is needed with {partitions} partitions{}{}; allow Create on it, or have an admin create it",
                    if cfg.is_empty() { "" } else { " and " },
                    cfg.join(", ")
                ),
            })
        }
        Some(code) => Err(RuntimeError::Kafka {
            operation: format!("create {kind} topic {name}"),
            source: KafkaError::AdminOp(code),
        }),
    }
}

/// Checks an internal topic that already exists with `existing`
/// partitions: a repartition topic or changelog must have the count the
/// topology needs (a dead-letter topic may have any), and a changelog
/// should be compacted.
async fn check_existing(
    admin: &AdminClient<ErrorCapture>,
    name: &str,
    existing: i32,
    partitions: i32,
    kind: &str,
) -> Result<(), RuntimeError> {
    if existing != partitions && kind != "dead-letter" {
        return Err(RuntimeError::TopicMismatch {
            topic: name.into(),
            reason: format!("this {kind} topic exists with {existing} partitions, the topology needs {partitions}; an application reset deletes its internal topics, and the next start creates them as planned"),
        });
    }
    if kind == "changelog" {
        check_compacted(admin, name).await;
    }
    Ok(())
}

/// The partition count of a topic the cluster says exists, once its
/// metadata shows it (a topic just created has none for a moment); polled
/// for up to [`METADATA_TIMEOUT`].
async fn visible_partitions(
    admin: &AdminClient<ErrorCapture>,
    name: &str,
) -> Result<i32, RuntimeError> {
    partitions_within(admin, name, "Write", METADATA_TIMEOUT, |e| {
        !matches!(e, RuntimeError::NotAuthorized { .. })
    })
    .await
}

/// How long a topic the application reads or writes but does not create
/// is looked up again while the cluster does not list it. Creating a topic
/// and starting the application at once is common (a script, a test), and
/// brokers list a new topic only some time after the controller accepted
/// it: in the tests here, up to 0.2 s later on one broker and 0.5 s on
/// three.
pub(crate) const PROPAGATION_GRACE: Duration = Duration::from_secs(5);

/// [`partitions_of`] for a topic that must exist already (a source, a
/// sink, a changelog named by the user): one the cluster does not list is
/// looked up again for [`PROPAGATION_GRACE`] before it is taken as
/// missing. A topic that was not listed at first is new, so once listed
/// it is waited for on every broker, as a created internal topic is
/// (`broker_listing`).
async fn existing_partitions(
    cfg: &StreamsConfig,
    admin: &AdminClient<ErrorCapture>,
    topic: &str,
    need: &str,
) -> Result<i32, RuntimeError> {
    match partitions_of(admin, topic, need).await {
        Err(RuntimeError::MissingTopic { .. }) => {}
        listed_or_refused => return listed_or_refused,
    }
    let n = partitions_within(admin, topic, need, PROPAGATION_GRACE, |e| {
        matches!(e, RuntimeError::MissingTopic { .. })
    })
    .await?;
    super::broker_listing::wait_for_every_broker(cfg, admin, &[(topic, n)])?;
    Ok(n)
}

/// [`partitions_of`], asked again every 100 ms while the error is one
/// `retry` accepts, until `within` has passed.
async fn partitions_within(
    admin: &AdminClient<ErrorCapture>,
    name: &str,
    need: &str,
    within: Duration,
    retry: fn(&RuntimeError) -> bool,
) -> Result<i32, RuntimeError> {
    let until = std::time::Instant::now() + within;
    loop {
        match partitions_of(admin, name, need).await {
            Ok(n) => return Ok(n),
            Err(e) if !retry(&e) || std::time::Instant::now() >= until => return Err(e),
            // Blocking, as the metadata request itself is: the runtime
            // need not have its timer enabled.
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// What the changelog's `cleanup.policy` check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compaction {
    /// `cleanup.policy` contains `compact`.
    Compacted,
    /// It does not: the topic grows without bound.
    NotCompacted(String),
    /// The configs cannot be read (no DescribeConfigs permission: brokers
    /// then answer with an error or with no entries at all).
    Unknown(String),
}

/// Reads `cleanup.policy` from one `describe_configs` answer.
pub fn compaction_of(answer: Option<Result<Option<String>, String>>) -> Compaction {
    match answer {
        Some(Ok(Some(policy))) if policy.contains("compact") => Compaction::Compacted,
        Some(Ok(Some(policy))) => Compaction::NotCompacted(policy),
        Some(Ok(None)) => Compaction::Unknown("no configs returned".into()),
        Some(Err(e)) => Compaction::Unknown(e),
        None => Compaction::Unknown("no answer".into()),
    }
}

/// Warns when a changelog topic is not compacted; says so, without a
/// warning, when its configs cannot be read.
async fn check_compacted(admin: &AdminClient<ErrorCapture>, topic: &str) {
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let answer = match admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &opts)
        .await
    {
        Err(e) => Some(Err(e.to_string())),
        Ok(results) => results.into_iter().next().map(|r| match r {
            Ok(r) => Ok(r
                .get("cleanup.policy")
                .and_then(|e| e.value.clone())
                .filter(|v| !v.is_empty())),
            Err(code) => Err(code.to_string()),
        }),
    };
    match compaction_of(answer) {
        Compaction::Compacted => {}
        Compaction::NotCompacted(policy) => {
            tracing::warn!(topic, cleanup_policy = %policy, "changelog topic is not compacted; it will grow without bound and restores will read all of it")
        }
        Compaction::Unknown(why) => tracing::info!(
            topic,
            "cannot check whether the changelog topic is compacted (no Describe on topic configs: {why})"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_not_take_unreadable_configs_for_a_missing_compaction() {
        assert_eq!(
            compaction_of(Some(Ok(Some("compact".into())))),
            Compaction::Compacted
        );
        assert_eq!(
            compaction_of(Some(Ok(Some("compact,delete".into())))),
            Compaction::Compacted
        );
        assert_eq!(
            compaction_of(Some(Ok(Some("delete".into())))),
            Compaction::NotCompacted("delete".into())
        );
        assert!(matches!(
            compaction_of(Some(Ok(None))),
            Compaction::Unknown(_)
        ));
        assert!(matches!(
            compaction_of(Some(Err("Broker: Topic authorization failed".into()))),
            Compaction::Unknown(_)
        ));
        assert!(matches!(compaction_of(None), Compaction::Unknown(_)));
    }
}
