//! What a running `sesame` process tells about itself on request: on SIGUSR1 it writes one
//! line to stderr with its live async tasks, so operators and the soak test can watch for
//! leaks without a debugger.

use std::sync::OnceLock;

use sesame_relay::WorkerTasks;
use tokio::signal::unix::{SignalKind, signal};

/// The relay's worker threads, once a relay runs in this process.
static RELAY_WORKERS: OnceLock<WorkerTasks> = OnceLock::new();

/// Counts the tasks and threads of a relay's workers in the stats line too.
pub(crate) fn include_relay_workers(workers: WorkerTasks) {
    let _ = RELAY_WORKERS.set(workers);
}

/// Answers SIGUSR1 with a stats line, for as long as the runtime runs.
pub(crate) fn answer_stats_requests() {
    let Ok(mut requests) = signal(SignalKind::user_defined1()) else {
        return;
    };
    tokio::spawn(async move {
        while requests.recv().await.is_some() {
            eprintln!("{}", stats_line());
        }
    });
}

/// `sesame stats: tasks=N workers=M`: tasks alive in the process (including this one) and the
/// threads that run them: a relay's worker threads if it has any, else the runtime's.
fn stats_line() -> String {
    let metrics = tokio::runtime::Handle::current().metrics();
    let relay = RELAY_WORKERS.get();
    let worker_tasks = relay.map_or(0, WorkerTasks::alive);
    let workers = match relay.map_or(0, WorkerTasks::threads) {
        0 => metrics.num_workers(),
        threads => threads,
    };
    format!(
        "sesame stats: tasks={} workers={workers}",
        metrics.num_alive_tasks() + worker_tasks,
    )
}
