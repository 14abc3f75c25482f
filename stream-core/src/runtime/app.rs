//! [`KafkaStreams`]: configure, start, run until shutdown.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};

use super::batch::{BatchBuffer, Batched, BATCH};
use super::clients::{self, ThreadIds};
use super::config::{ProcessingGuarantee, StreamsConfig};
use super::engine::Engine;
use super::error::RuntimeError;
use super::handle::{InstanceHandle, StoreAccess};
use super::input_queue::InputQueue;
use super::input_watch::{self, InputReport, InputWatch};
use super::producer::{DeliveryState, OutputProducer};
use super::restore::ChangelogReader;
use super::status::RuntimeStatus;
use super::topics::{self, ErrorCapture, TopicPlan};
use crate::graph::Topology;
use crate::store::StateDir;
use crate::task::TaskConfig;

fn lock(m: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    m.lock()
}

/// Consumer context: runs the engine's rebalance handling inside the poll.
struct StreamContext {
    engine: Arc<Mutex<Engine>>,
    capture: ErrorCapture,
    /// Whether the group rebalances cooperatively: from the configured
    /// strategy at first, then as librdkafka reports it at each
    /// assignment. A revocation uses this and does not ask librdkafka:
    /// `rd_kafka_rebalance_protocol` can block forever when called from
    /// the revocation that closing the consumer runs (librdkafka #4041;
    /// seen here as a shutdown that never ended).
    cooperative: AtomicBool,
    /// The queue assigned partitions forward their records to, once the
    /// consumer exists; taken away (and destroyed) before the consumer
    /// closes.
    input: Mutex<Option<Arc<InputQueue>>>,
    /// What librdkafka logged about the inputs (a topic deleted, a
    /// partition's log reset), for the stream thread to look into.
    watch: InputWatch,
}

impl StreamContext {
    /// Whether `strategy` (`partition.assignment.strategy`) names only
    /// cooperative assignors, as librdkafka requires for cooperative
    /// rebalancing.
    fn cooperative_strategy(strategy: &str) -> bool {
        strategy
            .split(',')
            .map(str::trim)
            .all(|s| s == "cooperative-sticky")
    }

    /// Forwards the records of every partition in `tpl` to the input
    /// queue; called before the consumer takes them.
    fn forward_input(&self, consumer: &BaseConsumer<StreamContext>, tpl: &TopicPartitionList) {
        let Some(input) = self.input.lock().clone() else {
            return;
        };
        for e in tpl.elements() {
            if !input.forward(consumer, e.topic(), e.partition()) {
                tracing::debug!(
                    topic = e.topic(),
                    partition = e.partition(),
                    "no partition queue; its records come through poll"
                );
            }
        }
    }
}

impl ClientContext for StreamContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        // Both reports the watch looks for are warnings or errors; the
        // debug lines of `debug=…` say "offset reset" for every logical
        // offset looked up, which is no replaced log.
        if (level as i32) <= rdkafka::config::RDKafkaLogLevel::Warning as i32 {
            self.watch.note(fac, message);
        }
        self.capture.log(level, fac, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.capture.error(error, reason)
    }
}

impl ConsumerContext for StreamContext {
    /// Runs the rebalance; a panic in it (a processor's factory or `close`,
    /// or a bug of ours) would otherwise unwind through librdkafka's C
    /// code, which is undefined behaviour. It stops the instance instead, as a panic in
    /// processing does: nothing is committed after it, and the
    /// assignment change librdkafka waits for is still made.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let run = std::panic::AssertUnwindSafe(|| self.run_rebalance(consumer, err, tpl));
        let Err(payload) = std::panic::catch_unwind(run) else {
            return;
        };
        let error = RuntimeError::ThreadPanicked(format!(
            "during a rebalance: {}",
            panic_message(payload.as_ref())
        ));
        tracing::error!(%error, "the stream thread stops without committing; the instance stops");
        {
            let mut engine = lock(&self.engine);
            engine.panicked = true;
            engine.fatal.get_or_insert(error);
        }
        let cooperative = self.cooperative.load(Ordering::Relaxed);
        let r = match (err, cooperative) {
            (RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS, true) => {
                consumer.incremental_assign(tpl)
            }
            (RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS, true) => {
                consumer.incremental_unassign(tpl)
            }
            _ => consumer.unassign(),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "assignment change after a panic failed");
        }
    }
}

