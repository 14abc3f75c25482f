//! Options every program shares, read from the command line, the
//! environment (`KAFKA_PASSWORD`) and an optional TOML file.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use stream_core::graph::{check_upgrade, TopologyDescription};
use stream_core::runtime::reset::{self, ResetTo};
use stream_core::runtime::{Secret, StreamsConfig};
use stream_core::Topology;

/// Connection, identity and state options. The password is never printed.
#[derive(clap::Args, Default, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct Common {
    /// Kafka bootstrap servers, e.g. 127.0.0.1:9092.
    #[arg(long)]
    pub bootstrap_servers: Option<String>,
    /// Team name, team-1 … team-15 (consumer group id and client id).
    #[arg(long)]
    pub team: Option<String>,
    /// PLAINTEXT, SASL_PLAINTEXT, SASL_SSL or SSL.
    #[arg(long)]
    pub security_protocol: Option<String>,
    /// SASL mechanism, e.g. SCRAM-SHA-256.
    #[arg(long)]
    pub sasl_mechanism: Option<String>,
    /// SASL user name (the classroom uses the team name).
    #[arg(long)]
    pub username: Option<String>,
    /// SASL password; prefer the KAFKA_PASSWORD environment variable.
    #[arg(long, env = "KAFKA_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// CA certificate file for TLS.
    #[arg(long)]
    pub ssl_ca_location: Option<String>,
    /// Client certificate file for TLS.
    #[arg(long)]
    pub ssl_certificate_location: Option<String>,
    /// Client key file for TLS.
    #[arg(long)]
    pub ssl_key_location: Option<String>,
    /// Application id (consumer group, internal topic prefix); default: the team.
    #[arg(long)]
    pub application_id: Option<String>,
    /// Topic of user registrations.
    #[arg(long)]
    pub new_users_topic: Option<String>,
    /// Topic of actions (steps 2–4).
    #[arg(long)]
    pub actions_topic: Option<String>,
    /// Topic of the watchlist (step 5).
    #[arg(long)]
    pub watchlist_topic: Option<String>,
    /// Static group membership id (group.instance.id): a quick restart
    /// with the same id keeps its partitions without a rebalance.
    #[arg(long)]
    pub group_instance_id: Option<String>,
    /// Directory for local state (sled).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// TOML file with any of these options (kebab-case keys); flags win.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

/// Options of the programs that run a topology (flagger, watchlist, consume).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunOpts {
    /// Serve metrics, health, the topology, store queries and a live status
    /// page on this address, e.g. 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
    /// Bearer token every HTTP request must carry (required on an address
    /// other than loopback, unless --http-insecure).
    #[arg(long, env = "STREAMS_HTTP_TOKEN", hide_env_values = true, value_name = "TOKEN",
          value_parser = |s: &str| Ok::<_, String>(stream_core::runtime::config::Secret::new(s)))]
    pub http_token: Option<stream_core::runtime::config::Secret>,
    /// Serve an address other than loopback without a token, on purpose.
    #[arg(long)]
    pub http_insecure: bool,
    /// What a record that cannot be read or processed does: `dead-letter`
    /// (log it, count it, send it to <application-id>-dlq, go on) or
    /// `fail-fast` (stop with its topic, partition, offset and the error).
    #[arg(long, default_value = "dead-letter", value_name = "POLICY")]
    pub on_error: String,
    /// Stream threads (num.stream.threads): each has its own consumer,
    /// producer and tasks; more threads use more cores.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub threads: usize,
    /// Standby replicas per stateful task (num.standby.replicas): other
    /// instances keep warm copies so that a failover reads only the
    /// changelog's tail.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub standby_replicas: usize,
    /// Record lineage: keep the input coordinates of the last N updates of
    /// every key of every logged store, served at
    /// /stores/<store>/<key>/lineage (0: off).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub lineage: usize,
    /// MiB of the local state stores' page cache (sled's cache, counted at
    /// the pages' size on disk: cached pages take about three times as much
    /// memory; sled's bookkeeping per page comes on top and grows with the
    /// number of keys). The stores' key filters take up to a quarter of it
    /// again.
    #[arg(long, default_value_t = stream_core::store::DEFAULT_CACHE_BYTES / (1024 * 1024))]
    pub state_cache_mib: u64,
    /// Print the topology as JSON (stores with serdes, internal topics with
    /// partition counts, changelogs) and exit: save it at every release.
    #[arg(long)]
    pub describe_json: bool,
    /// Compare the topology with a description saved by --describe-json,
    /// print what each change means for running state (kept, lost,
    /// incompatible) and exit: 0 compatible, 1 state lost, 2 incompatible.
    #[arg(long, value_name = "FILE")]
    pub check_upgrade: Option<PathBuf>,
    /// Reset the application: move its input offsets (to earliest unless
    /// --to-latest, --to-datetime or --by-duration), delete the internal
    /// topics it created and wipe its local state on this machine, then
    /// exit. Refuses while an instance runs.
    #[arg(long)]
    pub reset: bool,
    /// With --reset: list every action, change nothing.
    #[arg(long, requires = "reset")]
    pub dry_run: bool,
    /// With --reset: skip everything already in the input.
    #[arg(long, requires = "reset", conflicts_with_all = ["to_datetime", "by_duration"])]
    pub to_latest: bool,
    /// With --reset: from the first record at or after this time (RFC 3339,
    /// e.g. 2026-11-27T10:00:00Z).
    #[arg(
        long,
        requires = "reset",
        value_name = "TIME",
        conflicts_with = "by_duration"
    )]
    pub to_datetime: Option<String>,
    /// With --reset: from this long ago, e.g. 10m, 2h, 1day.
    #[arg(long, requires = "reset", value_name = "DURATION")]
    pub by_duration: Option<String>,
}

