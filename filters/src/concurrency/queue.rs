//! The queue in front of the limit: whether a request that finds every
//! worker at its limit may wait, and in which order waiting requests go.
//!
//! Normal, the queue is FIFO; when it keeps growing, LIFO; when it keeps
//! growing still, it also sheds. Growth is measured by the rate at which
//! requests join the queue against the rate the workers complete them:
//!
//! - **Normal (FIFO).** Requests wait in arrival order. One is refused at
//!   once (a shed) only when its predicted wait, `position × the average
//!   time between completions while requests wait`, is longer than
//!   `queue_timeout`; any waiter is refused when its own wait reaches
//!   `queue_timeout`. A closed population of clients (each sends its next
//!   request when the last is answered, as `wrk -c64` or a pool of
//!   application servers) makes a queue that stands, but whose arrivals
//!   match the worker's completions: it is served in order, every request
//!   answered, even while the limit dips for a min-RTT probe.
//! - **LIFO.** When, through two 50 ms intervals in a row, more requests
//!   joined the queue than the workers completed (by more than
//!   `max(Σ limit, 8)`) and the oldest waiter has waited longer than the
//!   standing threshold (`max(standing_min, 2 × rtt)`), the newest waiter
//!   is served first: it is the one whose client is still most likely to be
//!   waiting, and a burst (clients connecting at once) is served without
//!   making everyone wait for all of it. Nothing more is refused. Two
//!   intervals without growth return to FIFO.
//! - **Overload (shedding).** When the growth lasts [`OVERLOAD_INTERVALS`]
//!   intervals (300 ms), or three (150 ms) with a queue that would take
//!   more than [`OVERLOAD_WAIT`] (200 ms) to serve, arrivals outpace the
//!   workers and the queue could only end in timeouts: the newest
//!   `overload_queue` waiters are kept and the others refused, then at
//!   most that many requests wait, in arrival order, and the rest are
//!   refused on arrival, in microseconds. That is `Σ limit` while fewer
//!   than `HEAVY` (2) requests come per completion, and a quarter of it (at
//!   least one) beyond: near capacity a queue absorbs the randomness of
//!   arrivals that would otherwise idle the workers, far above it a freed
//!   slot finds the next arrival at once and every waiter more is a
//!   completion more of latency for all that are served. Every request
//!   that waits is served, after a few completions, so no
//!   request is refused after waiting (a LIFO stack would bury its oldest
//!   waiters until they went stale, and refuse them late). Overload returns
//!   to LIFO when, over a whole second (`FIT_INTERVALS`), there was no
//!   refusal, or fewer requests came (given a slot, waiting or refused)
//!   than 95 % of the completions: the load fits again. A shorter test
//!   would read the noise of a load a few percent over capacity as a fit,
//!   and every such exit lets a backlog build that is refused late. A storm
//!   of resends is the one case that looks like
//!   an open load and is not: clients that resend the moment they are
//!   refused (a closed population) come back many times per completion
//!   and keep the refusals going, while a queue would serve them all. So
//!   when more than [`RESEND_STORM`] times as many requests come as the
//!   workers complete (over a second, so that a worker's pause is not read
//!   as a storm), overload ends anyway after [`OVERLOAD_MAX`] (2 s),
//!   as a trial. An open load shows itself again within two intervals of a
//!   trial and is refused as before; each trial that ends that way doubles
//!   the time to the next (to [`OVERLOAD_MAX_BACKOFF`]), since a trial
//!   lets a backlog build that is then refused late. An open load below
//!   that ratio never has a trial, so after its onset nothing is refused
//!   late. Only requests that join the queue count as
//!   arrivals, and requests that leave it unserved (cancelled, timed out,
//!   refused) count as departures: a burst of requests cancelled while
//!   queued, or shed clients resending, is not growth.
//!
//! The idea is Facebook's "adaptive LIFO" with a CoDel-style standing-queue
//! test (Maurer, "Fail at Scale", ACM Queue 13(8), 2015; Nichols and
//! Jacobson, "Controlling Queue Delay", ACM Queue 10(5), 2012), with the
//! arrival rate added to the entry test so that a closed population is never
//! shed.
//!
//! Pure: time is nanoseconds from the caller's origin, as in [`super::Limiter`].

use std::time::Duration;

