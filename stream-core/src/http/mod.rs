//! The optional HTTP server of a running instance (`StreamsConfig::http`).
//!
//! | path | what |
//! |---|---|
//! | `/` | status page: topology diagram, tasks, restore progress, lag, table views |
//! | `/health` | `200 ready` once every assigned task has restored, else `503` |
//! | `/metrics` | Prometheus text ([`metrics`]) |
//! | `/topology` | `describe()` text; `/topology.mmd` Mermaid; `/topology.svg` SVG; `/topology.dot` DOT |
//! | `/stores` | the stores, and which of their tasks run here |
//! | `/stores/{store}/{key}` | one key: its value if this instance owns it, else the owner |
//! | `/stores/{store}?prefix=P&limit=N` | the local entries whose key starts with `P` |
//! | `/api/status` | what the status page shows, as JSON |
//!
//! The server never blocks the stream thread: lag and group membership come
//! from a side Kafka client ([`probe`]), store reads wait at most a moment
//! for the stream thread and answer `503` while a restore holds the state.

mod auth;
pub mod metrics;
pub mod probe;
pub mod query;
mod routes;
pub mod svg;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::graph::Topology;
use crate::runtime::handle::{InstanceHandle, StoreAccess};
use crate::runtime::{RuntimeError, RuntimeStatus, StreamsConfig};

pub use probe::{Lag, Member};
pub use svg::topology_svg;

/// A store shown as a live table on the status page, sorted by value,
/// largest first (the watchlist: companies and their counts).
#[derive(Debug, Clone, PartialEq)]
pub struct TableView {
    /// Heading.
    pub title: String,
    /// Store name.
    pub store: String,
    /// Rows whose numeric value is at or over this are highlighted.
    pub highlight_at: Option<f64>,
    /// Rows shown at most.
    pub limit: usize,
}

impl TableView {
    /// A view of `store` titled `title`, 100 rows, no highlight.
    pub fn new(title: &str, store: &str) -> Self {
        TableView {
            title: title.to_string(),
            store: store.to_string(),
            highlight_at: None,
            limit: 100,
        }
    }

    /// Highlights rows whose value is at least `threshold`.
    pub fn highlight_at(mut self, threshold: f64) -> Self {
        self.highlight_at = Some(threshold);
        self
    }

    /// Shows at most `limit` rows.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
}

/// Percent-encodes a URL path segment (RFC 3986 unreserved characters
/// stay): how a store key goes into `/stores/{store}/{key}`.
///
/// ```
/// assert_eq!(stream_core::http::encode_path("Acme & Sons"), "Acme%20%26%20Sons");
/// ```
pub fn encode_path(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What the handlers share.
pub(crate) struct Shared {
    pub(crate) cfg: Arc<StreamsConfig>,
    pub(crate) topology: Arc<Topology>,
    pub(crate) status: Arc<RuntimeStatus>,
    /// The instance, for its partition counts.
    pub(crate) instance: InstanceHandle,
    /// The instance's stores.
    pub(crate) stores: StoreAccess,
    pub(crate) probe: Result<Arc<probe::Probe>, String>,
    pub(crate) views: Vec<TableView>,
    pub(crate) svg: Option<String>,
}

impl Shared {
    /// Partition count per topic (empty until the instance has started).
    pub(crate) fn partitions(&self) -> &HashMap<String, i32> {
        self.instance.partitions()
    }

    /// The input partitions this instance reads now (from its tasks).
    pub(crate) fn owned_partitions(&self) -> Vec<(String, i32)> {
        let app = &self.cfg.application_id;
        let mut out = Vec::new();
        let tasks = self.status.tasks();
        let owned = tasks
            .iter()
            .filter(|(_, t)| t.state != crate::runtime::status::TaskState::Standby)
            .map(|(id, _)| id);
        for id in owned {
            let Some(st) = self.topology.subtopologies().get(id.subtopology) else {
                continue;
            };
            for t in &st.sources {
                let topic = t.resolve(app);
                if self.cfg.layout().is_single() {
                    let n = self.partitions().get(&topic).copied().unwrap_or(1);
                    out.extend((0..n).map(|p| (topic.clone(), p)));
                } else {
                    out.push((topic, id.partition));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// A bound, not yet serving, HTTP server.
pub struct Server {
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds `addr` for `instance`, showing `views`: a clear error if the
    /// port is taken.
    ///
    /// Store contents are data: on an address other than loopback the
    /// server needs a bearer token ([`StreamsConfig::http_token`]) or an
    /// explicit [`StreamsConfig::http_insecure`], and says which at start.
    ///
    /// [`StreamsConfig::http_token`]: crate::runtime::StreamsConfig::http_token
    /// [`StreamsConfig::http_insecure`]: crate::runtime::StreamsConfig::http_insecure
    pub async fn bind(
        addr: SocketAddr,
        instance: InstanceHandle,
        views: Vec<TableView>,
    ) -> Result<Server, RuntimeError> {
        let token = instance.config().http_token.clone();
        match (addr.ip().is_loopback(), &token, instance.config().http_insecure) {
            (false, None, false) => {
                return Err(RuntimeError::Config(format!(
                    "the HTTP server on {addr} is not on loopback and serves store contents: give it a token (--http-token or STREAMS_HTTP_TOKEN) or pass --http-insecure"
                )))
            }
            (false, None, true) => {
                tracing::warn!(%addr, "HTTP server reachable from other machines WITHOUT a token (--http-insecure): anyone who reaches it can read the stores")
            }
            (_, Some(_), _) => tracing::info!(%addr, "HTTP server requires a bearer token"),
            (true, None, _) => tracing::info!(%addr, "HTTP server on loopback, no token"),
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| RuntimeError::HttpBind { addr, source })?;
        let cfg = instance.config().clone();
        let topology = instance.topology().clone();
        let status = instance.status().clone();
        let stores = instance.stores().clone();
        let svg = topology_svg(&topology, &cfg.application_id);
        let probe = probe::Probe::new(&cfg).map(Arc::new);
        let shared = Arc::new(Shared {
            cfg,
            topology,
            status,
            instance,
            stores,
            probe,
            views,
            svg,
        });
        Ok(Server { listener, shared })
    }

    /// The address actually bound (port 0 picks one).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until the returned task is aborted.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        let token = self.shared.cfg.http_token.clone();
        let app = routes::router(self.shared);
        let app = match token {
            Some(t) => app.layer(axum::middleware::from_fn(move |req, next| {
                auth::require(t.clone(), req, next)
            })),
            None => app,
        };
        tokio::spawn(async move {
            if let Err(e) = axum::serve(self.listener, app).await {
                tracing::warn!(error = %e, "HTTP server stopped");
            }
        })
    }
}