impl RunOpts {
    /// Applies these options to a runtime configuration.
    pub fn apply(&self, cfg: &mut StreamsConfig) -> Result<(), String> {
        cfg.http = self.http;
        cfg.http_token = self.http_token.clone().filter(|t| !t.expose().is_empty());
        cfg.http_insecure = self.http_insecure;
        cfg.on_error = self.on_error.parse()?;
        if self.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        cfg.num_stream_threads = self.threads;
        cfg.lineage_depth = self.lineage;
        cfg.state_cache_bytes = self.state_cache_mib * 1024 * 1024;
        cfg.num_standby_replicas = self.standby_replicas;
        Ok(())
    }
}

impl RunOpts {
    /// Where a reset moves the input offsets.
    fn reset_to(&self) -> Result<ResetTo, String> {
        if self.to_latest {
            return Ok(ResetTo::Latest);
        }
        if let Some(t) = &self.to_datetime {
            let at = humantime::parse_rfc3339_weak(t)
                .map_err(|e| format!("--to-datetime {t}: {e} (e.g. 2026-11-27T10:00:00Z)"))?;
            let ms = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| format!("--to-datetime {t}: before 1970"))?
                .as_millis() as i64;
            return Ok(ResetTo::DateTime(ms));
        }
        if let Some(d) = &self.by_duration {
            let back = humantime::parse_duration(d)
                .map_err(|e| format!("--by-duration {d}: {e} (e.g. 10m, 2h, 1day)"))?;
            return Ok(ResetTo::Back(back));
        }
        Ok(ResetTo::Earliest)
    }

    /// Runs --describe-json, --check-upgrade or --reset for the program's
    /// applications (one per topology and configuration) and exits; returns
    /// at once when none was asked for.
    pub async fn maintenance(&self, apps: &[(&Topology, &StreamsConfig)]) {
        if self.describe_json {
            let d: Vec<TopologyDescription> = apps
                .iter()
                .map(|(t, c)| t.description(&c.application_id))
                .collect();
            let json = match d.as_slice() {
                [one] => one.to_json(),
                many => serde_json::to_string_pretty(many).unwrap_or_default(),
            };
            println!("{json}");
            std::process::exit(0);
        }
        if let Some(path) = &self.check_upgrade {
            let code = check_against(path, apps).unwrap_or_else(|e| fail(e));
            std::process::exit(code);
        }
        if self.reset {
            let to = self.reset_to().unwrap_or_else(|e| fail(e));
            for (topology, cfg) in apps {
                let plan = reset::plan_reset(topology, cfg, to).unwrap_or_else(|e| fail(e));
                print!("{plan}");
                if self.dry_run {
                    println!("  (dry run: nothing changed; input offsets to {to})");
                    continue;
                }
                reset::execute_reset(topology, cfg, &plan)
                    .await
                    .unwrap_or_else(|e| fail(e));
                println!("  done");
            }
            std::process::exit(0);
        }
    }
}

