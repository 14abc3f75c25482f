//! Step 5: the watchlist as a declarative topology.
//!
//! Flagged users are counted per company in a sled store whose changelog is
//! the compacted `watchlist` topic itself: every count change is one
//! `{"team","company","flag_count"}` record keyed by the company, and a
//! restart restores the counts from `watchlist`, keeping only this team's
//! records.

use stream_core::serde::StringSerde;
use stream_core::{Topology, TopologyError};
use stream_dsl::prelude::*;

use crate::filters::TeamFilter;
use crate::user::{User, WatchlistEntry};

/// Name of the count store.
pub const STORE: &str = "watchlist-counts";

/// How the counting is spread over instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Re-key by company through a repartition topic: any number of instances.
    Repartition,
    /// No repartition topic (it cannot be created): one instance, one task.
    SingleInstance,
}

/// Topic names (the tutorial's by default).
#[derive(Debug, Clone)]
pub struct Topics {
    /// Input: user registrations.
    pub new_users: String,
    /// Output (and, by default, changelog): the watchlist.
    pub watchlist: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            new_users: "new_users".into(),
            watchlist: "watchlist".into(),
        }
    }
}

/// Where the count store's changes are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changelog {
    /// The `watchlist` topic itself: no second topic, restores read only
    /// this team's records. Another team's later record for the same
    /// company can compact ours away (the topic is keyed by company alone).
    Watchlist,
    /// A private compacted `<app>-watchlist-counts-changelog` topic; the
    /// watchlist is then a plain output. Needs the right to create it.
    Private,
}

/// Everything that shapes the watchlist topology.
#[derive(Debug, Clone)]
pub struct Options {
    /// `team-N`.
    pub team: String,
    /// The team's filter.
    pub filter: &'static TeamFilter,
    /// Count at which a company raises an ALERT.
    pub threshold: i64,
    /// Repartition or single instance.
    pub mode: Mode,
    /// Topic names.
    pub topics: Topics,
    /// Where the count store is changelogged.
    pub changelog: Changelog,
}

impl Options {
    /// The tutorial's defaults for `team`: threshold 3, repartition, the
    /// tutorial's topics, changelog to `watchlist`.
    pub fn new(team: &str, filter: &'static TeamFilter) -> Self {
        Options {
            team: team.into(),
            filter,
            threshold: 3,
            mode: Mode::Repartition,
            topics: Topics::default(),
            changelog: Changelog::Watchlist,
        }
    }
}

/// The watchlist topology.
pub fn topology(o: &Options) -> Result<Topology, TopologyError> {
    let (filter, threshold, team) = (o.filter, o.threshold, o.team.clone());
    let (mine, ours) = (team.clone(), team.clone());
    let grouping = match o.mode {
        Mode::Repartition => Grouped::with_key(StringSerde),
        Mode::SingleInstance => Grouped::with_key(StringSerde).without_repartition(),
    };
    let store = match o.changelog {
        Changelog::Watchlist => Materialized::as_store(STORE).changelog_to(
            &o.topics.watchlist,
            move |company: &String, n: &i64| {
                WatchlistEntry {
                    team: mine.clone(),
                    company: company.clone(),
                    flag_count: *n,
                }
                .to_json()
            },
            move |_, bytes| {
                WatchlistEntry::from_json(bytes)
                    .filter(|e| e.team == ours)
                    .map(|e| e.flag_count)
            },
        ),
        Changelog::Private => Materialized::as_store(STORE),
    };
    let b = StreamsBuilder::new();
    let counts = b
        .source_with(&o.topics.new_users, Consumed::<String, User>::json())
        .filter(move |_, user| filter.matches(user))
        .group_by_with(|_, user| user.company_name.clone(), grouping)
        .count(store)
        .to_stream();
    // One ALERT per company, when its count reaches the threshold (counts
    // grow by one, so every company on the watchlist passes through it; a
    // threshold lowered below a company's restored count raises none).
    // An ALERT for every later count would be a line per flagged user of a
    // listed company: 164,000 lines for a million users, against 2,700.
    counts
        .filter(move |_, n| *n == threshold)
        .for_each(|company, n| tracing::warn!(company = %company, flag_count = n, "ALERT: {company} has {n} flagged users"));
    if o.changelog == Changelog::Private {
        counts
            .map(move |company, n| {
                (
                    company.clone(),
                    WatchlistEntry {
                        team: team.clone(),
                        company,
                        flag_count: n,
                    },
                )
            })
            .to_topic_with(
                &o.topics.watchlist,
                Produced::<String, WatchlistEntry>::json(),
            );
    }
    b.build()
}

impl WatchlistEntry {
    /// The record's JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a record; `None` if it is not a watchlist entry.
    pub fn from_json(bytes: &[u8]) -> Option<WatchlistEntry> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::fake::Generator;
    use crate::filters::for_team;

