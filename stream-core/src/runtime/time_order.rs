//! Which record a task processes next when it reads more than one topic:
//! the one with the smallest timestamp, as Kafka Streams picks it.
//!
//! A stream–table join, a stream–stream join or a merge reads partition
//! `p` of two or more topics in one task. The consumer hands their records
//! out in the order it fetched them, which says nothing about event time:
//! a click could meet the user's row as it will be an hour later, or miss
//! the row written a second before it. Kafka Streams buffers each
//! partition's records and always processes the head with the smallest
//! timestamp (`PartitionGroup`); this module does the same for the tasks
//! that read two or more topics.
//!
//! **When a partition has nothing buffered** its next record may be
//! earlier than every buffered one, so the task waits, as Kafka Streams
//! does with `max.task.idle.ms` (here
//! [`StreamsConfig::max_task_idle`](super::config::StreamsConfig::max_task_idle)):
//! - while the partition is known to have more records on the broker, or
//!   nothing is known about it yet, the task waits for them;
//! - once it is known to be caught up, the task waits `max_task_idle`
//!   more (default 0: not at all) for a record to appear, and then goes on
//!   with the others ("enforced processing", counted in
//!   `streams_enforced_processing_total`).
//!
//! Kafka Streams learns that a partition is caught up from the lag its
//! consumer reports with each fetch. librdkafka does not report a lag with
//! records, so a partition counts as caught up when
//! - the consumer signalled the end of the partition (a partition-EOF
//!   event, which the group consumer always asks for) after the last record
//!   it handed out, or
//! - the high watermark that librdkafka last fetched is at most the
//!   consumer's position (past transaction markers too) or the offset
//!   after the last record handed out (asked through [`FetchState`] only
//!   when a task would otherwise wait).
//!
//! **Where this differs from Kafka Streams, and why:**
//! - A task that reads one topic (several of its partitions in the
//!   single-instance layout, which Kafka Streams does not have) processes
//!   in the consumer's order: its partitions' timestamps are as unrelated
//!   as two Kafka Streams tasks' are, and holding them costs a copy of every
//!   record.
//! - Kafka Streams waits for a lagging partition as long as it takes. Here
//!   a task waits at most [`MAX_FETCH_WAIT`] for a partition that is not
//!   known to be caught up (a consumer that cannot say so would otherwise
//!   stop the task for good). Either goes on as enforced processing and
//!   says so in the log.
//! - Ties between heads go to the partition listed first (the task's
//!   assignment order), where Kafka Streams' priority queue leaves them
//!   unspecified.
//!
//! **Full partitions pause**, as in Kafka Streams
//! (`buffered.records.per.partition`): a partition with [`PAUSE_AT`]
//! records held stops fetching, so that the partitions its task waits for
//! get the fetches; once half of them are processed it fetches again,
//! from the offset after the last record it handed out (sought
//! explicitly: librdkafka's own resume position can lie one past it after
//! an end-of-partition event). The stream thread applies both
//! ([`TimeOrder::take_flow`]). As a last bound, the records held over a
//! thread's tasks are limited ([`MAX_HELD`], [`MAX_HELD_BYTES`]); beyond,
//! tasks go on without the partitions they wait for (enforced).
//!
//! **Held records and commits.** A held record is not processed, so the
//! task's input position stays before it and no commit covers it. Every
//! path that moves the consumer back (a rollback's rewind, a pause of the
//! process) drops the held records with the seek, and a revocation drops
//! those of the partitions it takes: the consumer reads them again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ffi::CString;
use std::time::{Duration, Instant};

use super::message::Consumed;
use crate::task::TaskId;

/// How long a task waits at most for a partition that has nothing held
/// and is not known to be caught up, before it goes on without it. Long
/// enough for any fetch of a working broker, busy or not (Kafka Streams
/// waits as long as it takes); the bound is for a consumer that cannot
/// tell the partition's end (see the module docs).
pub(crate) const MAX_FETCH_WAIT: Duration = Duration::from_secs(30);

/// Records held of one partition at which it stops fetching (Kafka
/// Streams' `buffered.records.per.partition` is 1,000; librdkafka hands
/// out up to a fetch of 256 KiB per partition at once, some thousands of
/// small records, so a smaller bound would pause at nearly every fetch).
pub(crate) const PAUSE_AT: usize = 10_000;

