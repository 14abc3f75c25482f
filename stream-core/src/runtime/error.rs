//! Errors of the Kafka runtime, each phrased as what to do about it.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use thiserror::Error;

use crate::error::StoreError;
use crate::task::TaskError;

/// Why the runtime could not start or had to stop.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The broker rejected the credentials.
    #[error(
        "authentication failed for user `{user}` ({mechanism}): check the user name and password"
    )]
    Authentication {
        /// User name.
        user: String,
        /// SASL mechanism.
        mechanism: String,
    },
    /// The brokers do not offer the configured SASL mechanism.
    #[error("the brokers do not support SASL mechanism {mechanism}; they offer {supported}: use --sasl-mechanism {suggest}")]
    UnsupportedMechanism {
        /// The mechanism asked for.
        mechanism: String,
        /// What the brokers offer, as they list it.
        supported: String,
        /// The one to try.
        suggest: String,
    },
    /// The listener accepted the connection and closed it at the first
    /// request: it speaks another security protocol.
    #[error("the broker at {bootstrap} closed the connection at the first request: the listener expects {expected}, not {used}; {hint}")]
    WrongProtocol {
        /// Bootstrap servers.
        bootstrap: String,
        /// The protocol this client used.
        used: String,
        /// What the listener likely expects.
        expected: String,
        /// The flags to add.
        hint: String,
    },
    /// No broker could be reached.
    #[error("cannot reach the Kafka cluster at {bootstrap}: {detail}; check --bootstrap-servers and that the brokers run")]
    Unreachable {
        /// Bootstrap servers.
        bootstrap: String,
        /// What the client reported.
        detail: String,
    },
    /// The TLS handshake with the brokers failed.
    #[error("TLS handshake with {bootstrap} failed: {detail}; check --ssl-ca-location (the CA that signed the brokers' certificates) and the security protocol")]
    Tls {
        /// Bootstrap servers.
        bootstrap: String,
        /// What failed.
        detail: String,
    },
    /// A topic the topology reads or writes does not exist.
    #[error("topic `{topic}` does not exist; create it ({hint})")]
    MissingTopic {
        /// Topic.
        topic: String,
        /// How.
        hint: String,
    },
    /// The principal lacks a permission.
    #[error("not authorized to {operation} {resource}: grant the ACL ({hint})")]
    NotAuthorized {
        /// What was attempted (`Read`, `Write`, `Create`, …).
        operation: String,
        /// The resource (`topic X`, `group G`, `transactional id T`).
        resource: String,
        /// What would fix it.
        hint: String,
    },
    /// An existing topic does not fit the topology.
    #[error("topic `{topic}` cannot be used: {reason}")]
    TopicMismatch {
        /// Topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// A Kafka operation failed.
    #[error("{operation}: {source}")]
    Kafka {
        /// The operation.
        operation: String,
        /// The client's error.
        source: KafkaError,
    },
    /// Produced records were not acknowledged; nothing was committed.
    #[error(
        "records could not be delivered: {0}; nothing was committed, a restart reprocesses them"
    )]
    Delivery(String),
    /// Local state failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A task failed under the fail-fast policy.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// A local file the runtime keeps records in (dead letters, refused
    /// records) cannot be written.
    #[error("cannot write the {what} file {path}: {source}")]
    LocalFile {
        /// Which file (`dead-letter`, `production-error`).
        what: &'static str,
        /// Its path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A restore read nothing for too long.
    #[error("restore made no progress for {seconds}s (changelog {topics}); check that the brokers hold its partitions' leaders")]
    RestoreStalled {
        /// How long nothing was read.
        seconds: u64,
        /// The changelog partitions still being read.
        topics: String,
    },
    /// Processing panicked on a stream thread: in a processor's own code
    /// (a closure given to the DSL), or a bug of the framework's (please
    /// report it with the log). The thread stopped without committing, as
    /// a crash would have, and the instance stopped with it.
    #[error("stream thread panicked: {0}")]
    ThreadPanicked(String),
    /// An input partition ends before the position this application's
    /// state has processed it to: the topic was deleted and created again
    /// (or lost records, as an unclean leader election loses them). Its
    /// positions, the marks that keep a replay from counting twice and the
    /// restore's filter all name offsets of the old log, so new records at
    /// those offsets would be dropped as already processed; the instance
    /// stops instead. Kafka Streams resumes such a partition where
    /// `auto.offset.reset` says: it keeps no input positions of its own
    /// beside the group's, which the broker deletes with the topic.
    #[error("input {input}: {found}, but this application's state has processed it up to offset {position}: the topic was deleted and created again, or lost records. Its state cannot tell the new records from the old; reset the application (the programs' --reset) to process the topic anew")]
    InputRewound {
        /// `topic[partition]`.
        input: String,
        /// The position the state holds.
        position: i64,
        /// What showed the log replaced: its end, or a fetch reset while
        /// running.
        found: String,
    },
    /// A source topic was deleted and created again since the local state
    /// was built from it (see `runtime/topic_ids.rs`).
    #[error("topic `{topic}` was deleted and created again since this application's state was built from it (topic id {recorded}, now {current}): the state names offsets of the old topic, and the new topic's records at those offsets would be skipped as processed. Reset the application (the programs' --reset) to process the topic anew")]
    SourceTopicReplaced {
        /// The topic.
        topic: String,
        /// The id the state was built from.
        recorded: String,
        /// The topic's id now.
        current: String,
    },
    /// The HTTP server cannot listen on its address.
    #[error("cannot serve HTTP on {addr}: {source}")]
    HttpBind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Exactly-once needs the consumer's group metadata, which it lacks.
    #[error("exactly-once needs the consumer's group metadata, which the consumer does not have (is it a member of the group?)")]
    NoGroupMetadata,
    /// Another member joined the group in single-instance mode.
    #[error("another instance joined consumer group `{group}` while running in single-instance mode; counts would be partial, so this instance stops. Run one instance, or allow the repartition topic to be created")]
    SecondMember {
        /// The group.
        group: String,
    },
}

impl RuntimeError {
    /// Wraps a client error, recognising authorization codes.
    pub fn kafka(operation: impl Into<String>, source: KafkaError) -> Self {
        let operation = operation.into();
        match source.rdkafka_error_code() {
            Some(RDKafkaErrorCode::TopicAuthorizationFailed) => RuntimeError::NotAuthorized {
                operation: operation.clone(),
                resource: "a topic".into(),
                hint: format!("{operation} failed with TOPIC_AUTHORIZATION_FAILED"),
            },
            Some(RDKafkaErrorCode::GroupAuthorizationFailed) => RuntimeError::NotAuthorized {
                operation: "Read".into(),
                resource: "the consumer group".into(),
                hint: format!("{operation} failed with GROUP_AUTHORIZATION_FAILED: grant Read on the group"),
            },
            Some(RDKafkaErrorCode::TransactionalIdAuthorizationFailed) => RuntimeError::NotAuthorized {
                operation: "Write".into(),
                resource: "the transactional id".into(),
                hint: "exactly-once needs Write and Describe on the transactional id; use at-least-once otherwise".into(),
            },
            _ => RuntimeError::Kafka { operation, source },
        }
    }
}