    fn expected(users: &[User], filter: &TeamFilter) -> BTreeMap<String, i64> {
        let mut m = BTreeMap::new();
        for u in users.iter().filter(|u| filter.matches(u)) {
            *m.entry(u.company_name.clone()).or_insert(0) += 1;
        }
        m
    }

    fn watchlist_of(d: &TestDriver, team: &str) -> BTreeMap<String, i64> {
        d.records("watchlist")
            .into_iter()
            .filter_map(|r| WatchlistEntry::from_json(&r.value?))
            .filter(|e| e.team == team)
            .map(|e| (e.company, e.flag_count))
            .collect()
    }

    fn run(mode: Mode, crash_at: Option<usize>) {
        run_with(mode, Changelog::Watchlist, crash_at, false)
    }

    fn run_with(mode: Mode, changelog: Changelog, crash_at: Option<usize>, foreign: bool) {
        let filter = for_team("team-1").unwrap();
        let topology = topology(&Options {
            mode,
            changelog,
            ..Options::new("team-1", filter)
        })
        .unwrap();
        let mut d = TestDriver::new(topology, "team-1")
            .with_partitions("new_users", 2)
            .with_partitions("watchlist", 2)
            .with_auto_commit(false);
        if mode == Mode::SingleInstance {
            d = d.with_single_task();
        }
        let mut g = Generator::new(11);
        let users: Vec<User> = (0..3_000).map(|_| g.user()).collect();
        // Another team's record for a company must neither restore nor count.
        let other = WatchlistEntry {
            team: "team-2".into(),
            company: users[0].company_name.clone(),
            flag_count: 99,
        };
        d.pipe(
            "watchlist",
            Some(other.company.as_bytes()),
            Some(&other.to_json()),
        );
        for (i, u) in users.iter().enumerate() {
            d.pipe("new_users", None, Some(&serde_json::to_vec(u).unwrap()));
            if i % 50 == 49 {
                d.commit().unwrap();
            }
            if Some(i) == crash_at {
                if foreign {
                    // Another program of the team commits in the team's
                    // group, far ahead of what this one processed.
                    d.commit().unwrap();
                    for p in 0..2 {
                        d.commit_as_another_program("new_users", p, 10_000);
                    }
                }
                d.crash_and_restart();
            }
        }
        d.commit().unwrap();
        let want = expected(&users, filter);
        assert!(
            want.values().any(|&n| n >= 3),
            "the data must put companies on the watchlist"
        );
        assert_eq!(
            watchlist_of(&d, "team-1"),
            want,
            "latest watchlist value per company"
        );
        let store: BTreeMap<String, i64> = d
            .store_entries(STORE)
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8(k).unwrap(),
                    i64::from_be_bytes(v.try_into().unwrap()),
                )
            })
            .collect();
        assert_eq!(store, want, "store contents");
        for r in d.records("watchlist") {
            let e = WatchlistEntry::from_json(&r.value.unwrap()).unwrap();
            assert_eq!(r.key.unwrap(), e.company.as_bytes(), "keyed by the company");
        }
    }

    #[test]
    fn should_publish_exact_counts_per_company() {
        run(Mode::Repartition, None);
    }

    #[test]
    fn should_publish_exact_counts_across_a_crash_in_the_middle() {
        run(Mode::Repartition, Some(317));
    }

    #[test]
    fn should_publish_exact_counts_in_single_instance_mode_across_a_crash() {
        run(Mode::SingleInstance, Some(205));
    }

    #[test]
    fn should_publish_exact_counts_with_a_private_changelog_across_a_crash() {
        run_with(Mode::Repartition, Changelog::Private, Some(401), false);
    }

    #[test]
    fn should_not_trust_an_offset_another_program_committed_in_its_group() {
        run_with(Mode::SingleInstance, Changelog::Watchlist, Some(290), true);
        run_with(Mode::Repartition, Changelog::Watchlist, Some(310), true);
    }

    /// Log lines written while `f` runs on this thread.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn should_alert_once_per_company_when_it_reaches_the_threshold() {
        let filter = for_team("team-1").unwrap();
        let t = topology(&Options::new("team-1", filter)).unwrap();
        let mut d = TestDriver::new(t, "team-1")
            .with_partitions("new_users", 2)
            .with_partitions("watchlist", 2);
        let mut g = Generator::new(11);
        let mut users: Vec<User> = (0..3_000).map(|_| g.user()).collect();
        // Thirty of the flagged users at three companies: ten each.
        for (i, u) in users
            .iter_mut()
            .filter(|u| filter.matches(u))
            .take(30)
            .enumerate()
        {
            u.company_name = format!("Crowded {} Inc", i % 3);
        }
        let log = logged(|| {
            for u in &users {
                d.pipe("new_users", None, Some(&serde_json::to_vec(u).unwrap()));
            }
            d.commit().unwrap();
        });
        let want = expected(&users, filter);
        assert!(
            want.values().any(|&n| n > 3),
            "the data must take a company past the threshold"
        );
        for (company, n) in &want {
            let alerts = log.matches(&format!("ALERT: {company} has ")).count();
            let expected_alerts = usize::from(*n >= 3);
            assert_eq!(alerts, expected_alerts, "{company} ({n} flagged users)");
        }
        assert!(
            log.contains("has 3 flagged users") && !log.contains("has 4 flagged users"),
            "{log}"
        );
    }

    #[test]
    fn should_describe_the_repartition_topic_and_the_changelog() {
        let t = topology(&Options::new("team-1", for_team("team-1").unwrap())).unwrap();
        let text = t.describe("team-1");
        assert!(
            text.contains("team-1-watchlist-counts-repartition"),
            "{text}"
        );
        assert!(
            text.contains("watchlist-counts (changelog: watchlist)"),
            "{text}"
        );
    }

    /// Crash-point testing: the watchlist crashed and restarted after every
    /// commit and every third registration, under both guarantees, ends
    /// with the same store and the same watchlist as a run without crashes.
    #[test]
    fn should_keep_the_watchlist_exact_at_every_crash_point() {
        let filter = for_team("team-1").unwrap();
        let mut g = Generator::new(5);
        let users: Vec<User> = (0..150).map(|_| g.user()).collect();
        let flagged = users.iter().filter(|u| filter.matches(u)).count();
        assert!(flagged >= 5, "the data must flag users: {flagged}");
        for mode in [Mode::Repartition, Mode::SingleInstance] {
            let make = move || {
                let t = topology(&Options {
                    mode,
                    ..Options::new("team-1", filter)
                })
                .unwrap();
                let d = TestDriver::new(t, "team-1")
                    .with_partitions("new_users", 2)
                    .with_partitions("watchlist", 2);
                if mode == Mode::SingleInstance {
                    d.with_single_task()
                } else {
                    d
                }
            };
            let mut test = CrashTest::new(make).commit_every(7).crash_every(3);
            for (i, u) in users.iter().enumerate() {
                test = test.input(CrashInput {
                    topic: "new_users".into(),
                    key: None,
                    value: Some(serde_json::to_vec(u).unwrap()),
                    timestamp: i as i64 + 1,
                });
            }
            let report = test.run().unwrap_or_else(|d| panic!("{mode:?}: {d}"));
            assert!(report.points >= 2 * (150 / 3 + 150 / 7), "{report:?}");
        }
    }

    /// Record lineage: each company's list names exactly the flagged
    /// registrations that made its count (the newest `depth`), by their
    /// offsets in `new_users` — also after a crash that restores the store
    /// from the changelog.
    #[test]
    fn should_trace_each_count_to_its_flagged_registrations() {
        let filter = for_team("team-1").unwrap();
        let depth = 2;
        let t = topology(&Options::new("team-1", filter)).unwrap();
        let mut d = TestDriver::new(t, "team-1")
            .with_partitions("new_users", 2)
            .with_partitions("watchlist", 2)
            .with_auto_commit(false)
            .with_lineage(depth);
        let mut g = Generator::new(23);
        let users: Vec<User> = (0..6_000).map(|_| g.user()).collect();
        for (i, u) in users.iter().enumerate() {
            d.pipe("new_users", None, Some(&serde_json::to_vec(u).unwrap()));
            if i % 97 == 96 {
                d.commit().unwrap();
            }
            if i == 4_500 {
                d.crash_and_restart();
            }
        }
        d.commit().unwrap();
        // Where each registration landed, as the driver stored it.
        let mut flagged: BTreeMap<String, Vec<(i32, i64)>> = BTreeMap::new();
        for p in 0..2 {
            let records = d.records_of("new_users", p);
            for (offset, r) in records.iter().enumerate() {
                let u: User = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
                if filter.matches(&u) {
                    flagged
                        .entry(u.company_name.clone())
                        .or_default()
                        .push((p, offset as i64));
                }
            }
        }
        let check = |d: &TestDriver, when: &str| {
            let mut deep = 0;
            for (company, regs) in &flagged {
                let got: Vec<(i32, i64)> = d
                    .lineage(STORE, company.as_bytes())
                    .into_iter()
                    .inspect(|e| assert_eq!(e.topic, "new_users"))
                    .map(|e| (e.partition, e.offset))
                    .collect();
                let mut got_sorted = got.clone();
                got_sorted.sort();
                let mut want = regs.clone();
                want.sort();
                // The newest `depth` by processing order; within a partition
                // that is offset order.
                if regs.len() <= depth {
                    assert_eq!(got_sorted, want, "{when}: {company}");
                } else {
                    deep += 1;
                    assert_eq!(got.len(), depth, "{when}: {company}");
                    assert!(
                        got_sorted.iter().all(|x| want.contains(x)),
                        "{when}: {company}"
                    );
                }
            }
            assert!(
                deep > 0,
                "some company has more flagged users than the depth"
            );
        };
        check(&d, "after a crash at record 4,500");
        // A full restore from the changelog brings every list back.
        d.crash_and_restart();
        check(&d, "after a restore");
    }
}
