//! The HTTP handlers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::query::{self, QueryError};
use super::{metrics, Shared};
use crate::runtime::handle::Busy;
use crate::runtime::status::TaskState;
use crate::store::window;

/// How long a store read waits for the stream thread.
const STORE_WAIT: Duration = Duration::from_millis(1500);

type S = State<Arc<Shared>>;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(prometheus))
        .route("/topology", get(topology_text))
        .route("/topology.mmd", get(topology_mermaid))
        .route("/topology.dot", get(topology_dot))
        .route("/topology.svg", get(topology_svg))
        .route("/stores", get(stores))
        .route("/stores/{store}", get(store_scan))
        .route("/stores/{store}/{key}", get(store_key))
        .route("/stores/{store}/{key}/lineage", get(store_lineage))
        .route("/api/status", get(api_status))
        .with_state(shared)
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({ "error": message.into() }))).into_response()
}

fn query_error(e: QueryError) -> Response {
    match e {
        QueryError::UnknownStore(s) => {
            error(StatusCode::NOT_FOUND, format!("no store named `{s}`"))
        }
        QueryError::BadKey(m) => error(StatusCode::BAD_REQUEST, m),
        QueryError::Busy => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the state is busy (a restore is running); retry shortly",
        ),
    }
}

/// Runs blocking work (Kafka calls, store reads) off the async workers.
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    tokio::task::spawn_blocking(f).await.ok()
}

async fn page() -> Html<&'static str> {
    Html(include_str!("status.html"))
}

fn health_json(s: &Shared) -> (bool, Value) {
    let tasks = s.status.tasks();
    let restoring: Vec<String> = tasks
        .iter()
        .filter(|(_, t)| t.state == TaskState::Restoring)
        .map(|(id, _)| id.to_string())
        .collect();
    let ready = s.status.is_ready();
    let state = if !s.status.is_running() {
        "not running"
    } else if !restoring.is_empty() {
        "restoring"
    } else if ready {
        "ready"
    } else {
        "waiting for an assignment"
    };
    // Per task: its state, and how far its changelogs are read (restoring:
    // offsets left; standby: its lag).
    let states: serde_json::Map<String, Value> = tasks
        .iter()
        .map(|(id, t)| {
            let left: i64 = t.restore.iter().map(|p| (p.end - p.position).max(0)).sum();
            let body = match t.state {
                TaskState::Running => json!({ "state": "running" }),
                TaskState::Restoring => json!({ "state": "restoring", "offsets_left": left }),
                TaskState::Standby => json!({ "state": "standby", "lag": left }),
            };
            (id.to_string(), body)
        })
        .collect();
    (
        ready,
        json!({ "status": state, "ready": ready, "tasks": tasks.len(), "restoring": restoring,
                "task_states": states }),
    )
}

