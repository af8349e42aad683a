//! The queue at the gate: one per upstream, in front of each worker's
//! adaptive concurrency limit. A request takes a slot of the worker with the
//! fewest in flight among those under their limit, or waits here (not in
//! uvicorn's event loop) until a slot frees, its `queue_timeout` passes or
//! the queue policy refuses it. The policies are `filters::concurrency`
//! (the limit: `Limiter`; the order and the refusals: `QueuePolicy`); this
//! module only holds the waiters and hands slots out.
//!
//! A slot is held from the moment it is granted to the worker's response
//! head: that interval is the latency the limiter learns from, and it ends
//! before a WebSocket session or a long stream (SSE), which therefore never
//! hold a slot.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use asgi_gate_config::Concurrency;
use asgi_gate_filters::concurrency::{Arrival, Limiter, Outcome, Params, QueuePolicy};
use tokio::sync::oneshot;

/// Why a request got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Refused on arrival or dropped from an overloaded queue.
    Shed,
    /// Waited `queue_timeout`.
    TimedOut,
}

struct Waiter {
    tx: oneshot::Sender<Result<Permit, Refused>>,
    since: u64,
}

struct State {
    limiters: Vec<Limiter>,
    policy: QueuePolicy,
    /// Oldest first. Entries whose request has gone (timed out, client
    /// closed) stay until they reach an end or the ticker's sweep.
    queue: VecDeque<Waiter>,
    /// A [`ticker`] runs while requests wait.
    ticking: bool,
}

/// How often a non-empty queue is looked at without a release: a limit
/// can rise with time alone (a probe that ends, a window that closes).
const TICK: Duration = Duration::from_millis(50);

/// Dispatches the queue every [`TICK`] while it has waiters, and sweeps
/// out the entries of requests that have gone.
async fn ticker(admission: Arc<Admission>) {
    loop {
        tokio::time::sleep(TICK).await;
        let now = admission.now();
        let mut st = admission.lock();
        let before = st.queue.len();
        st.queue.retain(|w| !w.tx.is_closed());
        let gone = before - st.queue.len();
        st.policy.left(gone as u64);
        admission.dispatch(&mut st, now);
        if st.queue.is_empty() {
            st.ticking = false;
            return;
        }
    }
}

/// Prometheus series of one upstream's queue (its gauges are read at
/// scrape time: `Upstream::concurrency_limits`, `Upstream::queued`).
struct Metrics {
    wait: prometheus::Histogram,
    shed: prometheus::IntCounter,
    timed_out: prometheus::IntCounter,
}

pub struct Admission {
    state: Mutex<State>,
    healthy: Vec<Arc<AtomicBool>>,
    origin: Instant,
    metrics: Option<Metrics>,
}

/// A worker slot, from its grant to the worker's response head. Dropped
/// without [`Permit::release`] (the client went away, the request failed
/// before it was sent), it frees the slot and teaches the limit nothing.
pub struct Permit {
    admission: Arc<Admission>,
    pub worker: usize,
    granted: u64,
    /// How long the request may count toward the limit ([`QueuePolicy::hold_cap`]).
    pub hold: Duration,
    armed: bool,
}

impl Permit {
    pub fn release(mut self, outcome: Outcome) {
        self.armed = false;
        self.admission.release(self.worker, self.granted, outcome);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.armed {
            self.admission
                .release(self.worker, self.granted, Outcome::Ignored);
        }
    }
}