impl StreamContext {
    /// The rebalance itself: tasks opened or committed and closed, and the
    /// assignment changed.
    fn run_rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            let c = matches!(
                consumer.rebalance_protocol(),
                RebalanceProtocol::Cooperative
            );
            self.cooperative.store(c, Ordering::Relaxed);
            c
        } else {
            self.cooperative.load(Ordering::Relaxed)
        };
        let mut engine = lock(&self.engine);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Err(e) = engine.on_assign(consumer, tpl) {
                    engine.fatal.get_or_insert(e);
                }
                engine.status.set_assigned();
                self.forward_input(consumer, tpl);
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = r {
                    engine
                        .fatal
                        .get_or_insert(RuntimeError::kafka("assign partitions", e));
                }
                engine.pause_restoring(consumer);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                if let Err(e) = engine.on_revoke(consumer, tpl, lost) {
                    engine.fatal.get_or_insert(e);
                }
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    tracing::warn!(error = %e, "unassign failed");
                }
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error; closing tasks without commit");
                let empty = TopicPartitionList::new();
                let all = consumer.assignment().unwrap_or(empty);
                let _ = engine.on_revoke(consumer, &all, true);
                let _ = consumer.unassign();
            }
        }
    }
}

/// A stream application instance running a [`Topology`] against Kafka.
///
/// ```no_run
/// # async fn demo(topology: stream_core::Topology) -> Result<(), stream_core::runtime::RuntimeError> {
/// use stream_core::runtime::{KafkaStreams, StreamsConfig};
/// let config = StreamsConfig::new("word-count", "127.0.0.1:9092");
/// KafkaStreams::new(topology, config)?.run_until_signal().await
/// # }
/// ```
pub struct KafkaStreams {
    topology: Arc<Topology>,
    cfg: Arc<StreamsConfig>,
    status: Arc<RuntimeStatus>,
    partitions: Arc<std::sync::OnceLock<std::collections::HashMap<String, i32>>>,
    stores: StoreAccess,
}

impl KafkaStreams {
    /// Checks the configuration; nothing connects yet.
    pub fn new(topology: Topology, mut cfg: StreamsConfig) -> Result<Self, RuntimeError> {
        if cfg.application_id.is_empty() {
            return Err(RuntimeError::Config(
                "application.id must not be empty".into(),
            ));
        }
        if cfg.outside_group {
            if cfg.processing_guarantee == ProcessingGuarantee::ExactlyOnce {
                return Err(RuntimeError::Config(
                    "exactly-once commits input offsets through the consumer group; an instance outside the group runs at-least-once".into(),
                ));
            }
            cfg.single_instance = true;
        }
        cfg.check_transaction_timeout()
            .map_err(RuntimeError::Config)?;
        cfg.check_group_protocol().map_err(RuntimeError::Config)?;
        Ok(KafkaStreams {
            topology: Arc::new(topology),
            cfg: Arc::new(cfg),
            status: Arc::new(RuntimeStatus::default()),
            partitions: Arc::default(),
            stores: StoreAccess::default(),
        })
    }

    /// A read-only view of this instance (configuration, status, partition
    /// counts, stores) for a server or a monitor to hold.
    pub fn handle(&self) -> InstanceHandle {
        InstanceHandle {
            cfg: self.cfg.clone(),
            topology: self.topology.clone(),
            status: self.status.clone(),
            partitions: self.partitions.clone(),
            stores: self.stores.clone(),
        }
    }

    /// Read access to this instance's stores while it runs.
    pub fn stores(&self) -> StoreAccess {
        self.stores.clone()
    }

    /// The live status (tasks, restore progress, counters).
    pub fn status(&self) -> Arc<RuntimeStatus> {
        self.status.clone()
    }

    /// Runs until SIGINT or SIGTERM, then commits, flushes and closes.
    /// A second signal exits at once.
    pub async fn run_until_signal(self) -> Result<(), RuntimeError> {
        self.run(shutdown_signal()).await
    }

