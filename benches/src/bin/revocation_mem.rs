//! Memory and expiry cost of the revocation list: inserts N revocations
//! (36-char UUID-like `jti` keys, each expiring within `--horizon` seconds),
//! prints RSS before and after and the RSS per entry, then expires them all
//! with one `sweep` at a time past the horizon (the list takes `now` as a
//! parameter, so no sleeping) and prints the sweep time, the entries left
//! and RSS after the sweep, then again after `malloc_trim` (glibc keeps
//! freed memory in its arenas, which is not the list holding it).
//!
//! Targets (issue 4): 1 M entries ≤ 150 MB RSS; back to baseline after expiry.
//! Run: `cargo run --release -p asgi-gate-benches --bin revocation_mem -- [--entries 1000000] [--horizon 2]`

use std::time::Instant;

use asgi_gate_benches::{mib, rss, trim_heap, unix_now, uuid_like, Args};
use asgi_gate_filters::revocation::{RevocationList, RevokeOutcome};

const USAGE: &str = "revocation_mem [--entries N (1000000)] [--horizon SECONDS (2)]";

fn main() {
    let args = Args::from_env(USAGE);
    let entries: usize = args.get("entries").unwrap_or(1_000_000);
    let horizon: u64 = args.get::<u64>("horizon").unwrap_or(2).max(1);

    let now = unix_now();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let list = RevocationList::new();
    let baseline = rss();
    println!("entries        {entries} (exp within now+1..=now+{horizon} s)");
    println!("RSS baseline   {}", mib(baseline));

    // One reused key buffer: what is measured is what the list allocates.
    let start = Instant::now();
    let mut first_key = String::new();
    for i in 0..entries {
        let key = uuid_like(&mut rng);
        let exp = now + 1 + (i as u64 % horizon);
        assert_eq!(list.revoke(&key, exp, now), RevokeOutcome::Inserted);
        if i == 0 {
            first_key = key;
        }
    }
    let insert = start.elapsed();
    let full = rss();
    let per_entry = full.saturating_sub(baseline) as f64 / entries.max(1) as f64;
    println!(
        "insert         {:.2} s ({:.0} ns/entry)",
        insert.as_secs_f64(),
        insert.as_nanos() as f64 / entries.max(1) as f64
    );
    println!("live entries   {} (index {})", list.len(), list.index_len());
    println!("RSS full       {}", mib(full));
    println!("RSS per entry  {per_entry:.0} B");
    assert!(list.is_revoked(&first_key, now));

    let later = now + horizon + 1;
    let start = Instant::now();
    let removed = list.sweep(later);
    let sweep = start.elapsed();
    println!(
        "sweep          {:.3} s for {removed} entries ({:.0} ns/entry)",
        sweep.as_secs_f64(),
        sweep.as_nanos() as f64 / removed.max(1) as f64
    );
    println!("live entries   {} (index {})", list.len(), list.index_len());
    let swept = rss();
    println!(
        "RSS swept      {} (+{} over baseline)",
        mib(swept),
        mib(swept.saturating_sub(baseline))
    );
    if trim_heap() {
        let trimmed = rss();
        println!(
            "RSS trimmed    {} (+{} over baseline, after malloc_trim)",
            mib(trimmed),
            mib(trimmed.saturating_sub(baseline))
        );
    }
    drop(list);
    trim_heap();
    println!(
        "RSS list freed {} (the list dropped, for reference)",
        mib(rss())
    );
}
