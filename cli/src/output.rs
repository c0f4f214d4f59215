//! What commands print as data, to stdout: written with errors returned, not panicked on, so
//! that `sesame ls | head -1` ends quietly and a full disk is reported as an error.

use std::io::{self, Write};

use anyhow::Context;

/// Writes `text` to stdout.
pub(crate) fn print(text: impl AsRef<[u8]>) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_ref())
        .and_then(|()| stdout.flush())
        .context("cannot write to standard output")
}

/// Writes `text` and a newline to stdout.
pub(crate) fn line(text: &str) -> anyhow::Result<()> {
    print(format!("{text}\n"))
}

/// Whether `error` is stdout's reader having gone away (`| head`): nothing to report.
pub(crate) fn reader_gone(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|error| error.kind() == io::ErrorKind::BrokenPipe)
    })
}
