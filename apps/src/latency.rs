//! An exercise beyond the tutorial: how long after registering was each
//! user flagged?
//!
//! A windowed stream–stream join: each action on `actions` (re-keyed by
//! the email it names) meets the registrations on `new_users` (re-keyed
//! by email) whose Kafka timestamps lie within the window (10 minutes by
//! default) of the action's. Both sides wait in changelogged sled stores
//! for the window (plus grace); each pair gives one record on
//! `<actions>-latency`, keyed by email:
//! `{"customer","team","reason","registered_at","flagged_at","latency_ms"}`.
//! An action with no registration in its window gives nothing (an inner
//! join).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use stream_core::serde::JsonSerde;
use stream_core::{Topology, TopologyError};
use stream_dsl::prelude::*;

use crate::user::{Action, User};

/// One flagged user: when they registered and when a team flagged them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagLatency {
    /// The user's email.
    pub customer: String,
    /// The team that flagged them.
    pub team: String,
    /// The action's reason.
    pub reason: String,
    /// The registration's timestamp (ms since the epoch).
    pub registered_at: i64,
    /// The action's timestamp (ms).
    pub flagged_at: i64,
    /// `flagged_at − registered_at` (ms; negative when the action came
    /// first).
    pub latency_ms: i64,
}

/// Where the join reads and writes, and its window.
#[derive(Debug, Clone)]
pub struct LatencyOptions {
    /// Registrations.
    pub new_users: String,
    /// Actions.
    pub actions: String,
    /// Output topic.
    pub output: String,
    /// How far apart a registration and an action may be.
    pub window: Duration,
    /// Grace for out-of-order records.
    pub grace: Duration,
}

/// A side of the join: the record's timestamp and what the output needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stamped {
    at: i64,
    team: String,
    reason: String,
}

/// The flag-latency topology.
///
/// ```
/// use std::time::Duration;
/// use apps::latency::{topology, FlagLatency, LatencyOptions};
/// use stream_dsl::prelude::*;
///
/// let o = LatencyOptions { new_users: "new_users".into(), actions: "actions".into(), output: "latency".into(),
///     window: Duration::from_secs(600), grace: Duration::from_secs(60) };
/// let mut d = TestDriver::new(topology(&o).unwrap(), "app");
/// let mut u = apps::fake::Generator::new(3).user();
/// u.email = "ann@hotmail.com".into();
/// d.pipe_str_at("new_users", "", &serde_json::to_string(&u).unwrap(), 1_000);
/// d.pipe_str_at("actions", "", r#"{"customer":"ann@hotmail.com","type":"email","reason":"hotmail","team":"team-1"}"#, 4_500);
/// let out: Vec<FlagLatency> = d.records("latency").iter()
///     .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap()).collect();
/// assert_eq!((out[0].registered_at, out[0].flagged_at, out[0].latency_ms), (1_000, 4_500, 3_500));
/// ```
pub fn topology(o: &LatencyOptions) -> Result<Topology, TopologyError> {
    let b = StreamsBuilder::new();
    let registrations = b
        .source_with(&o.new_users, Consumed::<String, User>::json())
        .select_key(|_, u| u.email.clone())
        .map_values_with_meta(|m, _| Stamped {
            at: m.timestamp,
            team: String::new(),
            reason: String::new(),
        })
        .with_serdes(StringSerde, JsonSerde::new());
    let actions = b
        .source_with(&o.actions, Consumed::<String, Action>::json())
        .select_key(|_, a| a.customer.clone())
        .map_values_with_meta(|m, a| Stamped {
            at: m.timestamp,
            team: a.team,
            reason: a.reason,
        })
        .with_serdes(StringSerde, JsonSerde::new());
    actions
        .join_stream(
            &registrations,
            JoinWindows::of_time_difference(o.window).grace(o.grace),
            |action, registration| (action.clone(), registration.at),
        )
        .map(|email, (action, registered_at)| {
            (
                email.clone(),
                FlagLatency {
                    customer: email,
                    team: action.team,
                    reason: action.reason,
                    registered_at,
                    flagged_at: action.at,
                    latency_ms: action.at - registered_at,
                },
            )
        })
        .to_topic_with(&o.output, Produced::<String, FlagLatency>::json());
    b.build()
}
