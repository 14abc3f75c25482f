//! Event time: where a record's timestamp comes from
//! ([`TimestampExtractor`]).
//!
//! The task's stream time (the largest timestamp it has processed) lives
//! in its progress and is checkpointed with its state; see
//! [`Context::stream_time`](crate::Context::stream_time).

use std::fmt;
use std::sync::Arc;

use crate::data::DynData;

/// A user function from (key, value, the record's own timestamp) to the
/// event time in ms, or why there is none.
pub type ExtractFn = Arc<dyn Fn(&DynData, &DynData, i64) -> Result<i64, String> + Send + Sync>;

/// Where a source's records get their event time, as Kafka Streams'
/// `TimestampExtractor`. A negative or missing timestamp is a failed
/// record: dead-lettered (stage `timestamp`) or fatal under fail-fast,
/// never processed with a made-up time.
#[derive(Clone, Default)]
pub enum TimestampExtractor {
    /// The Kafka record's timestamp (create or log-append time) — the default.
    #[default]
    RecordTime,
    /// The wall clock when the record is processed (processing time).
    WallClock,
    /// A function of the deserialized key and value.
    Custom(ExtractFn),
}

impl fmt::Debug for TimestampExtractor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimestampExtractor::RecordTime => "RecordTime",
            TimestampExtractor::WallClock => "WallClock",
            TimestampExtractor::Custom(_) => "Custom",
        })
    }
}

impl TimestampExtractor {
    /// A field of a JSON value: a number of ms since the epoch, or an
    /// RFC 3339 date-time string (`2026-11-27T06:32:26Z`).
    ///
    /// ```
    /// use stream_core::time::TimestampExtractor;
    /// let ex = TimestampExtractor::json_field("at");
    /// let k: stream_core::data::DynData = Box::new(String::new());
    /// let v: stream_core::data::DynData = Box::new(serde_json::json!({"at": "1970-01-01T00:00:01Z"}));
    /// assert_eq!(ex.extract(&k, &v, 0, 0), Ok(1000));
    /// let bad: stream_core::data::DynData = Box::new(serde_json::json!({"at": true}));
    /// assert!(ex.extract(&k, &bad, 0, 0).is_err());
    /// ```
    pub fn json_field(field: &str) -> Self {
        let field = field.to_string();
        TimestampExtractor::Custom(Arc::new(move |_k, v, _ts| {
            let v = v
                .as_ref()
                .as_any()
                .downcast_ref::<serde_json::Value>()
                .ok_or_else(|| "the value is not JSON".to_string())?;
            match v.get(&field) {
                Some(serde_json::Value::Number(n)) => n
                    .as_i64()
                    .ok_or_else(|| format!("field `{field}` is not an integer: {n}")),
                Some(serde_json::Value::String(s)) => parse_rfc3339_ms(s)
                    .ok_or_else(|| format!("field `{field}` is not an RFC 3339 date-time: {s:?}")),
                Some(other) => Err(format!("field `{field}` is not a time: {other}")),
                None => Err(format!("no field `{field}`")),
            }
        }))
    }

    /// The event time of a record: `Err` says why there is none. `now_ms`
    /// is the wall clock.
    pub fn extract(
        &self,
        key: &DynData,
        value: &DynData,
        record_ts: i64,
        now_ms: i64,
    ) -> Result<i64, String> {
        let ts = match self {
            TimestampExtractor::RecordTime => record_ts,
            TimestampExtractor::WallClock => now_ms,
            TimestampExtractor::Custom(f) => f(key, value, record_ts)?,
        };
        if ts < 0 {
            return Err(format!("negative timestamp {ts}"));
        }
        Ok(ts)
    }
}

/// Milliseconds since the epoch of an RFC 3339 date-time.
fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The wall clock in ms since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
