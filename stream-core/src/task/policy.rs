//! What a record that fails to deserialize or process does.

/// What to do with a record that fails to deserialize or process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorPolicy {
    /// Log it, count it, park it in the dead-letter topic, and go on.
    #[default]
    DeadLetter,
    /// Stop with the error.
    FailFast,
}

impl std::str::FromStr for ErrorPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "dead-letter" | "continue" => Ok(ErrorPolicy::DeadLetter),
            "fail-fast" | "fail" => Ok(ErrorPolicy::FailFast),
            other => Err(format!(
                "unknown error policy `{other}` (dead-letter, fail-fast)"
            )),
        }
    }
}

/// What a late record (one a window aggregation dropped because its
/// windows had closed) does. Late records never stop the task: late data
/// is expected in event-time processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LatePolicy {
    /// Count it, log it and park it in the dead-letter topic with headers
    /// naming its window and the stream time that made it late.
    #[default]
    DeadLetter,
    /// Count it and log it.
    LogOnly,
}

impl std::str::FromStr for LatePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "dead-letter" => Ok(LatePolicy::DeadLetter),
            "log-only" | "log" => Ok(LatePolicy::LogOnly),
            other => Err(format!(
                "unknown late-record policy `{other}` (dead-letter, log-only)"
            )),
        }
    }
}

/// Where a record failed: the `dlq.stage` header of its dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureStage {
    /// Its key or value could not be deserialized.
    Deserialization,
    /// Its timestamp could not be extracted, or is negative.
    Timestamp,
    /// An operator failed on it.
    Processing,
    /// A window aggregation dropped it as late.
    Late,
}

impl FailureStage {
    /// The stage's name as written in headers and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureStage::Deserialization => "deserialization",
            FailureStage::Timestamp => "timestamp",
            FailureStage::Processing => "processing",
            FailureStage::Late => "late",
        }
    }
}

impl std::fmt::Display for FailureStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_parse_the_policies_and_name_the_choices_otherwise() {
        assert_eq!("fail_fast".parse(), Ok(ErrorPolicy::FailFast));
        assert_eq!("Dead-Letter".parse(), Ok(ErrorPolicy::DeadLetter));
        let e = "ignore".parse::<ErrorPolicy>().unwrap_err();
        assert!(e.contains("dead-letter, fail-fast"), "{e}");
    }
}
