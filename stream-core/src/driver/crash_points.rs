//! Crash-point testing: runs a topology over the same inputs once per crash
//! point — crashing and restarting after every commit and after every k-th
//! record — under both processing guarantees, and reports the first point
//! where the outputs or the stores differ from an oracle.
//!
//! The way to test a custom processor: a processor that keeps state in a
//! plain field instead of a store, forgets to forward what it restored, or
//! writes outside its store passes every ordinary test and fails here, with
//! the crash point named.
//!
//! What is compared with the oracle (by default a run without crashes):
//!
//! - every store of the topology, entry by entry;
//! - every topic the topology writes to that is not internal (sinks, the
//!   dead-letter topic), key by key within each partition — the order
//!   Kafka keeps; records of different keys from different tasks interleave
//!   in no defined order: under exactly-once, record by record (key, value,
//!   timestamp; the crash's aborted records are gone, as for a
//!   `read_committed` reader); under at-least-once, every record of the
//!   reference must appear, in order (records after the last commit may
//!   appear twice — that is the guarantee — but none may be missing or
//!   changed), and the latest value per key must be equal.
//!
//! ```
//! use std::sync::Arc;
//! use stream_core::driver::{CrashTest, TestDriver};
//! use stream_core::graph::{TopicRef, TopologyBuilder};
//! use stream_core::serde::{erase, StringSerde};
//!
//! let topology = || {
//!     let s = || erase::<String>(Arc::new(StringSerde));
//!     let mut b = TopologyBuilder::new();
//!     let src = b.add_source("in", vec![TopicRef::External("in".into())], s(), s());
//!     b.add_sink("out", TopicRef::External("out".into()), s(), s(), None, &[src]);
//!     b.build().unwrap()
//! };
//! let report = CrashTest::new(move || TestDriver::new(topology(), "app"))
//!     .input_str("in", "k", "v", 1)
//!     .input_str("in", "k", "w", 2)
//!     .commit_every(1)
//!     .run()
//!     .unwrap();
//! assert_eq!(report.points, 8); // 2 records × (mid-interval + after commit) × 2 guarantees
//! ```

use std::collections::BTreeMap;
use std::fmt;

use super::{StoredRecord, TestDriver};
use crate::graph::{dead_letter_topic_name, NodeKind, TopicRef};

/// One input record of a crash test.
#[derive(Debug, Clone, PartialEq)]
pub struct CrashInput {
    /// Topic it is piped into.
    pub topic: String,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub value: Option<Vec<u8>>,
    /// Record timestamp (ms).
    pub timestamp: i64,
}

/// The processing guarantee a crash point was run under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashGuarantee {
    /// Output since the last commit stays after a crash; its input is
    /// processed again.
    AtLeastOnce,
    /// Output since the last commit is aborted with the crash.
    ExactlyOnce,
}

/// Where a run crashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashPoint {
    /// The guarantee of the run.
    pub guarantee: CrashGuarantee,
    /// Input records processed when the process died (1-based count).
    pub after_records: usize,
    /// Whether it died right after a commit (else: with work uncommitted).
    pub after_commit: bool,
}

impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}, crash after input record {} ({})",
            self.guarantee,
            self.after_records,
            if self.after_commit {
                "right after a commit"
            } else {
                "before its commit"
            }
        )
    }
}

/// The first crash point whose result differs from the oracle.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    /// Where the run crashed.
    pub point: CrashPoint,
    /// What differs, e.g. ``store `counts` key "acme": expected "3", got "1"``.
    pub what: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.point, self.what)
    }
}

impl std::error::Error for Divergence {}

/// What a passing crash test checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashReport {
    /// Crash points run (both guarantees together).
    pub points: usize,
}

/// Expected latest value per key of named topics, from the inputs.
pub type LatestOracle = Box<dyn Fn(&[CrashInput]) -> BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>>;

/// A crash-point test: runs a topology over the same inputs once per crash
/// point (crashing and restarting after every commit and after every k-th
/// record) under both processing guarantees, and reports the first point
/// where the outputs or the stores differ from an oracle.
pub struct CrashTest<F: Fn() -> TestDriver> {
    make: F,
    inputs: Vec<CrashInput>,
    commit_every: usize,
    crash_every: usize,
    oracle: Option<LatestOracle>,
    guarantees: Vec<CrashGuarantee>,
}

impl<F: Fn() -> TestDriver> CrashTest<F> {
    /// A test of the drivers `make` returns (a fresh one per run: the
    /// topology, partition counts and policies under test).
    pub fn new(make: F) -> Self {
        CrashTest {
            make,
            inputs: Vec::new(),
            commit_every: 5,
            crash_every: 1,
            oracle: None,
            guarantees: vec![CrashGuarantee::AtLeastOnce, CrashGuarantee::ExactlyOnce],
        }
    }