    /// Runs until `shutdown` completes or a fatal error occurs.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), RuntimeError> {
        tracing::info!(config = %self.cfg.redacted(), "starting");
        let plan = Arc::new(topics::prepare(&self.topology, &self.cfg).await?);
        let (state, recovered) = StateDir::open_with_cache(
            &self.cfg.state_dir,
            &self.cfg.application_id,
            self.cfg.state_cache_bytes,
        )?;
        if recovered {
            tracing::warn!(
                "local state was damaged and moved aside; every task restores from its changelog"
            );
        }
        super::topic_ids::check_and_record(state.path(), &plan.source_topic_ids)?;
        let _ = self.partitions.set(plan.partitions.clone());
        // Global tables are whole before any task processes a record.
        let stop = Arc::new(AtomicBool::new(false));
        // A caller that drops this future before it ends (a timeout around
        // it, an aborted task) stops the threads it started, which are
        // threads of their own and would otherwise run on.
        let _stop_on_drop = StopOnDrop(stop.clone());
        let (globals, global_reader) =
            super::global::start(&self.topology, &self.cfg, &state, stop.clone())?;
        self.stores.attach_globals(globals.clone());
        let dead_letter_file =
            (!plan.dead_letter_topic_ok).then(|| state.path().join("dead-letters.jsonl"));
        let layout = self.cfg.layout();
        let task_cfg = Arc::new(self.task_config(&plan, globals.clone()));
        // Single-instance mode needs one consumer for the whole group.
        let threads = if layout.is_single() {
            1
        } else {
            self.cfg.num_stream_threads.max(1)
        };
        let instance_id = state.instance_id()?;
        if self.cfg.processing_guarantee == ProcessingGuarantee::ExactlyOnce {
            // Fewer threads than before: the ids of those no longer run
            // could hold open transactions that would stall readers.
            super::retired_ids::settle(&self.cfg, state.path(), &instance_id, threads)?;
        }
        let mut engines = Vec::with_capacity(threads);
        let mut consumers = Vec::with_capacity(threads);
        for thread in 0..threads {
            let shared = ThreadShared {
                plan: plan.clone(),
                state: state.clone(),
                task_cfg: task_cfg.clone(),
                dead_letter_file: dead_letter_file.clone(),
            };
            let (engine, consumer, capture) =
                self.stream_thread(thread, threads, &instance_id, shared)?;
            engines.push(engine);
            consumers.push((consumer, capture));
        }
        self.stores.attach(engines.clone());

