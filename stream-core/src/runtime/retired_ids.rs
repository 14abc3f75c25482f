//! Transactional ids of stream threads an instance no longer runs.
//!
//! Under exactly-once each stream thread has a transactional id of its own
//! (`<application.id>-<instance id>`, and `…-<n>` for thread n > 0), and a
//! thread's producer, initialising its transactions at start, fences the
//! thread's earlier incarnation and aborts the transaction it left open. An
//! instance restarted with fewer threads than it ran with before has no
//! producer for the higher ids: a transaction one of them left open (the
//! process killed mid-commit) stays open until the transaction coordinator
//! times it out (`transaction.timeout.ms`, 10 s by default here, checked
//! every 10 s by default), and meanwhile read_committed readers of every
//! partition it wrote stop at its first record: the instance's own tasks
//! reading its repartition topics, and every consumer of its output topics.
//! Kafka Streams, whose thread producers are named the same way, leaves
//! such a transaction to the timeout.
//!
//! So the state directory records how many stream threads' ids may hold a
//! transaction (`transactional-ids`, a number), and a start under
//! exactly-once with fewer threads first initialises a producer under each
//! id beyond its own (which aborts what the id left open), then records its
//! own number. A start with more threads records the higher number before
//! any thread starts. At-least-once opens no transactions and leaves the
//! record alone. A state directory written before the record existed has
//! none: its first start under exactly-once settles nothing and records its
//! own number.

use std::path::Path;
use std::sync::Arc;

use super::clients::{self, ThreadIds};
use super::config::StreamsConfig;
use super::error::RuntimeError;
use super::producer::DeliveryState;

/// The file in the application's state directory.
pub(crate) const FILE: &str = "transactional-ids";

/// The number of stream threads recorded in `path`: 0 when there is no
/// record, or one that cannot be read (with a warning; the record is a
/// safeguard, not state, and is written anew).
fn recorded(path: &Path) -> Result<usize, RuntimeError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().parse().unwrap_or_else(|_| {
            tracing::warn!(path = %path.display(), "the record of the stream threads' transactional ids cannot be read; writing it anew");
            0
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(RuntimeError::LocalFile {
            what: "transactional ids",
            path: path.display().to_string(),
            source: e,
        }),
    }
}

/// Records `threads` in `path`.
fn record(path: &Path, threads: usize) -> Result<(), RuntimeError> {
    super::state_file::replace(path, format!("{threads}\n").as_bytes(), "transactional ids")
}

/// Exactly-once, before the stream threads start: aborts whatever the
/// transactional ids of threads beyond `threads` (recorded in the state
/// directory `dir` by earlier starts) left open, by initialising a
/// producer under each, and records `threads`.
pub(crate) fn settle(
    cfg: &StreamsConfig,
    dir: &Path,
    instance_id: &str,
    threads: usize,
) -> Result<(), RuntimeError> {
    let path = dir.join(FILE);
    let before = recorded(&path)?;
    // Empty unless an earlier start ran more threads.
    for thread in threads..before {
        let ids = ThreadIds::new(cfg, thread, before, instance_id);
        // Initialising fences the id's last producer and aborts its open
        // transaction; the producer is not used for anything else.
        drop(clients::producer(
            cfg,
            &ids,
            true,
            Arc::new(DeliveryState::default()),
        )?);
        tracing::info!(
            transactional_id = %ids.transactional_id,
            "exactly-once: the id of a stream thread no longer run is settled (its open transaction, if any, aborted)"
        );
    }
    if before != threads {
        record(&path, threads)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> StreamsConfig {
        // Nothing is sent while no thread is settled.
        StreamsConfig::new("app", "127.0.0.1:1")
    }

    #[test]
    fn should_record_the_threads_of_each_start_that_settles_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        assert_eq!(recorded(&path).unwrap(), 0, "no record");
        settle(&cfg(), dir.path(), "id", 2).unwrap();
        assert_eq!(recorded(&path).unwrap(), 2);
        settle(&cfg(), dir.path(), "id", 3).unwrap();
        assert_eq!(recorded(&path).unwrap(), 3);
        settle(&cfg(), dir.path(), "id", 3).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "3\n");
    }

    #[test]
    fn should_take_an_unreadable_record_for_none_and_write_it_anew() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        std::fs::write(&path, b"three\n").unwrap();
        assert_eq!(recorded(&path).unwrap(), 0);
        settle(&cfg(), dir.path(), "id", 1).unwrap();
        assert_eq!(recorded(&path).unwrap(), 1);
    }
}