    /// Runs under these guarantees only (default: both, at-least-once
    /// first).
    pub fn guarantees(mut self, guarantees: &[CrashGuarantee]) -> Self {
        self.guarantees = guarantees.to_vec();
        self
    }

    /// Adds an input record.
    pub fn input(mut self, record: CrashInput) -> Self {
        self.inputs.push(record);
        self
    }

    /// Adds an input record with UTF-8 key and value.
    pub fn input_str(self, topic: &str, key: &str, value: &str, timestamp: i64) -> Self {
        self.input(CrashInput {
            topic: topic.to_string(),
            key: Some(key.as_bytes().to_vec()),
            value: Some(value.as_bytes().to_vec()),
            timestamp,
        })
    }

    /// Commits after every `n` input records (default 5), as a commit
    /// interval does; crashes right after each commit are tested.
    pub fn commit_every(mut self, n: usize) -> Self {
        self.commit_every = n.max(1);
        self
    }

    /// Crashes also before the commit after every `k`-th record (default
    /// 1: after every record).
    pub fn crash_every(mut self, k: usize) -> Self {
        self.crash_every = k.max(1);
        self
    }

    /// Compares the latest value per key of the returned topics with what
    /// `oracle` computes from the inputs, instead of with a run without
    /// crashes (stores are then not compared).
    pub fn expect_latest(
        mut self,
        oracle: impl Fn(&[CrashInput]) -> BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>> + 'static,
    ) -> Self {
        self.oracle = Some(Box::new(oracle));
        self
    }

    /// Runs every crash point under both guarantees; the first divergence
    /// is the error. A run without crashes is checked against a function
    /// oracle too.
    pub fn run(&self) -> Result<CrashReport, Divergence> {
        let mut points = 0;
        for &guarantee in &self.guarantees {
            let reference = self.play(guarantee, None);
            if let Some(oracle) = &self.oracle {
                let expected = oracle(&self.inputs);
                let point = CrashPoint {
                    guarantee,
                    after_records: 0,
                    after_commit: false,
                };
                compare_latest(&expected, &reference).map_err(|what| Divergence {
                    point,
                    what: format!("without any crash: {what}"),
                })?;
            }
            for i in 1..=self.inputs.len() {
                let mut at = Vec::new();
                if i % self.crash_every == 0 {
                    at.push(false);
                }
                if i % self.commit_every == 0 {
                    at.push(true);
                }
                for after_commit in at {
                    let point = CrashPoint {
                        guarantee,
                        after_records: i,
                        after_commit,
                    };
                    let crashed = self.play(guarantee, Some(point));
                    points += 1;
                    let verdict = match &self.oracle {
                        Some(oracle) => compare_latest(&oracle(&self.inputs), &crashed),
                        None => compare(&reference, &crashed, guarantee),
                    };
                    verdict.map_err(|what| Divergence { point, what })?;
                }
            }
        }
        Ok(CrashReport { points })
    }

    /// Pipes every input, committing every `commit_every` records, crashing
    /// once at `crash`; returns what the run left.
    fn play(&self, guarantee: CrashGuarantee, crash: Option<CrashPoint>) -> Outcome {
        let mut d = (self.make)()
            .with_auto_commit(false)
            .with_exactly_once(guarantee == CrashGuarantee::ExactlyOnce);
        for (n, r) in self.inputs.iter().enumerate() {
            let i = n + 1;
            d.pipe_at(&r.topic, r.key.as_deref(), r.value.as_deref(), r.timestamp);
            let boundary = i % self.commit_every == 0;
            if let Some(c) = crash.filter(|c| c.after_records == i) {
                if c.after_commit && boundary {
                    commit(&mut d);
                }
                d.crash_and_restart();
                if !c.after_commit && boundary {
                    commit(&mut d);
                }
            } else if boundary {
                commit(&mut d);
            }
        }
        commit(&mut d);
        Outcome::of(&d)
    }
}

fn commit(d: &mut TestDriver) {
    if let Err(e) = d.commit() {
        panic!("commit failed: {e}");
    }
}

/// What a run left: stores and output topics (partition by partition).
struct Outcome {
    stores: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
    topics: BTreeMap<String, Vec<Vec<StoredRecord>>>,
}

