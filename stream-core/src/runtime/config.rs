//! Application configuration, named after Kafka Streams' settings.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;

use crate::task::ErrorPolicy;

/// Kafka Streams' transaction timeout under exactly-once (its producer
/// default for `transaction.timeout.ms`); see
/// [`StreamsConfig::transaction_timeout`].
pub const DEFAULT_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// The group consumer's `session.timeout.ms` unless set in
/// [`StreamsConfig::extra`] (Kafka Streams: 45 s). A member that misses its
/// heartbeats this long loses its partitions to the others.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// `processing.guarantee`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProcessingGuarantee {
    /// Every record is processed at least once; outputs may repeat after a
    /// crash, state never double counts.
    #[default]
    AtLeastOnce,
    /// Outputs, changelog records and offsets commit in one Kafka transaction.
    ExactlyOnce,
}

impl std::str::FromStr for ProcessingGuarantee {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "at_least_once" => Ok(Self::AtLeastOnce),
            "exactly_once" | "exactly_once_v2" => Ok(Self::ExactlyOnce),
            other => Err(format!(
                "unknown processing guarantee `{other}` (at_least_once, exactly_once)"
            )),
        }
    }
}

/// A password: printed as `***` by `Debug` and `Display`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself; only for handing to the Kafka client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Connection security (`security.protocol`, SASL and TLS settings).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// `security.protocol`: PLAINTEXT, SASL_PLAINTEXT, SASL_SSL or SSL.
    pub protocol: Option<String>,
    /// `sasl.mechanism`: e.g. SCRAM-SHA-256.
    pub sasl_mechanism: Option<String>,
    /// `sasl.username`.
    pub username: Option<String>,
    /// `sasl.password`.
    pub password: Option<Secret>,
    /// `ssl.ca.location`.
    pub ssl_ca_location: Option<String>,
    /// `ssl.certificate.location`.
    pub ssl_certificate_location: Option<String>,
    /// `ssl.key.location`.
    pub ssl_key_location: Option<String>,
}

/// Default of [`StreamsConfig::max_buffered_changes`]. An entry takes
/// some 120 bytes besides its key and value, so this bounds the write
/// buffers at roughly 12 MiB beside the commit being written. Without a
/// bound, a state writer slower than processing (millions of distinct
/// keys, each a new sled entry) let the buffers grow with every record:
/// counting 10 million keys, RSS rose to 550 MiB while processing and fell
/// to 245 MiB once the writer had caught up.
pub const DEFAULT_MAX_BUFFERED_CHANGES: usize = 100_000;

