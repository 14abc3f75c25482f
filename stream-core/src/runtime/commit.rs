//! The commit, in order (the order `docs/runtime.md` explains):
//!
//! 1. Every sink, changelog and dead-letter record produced so far is
//!    acknowledged by the brokers: at-least-once flushes the producer;
//!    exactly-once commits the transaction with the input offsets in it.
//!    If this fails, nothing below happens.
//! 2. For each task, its buffered store changes, the changelog offsets
//!    reached, its input positions and its repartition dedup marks go to
//!    sled in one atomic batch (a syncer thread flushes it to disk right
//!    after; a crash loses at most this commit, and restore reads it back
//!    from the changelog's tail).
//! 3. At-least-once: the input positions are committed to the group, with
//!    this application's tag (see [`super::ownership`]). Outside the group
//!    sled holds them alone.
//!
//! A crash before 2 leaves sled and the group at the previous commit: the
//! changelog holds records past sled's checkpoint, but each carries the
//! input offset that caused it, and restore skips those whose input was not
//! committed; reprocessing writes them again. A crash between 2 and 3 leaves
//! sled ahead of the group: restore starts input at the larger of the two
//! positions, which is exact because everything before it was acknowledged.

use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::Offset;

use super::config::StreamsConfig;
use super::error::RuntimeError;
use super::producer::{OutputProducer, CLIENT_TIMEOUT};
use super::status::RuntimeStatus;
use super::tasks::OwnedTasks;
use crate::store::StateDir;

/// What a commit touches.
pub(crate) struct CommitParts<'a> {
    pub(crate) tasks: &'a mut OwnedTasks,
    pub(crate) out: &'a mut OutputProducer,
    pub(crate) state: &'a StateDir,
    pub(crate) status: &'a Arc<RuntimeStatus>,
    pub(crate) cfg: &'a StreamsConfig,
    pub(crate) commit_tag: &'a str,
}

/// Commits every task of `parts` (see the module docs for the order).
pub(crate) fn commit(
    parts: CommitParts<'_>,
    consumer: &BaseConsumer<impl ConsumerContext>,
) -> Result<(), RuntimeError> {
    if parts.tasks.is_empty() {
        return Ok(());
    }
    let mut tpl = parts.tasks.positions();
    super::ownership::stamp(&mut tpl, parts.commit_tag);
    // 1. everything produced is acknowledged
    if parts.out.exactly_once() {
        if !parts.out.commit_transaction(consumer, &tpl)? {
            // aborted: back to the last commit, and read the batch again
            rewind(parts.tasks, consumer);
            return Ok(());
        }
    } else {
        parts.out.flush()?;
    }
    // 2. state + changelog offsets + positions, atomically in sled
    let acked = parts.out.acknowledged();
    for (id, e) in parts.tasks.iter_mut() {
        e.task.commit_state(&acked)?;
        parts.status.update_metrics(*id, e.task.metrics());
    }
    parts.state.sync_soon();
    // 3. input offsets to the group
    if !parts.out.exactly_once() && !parts.cfg.outside_group && tpl.count() > 0 {
        if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
            // sled is ahead of the group now; a restart starts from sled's position.
            tracing::warn!(error = %e, "offset commit failed; local state keeps the position");
        }
    }
    Ok(())
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

/// Rolls every task back to its last commit and seeks the consumer there.
fn rewind(tasks: &mut OwnedTasks, consumer: &BaseConsumer<impl ConsumerContext>) {
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
}