impl Outcome {
    fn of(d: &TestDriver) -> Outcome {
        let stores = d
            .topology
            .stores()
            .iter()
            .map(|s| (s.name.clone(), d.store_entries(&s.name)))
            .collect();
        let mut names: Vec<String> = d
            .topology
            .nodes()
            .iter()
            .filter_map(|n| match &n.kind {
                NodeKind::Sink {
                    topic: TopicRef::External(t),
                    ..
                } => Some(t.clone()),
                _ => None,
            })
            .collect();
        names.push(dead_letter_topic_name(d.app()));
        let topics = names
            .into_iter()
            .map(|t| {
                let parts = d.topics.get(&t).cloned().unwrap_or_default();
                (t, parts)
            })
            .collect();
        Outcome { stores, topics }
    }

    fn latest(&self, topic: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut m = BTreeMap::new();
        for r in self.topics.get(topic).into_iter().flatten().flatten() {
            let k = r.key.clone().unwrap_or_default();
            match &r.value {
                Some(v) => m.insert(k, v.clone()),
                None => m.remove(&k),
            };
        }
        m
    }
}

fn show(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

fn show_opt(bytes: Option<&Vec<u8>>) -> String {
    bytes.map_or_else(|| "nothing".to_string(), |b| show(b))
}

/// The first key where two maps differ, described.
fn first_difference(
    what: &str,
    expected: &BTreeMap<Vec<u8>, Vec<u8>>,
    got: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<(), String> {
    let keys = expected.keys().chain(got.keys());
    for k in keys {
        if expected.get(k) != got.get(k) {
            return Err(format!(
                "{what} key {}: expected {}, got {}",
                show(k),
                show_opt(expected.get(k)),
                show_opt(got.get(k))
            ));
        }
    }
    Ok(())
}

fn compare_latest(
    expected: &BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
    got: &Outcome,
) -> Result<(), String> {
    for (topic, want) in expected {
        first_difference(&format!("topic `{topic}`"), want, &got.latest(topic))?;
    }
    Ok(())
}

fn same_record(a: &StoredRecord, b: &StoredRecord) -> bool {
    a.key == b.key && a.value == b.value && a.timestamp == b.timestamp
}

fn describe(r: &StoredRecord) -> String {
    format!(
        "{} → {} @{}",
        show(r.key.as_deref().unwrap_or_default()),
        show_opt(r.value.as_ref()),
        r.timestamp
    )
}

/// A partition's records, key by key, in order: the order Kafka keeps (the
/// order of different keys in a partition fed by several tasks is not
/// defined, under either framework).
fn per_key(records: &[StoredRecord]) -> BTreeMap<Vec<u8>, Vec<&StoredRecord>> {
    let mut m: BTreeMap<Vec<u8>, Vec<&StoredRecord>> = BTreeMap::new();
    for r in records {
        m.entry(r.key.clone().unwrap_or_default())
            .or_default()
            .push(r);
    }
    m
}

fn compare(reference: &Outcome, got: &Outcome, guarantee: CrashGuarantee) -> Result<(), String> {
    for (store, want) in &reference.stores {
        let have = got.stores.get(store).cloned().unwrap_or_default();
        first_difference(&format!("store `{store}`"), want, &have)?;
    }
    for (topic, want) in &reference.topics {
        let empty = Vec::new();
        let have = got.topics.get(topic).unwrap_or(&empty);
        for (p, want_p) in want.iter().enumerate() {
            let have_p = per_key(have.get(p).map_or(&[][..], |v| &v[..]));
            for (key, want_k) in per_key(want_p) {
                let have_k = have_p.get(&key).map_or(&[][..], |v| &v[..]);
                let at = format!("topic `{topic}` partition {p} key {}", show(&key));
                match guarantee {
                    CrashGuarantee::ExactlyOnce => {
                        let diff = want_k
                            .iter()
                            .zip(have_k)
                            .position(|(a, b)| !same_record(a, b));
                        if let Some(i) = diff {
                            return Err(format!(
                                "{at}, its record {i}: expected {}, got {}",
                                describe(want_k[i]),
                                describe(have_k[i])
                            ));
                        }
                        if want_k.len() != have_k.len() {
                            return Err(format!(
                                "{at}: expected {} records, got {} (read_committed)",
                                want_k.len(),
                                have_k.len()
                            ));
                        }
                    }
                    CrashGuarantee::AtLeastOnce => {
                        let mut rest = have_k.iter();
                        for (i, w) in want_k.iter().enumerate() {
                            if !rest.any(|h| same_record(w, h)) {
                                return Err(format!(
                                    "{at}: its record {i} in the run without crashes ({}) is missing or out of order",
                                    describe(w)
                                ));
                            }
                        }
                    }
                }
            }
        }
        first_difference(
            &format!("topic `{topic}` (latest per key)"),
            &reference.latest(topic),
            &got.latest(topic),
        )?;
    }
    Ok(())
}
