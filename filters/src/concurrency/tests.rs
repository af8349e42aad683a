//! The limiter against a simulated worker, driven by the injected clock.
//!
//! The worker model is one event loop: a request first waits `io` (in
//! parallel with all others: an awaited database call), then needs `cpu` of
//! the loop, which serves such work one request at a time in arrival order.
//! `clients` closed-loop clients are always ready: each sends its next
//! request as soon as its previous one completes, and the gate holds it
//! until the limiter admits it.

use super::*;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

#[derive(Clone, Copy)]
struct Model {
    io: u64,
    cpu: u64,
}

#[derive(Default)]
struct Run {
    /// Completions at or after `measure_from`.
    completions: u64,
    /// Worker latencies (sent → completed) at or after `measure_from`.
    latencies: Vec<u64>,
    measured_for: u64,
}

impl Run {
    fn throughput(&self) -> f64 {
        self.completions as f64 / (self.measured_for as f64 / S as f64)
    }
    fn p99(&mut self) -> u64 {
        self.latencies.sort_unstable();
        let i = (self.latencies.len() * 99 / 100).min(self.latencies.len().saturating_sub(1));
        self.latencies.get(i).copied().unwrap_or(0)
    }
}

/// The gate's thread off the CPU for `length` of every `every` (waiting
/// for a core on a busy machine): a response that completes meanwhile is
/// seen, and its client's next request sent, only when the stall ends.
#[derive(Clone, Copy)]
struct Stalls {
    every: u64,
    length: u64,
}

impl Stalls {
    /// When the stall that covers `t` ends, if one does.
    fn end(stalls: Option<Stalls>, t: u64) -> Option<u64> {
        stalls
            .filter(|s| t % s.every < s.length)
            .map(|s| t - t % s.every + s.length)
    }
}

/// Runs until `end`; `lim = None` is the unlimited gate. `observe` sees the
/// limiter after every event.
fn simulate(
    lim: Option<&mut Limiter>,
    clients: usize,
    end: u64,
    measure_from: u64,
    model: impl Fn(u64) -> Model,
    observe: impl FnMut(u64, &Limiter),
) -> Run {
    simulate_stalled(lim, clients, end, measure_from, model, None, observe)
}

/// [`simulate`] with the gate's thread stalling as `stalls` says.
fn simulate_stalled(
    mut lim: Option<&mut Limiter>,
    clients: usize,
    end: u64,
    measure_from: u64,
    model: impl Fn(u64) -> Model,
    stalls: Option<Stalls>,
    mut observe: impl FnMut(u64, &Limiter),
) -> Run {
    let mut run = Run {
        measured_for: end - measure_from,
        ..Run::default()
    };
    let mut now = 0u64;
    let mut waiting = clients;
    // (io done, sent, cpu)
    let mut io: BinaryHeap<Reverse<(u64, u64, u64)>> = BinaryHeap::new();
    // (sent, cpu)
    let mut cpu_queue: VecDeque<(u64, u64)> = VecDeque::new();
    // (done, sent)
    let mut serving: Option<(u64, u64)> = None;
    // Sent times of responses completed while the gate stalled.
    let mut unseen: Vec<u64> = Vec::new();
    loop {
        if Stalls::end(stalls, now).is_none() {
            for sent in unseen.drain(..) {
                if let Some(l) = lim.as_mut() {
                    l.release(now, Duration::from_nanos(now - sent), Outcome::Success);
                }
                waiting += 1;
            }
            while waiting > 0 && lim.as_mut().is_none_or(|l| l.try_acquire(now)) {
                waiting -= 1;
                let m = model(now);
                if m.io > 0 {
                    io.push(Reverse((now + m.io, now, m.cpu)));
                } else {
                    cpu_queue.push_back((now, m.cpu));
                }
            }
        }
        if serving.is_none() {
            if let Some((sent, cpu)) = cpu_queue.pop_front() {
                serving = Some((now + cpu, sent));
            }
        }
        let t_io = io.peek().map(|r| r.0 .0);
        let t_cpu = serving.map(|s| s.0);
        let t_gate = Stalls::end(stalls, now).filter(|_| waiting > 0 || !unseen.is_empty());
        let Some(next) = [t_io, t_cpu, t_gate].into_iter().flatten().min() else {
            panic!("simulated worker idle with {waiting} clients waiting")
        };
        if next > end {
            break;
        }
        now = next;
        if t_cpu == Some(next) {
            let Some((_, sent)) = serving.take() else {
                unreachable!()
            };
            let rtt = now - sent;
            if Stalls::end(stalls, now).is_some() {
                unseen.push(sent);
            } else {
                if let Some(l) = lim.as_mut() {
                    l.release(now, Duration::from_nanos(rtt), Outcome::Success);
                }
                waiting += 1;
            }
            if now >= measure_from {
                run.completions += 1;
                run.latencies.push(rtt);
            }
        } else if t_io == Some(next) {
            if let Some(Reverse((_, sent, cpu))) = io.pop() {
                cpu_queue.push_back((sent, cpu));
            }
        }
        if let Some(l) = lim.as_deref() {
            observe(now, l);
        }
    }
    run
}

