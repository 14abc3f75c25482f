//! Reading a consumer's records a batch at a time.
//!
//! The rdkafka crate's `BaseConsumer::poll` hands out one record per call,
//! and each call costs librdkafka a queue lock, an event set up around the
//! record and four clock reads (rdkafka's own timeout loop and
//! librdkafka's poll bookkeeping): at a million records a second that was
//! about as much time as the reading itself. librdkafka's
//! `rd_kafka_consume_batch_queue` takes up to a batch's worth of records
//! off the consumer's queue under one lock and one clock read; the crate
//! does not wrap it, so [`read_batch`] does.
//!
//! One thread at a time: librdkafka documents its batch reads as unsafe
//! beside a seek, pause or resume of the same consumer on another thread,
//! so the consumer that reads batches must be used by one thread alone
//! (as the restore consumer is, on the restorer thread).
//!
//! Only for consumers that are not in a group (`assign`, never
//! `subscribe`): a batch read serves the queue's other events (rebalances,
//! offset commit replies) with librdkafka's callbacks, which the crate does
//! not install, so a group consumer must keep using `poll` for its own
//! queue; its records can be read in batches from a queue they are
//! forwarded to (`runtime::input_queue`). Errors for a
//! partition (a fetch refused, say) come back in the batch as
//! [`Batched::Error`]; client-wide errors go to librdkafka's log as before.

use std::ffi::CStr;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::RDKafkaErrorCode;

/// The batch size the framework reads with (restore, standbys): large
/// enough that a batch's fixed cost vanishes per record, small enough
/// that a batch of the largest records stays a few megabytes.
pub const BATCH: usize = 1024;

/// One record of a batch, borrowed from librdkafka's message until the
/// batch is dropped.
pub struct RawRecord<'b> {
    msg: &'b rd::rd_kafka_message_t,
    topic: &'b str,
}

impl<'b> RawRecord<'b> {
    /// The record's topic.
    pub fn topic(&self) -> &'b str {
        self.topic
    }

    /// The record's partition.
    pub fn partition(&self) -> i32 {
        self.msg.partition
    }

    /// The record's offset.
    pub fn offset(&self) -> i64 {
        self.msg.offset
    }

    /// The record's key; `None` for a record without one.
    pub fn key(&self) -> Option<&'b [u8]> {
        bytes(self.msg.key.cast(), self.msg.key_len)
    }

    /// The record's value; `None` for a tombstone.
    pub fn payload(&self) -> Option<&'b [u8]> {
        bytes(self.msg.payload.cast(), self.msg.len)
    }

    /// The record's timestamp in milliseconds, `-1` when it has none.
    pub fn timestamp(&self) -> i64 {
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a message of the batch, alive while `self` is.
        let ts = unsafe { rd::rd_kafka_message_timestamp(self.msg, &mut kind) };
        if kind == rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE {
            -1
        } else {
            ts
        }
    }

    /// Copies the record's headers into `into`, reusing the strings and
    /// byte buffers already there; returns how many there are: the headers
    /// are `into[..n]`. A header name that is not UTF-8 is copied lossily.
    pub fn copy_headers(&self, into: &mut Vec<(String, Vec<u8>)>) -> usize {
        // SAFETY: a consumed message of the batch, alive while `self` is
        // and read by this thread alone.
        unsafe { super::raw_headers::copy_headers(self.msg, into) }
    }
}

/// Whether consumed records' headers are read from the records' own bytes
/// rather than through librdkafka's parse: true unless the linked
/// librdkafka is not the release whose message layout this build knows,
/// or a record read both ways disagreed (which the log reports as an
/// error). Either way the headers read are the same.
pub fn headers_read_raw() -> bool {
    super::raw_headers::usable()
}

/// What a batch holds, in the order the consumer's queue held it.
pub enum Batched<'b> {
    /// A record.
    Record(RawRecord<'b>),
    /// An error for a partition (or the consumer) instead of a record.
    Error {
        /// librdkafka's error code.
        code: RDKafkaErrorCode,
        /// The partition's topic, when the error names one.
        topic: Option<&'b str>,
        /// The partition, when the error names one.
        partition: i32,
    },
}

/// The space for a batch's message pointers, kept between reads so that
/// reading allocates nothing. Holds no message between reads: a
/// [`Batch`] frees its messages when it is dropped.
#[derive(Default)]
pub struct BatchBuffer(Vec<*mut rd::rd_kafka_message_t>);

// SAFETY: the buffer is empty whenever no `Batch` borrows it (a batch
// drains it on drop), so moving it between threads moves no message.
unsafe impl Send for BatchBuffer {}