async fn health(State(s): S) -> Response {
    let (ready, body) = health_json(&s);
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn lags(s: &Arc<Shared>) -> Result<Vec<super::Lag>, String> {
    let probe = s.probe.clone()?;
    let parts = s.owned_partitions();
    blocking(move || probe.lags(&parts))
        .await
        .unwrap_or_else(|| Err("lag lookup panicked".into()))
}

async fn prometheus(State(s): S) -> Response {
    let lags = lags(&s).await;
    let body = metrics::render(&s.cfg.application_id, &s.status, &lags);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn topology_text(State(s): S) -> Response {
    text(s.topology.describe(&s.cfg.application_id))
}

async fn topology_mermaid(State(s): S) -> Response {
    text(s.topology.to_mermaid(&s.cfg.application_id))
}

async fn topology_dot(State(s): S) -> Response {
    text(s.topology.to_dot(&s.cfg.application_id))
}

async fn topology_svg(State(s): S) -> Response {
    match &s.svg {
        Some(svg) => ([(header::CONTENT_TYPE, "image/svg+xml")], svg.clone()).into_response(),
        None => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the diagram could not be laid out; see /topology",
        ),
    }
}

async fn stores(State(s): S) -> Response {
    let app = s.cfg.application_id.clone();
    let s2 = s.clone();
    let local: HashMap<String, Vec<String>> = blocking(move || {
        let mut local: HashMap<String, Vec<String>> = HashMap::new();
        for st in s2.topology.stores() {
            if let Ok(ids) = s2.stores.tasks_with_store(&st.name, STORE_WAIT) {
                local
                    .entry(st.name.clone())
                    .or_default()
                    .extend(ids.iter().map(|t| t.to_string()));
            }
        }
        local
    })
    .await
    .unwrap_or_default();
    let list: Vec<Value> = s
        .topology
        .stores()
        .iter()
        .map(|st| {
            json!({
                "name": st.name,
                "changelog": st.changelog_topic(&app),
                "local_tasks": local.get(&st.name).cloned().unwrap_or_default(),
            })
        })
        .collect();
    Json(json!({ "stores": list })).into_response()
}

/// `?from=&to=` of a window store query (ms, inclusive; default: all).
#[derive(serde::Deserialize, Default)]
struct TimeRange {
    from: Option<i64>,
    to: Option<i64>,
}

/// What the owning stream thread read for one key.
enum Lookup {
    Value(Option<Vec<u8>>),
    Windows(Vec<(window::Span, Vec<u8>)>),
}

/// A row of a global table: every instance holds all of them.
fn global_key(s: &Shared, g: &crate::graph::GlobalTableSpec, key: &str) -> Response {
    let bytes = match query::encode_key(g.format.as_ref(), key) {
        Ok(b) => b,
        Err(e) => return query_error(e),
    };
    let Some(tree) = s.stores.global(&g.store) else {
        return query_error(QueryError::Busy);
    };
    match tree.get(&bytes) {
        Ok(v) => Json(json!({
            "store": g.store, "key": key, "global": true, "local": true, "found": v.is_some(),
            "value": v.as_deref().map(|v| query::render(g.format.as_ref().map(|f| &f.value), v)),
        }))
        .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn store_key(
    State(s): S,
    Path((store, key)): Path<(String, String)>,
    Query(range): Query<TimeRange>,
) -> Response {
    if let Some(g) = s.topology.global_tables().iter().find(|g| g.store == store) {
        return global_key(&s, g, &key);
    }
    let (spec, bytes, loc) = match find_key(&s, &store, &key) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let s2 = s.clone();
    let (store2, bytes2, task) = (store.clone(), bytes.clone(), loc.task);
    let (layout, from, to) = (
        spec.window,
        range.from.unwrap_or(0),
        range.to.unwrap_or(i64::MAX),
    );
    // The answer of the stream thread that owns the task, if one does here.
    let local = blocking(move || {
        let read = |set: &crate::store::StoreSet, idx: usize| match layout {
            None => set.get(idx, &bytes2).map(Lookup::Value),
            Some(l) => {
                let view = StoreReader { set, idx };
                window::fetch(&view, l, &bytes2, from, to).map(Lookup::Windows)
            }
        };
        match s2.stores.read(task, &store2, STORE_WAIT, read) {
            Ok(None) => None,
            Ok(Some(found)) => Some(Ok(Some(found))),
            Err(Busy) => Some(Err(QueryError::Busy)),
        }
    })
    .await
    .flatten();
    let value_serde = spec.format.as_ref().map(|f| &f.value);
    match local {
        Some(Err(e)) => query_error(e),
        Some(Ok(Some(Ok(Lookup::Value(v))))) => Json(json!({
            "store": store, "key": key, "task": loc.task.to_string(), "partition": loc.task.partition,
            "local": true, "found": v.is_some(),
            "value": v.as_deref().map(|v| query::render(value_serde, v)),
        }))
        .into_response(),
        Some(Ok(Some(Ok(Lookup::Windows(ws))))) => {
            let windows: Vec<Value> = ws
                .iter()
                .filter_map(|((start, end), v)| {
                    let (ts, agg) = window::unstamp(v)?;
                    Some(json!({
                        "start": start, "end": end, "timestamp": ts,
                        "value": query::render(value_serde, agg),
                    }))
                })
                .collect();
            Json(json!({
                "store": store, "key": key, "task": loc.task.to_string(), "partition": loc.task.partition,
                "local": true, "found": !windows.is_empty(), "from": from, "to": to,
                "windows": windows,
            }))
            .into_response()
        }
        Some(Ok(Some(Err(e)))) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("store read failed: {e}")),
        Some(Ok(None)) | None => {
            // Not here: ask the group who owns the task's partition.
            let owner = match s.probe.clone() {
                Ok(p) => blocking(move || p.members()).await.unwrap_or_else(|| Err("panicked".into())),
                Err(e) => Err(e),
            };
            let (topic, partition) = (loc.topic.clone(), loc.task.partition);
            let owner = owner.map(|ms| {
                ms.into_iter()
                    .find(|m| m.partitions.iter().any(|(t, p)| *t == topic && *p == partition))
            });
            let me = s.cfg.advertised_server();
            let body = match owner {
                Ok(Some(m)) if m.server.is_some() && m.server == me => {
                    let body = json!({
                        "store": store, "key": key, "task": loc.task.to_string(), "partition": partition,
                        "local": false, "owner": null,
                        "note": "this instance is taking the partition over (rebalance in progress); retry shortly",
                    });
                    return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
                }
                Ok(Some(m)) => json!({
                    "store": store, "key": key, "task": loc.task.to_string(), "partition": partition,
                    "local": false,
                    "owner": { "client_id": m.client_id, "host": m.host, "server": m.server,
                               "url": m.server.as_ref().map(|srv| format!("http://{srv}/stores/{}/{}", super::encode_path(&store), super::encode_path(&key))) },
                }),
                Ok(None) => json!({
                    "store": store, "key": key, "task": loc.task.to_string(), "partition": partition,
                    "local": false, "owner": null,
                    "note": "no member owns this partition right now (rebalancing?)",
                }),
                Err(e) => json!({
                    "store": store, "key": key, "task": loc.task.to_string(), "partition": partition,
                    "local": false, "owner": null, "note": format!("group lookup failed: {e}"),
                }),
            };
            (StatusCode::NOT_FOUND, Json(body)).into_response()
        }
    }
}

/// A store's spec, a key's bytes in its key serde, and the task that
/// holds the key; an error response (boxed: a response is large) if any
/// is unknown.
fn find_key(
    s: &Shared,
    store: &str,
    key: &str,
) -> Result<(crate::graph::StoreSpec, Vec<u8>, query::KeyLocation), Box<Response>> {
    let spec = s
        .topology
        .store(store)
        .cloned()
        .ok_or_else(|| Box::new(query_error(QueryError::UnknownStore(store.to_string()))))?;
    let bytes =
        query::encode_key(spec.format.as_ref(), key).map_err(|e| Box::new(query_error(e)))?;
    let loc = query::locate(
        &s.topology,
        &s.cfg.application_id,
        s.partitions(),
        s.cfg.layout(),
        store,
        &bytes,
    )
    .map_err(|e| Box::new(query_error(e)))?;
    Ok((spec, bytes, loc))
}

/// The input records behind a key's value (record lineage), from the task
/// that holds the key on this instance.
async fn store_lineage(State(s): S, Path((store, key)): Path<(String, String)>) -> Response {
    let Some(spec) = s.topology.store(&store).cloned() else {
        return query_error(QueryError::UnknownStore(store));
    };
    if s.cfg.lineage_depth == 0 {
        return error(
            StatusCode::NOT_FOUND,
            "record lineage is off: start with --lineage N (StreamsConfig::lineage_depth)",
        );
    }
    if spec.window.is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`{store}` is a window store; lineage is kept for key-value stores"),
        );
    }
    let (_, bytes, loc) = match find_key(&s, &store, &key) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let s2 = s.clone();
    let companion = crate::task::lineage::companion_name(&store);
    let task = loc.task;
    let found = blocking(move || {
        s2.stores.read(task, &companion, STORE_WAIT, |set, idx| {
            set.get(idx, &bytes)
        })
    })
    .await;
    let list = match found {
        Some(Ok(Some(Ok(v)))) => v
            .as_deref()
            .and_then(crate::task::lineage::decode)
            .unwrap_or_default(),
        Some(Ok(Some(Err(e)))) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("store read failed: {e}"),
            )
        }
        Some(Err(Busy)) => return query_error(QueryError::Busy),
        Some(Ok(None)) | None => {
            let body = json!({
                "store": store, "key": key, "task": task.to_string(), "local": false,
                "note": format!("the key's task is not on this instance; /stores/{store}/<key> names its owner"),
            });
            return (StatusCode::NOT_FOUND, Json(body)).into_response();
        }
    };
    Json(json!({
        "store": store, "key": key, "task": task.to_string(), "local": true,
        "depth": s.cfg.lineage_depth, "lineage": list,
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
struct ScanParams {
    prefix: Option<String>,
    limit: Option<usize>,
}

/// Decoded entries of `store` from every local task, in key order.
fn local_entries(
    s: &Shared,
    store: &str,
    prefix: &[u8],
) -> Result<Vec<(Value, Value)>, QueryError> {
    let spec = s
        .topology
        .store(store)
        .ok_or_else(|| QueryError::UnknownStore(store.to_string()))?;
    let mut raw = Vec::new();
    // Window stores' keys start with a time or a length: scan them whole
    // and filter on the decoded key.
    let scan_prefix: &[u8] = if spec.window.is_some() { &[] } else { prefix };
    s.stores
        .visit(store, STORE_WAIT, |_, set, idx| {
            if let Ok(mut entries) = set.scan_prefix(idx, scan_prefix) {
                raw.append(&mut entries);
            }
        })
        .map_err(|Busy| QueryError::Busy)?;
    let (k, v) = match &spec.format {
        Some(f) => (Some(&f.key), Some(&f.value)),
        None => (None, None),
    };
    let mut out: Vec<(Vec<u8>, Value, Value)> = match spec.window {
        None => raw
            .into_iter()
            .map(|(kb, vb)| {
                let key = query::render(k, &kb);
                (kb, key, query::render(v, &vb))
            })
            .collect(),
        Some(layout) => raw
            .into_iter()
            .filter_map(|(kb, vb)| {
                let (key, (start, end)) = window::split(layout, &kb)?;
                if !key.starts_with(prefix) {
                    return None;
                }
                let (_, agg) = window::unstamp(&vb)?;
                let shown = match query::render(k, key) {
                    Value::String(t) => t,
                    other => other.to_string(),
                };
                let label = Value::String(format!("{shown} @ [{start}, {end}]"));
                Some((kb.clone(), label, query::render(v, agg)))
            })
            .collect(),
    };
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out.into_iter().map(|(_, k, v)| (k, v)).collect())
}

async fn store_scan(
    State(s): S,
    Path(store): Path<String>,
    Query(q): Query<ScanParams>,
) -> Response {
    let limit = q.limit.unwrap_or(1000);
    let prefix = q.prefix.unwrap_or_default();
    let s2 = s.clone();
    let store2 = store.clone();
    let r = blocking(move || local_entries(&s2, &store2, prefix.as_bytes())).await;
    match r {
        Some(Ok(entries)) => {
            let total = entries.len();
            let rows: Vec<Value> = entries
                .into_iter()
                .take(limit)
                .map(|(k, v)| json!({ "key": k, "value": v }))
                .collect();
            Json(json!({ "store": store, "local_entries": total, "entries": rows })).into_response()
        }
        Some(Err(e)) => query_error(e),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "store scan panicked"),
    }
}

fn view_json(s: &Shared, v: &super::TableView) -> Value {
    match local_entries(s, &v.store, &[]) {
        Ok(mut entries) => {
            let num = |x: &Value| x.as_f64().unwrap_or(f64::NEG_INFINITY);
            entries.sort_by(|a, b| {
                num(&b.1)
                    .total_cmp(&num(&a.1))
                    .then_with(|| a.0.to_string().cmp(&b.0.to_string()))
            });
            let hot = |x: &Value| v.highlight_at.is_some_and(|t| num(x) >= t);
            let at_or_over = entries.iter().filter(|e| hot(&e.1)).count();
            let rows: Vec<Value> = entries
                .iter()
                .take(v.limit)
                .map(|(k, val)| json!({ "key": k, "value": val, "hot": hot(val) }))
                .collect();
            json!({ "title": v.title, "store": v.store, "threshold": v.highlight_at,
                    "entries": entries.len(), "at_or_over": at_or_over, "rows": rows })
        }
        Err(QueryError::Busy) => {
            json!({ "title": v.title, "store": v.store, "threshold": v.highlight_at,
                                         "busy": true, "rows": [] })
        }
        Err(e) => {
            json!({ "title": v.title, "store": v.store, "error": format!("{e:?}"), "rows": [] })
        }
    }
}

async fn api_status(State(s): S) -> Response {
    let lags = lags(&s).await;
    let (ready, health) = health_json(&s);
    let tasks: Vec<Value> = s
        .status
        .tasks()
        .iter()
        .map(|(id, t)| {
            let restore: Vec<Value> = t
                .restore
                .iter()
                .map(|p| {
                    let total = (p.end - p.start).max(0);
                    let done = (p.position - p.start).clamp(0, total.max(0));
                    json!({ "topic": p.topic, "partition": p.partition, "start": p.start, "end": p.end,
                            "position": p.position, "read": p.read, "done": p.done,
                            "percent": if total == 0 { 100.0 } else { 100.0 * done as f64 / total as f64 } })
                })
                .collect();
            json!({ "id": id.to_string(),
                    "state": match t.state {
                        TaskState::Restoring => "restoring",
                        TaskState::Running => "running",
                        TaskState::Standby => "standby",
                    },
                    "processed": t.metrics.processed, "produced": t.metrics.produced,
                    "dead_lettered": t.metrics.dead_lettered, "restore": restore })
        })
        .collect();
    let s2 = s.clone();
    let views: Vec<Value> = blocking(move || s2.views.iter().map(|v| view_json(&s2, v)).collect())
        .await
        .unwrap_or_default();
    let c = s.status.commits();
    Json(json!({
        "application_id": s.cfg.application_id,
        "server": s.cfg.advertised_server(),
        "ready": ready,
        "health": health,
        "processed_total": s.status.processed_total(),
        "rate": s.status.processing_rate(),
        "commits": { "count": c.count, "last_seconds": c.last_seconds, "max_seconds": c.max_seconds,
                     "mean_seconds": if c.count == 0 { 0.0 } else { c.total_seconds / c.count as f64 } },
        "tasks": tasks,
        "lag": lags.as_ref().ok(),
        "lag_error": lags.as_ref().err(),
        "views": views,
        "lineage_depth": s.cfg.lineage_depth,
        "restores": s.status.restores().iter().map(|r| json!({
            "task": r.task.to_string(), "full": r.full, "read": r.read,
            "changelog_records": r.changelog_records, "seconds": r.seconds, "abandoned": r.abandoned,
        })).collect::<Vec<_>>(),
        "describe": s.topology.describe(&s.cfg.application_id),
    }))
    .into_response()
}

/// Read-only [`KeyValueStore`](crate::store::KeyValueStore) access to one
/// store of a task, for window fetches from the HTTP thread.
struct StoreReader<'a> {
    set: &'a crate::store::StoreSet,
    idx: usize,
}

impl crate::store::KeyValueStore for StoreReader<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, crate::StoreError> {
        self.set.get(self.idx, key)
    }
    fn put(&mut self, _key: &[u8], _value: Vec<u8>) -> Result<(), crate::StoreError> {
        Err(crate::StoreError::ReadOnly)
    }
    fn delete(&mut self, _key: &[u8]) -> Result<(), crate::StoreError> {
        Err(crate::StoreError::ReadOnly)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<crate::store::Entries, crate::StoreError> {
        self.set.scan_prefix(self.idx, prefix)
    }
    fn range(&self, from: &[u8], to: &[u8]) -> Result<crate::store::Entries, crate::StoreError> {
        self.set.range(self.idx, from, to)
    }
}
