//! The commit, in order (the order `docs/runtime.md` explains):
//!
//! 1. Every sink, changelog and dead-letter record produced before the
//!    commit point is acknowledged by the brokers: at-least-once waits for
//!    their delivery reports; exactly-once commits the transaction with the
//!    input offsets in it. If this fails, nothing below happens.
//! 2. For each task, its store changes up to the commit point, the
//!    changelog offsets reached, its input positions and its repartition
//!    dedup marks go to sled as one atomic commit, written by the state
//!    writer thread while processing goes on (a syncer thread flushes it
//!    to disk right after; a crash loses at most this commit, and restore
//!    reads it back from the changelog's tail).
//! 3. At-least-once: the input positions are committed to the group, with
//!    this application's tag (see [`super::ownership`]). Outside the group
//!    sled holds them alone. A periodic commit whose positions are the ones
//!    last sent is not sent again for [`RESEND_UNCHANGED_AFTER`] (an idle
//!    instance committed the same offsets ten times a second, each one a
//!    write to `__consumer_offsets`); a synchronous commit always is.
//!
//! Under at-least-once the commit is **pipelined**: at the commit point
//! every task seals its state ([`Task::seal`](crate::task::Task::seal))
//! and the producer starts a new epoch; the stream thread goes on
//! processing into fresh buffers while the brokers acknowledge the sealed
//! epoch; step 2 starts once its last delivery report is in and step 3
//! follows once every task's state is written ([`complete`]). One commit
//! is in flight at a time; the next commit point waits until it is
//! written, and so does processing once the changes made meanwhile pass a
//! bound (`StreamsConfig::max_buffered_changes`): a state writer slower than
//! processing would otherwise let them grow with every record. Rebalances
//! and shutdown commit synchronously ([`commit`]).
//!
//! Exactly-once overlaps too: at the commit point the tasks seal and the
//! transaction commits on a helper thread ([`start_transaction`]); the
//! stream thread goes on processing, holding what it produces in memory
//! (no record may join a transaction while it commits), and once the commit
//! is done starts writing the sealed state and sends the held records into
//! the next transaction ([`finish_transaction`]). An abort rolls every task
//! back to the last commit, drops the held records and rewinds.
//!
//! A crash before 2 leaves sled and the group at the previous commit: the
//! changelog holds records past sled's checkpoint, but each carries the
//! input offset that caused it, and restore skips those whose input was not
//! committed; reprocessing writes them again. A crash between 2 and 3 leaves
//! sled ahead of the group: restore starts input at the larger of the two
//! positions, which is exact because everything before it was acknowledged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::config::StreamsConfig;
use super::error::RuntimeError;
use super::producer::{OutputProducer, CLIENT_TIMEOUT};
use super::status::RuntimeStatus;
use super::tasks::OwnedTasks;

/// What a commit touches.
pub(crate) struct CommitParts<'a> {
    pub(crate) tasks: &'a mut OwnedTasks,
    pub(crate) out: &'a mut OutputProducer,
    pub(crate) status: &'a Arc<RuntimeStatus>,
    pub(crate) cfg: &'a StreamsConfig,
    pub(crate) commit_tag: &'a str,
    pub(crate) sent: &'a mut SentPositions,
}

/// How long a periodic commit skips positions equal to the ones last sent
/// to the group. An asynchronous commit that failed unseen is sent again
/// after this at the latest (sled holds the positions meanwhile).
pub(crate) const RESEND_UNCHANGED_AFTER: Duration = Duration::from_secs(30);

/// The input positions last committed to the group, and when.
#[derive(Debug, Default)]
pub(crate) struct SentPositions {
    positions: Vec<(String, i32, i64)>,
    at: Option<Instant>,
}

impl SentPositions {
    /// Records `positions` as sent now; whether they need sending: always
    /// for a synchronous commit, else unless they equal the ones sent
    /// within [`RESEND_UNCHANGED_AFTER`].
    fn should_send(&mut self, mut positions: Vec<(String, i32, i64)>, mode: CommitMode) -> bool {
        positions.sort_unstable();
        let recent = self
            .at
            .is_some_and(|at| at.elapsed() < RESEND_UNCHANGED_AFTER);
        if matches!(mode, CommitMode::Async) && recent && positions == self.positions {
            return false;
        }
        self.positions = positions;
        self.at = Some(Instant::now());
        true
    }
}

