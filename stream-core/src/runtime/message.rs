//! A consumed record as the engine reads it, whether `poll` handed it out
//! or a batch read did; its headers are copied into buffers kept between
//! records.

use rdkafka::message::{BorrowedMessage, Message};

use super::batch::RawRecord;

/// A record the stream thread consumed: the parts of it that processing
/// reads.
pub(crate) trait Consumed {
    /// The record's topic.
    fn topic(&self) -> &str;
    /// The record's partition.
    fn partition(&self) -> i32;
    /// The record's offset.
    fn offset(&self) -> i64;
    /// The record's timestamp in milliseconds; 0 when it has none.
    fn timestamp_ms(&self) -> i64;
    /// The record's key, if any.
    fn key(&self) -> Option<&[u8]>;
    /// The record's value; `None` for a tombstone.
    fn value(&self) -> Option<&[u8]>;
    /// Copies the record's headers into `into`, reusing the strings and
    /// byte buffers already there (no allocation once they are large
    /// enough); returns how many there are: the headers are `into[..n]`.
    fn copy_headers(&self, into: &mut Vec<(String, Vec<u8>)>) -> usize;
}

impl Consumed for BorrowedMessage<'_> {
    fn topic(&self) -> &str {
        Message::topic(self)
    }
    fn partition(&self) -> i32 {
        Message::partition(self)
    }
    fn offset(&self) -> i64 {
        Message::offset(self)
    }
    fn timestamp_ms(&self) -> i64 {
        self.timestamp().to_millis().unwrap_or(0)
    }
    fn key(&self) -> Option<&[u8]> {
        Message::key(self)
    }
    fn value(&self) -> Option<&[u8]> {
        self.payload()
    }
    fn copy_headers(&self, into: &mut Vec<(String, Vec<u8>)>) -> usize {
        // SAFETY: a consumed message, alive while `self` is and read by
        // this thread alone.
        unsafe { super::raw_headers::copy_headers(self.ptr(), into) }
    }
}

impl Consumed for RawRecord<'_> {
    fn topic(&self) -> &str {
        RawRecord::topic(self)
    }
    fn partition(&self) -> i32 {
        RawRecord::partition(self)
    }
    fn offset(&self) -> i64 {
        RawRecord::offset(self)
    }
    /// As [`BorrowedMessage`]'s: a timestamp of -1 (none) reads as 0.
    fn timestamp_ms(&self) -> i64 {
        match self.timestamp() {
            -1 => 0,
            t => t,
        }
    }
    fn key(&self) -> Option<&[u8]> {
        RawRecord::key(self)
    }
    fn value(&self) -> Option<&[u8]> {
        self.payload()
    }
    fn copy_headers(&self, into: &mut Vec<(String, Vec<u8>)>) -> usize {
        RawRecord::copy_headers(self, into)
    }
}
