//! Output records held in memory while an exactly-once transaction commits.
//!
//! The transaction protocol takes no new records while a commit is in
//! flight, so the stream thread keeps processing and holds what it
//! produces until the commit is done ([`super::producer`]). On the
//! watchlist benchmark a thread held 45,000–95,000 records per commit.
//! As [`OutRecord`]s each took 128 bytes and five or six allocations
//! (key, value, the header list, each header's name and value) of about
//! 210 bytes more. [`HeldRecords`] packs their bytes into one buffer and
//! keeps an 80-byte entry per record beside it (about 170 bytes in all for
//! a watchlist record), and both buffers are reused from one commit to
//! the next. With the shorter batching delay under exactly-once
//! (`clients::EOS_LINGER_MS`), the benchmark's peak RSS fell from 129 to
//! 103 MiB at one thread and from 160 to 126 MiB at two (medians of five
//! rounds each, the two builds in turn), with the same throughput and CPU.
//!
//! Records are sent from where they lie ([`HeldRecords::iter`] hands out
//! [`RecordView`]s), in the order they were held.

use std::sync::Arc;

use super::topic_send::{HeaderView, RecordView};
use crate::record::{OutKind, OutRecord};

/// A length that stands for "none" (a null key, a tombstone).
const ABSENT: u32 = u32::MAX;

/// Records held in order, their bytes packed.
#[derive(Default)]
pub(crate) struct HeldRecords {
    /// Every record's key, value and headers, one record after another.
    bytes: Vec<u8>,
    records: Vec<Held>,
}

/// One held record: what is not bytes, and where its bytes are.
struct Held {
    topic: Arc<str>,
    kind: OutKind,
    partition: Option<i32>,
    timestamp: i64,
    /// Where the key starts in `bytes`; the value follows the key, the
    /// headers follow the value.
    at: usize,
    /// [`ABSENT`] for a null key.
    key_len: u32,
    /// [`ABSENT`] for a tombstone.
    value_len: u32,
    headers: u32,
    headers_len: u32,
}

impl HeldRecords {
    /// Holds `r`, after the records already held. Its allocations are
    /// freed; its bytes are copied into the shared buffer.
    pub(crate) fn push(&mut self, r: OutRecord) {
        let at = self.bytes.len();
        let key_len = self.put(r.key.as_deref());
        let value_len = self.put(r.value.as_deref());
        let headers_start = self.bytes.len();
        for (name, value) in &r.headers {
            pack_header(&mut self.bytes, name.as_bytes(), value);
        }
        self.records.push(Held {
            topic: r.topic,
            kind: r.kind,
            partition: r.partition,
            timestamp: r.timestamp,
            at,
            key_len,
            value_len,
            headers: r.headers.len() as u32,
            headers_len: (self.bytes.len() - headers_start) as u32,
        });
    }

    /// Appends `b`; its length, or [`ABSENT`].
    fn put(&mut self, b: Option<&[u8]>) -> u32 {
        match b {
            None => ABSENT,
            Some(b) => {
                self.bytes.extend_from_slice(b);
                b.len() as u32
            }
        }
    }

    /// How many records are held.
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// The bytes held: keys, values and headers, and the entries beside
    /// them.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.len() + self.records.len() * std::mem::size_of::<Held>()
    }

    /// Forgets every record, keeping the buffers for the next commit.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.records.clear();
    }

    /// The held records in the order they were held, each with why it is
    /// produced.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (RecordView<'_>, &OutKind)> + '_ {
        self.records.iter().map(|h| {
            let mut at = h.at;
            let mut take = |len: u32| {
                if len == ABSENT {
                    return None;
                }
                let b = self.bytes.get(at..at + len as usize);
                at += len as usize;
                // Never short: `push` wrote these lengths with the bytes.
                Some(b.unwrap_or_default())
            };
            let key = take(h.key_len);
            let value = take(h.value_len);
            let headers = take(h.headers_len).unwrap_or_default();
            let view = RecordView {
                topic: &h.topic,
                partition: h.partition,
                key,
                value,
                headers: HeaderView::Packed(PackedHeaders {
                    count: h.headers,
                    bytes: headers,
                }),
                timestamp: h.timestamp,
            };
            (view, &h.kind)
        })
    }
}

/// Appends one header: the name's and the value's lengths (u32, native
/// byte order), then the name and the value.
fn pack_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(&(name.len() as u32).to_ne_bytes());
    out.extend_from_slice(&(value.len() as u32).to_ne_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(value);
}