fn cpu_bound(_: u64) -> Model {
    Model { io: 0, cpu: MS / 2 }
}

fn io_bound(_: u64) -> Model {
    Model {
        io: 20 * MS,
        cpu: 0,
    }
}

fn cpu_bound_with_hop(_: u64) -> Model {
    Model {
        io: MS / 10,
        cpu: MS / 2,
    }
}

fn floor_5ms() -> Params {
    Params {
        min_work: Duration::from_millis(5),
        ..Params::default()
    }
}

#[test]
fn concurrency_cpu_bound_worker_converges_to_a_small_limit() {
    // The gradient alone (the default) settles near 4.
    let gradient_only = Params::default();
    cpu_bound_converges("cpu-bound, gradient only", cpu_bound, gradient_only, 4);
    // The same with a 0.1 ms hop between gate and worker (parallel, like I/O):
    // the loop must still never idle while clients wait.
    cpu_bound_converges(
        "cpu-bound + 0.1 ms hop, gradient only",
        cpu_bound_with_hop,
        gradient_only,
        4,
    );
    // With a 5 ms floor: the 10 requests of 0.5 ms the worker completes
    // in 5 ms (the hop changes the latency, not the pace).
    cpu_bound_converges("cpu-bound, 5 ms floor", cpu_bound, floor_5ms(), 10);
    cpu_bound_converges(
        "cpu-bound + 0.1 ms hop, 5 ms floor",
        cpu_bound_with_hop,
        floor_5ms(),
        10,
    );
}

/// Starting at 64, the limit is at most `settles_at` within 1 s and from
/// then on, at no cost in throughput; the worker's p99 is what `settles_at`
/// requests of 0.5 ms (plus the hop) allow.
fn cpu_bound_converges(name: &str, model: fn(u64) -> Model, params: Params, settles_at: usize) {
    let end = 30 * S;
    let settle = 2 * S;
    let mut unlimited = simulate(None, 64, end, settle, model, |_, _| {});
    // Start where an I/O-bound endpoint would have left it.
    let params = Params {
        initial_limit: 64,
        ..params
    };
    let mut lim = Limiter::new(params, 0);
    let (mut max_after, mut sum, mut n) = (0, 0u64, 0u64);
    // The last time the limit was above `settles_at`.
    let mut last_above = 0;
    let mut limited = simulate(Some(&mut lim), 64, end, settle, model, |now, l| {
        if l.limit() > settles_at {
            last_above = now;
        }
        if now >= settle {
            max_after = max_after.max(l.limit());
            if !l.probing() {
                sum += l.limit() as u64;
                n += 1;
            }
        }
    });
    let ratio = limited.throughput() / unlimited.throughput();
    let (p99, p99_unlimited) = (limited.p99(), unlimited.p99());
    eprintln!(
        "{name}: limit ≤ {settles_at} from {:.1} ms on; max limit after {}s {max_after}, mean {:.2}; throughput {:.0}/s vs unlimited {:.0}/s (ratio {ratio:.4}); worker p99 {:.2} ms vs unlimited {:.2} ms",
        last_above as f64 / MS as f64,
        settle / S,
        sum as f64 / n as f64,
        limited.throughput(),
        unlimited.throughput(),
        p99 as f64 / MS as f64,
        p99_unlimited as f64 / MS as f64,
    );
    assert!(
        last_above < S,
        "limit above {settles_at} at {last_above} ns"
    );
    assert!(max_after <= settles_at, "limit {max_after}");
    assert!(ratio >= 0.97, "throughput ratio {ratio}");
    let bound = settles_at as u64 * MS / 2 + MS / 10;
    assert!(
        p99 <= bound,
        "p99 {p99} vs {bound} ({p99_unlimited} unlimited)"
    );
}