/// A batch taken off a consumer's queue: every message is freed when it
/// is dropped.
pub struct Batch<'c> {
    msgs: &'c mut Vec<*mut rd::rd_kafka_message_t>,
}

impl Batch<'_> {
    /// The number of records and errors in the batch.
    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    /// Whether the read found nothing before its timeout.
    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// The batch's records and errors, in order.
    pub fn iter(&self) -> impl Iterator<Item = Batched<'_>> + '_ {
        // The topic's name is looked up once per run of one topic's records.
        let mut last: (*mut rd::rd_kafka_topic_t, &str) = (std::ptr::null_mut(), "");
        self.msgs.iter().map(move |&m| {
            // SAFETY: every pointer was handed out by
            // rd_kafka_consume_batch_queue and is freed only on drop.
            let msg = unsafe { &*m };
            let topic = if msg.rkt.is_null() {
                None
            } else if msg.rkt == last.0 {
                Some(last.1)
            } else {
                // SAFETY: a message's topic handle lives as long as the
                // message; its name is NUL-terminated.
                let name = unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(msg.rkt)) };
                let name = name.to_str().unwrap_or("");
                last = (msg.rkt, name);
                Some(name)
            };
            if msg.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                return Batched::Error {
                    code: RDKafkaErrorCode::from(msg.err),
                    topic,
                    partition: msg.partition,
                };
            }
            Batched::Record(RawRecord {
                msg,
                topic: topic.unwrap_or(""),
            })
        })
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        for m in self.msgs.drain(..) {
            // SAFETY: each message is destroyed once, here.
            unsafe { rd::rd_kafka_message_destroy(m) };
        }
    }
}

/// Takes up to `max` records off `consumer`'s queue, waiting up to
/// `timeout` for the first; `buf` is kept between calls so that reading
/// allocates nothing. The consumer must not be in a group (see the module
/// docs). The batch's messages are freed when it is dropped.
///
/// librdkafka's batch call returns only once the batch is full or its
/// timeout has passed, so a batch of what is queued now would wait out
/// the timeout whenever fewer than `max` records are queued (at the end
/// of every restore). So the records queued now are taken without waiting;
/// only when there are none does the read wait, for one record, and then
/// takes the rest that is queued by then.
pub fn read_batch<'c, C: ConsumerContext>(
    consumer: &'c BaseConsumer<C>,
    buf: &'c mut BatchBuffer,
    max: usize,
    timeout: Duration,
) -> Batch<'c> {
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` is the consumer's live handle; the queue reference it
    // gives is released here, after the read (the batch's messages do not
    // refer to it).
    unsafe {
        let queue = rd::rd_kafka_queue_get_consumer(rk);
        if queue.is_null() {
            buf.0.clear();
            return Batch { msgs: &mut buf.0 };
        }
        let batch = read_queue(queue, buf, max, timeout);
        rd::rd_kafka_queue_destroy(queue);
        batch
    }
}

/// [`read_batch`] from librdkafka queue `queue`.
///
/// # Safety
///
/// `queue` must be a live queue handle of a consumer, read by this thread
/// alone for the duration of the call.
pub(crate) unsafe fn read_queue<'c>(
    queue: *mut rd::rd_kafka_queue_t,
    buf: &'c mut BatchBuffer,
    max: usize,
    timeout: Duration,
) -> Batch<'c> {
    let buf = &mut buf.0;
    buf.clear();
    buf.reserve(max);
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let into = buf.as_mut_ptr();
    // SAFETY: each call writes at most the count it is given of message
    // pointers, from `buf`'s pointer plus those already written, all
    // within the reserved capacity of `max`; it returns how many it wrote
    // (negative only on an invalid argument).
    let take = |wait: i32, from: usize, count: usize| unsafe {
        let got = rd::rd_kafka_consume_batch_queue(queue, wait, into.add(from), count);
        usize::try_from(got).unwrap_or(0).min(count)
    };
    let mut n = take(0, 0, max);
    if n == 0 && timeout_ms > 0 && max > 0 {
        n = take(timeout_ms, 0, 1);
        if n == 1 {
            n += take(0, 1, max - 1);
        }
    }
    // SAFETY: the first `n` (≤ max) pointers are initialised.
    unsafe { buf.set_len(n) };
    Batch { msgs: buf }
}

/// A byte slice from librdkafka's pointer and length (`None` when null).
pub(super) fn bytes<'a>(ptr: *const u8, len: usize) -> Option<&'a [u8]> {
    if ptr.is_null() {
        None
    } else {
        // SAFETY: librdkafka's pointer and length describe a buffer that
        // lives as long as its message, which outlives `'a` at every
        // caller.
        Some(unsafe { std::slice::from_raw_parts(ptr, len) })
    }
}
