//! Batch reads (`stream_core::runtime::batch`, what restore, standbys and
//! global tables read with) against a real broker: every record once, in
//! offset order per partition, with its key, value (tombstones as none),
//! headers and timestamp as sent; a few records are handed over when they
//! arrive, not after the read's timeout. The restore consumer's assignment
//! changes (`stream_core::runtime::assignment`), several in a row, neither
//! abort librdkafka nor lose a position.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use integration_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};
use stream_core::runtime::batch::{headers_read_raw, read_batch, BatchBuffer, Batched};

/// What was sent as record `i`.
struct Sent {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    /// Headers as read back: a header sent without a value reads as
    /// empty bytes.
    headers: Vec<(String, Vec<u8>)>,
    /// Which headers are sent without a value.
    valueless: Vec<bool>,
    timestamp: i64,
}

/// What was sent as record `i`, its timestamp counted from `base`
/// (milliseconds), so that the timestamp tells which record it is. `base`
/// is the time the test began: a record stamped older than the topic's
/// retention (a week by default) is deleted by the broker's next retention
/// check, every 5 s on the test broker.
fn sent(base: i64, i: usize) -> Sent {
    // Every fourth record has no headers; the others one to three, and
    // every eighth record's second header has no value.
    let valueless: Vec<bool> = (0..i % 4).map(|h| h == 1 && i % 8 == 3).collect();
    let headers = valueless
        .iter()
        .enumerate()
        .map(|(h, &none)| {
            let value = if none {
                Vec::new()
            } else {
                format!("{i}-{h}").into_bytes()
            };
            (format!("h{h}"), value)
        })
        .collect();
    Sent {
        // Every seventh record has no key; every fifth is a tombstone.
        key: (!i.is_multiple_of(7)).then(|| format!("k{i}").into_bytes()),
        value: (!i.is_multiple_of(5)).then(|| format!("value of {i}").into_bytes()),
        headers,
        valueless,
        timestamp: base + i as i64,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn should_read_every_record_once_in_order_with_its_key_value_headers_and_timestamp() {
    let topic = unique("batch-read");
    let partitions = 3;
    create_topic(&topic, partitions).await;
    let p = producer();
    let n = 3_000;
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    for i in 0..n {
        let s = sent(base, i);
        let mut headers = OwnedHeaders::new();
        for ((k, v), &none) in s.headers.iter().zip(&s.valueless) {
            headers = headers.insert(Header {
                key: k,
                value: (!none).then_some(v.as_slice()),
            });
        }
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topic)
            .partition((i % partitions as usize) as i32)
            .timestamp(s.timestamp);
        if !s.headers.is_empty() {
            rec = rec.headers(headers);
        }
        if let Some(k) = &s.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = &s.value {
            rec = rec.payload(v.as_slice());
        }
        send_record(&p, rec).expect("send");
    }
    flush(&p);

    let mut cfg = client_config();
    cfg.set("group.id", unique("batch-read-group"))
        .set("enable.auto.commit", "false");
    let c: BaseConsumer = cfg.create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for part in 0..partitions {
        tpl.add_partition_offset(&topic, part, Offset::Beginning)
            .expect("partition");
    }
    c.assign(&tpl).expect("assign");

    let mut buf = BatchBuffer::default();
    let mut headers = Vec::new();
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    let mut next_offset: BTreeMap<i32, i64> = BTreeMap::new();
    let mut largest_batch = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < n && Instant::now() < deadline {
        let batch = read_batch(&c, &mut buf, 500, Duration::from_millis(100));
        largest_batch = largest_batch.max(batch.len());
        assert!(batch.len() <= 500, "a batch of {} records", batch.len());
        for item in batch.iter() {
            let m = match item {
                Batched::Record(m) => m,
                Batched::Error {
                    code,
                    topic,
                    partition,
                } => {
                    panic!("read error {code} on {topic:?}[{partition}]")
                }
            };
            assert_eq!(m.topic(), topic);
            let expected_offset = next_offset.entry(m.partition()).or_insert(0);
            assert_eq!(m.offset(), *expected_offset, "partition {}", m.partition());
            *expected_offset += 1;
            let count = m.copy_headers(&mut headers);
            let i = usize::try_from(m.timestamp() - base).expect("a record of this test");
            assert_eq!(m.partition(), (i % partitions as usize) as i32);
            let s = sent(base, i);
            assert_eq!(m.key(), s.key.as_deref(), "key of record {i}");
            assert_eq!(m.payload(), s.value.as_deref(), "value of record {i}");
            assert_eq!(m.timestamp(), s.timestamp, "timestamp of record {i}");
            assert_eq!(&headers[..count], &s.headers[..], "headers of record {i}");
            *seen.entry(i).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), n, "records read: {} of {n}", seen.len());
    assert!(seen.values().all(|&c| c == 1), "a record read twice");
    assert!(largest_batch > 1, "every batch held one record");
    // The headers were read from the records' bytes: the first records,
    // read through librdkafka's parse as well, agreed with it.
    assert!(
        headers_read_raw(),
        "headers fell back to librdkafka's parse"
    );

    // Fewer records than a batch holds: the read hands them over once they
    // arrive, instead of waiting out its timeout for a full batch.
    for i in 0..3 {
        send(&p, &topic, None, format!("late {i}").as_bytes());
    }
    flush(&p);
    let timeout = Duration::from_secs(20);
    let mut late = 0;
    let began = Instant::now();
    while late < 3 && began.elapsed() < Duration::from_secs(60) {
        let batch = read_batch(&c, &mut buf, 500, timeout);
        late += batch.len();
    }
    assert_eq!(late, 3);
    assert!(
        began.elapsed() < timeout / 2,
        "three queued records took {:?} with a timeout of {timeout:?}",
        began.elapsed()
    );
}

/// Assignment changes in a row, as the restore consumer makes them when
/// rebalances come close together (a restore abandoned, then a new one):
/// with librdkafka's own `assign`, the second of two changes in a row on
/// started fetchers made librdkafka abort the process ("Assertion
/// `rktp->rktp_started' failed", librdkafka issue #5573); the first such
/// pair did. Through `stream_core::runtime::assignment` every change waits
/// for the fetchers it stopped, and the last assignment still reads every
/// record from where it was assigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn should_change_the_assignment_many_times_in_a_row_without_aborting() {
    use stream_core::runtime::assignment;
    let topic = unique("assign-churn");
    let partitions = 4;
    create_topic(&topic, partitions).await;
    let p = producer();
    let n = 2_000;
    for i in 0..n {
        let rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topic)
            .partition(i % partitions)
            .payload(b"x");
        send_record(&p, rec).expect("send");
    }
    flush(&p);

    let mut cfg = client_config();
    cfg.set("group.id", unique("assign-churn-group"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10");
    let c: BaseConsumer = cfg.create().expect("consumer");
    let at = |offset: i64, parts: i32| {
        let mut tpl = TopicPartitionList::new();
        for part in 0..parts {
            tpl.add_partition_offset(&topic, part, Offset::Offset(offset))
                .expect("partition");
        }
        tpl
    };
    let mut buf = BatchBuffer::default();
    for round in 0..100 {
        assignment::assign(&c, &at(round % 50, partitions)).expect("assign");
        // The fetchers start.
        let _ = read_batch(&c, &mut buf, 100, Duration::from_millis(5));
        assignment::assign(&c, &at(round % 50, partitions)).expect("assign again");
        assignment::assign(&c, &at(0, partitions)).expect("and again");
        let one_less = at(0, partitions - 1);
        let mut gone = TopicPartitionList::new();
        gone.add_partition(&topic, partitions - 1);
        assignment::remove(&c, &gone).expect("remove one");
        assignment::assign(&c, &one_less).expect("assign the rest");
        assignment::unassign(&c).expect("unassign");
    }
    // Assigned at offset 10: every partition's records from there, once.
    assignment::assign(&c, &at(10, partitions)).expect("assign");
    let want = n as usize - 10 * partitions as usize;
    let mut offsets: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while offsets.len() < want && Instant::now() < deadline {
        let batch = read_batch(&c, &mut buf, 500, Duration::from_millis(100));
        for item in batch.iter() {
            if let Batched::Record(m) = item {
                *offsets.entry((m.partition(), m.offset())).or_default() += 1;
            }
        }
    }
    assert_eq!(offsets.len(), want, "records read after the changes");
    assert!(
        offsets.keys().all(|&(_, o)| o >= 10),
        "a record before the assigned offset"
    );
    assert!(offsets.values().all(|&c| c == 1), "a record read twice");
}
