//! Logs: `tracing` to stderr, filtered by `RUST_LOG` or `-v`, as text or JSON
//! (`--log-format`), and kept off the status line.

use std::io::{self, IsTerminal, Write};
use std::sync::OnceLock;

use indicatif::ProgressBar;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::args::LogFormat;

/// The live status line, if one is drawn: log lines are written around it.
static STATUS_LINE: OnceLock<ProgressBar> = OnceLock::new();

/// Routes log lines around `bar` from now on.
pub(crate) fn attach_status_line(bar: ProgressBar) {
    let _ = STATUS_LINE.set(bar);
}

/// Installs the subscriber: warnings by default, more with each `-v`, as text or JSON.
pub(crate) fn init(verbosity: u8, format: LogFormat) {
    let default = match verbosity {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    if format == LogFormat::Json {
        // Every event with its time, level, target and the fields of the spans it happened
        // in, so that a collector can group by remote, session or client.
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(Stderr)
            .with_current_span(false)
            .with_span_list(true)
            .init();
        return;
    }
    let color = io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stderr)
        .with_ansi(color)
        .with_target(verbosity >= 2);
    if verbosity == 0 {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// Writes to stderr, clearing the status line first when there is one.
struct Stderr;

/// One log line, written whole when dropped.
struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let write = || {
            let _ = io::stderr().lock().write_all(&self.0);
        };
        match STATUS_LINE.get() {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(Vec::with_capacity(128))
    }
}
