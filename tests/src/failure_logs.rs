//! A failing test shows the end of the logs it names.
//!
//! Integration tests write each program's output to a file under
//! [`log_dir`](crate::log_dir) and name that file in their assertion
//! messages. On a fresh clone in CI the files go away with the clone, and
//! only the test's printed output is kept, so a failure that says "see
//! the log" says nothing. The panic hook installed here prints, after the
//! usual panic message, the last [`TAIL_LINES`] lines of
//!
//! - every file under the log directory that the panic message names, and
//! - every file [`register`]ed by the panicking test's thread (logs a test
//!   does not name in its messages, and [`in_process_log`], the log of the
//!   runtimes a test runs inside its own process).
//!
//! The lines go through `eprintln!`, so libtest captures them with the
//! rest of the failing test's output and prints them under its name.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once, OnceLock};

/// How many of a log's last lines a failure prints.
pub const TAIL_LINES: usize = 60;

/// A line longer than this is cut (a log line may carry a record).
const LINE_CHARS: usize = 400;

/// Logs registered per test thread name.
fn registered() -> &'static Mutex<BTreeMap<String, Vec<PathBuf>>> {
    static LOGS: OnceLock<Mutex<BTreeMap<String, Vec<PathBuf>>>> = OnceLock::new();
    LOGS.get_or_init(Default::default)
}

/// The current thread's name: libtest names a test's thread after the test.
fn thread_key() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_string()
}

/// Installs the panic hook (once per process); the previous hook still
/// runs first.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            let message = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            print_tails(message);
        }));
    });
}

/// Prints the tail of `log` too if the current test fails.
pub fn register(log: &Path) {
    install();
    if let Ok(mut logs) = registered().lock() {
        let entry = logs.entry(thread_key()).or_default();
        if !entry.iter().any(|l| l == log) {
            entry.push(log.to_path_buf());
        }
    }
}

/// The log of runtimes that tests run in their own process: the first
/// call installs a global `tracing` subscriber writing to
/// `<log dir>/<test binary>-in-process.log` (`RUST_LOG`, else `info`, with
/// librdkafka at `warn`); every call registers that file for the calling
/// test. The tests of one binary share the file.
pub fn in_process_log() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        let binary = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "tests".into());
        let path = crate::log_dir().join(format!("{binary}-in-process.log"));
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(file) => {
                let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,librdkafka=warn"));
                let _ = tracing_subscriber::fmt()
                    .with_env_filter(filter)
                    .with_writer(Mutex::new(file))
                    .with_ansi(false)
                    .with_thread_names(true)
                    .log_internal_errors(false)
                    .try_init();
            }
            Err(e) => eprintln!("in-process log {}: {e}", path.display()),
        }
        path
    });
    register(path);
    path.clone()
}

/// Prints the tails of the logs `message` names and of those registered
/// by the current thread.
fn print_tails(message: &str) {
    let mut logs = named_logs(message);
    if let Ok(registered) = registered().lock() {
        for log in registered.get(&thread_key()).into_iter().flatten() {
            if !logs.contains(log) {
                logs.push(log.clone());
            }
        }
    }
    for log in logs {
        match tail(&log, TAIL_LINES) {
            Ok(lines) => {
                eprintln!(
                    "---- the last {} lines of {} ----",
                    lines.len(),
                    log.display()
                );
                for line in lines {
                    eprintln!("{line}");
                }
                eprintln!("---- end of {} ----", log.display());
            }
            Err(e) => eprintln!("---- {}: {e} ----", log.display()),
        }
    }
}

/// The files under the log directory that `message` names.
fn named_logs(message: &str) -> Vec<PathBuf> {
    let dir = crate::log_dir().display().to_string();
    let mut found = Vec::new();
    let mut rest = message;
    while let Some(at) = rest.find(&dir) {
        let after = &rest[at..];
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | ',' | ';' | '"' | '\''))
            .unwrap_or(after.len());
        let path = PathBuf::from(after[..end].trim_end_matches(['.', ':']));
        if path.is_file() && !found.contains(&path) {
            found.push(path);
        }
        rest = &after[end..];
    }
    found
}

/// The last `n` lines of `path`, each cut to [`LINE_CHARS`] characters.
fn tail(path: &Path, n: usize) -> std::io::Result<Vec<String>> {
    let mut lines = std::collections::VecDeque::with_capacity(n);
    for line in BufReader::new(std::fs::File::open(path)?).split(b'\n') {
        let line = line?;
        let text = String::from_utf8_lossy(&line);
        let cut: String = text.chars().take(LINE_CHARS).collect();
        if lines.len() == n {
            lines.pop_front();
        }
        lines.push_back(cut);
    }
    Ok(lines.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log named in a message is found with the punctuation around it
    /// left off, and a name that is no file is not.
    #[test]
    fn should_find_the_logs_a_message_names() {
        let dir = crate::log_dir();
        let a = dir.join(format!("{}.log", crate::unique("named-a")));
        let b = dir.join(format!("{}.log", crate::unique("named-b")));
        std::fs::write(&a, "a\n").unwrap();
        std::fs::write(&b, "b\n").unwrap();
        let missing = dir.join("no-such-file.log");
        let message = format!(
            "counts wrong (log {}), see {}, and {}.",
            a.display(),
            b.display(),
            missing.display()
        );
        assert_eq!(named_logs(&message), vec![a.clone(), b.clone()]);
        std::fs::remove_file(a).unwrap();
        std::fs::remove_file(b).unwrap();
    }

    /// The tail keeps the last lines, in order, and cuts long ones.
    #[test]
    fn should_keep_the_last_lines_cut_to_length() {
        let path = crate::log_dir().join(format!("{}.log", crate::unique("tail")));
        let long = "x".repeat(LINE_CHARS + 50);
        std::fs::write(&path, format!("1\n2\n3\n{long}\n")).unwrap();
        let got = tail(&path, 2).unwrap();
        assert_eq!(got, vec!["3".to_string(), "x".repeat(LINE_CHARS)]);
        std::fs::remove_file(path).unwrap();
    }
}
