//! `/metrics`: the instance's counters in Prometheus' text format.
//!
//! Every metric is listed, with its meaning, in `docs/operations.md`.

use std::fmt::Write as _;

use super::probe::Lag;
use crate::runtime::status::{RuntimeStatus, TaskState};

/// One metric read from a `T`: its name, its help text, and how to read it.
type Metric<T, N> = (&'static str, &'static str, fn(&T) -> N);

/// Escapes a label value (backslash, quote, newline).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn val(&mut self, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, l)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", esc(l));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {v}");
    }
}

/// Renders the metrics of `status`, plus the consumer lag when it could be
/// read (`Err`: the reason, exported as `streams_lag_error 1`).
pub fn render(
    application_id: &str,
    status: &RuntimeStatus,
    lags: &Result<Vec<Lag>, String>,
) -> String {
    let mut o = Out(String::with_capacity(4096));
    let tasks = status.tasks();
    o.head(
        "streams_info",
        "gauge",
        "Constant 1, labelled with the application id.",
    );
    o.val("streams_info", &[("application_id", application_id)], 1);
    o.head("streams_running", "gauge", "1 while the instance runs.");
    o.val("streams_running", &[], u8::from(status.is_running()));
    o.head(
        "streams_ready",
        "gauge",
        "1 once every assigned task has finished restoring (what /health reports).",
    );
    o.val("streams_ready", &[], u8::from(status.is_ready()));
    o.head(
        "streams_uptime_seconds",
        "gauge",
        "Seconds since the instance started running.",
    );
    o.val(
        "streams_uptime_seconds",
        &[],
        format!("{:.3}", status.uptime_seconds()),
    );
    o.head(
        "streams_processed_records_total",
        "counter",
        "Input records processed by this instance, all tasks.",
    );
    o.val(
        "streams_processed_records_total",
        &[],
        status.processed_total(),
    );
    o.head(
        "streams_processing_rate",
        "gauge",
        "Input records per second over the last second.",
    );
    o.val(
        "streams_processing_rate",
        &[],
        format!("{:.1}", status.processing_rate()),
    );

    let c = status.commits();
    o.head(
        "streams_commit_latency_seconds",
        "summary",
        "Time from each commit point until its state and offsets were written (acknowledgements included).",
    );
    o.val(
        "streams_commit_latency_seconds_sum",
        &[],
        format!("{:.6}", c.total_seconds),
    );
    o.val("streams_commit_latency_seconds_count", &[], c.count);
    o.head(
        "streams_commit_latency_seconds_max",
        "gauge",
        "The slowest commit so far.",
    );
    o.val(
        "streams_commit_latency_seconds_max",
        &[],
        format!("{:.6}", c.max_seconds),
    );
    o.head(
        "streams_commit_latency_seconds_last",
        "gauge",
        "The latest commit.",
    );
    o.val(
        "streams_commit_latency_seconds_last",
        &[],
        format!("{:.6}", c.last_seconds),
    );
    o.head(
        "streams_commit_blocked_seconds_total",
        "counter",
        "Time the stream threads spent in commits (a pipelined commit blocks only to seal and to write the state; acknowledgements arrive while processing goes on).",
    );
    o.val(
        "streams_commit_blocked_seconds_total",
        &[],
        format!("{:.6}", c.blocked_seconds),
    );
    o.head(
        "streams_commit_buffer_waits_total",
        "counter",
        "Times at-least-once processing waited for a commit in flight because the store changes buffered behind it reached max_buffered_changes (the state writer was slower than processing).",
    );
    o.val("streams_commit_buffer_waits_total", &[], c.buffer_waits);
    o.head(
        "streams_records_awaiting_ack",
        "gauge",
        "Records produced (sinks, changelogs, dead letters) the brokers have not acknowledged yet.",
    );
    o.val("streams_records_awaiting_ack", &[], status.awaiting_ack());
    if let Some(n) = crate::alloc_count::allocations() {
        o.head(
            "process_allocations_total",
            "counter",
            "Allocations by Rust code since start (the program installed stream_core::alloc_count::CountingAllocator).",
        );
        o.val("process_allocations_total", &[], n);
    }

    let task_counters: [Metric<crate::task::TaskMetrics, u64>; 6] = [
        (
            "streams_task_records_in_total",
            "Input records processed by the task (failed ones included).",
            |m| m.processed,
        ),
        (
            "streams_task_records_out_total",
            "Records the task produced (sinks and changelogs).",
            |m| m.produced,
        ),
        (
            "streams_task_dead_letter_records_total",
            "Records the task sent to the dead-letter topic.",
            |m| m.dead_lettered,
        ),
        (
            "streams_task_duplicates_skipped_total",
            "Repartition records dropped as already applied.",
            |m| m.duplicates_skipped,
        ),
        (
            "streams_task_restored_records_total",
            "Changelog records applied by the task's restores.",
            |m| m.restored,
        ),
        (
            "streams_task_late_records_total",
            "Records a window aggregation dropped as late (dead-lettered or logged).",
            |m| m.late,
        ),
    ];
    let task_gauges: [Metric<crate::task::TaskMetrics, i64>; 2] = [
        (
            "streams_task_stream_time_ms",
            "The task's stream time: the largest event time it processed (-1: none).",
            |m| m.stream_time,
        ),
        (
            "streams_task_suppress_buffered",
            "Window results waiting for emit-final in the task's suppression buffers (on disk).",
            |m| m.suppress_buffered as i64,
        ),
    ];
    for (name, help, get) in task_gauges {
        o.head(name, "gauge", help);
        for (id, t) in &tasks {
            o.val(name, &[("task", &id.to_string())], get(&t.metrics));
        }
    }
    for (name, help, get) in task_counters {
        o.head(name, "counter", help);
        for (id, t) in &tasks {
            o.val(name, &[("task", &id.to_string())], get(&t.metrics));
        }
    }
    o.head(
        "streams_dead_letter_records_total",
        "counter",
        "Records sent to the dead-letter topic by the tasks owned now.",
    );
    o.val(
        "streams_dead_letter_records_total",
        &[],
        tasks.values().map(|t| t.metrics.dead_lettered).sum::<u64>(),
    );
    o.head(
        "streams_production_errors_total",
        "counter",
        "Sink records the brokers refused (too large, invalid), kept in production-errors.jsonl.",
    );
    o.val(
        "streams_production_errors_total",
        &[],
        status.production_errors(),
    );
    o.head(
        "streams_rollbacks_total",
        "counter",
        "Times a stream thread rolled back to its last commit and processed again (an aborted transaction, records not delivered in time, the process found paused).",
    );
    o.val("streams_rollbacks_total", &[], status.rollbacks());
    o.head(
        "streams_enforced_processing_total",
        "counter",
        "Records a task that reads several topics processed while waiting on one of them for longer than max.task.idle.ms allows (or the bounds of waiting), possibly out of timestamp order.",
    );
    o.val(
        "streams_enforced_processing_total",
        &[],
        status.enforced_processing(),
    );
    o.head(
        "streams_task_restoring",
        "gauge",
        "1 while the task restores, 0 once it runs.",
    );
    for (id, t) in &tasks {
        o.val(
            "streams_task_restoring",
            &[("task", &id.to_string())],
            u8::from(t.state == TaskState::Restoring),
        );
    }

    let restore: [Metric<crate::runtime::status::RestoreProgress, i64>; 5] = [
        (
            "streams_restore_start_offset",
            "First changelog offset the latest restore read.",
            |p| p.start,
        ),
        (
            "streams_restore_end_offset",
            "Changelog high watermark the latest restore reads up to.",
            |p| p.end,
        ),
        (
            "streams_restore_position",
            "Next changelog offset the restore reads.",
            |p| p.position,
        ),
        (
            "streams_restore_records_read",
            "Changelog records read by the latest restore.",
            |p| p.read as i64,
        ),
        (
            "streams_restore_remaining_offsets",
            "Offsets left to read (end - position).",
            |p| (p.end - p.position).max(0),
        ),
    ];
    for (name, help, get) in restore {
        o.head(name, "gauge", help);
        for (id, t) in &tasks {
            for p in &t.restore {
                let part = p.partition.to_string();
                let labels = [
                    ("task", id.to_string()),
                    ("topic", p.topic.clone()),
                    ("partition", part),
                ];
                let labels: Vec<(&str, &str)> =
                    labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                o.val(name, &labels, get(p));
            }
        }
    }
    o.head(
        "streams_standby_lag_records",
        "gauge",
        "Changelog records a standby copy has not applied yet (changelog end - its position), per changelog partition.",
    );
    for (id, t) in tasks.iter().filter(|(_, t)| t.state == TaskState::Standby) {
        for p in &t.restore {
            let part = p.partition.to_string();
            let task = id.to_string();
            o.val(
                "streams_standby_lag_records",
                &[
                    ("task", task.as_str()),
                    ("topic", p.topic.as_str()),
                    ("partition", part.as_str()),
                ],
                (p.end - p.position).max(0),
            );
        }
    }
    o.head(
        "streams_restores_completed_total",
        "counter",
        "Task restores completed since start.",
    );
    o.val(
        "streams_restores_completed_total",
        &[],
        status.restores().iter().filter(|r| !r.abandoned).count(),
    );

    let lag_metrics: [Metric<Lag, i64>; 2] = [
        ("streams_consumer_lag", "Records between the group's committed offset and the end of each input partition this instance owns.", |l| l.lag),
        ("streams_consumer_end_offset", "High watermark of each owned input partition.", |l| l.end),
    ];
    for (name, help, get) in lag_metrics {
        o.head(name, "gauge", help);
        for l in lags.iter().flatten() {
            let part = l.partition.to_string();
            o.val(
                name,
                &[("topic", l.topic.as_str()), ("partition", part.as_str())],
                get(l),
            );
        }
    }
    o.head(
        "streams_lag_error",
        "gauge",
        "1 when the lag could not be read from the cluster.",
    );
    match lags {
        Ok(_) => o.val("streams_lag_error", &[], 0),
        Err(e) => o.val("streams_lag_error", &[("reason", e)], 1),
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_render_valid_prometheus_lines() {
        let s = RuntimeStatus::default();
        let lags = Ok(vec![Lag {
            topic: "in\"x".into(),
            partition: 2,
            end: 10,
            committed: Some(4),
            lag: 6,
        }]);
        let text = render("app", &s, &lags);
        assert!(
            text.contains("streams_consumer_lag{topic=\"in\\\"x\",partition=\"2\"} 6"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("name and value");
            assert!(value.parse::<f64>().is_ok(), "bad value in `{line}`");
        }
        let failed = render("app", &s, &Err("no broker".into()));
        assert!(failed.contains("streams_lag_error{reason=\"no broker\"} 1"));
    }
}