/// Records held for ordering over all of a thread's tasks, at most;
/// beyond, tasks go on without the partitions they wait for.
pub(crate) const MAX_HELD: usize = 200_000;

/// Bytes held at most (keys, values, headers and [`HELD_OVERHEAD`] per
/// record; see [`MAX_HELD`]).
pub(crate) const MAX_HELD_BYTES: usize = 64 << 20;

/// Memory a held record takes besides its keys, values and headers (the
/// record and its buffers' allocations), counted towards
/// [`MAX_HELD_BYTES`].
const HELD_OVERHEAD: usize = 256;

/// What the consumer knows of a partition's end, asked without a request
/// to the broker.
pub(crate) trait FetchState {
    /// Whether the consumer has handed out everything of `partition` of
    /// `topic` up to the high watermark it last fetched; `next` is the
    /// offset after the last record handed out, if any was since the
    /// task's queues were (re)set.
    fn caught_up(&self, topic: &CString, partition: i32, next: Option<i64>) -> bool;
}

/// What to do with a record offered to [`TimeOrder::offer`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Process it now: its task reads one topic, or nothing could come
    /// before it.
    Now,
    /// It is held; [`TimeOrder::next`] hands it out in its turn.
    Held,
}

/// A held record: a copy of what processing reads. Its buffers are kept
/// for the next record held once it is processed.
#[derive(Default)]
pub(crate) struct Held {
    topic: String,
    partition: i32,
    offset: i64,
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    header_count: usize,
}

impl Held {
    /// Copies `msg` in, reusing this record's buffers.
    fn fill(&mut self, msg: &impl Consumed) {
        self.topic.clear();
        self.topic.push_str(msg.topic());
        self.partition = msg.partition();
        self.offset = msg.offset();
        self.timestamp = msg.timestamp_ms();
        copy_into(&mut self.key, msg.key());
        copy_into(&mut self.value, msg.value());
        self.header_count = msg.copy_headers(&mut self.headers);
    }

    /// Bytes of key, value and headers, and the record's own overhead.
    fn bytes(&self) -> usize {
        HELD_OVERHEAD
            + self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self.headers[..self.header_count]
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// `from` into `into`, keeping `into`'s buffer where there is one.
fn copy_into(into: &mut Option<Vec<u8>>, from: Option<&[u8]>) {
    match from {
        Some(b) => {
            let buf = into.get_or_insert_with(Vec::new);
            buf.clear();
            buf.extend_from_slice(b);
        }
        None => *into = None,
    }
}

impl Consumed for Held {
    fn topic(&self) -> &str {
        &self.topic
    }
    fn partition(&self) -> i32 {
        self.partition
    }
    fn offset(&self) -> i64 {
        self.offset
    }
    fn timestamp_ms(&self) -> i64 {
        self.timestamp
    }
    fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }
    fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }
    fn copy_headers(&self, into: &mut Vec<(String, Vec<u8>)>) -> usize {
        let n = self.header_count;
        if into.len() < n {
            into.resize_with(n, Default::default);
        }
        for ((k, v), (hk, hv)) in into.iter_mut().zip(&self.headers[..n]) {
            k.clear();
            k.push_str(hk);
            v.clear();
            v.extend_from_slice(hv);
        }
        n
    }
}

/// One input partition of an ordered task.
struct Part {
    topic: String,
    /// The topic's name for librdkafka's watermark lookup.
    c_topic: CString,
    partition: i32,
    records: VecDeque<Held>,
    /// The offset after the last record handed out for this partition
    /// since the task's queues were (re)set.
    next: Option<i64>,
    /// Known to have nothing more on the broker after `next`.
    caught_up: bool,
    /// Since when the task has been waiting on this partition while it had
    /// nothing held (set when first found so; cleared by a record).
    empty_since: Option<Instant>,
    /// Paused for holding [`PAUSE_AT`] records.
    paused: bool,
}

impl Part {
    fn new(topic: &str, partition: i32) -> Part {
        Part {
            topic: topic.to_string(),
            c_topic: CString::new(topic).unwrap_or_default(),
            partition,
            records: VecDeque::new(),
            next: None,
            caught_up: false,
            empty_since: None,
            paused: false,
        }
    }

