//! [`Instance`]: a [`KafkaStreams`] together with its HTTP status server.
//!
//! The runtime knows nothing of HTTP; it hands out a read-only
//! [`InstanceHandle`](crate::runtime::handle::InstanceHandle), and this is
//! where the two are wired: the server is bound before the instance
//! starts (a taken port fails at once) and stops with it.

use std::future::Future;

use crate::http::{Server, TableView};
use crate::runtime::{shutdown_signal, KafkaStreams, RuntimeError};

/// A stream application instance and, when
/// [`StreamsConfig::http`](crate::runtime::StreamsConfig::http) is set, its
/// status page, metrics and interactive queries.
///
/// ```no_run
/// # async fn demo(topology: stream_core::Topology) -> Result<(), stream_core::runtime::RuntimeError> {
/// use stream_core::http::TableView;
/// use stream_core::instance::Instance;
/// use stream_core::runtime::{KafkaStreams, StreamsConfig};
/// let mut config = StreamsConfig::new("word-count", "127.0.0.1:9092");
/// config.http = Some("127.0.0.1:8080".parse().unwrap());
/// Instance::new(KafkaStreams::new(topology, config)?)
///     .with_view(TableView::new("Words", "counts"))
///     .run_until_signal()
///     .await
/// # }
/// ```
pub struct Instance {
    streams: KafkaStreams,
    views: Vec<TableView>,
}

impl Instance {
    /// Wraps `streams`; nothing starts yet.
    pub fn new(streams: KafkaStreams) -> Self {
        Instance {
            streams,
            views: Vec::new(),
        }
    }

    /// Shows `view` (a store as a live table) on the status page.
    pub fn with_view(mut self, view: TableView) -> Self {
        self.views.push(view);
        self
    }

    /// The wrapped instance (for its status or stores).
    pub fn streams(&self) -> &KafkaStreams {
        &self.streams
    }

    /// Runs until SIGINT or SIGTERM, then commits, flushes and closes.
    pub async fn run_until_signal(self) -> Result<(), RuntimeError> {
        self.run(shutdown_signal()).await
    }

    /// Binds the HTTP server (if configured), then runs the instance until
    /// `shutdown` completes or a fatal error occurs; the server stops with it.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), RuntimeError> {
        let handle = self.streams.handle();
        let server = match handle.config().http {
            Some(addr) => {
                let server = Server::bind(addr, handle, self.views).await?;
                let bound = server.local_addr().unwrap_or(addr);
                tracing::info!(addr = %bound, "HTTP server: status page at http://{bound}/");
                Some(server.spawn())
            }
            None => None,
        };
        let result = self.streams.run(shutdown).await;
        if let Some(h) = server {
            h.abort();
        }
        result
    }
}