#[test]
fn concurrency_floor_keeps_the_worker_busy_while_the_gate_stalls() {
    // The gate's thread waits 3 ms of every 10 ms for a CPU. The gradient's
    // 4 requests of 0.5 ms run out during each stall; the floor's 5 ms do not.
    let stalls = Some(Stalls {
        every: 10 * MS,
        length: 3 * MS,
    });
    let (end, settle) = (30 * S, 2 * S);
    let unlimited = simulate_stalled(None, 64, end, settle, cpu_bound, stalls, |_, _| {});
    let ratio = |params: Params| {
        let mut lim = Limiter::new(params, 0);
        let (mut sum, mut n) = (0u64, 0u64);
        let run = simulate_stalled(
            Some(&mut lim),
            64,
            end,
            settle,
            cpu_bound,
            stalls,
            |now, l| {
                if now >= settle && !l.probing() {
                    sum += l.limit() as u64;
                    n += 1;
                }
            },
        );
        (
            run.throughput() / unlimited.throughput(),
            sum as f64 / n.max(1) as f64,
        )
    };
    let (with_floor, limit) = ratio(floor_5ms());
    let (gradient_only, limit_gradient) = ratio(Params::default());
    eprintln!(
        "stalls 3 ms / 10 ms: throughput vs unlimited {with_floor:.4} with the floor (mean limit {limit:.1}), {gradient_only:.4} with the gradient alone (mean limit {limit_gradient:.1})"
    );
    assert!(with_floor >= 0.97, "with the floor {with_floor}");
    assert!(gradient_only < 0.95, "gradient alone {gradient_only}");
}

#[test]
fn concurrency_floor_follows_a_worker_that_became_slower() {
    // 0.5 ms of CPU per request, then 5 ms from 15 s on: the floor sized
    // for 0.5 ms (10 requests, 50 ms of the new work) must not hold until
    // the next scheduled probe (by then 20–40 s apart).
    let change = 15 * S;
    let model = |now: u64| Model {
        io: 0,
        cpu: if now < change { MS / 2 } else { 5 * MS },
    };
    let mut lim = Limiter::new(floor_5ms(), 0);
    let mut before = 0;
    let mut down_at = None;
    simulate(Some(&mut lim), 64, 25 * S, 0, model, |now, l| {
        if now < change {
            before = l.limit();
        } else if down_at.is_none() && !l.probing() && l.limit() <= 6 {
            down_at = Some(now);
        }
    });
    eprintln!(
        "slower worker: limit {before} before, ≤ 6 {:?} ms after the change, final {}, min RTT {:?}",
        down_at.map(|t| (t - change) / MS),
        lim.limit(),
        lim.min_rtt()
    );
    assert_eq!(before, 10);
    assert!(down_at.is_some_and(|t| t < change + 2 * S), "{down_at:?}");
}