/// Compares every application with its saved description (matched by
/// application id); prints the reports; the worst exit code.
fn check_against(path: &Path, apps: &[(&Topology, &StreamsConfig)]) -> Result<i32, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let saved: Vec<TopologyDescription> = match TopologyDescription::from_json(&text) {
        Ok(one) => vec![one],
        Err(_) => serde_json::from_str(&text).map_err(|e| {
            format!(
                "{} is not a saved topology description: {e}",
                path.display()
            )
        })?,
    };
    let mut code = 0;
    for (topology, cfg) in apps {
        let current = topology.description(&cfg.application_id);
        let old = saved
            .iter()
            .find(|d| d.application_id == cfg.application_id)
            .or(saved.first())
            .ok_or_else(|| format!("{} holds no description", path.display()))?;
        let report = check_upgrade(old, &current);
        println!("{report}");
        code = code.max(report.exit_code());
    }
    Ok(code)
}

/// The processing guarantee and commit interval of the exercises'
/// programs.
#[derive(clap::Args, Debug, Clone)]
pub struct Processing {
    /// at-least-once or exactly-once.
    #[arg(long, default_value = "at-least-once")]
    pub guarantee: String,
    /// Commit interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub commit_interval_ms: u64,
    /// Kafka Streams' `max.task.idle.ms`: how long a join waits for a
    /// caught-up input that has nothing buffered before it goes on without
    /// it; -1 processes records in the order they arrive, not by timestamp.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub max_task_idle_ms: i64,
}

impl Processing {
    /// Applies these options to a runtime configuration.
    pub fn apply(&self, cfg: &mut StreamsConfig) -> Result<(), String> {
        cfg.processing_guarantee = self.guarantee.parse()?;
        cfg.commit_interval = std::time::Duration::from_millis(self.commit_interval_ms);
        cfg.max_task_idle = match self.max_task_idle_ms {
            -1 => None,
            ms => Some(std::time::Duration::from_millis(
                u64::try_from(ms).map_err(|_| {
                    format!("--max-task-idle-ms must be -1 or at least 0, not {ms}")
                })?,
            )),
        };
        Ok(())
    }
}

impl Common {
    /// Parses a config file's text (TOML, kebab-case keys; unknown keys are
    /// an error).
    pub fn from_toml(text: &str) -> Result<Common, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Fills options not given on the command line from `--config`.
    pub fn resolve(mut self) -> Result<Common, String> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        let file =
            Common::from_toml(&text).map_err(|e| format!("config file {}: {e}", path.display()))?;
        macro_rules! fill {
            ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = file.$f; } )* };
        }
        fill!(
            bootstrap_servers,
            team,
            application_id,
            group_instance_id,
            new_users_topic,
            actions_topic,
            watchlist_topic,
            security_protocol,
            sasl_mechanism,
            username,
            password,
            ssl_ca_location,
            ssl_certificate_location,
            ssl_key_location,
            state_dir
        );
        Ok(self)
    }

    /// The team name, required by every program.
    pub fn team(&self) -> Result<String, String> {
        let team = self
            .team
            .clone()
            .ok_or("--team team-N is required (or `team` in the config file)")?;
        crate::filters::for_team(&team)?;
        Ok(if team.starts_with("team-") {
            team
        } else {
            format!("team-{team}")
        })
    }

    /// A runtime configuration with these options; the application id is
    /// `--application-id` or else `default_app_id` (the team).
    pub fn streams_config(&self, default_app_id: &str) -> StreamsConfig {
        let bootstrap = self
            .bootstrap_servers
            .clone()
            .unwrap_or_else(|| "127.0.0.1:9092".into());
        let app_id = self
            .application_id
            .clone()
            .unwrap_or_else(|| default_app_id.to_string());
        let mut cfg = StreamsConfig::new(&app_id, &bootstrap);
        cfg.client_id = Some(default_app_id.to_string());
        cfg.security.protocol = self.security_protocol.clone();
        cfg.security.sasl_mechanism = self.sasl_mechanism.clone();
        if self.username.is_some() && self.security_protocol.is_none() {
            // A user name means SASL: the classroom's settings unless told.
            cfg.security.protocol = Some("SASL_PLAINTEXT".into());
            tracing::info!("--username given without --security-protocol: using SASL_PLAINTEXT (the classroom's); pass --security-protocol SASL_SSL for TLS");
        }
        if self.username.is_some() && self.sasl_mechanism.is_none() {
            cfg.security.sasl_mechanism = Some("SCRAM-SHA-256".into());
            tracing::info!(
                "--username given without --sasl-mechanism: using SCRAM-SHA-256 (the classroom's)"
            );
        }
        cfg.security.username = self.username.clone();
        cfg.security.password = self.password.clone().map(Secret::new);
        cfg.security.ssl_ca_location = self.ssl_ca_location.clone();
        cfg.security.ssl_certificate_location = self.ssl_certificate_location.clone();
        cfg.security.ssl_key_location = self.ssl_key_location.clone();
        cfg.state_dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("state"));
        cfg.group_instance_id = self.group_instance_id.clone();
        cfg
    }
}