/// How often the growth test runs.
pub const INTERVAL: Duration = Duration::from_millis(50);
/// Lowest standing threshold.
pub const STANDING_MIN: Duration = Duration::from_millis(50);
/// Longest overload before the policy looks again with normal refusals
/// (a trial).
pub const OVERLOAD_MAX: Duration = Duration::from_secs(2);
/// The most that trials which find the load still open can stretch it to.
pub const OVERLOAD_MAX_BACKOFF: Duration = Duration::from_secs(16);
/// In overload, requests (waiting or refused) per completion above which
/// the load may be clients resending as fast as they are refused, and a
/// trial may look whether a queue would serve them.
pub const RESEND_STORM: u64 = 8;
/// Within this of a trial, a return to overload says the load was open.
const TRIAL_SPAN: Duration = Duration::from_secs(1);
/// Intervals (1 s) over which an overload's requests are weighed against
/// its completions, and the share of them the requests must stay under for
/// the load to fit again.
const FIT_INTERVALS: u32 = 20;
const FIT_MARGIN: f64 = 0.95;
/// Requests per completion from which an overload is heavy (see
/// `overload_queue`).
const HEAVY: u64 = 2;
/// In overload, at most `Σ limit / OVERLOAD_QUEUE_DIVISOR` (at least one)
/// requests wait.
const OVERLOAD_QUEUE_DIVISOR: usize = 4;
/// Intervals of growth in a row that turn the queue LIFO, and that make
/// it shed; intervals without growth that turn it FIFO again.
const LIFO_INTERVALS: u32 = 2;
pub const OVERLOAD_INTERVALS: u32 = 6;
/// Intervals of growth that make overload when the queue is also deep.
const FAST_OVERLOAD_INTERVALS: u32 = 3;
/// A queue this long to serve (at the pace of completions), still growing
/// after [`FAST_OVERLOAD_INTERVALS`], is overload.
pub const OVERLOAD_WAIT: Duration = Duration::from_millis(200);
const QUIET_INTERVALS: u32 = 2;
/// Least surplus of arrivals over completions in an interval that counts
/// as growth: clients come and go by a few.
const MIN_GROWTH: u64 = 8;
/// Weight of a new sample in the latency average.
const RTT_WEIGHT: f64 = 0.1;

/// What to do with a request that found no free slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    Wait,
    Shed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Regime {
    Normal,
    Lifo,
    Overload { since: u64 },
}

/// After a trial: when it began, for [`TRIAL_SPAN`].
type Trial = Option<u64>;

/// In overload: requests that came (given a slot, waiting or refused),
/// completions, whether any was refused, and intervals, summed over the
/// current [`FIT_INTERVALS`].
#[derive(Debug, Clone, Default)]
struct FitWindow {
    offered: u64,
    served: u64,
    refused: bool,
    intervals: u32,
}

#[derive(Debug, Clone)]
pub struct QueuePolicy {
    timeout: u64,
    interval: u64,
    standing_min: u64,
    overload_max: u64,
    /// How long this overload may last before a trial; doubles while
    /// trials find the load open.
    overload_for: u64,
    trial: Trial,
    /// Average latency of successful requests, ns (0 until the first).
    rtt: f64,
    /// Average time between completions while requests waited, ns (0
    /// until known), and the last completion.
    gap: f64,
    last_completion: Option<u64>,
    regime: Regime,
    interval_start: u64,
    /// Requests that joined the queue, all that came (joined, refused or
    /// given a slot at once), and departures (completions and waiters that left
    /// unserved), this interval; and completions alone.
    joined: u64,
    offered: u64,
    completed: u64,
    served: u64,
    /// Intervals in a row with growth, and without.
    grew: u32,
    quiet: u32,
    shed_in_interval: bool,
    fit: FitWindow,
    /// The overload's load is at least [`HEAVY`] times the completions;
    /// more than [`RESEND_STORM`] times (over the last fit window).
    heavy: bool,
    storm: bool,
}

fn ewma(avg: f64, sample: f64) -> f64 {
    if avg == 0.0 {
        sample
    } else {
        avg + RTT_WEIGHT * (sample - avg)
    }
}

