//! Rate-limit memory soak on the real clock: `--keys` distinct client keys
//! (IPv4, like `key: client_ip`) are checked round-robin at a steady rate,
//! one full pass every `--pass` seconds, for `--seconds`/`--minutes`, with
//! `housekeeping()` every 30 s as the server runs it. Every 30 s it prints
//! the live keys, map capacity and RSS, before and after housekeeping. Then
//! the keys go idle; once their buckets are full again, one housekeeping runs
//! and RSS and live keys are printed (also after `malloc_trim`).
//!
//! The default limit, 1 request per 30 s per key (`--limit 1/30`), keeps a
//! key visited every 10 s live, so the map holds all keys: the plateau is the
//! cost of that many buckets. A shorter window (e.g. `--limit 100/60`) makes
//! housekeeping drop and the next pass re-insert most keys: churn.
//!
//! Targets (issue 6): RSS flattens; plateau ≤ 200 MB for 1 M keys; back down
//! after idle.
//! Run: `cargo run --release -p asgi-gate-benches --bin ratelimit_soak -- [--keys 1000000] [--minutes 10 | --seconds 600] [--pass 10] [--limit 1/30]`

use std::thread::sleep;
use std::time::{Duration, Instant};

use asgi_gate_benches::{mib, proc_status_bytes, rss, trim_heap, Args};
use asgi_gate_filters::ratelimit::{Key, KeyKind, LimitParams, RateLimit, DEFAULT_MAX_KEYS};

const USAGE: &str = "ratelimit_soak [--keys N (1000000)] [--minutes M | --seconds S (600)] \
[--pass SECONDS per pass over all keys (10)] [--limit COUNT/SECONDS (1/30)]";

const HOUSEKEEPING: Duration = Duration::from_secs(30);

fn main() {
    let args = Args::from_env(USAGE);
    let keys: u32 = args.get("keys").unwrap_or(1_000_000);
    let run = match (args.get::<u64>("seconds"), args.get::<u64>("minutes")) {
        (Some(s), _) => Duration::from_secs(s),
        (None, Some(m)) => Duration::from_secs(m * 60),
        (None, None) => Duration::from_secs(600),
    };
    let pass: f64 = args.get("pass").unwrap_or(10.0);
    let limit_spec: String = args.get("limit").unwrap_or_else(|| "1/30".into());
    let (count, per) = limit_spec
        .split_once('/')
        .and_then(|(c, s)| Some((c.parse::<u32>().ok()?, s.parse::<u64>().ok()?)))
        .unwrap_or_else(|| {
            eprintln!("bad --limit {limit_spec}\n{USAGE}");
            std::process::exit(2)
        });

    let mut params = LimitParams::new(KeyKind::ClientIp, count, Duration::from_secs(per));
    params.max_keys = DEFAULT_MAX_KEYS.max(keys as usize);
    let limit = RateLimit::new("soak", params).expect("limit");
    let rate = keys as f64 / pass;
    let baseline = rss();
    println!(
        "keys {keys}, run {} s, {rate:.0} checks/s (one pass every {pass} s), limit {count}/{per}s, housekeeping every {} s",
        run.as_secs(),
        HOUSEKEEPING.as_secs()
    );
    println!("t=0s RSS {}", mib(baseline));

    let start = Instant::now();
    let mut done: u64 = 0;
    let mut allowed: u64 = 0;
    let mut next_hk = HOUSEKEEPING;
    let mut plateau = 0u64;
    loop {
        let elapsed = start.elapsed().min(run);
        // Catch up to the schedule, then nap: a steady rate, not a burst.
        let due = (elapsed.as_secs_f64() * rate) as u64;
        while done < due {
            let key = Key::V4(0x0a00_0000 + (done % keys as u64) as u32);
            if limit.check(&key).is_ok() {
                allowed += 1;
            }
            done += 1;
        }
        if elapsed >= next_hk {
            let before = rss();
            plateau = plateau.max(before);
            let live = limit.len();
            let t0 = Instant::now();
            limit.housekeeping();
            let hk = t0.elapsed();
            println!(
                "t={}s checks {done} (allowed {allowed}) keys {live} -> {} cap {} RSS {} -> {} housekeeping {:.0} ms overflow {}",
                next_hk.as_secs(),
                limit.len(),
                limit.capacity(),
                mib(before),
                mib(rss()),
                hk.as_secs_f64() * 1000.0,
                limit.overflow_checks()
            );
            next_hk += HOUSEKEEPING;
        }
        if elapsed >= run {
            break;
        }
        sleep(Duration::from_millis(2));
    }
    let end_rss = rss();
    plateau = plateau.max(end_rss);
    println!(
        "end t={}s checks {done} keys {} RSS {} (peak RSS seen {}, VmHWM {})",
        start.elapsed().as_secs(),
        limit.len(),
        mib(end_rss),
        mib(plateau),
        mib(proc_status_bytes("VmHWM").unwrap_or(0))
    );

    // Idle: retain_recent drops a bucket one emission interval after it is
    // full again; a bucket refills within `per`. Plus a margin.
    let idle = Duration::from_secs(per) + Duration::from_secs(per) / count + Duration::from_secs(2);
    println!("idle {} s ...", idle.as_secs());
    sleep(idle);
    let t0 = Instant::now();
    limit.housekeeping();
    let hk = t0.elapsed();
    println!(
        "after idle + housekeeping ({:.0} ms): keys {} cap {} RSS {} (+{} over start)",
        hk.as_secs_f64() * 1000.0,
        limit.len(),
        limit.capacity(),
        mib(rss()),
        mib(rss().saturating_sub(baseline))
    );
    if trim_heap() {
        println!(
            "after malloc_trim: RSS {} (+{} over start)",
            mib(rss()),
            mib(rss().saturating_sub(baseline))
        );
    }
}