#[test]
fn concurrency_io_bound_worker_is_not_throttled() {
    let end = 30 * S;
    let settle = 2 * S;
    let mut lim = Limiter::new(Params::default(), 0);
    let mut first_at_max = None;
    let (mut sum, mut n) = (0u64, 0u64);
    let mut run = simulate(Some(&mut lim), 64, end, settle, io_bound, |now, l| {
        if first_at_max.is_none() && l.limit() >= 58 {
            first_at_max = Some(now);
        }
        if now >= settle && !l.probing() {
            sum += l.limit() as u64;
            n += 1;
        }
    });
    let ideal = 64.0 / 0.020;
    let ratio = run.throughput() / ideal;
    eprintln!(
        "io-bound: limit ≥ 58 at {:?} ms, mean limit outside probes {:.2}, final {}; throughput {:.0}/s = {ratio:.4} × 64/20ms; worker p99 {:.2} ms",
        first_at_max.map(|t| t / MS),
        sum as f64 / n as f64,
        lim.limit(),
        run.throughput(),
        run.p99() as f64 / MS as f64,
    );
    assert!(first_at_max.is_some_and(|t| t < 2 * S));
    assert!(sum as f64 / n as f64 >= 0.9 * 64.0);
    assert!(ratio >= 0.9, "throughput ratio {ratio}");
}

#[test]
fn concurrency_probes_dip_to_min_and_recover() {
    let params = Params::default();
    let mut lim = Limiter::new(params, 0);
    // (dip start, level before, time back at that level)
    let mut dips: Vec<(u64, usize, Option<u64>)> = Vec::new();
    let (mut prev_limit, mut before) = (0, 0);
    simulate(Some(&mut lim), 64, 60 * S, 0, io_bound, |now, l| {
        let limit = l.limit();
        if l.probing() && prev_limit > params.min_limit && limit == params.min_limit {
            before = prev_limit;
            dips.push((now, before, None));
        }
        if let Some(d) = dips.last_mut() {
            if d.2.is_none() && !l.probing() && limit >= before {
                d.2 = Some(now);
            }
        }
        prev_limit = limit;
    });
    eprintln!(
        "probes: {} dips; (start s, level, back after ms): {:?}",
        dips.len(),
        dips.iter()
            .map(|d| (d.0 as f64 / S as f64, d.1, d.2.map(|t| (t - d.0) / MS)))
            .collect::<Vec<_>>()
    );
    // The worker does not change, so the gaps double from 5 s to 40 s
    // (each plus up to 15 % jitter): 5, 10, 20, then 40 s.
    assert_eq!(dips.len(), 3, "{} dips", dips.len());
    for (w, base) in dips.windows(2).zip([10 * S, 20 * S]) {
        let gap = w[1].0 - w[0].0;
        assert!(
            (base..=base * 23 / 20).contains(&gap),
            "probe gap {gap} for {base}"
        );
    }
    for d in &dips {
        assert!(d.1 >= 58);
        let back = d.2.map(|t| t - d.0);
        assert!(back.is_some_and(|b| b <= 300 * MS), "recovery {back:?}");
    }
}

#[test]
fn concurrency_follows_a_slower_worker_down_and_back_up() {
    // A handler that awaits 20 ms then computes for `cpu`: the best
    // concurrency is about (20 ms + cpu) / cpu, so it depends on `cpu`.
    let model = |now: u64| Model {
        io: 20 * MS,
        cpu: if (20 * S..40 * S).contains(&now) {
            2 * MS
        } else {
            MS / 2
        },
    };
    let mut lim = Limiter::new(Params::default(), 0);
    let mut phases = [(0u64, 0u64); 3];
    let mut last = [0usize; 3];
    let run = simulate(Some(&mut lim), 64, 60 * S, 0, model, |now, l| {
        // the last 10 s of each 20 s phase, outside probes
        let p = (now / (20 * S)).min(2) as usize;
        if now % (20 * S) >= 10 * S && !l.probing() {
            phases[p].0 += l.limit() as u64;
            phases[p].1 += 1;
        }
        last[p] = l.limit();
    });
    let mean = phases.map(|(s, n)| s as f64 / n.max(1) as f64);
    eprintln!(
        "recovery: mean limit over the last 10 s of each phase (cpu 0.5 ms, 2 ms, 0.5 ms): {mean:.1?}; completions {}",
        run.completions
    );
    assert!(mean[0] >= 57.0);
    assert!(mean[1] <= 32.0 && mean[1] >= 8.0);
    assert!(mean[2] >= 57.0);
}

