//! What a running `sesame` process tells about itself on request: on SIGUSR1 it writes one
//! line to stderr with its live async tasks, so operators and the soak test can watch for
//! leaks without a debugger.

use tokio::signal::unix::{SignalKind, signal};

/// Answers SIGUSR1 with a stats line, for as long as the runtime runs.
pub fn answer_stats_requests() {
    let Ok(mut requests) = signal(SignalKind::user_defined1()) else {
        return;
    };
    tokio::spawn(async move {
        while requests.recv().await.is_some() {
            eprintln!("{}", stats_line());
        }
    });
}

/// `sesame stats: tasks=N workers=M`: tasks alive in the runtime (including this one) and
/// its worker threads.
fn stats_line() -> String {
    let metrics = tokio::runtime::Handle::current().metrics();
    format!(
        "sesame stats: tasks={} workers={}",
        metrics.num_alive_tasks(),
        metrics.num_workers()
    )
}
