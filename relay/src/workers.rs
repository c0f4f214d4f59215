//! Threads that serve connections, each with a single-threaded runtime of its own.
//!
//! A connection handed to a worker stays on its thread, and so does every task it starts. An
//! agent keeps its calls on one HTTP/2 connection, so its control stream, its data calls and
//! the public TCP ports it publishes share one thread: a chunk between a public client's
//! socket and the agent's stream does not wake another thread, and no two threads meet on the
//! locks of one HTTP/2 connection (a port kept across the agent's reconnect keeps accepting on
//! the thread it was opened on). Connections are handed out in turn, so the agents spread
//! over the threads.
//!
//! `tokio_util::task::LocalPoolHandle` also runs single-threaded runtimes, but it neither
//! counts the tasks alive on them (the relay's leak check reads that) nor stops them on
//! demand, and its tasks need not be `Send`, which nothing here needs.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// The relay's worker threads; none means connections are served where they are accepted.
pub(crate) struct Workers {
    runtimes: Vec<Handle>,
    next: AtomicUsize,
    /// Cancelled to end the threads, and with them what still runs there.
    stop: CancellationToken,
}

impl Workers {
    /// No worker threads: connections are served on the runtime that accepts them.
    pub(crate) fn none() -> Self {
        Workers {
            runtimes: Vec::new(),
            next: AtomicUsize::new(0),
            stop: CancellationToken::new(),
        }
    }

    /// Starts `count` worker threads, named `sesame-worker-N`.
    pub(crate) fn start(count: usize) -> io::Result<Self> {
        let mut workers = Workers::none();
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let stop = workers.stop.clone();
            // On failure `workers` is dropped, which stops the threads already started.
            std::thread::Builder::new()
                .name(format!("sesame-worker-{index}"))
                .spawn(move || {
                    runtime.block_on(stop.cancelled());
                    // Dropping the runtime here drops the tasks still on it.
                })?;
            workers.runtimes.push(handle);
        }
        Ok(workers)
    }

    /// The runtimes that serve connections: the workers', or the current one without workers.
    pub(crate) fn runtimes(&self) -> Vec<Handle> {
        if self.runtimes.is_empty() {
            vec![Handle::current()]
        } else {
            self.runtimes.clone()
        }
    }

    /// Serves `tcp` with `serve` on the next worker, registered with that worker's reactor;
    /// without workers, on the current runtime. `serve` is told the index of its runtime
    /// among [`runtimes`](Self::runtimes).
    pub(crate) fn hand_over<S, F>(&self, tcp: TcpStream, serve: S)
    where
        S: FnOnce(TcpStream, usize) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        if self.runtimes.is_empty() {
            tokio::spawn(serve(tcp, 0));
            return;
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.runtimes.len();
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(error) => return debug!(%error, "a connection could not leave its thread"),
        };
        self.runtimes[index].spawn(async move {
            match TcpStream::from_std(tcp) {
                Ok(tcp) => serve(tcp, index).await,
                Err(error) => debug!(%error, "a connection could not join its worker"),
            }
        });
    }

    /// What counts the tasks alive on the workers.
    pub(crate) fn tasks(&self) -> WorkerTasks {
        WorkerTasks(self.runtimes.clone().into())
    }

    /// Ends the worker threads, dropping whatever still runs on them.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Counts the async tasks alive on a relay's worker threads (see
/// [`RelayConfig::worker_threads`](crate::RelayConfig::worker_threads)), for leak checks and
/// diagnostics.
#[derive(Clone, Debug)]
pub struct WorkerTasks(Arc<[Handle]>);

impl WorkerTasks {
    /// How many worker threads the relay has.
    pub fn threads(&self) -> usize {
        self.0.len()
    }

    /// The tasks alive on the worker threads now; 0 without workers, or once they stopped.
    pub fn alive(&self) -> usize {
        self.0
            .iter()
            .map(|runtime| runtime.metrics().num_alive_tasks())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::thread::ThreadId;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;

    /// Hands `count` connections to `workers`; each reports the threads its serving task and
    /// a task that one starts ran on, and echoes a byte. Returns the reports, in the order
    /// the connections were handed over.
    async fn hand_over(workers: &Workers, count: usize) -> Vec<(ThreadId, ThreadId)> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (report, mut reports) = mpsc::unbounded_channel();
        for index in 0..count {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            let report = report.clone();
            workers.hand_over(server, move |mut server, _| async move {
                let here = std::thread::current().id();
                let spawned = tokio::spawn(async { std::thread::current().id() });
                let mut byte = [0];
                server.read_exact(&mut byte).await.unwrap();
                server.write_all(&byte).await.unwrap();
                report.send((index, here, spawned.await.unwrap())).unwrap();
            });
            client.write_all(&[7]).await.unwrap();
            let mut byte = [0];
            client.read_exact(&mut byte).await.unwrap();
            assert_eq!(byte, [7], "the connection works on its worker");
        }
        let mut all = Vec::new();
        for _ in 0..count {
            all.push(reports.recv().await.unwrap());
        }
        // Each connection reports when it is done, which need not be in turn.
        all.sort_by_key(|(index, _, _)| *index);
        all.into_iter()
            .map(|(_, here, spawned)| (here, spawned))
            .collect()
    }

    #[tokio::test]
    async fn connections_go_to_the_workers_in_turn_and_their_tasks_stay_there() {
        let workers = Workers::start(2).unwrap();
        let reports = hand_over(&workers, 4).await;
        let here = std::thread::current().id();
        for (thread, spawned) in &reports {
            assert_ne!(*thread, here, "served on a worker thread");
            assert_eq!(thread, spawned, "a task it starts runs on the same thread");
        }
        assert_eq!(reports[0].0, reports[2].0);
        assert_eq!(reports[1].0, reports[3].0);
        assert_ne!(
            reports[0].0, reports[1].0,
            "two workers share the connections"
        );
        assert_eq!(workers.runtimes().len(), 2);
    }

    #[tokio::test]
    async fn without_workers_connections_are_served_on_the_current_runtime() {
        let workers = Workers::none();
        let here = std::thread::current().id();
        for (thread, spawned) in hand_over(&workers, 2).await {
            assert_eq!((thread, spawned), (here, here));
        }
        assert_eq!(workers.tasks().alive(), 0);
        assert_eq!(workers.runtimes().len(), 1, "the current runtime");
    }

    #[tokio::test]
    async fn stopping_the_workers_drops_what_runs_there() {
        let workers = Workers::start(1).unwrap();
        let tasks = workers.tasks();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (started, mut running) = mpsc::unbounded_channel();
        workers.hand_over(server, move |server, _| async move {
            started.send(()).unwrap();
            std::future::pending::<()>().await;
            drop(server);
        });
        running.recv().await.unwrap();
        assert_eq!(tasks.alive(), 1);

        workers.stop();
        // The dropped task closes the connection: the client reads the end of it.
        let read = tokio::time::timeout(Duration::from_secs(10), client.read(&mut [0; 1])).await;
        assert_eq!(read.expect("closed within 10 s").unwrap(), 0);
    }
}
