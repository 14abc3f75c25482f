//! Whose offsets are these? Every offset this application commits carries
//! metadata naming the application and its topology, so that an offset
//! committed by another program in the same consumer group (the classroom
//! gives a team one group for every program) is recognised and not trusted.
//!
//! The tag is `stream-rs/1 app=<application.id> topology=<16 hex digits>`.
//! The topology part is a hash of what the committed positions must agree
//! with: every sub-topology's source topics, stores, changelog topics and
//! sink topics. Renaming a processor or adding a stateless step in the
//! middle keeps it; adding a store, a source or a sink changes it, and the
//! first start after such a change resumes from local state (see
//! [`crate::task::Task::begin_restore`]), which is exact.
//!
//! Kafka Streams differs: it commits metadata too (the commit timestamp and
//! a task id) but never reads it back to decide where to resume, so a
//! foreign commit in its group silently moves its input position.

use rdkafka::TopicPartitionList;

use crate::graph::{Changelog, Topology};
pub use crate::task::CommittedOffset;

/// Prefix of every tag; a tag that does not start with it is foreign.
const TAG_PREFIX: &str = "stream-rs/1 ";

/// The tag this application writes into every offset commit's metadata.
pub fn commit_tag(topology: &Topology, application_id: &str) -> String {
    format!(
        "{TAG_PREFIX}app={application_id} topology={:016x}",
        fingerprint(topology, application_id)
    )
}

/// A stable hash (FNV-1a, 64 bits) of the parts of `topology` that the
/// committed positions depend on.
pub fn fingerprint(topology: &Topology, application_id: &str) -> u64 {
    let mut h = Fnv::default();
    h.write(application_id.as_bytes());
    for st in topology.subtopologies() {
        h.write(b"|sub");
        for t in &st.sources {
            h.write(b"|src:");
            h.write(t.resolve(application_id).as_bytes());
        }
        for t in &st.sinks {
            h.write(b"|sink:");
            h.write(t.resolve(application_id).as_bytes());
        }
        for s in &st.stores {
            h.write(b"|store:");
            h.write(s.as_bytes());
            if let Some(spec) = topology.store(s) {
                match &spec.changelog {
                    Changelog::Disabled => h.write(b":nolog"),
                    _ => h.write(
                        spec.changelog_topic(application_id)
                            .unwrap_or_default()
                            .as_bytes(),
                    ),
                }
            }
        }
    }
    h.0
}

/// FNV-1a: tiny, stable across releases and platforms (unlike `std`'s hasher).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The committed offsets in `tpl` (from `committed_offsets`), keyed by
/// topic and partition, classified against `tag`. Partitions without a
/// committed offset are left out. Keys are partitions. Metadata that is not UTF-8 (another
/// client may write anything) is read lossily instead of failing.
pub fn committed_from(
    tpl: &TopicPartitionList,
    tag: &str,
) -> std::collections::BTreeMap<crate::coordinates::TopicPartition, CommittedOffset> {
    let mut out = std::collections::BTreeMap::new();
    // SAFETY: `tpl` owns a valid librdkafka list of `cnt` elements for the
    // lifetime of this borrow; each element's topic is a NUL-terminated C
    // string and its metadata, when non-null, points to `metadata_size`
    // bytes, as librdkafka documents for rd_kafka_topic_partition_t.
    unsafe {
        let list = &*tpl.ptr();
        for i in 0..list.cnt.max(0) as usize {
            let e = &*list.elems.add(i);
            let Some(offset) = (e.offset >= 0).then_some(e.offset) else {
                continue;
            };
            let topic = std::ffi::CStr::from_ptr(e.topic).to_string_lossy();
            let metadata = if e.metadata.is_null() || e.metadata_size == 0 {
                String::new()
            } else {
                let bytes = std::slice::from_raw_parts(e.metadata as *const u8, e.metadata_size);
                String::from_utf8_lossy(bytes).into_owned()
            };
            out.insert(
                crate::coordinates::TopicPartition::new(&topic, e.partition),
                CommittedOffset::classify(offset, &metadata, tag),
            );
        }
    }
    out
}

/// Writes `tag` into the metadata of every element of `tpl`.
pub fn stamp(tpl: &mut TopicPartitionList, tag: &str) {
    for mut e in tpl.elements() {
        e.set_metadata(tag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_trust_only_its_own_tag() {
        let tag = "stream-rs/1 app=team-1 topology=00000000000000aa";
        assert!(CommittedOffset::classify(5, tag, tag).ours);
        let other = CommittedOffset::classify(5, "", tag);
        assert!(!other.ours);
        assert!(other.committer().contains("no commit metadata"));
        let flagger =
            CommittedOffset::classify(5, "stream-rs/1 app=team-1 topology=00000000000000bb", tag);
        assert!(!flagger.ours);
        assert!(flagger.committer().contains("topology=00000000000000bb"));
    }

    #[test]
    fn should_hash_stably() {
        let mut h = Fnv::default();
        h.write(b"a");
        // FNV-1a of "a", from the reference tables.
        assert_eq!(h.0, 0xaf63_dc4c_8601_ec8c);
    }
}