    fn is(&self, topic: &str, partition: i32) -> bool {
        self.partition == partition && self.topic == topic
    }

    /// Forgets what is held and known: the consumer reads the partition
    /// again from the task's position.
    fn reset(&mut self, spare: &mut Vec<Held>) {
        spare.extend(self.records.drain(..));
        self.next = None;
        self.caught_up = false;
        self.empty_since = None;
        self.paused = false;
    }
}

/// The partitions of one ordered task, in assignment order.
struct Queues {
    parts: Vec<Part>,
    /// The round ([`TimeOrder::begin_round`]) in which the task was found
    /// waiting: nothing it waits on changes within a round.
    waiting_in: u64,
}

impl Queues {
    /// Adds the partitions of `parts` not here yet (the single-instance
    /// layout assigns a task's partitions incrementally).
    fn sync(&mut self, parts: &[(String, i32)]) {
        if self.parts.len() >= parts.len() {
            return;
        }
        for (t, p) in parts {
            if !self.parts.iter().any(|q| q.is(t, *p)) {
                self.parts.push(Part::new(t, *p));
            }
        }
    }

    fn index(&self, topic: &str, partition: i32) -> Option<usize> {
        self.parts.iter().position(|q| q.is(topic, partition))
    }

    /// Whether every partition but `except` is empty and known to be
    /// caught up, so that a record of `except` needs to wait for none
    /// (with no idle time configured).
    fn others_done(&self, except: usize) -> bool {
        self.parts
            .iter()
            .enumerate()
            .all(|(i, q)| i == except || (q.records.is_empty() && q.caught_up))
    }

    fn held(&self) -> usize {
        self.parts.iter().map(|q| q.records.len()).sum()
    }
}

/// Why a task went on without a partition it was waiting on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enforced {
    /// The partition was caught up and `max.task.idle.ms` passed.
    IdlePassed,
    /// The partition was not known to be caught up within
    /// [`MAX_FETCH_WAIT`].
    FetchWait,
    /// The held records reached their bound.
    HeldBound,
}

/// The ordering of a stream thread's tasks that read more than one topic.
pub(crate) struct TimeOrder {
    /// `max.task.idle.ms`; `None`: ordering off (the consumer's order).
    idle: Option<Duration>,
    tasks: BTreeMap<TaskId, Queues>,
    /// Tasks known to read one topic (their records are never held); kept
    /// until the assignment changes.
    plain: BTreeSet<TaskId>,
    /// Buffers of records processed, for the next held ones.
    spare: Vec<Held>,
    held: usize,
    held_bytes: usize,
    /// Partitions to pause and to resume (at an offset), for the stream
    /// thread to apply ([`Self::take_flow`]).
    flow: Flow,
    /// Partitions paused here and not resumed yet.
    paused: Vec<(String, i32)>,
    /// The current round of [`Self::next`] calls (see [`Self::begin_round`]).
    round: u64,
    /// Times a task went on without a partition it waited on.
    enforced: u64,
    /// When a warning about it was last logged.
    last_warning: Option<Instant>,
}

/// Partitions whose fetching changes: applied by the stream thread.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Flow {
    /// Partitions to pause.
    pub(crate) pause: Vec<(String, i32)>,
    /// Partitions to resume, each at the offset to fetch next.
    pub(crate) resume: Vec<(String, i32, i64)>,
}

/// Buffers of processed records kept for reuse, at most.
const SPARE: usize = 1024;

/// How often a warning about enforced processing is logged at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

impl TimeOrder {
    /// Ordering with `max.task.idle.ms` = `idle`; `None` turns it off.
    pub(crate) fn new(idle: Option<Duration>) -> TimeOrder {
        TimeOrder {
            idle,
            tasks: BTreeMap::new(),
            plain: BTreeSet::new(),
            spare: Vec::new(),
            held: 0,
            held_bytes: 0,
            flow: Flow::default(),
            paused: Vec::new(),
            round: 1,
            enforced: 0,
            last_warning: None,
        }
    }

    /// Whether ordering is on (else every record is processed at once).
    pub(crate) fn is_on(&self) -> bool {
        self.idle.is_some()
    }

