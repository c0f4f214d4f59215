//! The executor hyper spawns the relay's HTTP/2 tasks on: tokio's, with one difference.
//!
//! hyper sends a response body (and, as a client, a request body) from a task of its own, and
//! that task wakes itself for every DATA frame it sends: h2 hands the stream send capacity
//! and notifies the waker the task registered to hear of a reset, which is its own. tokio's
//! multi-thread scheduler treats a task woken during its own poll as one that yields: it
//! queues it behind every other task and wakes an idle worker thread to help, a futex call
//! and a context switch for each frame. The relay's tasks are polled by [`Repoll`] instead,
//! which polls a task again at once when it woke itself, a few times at most, before handing
//! it back to the scheduler.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// The most polls of a task in a row, each after it woke itself, before it goes back to the
/// scheduler like any task that yields.
const MAX_POLLS: usize = 4;

/// Spawns on the current tokio runtime, each task polled by a [`Repoll`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Executor;

impl<F> hyper::rt::Executor<F> for Executor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(async move {
            let mut future = pin!(future);
            let repoll = Repoll::default();
            poll_fn(|cx| repoll.poll(cx, future.as_mut())).await
        });
    }
}

/// Polls one future, again at once whenever it wakes itself during a poll.
pub(crate) struct Repoll {
    shared: Arc<Shared>,
    /// The waker the future sees: wakes `shared`.
    waker: Waker,
}

impl Default for Repoll {
    fn default() -> Self {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(IDLE),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(shared.clone());
        Repoll { shared, waker }
    }
}

/// Not being polled: a wake-up goes to the task.
const IDLE: u8 = 0;
/// Being polled: a wake-up only marks that it came.
const POLLING: u8 = 1;
/// Being polled, and woken since the poll began.
const WOKEN: u8 = 2;

struct Shared {
    state: AtomicU8,
    /// The waker of the task that polls the future.
    task: AtomicWaker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let marked =
            self.state
                .compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire);
        if marked.is_err() {
            self.task.wake();
        }
    }
}

impl Repoll {
    /// Polls `future` for the task of `cx`: again, up to [`MAX_POLLS`] times, while it wakes
    /// itself during the poll and the task has budget left.
    pub(crate) fn poll<F: Future>(
        &self,
        cx: &mut Context<'_>,
        mut future: Pin<&mut F>,
    ) -> Poll<F::Output> {
        self.shared.task.register(cx.waker());
        let mut inner = Context::from_waker(&self.waker);
        for _ in 0..MAX_POLLS {
            self.shared.state.store(POLLING, Ordering::Release);
            if let Poll::Ready(output) = future.as_mut().poll(&mut inner) {
                self.shared.state.store(IDLE, Ordering::Release);
                return Poll::Ready(output);
            }
            let unwoken = self.shared.state.compare_exchange(
                POLLING,
                IDLE,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            // A wake-up from outside after this point finds IDLE and goes to the task.
            if unwoken.is_ok() {
                return Poll::Pending;
            }
            // Out of budget, the future would only be told to wait again: yield instead.
            if !tokio::task::coop::has_budget_remaining() {
                break;
            }
        }
        self.shared.state.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Counts the wake-ups a task's own waker receives.
    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting_waker() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker::default());
        (counter.clone(), Waker::from(counter))
    }

    /// A future that wakes itself during its first `wakes` polls, then completes.
    struct WakesItself {
        wakes: usize,
        polls: usize,
    }

    impl Future for WakesItself {
        type Output = usize;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.polls > self.wakes {
                return Poll::Ready(self.polls);
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_future_that_wakes_itself_is_polled_again_without_waking_the_task() {
        let (counter, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let repoll = Repoll::default();
        let mut future = pin!(WakesItself { wakes: 2, polls: 0 });
        assert_eq!(repoll.poll(&mut cx, future.as_mut()), Poll::Ready(3));
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_future_that_keeps_waking_itself_goes_back_to_the_scheduler() {
        let (counter, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let repoll = Repoll::default();
        let mut future = pin!(WakesItself {
            wakes: usize::MAX,
            polls: 0
        });
        assert_eq!(repoll.poll(&mut cx, future.as_mut()), Poll::Pending);
        assert_eq!(future.polls, MAX_POLLS);
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "the task is told to poll again"
        );
    }

    #[tokio::test]
    async fn a_wake_up_from_outside_reaches_the_task() {
        let (counter, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let repoll = Repoll::default();
        let (sender, mut receiver) = tokio::sync::oneshot::channel::<u8>();
        let mut future = pin!(poll_fn(|cx| Pin::new(&mut receiver).poll(cx)));
        assert!(repoll.poll(&mut cx, future.as_mut()).is_pending());
        sender.send(7).expect("the receiver waits");
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(repoll.poll(&mut cx, future.as_mut()), Poll::Ready(Ok(7)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_on_the_executor_run_to_completion_across_threads() {
        use hyper::rt::Executor as _;
        let (done, mut finished) = tokio::sync::mpsc::channel(64);
        for task in 0..64u32 {
            let done = done.clone();
            Executor.execute(async move {
                // A wake-up from itself, then one from another task, then the end.
                tokio::task::yield_now().await;
                let (sender, receiver) = tokio::sync::oneshot::channel();
                tokio::spawn(async move { sender.send(task) });
                let value = receiver.await.expect("the sender sends");
                done.send(value).await.expect("the receiver waits");
            });
        }
        drop(done);
        let mut seen = Vec::new();
        let all = async {
            while let Some(task) = finished.recv().await {
                seen.push(task);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .expect("every task finishes");
        seen.sort_unstable();
        assert_eq!(seen, (0..64).collect::<Vec<_>>());
    }
}
