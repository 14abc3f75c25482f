//! Assignment changes of the restore consumer (assigned by hand, never in a
//! group), each waiting until librdkafka has stopped the fetchers it took
//! away.
//!
//! librdkafka 2.12 stops a removed partition's fetcher asynchronously: it
//! sends the partition a stop and clears the partition's `started` flag
//! only when the stop's reply is served. A second assignment change made
//! before that (an abandoned restore followed at once by a new one, in
//! two rebalances close together) removes the partition again, still
//! flagged started, and sends a second stop; serving that one's reply
//! fails the assertion ``rktp->rktp_started`` in
//! `rd_kafka_assignment_partition_stopped` and aborts the process
//! (librdkafka issue #5573, fixed after 2.15; two `assign` calls in a row
//! on a consumer whose fetchers had started aborted it on the first try).
//!
//! A seek of a partition goes through the same partition queue as its
//! stop, behind it, and is answered once the stop is done; the stop's
//! reply goes to the queue that serves the next assignment change, ahead
//! of that change. So once a seek of every removed partition has been
//! answered (with "erroneous state": its fetcher is stopped), the next
//! change cannot race a stop. A partition the change assigns again is
//! sought to the offset it was assigned at, which changes nothing.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

/// How long one partition's stop is waited for.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Replaces the assignment with `tpl` (`assign`).
pub fn assign<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tpl: &TopicPartitionList,
) -> KafkaResult<()> {
    let before = consumer.assignment().ok();
    let result = consumer.assign(tpl);
    if let Some(before) = before {
        settle(consumer, &before, Some(tpl));
    }
    result
}

/// Removes every partition (`unassign`).
pub fn unassign<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> KafkaResult<()> {
    let before = consumer.assignment().ok();
    let result = consumer.unassign();
    if let Some(before) = before {
        settle(consumer, &before, None);
    }
    result
}

/// Removes `gone` from the assignment (`incremental_unassign`).
pub fn remove<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    gone: &TopicPartitionList,
) -> KafkaResult<()> {
    let result = consumer.incremental_unassign(gone);
    settle(consumer, gone, None);
    result
}

/// Waits until the fetchers of `removed` have stopped (see the module
/// comment); `now` is the assignment after the change, if it assigned
/// any.
fn settle<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    removed: &TopicPartitionList,
    now: Option<&TopicPartitionList>,
) {
    let assigned: HashMap<(String, i32), Offset> = now
        .map(|tpl| {
            tpl.elements()
                .into_iter()
                .map(|e| ((e.topic().to_string(), e.partition()), e.offset()))
                .collect()
        })
        .unwrap_or_default();
    for e in removed.elements() {
        // Offset::Beginning is never acted on for a stopped partition.
        let offset = assigned
            .get(&(e.topic().to_string(), e.partition()))
            .copied()
            .unwrap_or(Offset::Beginning);
        // Answered with an error for a stopped partition: that answer is
        // the point, not the seek.
        let _ = consumer.seek(e.topic(), e.partition(), offset, STOP_WAIT);
    }
}