    /// Records held now.
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// The queues of task `id`, reading `parts`, if it reads more than one
    /// topic (made on first use).
    fn queues<'q>(
        tasks: &'q mut BTreeMap<TaskId, Queues>,
        plain: &mut BTreeSet<TaskId>,
        id: TaskId,
        parts: &[(String, i32)],
    ) -> Option<&'q mut Queues> {
        if plain.contains(&id) {
            return None;
        }
        let q = match tasks.entry(id) {
            std::collections::btree_map::Entry::Occupied(q) => q.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                let first = &parts.first()?.0;
                if parts.iter().all(|(t, _)| t == first) {
                    plain.insert(id);
                    return None;
                }
                v.insert(Queues {
                    parts: Vec::new(),
                    waiting_in: 0,
                })
            }
        };
        q.sync(parts);
        Some(q)
    }

    /// A record of task `id` (whose input partitions are `parts`) comes
    /// in: either processed now or held.
    pub(crate) fn offer(
        &mut self,
        id: TaskId,
        parts: &[(String, i32)],
        msg: &impl Consumed,
    ) -> Offer {
        let Some(idle) = self.idle else {
            return Offer::Now;
        };
        if parts.len() < 2 && !self.tasks.contains_key(&id) {
            return Offer::Now;
        }
        let zero_idle = idle.is_zero();
        let Some(q) = Self::queues(&mut self.tasks, &mut self.plain, id, parts) else {
            return Offer::Now;
        };
        let Some(i) = q.index(msg.topic(), msg.partition()) else {
            return Offer::Now;
        };
        q.waiting_in = 0;
        let now = zero_idle && q.parts[i].records.is_empty() && q.others_done(i);
        let part = &mut q.parts[i];
        part.next = Some(msg.offset() + 1);
        part.caught_up = false;
        part.empty_since = None;
        if now {
            return Offer::Now;
        }
        let mut held = self.spare.pop().unwrap_or_default();
        held.fill(msg);
        self.held += 1;
        self.held_bytes += held.bytes();
        part.records.push_back(held);
        if part.records.len() >= PAUSE_AT && !part.paused {
            part.paused = true;
            let tp = (part.topic.clone(), part.partition);
            self.flow.pause.push(tp.clone());
            self.paused.push(tp);
        }
        Offer::Held
    }

    /// The consumer reached the end of `partition` of `topic`, read by
    /// task `id` over `parts`, after the records it handed out before.
    pub(crate) fn caught_up(
        &mut self,
        id: TaskId,
        parts: &[(String, i32)],
        topic: &str,
        partition: i32,
    ) {
        if self.idle.is_none() {
            return;
        }
        if let Some(q) = Self::queues(&mut self.tasks, &mut self.plain, id, parts) {
            if let Some(i) = q.index(topic, partition) {
                // An idle time counts from when the partition is known to
                // be caught up.
                q.parts[i].caught_up = true;
                q.parts[i].empty_since = None;
                q.waiting_in = 0;
            }
        }
    }

    /// Starts a round of [`next`](Self::next) calls, made without records
    /// or partition ends coming in between: a task found waiting is not
    /// looked at again within the round.
    pub(crate) fn begin_round(&mut self) {
        self.round += 1;
    }

    /// The next record to process over every ordered task, if any may go
    /// now; `now` is the wall clock for idle deadlines. Give it back with
    /// [`recycle`](Self::recycle) once processed.
    pub(crate) fn next(&mut self, now: Instant, fetched: &impl FetchState) -> Option<Held> {
        let idle = self.idle?;
        let over = self.held > MAX_HELD || self.held_bytes > MAX_HELD_BYTES;
        for (id, q) in self.tasks.iter_mut() {
            if q.waiting_in == self.round || q.parts.iter().all(|p| p.records.is_empty()) {
                continue;
            }
            let mut first: Option<(usize, i64)> = None;
            let mut waiting = None;
            let mut enforced = None;
            for (i, p) in q.parts.iter_mut().enumerate() {
                if let Some(h) = p.records.front() {
                    if first.is_none_or(|(_, ts)| h.timestamp < ts) {
                        first = Some((i, h.timestamp));
                    }
                    continue;
                }
                if !p.caught_up && fetched.caught_up(&p.c_topic, p.partition, p.next) {
                    p.caught_up = true;
                    p.empty_since = None;
                }
                let since = *p.empty_since.get_or_insert(now);
                let (limit, why) = if p.caught_up {
                    (idle, Enforced::IdlePassed)
                } else {
                    (MAX_FETCH_WAIT, Enforced::FetchWait)
                };
                if now.duration_since(since) < limit {
                    waiting.get_or_insert(i);
                } else if !(p.caught_up && idle.is_zero()) {
                    enforced.get_or_insert((i, why));
                }
            }
            let Some((i, _)) = first else {
                continue;
            };
            if let Some(w) = waiting {
                if !over {
                    q.waiting_in = self.round;
                    continue;
                }
                enforced = Some((w, Enforced::HeldBound));
            }
            if let Some((w, why)) = enforced {
                self.enforced += 1;
                note_enforced(*id, &q.parts[w], why, &mut self.last_warning);
            }
            let part = &mut q.parts[i];
            let held = part.records.pop_front()?;
            if part.paused && part.records.len() < PAUSE_AT / 2 {
                part.paused = false;
                if let Some(next) = part.next {
                    self.flow
                        .resume
                        .push((part.topic.clone(), part.partition, next));
                }
                self.paused.retain(|(t, n)| !part.is(t, *n));
            }
            self.held -= 1;
            self.held_bytes = self.held_bytes.saturating_sub(held.bytes());
            return Some(held);
        }
        None
    }

    /// Takes a processed record's buffers back for the next held one.
    pub(crate) fn recycle(&mut self, held: Held) {
        if self.spare.len() < SPARE {
            self.spare.push(held);
        }
    }

    /// The pauses and resumptions to apply now.
    pub(crate) fn take_flow(&mut self) -> Flow {
        std::mem::take(&mut self.flow)
    }

    /// The partitions paused here, forgotten: a rewind has just sought
    /// them to the tasks' positions, and they are to fetch from there.
    pub(crate) fn take_paused(&mut self) -> Vec<(String, i32)> {
        let mut paused = std::mem::take(&mut self.paused);
        // Resumptions not applied yet: those partitions are paused too.
        paused.extend(self.flow.resume.drain(..).map(|(t, n, _)| (t, n)));
        paused
    }

    /// Times a task went on without a partition it waited on (Kafka
    /// Streams' enforced processing), since the last call.
    pub(crate) fn take_enforced(&mut self) -> u64 {
        std::mem::take(&mut self.enforced)
    }

    /// The consumer goes back to the tasks' positions (a rollback): drops
    /// every held record and what is known of the partitions.
    /// Partitions paused here stay paused until [`take_paused`](Self::take_paused).
    pub(crate) fn reset(&mut self) {
        for q in self.tasks.values_mut() {
            for p in &mut q.parts {
                p.reset(&mut self.spare);
            }
        }
        self.flow.pause.clear();
        self.spare.truncate(SPARE);
        self.held = 0;
        self.held_bytes = 0;
    }

    /// Partitions taken away (or their tasks closed): their held records
    /// are dropped; tasks left without partitions are forgotten. The
    /// assignment changed, so which tasks read one topic is worked out
    /// again.
    pub(crate) fn forget(&mut self, revoked: &[(String, i32)]) {
        self.plain.clear();
        for q in self.tasks.values_mut() {
            q.parts.retain_mut(|p| {
                let gone = revoked.iter().any(|(t, n)| p.is(t, *n));
                if gone {
                    p.reset(&mut self.spare);
                }
                !gone
            });
        }
        self.tasks.retain(|_, q| !q.parts.is_empty());
        let gone = |t: &String, n: &i32| revoked.iter().any(|(rt, rn)| rt == t && rn == n);
        self.paused.retain(|(t, n)| !gone(t, n));
        self.flow.pause.retain(|(t, n)| !gone(t, n));
        self.flow.resume.retain(|(t, n, _)| !gone(t, n));
        self.spare.truncate(SPARE);
        self.held = self.tasks.values().map(Queues::held).sum();
        self.held_bytes = self
            .tasks
            .values()
            .flat_map(|q| q.parts.iter())
            .flat_map(|p| p.records.iter())
            .map(Held::bytes)
            .sum();
    }

    /// Partitions were added: which tasks read one topic is worked out
    /// again.
    pub(crate) fn assigned(&mut self) {
        self.plain.clear();
    }
}

