//! A 100 MiB response compressed under every coding must not raise the
//! process's peak RSS by more than a few MiB. Its own test binary, one test,
//! so nothing else runs beside it and moves the peak.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use asgi_gate_filters::compression::{Coding, CompressedBody, Levels};
use bytes::Bytes;
use http_body::{Body, Frame};

const TOTAL: usize = 100 << 20;
const CHUNK: usize = 64 << 10;

/// 100 MiB in 64 KiB chunks copied from random offsets of a 4 MiB pool that
/// is half JSON-like text, half random bytes; each chunk is a new buffer, as
/// from the socket.
struct Generated {
    pool: Arc<Vec<u8>>,
    rng: fastrand::Rng,
    sent: usize,
}

impl Body for Generated {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.sent >= TOTAL {
            return Poll::Ready(None);
        }
        let end = self.pool.len() - CHUNK;
        let at = self.rng.usize(..end);
        let chunk = Bytes::copy_from_slice(&self.pool[at..at + CHUNK]);
        self.sent += CHUNK;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

fn pool() -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(1);
    let mut v = Vec::with_capacity(4 << 20);
    let mut i = 0u64;
    while v.len() < 2 << 20 {
        let r = rng.u32(..100_000);
        v.extend_from_slice(
            format!("{{\"id\":{i},\"score\":{r},\"tag\":\"t{}\"}},", r % 97).as_bytes(),
        );
        i += 1;
    }
    v.truncate(2 << 20);
    v.extend((0..2 << 20).map(|_| rng.u8(..)));
    v
}

/// Resets the peak resident set to the current one (Linux: writing 5 to
/// clear_refs); false when that is not possible.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Resident set now (VmRSS) and its peak (VmHWM) in bytes, when /proc tells.
fn rss() -> Option<(usize, usize)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<usize> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Peak resident set (VmHWM) in bytes, when /proc tells.
fn peak_rss() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

struct Noop;
impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

#[test]
fn hundred_mib_in_bounded_memory() {
    let pool = Arc::new(pool());
    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    let codings: Vec<Coding> = match std::env::var("CODINGS") {
        Ok(v) => v.split(',').filter_map(Coding::parse).collect(),
        Err(_) => vec![Coding::Gzip, Coding::Zstd, Coding::Br],
    };
    for coding in codings {
        // Each coding is measured from its own start when the peak can be
        // reset, else all three against the first start.
        let alone = reset_peak();
        let before = if alone {
            rss().map(|r| r.0)
        } else {
            peak_rss()
        };
        let start = Instant::now();
        let inner = Generated {
            pool: pool.clone(),
            rng: fastrand::Rng::with_seed(2),
            sent: 0,
        };
        let mut body = CompressedBody::new(inner, coding, &Levels::default(), false).unwrap();
        let (mut out_total, mut max_frame) = (0usize, 0usize);
        loop {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(frame)) => {
                    let data = frame.unwrap().into_data().unwrap();
                    out_total += data.len();
                    max_frame = max_frame.max(data.len());
                }
                Poll::Ready(None) => break,
                Poll::Pending => unreachable!("the generated body is always ready"),
            }
        }
        let grown = match (before, peak_rss()) {
            (Some(b), Some(a)) => a.saturating_sub(b),
            _ => 0,
        };
        eprintln!(
            "{coding:?}: 100 MiB -> {:.1} MiB in {:.1?}, largest frame {} KiB, peak RSS +{:.1} MiB",
            out_total as f64 / (1 << 20) as f64,
            start.elapsed(),
            max_frame >> 10,
            grown as f64 / (1 << 20) as f64,
        );
        assert!(out_total > TOTAL / 4 && out_total < TOTAL, "{coding:?}");
        assert!(
            max_frame <= 512 << 10,
            "{coding:?}: frame of {max_frame} bytes"
        );
        assert!(
            grown <= 16 << 20,
            "{coding:?}: peak RSS grew by {grown} bytes"
        );
    }
}
