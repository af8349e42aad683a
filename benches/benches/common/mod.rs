//! Criterion settings shared by the policy benches: short by default so the
//! whole suite stays within a few minutes (override on the command line).

use std::time::Duration;

use criterion::Criterion;

pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}