/// Logs that task `id` went on without `part`: at debug when the idle
/// time passed (what the user configured), else at warn, at most every
/// [`WARN_EVERY`].
fn note_enforced(id: TaskId, part: &Part, why: Enforced, last: &mut Option<Instant>) {
    if why != Enforced::IdlePassed {
        if last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        *last = Some(Instant::now());
    }
    match why {
        Enforced::IdlePassed => tracing::debug!(
            task = %id,
            topic = %part.topic,
            partition = part.partition,
            "processing on without a caught-up partition after max.task.idle.ms; a record it receives later may be out of timestamp order"
        ),
        Enforced::FetchWait => tracing::warn!(
            task = %id,
            topic = %part.topic,
            partition = part.partition,
            wait_s = MAX_FETCH_WAIT.as_secs(),
            "processing on without a partition not known to be caught up; its records may come out of timestamp order"
        ),
        Enforced::HeldBound => tracing::warn!(
            task = %id,
            topic = %part.topic,
            partition = part.partition,
            "records held for timestamp order reached their bound: processing on without a partition it waits for"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rec {
        topic: &'static str,
        partition: i32,
        offset: i64,
        ts: i64,
    }

    impl Consumed for Rec {
        fn topic(&self) -> &str {
            self.topic
        }
        fn partition(&self) -> i32 {
            self.partition
        }
        fn offset(&self) -> i64 {
            self.offset
        }
        fn timestamp_ms(&self) -> i64 {
            self.ts
        }
        fn key(&self) -> Option<&[u8]> {
            Some(b"k")
        }
        fn value(&self) -> Option<&[u8]> {
            Some(self.topic.as_bytes())
        }
        fn copy_headers(&self, into: &mut Vec<(String, Vec<u8>)>) -> usize {
            if into.is_empty() {
                into.push(Default::default());
            }
            into[0] = ("h".into(), self.offset.to_string().into_bytes());
            1
        }
    }

    /// No watermark known.
    struct NoMarks;
    impl FetchState for NoMarks {
        fn caught_up(&self, _: &CString, _: i32, _: Option<i64>) -> bool {
            false
        }
    }

    /// Every partition's high watermark at `.0`; no position known.
    struct Marks(i64);
    impl FetchState for Marks {
        fn caught_up(&self, _: &CString, _: i32, next: Option<i64>) -> bool {
            next.is_some_and(|n| n >= self.0)
        }
    }

    const ID: TaskId = TaskId {
        subtopology: 0,
        partition: 0,
    };

    fn parts() -> Vec<(String, i32)> {
        vec![("table".into(), 0), ("stream".into(), 0)]
    }

    fn rec(topic: &'static str, offset: i64, ts: i64) -> Rec {
        Rec {
            topic,
            partition: 0,
            offset,
            ts,
        }
    }

    /// Drains what may go now, as (topic, offset).
    fn drain(o: &mut TimeOrder, now: Instant, marks: &impl FetchState) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        o.begin_round();
        while let Some(h) = o.next(now, marks) {
            out.push((h.topic.clone(), h.offset));
            o.recycle(h);
        }
        out
    }

    #[test]
    fn should_hand_out_the_smallest_timestamp_first_across_topics() {
        let mut o = TimeOrder::new(Some(Duration::ZERO));
        let p = parts();
        // The consumer hands out the table's later update first.
        for r in [rec("table", 0, 10), rec("table", 1, 30)] {
            assert_eq!(o.offer(ID, &p, &r), Offer::Held);
        }
        for r in [rec("stream", 0, 20), rec("stream", 1, 40)] {
            assert_eq!(o.offer(ID, &p, &r), Offer::Held);
        }
        let now = Instant::now();
        // The stream's last record waits: the table is not known to be
        // caught up.
        assert_eq!(
            drain(&mut o, now, &NoMarks),
            vec![
                ("table".into(), 0),
                ("stream".into(), 0),
                ("table".into(), 1)
            ]
        );
        assert_eq!(o.held(), 1);
        o.caught_up(ID, &p, "table", 0);
        assert_eq!(drain(&mut o, now, &NoMarks), vec![("stream".into(), 1)]);
        assert_eq!(o.held(), 0);
        assert_eq!(o.take_enforced(), 0, "nothing was enforced");
    }

    #[test]
    fn should_process_at_once_what_nothing_can_come_before() {
        let mut o = TimeOrder::new(Some(Duration::ZERO));
        let p = parts();
        o.caught_up(ID, &p, "table", 0);
        assert_eq!(o.offer(ID, &p, &rec("stream", 0, 5)), Offer::Now);
        assert_eq!(o.offer(ID, &p, &rec("stream", 1, 6)), Offer::Now);
        // A table record: the stream is not known to be caught up now.
        assert_eq!(o.offer(ID, &p, &rec("table", 0, 7)), Offer::Held);
        let now = Instant::now();
        assert!(drain(&mut o, now, &NoMarks).is_empty());
        // librdkafka's watermark says the stream has nothing after offset 1.
        assert_eq!(drain(&mut o, now, &Marks(2)), vec![("table".into(), 0)]);
        // With records left on the broker, it waits.
        assert_eq!(o.offer(ID, &p, &rec("stream", 2, 8)), Offer::Held);
        assert_eq!(o.offer(ID, &p, &rec("table", 1, 9)), Offer::Held);
        assert_eq!(drain(&mut o, now, &Marks(10)), vec![("stream".into(), 2)]);
        assert_eq!(o.held(), 1);
    }

    #[test]
    fn should_never_hold_records_of_a_task_that_reads_one_topic() {
        let mut o = TimeOrder::new(Some(Duration::ZERO));
        let p = vec![("in".to_string(), 0), ("in".to_string(), 1)];
        let r = Rec {
            topic: "in",
            partition: 1,
            offset: 0,
            ts: 1,
        };
        assert_eq!(o.offer(ID, &p, &r), Offer::Now);
        let mut off = TimeOrder::new(None);
        assert_eq!(off.offer(ID, &parts(), &rec("stream", 0, 1)), Offer::Now);
    }

    #[test]
    fn should_wait_the_idle_time_for_a_caught_up_partition() {
        let idle = Duration::from_millis(100);
        let mut o = TimeOrder::new(Some(idle));
        let p = parts();
        o.caught_up(ID, &p, "table", 0);
        assert_eq!(o.offer(ID, &p, &rec("stream", 0, 5)), Offer::Held);
        let t0 = Instant::now();
        assert!(
            drain(&mut o, t0, &NoMarks).is_empty(),
            "within the idle time"
        );
        assert_eq!(
            drain(&mut o, t0 + idle, &NoMarks),
            vec![("stream".into(), 0)]
        );
        assert_eq!(o.take_enforced(), 1);
    }

    #[test]
    fn should_go_on_without_a_partition_nothing_is_known_of_after_the_fetch_wait() {
        let mut o = TimeOrder::new(Some(Duration::ZERO));
        let p = parts();
        assert_eq!(o.offer(ID, &p, &rec("stream", 0, 5)), Offer::Held);
        let t0 = Instant::now();
        assert!(drain(&mut o, t0, &NoMarks).is_empty());
        assert_eq!(
            drain(&mut o, t0 + MAX_FETCH_WAIT, &NoMarks),
            vec![("stream".into(), 0)]
        );
        assert_eq!(o.take_enforced(), 1);
    }

    #[test]
    fn should_go_on_once_the_held_records_reach_their_bound() {
        let mut o = TimeOrder::new(Some(Duration::ZERO));
        let p = parts();
        for i in 0..=MAX_HELD as i64 {
            assert_eq!(o.offer(ID, &p, &rec("stream", i, i)), Offer::Held);
        }
        let now = Instant::now();
        let first = o.next(now, &NoMarks).map(|h| h.offset);
        assert_eq!(first, Some(0));
        assert_eq!(o.take_enforced(), 1);
        assert!(o.next(now, &NoMarks).is_none(), "back under the bound");
    }

    #[test]
    fn should_pause_a_full_partition_and_resume_it_after_its_last_record() {
        let mut o = TimeOrder::new(Some(Duration::ZERO));
        let p = parts();
        for i in 0..PAUSE_AT as i64 + 5 {
            assert_eq!(o.offer(ID, &p, &rec("stream", i, i)), Offer::Held);
        }
        let stream = ("stream".to_string(), 0);
        assert_eq!(
            o.take_flow(),
            Flow {
                pause: vec![stream.clone()],
                resume: vec![]
            },
            "paused once, at the bound"
        );
        o.caught_up(ID, &p, "table", 0);
        let now = Instant::now();
        let mut n = 0;
        while o.take_flow().resume.is_empty() {
            assert!(o.next(now, &NoMarks).is_some());
            n += 1;
        }
        assert_eq!(o.held(), PAUSE_AT / 2 - 1, "resumed once half is processed");
        assert!(n > 0);
        // A rewind before the resumption is applied: the partition is to
        // be resumed from where the rewind sought it.
        for i in 0..PAUSE_AT as i64 {
            o.offer(ID, &p, &rec("stream", 100_000 + i, 100_000 + i));
        }
        o.reset();
        assert_eq!(o.take_paused(), vec![stream]);
        assert_eq!(o.take_flow(), Flow::default(), "nothing left to apply");
    }

    #[test]
    fn should_hand_back_a_pending_resumption_as_paused_on_rewind() {
        let mut o = TimeOrder::new(Some(Duration::ZERO));
        let p = parts();
        for i in 0..PAUSE_AT as i64 {
            o.offer(ID, &p, &rec("stream", i, i));
        }
        o.caught_up(ID, &p, "table", 0);
        let now = Instant::now();
        while o.held() >= PAUSE_AT / 2 {
            o.next(now, &NoMarks);
        }
        // Paused, resumption queued but not applied.
        o.reset();
        assert_eq!(o.take_paused(), vec![("stream".to_string(), 0)]);
        let flow = o.take_flow();
        assert!(flow.resume.is_empty() && flow.pause.is_empty());
    }

    #[test]
    fn should_keep_a_held_record_whole() {
        let mut o = TimeOrder::new(Some(Duration::ZERO));
        let p = parts();
        assert_eq!(o.offer(ID, &p, &rec("stream", 7, 70)), Offer::Held);
        o.caught_up(ID, &p, "table", 0);
        let h = o.next(Instant::now(), &NoMarks).expect("ready");
        assert_eq!(
            (h.topic(), h.partition(), h.offset(), h.timestamp_ms()),
            ("stream", 0, 7, 70)
        );
        assert_eq!(
            (h.key(), h.value()),
            (Some(&b"k"[..]), Some(&b"stream"[..]))
        );
        let mut headers = Vec::new();
        assert_eq!(h.copy_headers(&mut headers), 1);
        assert_eq!(headers[0], ("h".to_string(), b"7".to_vec()));
        o.recycle(h);
        // A reused buffer carries nothing over: a record without a key.
        let mut again = o.spare.pop().expect("kept");
        again.fill(&NoKey);
        assert_eq!((again.key(), again.value()), (None, Some(&b""[..])));
    }

    struct NoKey;
    impl Consumed for NoKey {
        fn topic(&self) -> &str {
            "t"
        }
        fn partition(&self) -> i32 {
            0
        }
        fn offset(&self) -> i64 {
            0
        }
        fn timestamp_ms(&self) -> i64 {
            0
        }
        fn key(&self) -> Option<&[u8]> {
            None
        }
        fn value(&self) -> Option<&[u8]> {
            Some(b"")
        }
        fn copy_headers(&self, _: &mut Vec<(String, Vec<u8>)>) -> usize {
            0
        }
    }

    #[test]
    fn should_drop_held_records_on_reset_and_revocation() {
        let mut o = TimeOrder::new(Some(Duration::ZERO));
        let p = parts();
        o.offer(ID, &p, &rec("stream", 0, 1));
        o.offer(ID, &p, &rec("table", 0, 2));
        o.caught_up(ID, &p, "table", 0);
        o.reset();
        assert_eq!(o.held(), 0);
        // What was known is forgotten too: the table is not caught up.
        assert_eq!(o.offer(ID, &p, &rec("stream", 0, 1)), Offer::Held);
        o.offer(ID, &p, &rec("table", 0, 2));
        o.forget(&[("table".to_string(), 0)]);
        assert_eq!(o.held(), 1, "the stream's record stays");
        o.forget(&[("stream".to_string(), 0)]);
        assert_eq!(o.held(), 0);
        assert!(o.tasks.is_empty());
    }
}