/// The configuration of one application instance.
#[derive(Debug, Clone)]
pub struct StreamsConfig {
    /// `application.id`: consumer group id and prefix of internal topics.
    pub application_id: String,
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// `client.id` (default: the application id).
    pub client_id: Option<String>,
    /// `state.dir`: where sled keeps local state.
    pub state_dir: PathBuf,
    /// `commit.interval.ms`.
    pub commit_interval: Duration,
    /// `processing.guarantee`.
    pub processing_guarantee: ProcessingGuarantee,
    /// Security settings.
    pub security: Security,
    /// What failing records do.
    pub on_error: ErrorPolicy,
    /// The bound of sled's page cache for this instance's state (all its
    /// tasks share one sled database); default 16 MiB
    /// ([`DEFAULT_CACHE_BYTES`](crate::store::DEFAULT_CACHE_BYTES)). sled
    /// counts pages by their size on disk, and cached nodes take about
    /// three times that in memory; sled's bookkeeping for every page of a
    /// tree comes on top, growing with the stores' size (some 15 bytes per
    /// key from 1 to 10 million keys). The stores' key filters, which
    /// answer reads of keys a store never held without sled, take up to a
    /// quarter of this again (4 MiB by default, about 2.8 million keys;
    /// stores beyond it read sled for every key).
    pub state_cache_bytes: u64,
    /// At-least-once: store changes (entries in the write buffers of the
    /// thread's tasks) that processing may make while a commit's state is
    /// being written; beyond, the stream thread waits for the write. Default
    /// [`DEFAULT_MAX_BUFFERED_CHANGES`]. Exactly-once needs no bound: its
    /// next commit waits for the previous write before handing over.
    pub max_buffered_changes: usize,
    /// What late records (dropped by a window aggregation because their
    /// windows had closed) do: dead-lettered (default) or only logged.
    /// Either way they are counted (`late` in the task metrics).
    pub on_late: crate::task::LatePolicy,
    /// Opt-in: after this much wall-clock time without input, a task's
    /// stream time follows the wall clock from its last record on, so
    /// windows close and emit-final results appear while a partition is
    /// quiet. `None` (the default, as Kafka Streams): stream time moves
    /// only with records.
    pub idle_advance: Option<Duration>,
    /// `max.task.idle.ms`: how long a task that reads more than one topic
    /// (a join, a merge) waits for a partition that has nothing buffered
    /// and is known to be caught up, before it processes the others'
    /// records without it. Such a task always processes the buffered
    /// record with the smallest timestamp, and waits for a partition that
    /// has records on the broker not fetched yet
    /// (see `docs/tables.md`, "Order between the inputs", and `runtime/time_order.rs`). Default
    /// `Some(Duration::ZERO)`, as Kafka Streams' 0; `None` turns ordering
    /// off (Kafka Streams' -1): records are processed in the order the
    /// consumer hands them out.
    pub max_task_idle: Option<Duration>,
    /// Dead-letter topic (default `<application.id>-dlq`).
    pub dead_letter_topic: Option<String>,
    /// Replication factor of internal topics (`None`: the broker's default).
    pub replication_factor: Option<i32>,
    /// Single-instance mode ([`TaskLayout::SingleInstance`](crate::task::TaskLayout)):
    /// one task per sub-topology reads all partitions, and the instance
    /// stops if another member joins its group.
    pub single_instance: bool,
    /// Reads every partition of the source topics without joining the
    /// consumer group: no group membership, no offset commits; input
    /// positions live in the local state only (every task restarts from
    /// its checkpoint, or from the beginning). Implies single-instance
    /// task layout, but any number of such instances may run: each
    /// computes the same state from all of the input (the classroom's
    /// watchlist, where no topic can re-key records between instances).
    /// At-least-once only: exactly-once commits input offsets through the
    /// group.
    pub outside_group: bool,
    /// When a changelog cannot be read (no Read permission) and there is no
    /// local state: start from empty state (`true`) or refuse (`false`,
    /// the default), because empty state would publish wrong aggregates.
    pub allow_empty_state: bool,
    /// `num.stream.threads`: stream threads of this instance, each with its
    /// own consumer, producer and tasks (default 1; single-instance mode
    /// always uses 1).
    pub num_stream_threads: usize,
    /// `group.instance.id` for static membership. In single-instance mode
    /// it defaults to `<application.id>-<id of the state directory>`, so a
    /// restart of the same instance is never taken for a second one.
    pub group_instance_id: Option<String>,
    /// `partition.assignment.strategy` of the group consumer (default
    /// `range`: every Kafka client supports it, so programs that share a
    /// group agree; librdkafka refuses to mix eager and cooperative
    /// strategies, and a group whose members have no strategy in common
    /// rejects the newcomer with `InconsistentGroupProtocol`).
    pub assignment_strategy: String,
    /// Extra librdkafka properties. A property without a prefix goes to
    /// every client; Kafka Streams' prefixes aim one at some clients
    /// ([`KafkaClient`]): `producer.linger.ms`, `consumer.…` (every
    /// consumer), `main.consumer.…`, `restore.consumer.…`,
    /// `global.consumer.…`, `admin.…`. They win over the framework's own
    /// settings, except that the restore consumer keeps its fetch tuning
    /// against a property without a prefix (`RESTORE_FETCH_SETTINGS`; aim
    /// one at it to change those).
    pub extra: BTreeMap<String, String>,
    /// Address of the optional HTTP server (metrics, health, topology,
    /// store queries, status page); `None`: no server.
    pub http: Option<SocketAddr>,
    /// Bearer token the HTTP server requires on every request (`None`: no
    /// token). The server refuses to start on a non-loopback address
    /// without one, unless [`Self::http_insecure`].
    pub http_token: Option<Secret>,
    /// Serve a non-loopback address without a token, on purpose.
    pub http_insecure: bool,
    /// Record lineage: input records kept per key of every logged store,
    /// served at `/stores/<store>/<key>/lineage` (0, the default: off). See
    /// [`crate::task::lineage`].
    pub lineage_depth: usize,
    /// Standby replicas per stateful task (Kafka Streams'
    /// `num.standby.replicas`, default 0): other instances keep warm copies
    /// of its stores in sled, following its changelogs, so that a failover
    /// reads only the changelog's tail. See [`crate::runtime::standby`].
    pub num_standby_replicas: usize,
    /// `application.server`: the `host:port` other instances and clients
    /// use to reach this instance's HTTP server (default: [`Self::http`]).
    pub application_server: Option<String>,
}