/// A sealed commit waiting for its records' acknowledgements, then (at
/// least once) for its state to be written.
#[derive(Debug)]
pub(crate) struct InFlight {
    /// The producer epoch it covers (and every earlier one).
    epoch: u64,
    /// Its state is being written (step 2 started).
    writing: bool,
    /// When it was sealed.
    pub(crate) sealed_at: Instant,
}

/// Commits every task of `parts` now, waiting for every acknowledgement
/// (see the module docs for the order). Supersedes a commit in flight.
pub(crate) fn commit(
    parts: CommitParts<'_>,
    consumer: &BaseConsumer<impl ConsumerContext>,
) -> Result<(), RuntimeError> {
    if parts.tasks.is_empty() {
        return Ok(());
    }
    for (_, e) in parts.tasks.iter_mut() {
        e.task.seal();
    }
    let epoch = parts.out.seal_epoch();
    // 1. everything produced is acknowledged
    if parts.out.exactly_once() {
        let mut tpl = parts.tasks.positions();
        super::ownership::stamp(&mut tpl, parts.commit_tag);
        if !parts.out.commit_transaction(consumer, &tpl)? {
            // aborted: back to the last commit, and read the batch again
            parts.out.forget_through(epoch);
            parts.status.record_rollback();
            rewind(parts.tasks, consumer);
            return Ok(());
        }
    } else if !parts.out.flush()? {
        roll_back_lapsed(parts, consumer);
        return Ok(());
    }
    write(parts, epoch, consumer, CommitMode::Sync)
}

/// The commit point of a pipelined commit: seals every task and the
/// producer's epoch; [`complete`] finishes it.
pub(crate) fn seal(parts: CommitParts<'_>) -> Option<InFlight> {
    if parts.tasks.is_empty() {
        return None;
    }
    for (_, e) in parts.tasks.iter_mut() {
        e.task.seal();
    }
    Some(InFlight {
        epoch: parts.out.seal_epoch(),
        writing: false,
        sealed_at: Instant::now(),
    })
}

/// Exactly-once: the commit point of an overlapped commit. Seals every
/// task and the producer's epoch and starts committing the transaction
/// (with the sealed input positions) on a helper thread; processing goes
/// on, its output held until the commit is done ([`finish_transaction`]).
pub(crate) fn start_transaction(
    parts: CommitParts<'_>,
    consumer: &BaseConsumer<impl ConsumerContext>,
) -> Result<Option<InFlight>, RuntimeError> {
    if parts.tasks.is_empty() {
        return Ok(None);
    }
    for (_, e) in parts.tasks.iter_mut() {
        e.task.seal();
    }
    let epoch = parts.out.seal_epoch();
    let mut tpl = parts.tasks.positions();
    super::ownership::stamp(&mut tpl, parts.commit_tag);
    parts.out.start_transaction_commit(consumer, &tpl)?;
    Ok(Some(InFlight {
        epoch,
        writing: false,
        sealed_at: Instant::now(),
    }))
}

/// Exactly-once: finishes the transaction commit `flight` once it is done
/// (waits for it when `wait`): starts writing the sealed state and sends
/// the records held meanwhile into the next transaction; after an abort,
/// rolls every task back to its last commit and rewinds. Gives `flight`
/// back while the commit still runs.
pub(crate) fn finish_transaction(
    mut parts: CommitParts<'_>,
    flight: InFlight,
    consumer: &BaseConsumer<impl ConsumerContext>,
    wait: bool,
) -> Result<Option<InFlight>, RuntimeError> {
    match parts.out.finish_transaction_commit(wait)? {
        None => Ok(Some(flight)),
        Some(true) => {
            // Exactly-once: nothing lapses (a failed record aborts).
            write_state(&mut parts, flight.epoch)?;
            parts.out.release_held()?;
            Ok(None)
        }
        Some(false) => {
            parts.out.forget_through(flight.epoch);
            parts.status.record_rollback();
            rewind(parts.tasks, consumer);
            Ok(None)
        }
    }
}

