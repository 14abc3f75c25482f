//! The production error handler: a sink record the brokers refuse for
//! what it is (too large, invalid) rather than for where it goes.
//!
//! Under the default policy such a record is logged, counted
//! (`streams_production_errors_total`) and written, with its destination,
//! key, value and the error, as a JSON line to
//! `<state.dir>/<application.id>/production-errors.jsonl` (not to the
//! dead-letter topic, which would refuse a too-large record the same way);
//! processing goes on. Under fail-fast the application stops with the same
//! information. Every other delivery failure (authorization, changelogs,
//! records refused inside a transaction) stops the application: skipping
//! those would make state and outputs disagree.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;

use rdkafka::types::RDKafkaErrorCode;

use super::error::RuntimeError;

/// A record the brokers refused.
#[derive(Debug, Clone)]
pub(crate) struct Rejected {
    pub(crate) topic: String,
    pub(crate) partition: Option<i32>,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) error: String,
}

/// Errors about the record itself, which retrying cannot fix.
pub(crate) fn is_record_error(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::MessageBatchTooLarge
        )
    )
}

impl Rejected {
    /// One line for a person, no payload.
    pub(crate) fn describe(&self) -> String {
        format!(
            "a record to topic `{}`{} was refused: {}",
            self.topic,
            self.partition
                .map(|p| format!(" partition {p}"))
                .unwrap_or_default(),
            self.error
        )
    }

    /// Appends the record to the production-error file.
    pub(crate) fn park(&self, path: &Path) -> Result<(), RuntimeError> {
        let line = serde_json::json!({
            "topic": self.topic,
            "partition": self.partition,
            "error": self.error,
            "key": self.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
            "value_bytes": self.value.as_ref().map(Vec::len),
            "value": self.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
        });
        append_json_line(path, "production-error", &line)
    }
}

/// Appends `line` to the file at `path` (created if missing), one JSON
/// document per line; `what` names the file in the error.
pub(crate) fn append_json_line(
    path: &Path,
    what: &'static str,
    line: &serde_json::Value,
) -> Result<(), RuntimeError> {
    let fail = |source: std::io::Error| RuntimeError::LocalFile {
        what,
        path: path.display().to_string(),
        source,
    };
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(fail)?;
    writeln!(f, "{line}").map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_park_a_refused_record_as_one_json_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("production-errors.jsonl");
        let r = Rejected {
            topic: "out".into(),
            partition: Some(1),
            key: Some(b"k".to_vec()),
            value: Some(vec![b'x'; 3]),
            error: "Broker: Message size too large".into(),
        };
        r.park(&path).unwrap();
        r.park(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["topic"], "out");
        assert_eq!(lines[0]["value_bytes"], 3);
        assert!(r.describe().contains("topic `out` partition 1 was refused"));
        assert!(is_record_error(Some(RDKafkaErrorCode::MessageSizeTooLarge)));
        assert!(!is_record_error(Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
        )));
    }
}