impl StreamsConfig {
    /// How this instance maps input partitions to tasks.
    pub fn layout(&self) -> crate::task::TaskLayout {
        if self.single_instance {
            crate::task::TaskLayout::SingleInstance
        } else {
            crate::task::TaskLayout::PerPartition
        }
    }

    /// A configuration with defaults: at-least-once, 100 ms commits,
    /// state under the system temp directory.
    pub fn new(application_id: &str, bootstrap_servers: &str) -> Self {
        StreamsConfig {
            application_id: application_id.to_string(),
            bootstrap_servers: bootstrap_servers.to_string(),
            client_id: None,
            state_dir: std::env::temp_dir().join("stream-state"),
            commit_interval: Duration::from_millis(100),
            processing_guarantee: ProcessingGuarantee::AtLeastOnce,
            security: Security::default(),
            on_error: ErrorPolicy::DeadLetter,
            dead_letter_topic: None,
            replication_factor: None,
            single_instance: false,
            outside_group: false,
            allow_empty_state: false,
            group_instance_id: None,
            assignment_strategy: "range".into(),
            num_stream_threads: 1,
            extra: BTreeMap::new(),
            http: None,
            http_token: None,
            http_insecure: false,
            lineage_depth: 0,
            num_standby_replicas: 0,
            state_cache_bytes: crate::store::DEFAULT_CACHE_BYTES,
            max_buffered_changes: DEFAULT_MAX_BUFFERED_CHANGES,
            on_late: crate::task::LatePolicy::DeadLetter,
            idle_advance: None,
            max_task_idle: Some(Duration::ZERO),
            application_server: None,
        }
    }

    /// The `host:port` this instance advertises to the group, if any.
    pub fn advertised_server(&self) -> Option<String> {
        self.application_server
            .clone()
            .or_else(|| self.http.map(|a| a.to_string()))
    }

