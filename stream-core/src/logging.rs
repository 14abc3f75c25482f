//! Logging to stderr that cannot take the process down with it.
//!
//! `tracing-subscriber`'s `fmt` layer reports a write it could not make
//! (stderr a pipe whose reader has gone: `program 2>&1 | head`, a log
//! collector that died) with `eprint!`, and `eprint!` panics when stderr
//! is that same broken pipe. The panic then happens in whichever thread
//! logged, and some of those threads must not panic: sled logs from inside
//! its log-buffer write (`sled::pagecache::iobuf`), after the buffer is
//! sealed and before the next one is installed. A panic there (caught by
//! sled's thread pool) leaves the sealed buffer in place for good, and every
//! later store write spins in `Log::reserve` on a core of its own: commits
//! never finish and the process never exits on SIGTERM.
//!
//! [`init`] installs the same subscriber with that report switched off: a
//! line that cannot be written is dropped, and everything else goes on. A
//! program that installs its own subscriber should do the same
//! (`.log_internal_errors(false)` on the `fmt` builder or layer).

use tracing_subscriber::EnvFilter;

/// Logs to stderr, filtered by `RUST_LOG` or else by `default` (an
/// `EnvFilter` directive such as `"info,librdkafka=warn"`), without ANSI
/// colours; a line that cannot be written is dropped instead of panicking
/// (module docs). Does nothing if a global subscriber is already set.
///
/// ```
/// stream_core::logging::init("info,librdkafka=warn");
/// tracing::info!("logged to stderr");
/// ```
pub fn init(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .log_internal_errors(false)
        .try_init();
}