/// How many may wait in overload when the workers' limits sum to
/// `capacity`: `capacity` while the load is less than [`HEAVY`] times what
/// the workers complete, else a quarter of it (at least one). Near capacity
/// a short queue turns the arrivals' randomness into refusals and idle
/// workers (simulated with random arrivals and service times at 1.1×: a
/// quarter of the limits lost 6 % of the goodput); far above it a freed
/// slot finds the next arrival at once, and every waiter more is a
/// completion more of latency for all that are served.
fn overload_queue(capacity: usize, heavy: bool) -> usize {
    if heavy {
        (capacity / OVERLOAD_QUEUE_DIVISOR).max(1)
    } else {
        capacity
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl QueuePolicy {
    pub fn new(queue_timeout: Duration, now: u64) -> QueuePolicy {
        QueuePolicy {
            timeout: nanos(queue_timeout),
            interval: nanos(INTERVAL),
            standing_min: nanos(STANDING_MIN),
            overload_max: nanos(OVERLOAD_MAX),
            overload_for: nanos(OVERLOAD_MAX),
            trial: None,
            rtt: 0.0,
            gap: 0.0,
            last_completion: None,
            regime: Regime::Normal,
            interval_start: now,
            joined: 0,
            offered: 0,
            completed: 0,
            served: 0,
            grew: 0,
            quiet: 0,
            shed_in_interval: false,
            fit: FitWindow::default(),
            heavy: false,
            storm: false,
        }
    }

    /// A request admitted earlier completed at `now`; `rtt` is its latency
    /// if it succeeded, `waiting` requests were queued, and `steady` says
    /// whether its worker's limit was settled ([`super::Limiter::settled`]).
    pub fn completed(&mut self, now: u64, rtt: Option<Duration>, waiting: usize, steady: bool) {
        self.completed += 1;
        self.served += 1;
        // Only gaps between steady completions with requests waiting at
        // both ends. An idle spell before a burst says nothing about the
        // service rate (one such gap of 1 s once predicted a 61 s wait for
        // 60 waiters and shed a closed loop of 64 clients), and neither
        // does a probe or the start-up climb, when the worker runs fewer
        // requests than it soon will (a start-up probe at one 50 ms request
        // at a time predicted 6 s for 127 waiters and shed a closed loop of
        // 128 clients that the limit reached a second later).
        let sample = waiting > 0 && steady;
        if let Some(last) = self.last_completion.filter(|_| sample) {
            self.gap = ewma(self.gap, now.saturating_sub(last) as f64);
        }
        self.last_completion = sample.then_some(now);
        if let Some(rtt) = rtt {
            self.rtt = ewma(self.rtt, nanos(rtt) as f64);
        }
    }

    /// Serve the newest waiter first.
    pub fn lifo(&self) -> bool {
        self.regime == Regime::Lifo
    }

    /// Whether the queue is refusing as overloaded.
    pub fn overloaded(&self) -> bool {
        matches!(self.regime, Regime::Overload { .. })
    }

    /// How long a waiter may wait before it is refused.
    /// Longest a request counts toward its worker's limit: `max(1 s, 10 ×
    /// the average latency)`. A request slower than that (a long poll, a
    /// slow report) stops counting, so a few of them cannot take every
    /// slot; it goes on, and its time teaches the limit nothing.
    pub fn hold_cap(&self) -> Duration {
        Duration::from_nanos(((10.0 * self.rtt) as u64).max(1_000_000_000))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_nanos(self.timeout)
    }

    /// In overload, which waiters are refused now, oldest first: those that
    /// entered the queue before the returned instant, and any beyond the
    /// newest [`Self::overload_queue`] (see [`Self::refused`]).
    pub fn stale(&self, now: u64, capacity: usize) -> Option<(u64, usize)> {
        self.overloaded().then(|| {
            (
                now.saturating_sub(self.standing()),
                overload_queue(capacity, self.heavy),
            )
        })
    }

    /// Waiters left the queue without a slot (gone, timed out, refused):
    /// for the growth test they are departures, like completions, so a
    /// burst of requests cancelled while queued is not growth.
    pub fn left(&mut self, n: u64) {
        self.completed = self.completed.saturating_add(n);
    }

    /// A request found a free slot at once: it counts toward the load the
    /// overload weighs against completions, as those that queue or are
    /// refused do (with a short overload queue, many arrivals find a slot
    /// just freed).
    pub fn direct(&mut self) {
        self.offered += 1;
    }

    /// Tells the policy that requests were refused (keeps overload on).
    pub fn refused(&mut self) {
        self.shed_in_interval = true;
    }

    /// A request found no free slot; `waiting` are already queued, the
    /// oldest since `oldest`, and the workers' limits sum to `capacity`.
    pub fn arrival(
        &mut self,
        now: u64,
        waiting: usize,
        oldest: Option<u64>,
        capacity: usize,
    ) -> Arrival {
        let capacity = capacity.max(1);
        self.tick(now, waiting, oldest, capacity);
        self.offered += 1;
        let shed = if self.overloaded() {
            waiting >= overload_queue(capacity, self.heavy)
        } else {
            // Predicted wait: this request's turn comes after `waiting + 1`
            // completions.
            (waiting + 1) as f64 * self.gap > self.timeout as f64
        };
        if shed {
            self.shed_in_interval = true;
            Arrival::Shed
        } else {
            // Only requests that join count as growth: a shed client that
            // resends at once is not more load.
            self.joined += 1;
            Arrival::Wait
        }
    }

    /// Runs the growth test when an interval has passed; `waiting` are
    /// queued, the oldest since `oldest`.
    pub fn tick(&mut self, now: u64, waiting: usize, oldest: Option<u64>, capacity: usize) {
        if now.saturating_sub(self.interval_start) < self.interval {
            return;
        }
        let grew = self.joined >= self.completed + (capacity as u64).max(MIN_GROWTH);
        let standing = oldest.is_some_and(|t| now.saturating_sub(t) > self.standing());
        if grew {
            self.grew += 1;
            self.quiet = 0;
        } else {
            self.grew = 0;
            self.quiet += 1;
        }
        let in_trial = self
            .trial
            .is_some_and(|t| now.saturating_sub(t) < nanos(TRIAL_SPAN));
        if !in_trial {
            self.trial = None;
        }
        // After a trial, the load that was open shows itself in two
        // intervals of growth: each more is a backlog refused late.
        let overload_after = if in_trial {
            LIFO_INTERVALS
        } else {
            OVERLOAD_INTERVALS
        };
        // A queue that grew for 150 ms and would take longer than
        // OVERLOAD_WAIT to serve is overload already: a closed population
        // that size would have stopped growing (clients connecting over
        // 200 ms make 100 ms of queue), and the longer the test the larger
        // the backlog refused late, or the sooner a load generator's
        // connections all wait here and it turns into a closed population.
        // The time to serve it at this interval's pace of completions: the
        // average gap is learned only while the limit is settled, which a
        // worker still climbing when the load arrives is not.
        let pace = match self.served {
            0 => self.gap,
            n => now.saturating_sub(self.interval_start) as f64 / n as f64,
        };
        let deep = self.grew >= FAST_OVERLOAD_INTERVALS
            && waiting as f64 * pace > nanos(OVERLOAD_WAIT) as f64;
        let fits = self.overloaded() && self.fits();
        self.regime = match self.regime {
            Regime::Normal if self.grew >= LIFO_INTERVALS && standing => Regime::Lifo,
            Regime::Lifo if (self.grew >= overload_after || deep) && standing => {
                if in_trial {
                    let max = nanos(OVERLOAD_MAX_BACKOFF);
                    self.overload_for = self.overload_for.saturating_mul(2).min(max);
                    self.trial = None;
                }
                self.fit = FitWindow::default();
                // Until a fit window has passed, judged by this interval.
                self.heavy = self.offered >= HEAVY * self.served;
                self.storm = false;
                Regime::Overload { since: now }
            }
            Regime::Lifo if self.quiet >= QUIET_INTERVALS => Regime::Normal,
            Regime::Overload { .. } if fits => {
                self.grew = 0;
                self.quiet = 0;
                self.overload_for = self.overload_max;
                Regime::Lifo
            }
            Regime::Overload { since }
                if now.saturating_sub(since) >= self.overload_for && self.storm =>
            {
                self.grew = 0;
                self.quiet = 0;
                self.trial = Some(now);
                Regime::Lifo
            }
            r => r,
        };
        if self.trial.is_none() && self.regime == Regime::Normal {
            self.overload_for = self.overload_max;
        }
        self.interval_start = now;
        self.joined = 0;
        self.offered = 0;
        self.completed = 0;
        self.served = 0;
        self.shed_in_interval = false;
    }

    /// Sums this interval into the overload's fit window; true when a
    /// whole window had fewer requests than the workers completed (by
    /// [`FIT_MARGIN`]): the load fits again. One interval would not do: at
    /// 5 % over capacity, arrivals fall below completions in one 50 ms
    /// interval in every few, and each such exit let a backlog build that
    /// was then refused late.
    fn fits(&mut self) -> bool {
        let w = &mut self.fit;
        w.offered += self.offered;
        w.served += self.served;
        w.refused |= self.shed_in_interval;
        w.intervals += 1;
        if w.intervals < FIT_INTERVALS {
            return false;
        }
        let w = std::mem::take(&mut self.fit);
        let fits = !w.refused || w.offered as f64 <= FIT_MARGIN * w.served as f64;
        self.heavy = w.offered >= HEAVY * w.served;
        // Weighed over the window, not one interval: a worker that stalls
        // for an interval (a pause, a probe) completes next to nothing in
        // it, and an open load at 3x would look like a storm of resends.
        self.storm = w.offered > RESEND_STORM * w.served;
        fits
    }

    fn standing(&self) -> u64 {
        self.standing_min.max((2.0 * self.rtt) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// A FIFO queue before one worker that completes one request every
    /// `service` ns, `limit` at a time; returns (policy, served waits, sheds).
    struct Sim {
        policy: QueuePolicy,
        /// Enqueue times of waiters, oldest first.
        queue: std::collections::VecDeque<u64>,
        waits: Vec<u64>,
        sheds: usize,
        /// Times waited by requests refused after waiting, with when.
        late: Vec<(u64, u64)>,
        limit: usize,
        /// Whether completions come from a settled limit.
        steady: bool,
    }

    impl Sim {
        fn new(timeout: Duration, limit: usize, rtt: Duration) -> Sim {
            let mut policy = QueuePolicy::new(timeout, 0);
            policy.completed(0, Some(rtt), 0, true);
            Sim {
                policy,
                queue: Default::default(),
                waits: Vec::new(),
                sheds: 0,
                late: Vec::new(),
                limit,
                steady: true,
            }
        }

        /// True if the request waits, false if it was shed.
        fn arrive(&mut self, now: u64) -> bool {
            let oldest = self.queue.front().copied();
            match self
                .policy
                .arrival(now, self.queue.len(), oldest, self.limit)
            {
                Arrival::Wait => {
                    self.queue.push_back(now);
                    true
                }
                Arrival::Shed => {
                    self.sheds += 1;
                    false
                }
            }
        }

        /// The worker finishes one request and takes the next waiter.
        fn complete(&mut self, now: u64) {
            let waiting = self.queue.len();
            self.policy
                .completed(now, Some(Duration::from_millis(2)), waiting, self.steady);
            let oldest = self.queue.front().copied();
            self.policy.tick(now, self.queue.len(), oldest, self.limit);
            if let Some((before, keep)) = self.policy.stale(now, self.limit) {
                while self.queue.len() > keep || self.queue.front().is_some_and(|&t| t < before) {
                    if let Some(t) = self.queue.pop_front() {
                        self.late.push((now, now - t));
                    }
                    self.sheds += 1;
                    self.policy.left(1);
                    self.policy.refused();
                }
            }
            let next = if self.policy.lifo() {
                self.queue.pop_back()
            } else {
                self.queue.pop_front()
            };
            if let Some(t) = next {
                self.waits.push(now - t);
            }
        }
    }

    /// Open loop: arrivals every `gap` ns, completions every `service` ns,
    /// for `duration` ns.
    fn open_loop(sim: &mut Sim, gap: u64, service: u64, duration: u64) {
        open_loop_stalled(sim, gap, service, duration, 0..0);
    }

    /// As [`open_loop`], with no completion due inside `stall`.
    fn open_loop_stalled(
        sim: &mut Sim,
        gap: u64,
        service: u64,
        duration: u64,
        stall: std::ops::Range<u64>,
    ) {
        let (mut next_arrival, mut next_done) = (0, service);
        while next_arrival < duration || next_done < duration {
            if next_arrival <= next_done {
                sim.arrive(next_arrival);
                next_arrival += gap;
            } else {
                sim.complete(next_done);
                next_done += service;
                if stall.contains(&next_done) {
                    next_done = stall.end;
                }
            }
        }
    }

    fn p99(waits: &mut [u64]) -> u64 {
        waits.sort_unstable();
        waits[waits.len() * 99 / 100]
    }

    #[test]
    fn a_closed_population_is_served_in_order_and_never_shed() {
        // 64 clients, each sends again the moment it is answered: the queue
        // stands at 60 (the worker holds 4) but never grows.
        let mut sim = Sim::new(Duration::from_secs(5), 4, Duration::from_millis(2));
        for _ in 0..60 {
            sim.arrive(0);
        }
        let service = MS / 2;
        let mut now = 0;
        for _ in 0..40_000 {
            now += service;
            sim.complete(now);
            sim.arrive(now);
        }
        assert_eq!(sim.sheds, 0);
        assert!(!sim.policy.lifo());
        // FIFO: every wait is the queue's length in completions.
        let w = p99(&mut sim.waits);
        assert!(w <= 61 * service, "p99 wait {w}");
    }

    #[test]
    fn overload_serves_every_waiter_and_sheds_the_rest_at_once() {
        // Three times what the worker completes, for 20 s.
        let service = MS / 2;
        let mut sim = Sim::new(Duration::from_secs(5), 4, Duration::from_millis(2));
        open_loop(&mut sim, service / 3, service, 20_000 * MS);
        assert!(sim.policy.lifo() || sim.policy.overloaded());
        let served = sim.waits.len();
        // Goodput: the worker never idles.
        assert!(
            served as u64 >= 20_000 * MS / service - 10,
            "served {served}"
        );
        // Served requests wait one completion (the queue holds a quarter of
        // the limit, at least one); the growth phase before overload is
        // detected is under 1% of them.
        let w = p99(&mut sim.waits);
        assert!(w <= service, "p99 wait {w}");
        assert!(sim.sheds > 2 * served - served / 10, "sheds {}", sim.sheds);
        // Refused after waiting: only the backlog when overload is found
        // (at 150 ms). Three times the completions is no resend storm, so
        // no trial lets another backlog build.
        assert_eq!(late_at(&sim), vec![1], "late refusals at (100 ms)");
        assert!(
            sim.late.len() < sim.sheds * 2 / 100,
            "late {}",
            sim.late.len()
        );
    }

    /// When requests were refused after waiting, in 100 ms steps.
    fn late_at(sim: &Sim) -> Vec<u64> {
        let mut at: Vec<u64> = sim.late.iter().map(|&(at, _)| at / (100 * MS)).collect();
        at.dedup();
        at
    }

    #[test]
    fn a_worker_that_stalls_for_an_interval_is_no_resend_storm() {
        // Three times what the worker completes, and the worker completes
        // nothing from 5 s to 5.06 s (a pause): in that interval requests
        // outnumber completions many times over, as resends would.
        let service = MS / 2;
        let mut sim = Sim::new(Duration::from_secs(5), 4, Duration::from_millis(2));
        open_loop_stalled(
            &mut sim,
            service / 3,
            service,
            10_000 * MS,
            5_000 * MS..5_060 * MS,
        );
        assert!(sim.policy.overloaded());
        // No trial: after the onset, only the one waiter the stall left
        // standing is refused late, not a trial's backlog.
        let after: Vec<_> = sim
            .late
            .iter()
            .filter(|&&(at, _)| at > 1_000 * MS)
            .collect();
        assert!(after.len() <= 1, "refused late after the onset: {after:?}");
    }

    #[test]
    fn a_load_that_could_be_resends_gets_trials_that_back_off() {
        // Twelve times what the worker completes: as many requests per
        // completion as clients resending when refused would make. Trials
        // at 2.15 s, 6.2 s, 14.3 s (the time to the next doubles while the
        // load stays open), each refusing 100 ms of backlog late.
        let service = MS / 2;
        let mut sim = Sim::new(Duration::from_secs(5), 4, Duration::from_millis(2));
        open_loop(&mut sim, service / 12, service, 20_000 * MS);
        assert!(sim.policy.overloaded());
        assert_eq!(
            late_at(&sim),
            vec![1, 22, 63, 144],
            "late refusals at (100 ms)"
        );
    }

    #[test]
    fn bursts_below_capacity_end_overload_without_a_trial() {
        let service = MS / 2;
        let mut sim = Sim::new(Duration::from_secs(5), 4, Duration::from_millis(2));
        open_loop(&mut sim, service / 3, service, 1_000 * MS);
        assert!(sim.policy.overloaded());
        // Then 0.9 × what the worker completes, in bursts of 18 every 20
        // completions: each burst overflows a queue of `limit`, so some
        // are refused in every interval, but no more come than are done.
        let start = 1_000 * MS;
        let mut now = start;
        let mut sheds_at = Vec::new();
        while now < start + 2_000 * MS {
            for i in 0..20 {
                if i == 0 {
                    for _ in 0..18 {
                        sim.arrive(now);
                    }
                }
                now += service;
                sim.complete(now);
            }
            sheds_at.push(sim.sheds);
        }
        assert!(!sim.policy.overloaded(), "still overloaded at 0.9×");
        // Refusals stopped after the overload's first whole second of
        // weighing (within 1.2 s; no trial: the load is no resend storm).
        assert_eq!(sheds_at[120], sheds_at[sheds_at.len() - 1], "{sheds_at:?}");
    }

    #[test]
    fn a_deep_growing_queue_is_overload_within_200_ms() {
        // Three times what the worker completes: by 200 ms the queue holds
        // 400 requests (200 ms of work); found by then, before an open-loop
        // generator's connections all wait here and it becomes a closed
        // population of its connection count.
        let service = MS / 2;
        let mut sim = Sim::new(Duration::from_secs(5), 4, Duration::from_millis(2));
        sim.policy.completed(0, None, 1, true);
        sim.policy.completed(service, None, 1, true);
        open_loop(&mut sim, service / 3, service, 200 * MS);
        assert!(sim.policy.overloaded(), "queue {}", sim.queue.len());
    }

    #[test]
    fn a_deep_queue_is_overload_within_200_ms_while_the_limit_still_climbs() {
        // As above, on a worker whose limit is not settled yet (no pace
        // between completions learned): the interval's own pace tells.
        let service = MS / 2;
        let mut sim = Sim::new(Duration::from_secs(5), 4, Duration::from_millis(2));
        sim.steady = false;
        open_loop(&mut sim, service / 3, service, 200 * MS);
        assert!(sim.policy.overloaded(), "queue {}", sim.queue.len());
    }

    #[test]
    fn without_overload_the_rule_is_the_predicted_wait() {
        // A completion every 2.5 ms while requests wait: the 2001st waiter
        // would wait 5 s.
        let mut p = QueuePolicy::new(Duration::from_secs(5), 0);
        p.completed(0, None, 1, true);
        p.completed(2_500_000, Some(Duration::from_millis(10)), 1, true);
        assert_eq!(p.arrival(1, 1998, Some(0), 4), Arrival::Wait);
        assert_eq!(p.arrival(2, 2000, Some(0), 4), Arrival::Shed);
        // No latency known yet: nothing is predicted, the timeout decides.
        let mut p = QueuePolicy::new(Duration::from_secs(5), 0);
        assert_eq!(p.arrival(1, 1_000_000, Some(0), 4), Arrival::Wait);
    }

    #[test]
    fn overload_ends_when_arrivals_fall_below_what_the_worker_completes() {
        let service = MS / 2;
        let mut sim = Sim::new(Duration::from_secs(5), 4, Duration::from_millis(2));
        open_loop(&mut sim, service / 3, service, 2_000 * MS);
        assert!(sim.policy.overloaded());
        // Half the worker's rate from then on.
        let start = 2_000 * MS;
        let (mut a, mut d) = (start, start + service);
        while a < start + 2_000 * MS {
            if a <= d {
                sim.arrive(a);
                a += 2 * service;
            } else {
                sim.complete(d);
                d += service;
            }
        }
        assert!(!sim.policy.lifo());
        assert!(sim.queue.len() <= 1);
    }

    #[test]
    fn clients_connecting_over_200_ms_are_never_shed() {
        // 200 clients join over 200 ms (a load tool opening its
        // connections), then each sends again when answered.
        let mut sim = Sim::new(Duration::from_secs(5), 4, Duration::from_millis(2));
        let service = MS / 2;
        let (mut now, mut joined) = (0, 0);
        while now < 10_000 * MS {
            now += service;
            sim.complete(now);
            sim.arrive(now);
            if joined < 200 && now % MS == 0 {
                sim.arrive(now);
                joined += 1;
            }
        }
        assert_eq!(sim.sheds, 0);
        assert!(!sim.policy.lifo());
    }

    #[test]
    fn a_burst_that_stops_growing_is_not_overload() {
        // 500 requests at once, then a closed loop: one growth interval only.
        let mut sim = Sim::new(Duration::from_secs(5), 4, Duration::from_millis(2));
        for _ in 0..500 {
            sim.arrive(0);
        }
        let mut now = 0;
        for _ in 0..10_000 {
            now += MS / 2;
            sim.complete(now);
            sim.arrive(now);
        }
        assert_eq!(sim.sheds, 0);
        assert!(!sim.policy.lifo());
    }

    #[test]
    fn an_idle_spell_is_not_a_gap_between_completions() {
        // One request, then 1 s idle, then 60 waiters served one per 20 ms.
        let mut p = QueuePolicy::new(Duration::from_secs(5), 0);
        p.completed(0, Some(Duration::from_millis(20)), 0, true);
        p.completed(1_000 * MS, Some(Duration::from_millis(20)), 60, true);
        assert_eq!(
            p.arrival(1_000 * MS, 60, Some(1_000 * MS), 1),
            Arrival::Wait
        );
        p.completed(1_020 * MS, Some(Duration::from_millis(20)), 59, true);
        assert_eq!(p.gap as u64, 20 * MS);
    }

    #[test]
    fn the_standing_threshold_follows_the_latency() {
        let mut p = QueuePolicy::new(Duration::from_secs(5), 0);
        assert_eq!(p.standing(), 50 * MS);
        p.completed(0, Some(Duration::from_millis(100)), 0, true);
        assert_eq!(p.standing(), 200 * MS);
        p.completed(1, Some(Duration::MAX), 0, true);
        assert!(p.standing() >= 200 * MS);
        p.completed(2, None, 0, true);
        assert!(p.standing() >= 200 * MS);
    }

    #[test]
    fn a_closed_population_is_not_shed_while_the_limit_dips_for_a_probe() {
        // 64 clients; for 300 ms of every second the worker completes one
        // request per 20 ms instead of one per 0.5 ms (a min-RTT probe).
        let mut sim = Sim::new(Duration::from_secs(5), 4, Duration::from_millis(2));
        for _ in 0..60 {
            sim.arrive(0);
        }
        let mut now = 0;
        while now < 10_000 * MS {
            let probing = now % (1_000 * MS) < 300 * MS;
            sim.limit = if probing { 1 } else { 4 };
            now += if probing { 20 * MS } else { MS / 2 };
            sim.complete(now);
            sim.arrive(now);
        }
        assert_eq!(sim.sheds, 0);
    }

    #[test]
    fn clients_that_resend_when_shed_do_not_keep_the_queue_overloaded() {
        // Overload from an open-loop burst...
        let service = MS / 2;
        let mut sim = Sim::new(Duration::from_secs(5), 4, Duration::from_millis(2));
        open_loop(&mut sim, service / 3, service, 1_000 * MS);
        assert!(sim.policy.overloaded());
        // ...then 300 clients, each sending again at once when answered,
        // 503 included.
        let mut now = 1_000 * MS;
        let mut sheds_at_4s = 0;
        // Clients not waiting in the queue (nor in the worker's 4 slots).
        let mut retrying = 300usize.saturating_sub(sim.queue.len() + 4);
        while now < 10_000 * MS {
            now += service;
            sim.complete(now);
            retrying += 1;
            // Each refused client is back 0.1 ms later.
            for step in 0..5 {
                let at = now + step * service / 5;
                let mut still = 0;
                for _ in 0..retrying {
                    if !sim.arrive(at) {
                        still += 1;
                    }
                }
                retrying = still;
            }
            if now <= 4_000 * MS {
                sheds_at_4s = sim.sheds;
            }
        }
        assert!(!sim.policy.lifo(), "still overloaded or LIFO");
        assert_eq!(sim.sheds, sheds_at_4s, "still shedding after 4 s");
    }
}

#[cfg(test)]
mod random_load {
    //! Random arrivals (Poisson) and service times (exponential) before one
    //! worker that runs `limit` requests one at a time.
    use super::*;
    const MS: u64 = 1_000_000;

    struct Rng(u64);
    impl Rng {
        fn unit(&mut self) -> f64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn exp(&mut self, mean: f64) -> u64 {
            (-mean * self.unit().ln()) as u64
        }
    }

    /// Poisson arrivals at `load` × 1/service, exponential service, one
    /// worker running `limit` requests (one at a time, FIFO).
    fn run(load: f64, limit: usize, secs: u64, seed: u64) -> (usize, usize, usize, usize, u64) {
        let service = 0.7 * MS as f64;
        let mut rng = Rng(seed | 1);
        let mut p = QueuePolicy::new(Duration::from_secs(5), 0);
        let mut queue: std::collections::VecDeque<u64> = Default::default();
        let mut worker: std::collections::VecDeque<u64> = Default::default(); // sent times
        let mut next_arrival = rng.exp(service / load);
        let mut next_done = u64::MAX;
        let (mut served, mut sheds, mut late, mut overloads) = (0, 0, 0, 0);
        let mut was = false;
        let mut waits = Vec::new();
        let end = secs * 1000 * MS;
        while next_arrival < end {
            if next_arrival <= next_done {
                let now = next_arrival;
                next_arrival += rng.exp(service / load);
                if queue.is_empty() && worker.len() < limit {
                    if worker.is_empty() {
                        next_done = now + rng.exp(service);
                    }
                    worker.push_back(now);
                    waits.push(0);
                    p.direct();
                    continue;
                }
                match p.arrival(now, queue.len(), queue.front().copied(), limit) {
                    Arrival::Wait => queue.push_back(now),
                    Arrival::Shed => sheds += 1,
                }
            } else {
                let now = next_done;
                let sent = worker.pop_front().unwrap();
                served += 1;
                p.completed(
                    now,
                    Some(Duration::from_nanos(now - sent)),
                    queue.len(),
                    true,
                );
                p.tick(now, queue.len(), queue.front().copied(), limit);
                if let Some((before, keep)) = p.stale(now, limit) {
                    while queue.len() > keep || queue.front().is_some_and(|&t| t < before) {
                        queue.pop_front();
                        sheds += 1;
                        late += 1;
                        p.left(1);
                        p.refused();
                    }
                }
                while worker.len() < limit {
                    let next = if p.lifo() {
                        queue.pop_back()
                    } else {
                        queue.pop_front()
                    };
                    let Some(t) = next else { break };
                    waits.push(now - t);
                    worker.push_back(now);
                }
                next_done = if worker.is_empty() {
                    u64::MAX
                } else {
                    now + rng.exp(service)
                };
            }
            if p.overloaded() && !was {
                overloads += 1;
            }
            was = p.overloaded();
        }
        waits.sort_unstable();
        let p99 = waits[waits.len() * 99 / 100];
        (served, sheds, late, overloads, p99 / 1000)
    }

    /// Most a worker of 0.7 ms per request completes in 60 s.
    const MOST: usize = 85_714;

    #[test]
    fn near_capacity_overload_is_found_once_and_keeps_the_goodput() {
        for load in [1.05, 1.2, 1.5] {
            for seed in [1, 2] {
                let (served, sheds, late, overloads, _) = run(load, 4, 60, seed);
                let at = format!("load {load} seed {seed}");
                // Not in and out of overload with every few noisy
                // intervals, refusing the backlog of each entry late.
                assert_eq!(overloads, 1, "{at}");
                assert!(late < sheds / 20, "{at}: {late} of {sheds} refused late");
                assert!(served > MOST * 9 / 10, "{at}: served {served}");
            }
        }
    }

    #[test]
    fn far_above_capacity_the_overload_queue_is_short() {
        let (served, _, _, overloads, p99) = run(3.0, 4, 60, 1);
        assert_eq!(overloads, 1);
        assert!(served > MOST * 98 / 100, "served {served}");
        // A quarter of the limit waits: about one completion (0.7 ms) of
        // waiting, not four.
        assert!(p99 < 4_000, "p99 wait {p99} µs");
    }
}