/// A held record's headers as [`HeldRecords`] packed them.
#[derive(Clone, Copy)]
pub(crate) struct PackedHeaders<'a> {
    count: u32,
    bytes: &'a [u8],
}

impl<'a> PackedHeaders<'a> {
    /// How many headers there are.
    pub(crate) fn len(&self) -> usize {
        self.count as usize
    }

    /// Each header's name and value, in order.
    pub(crate) fn iter(&self) -> PackedIter<'a> {
        PackedIter { rest: self.bytes }
    }
}

/// The headers of [`PackedHeaders::iter`].
pub(crate) struct PackedIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for PackedIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let len =
            |b: &[u8]| -> Option<usize> { Some(u32::from_ne_bytes(b.try_into().ok()?) as usize) };
        let name_len = len(self.rest.get(0..4)?)?;
        let value_len = len(self.rest.get(4..8)?)?;
        let name = self.rest.get(8..8 + name_len)?;
        let value = self.rest.get(8 + name_len..8 + name_len + value_len)?;
        self.rest = &self.rest[8 + name_len + value_len..];
        Some((name, value))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::HeldRecords;
    use crate::record::{OutKind, OutRecord};

    fn record(
        topic: &Arc<str>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        kind: OutKind,
    ) -> OutRecord {
        OutRecord {
            topic: Arc::clone(topic),
            partition: key.map(|k| k.len() as i32),
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect(),
            timestamp: 1_700_000_000_000 + headers.len() as i64,
            kind,
        }
    }

    /// What a view hands out, owned, to compare with the record held.
    fn unpacked(h: &HeldRecords) -> Vec<OutRecord> {
        h.iter()
            .map(|(v, kind)| OutRecord {
                topic: Arc::clone(v.topic),
                partition: v.partition,
                key: v.key.map(<[u8]>::to_vec),
                value: v.value.map(<[u8]>::to_vec),
                headers: v
                    .headers
                    .iter()
                    .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), v.to_vec()))
                    .collect(),
                timestamp: v.timestamp,
                kind: kind.clone(),
            })
            .collect()
    }

    #[test]
    fn should_hand_back_every_record_as_held_in_order_nulls_and_empties_apart() {
        let out: Arc<str> = "out".into();
        let changelog: Arc<str> = "app-counts-changelog".into();
        let records = vec![
            record(
                &out,
                Some(b"k"),
                Some(b"{\"n\":1}"),
                &[("sx.src", b"in:0:7")],
                OutKind::Sink,
            ),
            // a tombstone, a null key, no headers
            record(&out, None, None, &[], OutKind::Sink),
            // empty key and value are not null ones; an empty header value
            record(
                &changelog,
                Some(b""),
                Some(b""),
                &[("a", b""), ("", b"x"), ("sx.up", &[0, 255, 7])],
                OutKind::Changelog(Arc::clone(&changelog)),
            ),
            record(
                &out,
                Some(&[0xff; 300]),
                Some(&[1; 5000]),
                &[("h", &[9; 1000])],
                OutKind::DeadLetter,
            ),
        ];
        let mut h = HeldRecords::default();
        for r in records.clone() {
            h.push(r);
        }
        assert_eq!(h.len(), 4);
        assert_eq!(unpacked(&h), records);
        assert_eq!(h.iter().nth(2).map(|(v, _)| v.headers.len()), Some(3));
    }

    #[test]
    fn should_count_the_bytes_held_and_keep_its_buffers_when_cleared() {
        let t: Arc<str> = "t".into();
        let mut h = HeldRecords::default();
        assert_eq!(h.bytes(), 0);
        let r = record(
            &t,
            Some(b"key"),
            Some(b"value"),
            &[("n", b"v")],
            OutKind::Sink,
        );
        h.push(r.clone());
        let one = h.bytes();
        // key, value and one header (two lengths, its name and value)
        assert!(one >= 3 + 5 + 8 + 2, "{one}");
        h.push(r);
        assert_eq!(h.bytes(), 2 * one);
        let capacity = h.bytes.capacity();
        h.clear();
        assert_eq!((h.len(), h.bytes(), h.iter().count()), (0, 0, 0));
        assert_eq!(h.bytes.capacity(), capacity);
        h.push(record(&t, None, Some(b"again"), &[], OutKind::Sink));
        assert_eq!(unpacked(&h)[0].value.as_deref(), Some(&b"again"[..]));
    }
}