/// A limiter that has finished its first probe and climbed to `max_limit`.
fn at_max(params: Params) -> Limiter {
    let mut lim = Limiter::new(params, 0);
    simulate(
        Some(&mut lim),
        params.max_limit,
        3 * S,
        0,
        io_bound,
        |_, _| {},
    );
    lim
}

#[test]
fn concurrency_drops_reduce_the_limit_multiplicatively() {
    let mut lim = at_max(Params::default());
    assert_eq!(lim.limit(), 64);
    // The simulation left 64 requests in flight; they end as drops.
    assert_eq!(lim.in_flight(), 64);
    let now = 3 * S;
    let mut expected = 64.0f64;
    for _ in 0..10 {
        lim.release(now, Duration::from_millis(20), Outcome::Dropped);
        expected = (expected * 0.9).max(1.0);
        assert_eq!(lim.limit(), expected as usize);
    }
    for _ in 0..100 {
        lim.try_acquire(now);
        lim.release(now, Duration::ZERO, Outcome::Dropped);
    }
    assert_eq!(lim.limit(), 1);
    // Ignored outcomes free the slot and change nothing else.
    assert!(lim.try_acquire(now));
    assert_eq!(lim.in_flight(), 1);
    lim.release(now, Duration::MAX, Outcome::Ignored);
    assert_eq!((lim.in_flight(), lim.limit()), (0, 1));
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn concurrency_limit_stays_in_bounds_on_any_input() {
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    let odd_durations = [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::MAX,
        Duration::from_secs(u64::MAX / 2),
    ];
    for case in 0..200 {
        let params = Params {
            min_limit: (rng.next() % 6) as usize,
            max_limit: (rng.next() % 100) as usize,
            initial_limit: (rng.next() % 200) as usize,
            probe_interval: Duration::from_nanos(rng.next() % (10 * S)),
            probe_jitter: [0.0, 0.5, -1.0, f64::NAN, f64::INFINITY][case % 5],
            probe_samples: (rng.next() % 64) as usize,
            probe_timeout: Duration::from_nanos(rng.next() % (2 * S)),
            sample_window: Duration::from_nanos(rng.next() % S),
            tolerance: [1.5, 0.0, -3.0, f64::NAN, 1e300][case % 5],
            drop_backoff: [0.9, 0.0, 1.0, f64::NAN, 7.0][(case / 5) % 5],
            min_work: [
                Duration::ZERO,
                Duration::from_millis(5),
                Duration::MAX,
                Duration::from_nanos(1),
            ][(case / 25) % 4],
            seed: rng.next(),
        };
        let (min, max) = (
            params.min_limit.max(1),
            params.max_limit.max(params.min_limit.max(1)),
        );
        let mut now = rng.next() % S;
        let mut lim = Limiter::new(params, now);
        let mut admitted = 0usize;
        for _ in 0..2_000 {
            now = match rng.next() % 10 {
                0 => now.saturating_sub(rng.next() % S), // backwards
                1 => now.saturating_add(rng.next()),     // huge jump
                2 => u64::MAX - rng.next() % 4,
                _ => now.saturating_add(rng.next() % (10 * MS)),
            };
            if rng.next().is_multiple_of(2) {
                if lim.try_acquire(now) {
                    admitted += 1;
                }
            } else {
                let rtt = match rng.next() % 4 {
                    0 => odd_durations[(rng.next() % 4) as usize],
                    _ => Duration::from_nanos(rng.next() % (100 * MS)),
                };
                let outcome = [Outcome::Success, Outcome::Dropped, Outcome::Ignored]
                    [(rng.next() % 3) as usize];
                // Sometimes a release without an acquire: in_flight saturates.
                if admitted > 0 || rng.next().is_multiple_of(8) {
                    admitted = admitted.saturating_sub(1);
                    lim.release(now, rtt, outcome);
                }
            }
            let limit = lim.limit();
            assert!(
                (min..=max).contains(&limit),
                "case {case}: limit {limit} not in [{min}, {max}]"
            );
            assert!(
                lim.in_flight() <= max,
                "case {case}: in_flight {}",
                lim.in_flight()
            );
            assert_eq!(lim.in_flight(), admitted, "case {case}");
        }
    }
}

#[test]
fn concurrency_idle_worker_does_not_drift_to_max() {
    // One client: at most one request is ever in flight, so the windows are
    // application-limited and the limit stays where it started.
    let mut lim = Limiter::new(Params::default(), 0);
    simulate(Some(&mut lim), 1, 10 * S, 0, io_bound, |_, _| {});
    assert_eq!(lim.limit(), Params::default().initial_limit);
    assert_eq!(lim.min_rtt(), Some(Duration::from_millis(20)));
}

#[test]
fn concurrency_a_worker_slower_than_a_probe_is_not_limited() {
    // A long poll: the probe's one request does not come back within
    // probe_timeout, so nothing was measured and the pool's cap rules.
    let mut lim = Limiter::new(Params::default(), 0);
    assert!(lim.try_acquire(0));
    assert!(!lim.try_acquire(1), "a probe admits min_limit");
    assert!(lim.try_acquire(S / 4 + 1));
    assert!(!lim.probing());
    assert_eq!(lim.limit(), Params::default().max_limit);
    assert_eq!(lim.min_rtt(), None);
}

#[test]
fn concurrency_a_probe_waits_for_traffic_before_it_times_out() {
    // A gate that starts idle: the first probe is still on when the first
    // requests come, long after probe_timeout, and measures them.
    let mut lim = Limiter::new(Params::default(), 0);
    assert!(lim.try_acquire(10 * S));
    assert!(lim.probing());
    for i in 0..8u64 {
        let now = 10 * S + (i + 1) * 2 * MS;
        lim.release(now, Duration::from_millis(2), Outcome::Success);
        assert!(i == 7 || lim.try_acquire(now));
    }
    assert!(!lim.probing());
    assert_eq!(lim.min_rtt(), Some(Duration::from_millis(2)));
    assert_eq!(lim.limit(), Params::default().initial_limit);
}

/// The limiter and the queue policy together, as the gate runs them:
/// `clients` closed-loop clients all arrive at `0` (a pool that connects
/// at once), wait FIFO/LIFO in the queue or are shed (and resend at once),
/// and the worker answers each request after `latency(in_flight)`. The
/// ticker looks at the queue every 50 ms. Returns (completions, sheds).
fn closed_population(clients: usize, end: u64, latency: impl Fn(usize) -> u64) -> (u64, u64) {
    let mut lim = Limiter::new(
        Params {
            max_limit: 256,
            ..Params::default()
        },
        0,
    );
    let mut policy = QueuePolicy::new(Duration::from_secs(5), 0);
    // (done, sent)
    let mut in_worker: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let mut queue: VecDeque<u64> = VecDeque::new();
    let (mut completions, mut sheds) = (0u64, 0u64);
    let mut ready = clients; // clients with a request to send now
    let mut now = 0u64;
    let mut next_tick = 50 * MS;
    while now < end {
        // Arrivals.
        while ready > 0 {
            ready -= 1;
            if queue.is_empty() && lim.try_acquire(now) {
                in_worker.push(Reverse((now + latency(lim.in_flight()), now)));
                continue;
            }
            let oldest = queue.front().copied();
            match policy.arrival(now, queue.len(), oldest, lim.steady_limit()) {
                Arrival::Wait => queue.push_back(now),
                Arrival::Shed => {
                    sheds += 1;
                    ready += 1;
                    // The shed client resends after a round trip.
                    break;
                }
            }
        }
        // Dispatch.
        let cap = lim.steady_limit();
        policy.tick(now, queue.len(), queue.front().copied(), cap);
        if let Some((before, keep)) = policy.stale(now, cap) {
            let mut refused = false;
            while queue.len() > keep || queue.front().is_some_and(|&t| t < before) {
                queue.pop_front();
                policy.left(1);
                sheds += 1;
                ready += 1;
                refused = true;
            }
            if refused {
                policy.refused();
            }
        }
        while !queue.is_empty() && lim.try_acquire(now) {
            let _ = if policy.lifo() {
                queue.pop_back()
            } else {
                queue.pop_front()
            };
            in_worker.push(Reverse((now + latency(lim.in_flight()), now)));
        }
        // Next event: a completion, a tick, or a shed client's resend.
        let t_done = in_worker.peek().map_or(u64::MAX, |r| r.0 .0);
        let t_resend = if ready > 0 { now + 100_000 } else { u64::MAX };
        now = t_done.min(next_tick).min(t_resend);
        if now == next_tick {
            next_tick += 50 * MS;
        }
        while in_worker.peek().is_some_and(|r| r.0 .0 <= now) {
            if let Some(Reverse((done, sent))) = in_worker.pop() {
                let rtt = Duration::from_nanos(done - sent);
                lim.release(now, rtt, Outcome::Success);
                policy.completed(now, Some(rtt), queue.len(), lim.settled());
                completions += 1;
                ready += 1;
            }
        }
    }
    (completions, sheds)
}

#[test]
fn concurrency_a_closed_population_arriving_at_once_is_not_shed() {
    // An I/O-bound handler (50 ms whatever the concurrency), 128 clients.
    // Before the fix: 2000 sheds, all in the start-up probe.
    for (ms, secs) in [(50, 7), (150, 12)] {
        let (done, sheds) = closed_population(128, secs * S, |_| ms * MS);
        assert!(done > secs * 1000 / ms * 64, "{ms} ms: {done} completions");
        assert_eq!(
            sheds,
            0,
            "{ms} ms: {sheds} sheds of {} requests",
            done + sheds
        );
    }
    // CPU-bound (each request in the loop makes all of them slower).
    let (done, sheds) = closed_population(128, 7 * S, |in_flight| in_flight as u64 * 2 * MS);
    assert!(done > 2000, "cpu-bound: {done} completions");
    assert_eq!(sheds, 0, "cpu-bound: {sheds} sheds");
}

#[test]
fn concurrency_a_changed_min_rtt_brings_the_probe_interval_back() {
    // 20 ms requests for 40 s (the interval backs off to 40 s), then 40 ms.
    let model = |now: u64| Model {
        io: if now < 40 * S { 20 * MS } else { 40 * MS },
        cpu: 0,
    };
    let mut lim = Limiter::new(Params::default(), 0);
    let mut starts = Vec::new();
    let mut was = false;
    simulate(Some(&mut lim), 64, 120 * S, 0, model, |now, l| {
        if l.probing() && !was {
            starts.push(now);
        }
        was = l.probing();
    });
    let secs: Vec<f64> = starts.iter().map(|&t| t as f64 / S as f64).collect();
    // The first probe after 40 s finds 40 ms: the next comes 5 s later.
    let i = starts
        .iter()
        .position(|&t| t >= 40 * S)
        .expect("a probe after the change");
    let gap = starts.get(i + 1).map(|&t| t - starts[i]);
    assert!(
        gap.is_some_and(|g| (5 * S..=6 * S).contains(&g)),
        "probes at {secs:.1?}"
    );
}