impl Admission {
    pub fn new(
        upstream: &str,
        healthy: Vec<Arc<AtomicBool>>,
        conf: &Concurrency,
    ) -> Arc<Admission> {
        let origin = Instant::now();
        let limiters = (0..healthy.len())
            .map(|i| {
                let params = Params {
                    min_limit: conf.min,
                    max_limit: conf.max,
                    min_work: conf.min_work,
                    // Each worker its own probe schedule.
                    seed: 0x9E37_79B9_7F4A_7C15
                        ^ (i as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9),
                    ..Params::default()
                };
                Limiter::new(params, 0)
            })
            .collect();
        let metrics = crate::metrics::get().map(|m| Metrics {
            wait: m.queue_wait.with_label_values(&[upstream]),
            shed: m.shed.with_label_values(&[upstream, "overload"]),
            timed_out: m.shed.with_label_values(&[upstream, "queue_timeout"]),
        });
        Arc::new(Admission {
            state: Mutex::new(State {
                limiters,
                policy: QueuePolicy::new(conf.queue_timeout, 0),
                queue: VecDeque::new(),
                ticking: false,
            }),
            healthy,
            origin,
            metrics,
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while it is held.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot, now or after waiting in the queue; with the time waited.
    pub async fn acquire(self: &Arc<Self>) -> Result<(Permit, Duration), Refused> {
        let now = self.now();
        let (rx, timeout) = {
            let mut st = self.lock();
            st.purge_front();
            if st.queue.is_empty() {
                if let Some(worker) = self.take_slot(&mut st, now) {
                    st.policy.direct();
                    let permit = self.permit(&st, worker, now);
                    drop(st);
                    return Ok((permit, Duration::ZERO));
                }
            }
            let oldest = st.queue.front().map(|w| w.since);
            let capacity = st.capacity();
            let waiting = st.queue.len();
            if st.policy.arrival(now, waiting, oldest, capacity) == Arrival::Shed {
                drop(st);
                self.count_shed(Refused::Shed, Duration::ZERO);
                return Err(Refused::Shed);
            }
            let (tx, rx) = oneshot::channel();
            st.queue.push_back(Waiter { tx, since: now });
            // A limit may have risen since the last release.
            self.dispatch(&mut st, now);
            if !st.ticking && !st.queue.is_empty() {
                st.ticking = true;
                tokio::spawn(ticker(self.clone()));
            }
            (rx, st.policy.timeout())
        };
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(granted)) => granted,
            // The sender is never dropped unsent; read it as a timeout.
            Ok(Err(_)) | Err(_) => Err(Refused::TimedOut),
        };
        let waited = started.elapsed();
        match result {
            Ok(permit) => {
                if let Some(m) = &self.metrics {
                    m.wait.observe(waited.as_secs_f64());
                }
                Ok((permit, waited))
            }
            Err(r) => {
                self.count_shed(r, waited);
                Err(r)
            }
        }
    }

    fn permit(self: &Arc<Self>, st: &State, worker: usize, granted: u64) -> Permit {
        Permit {
            admission: self.clone(),
            worker,
            granted,
            hold: st.policy.hold_cap(),
            armed: true,
        }
    }

    fn count_shed(&self, r: Refused, waited: Duration) {
        if let Some(m) = &self.metrics {
            match r {
                Refused::Shed => m.shed.inc(),
                Refused::TimedOut => m.timed_out.inc(),
            }
            m.wait.observe(waited.as_secs_f64());
        }
    }

    fn release(self: &Arc<Self>, worker: usize, granted: u64, outcome: Outcome) {
        let now = self.now();
        let rtt = Duration::from_nanos(now.saturating_sub(granted));
        let mut st = self.lock();
        let mut steady = false;
        if let Some(l) = st.limiters.get_mut(worker) {
            steady = l.settled();
            l.release(now, rtt, outcome);
        }
        let waiting = st.queue.len();
        let rtt = (outcome == Outcome::Success).then_some(rtt);
        st.policy.completed(now, rtt, waiting, steady);
        self.dispatch(&mut st, now);
    }

    /// Hands free slots to waiters (oldest first, newest first while the
    /// queue grows)
    /// and refuses those the policy calls stale.
    fn dispatch(self: &Arc<Self>, st: &mut State, now: u64) {
        let oldest = st.queue.front().map(|w| w.since);
        let capacity = st.capacity();
        let waiting = st.queue.len();
        st.policy.tick(now, waiting, oldest, capacity);
        if let Some((before, keep)) = st.policy.stale(now, capacity) {
            let mut refused = false;
            while st.queue.len() > keep || st.queue.front().is_some_and(|w| w.since < before) {
                if let Some(w) = st.queue.pop_front() {
                    refused |= w.tx.send(Err(Refused::Shed)).is_ok();
                    st.policy.left(1);
                }
            }
            if refused {
                st.policy.refused();
            }
        }
        loop {
            let lifo = st.policy.lifo();
            let Some(w) = st.pop_served(lifo) else { return };
            if w.tx.is_closed() {
                st.policy.left(1);
                continue;
            }
            let Some(worker) = self.take_slot(st, now) else {
                st.push_served(lifo, w);
                return;
            };
            let permit = self.permit(st, worker, now);
            if let Err(Ok(mut unsent)) = w.tx.send(Ok(permit)) {
                // Gone between the check and the send: the slot is free
                // again (released here: the permit's drop would lock).
                unsent.armed = false;
                if let Some(l) = st.limiters.get_mut(worker) {
                    l.release(now, Duration::ZERO, Outcome::Ignored);
                }
            }
        }
    }

    /// A slot of the healthy worker with the fewest in flight among those
    /// under their limit (of any worker, if none is healthy).
    fn take_slot(&self, st: &mut State, now: u64) -> Option<usize> {
        let any_healthy = self.healthy.iter().any(|h| h.load(Ordering::Relaxed));
        let eligible = |i: usize| {
            !any_healthy
                || self
                    .healthy
                    .get(i)
                    .is_some_and(|h| h.load(Ordering::Relaxed))
        };
        // Every admission runs this under the lock: a search, no allocation
        // (`Vec::new` allocates nothing). A worker is tried once, fewest in
        // flight first; `try_acquire` may refuse one whose limit just fell
        // (a probe that began), and only then is `tried` filled.
        let mut tried: Vec<bool> = Vec::new();
        loop {
            let next = st
                .limiters
                .iter()
                .enumerate()
                .filter(|&(i, _)| eligible(i) && !tried.get(i).copied().unwrap_or(false))
                .min_by_key(|&(i, l)| (l.in_flight(), i))
                .map(|(i, _)| i)?;
            if st.limiters[next].try_acquire(now) {
                return Some(next);
            }
            if tried.is_empty() {
                tried = vec![false; st.limiters.len()];
            }
            tried[next] = true;
        }
    }

    /// Each worker's current limit, for the admin API and tests.
    pub fn limits(&self) -> Vec<usize> {
        self.lock().limiters.iter().map(Limiter::limit).collect()
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.lock()
            .queue
            .iter()
            .filter(|w| !w.tx.is_closed())
            .count()
    }
}

impl State {
    /// The workers' limits outside their min-RTT probes: the queue
    /// policy's measure of how fast waiters are served (see
    /// [`Limiter::steady_limit`]).
    fn capacity(&self) -> usize {
        self.limiters.iter().map(Limiter::steady_limit).sum()
    }

    /// The waiter served next: the oldest, or the newest in LIFO.
    fn pop_served(&mut self, lifo: bool) -> Option<Waiter> {
        if lifo {
            self.queue.pop_back()
        } else {
            self.queue.pop_front()
        }
    }

    /// Puts back what [`State::pop_served`] took, at the same end.
    fn push_served(&mut self, lifo: bool, w: Waiter) {
        if lifo {
            self.queue.push_back(w)
        } else {
            self.queue.push_front(w)
        }
    }

    fn purge_front(&mut self) {
        while self.queue.front().is_some_and(|w| w.tx.is_closed()) {
            self.queue.pop_front();
            self.policy.left(1);
        }
    }
}