impl Common {
    /// The user-registration topic.
    pub fn new_users(&self) -> String {
        self.new_users_topic
            .clone()
            .unwrap_or_else(|| "new_users".into())
    }
    /// The actions topic.
    pub fn actions(&self) -> String {
        self.actions_topic
            .clone()
            .unwrap_or_else(|| "actions".into())
    }
    /// The watchlist topic.
    pub fn watchlist(&self) -> String {
        self.watchlist_topic
            .clone()
            .unwrap_or_else(|| "watchlist".into())
    }
}

/// Logs to stderr; `RUST_LOG` chooses the level (default `info`). A line
/// that cannot be written (stderr a closed pipe) is dropped: see
/// [`stream_core::logging`].
pub fn init_logging() {
    stream_core::logging::init("info,librdkafka=warn");
}

/// Builds the topology, runs it with `config` and `run` until
/// SIGINT/SIGTERM, and turns any failure into one clear line and exit status 1.
pub async fn run_topology(
    builder: stream_dsl::StreamsBuilder,
    config: StreamsConfig,
    run: &RunOpts,
) {
    run_topology_until(builder, config, run, std::future::pending()).await
}

/// [`run_topology`], stopping cleanly (commit, flush, close) when `stop`
/// completes too: how a program ends itself, e.g. once the reader of its
/// output has gone.
pub async fn run_topology_until(
    builder: stream_dsl::StreamsBuilder,
    mut config: StreamsConfig,
    run: &RunOpts,
    stop: impl std::future::Future<Output = ()> + Send,
) {
    run.apply(&mut config).unwrap_or_else(|e| fail(e));
    let topology = builder.build().unwrap_or_else(|e| fail(e));
    run.maintenance(&[(&topology, &config)]).await;
    let app = stream_core::runtime::KafkaStreams::new(topology, config).unwrap_or_else(|e| fail(e));
    let shutdown = async {
        tokio::select! {
            () = stream_core::runtime::shutdown_signal() => {}
            () = stop => {}
        }
    };
    if let Err(e) = stream_core::instance::Instance::new(app)
        .run(shutdown)
        .await
    {
        fail(e);
    }
}

/// Writes a program's report to stdout. A reader that has gone
/// (`watchlist-report | head -3`) is no error: what it did not read is
/// dropped and the program goes on to its exit status. Any other write
/// failure ends the program through [`fail`].
pub fn print_report(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => fail(format!("cannot write to stdout: {e}")),
    }
}

/// Prints one clear line and exits with status 1.
pub fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_fill_options_from_the_config_file_and_let_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "team = \"team-4\"\nbootstrap-servers = \"file:9092\"\npassword = \"pw\"\n",
        )
        .unwrap();
        let c = Common {
            config: Some(path),
            bootstrap_servers: Some("flag:9092".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.team().unwrap(), "team-4");
        assert_eq!(c.bootstrap_servers.as_deref(), Some("flag:9092"));
        let cfg = c.streams_config("x");
        assert!(
            !format!("{cfg:?}").contains("pw\""),
            "password leaked in Debug"
        );
    }

    #[test]
    fn should_reject_unknown_keys_and_teams() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "tem = \"team-4\"\n").unwrap();
        assert!(Common {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .is_err());
        assert!(Common {
            team: Some("team-99".into()),
            ..Default::default()
        }
        .team()
        .is_err());
    }

    #[test]
    fn should_read_max_task_idle_as_kafka_streams_does() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Args {
            #[command(flatten)]
            processing: Processing,
        }
        let idle = |args: &[&str]| {
            let a = Args::try_parse_from(std::iter::once("p").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
            let mut cfg = StreamsConfig::new("a", "b:9092");
            a.processing.apply(&mut cfg).map(|()| cfg.max_task_idle)
        };
        let ms = std::time::Duration::from_millis;
        assert_eq!(idle(&[]), Ok(Some(ms(0))), "Kafka Streams' default, 0");
        assert_eq!(idle(&["--max-task-idle-ms", "250"]), Ok(Some(ms(250))));
        assert_eq!(idle(&["--max-task-idle-ms", "-1"]), Ok(None), "-1: off");
        assert!(idle(&["--max-task-idle-ms", "-5"]).is_err());
    }
}
