//! Smoke tests of the broker the project starts: round trip, compaction, SCRAM.

use std::time::Duration;

use integration_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;
use stream_core::runtime::topics::{check_connection, ErrorCapture};
use stream_core::runtime::{RuntimeError, Secret, StreamsConfig};

#[tokio::test]
async fn should_round_trip_records_through_the_broker() {
    let topic = unique("roundtrip");
    create_topic(&topic, 2).await;
    let p = producer();
    for i in 0..100 {
        send(
            &p,
            &topic,
            Some(format!("k{}", i % 7).as_bytes()),
            format!("v{i}").as_bytes(),
        );
    }
    flush(&p);
    let got = read_all(&topic, Duration::from_secs(30));
    assert_eq!(got.len(), 100);
    let mut values: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
        .collect();
    values.sort_by_key(|v| v[1..].parse::<u32>().unwrap());
    assert_eq!(
        values,
        (0..100).map(|i| format!("v{i}")).collect::<Vec<_>>()
    );
    assert!(got.iter().any(|r| r.partition == 1) && got.iter().any(|r| r.partition == 0));
}

/// The tests' producer reports a record the broker refused instead of
/// dropping it unseen (a filler that lost input would make the program
/// that reads it look like the one that lost it).
#[tokio::test]
async fn should_report_a_record_the_broker_refused() {
    let topic = unique("refused");
    create_topic_with(&topic, 1, &[("max.message.bytes", "10000")]).await;
    let mut c = client_config();
    c.set("linger.ms", "5");
    let p: TestProducer = c
        .create_with_context(DeliveryCheck::default())
        .expect("producer");
    send(&p, &topic, Some(b"small"), b"fits");
    flush(&p);
    send(&p, &topic, Some(b"large"), &vec![b'x'; 50_000]);
    p.flush(Duration::from_secs(30)).expect("flush");
    let failed = p
        .context()
        .failures()
        .expect("the refused record is reported");
    assert!(failed.starts_with("records not delivered: 1 "), "{failed}");
    assert!(failed.contains(&topic), "{failed}");
    assert_eq!(read_all(&topic, Duration::from_secs(30)).len(), 1);
}

/// Same-key records are reduced to the latest once the cleaner has run.
async fn compaction_reduces_keys(compacted: bool) -> bool {
    let topic = unique("compaction");
    let mut configs = vec![
        ("segment.ms", "100"),
        ("min.cleanable.dirty.ratio", "0.01"),
        ("delete.retention.ms", "100"),
        ("min.compaction.lag.ms", "0"),
    ];
    if compacted {
        configs.push(("cleanup.policy", "compact"));
    }
    create_topic_with(&topic, 1, &configs).await;
    let p = producer();
    for round in 0..20 {
        for k in 0..10 {
            send(
                &p,
                &topic,
                Some(format!("k{k}").as_bytes()),
                format!("{round}").as_bytes(),
            );
        }
    }
    flush(&p);
    wait_until(Duration::from_secs(60), || {
        // A sentinel per poll rolls the segment so the cleaner can work on the rest.
        send(&p, &topic, Some(b"sentinel"), b"x");
        flush(&p);
        let recs = read_all(&topic, Duration::from_secs(20));
        let data: Vec<_> = recs
            .iter()
            .filter(|r| r.key.as_deref() != Some(b"sentinel"))
            .collect();
        let latest_only =
            data.len() == 10 && data.iter().all(|r| r.value.as_deref() == Some(b"19"));
        latest_only
    })
}

#[tokio::test]
async fn should_compact_a_compacted_topic_to_the_latest_value_per_key() {
    assert!(
        compaction_reduces_keys(true).await,
        "the cleaner did not reduce the keys within the deadline"
    );
}

fn scram_config(user: &str, password: &str) -> StreamsConfig {
    let mut cfg = StreamsConfig::new("smoke", &sasl_bootstrap());
    cfg.security.protocol = Some("SASL_PLAINTEXT".into());
    cfg.security.sasl_mechanism = Some("SCRAM-SHA-256".into());
    cfg.security.username = Some(user.into());
    cfg.security.password = Some(Secret::new(password));
    cfg
}

#[tokio::test]
async fn should_log_in_with_scram_and_reject_a_wrong_password_clearly() {
    let good = scram_config("admin", "admin-secret");
    let capture = ErrorCapture::default();
    let c: BaseConsumer<ErrorCapture> = good.client_config().create_with_context(capture).unwrap();
    let md = c
        .fetch_metadata(None, Duration::from_secs(20))
        .expect("SCRAM login as admin works");
    assert!(!md.brokers().is_empty());

    let bad = scram_config("admin", "not-the-password");
    let explained = check_connection(&bad).expect_err("a wrong password must fail");
    assert!(
        matches!(explained, RuntimeError::Authentication { .. }),
        "got: {explained}"
    );
    let msg = explained.to_string();
    assert!(
        msg.contains("authentication failed for user `admin`"),
        "{msg}"
    );
    assert!(!msg.contains("not-the-password"), "{msg}");
}
