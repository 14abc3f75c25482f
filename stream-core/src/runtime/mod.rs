//! The Kafka runtime: runs a [`Topology`](crate::graph::Topology) against a
//! cluster with per-partition tasks, sled state, changelogs and restore.
//!
//! | module | what |
//! |---|---|
//! | [`config`] | [`StreamsConfig`], named after Kafka Streams' settings |
//! | `connect` | the first connection, and errors that name its likely cause |
//! | [`topics`] | partition planning, internal topic creation and checks |
//! | `broker_listing` | after creating topics, waiting until every broker lists them |
//! | `engine` | one stream thread: records through its tasks, assignment and revocation |
//! | `tasks` | task ownership: the tasks a thread runs, the task for a record, opening tasks |
//! | `time_order` | a task that reads several topics: its records in timestamp order (`max.task.idle.ms`) |
//! | `producer` | sending, delivery tracking, refused records, the dead-letter file, transactions |
//! | `topic_send` | handing a record to librdkafka with a topic handle kept per topic |
//! | `commit` | the commit protocol, in order |
//! | [`ownership`] | commit metadata: which committed offsets this application may trust |
//! | `restore` | restoring newly assigned tasks from their changelogs |
//! | `production` | the production error handler: records the brokers refuse |
//! | `progress` | restore progress: a terminal progress bar or log lines |
//! | `clients` | the Kafka clients of a stream thread and their settings |
//! | `retired_ids` | exactly-once: transactional ids of stream threads no longer run, settled at start |
//! | `state_file` | the small records kept beside the stores, each replaced whole |
//! | [`batch`] | reading an assigned consumer's records a batch at a time |
//! | `raw_headers` | a consumed record's headers, copied out of the record's own bytes |
//! | [`app`] | [`KafkaStreams`]: start, poll loop, rebalances, shutdown |
//! | [`status`] | task states and restore progress for callers |
//! | [`error`] | [`RuntimeError`] |
//! | [`handle`] | read access to a running instance's stores (for the HTTP server) |

pub mod app;
pub mod assignment;
pub mod batch;
pub(crate) mod broker_listing;
pub(crate) mod client_log;
pub(crate) mod clients;
pub(crate) mod commit;
pub mod config;
pub(crate) mod connect;
pub(crate) mod engine;
pub mod error;
pub(crate) mod global;
pub mod handle;
mod held;
pub(crate) mod input_queue;
pub(crate) mod input_watch;
pub(crate) mod log_offsets;
mod message;
pub mod ownership;
pub(crate) mod pause_watch;
pub(crate) mod polled_producer;
pub(crate) mod producer;
pub(crate) mod production;
pub(crate) mod progress;
mod raw_headers;
pub mod reset;
pub(crate) mod restore;
pub(crate) mod retired_ids;
pub mod standby;
pub(crate) mod state_file;
pub mod status;
pub(crate) mod tasks;
pub(crate) mod time_order;
pub(crate) mod topic_ids;
pub(crate) mod topic_send;
pub mod topics;

pub use app::{shutdown_signal, KafkaStreams};
pub use clients::RESTORE_FETCH_SETTINGS;
pub use config::{
    KafkaClient, ProcessingGuarantee, Secret, Security, StreamsConfig,
    DEFAULT_MAX_BUFFERED_CHANGES, DEFAULT_TRANSACTION_TIMEOUT,
};
pub use error::RuntimeError;
pub use status::{RestoreRecord, RuntimeStatus, TaskState};
