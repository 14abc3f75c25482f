//! The headers the framework writes, as small types with encode/decode.
//!
//! - `sx.src` ([`SourceMark`]) on changelog records: the input record that
//!   caused the change. Restore applies a change only if its input was
//!   committed, so replaying the uncommitted tail never counts twice.
//! - `sx.up` ([`UpstreamMark`]) on repartition records: the upstream input
//!   and the record's sequence among that input's outputs. The downstream
//!   task drops a repartition record it has already applied, so an upstream
//!   replay after a crash is not counted twice.
//!
//! Both are binary, big-endian: offset (8 bytes), [sequence (4 bytes),]
//! partition (4 bytes), then the topic's UTF-8 bytes.

use crate::error::Origin;

/// Header naming the input record behind a changelog record.
pub const SOURCE_HEADER: &str = "sx.src";
/// Header naming the upstream input behind a repartition record.
pub const UPSTREAM_HEADER: &str = "sx.up";

/// The value of header `name` in `headers`, if present.
pub fn find<'h>(headers: &'h [(String, Vec<u8>)], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

/// `sx.src`: the input record behind a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceMark<'a> {
    /// Input offset.
    pub offset: i64,
    /// Input partition.
    pub partition: i32,
    /// Input topic.
    pub topic: &'a str,
}

impl<'a> SourceMark<'a> {
    /// The mark of `origin`.
    pub fn of(origin: &'a Origin) -> Self {
        SourceMark {
            offset: origin.offset,
            partition: origin.partition,
            topic: &origin.topic,
        }
    }

    /// The header's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(12 + self.topic.len());
        v.extend_from_slice(&self.offset.to_be_bytes());
        v.extend_from_slice(&self.partition.to_be_bytes());
        v.extend_from_slice(self.topic.as_bytes());
        v
    }

    /// Reads the header's bytes; `None` if they are not a mark.
    pub fn decode(b: &'a [u8]) -> Option<Self> {
        if b.len() < 12 {
            return None;
        }
        Some(SourceMark {
            offset: i64::from_be_bytes(b[0..8].try_into().ok()?),
            partition: i32::from_be_bytes(b[8..12].try_into().ok()?),
            topic: std::str::from_utf8(&b[12..]).ok()?,
        })
    }

    /// The mark in `headers`, if any.
    pub fn find(headers: &'a [(String, Vec<u8>)]) -> Option<Self> {
        find(headers, SOURCE_HEADER).and_then(Self::decode)
    }
}

/// `sx.up`: the upstream input behind a repartition record, and the
/// record's sequence among the outputs of that input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamMark<'a> {
    /// Upstream input offset.
    pub offset: i64,
    /// Sequence among the outputs of that input.
    pub seq: u32,
    /// Upstream input partition.
    pub partition: i32,
    /// Upstream input topic.
    pub topic: &'a str,
}

impl<'a> UpstreamMark<'a> {
    /// The header's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16 + self.topic.len());
        v.extend_from_slice(&self.offset.to_be_bytes());
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&self.partition.to_be_bytes());
        v.extend_from_slice(self.topic.as_bytes());
        v
    }

    /// Reads the header's bytes; `None` if they are not a mark.
    pub fn decode(b: &'a [u8]) -> Option<Self> {
        if b.len() < 16 {
            return None;
        }
        Some(UpstreamMark {
            offset: i64::from_be_bytes(b[0..8].try_into().ok()?),
            seq: u32::from_be_bytes(b[8..12].try_into().ok()?),
            partition: i32::from_be_bytes(b[12..16].try_into().ok()?),
            topic: std::str::from_utf8(&b[16..]).ok()?,
        })
    }

    /// The mark in `headers`, if any.
    pub fn find(headers: &'a [(String, Vec<u8>)]) -> Option<Self> {
        find(headers, UPSTREAM_HEADER).and_then(Self::decode)
    }

    /// `(offset, seq)`: marks of one upstream partition order by this.
    pub fn position(&self) -> (i64, u32) {
        (self.offset, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_round_trip_framework_headers() {
        let o = Origin {
            topic: "in".into(),
            partition: 3,
            offset: 42,
        };
        let src = SourceMark::of(&o);
        assert_eq!(SourceMark::decode(&src.encode()), Some(src));
        let up = UpstreamMark {
            offset: 42,
            seq: 7,
            partition: 3,
            topic: "in",
        };
        assert_eq!(UpstreamMark::decode(&up.encode()), Some(up));
        assert_eq!(SourceMark::decode(b"short"), None);
        assert_eq!(UpstreamMark::decode(b"still too short"), None);
        let headers = vec![(SOURCE_HEADER.to_string(), src.encode())];
        assert_eq!(SourceMark::find(&headers), Some(src));
        assert_eq!(UpstreamMark::find(&headers), None);
    }
}
