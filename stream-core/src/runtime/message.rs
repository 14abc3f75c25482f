//! Copying a consumed message's headers into buffers kept between records.

use rdkafka::message::{BorrowedMessage, Headers, Message};

/// Copies the headers of `msg` into `into`, reusing the strings and byte
/// buffers already there (no allocation once they are large enough);
/// returns how many there are: the headers are `into[..n]`.
pub(crate) fn copy_headers(msg: &BorrowedMessage<'_>, into: &mut Vec<(String, Vec<u8>)>) -> usize {
    let mut n = 0;
    if let Some(hs) = msg.headers() {
        for h in hs.iter() {
            if n == into.len() {
                into.push((String::new(), Vec::new()));
            }
            let (k, v) = &mut into[n];
            k.clear();
            k.push_str(h.key);
            v.clear();
            v.extend_from_slice(h.value.unwrap_or_default());
            n += 1;
        }
    }
    n
}
