//! Adaptive concurrency: how many requests one worker is sent at a time,
//! found at run time from the latencies the worker returns (issue 17).
//!
//! # Why
//! A uvicorn worker runs every request it has accepted on one event loop. On a
//! CPU-bound endpoint the loop serves them one after another, so a request
//! that arrives with `k` others in the worker waits for all of them:
//! latency ≈ `in_flight × service time`, while throughput is one service
//! time per request whatever the concurrency. Sending the worker 64 requests
//! at once buys no throughput and makes each of them 64 times slower; holding
//! the other 60 in the gate's queue gives the same throughput with a worker
//! latency of a few service times, and lets the gate shed or time out what
//! is still queued. On an I/O-bound endpoint (a handler awaiting a database
//! for 20 ms) latency does not grow with concurrency, and the same worker
//! should get all the concurrency it is offered. Which case an endpoint is
//! can only be seen at run time.
//!
//! # Algorithm: a gradient controller with periodic min-RTT probes
//! The idea of Envoy's adaptive concurrency filter ("Adaptive Concurrency",
//! gradient controller, in the Envoy HTTP filter docs), with the headroom and
//! "application-limited" rule of Netflix concurrency-limits' `Gradient2Limit`:
//!
//! - **min-RTT probe.** One when the first requests come, the next ones 1 s
//!   apart until two have measured something (a worker's first requests are
//!   its slowest; at most [`EARLY_PROBES`] of them), then every
//!   `probe_interval`, doubled after each probe whose min RTT was within
//!   ±20 % of the last one's, up to 8 × (plus a seeded random jitter of
//!   up to `probe_jitter × probe_interval`, so that the workers of a gate do
//!   not probe together) the limit drops to `min_limit`. Once the requests
//!   sent before the drop have drained (`in_flight ≤ min_limit`), the next
//!   `probe_samples` successful requests are uncontended; their median is the
//!   new `min_rtt`. The limit then returns at once to its value before the
//!   probe. A probe also starts when the limit has sat at `min_limit` for 5
//!   windows in a row (the `min_rtt` may be stale), and a probe that cannot
//!   collect its samples within `probe_timeout` (250 ms) ends with what it
//!   has. A worker never measured (every probe timed out without a sample:
//!   requests slower than a probe, such as long polls) is not limited
//!   beyond `max_limit`: there is no latency to judge a limit by.
//! - **gradient.** Between probes, successful latencies are collected in
//!   windows of `sample_window` (or [`WINDOW_CAP`] samples, whichever comes
//!   first; at least [`MIN_WINDOW_SAMPLES`]). Only requests sent after the
//!   window opened count, so every sample was sent under the current limit.
//!   At the end of a window, with `sample_rtt` its median:
//!   `gradient = clamp(tolerance × min_rtt / sample_rtt, 0.5, 2)` and
//!   `limit = clamp(limit × gradient + √limit, floor, max_limit)`.
//!   (No Gradient2-style smoothing: measured in the simulation below, a 0.2
//!   smoothing took a CPU-bound worker 4.5 s instead of 0.8 s to settle and
//!   doubled its p99.)
//!   An increase is skipped when the window never had `limit / 2` requests in
//!   flight: an idle worker's latency says nothing about a higher limit
//!   (Gradient2's rule), so the limit does not drift to `max_limit` while idle.
//! - **floor** (off by default). With `min_work` set, the limit between
//!   probes is at least the number of requests the worker completes in
//!   `min_work` at the pace of the last window:
//!   `floor = ceil(completions × min_work / window length)`, within
//!   `min_limit..=max_limit`. The gradient alone settles a CPU-bound worker
//!   at about 4 requests (below), a few service times of work, and the
//!   worker's next request is only sent when the gate's thread has read a
//!   response: whenever that thread waits longer than the work the worker
//!   holds (for a CPU, on a busy machine), the worker idles while requests
//!   wait (in the simulation, 3 ms stalls every 10 ms cost the gradient
//!   alone 15 % of the throughput and a 5 ms floor nothing). The pace, not
//!   the min RTT, sizes the floor: a probe's uncontended latency includes
//!   the gate's own turn-around, so `min_work / min_rtt` comes out too low.
//!   A worker that becomes slower lowers its floor within a window. Why not
//!   on by default: measured on a 0.7 ms endpoint with 2 cores, a 5 ms floor
//!   (about 8 requests instead of 4–5) gained 1–2 % throughput, in a closed
//!   loop and at 3× overload, and cost about 5 ms of served p99 at 3×
//!   overload (benches/README.md, "The limit's floor").
//! - **drops.** A [`Outcome::Dropped`] (timeout, connection error, 503)
//!   multiplies the limit by `drop_backoff` at once, as AIMD does (the
//!   floor comes down with it until a window's successes set it again), and
//!   restarts the window, so that latencies of requests sent under the old
//!   limit do not undo the cut.
//!
//! Why it fits a single-threaded worker: its latency under load is exactly
//! `in_flight × service time` when CPU-bound, so `min_rtt / sample_rtt` is
//! close to `1 / in_flight` and the controller settles where
//! `limit ≈ tolerance + √limit`, i.e. about 4 with `tolerance = 1.5`: enough
//! requests that the loop never idles between a completion and the next
//! arrival, few enough that each waits behind about three others. When the
//! latency does not grow with concurrency the gradient stays at
//! `tolerance > 1` and the limit climbs to `max_limit`. And the probe is
//! cheap exactly where it matters: a CPU-bound loop stays busy at
//! concurrency 1. On an I/O-bound endpoint a probe costs about
//! `(probe_samples + 1) × latency` of reduced concurrency per
//! probe (≈ 180 ms for 20 ms requests: 3.6 % of the time at 5 s, 0.45 %
//! once the interval has backed off to 40 s); Gradient2 avoids
//! probes with a long-term latency average instead, but that average drifts
//! up under sustained overload, which is the case this limiter exists for.
//!
//! # Clock and cost
//! `now` is monotonic nanoseconds since an origin the caller chooses (for
//! example `origin.elapsed()` of one `Instant` per worker). A clock that goes
//! backwards is read as no time passing. [`Limiter::try_acquire`] and
//! [`Limiter::release`] are O(1) apart from closing a window (a selection
//! over at most [`WINDOW_CAP`] samples, once per window); nothing allocates.
//! No input panics: durations of zero or `Duration::MAX` and any parameters
//! are accepted (parameters out of range are corrected in [`Limiter::new`]).

