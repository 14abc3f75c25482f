//! An exercise beyond the tutorial: the watchlist per time window.
//!
//! Flagged users per company per tumbling window (1 minute, 10 s grace by
//! default), by the registration's event time; one final count per
//! company and window once the window closes (emit-final, the pending
//! counts kept in a changelogged sled store), and an ALERT for each window
//! in which a company reaches the threshold. Finals go to
//! `<watchlist>-windowed` as `{"team","company","window_start",
//! "window_end","flag_count"}` keyed by company.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use stream_core::serde::StringSerde;
use stream_core::{Topology, TopologyError};
use stream_dsl::prelude::*;

use crate::filters::TeamFilter;
use crate::user::User;

/// The window store's name.
pub const STORE: &str = "windowed-watchlist-counts";

/// One window's final count for one company.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowCount {
    /// `team-N`.
    pub team: String,
    /// The company.
    pub company: String,
    /// Window start (ms since the epoch, inclusive).
    pub window_start: i64,
    /// Window end (ms, exclusive).
    pub window_end: i64,
    /// Flagged users registered in the window.
    pub flag_count: i64,
}

/// What shapes the windowed watchlist.
#[derive(Debug, Clone)]
pub struct WindowedOptions {
    /// `team-N`.
    pub team: String,
    /// The team's filter.
    pub filter: &'static TeamFilter,
    /// Flagged users in one window at which a company raises an ALERT.
    pub threshold: i64,
    /// Window size.
    pub size: Duration,
    /// Grace for late registrations.
    pub grace: Duration,
    /// Input topic.
    pub new_users: String,
    /// Output topic of the final counts.
    pub output: String,
}

/// The windowed watchlist topology.
///
/// ```
/// use std::time::Duration;
/// use apps::filters::for_team;
/// use apps::windowed_watchlist::{topology, WindowedOptions, WindowCount};
/// use stream_dsl::prelude::*;
///
/// let o = WindowedOptions {
///     team: "team-1".into(),
///     filter: for_team("team-1").unwrap(),
///     threshold: 2,
///     size: Duration::from_secs(60),
///     grace: Duration::from_secs(10),
///     new_users: "new_users".into(),
///     output: "watchlist-windowed".into(),
/// };
/// let mut d = TestDriver::new(topology(&o).unwrap(), "app");
/// let mut users = apps::fake::Generator::new(7);
/// let mut user = |email: &str, company: &str| {
///     let mut u = users.user();
///     (u.email, u.company_name) = (email.to_string(), company.to_string());
///     serde_json::to_string(&u).unwrap()
/// };
/// let a = user("a@hotmail.com", "Acme");
/// let b2 = user("b@hotmail.com", "Acme");
/// let c = user("c@hotmail.com", "Initech");
/// d.pipe_str_at("new_users", "", &a, 1_000);
/// d.pipe_str_at("new_users", "", &b2, 2_000);
/// // Stream time is the counting task's: only flagged users move it.
/// d.pipe_str_at("new_users", "", &c, 70_000); // closes [0, 60 s)
/// let out: Vec<WindowCount> = d.records("watchlist-windowed").iter()
///     .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap()).collect();
/// assert_eq!(out.len(), 1);
/// assert_eq!((out[0].company.as_str(), out[0].flag_count, out[0].window_start), ("Acme", 2, 0));
/// ```
pub fn topology(o: &WindowedOptions) -> Result<Topology, TopologyError> {
    let (filter, threshold, team) = (o.filter, o.threshold, o.team.clone());
    let b = StreamsBuilder::new();
    let finals = b
        .source_with(&o.new_users, Consumed::<String, User>::json())
        .filter(move |_, user| filter.matches(user))
        .group_by_with(
            |_, user| user.company_name.clone(),
            Grouped::with_key(StringSerde),
        )
        .windowed_by(TimeWindows::of_size(o.size).grace(o.grace))
        .count(Materialized::as_store(STORE))
        .suppress(Suppressed::until_window_closes())
        .to_stream();
    finals
        .filter(move |_, n| *n >= threshold)
        .for_each(|w, n| {
            tracing::warn!(company = %w.key, window_start = w.window.start, flag_count = n, "ALERT: {} had {n} flagged users in the window starting at {} ms", w.key, w.window.start)
        });
    finals
        .map(move |w, n| {
            (
                w.key.clone(),
                WindowCount {
                    team: team.clone(),
                    company: w.key,
                    window_start: w.window.start,
                    window_end: w.window.end,
                    flag_count: n,
                },
            )
        })
        .to_topic_with(&o.output, Produced::<String, WindowCount>::json());
    b.build()
}
