//! The ids of the source topics the local state was built from.
//!
//! A task's local state names offsets of its input topics: its positions,
//! the marks that keep a replay from counting twice, the restore's filter.
//! A topic deleted and created again under the same name starts its
//! offsets at zero again, so once the new topic holds as many records as
//! the state has processed, nothing about the offsets tells the logs
//! apart, and the task would take the new topic's first records for ones
//! already processed and skip them. Kafka gives every topic an id, new at
//! each creation: the instance records the ids of its source topics in the
//! state directory (`source-topic-ids.json`) and, at each start, refuses
//! state recorded against another id ([`RuntimeError::SourceTopicReplaced`]).
//!
//! librdkafka's metadata call does not return topic ids and the rdkafka
//! crate does not wrap its `DescribeTopics` admin call, so [`describe`]
//! calls it through the C API. A cluster that gives no ids (older than
//! Kafka 2.8), or a topic the user may not describe, is simply not checked.
//!
//! Kafka Streams needs no such record: it keeps no input positions of its
//! own, and the broker deletes the group's offsets with the topic.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::path::Path;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};

use super::error::RuntimeError;

/// The file in the application's state directory.
pub(crate) const FILE: &str = "source-topic-ids.json";

/// Topic name → id (32 hex digits).
pub(crate) type TopicIds = BTreeMap<String, String>;

/// The ids of `topics` as the cluster describes them; topics it does not
/// describe (missing, not authorized, no id) are left out, and so is
/// everything when the call fails or takes longer than `timeout`.
pub(crate) fn describe<C: ClientContext>(
    client: &Client<C>,
    topics: &[String],
    timeout: Duration,
) -> TopicIds {
    let names: Vec<CString> = topics
        .iter()
        .filter_map(|t| CString::new(t.as_str()).ok())
        .collect();
    if names.is_empty() {
        return TopicIds::new();
    }
    let mut ptrs: Vec<*const std::os::raw::c_char> = names.iter().map(|c| c.as_ptr()).collect();
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let mut ids = TopicIds::new();
    // SAFETY: `rk` is the client's live handle. The collection and options
    // are copied by the call and destroyed after it; the queue is ours and
    // destroyed once; the event, and every description read from it, is
    // used only before it is destroyed; the names are NUL-terminated and
    // outlive the collection.
    unsafe {
        let rk = client.native_ptr();
        let collection = rd::rd_kafka_TopicCollection_of_topic_names(ptrs.as_mut_ptr(), ptrs.len());
        let options = rd::rd_kafka_AdminOptions_new(
            rk,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
        );
        let mut errstr = [0 as std::os::raw::c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        let queue = rd::rd_kafka_queue_new(rk);
        rd::rd_kafka_DescribeTopics(rk, collection, options, queue);
        rd::rd_kafka_AdminOptions_destroy(options);
        rd::rd_kafka_TopicCollection_destroy(collection);
        // The request's own timeout ends it first; the extra second only
        // covers the reply's way to the queue.
        let event = rd::rd_kafka_queue_poll(queue, timeout_ms.saturating_add(1_000));
        if !event.is_null() {
            let result = rd::rd_kafka_event_DescribeTopics_result(event);
            let ok = rd::rd_kafka_event_error(event)
                == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR;
            if ok && !result.is_null() {
                let mut count = 0usize;
                let descriptions = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
                for i in 0..count {
                    let d = *descriptions.add(i);
                    let error = rd::rd_kafka_TopicDescription_error(d);
                    if !error.is_null()
                        && rd::rd_kafka_error_code(error)
                            != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                    {
                        continue;
                    }
                    let id = rd::rd_kafka_TopicDescription_topic_id(d);
                    if id.is_null() {
                        continue;
                    }
                    let (high, low) = (
                        rd::rd_kafka_Uuid_most_significant_bits(id),
                        rd::rd_kafka_Uuid_least_significant_bits(id),
                    );
                    if (high, low) == (0, 0) {
                        continue;
                    }
                    let name = CStr::from_ptr(rd::rd_kafka_TopicDescription_name(d));
                    ids.insert(
                        name.to_string_lossy().into_owned(),
                        format!("{:016x}{:016x}", high as u64, low as u64),
                    );
                }
            } else {
                tracing::debug!(
                    "the cluster did not describe the source topics; their ids are not checked"
                );
            }
            rd::rd_kafka_event_destroy(event);
        }
        rd::rd_kafka_queue_destroy(queue);
    }
    ids
}

/// Compares `current` with the ids recorded in the state directory `dir`
/// and records the ones not recorded yet. A topic recorded with another id
/// is an error; a record that cannot be read is replaced (it is a
/// safeguard, not state) with a warning.
pub(crate) fn check_and_record(dir: &Path, current: &TopicIds) -> Result<(), RuntimeError> {
    let path = dir.join(FILE);
    let mut recorded: TopicIds = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "the record of the source topics' ids cannot be read; writing it anew");
            TopicIds::new()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TopicIds::new(),
        Err(e) => {
            return Err(RuntimeError::LocalFile {
                what: "source topic ids",
                path: path.display().to_string(),
                source: e,
            })
        }
    };
    for (topic, id) in current {
        match recorded.get(topic) {
            Some(was) if was != id => {
                return Err(RuntimeError::SourceTopicReplaced {
                    topic: topic.clone(),
                    recorded: was.clone(),
                    current: id.clone(),
                })
            }
            Some(_) => {}
            None => {
                recorded.insert(topic.clone(), id.clone());
            }
        }
    }
    let text = serde_json::to_vec_pretty(&recorded).unwrap_or_default();
    if std::fs::read(&path).ok().as_deref() == Some(text.as_slice()) {
        return Ok(());
    }
    super::state_file::replace(&path, &text, "source topic ids")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(pairs: &[(&str, &str)]) -> TopicIds {
        pairs
            .iter()
            .map(|(t, i)| (t.to_string(), i.to_string()))
            .collect()
    }

    #[test]
    fn should_record_ids_and_accept_them_again() {
        let dir = tempfile::tempdir().unwrap();
        let now = ids(&[("words", "aa"), ("users", "bb")]);
        check_and_record(dir.path(), &now).unwrap();
        check_and_record(dir.path(), &now).unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(text.contains("\"words\": \"aa\""), "{text}");
    }

    #[test]
    fn should_refuse_a_topic_whose_id_changed() {
        let dir = tempfile::tempdir().unwrap();
        check_and_record(dir.path(), &ids(&[("words", "aa")])).unwrap();
        let err = check_and_record(dir.path(), &ids(&[("words", "cc")])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("`words`") && text.contains("aa") && text.contains("cc"),
            "{text}"
        );
        // The record still names the id the state was built from.
        assert!(check_and_record(dir.path(), &ids(&[("words", "cc")])).is_err());
    }

    #[test]
    fn should_add_new_topics_and_keep_those_not_described_this_time() {
        let dir = tempfile::tempdir().unwrap();
        check_and_record(dir.path(), &ids(&[("words", "aa")])).unwrap();
        check_and_record(dir.path(), &ids(&[("users", "bb")])).unwrap();
        assert!(check_and_record(dir.path(), &ids(&[("words", "dd")])).is_err());
        assert!(check_and_record(dir.path(), &ids(&[("users", "ee")])).is_err());
    }

    #[test]
    fn should_write_a_damaged_record_anew() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        check_and_record(dir.path(), &ids(&[("words", "aa")])).unwrap();
        assert!(check_and_record(dir.path(), &ids(&[("words", "ff")])).is_err());
    }
}