    /// The dead-letter topic in use.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| crate::graph::dead_letter_topic_name(&self.application_id))
    }

    /// The client settings every Kafka client of this application shares.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        c.set(
            "client.id",
            self.client_id.as_deref().unwrap_or(&self.application_id),
        );
        let s = &self.security;
        let pairs = [
            ("security.protocol", s.protocol.as_deref()),
            ("sasl.mechanism", s.sasl_mechanism.as_deref()),
            ("sasl.username", s.username.as_deref()),
            ("sasl.password", s.password.as_ref().map(|p| p.expose())),
            ("ssl.ca.location", s.ssl_ca_location.as_deref()),
            (
                "ssl.certificate.location",
                s.ssl_certificate_location.as_deref(),
            ),
            ("ssl.key.location", s.ssl_key_location.as_deref()),
        ];
        for (k, v) in pairs {
            if let Some(v) = v {
                c.set(k, v);
            }
        }
        for (k, v) in self.shared_extra() {
            c.set(k, v);
        }
        c
    }

    /// The settings of [`extra`](Self::extra) for every client: those
    /// without a client's prefix.
    pub fn shared_extra(&self) -> impl Iterator<Item = (&str, &str)> {
        self.extra
            .iter()
            .filter(|(k, _)| !KafkaClient::is_aimed(k))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The settings of [`extra`](Self::extra) aimed at `client` by a
    /// prefix, without it: the general prefix's first, then the specific
    /// one's (which win when both name a setting).
    pub fn aimed_extra(&self, client: KafkaClient) -> Vec<(&str, &str)> {
        let mut out = Vec::new();
        for prefix in client.prefixes() {
            for (k, v) in &self.extra {
                if let Some(name) = k.strip_prefix(prefix) {
                    out.push((name, v.as_str()));
                }
            }
        }
        out
    }

    /// The settings of an admin client: the shared ones and those aimed at
    /// admin clients. It never lets a lookup create a topic: librdkafka
    /// asks the broker to create a missing topic whose metadata an admin
    /// client requests, and a broker with `auto.create.topics.enable`
    /// (Kafka's default) then creates the internal topic being checked
    /// before it is created, with its own default partition count and no
    /// compaction.
    pub(crate) fn admin_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        self.apply_aimed_extra(&mut c, KafkaClient::Admin);
        c.set("allow.auto.create.topics", "false");
        c
    }

    /// Sets `extra`'s settings for `client` on `c`: the shared ones, then
    /// those aimed at it. Clients call this after their own settings, so
    /// the user's win.
    pub(crate) fn apply_extra(&self, c: &mut ClientConfig, client: KafkaClient) {
        for (k, v) in self.shared_extra() {
            c.set(k, v);
        }
        self.apply_aimed_extra(c, client);
    }

    /// Sets only the settings of `extra` aimed at `client` on `c`.
    pub(crate) fn apply_aimed_extra(&self, c: &mut ClientConfig, client: KafkaClient) {
        for (k, v) in self.aimed_extra(client) {
            c.set(k, v);
        }
    }

    /// What `client` gets for setting `name` from `extra`: aimed at it,
    /// else shared; `None` if `extra` does not set it.
    pub fn extra_setting(&self, client: KafkaClient, name: &str) -> Option<&str> {
        self.aimed_extra(client)
            .into_iter()
            .rev()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
            .or_else(|| self.extra.get(name).map(String::as_str))
    }

    /// The producer's `transaction.timeout.ms` under exactly-once: the
    /// value set in [`extra`](Self::extra), else [`DEFAULT_TRANSACTION_TIMEOUT`]
    /// (10 s, Kafka Streams' default) or twice the commit interval,
    /// whichever is longer.
    ///
    /// A transaction stays open from the first record after a commit until
    /// the next commit ends, so a timeout shorter than the commit interval
    /// has the coordinator abort every transaction and fence the producer.
    /// Kafka Streams refuses to start then
    /// (`StreamsConfig#verifyEOSTransactionTimeoutCompatibility`); this
    /// framework refuses too when the timeout was set explicitly
    /// ([`check_transaction_timeout`](Self::check_transaction_timeout)),
    /// and otherwise raises its default to fit the interval. A longer
    /// timeout costs one thing: an instance that dies and never comes back
    /// holds read_committed readers of its outputs back for that long (a
    /// restarted one aborts its open transaction at once).
    pub fn transaction_timeout(&self) -> Result<Duration, String> {
        millis_setting(
            self.extra_setting(KafkaClient::Producer, "transaction.timeout.ms"),
            "transaction.timeout.ms",
            DEFAULT_TRANSACTION_TIMEOUT.max(self.commit_interval * 2),
        )
    }

    /// The group consumer's `session.timeout.ms`: the value set in
    /// [`extra`](Self::extra), else [`DEFAULT_SESSION_TIMEOUT`].
    pub fn session_timeout(&self) -> Result<Duration, String> {
        millis_setting(
            self.extra_setting(KafkaClient::MainConsumer, "session.timeout.ms"),
            "session.timeout.ms",
            DEFAULT_SESSION_TIMEOUT,
        )
    }

    /// At-least-once: how long the producer holds a record it could not
    /// deliver (librdkafka's `message.timeout.ms`): the value set in
    /// [`extra`](Self::extra), else the session timeout less 2 s (8 s with
    /// the default session), at least 1 s.
    ///
    /// It is shorter than the session timeout so that a process paused
    /// past its session (SIGSTOP, a frozen VM), whose partitions another
    /// instance has taken over meanwhile, cannot deliver what it had
    /// queued when it wakes: librdkafka times those records out before it
    /// sends anything, and the instance rolls back to its last commit (see
    /// `docs/runtime.md`, "Zombies"). A broker unreachable for longer fails
    /// deliveries the same way; the instance rolls back and reprocesses
    /// rather than stopping. Kafka Streams' producer holds records for
    /// `delivery.timeout.ms` (2 minutes) and has no such guard.
    pub fn delivery_timeout(&self) -> Result<Duration, String> {
        let session = self.session_timeout()?;
        let fallback = session
            .saturating_sub(Duration::from_secs(2))
            .max(Duration::from_secs(1));
        millis_setting(
            self.extra_setting(KafkaClient::Producer, "message.timeout.ms"),
            "message.timeout.ms",
            fallback,
        )
    }

    /// Under exactly-once, checks that transactions can outlast the commit
    /// interval (see [`transaction_timeout`](Self::transaction_timeout)).
    pub fn check_transaction_timeout(&self) -> Result<(), String> {
        if self.processing_guarantee != ProcessingGuarantee::ExactlyOnce {
            return Ok(());
        }
        let timeout = self.transaction_timeout()?;
        if timeout < self.commit_interval {
            return Err(format!(
                "transaction.timeout.ms ({} ms) is shorter than commit.interval.ms ({} ms): the broker would abort every transaction before its commit; raise transaction.timeout.ms or lower the commit interval",
                timeout.as_millis(),
                self.commit_interval.as_millis()
            ));
        }
        Ok(())
    }

    /// Checks that every consumer keeps the classic group protocol
    /// (librdkafka's `group.protocol`, `classic` by default).
    ///
    /// The application's group assigns whole tasks (a partition number
    /// across the sub-topology's inputs) through the classic protocol's
    /// client-side assignment and its rebalance callbacks (eager or
    /// cooperative, as `partition.assignment.strategy` says). The
    /// `consumer` protocol of KIP-848 assigns partitions on the broker, one
    /// by one, and librdkafka refuses it together with the session timeout
    /// this framework sets. Kafka Streams also runs its consumers with the
    /// classic protocol (it overrides a `consumer.group.protocol` with a
    /// warning) or with its own `streams` protocol (KIP-1071), which this
    /// framework does not implement. We refuse instead of overriding: the
    /// setting asks for something this instance would not do.
    pub fn check_group_protocol(&self) -> Result<(), String> {
        for client in [
            KafkaClient::MainConsumer,
            KafkaClient::RestoreConsumer,
            KafkaClient::GlobalConsumer,
            KafkaClient::GroupReader,
        ] {
            if let Some(v) = self.extra_setting(client, "group.protocol") {
                if !v.trim().eq_ignore_ascii_case("classic") {
                    return Err(format!(
                        "group.protocol={v} is not supported: the application's group assigns its tasks with Kafka's classic rebalance protocol (as Kafka Streams' consumers do); remove the setting or set it to classic"
                    ));
                }
            }
        }
        Ok(())
    }

    /// A one-line description for logs, with the password redacted.
    pub fn redacted(&self) -> String {
        format!(
            "application.id={} bootstrap.servers={} client.id={} state.dir={} commit.interval.ms={} processing.guarantee={:?} num.stream.threads={} security.protocol={} sasl.mechanism={} sasl.username={} sasl.password={} single_instance={} http={} http.token={}",
            self.application_id,
            self.bootstrap_servers,
            self.client_id.as_deref().unwrap_or(&self.application_id),
            self.state_dir.display(),
            self.commit_interval.as_millis(),
            self.processing_guarantee,
            self.num_stream_threads,
            self.security.protocol.as_deref().unwrap_or("PLAINTEXT"),
            self.security.sasl_mechanism.as_deref().unwrap_or("-"),
            self.security.username.as_deref().unwrap_or("-"),
            if self.security.password.is_some() { "***" } else { "-" },
            self.single_instance,
            self.http.map_or_else(|| "-".to_string(), |a| a.to_string()),
            if self.http_token.is_some() { "***" } else { "-" },
        )
    }
}