use std::time::Duration;

pub mod queue;
pub use queue::{Arrival, QueuePolicy};

/// Most samples one gradient window keeps; a window closes early when full.
pub const WINDOW_CAP: usize = 128;
/// Fewest samples a window needs before it may close.
pub const MIN_WINDOW_SAMPLES: usize = 4;
/// Most samples a min-RTT probe takes.
pub const PROBE_CAP: usize = 32;
/// Windows in a row at `min_limit` that start a probe early.
const WINDOWS_AT_MIN_BEFORE_PROBE: u32 = 5;
const MIN_GRADIENT: f64 = 0.5;
/// Most doublings of `probe_interval` while probes find the same min RTT
/// (5 s → 40 s by default; Envoy's default interval is 60 s).
const PROBE_BACKOFF: u32 = 3;
/// Probes that may come early (1 s apart) while the worker is not yet measured twice.
const EARLY_PROBES: u32 = 4;
const MAX_GRADIENT: f64 = 2.0;

/// The limiter's settings. [`Default`] gives the values named on each field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Lowest limit, and the concurrency of a min-RTT probe (default 1; 0 is read as 1).
    pub min_limit: usize,
    /// Highest limit (default 64); the caller passes the pool's connection cap.
    pub max_limit: usize,
    /// Limit after the first probe (default 4).
    pub initial_limit: usize,
    /// Time between min-RTT probes (default 5 s).
    pub probe_interval: Duration,
    /// Extra random delay before each probe, as a fraction of `probe_interval` (default 0.15).
    pub probe_jitter: f64,
    /// Uncontended samples a probe takes; their median is the min RTT (default 8, at most [`PROBE_CAP`]).
    pub probe_samples: usize,
    /// Longest probe (default 250 ms): one that has not collected its
    /// samples by then ends with those it has. Requests slower than this
    /// cannot be measured uncontended without stalling the worker's queue.
    pub probe_timeout: Duration,
    /// Length of a gradient window (default 100 ms).
    pub sample_window: Duration,
    /// How much slower than the min RTT a window's median may be before the
    /// limit shrinks (default 1.5; below 1 is read as 1).
    pub tolerance: f64,
    /// Factor applied to the limit on each dropped request (default 0.9).
    pub drop_backoff: f64,
    /// Least work the worker holds while requests wait, in time: between
    /// probes the limit is at least the requests it completes in
    /// `min_work` (default zero: the gradient alone). See the module
    /// docs, "floor".
    pub min_work: Duration,
    /// Seed of the probe jitter; give each worker its own.
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            min_limit: 1,
            max_limit: 64,
            initial_limit: 4,
            probe_interval: Duration::from_secs(5),
            probe_jitter: 0.15,
            probe_samples: 8,
            probe_timeout: Duration::from_millis(250),
            sample_window: Duration::from_millis(100),
            tolerance: 1.5,
            drop_backoff: 0.9,
            min_work: Duration::ZERO,
            seed: 0x9E37_79B9_7F4A_7C15,
        }
    }
}