/// Moves `flight` on: once every record produced before it is
/// acknowledged, starts writing its state (step 2); once that is written,
/// commits its input positions (step 3) and is done. Gives it back while
/// either waits, unless `wait`: then waits for both.
pub(crate) fn complete(
    mut parts: CommitParts<'_>,
    mut flight: InFlight,
    consumer: &BaseConsumer<impl ConsumerContext>,
    wait: bool,
) -> Result<Option<InFlight>, RuntimeError> {
    if !flight.writing {
        if wait && !parts.out.epoch_reported(flight.epoch) && !parts.out.flush()? {
            roll_back_lapsed(parts, consumer);
            return Ok(None);
        }
        if !parts.out.epoch_reported(flight.epoch) {
            return Ok(Some(flight));
        }
        if !write_state(&mut parts, flight.epoch)? {
            roll_back_lapsed(parts, consumer);
            return Ok(None);
        }
        flight.writing = true;
    }
    if wait {
        for (_, e) in parts.tasks.iter_mut() {
            e.task.wait_written()?;
        }
    } else if !written(parts.tasks)? {
        return Ok(Some(flight));
    }
    commit_positions(parts, consumer, CommitMode::Async);
    Ok(None)
}

/// Whether every task's last commit is written (the first failed write's
/// error otherwise).
pub(crate) fn written(tasks: &mut OwnedTasks) -> Result<bool, RuntimeError> {
    let mut all = true;
    for (_, e) in tasks.iter_mut() {
        all &= e.task.poll_written()?;
    }
    Ok(all)
}

/// Steps 2 and 3 for a commit covering `epoch`, whose records are all
/// reported, waiting for the state to be written.
fn write(
    mut parts: CommitParts<'_>,
    epoch: u64,
    consumer: &BaseConsumer<impl ConsumerContext>,
    mode: CommitMode,
) -> Result<(), RuntimeError> {
    if !write_state(&mut parts, epoch)? {
        roll_back_lapsed(parts, consumer);
        return Ok(());
    }
    for (_, e) in parts.tasks.iter_mut() {
        e.task.wait_written()?;
    }
    commit_positions(parts, consumer, mode);
    Ok(())
}

/// Step 3: the written commit's input positions to the group (exactly-once
/// commits them in the transaction; outside the group sled holds them).
fn commit_positions(
    parts: CommitParts<'_>,
    consumer: &BaseConsumer<impl ConsumerContext>,
    mode: CommitMode,
) {
    if parts.out.exactly_once() || parts.cfg.outside_group {
        return;
    }
    let mut tpl = parts.tasks.committed_positions();
    let positions = tpl
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.topic().to_string(), e.partition(), o)),
            _ => None,
        })
        .collect();
    if !parts.sent.should_send(positions, mode) {
        return;
    }
    super::ownership::stamp(&mut tpl, parts.commit_tag);
    if tpl.count() > 0 {
        if let Err(e) = consumer.commit(&tpl, mode) {
            // sled is ahead of the group now; a restart starts from sled's position.
            tracing::warn!(error = %e, "offset commit failed; local state keeps the position");
        }
    }
}

/// Step 2 for a commit covering `epoch`, whose records are all reported:
/// starts writing every sealed task's state, changelog offsets and
/// positions, atomically in sled (the syncer flushes each once written).
/// `false` (nothing written) when, at least once, records lapsed.
fn write_state(parts: &mut CommitParts<'_>, epoch: u64) -> Result<bool, RuntimeError> {
    let Some(acked) = parts.out.take_acknowledged(epoch)? else {
        return Ok(false);
    };
    for (id, e) in parts.tasks.iter_mut() {
        if e.task.is_sealed() {
            e.task.commit_sealed(&acked)?;
        }
        parts.status.update_metrics(*id, e.task.metrics());
    }
    Ok(true)
}

/// At-least-once, records that could not be delivered in time: every
/// task rolls back to its last commit and reads its input again from
/// there; what was not acknowledged is given up (it is produced again).
/// Nothing is lost: a commit is written only once every record before
/// it is acknowledged. Changelog records acknowledged since the last
/// commit were computed from the same state and input as the ones
/// reprocessing writes, and restore skips those whose input was not
/// committed.
pub(crate) fn roll_back_lapsed(
    parts: CommitParts<'_>,
    consumer: &BaseConsumer<impl ConsumerContext>,
) {
    parts.out.abandon_unacknowledged();
    parts.status.record_rollback();
    rewind(parts.tasks, consumer);
}