/// A Kafka client of an instance, which a setting of
/// [`StreamsConfig::extra`] can be aimed at with Kafka Streams' prefixes
/// (`StreamsConfig#producerPrefix` and its siblings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaClient {
    /// Each stream thread's producer: `producer.`.
    Producer,
    /// Each stream thread's consumer of the input, in the application's
    /// group: `consumer.`, then `main.consumer.`.
    MainConsumer,
    /// Each stream thread's reader of changelogs (restores and standbys):
    /// `consumer.`, then `restore.consumer.`.
    RestoreConsumer,
    /// The reader of global tables' topics: `consumer.`, then
    /// `global.consumer.`.
    GlobalConsumer,
    /// The admin client that creates and checks topics (and a reset's):
    /// `admin.`.
    Admin,
    /// A consumer that reads the application's group and the cluster's
    /// metadata without joining the group: the HTTP status page's lag
    /// probe, a reset's group client and the connection check at start:
    /// `consumer.`.
    GroupReader,
}

impl KafkaClient {
    /// Every client.
    const ALL: [KafkaClient; 6] = [
        KafkaClient::Producer,
        KafkaClient::MainConsumer,
        KafkaClient::RestoreConsumer,
        KafkaClient::GlobalConsumer,
        KafkaClient::Admin,
        KafkaClient::GroupReader,
    ];