        let topics = self.topology.source_topics(&self.cfg.application_id);
        self.status.set_running(true);
        let mut handles = Vec::with_capacity(threads);
        let mut not_started = None;
        for (thread, (engine, (consumer, capture))) in
            engines.into_iter().zip(consumers).enumerate()
        {
            let (own_stop, cfg, topics) = (stop.clone(), self.cfg.clone(), topics.clone());
            match start_stream_thread(thread, move || {
                let r = stream_loop(consumer, engine, &topics, &own_stop, &cfg, &capture);
                // One thread failing stops the others: the instance stops as a whole.
                own_stop.store(true, Ordering::SeqCst);
                r
            }) {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    // The threads already started stop and are waited for.
                    stop.store(true, Ordering::SeqCst);
                    not_started = Some(e);
                    break;
                }
            }
        }
        let all = futures::future::join_all(handles);
        tokio::pin!(all);
        let results = tokio::select! {
            r = &mut all => r,
            _ = shutdown => {
                tracing::info!("shutting down: committing and closing");
                stop.store(true, Ordering::SeqCst);
                all.await
            }
        };
        self.status.set_running(false);
        stop.store(true, Ordering::SeqCst);
        if let Some(reader) = global_reader {
            let _ = tokio::task::spawn_blocking(move || reader.join()).await;
        }
        let mut first_error = not_started;
        for r in results {
            let r = r.map_err(|_| {
                RuntimeError::ThreadPanicked("a stream thread ended without a result".into())
            });
            if let Err(e) = r.and_then(|inner| inner) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// What every task of this instance is configured with, once `plan`
    /// decided the partition counts.
    fn task_config(&self, plan: &TopicPlan, globals: crate::store::GlobalStores) -> TaskConfig {
        TaskConfig {
            application_id: self.cfg.application_id.clone(),
            partition_counts: Arc::new(plan.partitions.clone()),
            dead_letter_topic: self.cfg.dead_letter_topic(),
            on_error: self.cfg.on_error,
            on_late: self.cfg.on_late,
            idle_advance_ms: self.cfg.idle_advance.map(|d| d.as_millis() as i64),
            layout: self.cfg.layout(),
            commit_tag: super::ownership::commit_tag(&self.topology, &self.cfg.application_id),
            lineage_depth: self.cfg.lineage_depth,
            globals,
        }
    }

    /// Creates stream thread `thread` of `threads`: its producer, restore
    /// consumer, engine and group consumer. Threads share the state
    /// directory and the status; each owns the tasks of the partitions the
    /// group assigns to its consumer.
    fn stream_thread(
        &self,
        thread: usize,
        threads: usize,
        instance_id: &str,
        shared: ThreadShared,
    ) -> Result<StreamThreadParts, RuntimeError> {
        let ids = ThreadIds::new(&self.cfg, thread, threads, instance_id);
        let eos = self.cfg.processing_guarantee == ProcessingGuarantee::ExactlyOnce;
        let delivery = Arc::new(DeliveryState::default());
        let producer = clients::producer(&self.cfg, &ids, eos, delivery.clone())?;
        let mut out = OutputProducer::new(
            producer,
            delivery.clone(),
            shared.dead_letter_file,
            shared.state.path().join("production-errors.jsonl"),
            self.cfg.on_error,
            self.status.clone(),
            eos,
        );
        if eos {
            let (cfg, ids) = (self.cfg.clone(), ids.clone());
            out = out.with_renewal(Box::new(move || {
                clients::producer(&cfg, &ids, true, delivery.clone())
            }));
        } else if !self.cfg.outside_group {
            // Another member can take this one's partitions while it is
            // paused (see `Engine::suspend_if_paused`); half the session
            // timeout is far from both a busy machine's hiccups and the
            // pause that loses the session.
            let session = self.cfg.session_timeout().map_err(RuntimeError::Config)?;
            out = out.with_pause_check(super::pause_watch::PauseCheck::new(session / 2));
        }
        let reader = ChangelogReader::new(
            clients::restore_consumer(&self.cfg, &ids)?,
            self.status.clone(),
            self.cfg.allow_empty_state,
            super::restore::Opener {
                topology: self.topology.clone(),
                task_cfg: shared.task_cfg.clone(),
                state: shared.state.clone(),
            },
        );
        let engine = Arc::new(Mutex::new(Engine::new(
            self.topology.clone(),
            self.cfg.clone(),
            shared.task_cfg,
            shared.plan,
            shared.state,
            out,
            reader,
            self.status.clone(),
        )?));
        let cc = clients::group_consumer_config(&self.cfg, &ids);
        let capture = ErrorCapture::default();
        let cooperative = StreamContext::cooperative_strategy(
            cc.get("partition.assignment.strategy").unwrap_or("range"),
        );
        let consumer: BaseConsumer<StreamContext> = cc
            .create_with_context(StreamContext {
                engine: engine.clone(),
                capture: capture.clone(),
                cooperative: AtomicBool::new(cooperative),
                input: Mutex::new(None),
                watch: InputWatch::default(),
            })
            .map_err(|e| RuntimeError::kafka("create consumer", e))?;
        *consumer.context().input.lock() = InputQueue::new(&consumer).map(Arc::new);
        Ok((engine, consumer, capture))
    }
}

/// One stream thread as started: its engine, its group consumer, and the
/// consumer's error capture.
type StreamThreadParts = (
    Arc<Mutex<Engine>>,
    BaseConsumer<StreamContext>,
    ErrorCapture,
);

/// What the stream threads of an instance share.
struct ThreadShared {
    plan: Arc<TopicPlan>,
    state: StateDir,
    task_cfg: Arc<TaskConfig>,
    dead_letter_file: Option<std::path::PathBuf>,
}

/// Records processed between two looks at the clocks (commit, punctuation,
/// metrics) while input flows.
const CLOCK_EVERY: usize = 32;

/// The stream thread's periodic work (commit, punctuation, standbys,
/// metrics, progress), run every [`CLOCK_EVERY`] records while input flows
/// (within a batch too, so commits keep their cadence) and whenever a
/// look at the queues found nothing. The clocks are read only then:
/// reading them for each record costs more than the rest of a small
/// record's loop.
struct Clocks {
    /// Whether the thread reads an input queue (its partitions are
    /// forwarded to it again once a second).
    forwarding: bool,
    since: usize,
    last_metrics: std::time::Instant,
    last_progress: std::time::Instant,
}

impl Clocks {
    fn new(forwarding: bool) -> Clocks {
        let now = std::time::Instant::now();
        Clocks {
            forwarding,
            since: 0,
            last_metrics: now,
            last_progress: now,
        }
    }

    /// Counts a processed record; runs the periodic work every
    /// [`CLOCK_EVERY`] records.
    fn count(
        &mut self,
        e: &mut Engine,
        consumer: &BaseConsumer<StreamContext>,
    ) -> Result<(), RuntimeError> {
        self.add(1, e, consumer)
    }

