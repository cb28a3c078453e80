//! An idle socket without a task.
//!
//! Most sockets of a logout hub wait for hours for one frame. A tokio task
//! per socket costs its cache-aligned cell plus the future's state, more
//! than everything else a socket owns together. So once a socket is in its
//! steady state it is *parked*: its state moves into a [`Parked`], which is
//! itself the waker registered with the stream's readiness and with the
//! connection's backlog. A wake-up puts it on the [`Woken`] queue, whose few
//! long-lived tasks poll it once; when the steady state ends, its
//! continuation ([`Idle::resume`]) gets a task of its own.
//!
//! Why a queue, not a task per wake-up: a burst of acks spawned a burst of
//! short tasks, which pushed HTTP connections off the worker's local run
//! queue and tripled the trigger's tail latency (figures: bench/README.md).
//!
//! Exactly one poll runs at a time: wake-ups during a poll are remembered
//! (`NOTIFIED`) and answered by queueing again, so a busy socket still
//! yields to the others between rounds. After the steady state ends the
//! state is taken out, so a waker left behind in the reactor or the backlog
//! holds only this empty shell, never the connection (no reference cycle).
//!
//! Must not: poll anything but the parked state's own `poll_idle`, or keep
//! the state once it has ended.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::App;

/// Polls between two yields of a queue's task, so that HTTP connections
/// and the rest interleave with a burst of wake-ups.
const BUDGET: usize = 16;

/// Parked sockets that were woken, and the tasks that poll them: one queue
/// and task per runtime worker (a socket always goes to the same one).
pub struct Woken {
    shards: Box<[Arc<Shard>]>,
    tasks: Vec<JoinHandle<()>>,
    tracker: TaskTracker,
    runtime: tokio::runtime::Handle,
    stopped: AtomicBool,
}

/// One queue of woken sockets; each entry holds a tracker token, so that
/// shutdown waits for the sockets woken but not yet polled as it waits for
/// tasks.
#[derive(Default)]
struct Shard {
    queue: Mutex<VecDeque<(Arc<dyn Run>, TaskTrackerToken)>>,
    nonempty: Notify,
}

/// A woken parked state, type-erased for the queue.
trait Run: Send + Sync {
    fn run(self: Arc<Self>);
}

impl Woken {
    /// Starts the queues' tasks on the current runtime; spawned work is
    /// tracked by `tracker`.
    pub fn start(tracker: TaskTracker) -> Woken {
        let runtime = tokio::runtime::Handle::current();
        let n = runtime.metrics().num_workers().max(1);
        let shards: Box<[Arc<Shard>]> = (0..n).map(|_| Arc::new(Shard::default())).collect();
        let tasks = shards
            .iter()
            .map(|s| runtime.spawn(drain(s.clone())))
            .collect();
        Woken {
            shards,
            tasks,
            tracker,
            runtime,
            stopped: AtomicBool::new(false),
        }
    }

    fn push(&self, woken: Arc<dyn Run>) {
        if self.stopped.load(Ordering::Acquire) {
            // The hub is gone; an entry now would never be polled and would
            // keep the hub's state alive (entries hold it).
            return;
        }
        // Sockets spread by address; one socket keeps its queue.
        let key = Arc::as_ptr(&woken) as *const u8 as usize >> 6;
        let shard = &self.shards[key % self.shards.len()];
        let entry = (woken, self.tracker.token());
        let was_empty = {
            let mut q = shard.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.push_back(entry);
            q.len() == 1
        };
        if was_empty {
            // Stores a permit if the task is busy: no wake-up is lost.
            shard.nonempty.notify_one();
        }
    }

    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.tracker.spawn_on(f, &self.runtime);
    }

    /// Stops the queues' tasks; for after shutdown has waited for the
    /// tracker (which counts every queued socket).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        for t in &self.tasks {
            t.abort();
        }
        // Left only if shutdown gave up waiting.
        for s in self.shards.iter() {
            s.queue.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }
}