/// How a request the limiter admitted ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response came back; its time is a latency sample.
    Success,
    /// A timeout, a connection error or an overload answer: the limit shrinks.
    Dropped,
    /// Frees the slot but says nothing about latency (a WebSocket session, a
    /// streamed response, a request whose time is not representative).
    Ignored,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Between probes; the next one is due at `next_probe`.
    Gradient { next_probe: u64 },
    /// Measuring the min RTT at `min_limit`.
    Probe {
        /// When the probe first had a request: an idle worker is not
        /// timed out before any request came.
        started: Option<u64>,
        /// When `in_flight` first fell to `min_limit`: requests sent from then on are uncontended.
        quiet_since: Option<u64>,
        /// The limit to return to.
        saved_limit: f64,
    },
}

/// One worker's adaptive concurrency limit. See the module docs.
#[derive(Debug, Clone)]
pub struct Limiter {
    min_limit: usize,
    max_limit: usize,
    probe_interval: u64,
    probe_jitter: f64,
    probe_samples: usize,
    probe_timeout: u64,
    sample_window: u64,
    tolerance: f64,
    drop_backoff: f64,
    min_work: u64,
    rng: u64,
    /// Probes that measured something; the first is followed by a second
    /// after at most 1 s (a worker's first requests are its slowest).
    measured: u32,
    probes: u32,

    limit: f64,
    in_flight: usize,
    min_rtt: Option<u64>,
    phase: Phase,
    windows_at_min: u32,
    /// Probes in a row that found the same min RTT (see [`PROBE_BACKOFF`]).
    stable_probes: u32,
    /// The last window raised the limit below `max_limit`: the worker's
    /// capacity is not found yet.
    rising: bool,

    /// See [`Limiter::floor`]; set when a window closes.
    floor: usize,
    window_start: u64,
    /// Successful completions since `window_start` (sent before it or not).
    window_done: u64,
    window_max_in_flight: usize,
    window_len: usize,
    window: [u64; WINDOW_CAP],
    probe_len: usize,
    probe: [u64; PROBE_CAP],
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The lower median of `s`, reordering it; 0 for an empty slice.
fn median(s: &mut [u64]) -> u64 {
    if s.is_empty() {
        return 0;
    }
    let mid = (s.len() - 1) / 2;
    *s.select_nth_unstable(mid).1
}

impl Limiter {
    /// A limiter that starts with a min-RTT probe at `now`.
    pub fn new(params: Params, now: u64) -> Limiter {
        let min_limit = params.min_limit.max(1);
        let max_limit = params.max_limit.max(min_limit);
        let initial = params.initial_limit.clamp(min_limit, max_limit);
        let fraction = |x: f64, default: f64| if x.is_finite() { x } else { default };
        let mut limiter = Limiter {
            min_limit,
            max_limit,
            probe_interval: nanos(params.probe_interval),
            probe_jitter: fraction(params.probe_jitter, 0.0).clamp(0.0, 1.0),
            probe_samples: params.probe_samples.clamp(1, PROBE_CAP),
            probe_timeout: nanos(params.probe_timeout),
            sample_window: nanos(params.sample_window),
            tolerance: fraction(params.tolerance, 1.5).clamp(1.0, 100.0),
            drop_backoff: {
                let b = fraction(params.drop_backoff, 0.9);
                if b > 0.0 && b < 1.0 {
                    b
                } else {
                    0.9
                }
            },
            min_work: nanos(params.min_work),
            // xorshift needs a non-zero state.
            rng: params.seed | 1,
            measured: 0,
            probes: 0,
            limit: initial as f64,
            in_flight: 0,
            min_rtt: None,
            phase: Phase::Gradient { next_probe: now },
            windows_at_min: 0,
            stable_probes: 0,
            rising: true,
            floor: min_limit,
            window_start: now,
            window_done: 0,
            window_max_in_flight: 0,
            window_len: 0,
            window: [0; WINDOW_CAP],
            probe_len: 0,
            probe: [0; PROBE_CAP],
        };
        limiter.start_probe(now);
        limiter
    }

