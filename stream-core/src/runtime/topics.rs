//! Topic planning at start: partition counts of every topic the topology
//! touches, co-partitioning checks, and creation or validation of the
//! internal topics (changelogs, repartition topics, dead-letter topic).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::config::StreamsConfig;
use super::error::RuntimeError;
use crate::graph::{Changelog, TopicRef, Topology};

const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// Client context that remembers the last error librdkafka reported, so a
/// failed call can say why (wrong password, no broker) instead of "timed out".
#[derive(Clone, Default)]
pub struct ErrorCapture {
    last: Arc<Mutex<Option<(Option<RDKafkaErrorCode>, String)>>>,
    peer_closed: Arc<std::sync::atomic::AtomicBool>,
}

impl ErrorCapture {
    /// The last error reported by the client, if any.
    pub fn last(&self) -> Option<(Option<RDKafkaErrorCode>, String)> {
        self.last.lock().ok().and_then(|g| g.clone())
    }

    /// Whether a broker accepted a connection and then closed it at the
    /// first request (a listener of another security protocol does that).
    pub fn peer_closed(&self) -> bool {
        self.peer_closed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl ClientContext for ErrorCapture {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        if message.contains("connection closed by peer")
            || message.contains("incorrect security.protocol")
        {
            self.peer_closed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if message.contains("Authentication failed")
            || message.contains("SASL authentication error")
        {
            if let Ok(mut g) = self.last.lock() {
                *g = Some((Some(RDKafkaErrorCode::Authentication), message.to_string()));
            }
        }
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "librdkafka", "{fac}: {message}")
            }
            L::Warning => tracing::warn!(target: "librdkafka", "{fac}: {message}"),
            L::Notice | L::Info => tracing::info!(target: "librdkafka", "{fac}: {message}"),
            L::Debug => tracing::debug!(target: "librdkafka", "{fac}: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "kafka client error");
        if let Ok(mut g) = self.last.lock() {
            // An authentication or TLS failure explains everything after it
            // ("all brokers down"); keep it.
            let sticky = matches!(
                g.as_ref().map(|(c, _)| *c),
                Some(Some(
                    RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL
                ))
            );
            if !sticky {
                *g = Some((error.rdkafka_error_code(), reason.to_string()));
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ErrorCapture {}

/// Turns a failed metadata call into the clearest error available.
pub fn explain_connect_failure(
    cfg: &StreamsConfig,
    capture: &ErrorCapture,
    err: KafkaError,
) -> RuntimeError {
    let last = capture.last();
    let reason = last.as_ref().map(|(_, r)| r.clone()).unwrap_or_default();
    let code = last.as_ref().and_then(|(c, _)| *c);
    if let Some(e) = unsupported_mechanism(cfg, &reason) {
        return e;
    }
    let protocol = cfg
        .security
        .protocol
        .clone()
        .unwrap_or_else(|| "PLAINTEXT".into())
        .to_ascii_uppercase();
    if capture.peer_closed() && code != Some(RDKafkaErrorCode::Authentication) {
        return wrong_protocol(cfg, &protocol);
    }
    if code == Some(RDKafkaErrorCode::Authentication) || reason.contains("uthentication") {
        return RuntimeError::Authentication {
            user: cfg.security.username.clone().unwrap_or_default(),
            mechanism: cfg
                .security
                .sasl_mechanism
                .clone()
                .unwrap_or_else(|| "SASL".into()),
        };
    }
    if code == Some(RDKafkaErrorCode::SSL) || reason.contains("SSL handshake failed") {
        let detail = if reason.contains("certificate verify failed") {
            "the broker's certificate is not signed by a CA this client trusts (certificate verify failed)".to_string()
        } else if reason.contains("wrong version number")
            || reason.contains("packet length too long")
        {
            "the listener does not speak TLS (wrong version number): use --security-protocol SASL_PLAINTEXT or PLAINTEXT for it".to_string()
        } else {
            reason
        };
        return RuntimeError::Tls {
            bootstrap: cfg.bootstrap_servers.clone(),
            detail,
        };
    }
    RuntimeError::Unreachable {
        bootstrap: cfg.bootstrap_servers.clone(),
        detail: if reason.is_empty() {
            err.to_string()
        } else {
            reason
        },
    }
}

/// The brokers refused the SASL mechanism: name what they offer.
fn unsupported_mechanism(cfg: &StreamsConfig, reason: &str) -> Option<RuntimeError> {
    if !reason.contains("Unsupported SASL mechanism") {
        return None;
    }
    let supported = reason
        .split("supported mechanisms: ")
        .nth(1)
        .map(|s| s.split(" (").next().unwrap_or(s).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "other mechanisms".into());
    let suggest = if supported.contains("SCRAM-SHA-256") {
        "SCRAM-SHA-256".to_string()
    } else {
        supported
            .split(',')
            .next()
            .unwrap_or("SCRAM-SHA-256")
            .trim()
            .to_string()
    };
    Some(RuntimeError::UnsupportedMechanism {
        mechanism: cfg
            .security
            .sasl_mechanism
            .clone()
            .unwrap_or_else(|| "GSSAPI (librdkafka's default)".into()),
        supported,
        suggest,
    })
}

/// A listener that closed the connection at the first request: say which
/// protocol it likely speaks and which flags to add.
fn wrong_protocol(cfg: &StreamsConfig, used: &str) -> RuntimeError {
    let (expected, hint) = match used {
        "PLAINTEXT" => (
            "SASL or TLS",
            "for a SASL listener such as the classroom's add --security-protocol SASL_PLAINTEXT --sasl-mechanism SCRAM-SHA-256 --username team-N (password in KAFKA_PASSWORD); for TLS use SSL or SASL_SSL".to_string(),
        ),
        "SASL_PLAINTEXT" => (
            "TLS or no SASL",
            "try --security-protocol SASL_SSL (with --ssl-ca-location) or PLAINTEXT, whichever this listener is".to_string(),
        ),
        _ => (
            "another protocol",
            "check --security-protocol against the listener at this port".to_string(),
        ),
    };
    RuntimeError::WrongProtocol {
        bootstrap: cfg.bootstrap_servers.clone(),
        used: used.to_string(),
        expected: expected.to_string(),
        hint,
    }
}

/// One metadata round trip with the application's settings: succeeds, or
/// says why not (wrong credentials, no broker reachable).
pub fn check_connection(cfg: &StreamsConfig) -> Result<(), RuntimeError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let capture = ErrorCapture::default();
    let probe: BaseConsumer<ErrorCapture> = cfg
        .client_config()
        .create_with_context(capture.clone())
        .map_err(|e| RuntimeError::Config(format!("invalid client settings: {e}")))?;
    let until = std::time::Instant::now() + METADATA_TIMEOUT;
    loop {
        match probe.fetch_metadata(None, Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(e) => {
                // Errors and logs arrive as events; serve them before deciding.
                let _ = probe.poll(Duration::from_millis(100));
                let auth_failed = matches!(
                    capture.last(),
                    Some((Some(RDKafkaErrorCode::Authentication), _))
                );
                let wrong_protocol = capture.peer_closed()
                    && until - std::time::Instant::now() < METADATA_TIMEOUT / 2;
                if auth_failed || wrong_protocol || std::time::Instant::now() >= until {
                    return Err(explain_connect_failure(cfg, &capture, e));
                }
            }
        }
    }
}

/// Partition counts and task counts decided at start.
#[derive(Debug, Clone, Default)]
pub struct TopicPlan {
    /// Partitions of every topic the topology touches (resolved names).
    pub partitions: HashMap<String, i32>,
    /// Number of tasks per sub-topology.
    pub tasks: Vec<i32>,
    /// Whether the dead-letter topic is usable.
    pub dead_letter_topic_ok: bool,
}

/// Plans and prepares every topic of `topology`.
pub async fn prepare(topology: &Topology, cfg: &StreamsConfig) -> Result<TopicPlan, RuntimeError> {
    let capture = ErrorCapture::default();
    let admin: AdminClient<ErrorCapture> = cfg
        .client_config()
        .create_with_context(capture.clone())
        .map_err(|e| RuntimeError::Config(format!("cannot create the Kafka admin client: {e}")))?;
    let app = &cfg.application_id;
    let mut plan = TopicPlan::default();

    // Reachability and credentials first: one metadata round trip.
    check_connection(cfg)?;

    // External sources: must exist; co-partitioned within a sub-topology.
    let subs = topology.subtopologies();
    let mut task_counts: Vec<Option<i32>> = vec![None; subs.len()];
    for st in subs {
        let mut counts = Vec::new();
        for t in &st.sources {
            if let TopicRef::External(name) = t {
                let n = partitions_of(&admin, name, "Read").await?;
                plan.partitions.insert(name.clone(), n);
                counts.push((name.clone(), n));
            }
        }
        if let Some((first, n)) = counts.first() {
            if let Some((other, m)) = counts.iter().find(|(_, m)| m != n) {
                return Err(RuntimeError::TopicMismatch {
                    topic: other.clone(),
                    reason: format!(
                        "it has {m} partitions but `{first}`, read by the same sub-topology, has {n}; co-partitioned topics need equal counts"
                    ),
                });
            }
            task_counts[st.id] = Some(*n);
        }
    }
    // Repartition topics take their upstream's count, or a configured one.
    for _ in 0..=subs.len() {
        for st in subs {
            for t in &st.sinks {
                if let TopicRef::Internal(suffix) = t {
                    let fixed = topology.repartition_topics().get(suffix).copied().flatten();
                    if let Some(n) = fixed.or(task_counts[st.id]) {
                        plan.partitions.insert(t.resolve(app), n);
                    }
                }
            }
        }
        for st in subs {
            if task_counts[st.id].is_none() {
                task_counts[st.id] = st
                    .sources
                    .iter()
                    .filter_map(|t| plan.partitions.get(&t.resolve(app)).copied())
                    .max();
            }
        }
    }
    plan.tasks = task_counts.iter().map(|c| c.unwrap_or(1)).collect();

    let rf = cfg.replication_factor.unwrap_or(-1);
    // With three or more replicas, an acknowledged write survives one broker loss.
    let isr: Vec<(&str, String)> = if rf >= 3 {
        vec![("min.insync.replicas", "2".into())]
    } else {
        Vec::new()
    };
    let mut to_create: Vec<(String, i32, Vec<(&str, String)>, &str)> = Vec::new();
    for (suffix, _) in topology.repartition_topics() {
        let name = crate::graph::internal_topic_name(app, suffix);
        let n = plan.partitions.get(&name).copied().unwrap_or(1);
        let mut configs = vec![("cleanup.policy", "delete".into())];
        configs.extend(isr.iter().cloned());
        to_create.push((name, n, configs, "repartition"));
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
                    let mut configs = vec![
                        ("cleanup.policy", "compact".into()),
                        ("min.compaction.lag.ms", "3600000".into()),
                    ];
                    configs.extend(isr.iter().cloned());
                    to_create.push((name, n, configs, "changelog"));
                }
                Changelog::Existing { topic, .. } => {
                    let m = partitions_of(&admin, topic, "Write").await?;
                    if m != n && !cfg.single_instance {
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
                Changelog::Disabled => {}
            }
        }
    }
    for (name, n, configs, kind) in &to_create {
        ensure_topic(&admin, name, *n, rf, configs, kind).await?;
    }
    // Sinks: partition counts (custom partitioners need them).
    for st in subs {
        for t in &st.sinks {
            if let TopicRef::External(name) = t {
                let n = partitions_of(&admin, name, "Write").await?;
                plan.partitions.insert(name.clone(), n);
            }
        }
    }
    let dlq = cfg.dead_letter_topic();
    plan.dead_letter_topic_ok = match ensure_topic(&admin, &dlq, 1, rf, &isr, "dead-letter").await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "dead-letter topic unavailable; failed records go to the local dead-letter file in the state directory");
            false
        }
    };
    Ok(plan)
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
            hint: "automatic topic creation is off on most clusters; create it with the partition count you need".into(),
        }),
    }
}