    /// Counts `n` processed records; runs the periodic work once
    /// [`CLOCK_EVERY`] have been counted since it last ran.
    fn add(
        &mut self,
        n: usize,
        e: &mut Engine,
        consumer: &BaseConsumer<StreamContext>,
    ) -> Result<(), RuntimeError> {
        self.since += n;
        if self.since < CLOCK_EVERY {
            return Ok(());
        }
        self.run(e, consumer)
    }

    /// Runs the periodic work that is due. With an input queue, the
    /// assigned partitions are forwarded to it again once a second: a
    /// forward cleared by a fetch that stopped late is set again (see
    /// `input_queue`).
    fn run(
        &mut self,
        e: &mut Engine,
        consumer: &BaseConsumer<StreamContext>,
    ) -> Result<(), RuntimeError> {
        self.since = 0;
        e.refresh_standbys(consumer);
        if self.last_metrics.elapsed() >= Duration::from_secs(1) {
            e.publish_metrics();
            self.last_metrics = std::time::Instant::now();
            if self.forwarding {
                if let Ok(assigned) = consumer.assignment() {
                    consumer.context().forward_input(consumer, &assigned);
                }
            }
        }
        if self.last_progress.elapsed() >= Duration::from_secs(10) {
            let (processed, tasks) = e.progress();
            tracing::info!(processed, tasks, "progress");
            self.last_progress = std::time::Instant::now();
        }
        e.punctuate_if_due()?;
        e.advance_commit(consumer)
    }
}

/// Sets its flag when dropped: the stream threads' stop, raised when
/// [`KafkaStreams::run`] ends or its future is dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Starts stream thread `thread` (named `stream-N`, N from 0, as its
/// clients' ids are numbered, so that `top -H`, `/proc` and profiles show
/// it by name) running `run`; its result comes through the receiver.
/// The receiver errs only if the thread ended without one: `stream_loop`
/// catches a panic of processing, so that takes a panic outside it.
fn start_stream_thread(
    thread: usize,
    run: impl FnOnce() -> Result<(), RuntimeError> + Send + 'static,
) -> Result<tokio::sync::oneshot::Receiver<Result<(), RuntimeError>>, RuntimeError> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("stream-{thread}"))
        .spawn(move || {
            // The records' decoded values come and go here, a few small
            // blocks each: keep them warm (`alloc_count::Recycling`).
            #[cfg(feature = "mimalloc")]
            let _recycling = crate::alloc_count::Recycling::start();
            let _ = done.send(run());
        })
        .map_err(|e| RuntimeError::Config(format!("cannot start stream thread {thread}: {e}")))?;
    Ok(result)
}