    /// The number of requests the worker may have now.
    pub fn limit(&self) -> usize {
        match self.phase {
            Phase::Probe { .. } => self.min_limit,
            Phase::Gradient { .. } => (self.limit as usize).clamp(self.floor(), self.max_limit),
        }
    }

    /// The limit outside a min-RTT probe: during a probe, the one it
    /// returns to. A probe's dip lasts a few uncontended requests; a queue
    /// that predicts waits or tells overload by this worker's capacity
    /// must not read the dip as the capacity (it would refuse a standing
    /// closed population on every probe).
    pub fn steady_limit(&self) -> usize {
        match self.phase {
            Phase::Probe { saved_limit, .. } => {
                (saved_limit as usize).clamp(self.floor(), self.max_limit)
            }
            Phase::Gradient { .. } => self.limit(),
        }
    }

    /// Whether the limit is this worker's found capacity: measured, not
    /// in a probe, and not still climbing. A queue that predicts waits
    /// from the pace of completions must learn that pace only while the
    /// limiter is settled: during a probe or the start-up climb the
    /// workers complete fewer requests than they soon will.
    pub fn settled(&self) -> bool {
        !self.probing() && self.min_rtt.is_some() && !self.rising
    }

    /// The least limit between probes: the requests the worker completed
    /// in `min_work` at the last window's pace, within `min_limit..=max_limit`.
    pub fn floor(&self) -> usize {
        self.floor
    }

    /// Requests admitted and not yet released.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The last measured uncontended latency, if a probe has finished.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt.map(Duration::from_nanos)
    }

    /// Whether a min-RTT probe is under way.
    pub fn probing(&self) -> bool {
        matches!(self.phase, Phase::Probe { .. })
    }

    /// Admits one request if fewer than [`limit`](Self::limit) are in flight.
    /// Every `true` must be followed by one [`release`](Self::release).
    pub fn try_acquire(&mut self, now: u64) -> bool {
        self.tick(now);
        if self.in_flight >= self.limit() {
            return false;
        }
        self.in_flight += 1;
        self.window_max_in_flight = self.window_max_in_flight.max(self.in_flight);
        if let Phase::Probe { started, .. } = &mut self.phase {
            started.get_or_insert(now);
        }
        true
    }

