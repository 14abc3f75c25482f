//! Connecting: the first metadata round trip, and turning a failed
//! connection into the clearest error librdkafka's reports allow (wrong
//! password, an unsupported SASL mechanism, a listener of another security
//! protocol, TLS trouble, no broker at all).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::config::{KafkaClient, StreamsConfig};
use super::error::RuntimeError;

/// How long a start-time metadata call may take.
pub(crate) const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// The last error librdkafka reported: its code, if any, and its text.
type LastError = Option<(Option<RDKafkaErrorCode>, String)>;

/// Client context that remembers the last error librdkafka reported, so a
/// failed call can say why (wrong password, no broker) instead of "timed out".
#[derive(Clone, Default)]
pub struct ErrorCapture {
    last: Arc<Mutex<LastError>>,
    peer_closed: Arc<std::sync::atomic::AtomicBool>,
}

impl ErrorCapture {
    /// The last error reported by the client, if any.
    pub fn last(&self) -> Option<(Option<RDKafkaErrorCode>, String)> {
        self.last.lock().ok().and_then(|g| g.clone())
    }

    /// Whether a broker accepted a connection and then closed it at the
    /// first request (a listener of another security protocol does that).
    pub fn peer_closed(&self) -> bool {
        self.peer_closed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl ClientContext for ErrorCapture {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        if message.contains("connection closed by peer")
            || message.contains("incorrect security.protocol")
        {
            self.peer_closed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if message.contains("Authentication failed")
            || message.contains("SASL authentication error")
        {
            if let Ok(mut g) = self.last.lock() {
                *g = Some((Some(RDKafkaErrorCode::Authentication), message.to_string()));
            }
        }
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "librdkafka", "{fac}: {message}")
            }
            L::Warning => tracing::warn!(target: "librdkafka", "{fac}: {message}"),
            L::Notice | L::Info => tracing::info!(target: "librdkafka", "{fac}: {message}"),
            L::Debug => tracing::debug!(target: "librdkafka", "{fac}: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "kafka client error");
        if let Ok(mut g) = self.last.lock() {
            // An authentication or TLS failure explains everything after it
            // ("all brokers down"); keep it.
            let sticky = matches!(
                g.as_ref().map(|(c, _)| *c),
                Some(Some(
                    RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL
                ))
            );
            if !sticky {
                *g = Some((error.rdkafka_error_code(), reason.to_string()));
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ErrorCapture {}

/// Turns a failed metadata call into the clearest error available.
pub fn explain_connect_failure(
    cfg: &StreamsConfig,
    capture: &ErrorCapture,
    err: KafkaError,
) -> RuntimeError {
    let last = capture.last();
    let reason = last.as_ref().map(|(_, r)| r.clone()).unwrap_or_default();
    let code = last.as_ref().and_then(|(c, _)| *c);
    if let Some(e) = unsupported_mechanism(cfg, &reason) {
        return e;
    }
    let protocol = cfg
        .security
        .protocol
        .clone()
        .unwrap_or_else(|| "PLAINTEXT".into())
        .to_ascii_uppercase();
    if capture.peer_closed() && code != Some(RDKafkaErrorCode::Authentication) {
        return wrong_protocol(cfg, &protocol);
    }
    if code == Some(RDKafkaErrorCode::Authentication) || reason.contains("uthentication") {
        return RuntimeError::Authentication {
            user: cfg.security.username.clone().unwrap_or_default(),
            mechanism: cfg
                .security
                .sasl_mechanism
                .clone()
                .unwrap_or_else(|| "SASL".into()),
        };
    }
    if code == Some(RDKafkaErrorCode::SSL) || reason.contains("SSL handshake failed") {
        let detail = if reason.contains("certificate verify failed") {
            "the broker's certificate is not signed by a CA this client trusts (certificate verify failed)".to_string()
        } else if reason.contains("wrong version number")
            || reason.contains("packet length too long")
        {
            "the listener does not speak TLS (wrong version number): use --security-protocol SASL_PLAINTEXT or PLAINTEXT for it".to_string()
        } else {
            reason
        };
        return RuntimeError::Tls {
            bootstrap: cfg.bootstrap_servers.clone(),
            detail,
        };
    }
    RuntimeError::Unreachable {
        bootstrap: cfg.bootstrap_servers.clone(),
        detail: if reason.is_empty() {
            err.to_string()
        } else {
            reason
        },
    }
}

/// The brokers refused the SASL mechanism: name what they offer.
fn unsupported_mechanism(cfg: &StreamsConfig, reason: &str) -> Option<RuntimeError> {
    if !reason.contains("Unsupported SASL mechanism") {
        return None;
    }
    let supported = reason
        .split("supported mechanisms: ")
        .nth(1)
        .map(|s| s.split(" (").next().unwrap_or(s).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "other mechanisms".into());
    let suggest = if supported.contains("SCRAM-SHA-256") {
        "SCRAM-SHA-256".to_string()
    } else {
        supported
            .split(',')
            .next()
            .unwrap_or("SCRAM-SHA-256")
            .trim()
            .to_string()
    };
    Some(RuntimeError::UnsupportedMechanism {
        mechanism: cfg
            .security
            .sasl_mechanism
            .clone()
            .unwrap_or_else(|| "GSSAPI (librdkafka's default)".into()),
        supported,
        suggest,
    })
}

/// A listener that closed the connection at the first request: say which
/// protocol it likely speaks and which flags to add.
fn wrong_protocol(cfg: &StreamsConfig, used: &str) -> RuntimeError {
    let (expected, hint) = match used {
        "PLAINTEXT" => (
            "SASL or TLS",
            "for a SASL listener such as the classroom's add --security-protocol SASL_PLAINTEXT --sasl-mechanism SCRAM-SHA-256 --username team-N (password in KAFKA_PASSWORD); for TLS use SSL or SASL_SSL".to_string(),
        ),
        "SASL_PLAINTEXT" => (
            "TLS or no SASL",
            "try --security-protocol SASL_SSL (with --ssl-ca-location) or PLAINTEXT, whichever this listener is".to_string(),
        ),
        _ => (
            "another protocol",
            "check --security-protocol against the listener at this port".to_string(),
        ),
    };
    RuntimeError::WrongProtocol {
        bootstrap: cfg.bootstrap_servers.clone(),
        used: used.to_string(),
        expected: expected.to_string(),
        hint,
    }
}

/// One metadata round trip with the application's settings: succeeds, or
/// says why not (wrong credentials, no broker reachable).
pub fn check_connection(cfg: &StreamsConfig) -> Result<(), RuntimeError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let capture = ErrorCapture::default();
    let mut c = cfg.client_config();
    cfg.apply_aimed_extra(&mut c, KafkaClient::GroupReader);
    let probe: BaseConsumer<ErrorCapture> = c
        .create_with_context(capture.clone())
        .map_err(|e| RuntimeError::Config(format!("invalid client settings: {e}")))?;
    let until = std::time::Instant::now() + METADATA_TIMEOUT;
    loop {
        match probe.fetch_metadata(None, Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(e) => {
                // Errors and logs arrive as events; serve them before deciding.
                let _ = probe.poll(Duration::from_millis(100));
                let auth_failed = matches!(
                    capture.last(),
                    Some((Some(RDKafkaErrorCode::Authentication), _))
                );
                let wrong_protocol = capture.peer_closed()
                    && until - std::time::Instant::now() < METADATA_TIMEOUT / 2;
                if auth_failed || wrong_protocol || std::time::Instant::now() >= until {
                    return Err(explain_connect_failure(cfg, &capture, e));
                }
            }
        }
    }
}