fn stream_loop(
    consumer: BaseConsumer<StreamContext>,
    engine: Arc<Mutex<Engine>>,
    topics: &[String],
    stop: &AtomicBool,
    cfg: &StreamsConfig,
    capture: &ErrorCapture,
) -> Result<(), RuntimeError> {
    if cfg.outside_group {
        // Every partition, assigned by this instance itself: no group.
        let mut tpl = lock(&engine).all_source_partitions();
        lock(&engine).on_assign(&consumer, &mut tpl)?;
        lock(&engine).status.set_assigned();
        consumer.context().forward_input(&consumer, &tpl);
        consumer
            .assign(&tpl)
            .map_err(|e| RuntimeError::kafka("assign every source partition", e))?;
        lock(&engine).pause_restoring(&consumer);
    } else {
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&refs)
            .map_err(|e| RuntimeError::kafka("subscribe", e))?;
    }
    let input = consumer.context().input.lock().clone();
    let mut batch = BatchBuffer::default();
    let mut last_transport_warning: Option<std::time::Instant> = None;
    let mut clocks = Clocks::new(input.is_some());
    let mut restoring = false;
    // A panic (in a processor's code, or a bug of ours) stops this thread
    // like an error, without committing what the tasks hold: see
    // `Engine::panicked`.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loop {
        if stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        // While tasks restore in the background, look for the restored ones
        // often.
        let wait = Duration::from_millis(if restoring { 10 } else { 50 });
        // The consumer's own queue: rebalances, and the records of any
        // partition whose forward to the input queue did not take. With an
        // input queue the wait is spent on that queue instead.
        let polled = consumer.poll(if input.is_some() {
            Duration::ZERO
        } else {
            wait
        });
        // An input changed under it (see `input_watch`); a topic's
        // existence is asked without the engine's lock, which the status
        // page takes too.
        let watch = &consumer.context().watch;
        let changed = watch.take().into_iter().find_map(|report| match report {
            InputReport::Missing(topic) => input_watch::confirm_missing(&consumer, &topic),
            InputReport::Reset(ref topic, partition) => {
                match lock(&engine).check_reset(&consumer, topic, partition) {
                    Ok(true) => None,
                    Ok(false) => {
                        watch.again(report);
                        None
                    }
                    Err(err) => Some(err),
                }
            }
        });
        if let Some(err) = changed {
            break Err(err);
        }
        let mut handled = false;
        let mut e = lock(&engine);
        if let Some(err) = e.fatal.take() {
            break Err(err);
        }
        if let Err(err) = e.collect_restored(&consumer) {
            break Err(err);
        }
        e.resume_after_pause(&consumer);
        restoring = e.restoring();
        let r = match polled {
            Some(Ok(msg)) => {
                handled = true;
                e.accept(&msg)
                    .and_then(|()| clocks.count(&mut e, &consumer))
            }
            // The end of a partition whose records come through `poll`
            // (its forward did not take): the event names no topic, so a
            // task waiting on it learns from the watermark instead.
            Some(Err(KafkaError::PartitionEOF(_))) => Ok(()),
            Some(Err(err)) => consume_error(err, topics, cfg, capture, &mut last_transport_warning)
                .map_or(Ok(()), Err),
            None => Ok(()),
        };
        if let Err(err) = r {
            break Err(err);
        }
        if let Some(input) = &input {
            // Processed whole before the consumer is polled again (a
            // rebalance runs inside the poll).
            drop(e);
            let records = input.read(
                &mut batch,
                BATCH,
                if handled { Duration::ZERO } else { wait },
            );
            e = lock(&engine);
            let mut failed = None;
            let rewound = e.rewound();
            for item in records.iter() {
                if e.rewound() != rewound {
                    // Rolled back within the batch: the rest is read again.
                    break;
                }
                let r = match item {
                    Batched::Record(record) => {
                        handled = true;
                        e.accept(&record)
                            .and_then(|()| clocks.count(&mut e, &consumer))
                    }
                    Batched::Error {
                        code: RDKafkaErrorCode::PartitionEOF,
                        topic,
                        partition,
                    } => {
                        if let Some(topic) = topic {
                            e.caught_up(topic, partition);
                        }
                        Ok(())
                    }
                    Batched::Error { code, .. } => consume_error(
                        KafkaError::MessageConsumption(code),
                        topics,
                        cfg,
                        capture,
                        &mut last_transport_warning,
                    )
                    .map_or(Ok(()), Err),
                };
                if let Err(err) = r {
                    failed = Some(err);
                    break;
                }
            }
            if let Some(err) = failed {
                break Err(err);
            }
        }
        // Held records of tasks that read several topics, in timestamp
        // order as far as their turn has come (see `time_order`).
        let ready = loop {
            match e.process_ready(&consumer, CLOCK_EVERY) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    handled = true;
                    if let Err(err) = clocks.add(n, &mut e, &consumer) {
                        break Err(err);
                    }
                }
                Err(err) => break Err(err),
            }
        };
        if let Err(err) = ready {
            break Err(err);
        }
        if !handled {
            if let Err(err) = clocks.run(&mut e, &consumer) {
                break Err(err);
            }
        }
    }));
    let panicked = result.is_err();
    let result = result.unwrap_or_else(|payload| {
        let error = RuntimeError::ThreadPanicked(panic_message(payload.as_ref()));
        tracing::error!(%error, "the stream thread stops without committing; the instance stops");
        Err(error)
    });
    let closed = {
        let mut e = lock(&engine);
        e.closing = true;
        // A panic during a rebalance marked it already.
        e.panicked |= panicked;
        if result.is_ok() {
            // A processor's `close` panicking at shutdown stops the
            // thread with that error, past the commit made before it.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| e.shutdown(&consumer))) {
                Ok(closed) => closed,
                Err(payload) => {
                    e.panicked = true;
                    let error = RuntimeError::ThreadPanicked(format!(
                        "while closing: {}",
                        panic_message(payload.as_ref())
                    ));
                    tracing::error!(%error, "the stream thread stops");
                    Err(error)
                }
            }
        } else {
            Ok(())
        }
    };
    if !cfg.outside_group {
        consumer.unsubscribe();
    }
    // The input queue goes before the consumer it belongs to.
    drop(input);
    drop(consumer.context().input.lock().take());
    close_consumer(consumer);
    result.and(closed)
}