    /// Ends an admitted request that took `rtt` (from being sent to the
    /// worker to its response head, or its end) and finished at `now`.
    pub fn release(&mut self, now: u64, rtt: Duration, outcome: Outcome) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let rtt = nanos(rtt);
        let sent = now.saturating_sub(rtt);
        if outcome == Outcome::Dropped {
            self.back_off(now);
        }
        match &mut self.phase {
            Phase::Probe { quiet_since, .. } => {
                if outcome == Outcome::Success
                    && quiet_since.is_some_and(|q| sent >= q)
                    && self.probe_len < PROBE_CAP
                {
                    self.probe[self.probe_len] = rtt;
                    self.probe_len += 1;
                }
                if quiet_since.is_none() && self.in_flight <= self.min_limit {
                    *quiet_since = Some(now);
                }
                if self.probe_len >= self.probe_samples {
                    self.end_probe(now);
                }
            }
            Phase::Gradient { .. } => {
                if outcome == Outcome::Success {
                    self.window_done += 1;
                }
                if outcome == Outcome::Success
                    && sent >= self.window_start
                    && self.window_len < WINDOW_CAP
                {
                    self.window[self.window_len] = rtt;
                    self.window_len += 1;
                }
            }
        }
        self.tick(now);
    }

    /// Closes a window, starts or times out a probe, as `now` requires.
    fn tick(&mut self, now: u64) {
        match self.phase {
            Phase::Gradient { next_probe } => {
                if now >= next_probe {
                    self.start_probe(now);
                } else if self.window_len >= WINDOW_CAP
                    || (self.window_len >= MIN_WINDOW_SAMPLES
                        && now.saturating_sub(self.window_start) >= self.sample_window)
                {
                    self.close_window(now);
                }
            }
            Phase::Probe {
                started: Some(started),
                ..
            } => {
                if now.saturating_sub(started) >= self.probe_timeout {
                    self.end_probe(now);
                }
            }
            Phase::Probe { started: None, .. } => {}
        }
    }

    /// Shrinks the limit after a drop. Between probes the window restarts:
    /// its samples were sent under the old limit and would undo the cut.
    fn back_off(&mut self, now: u64) {
        let min = self.min_limit as f64;
        let cut = match &mut self.phase {
            Phase::Probe { saved_limit, .. } => {
                *saved_limit = (*saved_limit * self.drop_backoff).max(min);
                *saved_limit
            }
            Phase::Gradient { .. } => {
                self.limit = (self.limit * self.drop_backoff).max(min);
                self.rising = false;
                self.reset_window(now);
                self.limit
            }
        };
        // The floor keeps a worker that answers busy; one that fails gets
        // the cut, and the next window's pace of successes sets the floor.
        self.floor = self.floor.min(cut as usize).max(self.min_limit);
    }

    fn start_probe(&mut self, now: u64) {
        self.probe_len = 0;
        self.phase = Phase::Probe {
            started: (self.in_flight > 0).then_some(now),
            quiet_since: (self.in_flight <= self.min_limit).then_some(now),
            saved_limit: self.limit,
        };
    }

    fn end_probe(&mut self, now: u64) {
        if let Phase::Probe { saved_limit, .. } = self.phase {
            if self.probe_len > 0 {
                let new = median(&mut self.probe[..self.probe_len]);
                // Within ±20 % of the last: the worker has not changed,
                // and the next probe may wait longer.
                let same = self.min_rtt.is_some_and(|old| {
                    let r = new as f64 / old.max(1) as f64;
                    (0.8..=1.25).contains(&r)
                });
                self.stable_probes = if same {
                    self.stable_probes.saturating_add(1)
                } else {
                    0
                };
                self.min_rtt = Some(new);
                self.measured = self.measured.saturating_add(1);
            } else {
                self.stable_probes = 0;
            }
            // Never measured (requests slower than a probe): no basis for
            // a limit, so none but the pool's, as with `concurrency: off`.
            self.limit = if self.min_rtt.is_some() {
                saved_limit.max(self.floor() as f64)
            } else {
                self.max_limit as f64
            };
        }
        self.probe_len = 0;
        self.windows_at_min = 0;
        // Until two probes have measured the worker, the next comes within
        // 1 s (for at most the first few: a worker slower than a probe
        // would otherwise stall every second).
        self.probes = self.probes.saturating_add(1);
        let interval = if self.measured < 2 && self.probes < EARLY_PROBES {
            self.probe_interval.min(1_000_000_000)
        } else {
            // Doubled after each probe that found the same min RTT, up to
            // 2^PROBE_BACKOFF times: every probe stalls an I/O-bound worker
            // at one request for (samples + 1) latencies (180 ms of 20 ms
            // requests: 3.6 % of its throughput and the p99 of its clients
            // at 5 s; see benches/README.md, io_bound).
            self.probe_interval
                .saturating_mul(1 << self.stable_probes.min(PROBE_BACKOFF))
        };
        let jitter = (interval as f64 * self.probe_jitter * self.next_unit()) as u64;
        self.phase = Phase::Gradient {
            next_probe: now.saturating_add(interval).saturating_add(jitter),
        };
        self.reset_window(now);
    }

    fn close_window(&mut self, now: u64) {
        let sample_rtt = median(&mut self.window[..self.window_len]);
        let elapsed = now.saturating_sub(self.window_start).max(1);
        let in_min_work =
            (self.window_done as u128 * self.min_work as u128).div_ceil(elapsed as u128);
        self.floor = usize::try_from(in_min_work)
            .unwrap_or(usize::MAX)
            .clamp(self.min_limit, self.max_limit);
        if let Some(min_rtt) = self.min_rtt {
            let gradient = if sample_rtt == 0 {
                MAX_GRADIENT
            } else {
                (self.tolerance * min_rtt as f64 / sample_rtt as f64)
                    .clamp(MIN_GRADIENT, MAX_GRADIENT)
            };
            let app_limited = (self.window_max_in_flight as f64) < self.limit / 2.0;
            let before = self.limit;
            if gradient < 1.0 || !app_limited {
                let next = self.limit * gradient + self.limit.sqrt();
                self.limit = next.clamp(self.floor() as f64, self.max_limit as f64);
            }
            self.rising = self.limit > before && self.limit < self.max_limit as f64;
        }
        if self.limit() <= self.min_limit {
            self.windows_at_min += 1;
        } else {
            self.windows_at_min = 0;
        }
        self.reset_window(now);
        if self.windows_at_min >= WINDOWS_AT_MIN_BEFORE_PROBE {
            self.windows_at_min = 0;
            self.start_probe(now);
        }
    }

    fn reset_window(&mut self, now: u64) {
        self.window_start = now;
        self.window_done = 0;
        self.window_len = 0;
        self.window_max_in_flight = self.in_flight;
    }

    /// A uniform draw from [0, 1) (xorshift64).
    fn next_unit(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests;