async fn ensure_topic(
    admin: &AdminClient<ErrorCapture>,
    name: &str,
    partitions: i32,
    rf: i32,
    configs: &[(&str, String)],
    kind: &str,
) -> Result<(), RuntimeError> {
    if let Ok(existing) = partitions_of(admin, name, "Write").await {
        if existing != partitions && kind != "dead-letter" {
            return Err(RuntimeError::TopicMismatch {
                topic: name.into(),
                reason: format!("this {kind} topic exists with {existing} partitions, the topology needs {partitions}"),
            });
        }
        if kind == "changelog" {
            check_compacted(admin, name).await;
        }
        return Ok(());
    }
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(rf));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&topic], &opts)
        .await
        .map_err(|e| RuntimeError::kafka(format!("create {kind} topic {name}"), e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((
                _,
                RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed,
            )) => {
                let cfg: Vec<String> = configs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                return Err(RuntimeError::NotAuthorized {
                    operation: "Create".into(),
                    resource: format!("topic `{name}`"),
                    hint: format!(
                        "the {kind} topic `{name}` is needed with {partitions} partitions{}{}; allow Create on it, or have an admin create it",
                        if cfg.is_empty() { "" } else { " and " },
                        cfg.join(", ")
                    ),
                });
            }
            Err((_, code)) => {
                return Err(RuntimeError::Kafka {
                    operation: format!("create {kind} topic {name}"),
                    source: KafkaError::AdminOp(code),
                });
            }
        }
    }
    tracing::info!(topic = name, partitions, kind, "created internal topic");
    Ok(())
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