/// Aborts the open transaction and rolls every task back to its last commit.
pub(crate) fn abort(
    tasks: &mut OwnedTasks,
    out: &mut OutputProducer,
    consumer: &BaseConsumer<impl ConsumerContext>,
) -> Result<(), RuntimeError> {
    out.abort_transaction()?;
    rewind(tasks, consumer);
    Ok(())
}

/// Whether this member still holds its partitions in the group's current
/// generation: commits the positions of the last commit again,
/// synchronously (the coordinator refuses a commit from a member it
/// removed, or of an older generation). `None` when no task has a
/// committed position to send.
pub(crate) fn still_a_member(
    tasks: &OwnedTasks,
    commit_tag: &str,
    consumer: &BaseConsumer<impl ConsumerContext>,
) -> Option<Result<(), rdkafka::error::KafkaError>> {
    let mut tpl = tasks.committed_positions();
    if tpl.count() == 0 {
        return None;
    }
    super::ownership::stamp(&mut tpl, commit_tag);
    Some(consumer.commit(&tpl, CommitMode::Sync))
}

/// Rolls every task back to its last commit and seeks the consumer there.
pub(crate) fn rewind(tasks: &mut OwnedTasks, consumer: &BaseConsumer<impl ConsumerContext>) {
    tasks.note_rewind();
    for (_, e) in tasks.iter_mut() {
        e.task.rollback();
        for (topic, p) in &e.partitions {
            let offset = match e.task.position(topic, *p) {
                Some(pos) => Offset::Offset(pos),
                None => Offset::Beginning,
            };
            if let Err(err) = consumer.seek(topic, *p, offset, CLIENT_TIMEOUT) {
                tracing::warn!(topic = %topic, partition = p, error = %err, "rewind after abort failed");
            }
        }
    }
    // Partitions paused for holding records in timestamp order (dropped
    // with the rollback) fetch again, from where they were sought.
    let paused = tasks.order.take_paused();
    if !paused.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for (t, p) in &paused {
            tpl.add_partition(t, *p);
        }
        if let Err(err) = consumer.resume(&tpl) {
            tracing::warn!(error = %err, "resume after rewind failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positions(at: &[(&str, i32, i64)]) -> Vec<(String, i32, i64)> {
        at.iter().map(|(t, p, o)| (t.to_string(), *p, *o)).collect()
    }

    #[test]
    fn should_skip_a_periodic_commit_of_the_positions_last_sent() {
        let mut sent = SentPositions::default();
        let a = positions(&[("in", 0, 5), ("in", 1, 7)]);
        assert!(sent.should_send(a.clone(), CommitMode::Async), "the first");
        assert!(!sent.should_send(a.clone(), CommitMode::Async), "unchanged");
        // The same positions in another order are the same positions.
        let reversed: Vec<_> = a.iter().rev().cloned().collect();
        assert!(!sent.should_send(reversed, CommitMode::Async));
        assert!(
            sent.should_send(a.clone(), CommitMode::Sync),
            "synchronous: always"
        );
        let moved = positions(&[("in", 0, 6), ("in", 1, 7)]);
        assert!(sent.should_send(moved.clone(), CommitMode::Async), "moved");
        let fewer = positions(&[("in", 0, 6)]);
        assert!(
            sent.should_send(fewer, CommitMode::Async),
            "a partition left"
        );
    }

    #[test]
    fn should_send_unchanged_positions_again_after_a_while() {
        let mut sent = SentPositions::default();
        let a = positions(&[("in", 0, 5)]);
        assert!(sent.should_send(a.clone(), CommitMode::Async));
        sent.at = Instant::now().checked_sub(RESEND_UNCHANGED_AFTER + Duration::from_secs(1));
        assert!(
            sent.should_send(a.clone(), CommitMode::Async),
            "resent after the period"
        );
        assert!(
            !sent.should_send(a, CommitMode::Async),
            "then skipped again"
        );
    }
}
