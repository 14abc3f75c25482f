//! The queue a stream thread reads its input records from, a batch at a
//! time.
//!
//! A group consumer's own queue carries its rebalances and offset-commit
//! replies as well as its records, and the rdkafka crate serves those only
//! through `poll`, which hands out one record per call at a cost per call
//! about that of processing a small record ([`super::batch`]). librdkafka
//! can send a partition's fetched records to a queue of the application's
//! own instead (`rd_kafka_queue_forward` of the partition's queue). The
//! stream thread forwards each partition it is given to its
//! [`InputQueue`] before it takes the assignment, reads the records there
//! in batches, and polls the consumer between batches, without waiting,
//! for everything else.
//!
//! What stays as with `poll`:
//! - **Order within a partition.** A partition sends each record it
//!   fetches to the queue it forwards to at that moment, and once this
//!   module has forwarded a partition librdkafka never forwards it to the
//!   consumer's own queue again (the forward is marked as the
//!   application's). A record fetched before a seek, pause or revocation
//!   is dropped by the batch read as `poll` drops it (librdkafka's
//!   version barrier).
//! - **Errors for a partition** (a topic the user may not read, say) come
//!   in the batch in place of a record.
//! - **One thread.** Batch reads are not safe beside a seek, pause or
//!   resume of the consumer on another thread; the stream thread does all
//!   of those itself, and it reads the queue alone.
//!
//! What is new: a partition's fetch that stops clears its forward, and if
//! that stop is processed (on librdkafka's own thread) after the partition
//! was assigned again and forwarded anew, the new fetch's records stay on
//! the partition's own queue, which nobody reads. So the stream thread
//! forwards every assigned partition again once a second: a forward in
//! place is left as it is, and a cleared one is set again, with the
//! records waiting on the partition's queue moved over first, in order.
//! Such a partition waits at most that second; no record is lost or
//! reordered.
//!
//! A batch is processed whole before the consumer is polled again, so a
//! rebalance (run inside `poll`) never sees a batch half processed; the
//! records of a batch that a rebalance would have dropped are those of
//! partitions it takes away, which the engine ignores once they are gone.

use std::ffi::CString;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

use super::batch::{read_queue, Batch, BatchBuffer};

/// A librdkafka queue of the consumer's, owned here, that assigned
/// partitions forward their records to.
pub(crate) struct InputQueue {
    queue: *mut rd::rd_kafka_queue_t,
}

// SAFETY: librdkafka's queues are locked internally; the handle may be
// used and destroyed from any thread. Reads happen on one thread (the
// module docs).
unsafe impl Send for InputQueue {}
// SAFETY: as above; `forward` only hands the pointer to librdkafka.
unsafe impl Sync for InputQueue {}

impl InputQueue {
    /// A new queue of `consumer`'s; `None` if librdkafka gives none. It
    /// must be dropped before the consumer is.
    pub(crate) fn new<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Option<InputQueue> {
        // SAFETY: the consumer's live handle.
        let queue = unsafe { rd::rd_kafka_queue_new(consumer.client().native_ptr()) };
        (!queue.is_null()).then_some(InputQueue { queue })
    }

    /// Sends the records that `consumer` fetches from now on for
    /// `topic[partition]` to this queue; called before the partition is
    /// assigned. Returns whether librdkafka took the forward (when it did
    /// not, the records come through `poll`).
    pub(crate) fn forward<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        topic: &str,
        partition: i32,
    ) -> bool {
        let Ok(name) = CString::new(topic) else {
            return false;
        };
        // SAFETY: the consumer's live handle and a NUL-terminated name; the
        // partition's queue handle is released after the forward, which
        // librdkafka keeps on the partition itself.
        unsafe {
            let partition_queue = rd::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                name.as_ptr(),
                partition,
            );
            if partition_queue.is_null() {
                return false;
            }
            rd::rd_kafka_queue_forward(partition_queue, self.queue);
            rd::rd_kafka_queue_destroy(partition_queue);
        }
        true
    }

    /// Up to `max` records (or partition errors) off the queue, waiting up
    /// to `timeout` when there is none (see [`super::batch::read_batch`]).
    pub(crate) fn read<'c>(
        &self,
        buf: &'c mut BatchBuffer,
        max: usize,
        timeout: Duration,
    ) -> Batch<'c> {
        // SAFETY: the queue is alive while `self` is, and read by the
        // stream thread alone.
        unsafe { read_queue(self.queue, buf, max, timeout) }
    }
}

impl Drop for InputQueue {
    fn drop(&mut self) {
        // SAFETY: the handle is owned here and destroyed once. Partitions
        // still forwarding to it hold references of their own; records
        // sent to it after this are discarded by librdkafka.
        unsafe { rd::rd_kafka_queue_destroy(self.queue) };
    }
}