/// The message a panic carried (`panic!` with a literal or a format).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// What a consume error means for the stream thread: the error that stops
/// it (the user may not read a topic or use the group, a topic is gone,
/// authentication failed), or `None` for a transport error it waits out
/// (warned about at most every 5 s).
fn consume_error(
    err: KafkaError,
    topics: &[String],
    cfg: &StreamsConfig,
    capture: &ErrorCapture,
    last_warning: &mut Option<std::time::Instant>,
) -> Option<RuntimeError> {
    match err.rdkafka_error_code() {
        Some(RDKafkaErrorCode::TopicAuthorizationFailed) => Some(RuntimeError::NotAuthorized {
            operation: "Read".into(),
            resource: format!("topic(s) {}", topics.join(", ")),
            hint: format!(
                "allow Read and Describe on {} for this user",
                topics.join(", ")
            ),
        }),
        Some(RDKafkaErrorCode::GroupAuthorizationFailed) => Some(RuntimeError::NotAuthorized {
            operation: "Read".into(),
            resource: format!("consumer group `{}`", cfg.application_id),
            hint: format!(
                "allow Read on group {} for this user (the group id is the application id)",
                cfg.application_id
            ),
        }),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => {
            Some(RuntimeError::kafka("consume", err))
        }
        Some(RDKafkaErrorCode::Authentication) => {
            Some(topics::explain_connect_failure(cfg, capture, err))
        }
        // Members of another kind hold the group; they may leave (a
        // stopped Kafka Streams instance stays a member until its session
        // times out), so the instance waits, saying why.
        Some(RDKafkaErrorCode::InconsistentGroupProtocol) => {
            if due(last_warning) {
                tracing::warn!(
                    group = %cfg.application_id,
                    strategy = %cfg.assignment_strategy,
                    "cannot join the consumer group: its members use another protocol or share no assignment strategy with this instance (a Kafka Streams application with the same application id, say, or a consumer with another partition.assignment.strategy); retrying until they leave (a stopped Kafka Streams instance stays a member until its session timeout, 45 s by default)"
                );
            }
            None
        }
        _ => {
            if due(last_warning) {
                tracing::warn!(error = %err, "waiting for the Kafka cluster; retrying");
            }
            None
        }
    }
}

/// Whether a repeated warning is due (none in the last 5 s); if so, notes
/// that it is given now.
fn due(last_warning: &mut Option<std::time::Instant>) -> bool {
    if last_warning.is_some_and(|t| t.elapsed() <= Duration::from_secs(5)) {
        return false;
    }
    *last_warning = Some(std::time::Instant::now());
    true
}

/// How long closing the group consumer may take before the stream thread
/// leaves it behind.
const CLOSE_DEADLINE: Duration = Duration::from_secs(30);

/// Drops (closes) the group consumer on a thread of its own and waits for
/// it at most [`CLOSE_DEADLINE`]. The close serves the final revocation,
/// whose `unassign` is a librdkafka request without a timeout: when the
/// group coordinator stops answering (seen in CI with a broker too loaded
/// to answer metadata requests for minutes), it never returns. Everything
/// is committed before the close, so an instance that gives up on it loses
/// nothing; the group drops the member after its session timeout.
fn close_consumer(consumer: BaseConsumer<StreamContext>) {
    let (done, closed) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("consumer-close".into())
        .spawn(move || {
            drop(consumer);
            let _ = done.send(());
        });
    match spawned {
        Ok(_) => {
            if closed.recv_timeout(CLOSE_DEADLINE).is_err() {
                tracing::error!(
                    seconds = CLOSE_DEADLINE.as_secs(),
                    "the consumer did not close in time (its group coordinator does not answer); state and offsets are committed, going on without it"
                );
            }
        }
        // The closure, and the consumer with it, was dropped here.
        Err(e) => tracing::warn!(error = %e, "no thread to close the consumer on; closed it here"),
    }
}

/// Completes on the first SIGINT or SIGTERM; a second one exits at once.
pub async fn shutdown_signal() {
    wait_signal().await;
    tokio::spawn(async {
        wait_signal().await;
        tracing::warn!("second signal: exiting without cleanup");
        std::process::exit(130);
    });
}

