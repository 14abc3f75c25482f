//! The Kafka runtime.