impl Drop for Woken {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A queue's task: polls what was woken, `BUDGET` at a time.
async fn drain(shard: Arc<Shard>) {
    let mut batch = VecDeque::new();
    loop {
        std::mem::swap(
            &mut batch,
            &mut *shard.queue.lock().unwrap_or_else(|e| e.into_inner()),
        );
        if batch.is_empty() {
            shard.nonempty.notified().await;
            continue;
        }
        let mut polled = 0;
        while let Some((woken, token)) = batch.pop_front() {
            // `run` catches a panic of the poll itself; this is the last
            // line for the queue, which goes on with the others.
            if std::panic::catch_unwind(AssertUnwindSafe(|| woken.run())).is_err() {
                tracing::error!("a parked socket's wake-up panicked");
            }
            drop(token);
            polled += 1;
            if polled % BUDGET == 0 {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// A socket's state while it waits.
pub trait Idle: Send + Sized + 'static {
    /// How the idle state ends.
    type End: Send + 'static;
    /// Checks for work and does it; registers `cx`'s waker with everything
    /// that may bring more before returning `Pending`.
    fn poll_idle(&mut self, app: &App, cx: &mut Context<'_>) -> Poll<Self::End>;
    /// What follows the idle state; runs in a task of its own.
    fn resume(self, app: Arc<App>, end: Self::End) -> impl Future<Output = ()> + Send + 'static;
    /// How the idle state ends when its poll panicked (a bug): the socket
    /// must still be closed and freed.
    fn panicked() -> Self::End;
}

/// Nobody polls and nobody is scheduled to.
const IDLE: u8 = 0;
/// A task to poll has been spawned.
const SCHEDULED: u8 = 1;
/// A poll is running.
const RUNNING: u8 = 2;
/// A poll is running and a wake-up came meanwhile.
const NOTIFIED: u8 = 3;
/// The idle state ended; wake-ups are ignored.
const DONE: u8 = 4;

pub struct Parked<S: Idle> {
    app: Arc<App>,
    state: AtomicU8,
    idle: Mutex<Option<S>>,
}

/// Parks `idle`: polls it once in the calling task (to register its wakers),
/// after which the caller may end; from then on wake-ups drive it.
pub fn park<S: Idle>(app: Arc<App>, idle: S) {
    let parked = Arc::new(Parked {
        app,
        state: AtomicU8::new(RUNNING),
        idle: Mutex::new(Some(idle)),
    });
    if let Some((state, end)) = parked.poll_now() {
        // Ended at once (a logout won the race with `ready`): the caller's
        // task may not wait for the continuation, so it gets its own.
        let app = parked.app.clone();
        parked.app.woken.spawn(state.resume(app, end));
    }
}

impl<S: Idle> Parked<S> {
    /// Polls while this thread owns the `RUNNING` state. Returns the state
    /// and how it ended once it has, for the caller to resume.
    fn poll_now(self: &Arc<Self>) -> Option<(S, S::End)> {
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let state = idle.as_mut()?;
            let ended = match std::panic::catch_unwind(AssertUnwindSafe(|| {
                state.poll_idle(&self.app, &mut cx)
            })) {
                Ok(Poll::Ready(end)) => Some(end),
                Ok(Poll::Pending) => None,
                // Left RUNNING, nothing would poll it again and the socket
                // would leak: end it like any other state.
                Err(_) => {
                    tracing::error!("a parked socket's poll panicked; closing it");
                    self.app.metrics.socket_panics.inc();
                    Some(S::panicked())
                }
            };
            if let Some(end) = ended {
                self.state.store(DONE, Ordering::Release);
                return idle.take().map(|state| (state, end));
            }
        }
        if self
            .state
            .compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Woken while polling (or the poll asked to yield): poll again
            // after the others queued.
            self.state.store(SCHEDULED, Ordering::Release);
            self.app.woken.push(self.clone());
        }
        None
    }
}

impl<S: Idle> Run for Parked<S> {
    /// Polls once; a state that ended goes on with its continuation in a
    /// task of its own.
    fn run(self: Arc<Self>) {
        self.state.store(RUNNING, Ordering::Release);
        if let Some((state, end)) = self.poll_now() {
            let app = self.app.clone();
            drop(self);
            app.woken.spawn(state.resume(app.clone(), end));
        }
    }
}

impl<S: Idle> Wake for Parked<S> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            let next = match current {
                IDLE => SCHEDULED,
                RUNNING => NOTIFIED,
                _ => return,
            };
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) if next == SCHEDULED => return self.app.woken.push(self.clone()),
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Hub;
    use crate::config::{Config, Mode};
    use std::sync::Weak;
    use std::time::Duration;
    use tokio::sync::{mpsc, oneshot};

    /// An idle state driven from outside: every poll sends its waker to the
    /// test; it ends once `end` is set.
    struct Probe {
        polls: mpsc::UnboundedSender<Waker>,
        end: Arc<Mutex<Option<u32>>>,
        /// Wakes itself this many times from inside a poll.
        self_wakes: usize,
        /// The next poll panics.
        panic: Arc<AtomicBool>,
        resumed: Option<oneshot::Sender<u32>>,
        _alive: Arc<()>,
    }

    impl Idle for Probe {
        type End = u32;

        fn poll_idle(&mut self, _app: &App, cx: &mut Context<'_>) -> Poll<u32> {
            let _ = self.polls.send(cx.waker().clone());
            if self.panic.load(Ordering::Acquire) {
                panic!("a bug in a socket's poll");
            }
            if let Some(end) = *self.end.lock().unwrap() {
                return Poll::Ready(end);
            }
            if self.self_wakes > 0 {
                self.self_wakes -= 1;
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        }

        fn resume(mut self, _app: Arc<App>, end: u32) -> impl Future<Output = ()> + Send + 'static {
            let tx = self.resumed.take().unwrap();
            async move {
                let _ = tx.send(end);
            }
        }

        fn panicked() -> u32 {
            1011
        }
    }

    /// The next poll's waker; a poll that never comes fails the test.
    async fn next_poll(polls: &mut mpsc::UnboundedReceiver<Waker>) -> Waker {
        tokio::time::timeout(Duration::from_secs(5), polls.recv())
            .await
            .expect("a poll")
            .expect("the state is still there")
    }

    /// True when no poll came within `ms` (or none ever can: the state,
    /// which holds the sender, is gone).
    async fn no_poll_within(polls: &mut mpsc::UnboundedReceiver<Waker>, ms: u64) -> bool {
        !matches!(
            tokio::time::timeout(Duration::from_millis(ms), polls.recv()).await,
            Ok(Some(_))
        )
    }

    async fn hub(dir: &tempfile::TempDir) -> Hub {
        let mut config = Config::defaults(Mode::Dev);
        config.mode = Some(Mode::Dev);
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.data_dir = dir.path().to_path_buf();
        config.dev.demo = false;
        Hub::start(config).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poll_that_panics_ends_the_state_which_resumes_and_is_freed() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(&dir).await;
        let (polls_tx, mut polls) = mpsc::unbounded_channel();
        let alive = Arc::new(());
        let weak: Weak<()> = Arc::downgrade(&alive);
        let panic = Arc::new(AtomicBool::new(false));
        let (resumed_tx, resumed) = oneshot::channel();
        park(
            hub.app().clone(),
            Probe {
                polls: polls_tx,
                end: Arc::new(Mutex::new(None)),
                self_wakes: 0,
                panic: panic.clone(),
                resumed: Some(resumed_tx),
                _alive: alive,
            },
        );
        let waker = next_poll(&mut polls).await;
        panic.store(true, Ordering::Release);
        waker.wake_by_ref();
        let resumed = tokio::time::timeout(Duration::from_secs(5), resumed).await;
        assert_eq!(resumed.unwrap().unwrap(), 1011, "resumed with panicked()");
        assert_eq!(hub.app().metrics.socket_panics.get(), 1);
        next_poll(&mut polls).await;
        assert!(weak.upgrade().is_none(), "the state is freed");
        hub.shutdown(Duration::from_secs(2)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wakeups_poll_once_each_then_the_state_resumes_as_a_task_and_is_freed() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(&dir).await;

        let (polls_tx, mut polls) = mpsc::unbounded_channel();
        let end = Arc::new(Mutex::new(None));
        let alive = Arc::new(());
        let weak: Weak<()> = Arc::downgrade(&alive);
        let (resumed_tx, resumed) = oneshot::channel();
        park(
            hub.app().clone(),
            Probe {
                polls: polls_tx,
                end: end.clone(),
                self_wakes: 2,
                panic: Arc::new(AtomicBool::new(false)),
                resumed: Some(resumed_tx),
                _alive: alive,
            },
        );
        // The first poll happens in `park`; each wake-up from inside a poll
        // brings exactly one more poll, through the queue.
        next_poll(&mut polls).await;
        next_poll(&mut polls).await;
        let waker = next_poll(&mut polls).await;
        assert!(no_poll_within(&mut polls, 50).await, "idle: no more polls");

        // A burst of wake-ups of an idle state: polled at least once, and
        // idle again afterwards.
        for _ in 0..5 {
            waker.wake_by_ref();
        }
        next_poll(&mut polls).await;
        while !no_poll_within(&mut polls, 50).await {}

        *end.lock().unwrap() = Some(7);
        waker.wake_by_ref();
        let resumed = tokio::time::timeout(Duration::from_secs(5), resumed).await;
        assert_eq!(resumed.unwrap().unwrap(), 7, "resume runs with the end");
        next_poll(&mut polls).await;
        // The state is gone although its waker is still held here, and
        // waking that waker polls nothing.
        assert!(weak.upgrade().is_none());
        waker.wake_by_ref();
        assert!(
            polls.recv().await.is_none(),
            "the state (and its sender) is dropped"
        );
        hub.shutdown(Duration::from_secs(2)).await;
    }
}