async fn wait_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use rdkafka::TopicPartitionList;

    use super::{KafkaStreams, StreamContext, ThreadShared};
    use crate::runtime::config::StreamsConfig;
    use crate::runtime::error::RuntimeError;
    use crate::runtime::topics::TopicPlan;
    use crate::store::{GlobalStores, StateDir};

    /// A rebalance under way when the consumer starts closing completes
    /// inside the close, which runs the assignment callback: it must open
    /// no task and ask the group nothing (librdkafka answers a closing
    /// consumer's offset fetches with "waiting for the coordinator" until
    /// they time out, and the close, and with it the group, hung for the
    /// whole retry period). Nothing listens at the bootstrap address: any
    /// request would wait for its timeout.
    #[test]
    fn should_open_no_task_for_an_assignment_that_arrives_while_closing() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StreamsConfig::new("closing-app", "127.0.0.1:9");
        cfg.state_dir = dir.path().to_path_buf();
        let streams = KafkaStreams::new(crate::graph::test_topologies::in_to_out(), cfg).unwrap();
        let plan = Arc::new(TopicPlan {
            partitions: [("in".to_string(), 2), ("out".to_string(), 1)].into(),
            tasks: vec![2],
            dead_letter_topic_ok: true,
            source_topic_ids: Default::default(),
        });
        let (state, _) =
            StateDir::open_with_cache(dir.path(), "closing-app", crate::store::DEFAULT_CACHE_BYTES)
                .unwrap();
        let shared = ThreadShared {
            task_cfg: Arc::new(streams.task_config(&plan, GlobalStores::default())),
            plan,
            state,
            dead_letter_file: None,
        };
        let (engine, consumer, _) = streams.stream_thread(0, 1, "instance", shared).unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("in", 0);
        tpl.add_partition("in", 1);
        let mut e = engine.lock();
        e.closing = true;
        let started = Instant::now();
        let r = e.on_assign(&consumer, &mut tpl);
        let took = started.elapsed();
        assert!(r.is_ok(), "{r:?}");
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert_eq!(e.progress().1, 0, "a task opened while closing");
        assert!(!e.restoring(), "a task went to restore while closing");
        assert!(streams.status().tasks().is_empty());
    }

    /// KIP-848's `consumer` protocol is refused when the instance is made,
    /// before any client or topic: librdkafka's own refusal came only after
    /// the internal topics were created, and named the session timeout.
    #[test]
    fn should_refuse_the_consumer_group_protocol_before_starting() {
        let mut cfg = StreamsConfig::new("kip-848-app", "127.0.0.1:9");
        cfg.extra
            .insert("consumer.group.protocol".into(), "consumer".into());
        match KafkaStreams::new(crate::graph::test_topologies::in_to_out(), cfg) {
            Err(RuntimeError::Config(e)) => {
                assert!(
                    e.contains("group.protocol=consumer is not supported"),
                    "{e}"
                )
            }
            Err(e) => panic!("not a configuration error: {e}"),
            Ok(_) => panic!("group.protocol=consumer accepted"),
        }
    }

    #[test]
    fn should_take_only_cooperative_assignors_for_cooperative_rebalancing() {
        assert!(StreamContext::cooperative_strategy("cooperative-sticky"));
        assert!(!StreamContext::cooperative_strategy("range"));
        assert!(!StreamContext::cooperative_strategy("range, roundrobin"));
        assert!(!StreamContext::cooperative_strategy(
            "range,cooperative-sticky"
        ));
    }

    /// A stream thread carries its name (what `top -H` and profiles show),
    /// hands its result back, and a thread that dies without one (a panic
    /// outside `stream_loop`'s own catch) is told apart from a result.
    #[test]
    fn should_name_each_stream_thread_and_hand_back_its_result() {
        let named = super::start_stream_thread(3, || match std::thread::current().name() {
            Some("stream-3") => Ok(()),
            other => Err(RuntimeError::Config(format!("named {other:?}"))),
        })
        .expect("start");
        assert!(matches!(named.blocking_recv(), Ok(Ok(()))));

        let failed =
            super::start_stream_thread(0, || Err(RuntimeError::NoGroupMetadata)).expect("start");
        assert!(matches!(
            failed.blocking_recv(),
            Ok(Err(RuntimeError::NoGroupMetadata))
        ));

        let died =
            super::start_stream_thread(1, || panic!("outside the loop's catch")).expect("start");
        assert!(died.blocking_recv().is_err());
    }

    /// Dropping `run`'s future (or its normal end) raises the stream
    /// threads' stop flag through its guard.
    #[test]
    fn should_raise_the_stop_flag_when_the_guard_goes() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let guard = super::StopOnDrop(stop.clone());
        assert!(!stop.load(Ordering::SeqCst));
        drop(guard);
        assert!(stop.load(Ordering::SeqCst));
    }
}