    /// The prefixes aimed at this client, the more specific last.
    ///
    /// ```
    /// use stream_core::runtime::KafkaClient;
    /// assert_eq!(KafkaClient::RestoreConsumer.prefixes(), ["consumer.", "restore.consumer."]);
    /// ```
    pub fn prefixes(self) -> &'static [&'static str] {
        match self {
            KafkaClient::Producer => &["producer."],
            KafkaClient::MainConsumer => &["consumer.", "main.consumer."],
            KafkaClient::RestoreConsumer => &["consumer.", "restore.consumer."],
            KafkaClient::GlobalConsumer => &["consumer.", "global.consumer."],
            KafkaClient::Admin => &["admin."],
            KafkaClient::GroupReader => &["consumer."],
        }
    }

    /// Whether setting `name` is aimed at some client by a prefix.
    fn is_aimed(name: &str) -> bool {
        Self::ALL
            .iter()
            .any(|c| c.prefixes().iter().any(|p| name.starts_with(p)))
    }
}

/// `value`, the setting `name`, in milliseconds, or `fallback` when not
/// set.
fn millis_setting(value: Option<&str>, name: &str, fallback: Duration) -> Result<Duration, String> {
    match value {
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| format!("{name} must be a number of milliseconds, not `{v}`")),
        None => Ok(fallback),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_never_let_an_admin_lookup_create_a_topic() {
        let mut c = StreamsConfig::new("app", "127.0.0.1:9092");
        for k in ["allow.auto.create.topics", "admin.allow.auto.create.topics"] {
            c.extra.insert(k.into(), "true".into());
        }
        assert_eq!(
            c.admin_config().get("allow.auto.create.topics"),
            Some("false")
        );
    }

    #[test]
    fn should_never_print_the_password() {
        let mut c = StreamsConfig::new("app", "127.0.0.1:9092");
        c.security.password = Some(Secret::new("hunter2-secret"));
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.redacted().contains("hunter2"));
        assert_eq!(
            c.client_config().get("sasl.password"),
            Some("hunter2-secret")
        );
    }

    #[test]
    fn should_keep_undelivered_records_for_less_than_the_session_timeout() {
        let mut c = StreamsConfig::new("app", "127.0.0.1:9092");
        assert_eq!(c.delivery_timeout(), Ok(Duration::from_secs(8)));
        c.extra.insert("session.timeout.ms".into(), "45000".into());
        assert_eq!(c.delivery_timeout(), Ok(Duration::from_secs(43)));
        c.extra.insert("session.timeout.ms".into(), "2500".into());
        assert_eq!(c.delivery_timeout(), Ok(Duration::from_secs(1)));
        c.extra.insert("message.timeout.ms".into(), "60000".into());
        assert_eq!(c.delivery_timeout(), Ok(Duration::from_secs(60)));
        c.extra.insert("session.timeout.ms".into(), "ten".into());
        assert!(c
            .delivery_timeout()
            .unwrap_err()
            .contains("session.timeout.ms"));
    }

    #[test]
    fn should_fit_the_transaction_timeout_to_the_commit_interval() {
        let mut c = StreamsConfig::new("app", "127.0.0.1:9092");
        c.processing_guarantee = ProcessingGuarantee::ExactlyOnce;
        assert_eq!(c.transaction_timeout(), Ok(Duration::from_secs(10)));
        c.commit_interval = Duration::from_secs(30);
        assert_eq!(c.transaction_timeout(), Ok(Duration::from_secs(60)));
        assert_eq!(c.check_transaction_timeout(), Ok(()));
        // Set explicitly: kept, and refused when shorter than the interval.
        c.extra
            .insert("transaction.timeout.ms".into(), "20000".into());
        assert_eq!(c.transaction_timeout(), Ok(Duration::from_secs(20)));
        let e = c.check_transaction_timeout().unwrap_err();
        assert!(
            e.contains("shorter than commit.interval.ms (30000 ms)"),
            "{e}"
        );
        c.processing_guarantee = ProcessingGuarantee::AtLeastOnce;
        assert_eq!(c.check_transaction_timeout(), Ok(()));
        c.processing_guarantee = ProcessingGuarantee::ExactlyOnce;
        c.extra
            .insert("transaction.timeout.ms".into(), "soon".into());
        assert!(c
            .check_transaction_timeout()
            .unwrap_err()
            .contains("`soon`"));
    }

    /// Only the classic group protocol is accepted, however it is aimed.
    #[test]
    fn should_refuse_a_group_protocol_other_than_classic() {
        let mut c = StreamsConfig::new("app", "127.0.0.1:9092");
        assert_eq!(c.check_group_protocol(), Ok(()));
        c.extra.insert("group.protocol".into(), "classic".into());
        c.extra
            .insert("main.consumer.group.protocol".into(), "CLASSIC".into());
        assert_eq!(c.check_group_protocol(), Ok(()));
        for key in [
            "group.protocol",
            "consumer.group.protocol",
            "main.consumer.group.protocol",
            "restore.consumer.group.protocol",
        ] {
            let mut c = StreamsConfig::new("app", "127.0.0.1:9092");
            c.extra.insert(key.into(), "consumer".into());
            let e = c.check_group_protocol().unwrap_err();
            assert!(
                e.starts_with("group.protocol=consumer is not supported"),
                "{key}: {e}"
            );
        }
        // Aimed at the producer only, it reaches no consumer.
        c.extra
            .insert("producer.group.protocol".into(), "streams".into());
        assert_eq!(c.check_group_protocol(), Ok(()));
    }

    /// Settings with a client's prefix reach that client only, without
    /// the prefix; the specific prefix wins over `consumer.`, and both over
    /// a shared setting.
    #[test]
    fn should_aim_prefixed_settings_at_their_clients() {
        let mut c = StreamsConfig::new("app", "127.0.0.1:9092");
        for (k, v) in [
            ("fetch.wait.max.ms", "5"),
            ("consumer.fetch.wait.max.ms", "50"),
            ("restore.consumer.fetch.wait.max.ms", "500"),
            ("producer.linger.ms", "20"),
            ("admin.request.timeout.ms", "9000"),
        ] {
            c.extra.insert(k.into(), v.into());
        }
        let shared = c.client_config();
        assert_eq!(shared.get("fetch.wait.max.ms"), Some("5"));
        assert_eq!(shared.get("linger.ms"), None);
        assert_eq!(shared.get("producer.linger.ms"), None);
        assert_eq!(shared.get("consumer.fetch.wait.max.ms"), None);

        let wait = |client| c.extra_setting(client, "fetch.wait.max.ms");
        assert_eq!(wait(KafkaClient::RestoreConsumer), Some("500"));
        assert_eq!(wait(KafkaClient::MainConsumer), Some("50"));
        assert_eq!(wait(KafkaClient::GlobalConsumer), Some("50"));
        assert_eq!(wait(KafkaClient::Producer), Some("5"));
        assert_eq!(
            c.extra_setting(KafkaClient::Producer, "linger.ms"),
            Some("20")
        );
        assert_eq!(c.extra_setting(KafkaClient::Admin, "linger.ms"), None);

        let mut restore = ClientConfig::new();
        c.apply_extra(&mut restore, KafkaClient::RestoreConsumer);
        assert_eq!(restore.get("fetch.wait.max.ms"), Some("500"));
        assert_eq!(restore.get("request.timeout.ms"), None);
        let mut admin = ClientConfig::new();
        c.apply_extra(&mut admin, KafkaClient::Admin);
        assert_eq!(admin.get("request.timeout.ms"), Some("9000"));
        assert_eq!(admin.get("fetch.wait.max.ms"), Some("5"));
        let mut probe = ClientConfig::new();
        c.apply_extra(&mut probe, KafkaClient::GroupReader);
        assert_eq!(probe.get("fetch.wait.max.ms"), Some("50"));
    }

    /// The timeouts the framework derives read the setting its client gets.
    #[test]
    fn should_read_timeouts_aimed_at_their_client() {
        let mut c = StreamsConfig::new("app", "127.0.0.1:9092");
        c.extra
            .insert("main.consumer.session.timeout.ms".into(), "45000".into());
        assert_eq!(c.session_timeout(), Ok(Duration::from_secs(45)));
        assert_eq!(c.delivery_timeout(), Ok(Duration::from_secs(43)));
        c.extra
            .insert("producer.message.timeout.ms".into(), "30000".into());
        assert_eq!(c.delivery_timeout(), Ok(Duration::from_secs(30)));
        // Aimed at another client: not the group consumer's.
        c.extra
            .insert("restore.consumer.session.timeout.ms".into(), "6000".into());
        assert_eq!(c.session_timeout(), Ok(Duration::from_secs(45)));
    }

    #[test]
    fn should_parse_guarantees() {
        assert_eq!(
            "exactly-once".parse::<ProcessingGuarantee>(),
            Ok(ProcessingGuarantee::ExactlyOnce)
        );
        assert!("twice".parse::<ProcessingGuarantee>().is_err());
    }
}
