//! Produces fake user registrations to `new_users`.

use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use stream_core::runtime::topics::check_connection;

use apps::cli::{fail, init_logging, print_report, Common};
use apps::fake::Generator;

/// Produce fake user registrations with the tutorial's distributions.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: Common,
    /// Users per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<u64>,
    /// Number of users to produce (default: forever with --rate, else 10000).
    #[arg(long)]
    count: Option<u64>,
    /// Partitions when the topic has to be created.
    #[arg(long, default_value_t = 2)]
    partitions: i32,
    /// Share of malformed records (0.0–1.0).
    #[arg(long, default_value_t = 0.0)]
    bad_ratio: f64,
    /// Random seed: the same seed produces the same users.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

async fn ensure_topic(
    cfg: &rdkafka::ClientConfig,
    topic: &str,
    partitions: i32,
) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = cfg.create().map_err(|e| e.to_string())?;
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let res = admin
        .create_topics(
            [&t],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .map_err(|e| format!("cannot create topic {topic}: {e}"))?;
    for r in res {
        match r {
            Ok(_) => tracing::info!(topic, partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((
                _,
                RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed,
            )) => {
                tracing::warn!(topic, "not allowed to create the topic; assuming it exists")
            }
            Err((_, e)) => return Err(format!("cannot create topic {topic}: {e}")),
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    init_logging();
    let args = Args::parse();
    let common = args.common.resolve().unwrap_or_else(|e| fail(e));
    let team = common.team.clone().unwrap_or_else(|| "fake-users".into());
    let cfg = common.streams_config(&team);
    let topic = common.new_users();
    check_connection(&cfg).unwrap_or_else(|e| fail(e));
    let client = cfg.client_config();
    ensure_topic(&client, &topic, args.partitions)
        .await
        .unwrap_or_else(|e| fail(e));
    let mut pc = client.clone();
    pc.set("linger.ms", "10").set("enable.idempotence", "true");
    let producer: ThreadedProducer<DefaultProducerContext> = pc
        .create()
        .unwrap_or_else(|e| fail(format!("cannot create producer: {e}")));
    let total = args.count.unwrap_or(if args.rate.is_some() {
        u64::MAX
    } else {
        10_000
    });
    let mut g = Generator::new(args.seed);
    let started = Instant::now();
    let (mut good, mut bad) = (0u64, 0u64);
    for i in 0..total {
        let payload = if g.roll_bad(args.bad_ratio) {
            bad += 1;
            g.bad_record()
        } else {
            good += 1;
            serde_json::to_vec(&g.user()).unwrap_or_default()
        };
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topic).payload(&payload);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => fail(format!("cannot produce to {}: {e}", topic)),
            }
        }
        if let Some(rate) = args.rate {
            let due = started + Duration::from_secs_f64((i + 1) as f64 / rate.max(1) as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .unwrap_or_else(|e| fail(format!("records not acknowledged: {e}")));
    print_report(&format!(
        "produced {good} users and {bad} malformed records to {} in {:.1}s\n",
        topic,
        started.elapsed().as_secs_f64()
    ));
}
