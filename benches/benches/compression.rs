//! Response compression throughput and ratio per coding and level, through
//! the gate's real streaming encoder (`CompressedBody`) fed in 16 KiB
//! frames, as a worker's response arrives.
//!
//! Inputs (both generated, deterministic):
//! - `json64k`: the integration app's `/big` (480 records, ~64 KiB compact JSON);
//! - `html1m`: 1 MiB of HTML-ish text (tables, paragraphs, links) built from
//!   a small vocabulary with a fixed-seed PRNG.
//!
//! gzip runs twice on the 64 KiB JSON: streamed (length unknown: flate2 on
//! miniz_oxide) and with its length declared (one pass through libdeflate,
//! what the gate does for a response with a `Content-Length` up to 256 KiB).
//!
//! Criterion prints time and throughput (MiB/s of input) per case; the
//! compressed size and ratio are printed once per case before it runs, and a
//! Markdown table of both is printed at the end (throughput there is the
//! mean over every timed iteration of the case, warm-up included).
//!
//! `cargo bench -p asgi-gate-benches --bench compression` (about 1.5 min on
//! one core); append `-- --quick` for a rougher, faster run. The group
//! `cache_hit` (`-- cache_hit`) is the response cache's choice: a stored
//! copy per coding against compressing a stored identity copy per hit.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::hint::black_box;
use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use asgi_gate_filters::compression::{Coding, CompressedBody, Levels};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use http_body::{Body, Frame, SizeHint};

/// How the worker's response reaches the encoder.
const FRAME: usize = 16 * 1024;

/// (coding, level, also on the 1 MiB input, length declared up front)
///
/// With the length declared (a `Content-Length`, as most worker responses
/// have) and at most 256 KiB, gzip is compressed in one pass by libdeflate;
/// otherwise it streams through flate2 (miniz_oxide). Both are shown.
const CASES: &[(Coding, u32, bool, bool)] = &[
    (Coding::Gzip, 1, true, false),
    (Coding::Gzip, 6, true, false),
    (Coding::Gzip, 9, true, false),
    (Coding::Gzip, 1, false, true),
    (Coding::Gzip, 6, false, true),
    (Coding::Gzip, 9, false, true),
    (Coding::Br, 1, true, false),
    (Coding::Br, 4, true, false),
    (Coding::Br, 6, true, false),
    // ~1 MB/s: on 1 MiB it alone would take most of the time budget.
    (Coding::Br, 11, false, false),
    (Coding::Zstd, 1, true, false),
    (Coding::Zstd, 3, true, false),
    (Coding::Zstd, 9, true, false),
];

/// The app's `/big` (integration-tests/app/app.py), byte for byte.
fn json_64k() -> Bytes {
    let mut s = String::from("[");
    for i in 0..480u64 {
        if i > 0 {
            s.push(',');
        }
        let tags = ["\"alpha\"", "\"beta\"", "\"gamma\""][..1 + (i % 3) as usize].join(",");
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"item-{i:05}\",\"tags\":[{tags}],\"value\":{},\
             \"note\":\"lorem ipsum dolor sit amet lorem ipsum dolor sit amet \"}}",
            (i * 7919) % 100_003
        ));
    }
    s.push(']');
    Bytes::from(s)
}

/// splitmix64: a fixed sequence, the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const WORDS: &[&str] = &[
    "the",
    "gate",
    "worker",
    "request",
    "response",
    "stream",
    "header",
    "policy",
    "route",
    "token",
    "limit",
    "socket",
    "python",
    "latency",
    "client",
    "server",
    "cache",
    "value",
    "table",
    "order",
    "account",
    "invoice",
    "customer",
    "product",
    "shipping",
    "status",
    "pending",
    "delivered",
    "returned",
    "price",
    "quantity",
    "total",
    "discount",
    "region",
    "north",
    "south",
    "east",
    "west",
    "monday",
    "friday",
    "report",
    "summary",
    "details",
    "and",
    "of",
    "to",
    "in",
    "for",
    "with",
    "on",
    "by",
    "from",
    "is",
    "was",
    "are",
];

fn sentence(rng: &mut Rng, out: &mut String) {
    let n = 6 + rng.below(14);
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[rng.below(WORDS.len())]);
    }
    out.push('.');
}

/// 1 MiB of a page as a server-rendered app produces it: repeated markup,
/// prose from a small vocabulary, numbers that do not repeat.
fn html_1m() -> Bytes {
    const SIZE: usize = 1 << 20;
    let mut rng = Rng(0x5eed_0fa5_9a7e);
    let mut s = String::with_capacity(SIZE + 4096);
    s.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>Orders report</title>\n<link rel=\"stylesheet\" href=\"/static/app.css\">\n\
         </head>\n<body>\n<nav class=\"top\"><a href=\"/\">Home</a> <a href=\"/orders\">Orders</a> \
         <a href=\"/customers\">Customers</a></nav>\n<main>\n",
    );
    let mut section = 0u64;
    while s.len() < SIZE {
        section += 1;
        s.push_str(&format!(
            "<section id=\"s{section}\" class=\"report-section\">\n<h2>Section {section}: "
        ));
        sentence(&mut rng, &mut s);
        s.push_str("</h2>\n");
        for _ in 0..1 + rng.below(3) {
            s.push_str("<p class=\"lead\">");
            for _ in 0..2 + rng.below(4) {
                sentence(&mut rng, &mut s);
                s.push(' ');
            }
            s.push_str("</p>\n");
        }
        s.push_str(
            "<table class=\"orders\">\n<thead><tr><th>Order</th><th>Customer</th>\
             <th>Status</th><th>Qty</th><th>Total</th></tr></thead>\n<tbody>\n",
        );
        for _ in 0..4 + rng.below(12) {
            let order = rng.next() % 1_000_000;
            let customer = WORDS[rng.below(WORDS.len())];
            let status = ["pending", "shipped", "delivered", "returned"][rng.below(4)];
            s.push_str(&format!(
                "<tr class=\"row-{status}\"><td><a href=\"/orders/{order}\">#{order:06}</a></td>\
                 <td>{customer}-{}</td><td><span class=\"badge badge-{status}\">{status}</span></td>\
                 <td>{}</td><td>{}.{:02} EUR</td></tr>\n",
                rng.below(10_000),
                1 + rng.below(50),
                rng.below(5_000),
                rng.below(100),
            ));
        }
        s.push_str("</tbody>\n</table>\n</section>\n");
    }
    // ASCII only, so any cut is a valid string.
    s.truncate(SIZE);
    Bytes::from(s)
}

/// The worker's body as hyper hands it on: `FRAME`-sized data frames, and
/// its length when declared.
struct Frames(VecDeque<Bytes>, Option<u64>);

impl Frames {
    fn new(input: &Bytes, known: bool) -> Frames {
        let mut q = VecDeque::with_capacity(input.len() / FRAME + 1);
        let mut at = 0;
        while at < input.len() {
            let end = (at + FRAME).min(input.len());
            q.push_back(input.slice(at..end));
            at = end;
        }
        Frames(q, known.then_some(input.len() as u64))
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        self.1.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

fn levels(coding: Coding, level: u32) -> Levels {
    let mut l = Levels::default();
    match coding {
        Coding::Gzip => l.gzip = level,
        Coding::Br => l.br = level,
        Coding::Zstd => l.zstd = level as i32,
    }
    l
}

/// Runs `input` through `CompressedBody` and returns the encoded bytes. The
/// inner body is always ready, so polling never returns `Pending`.
fn compress(input: &Bytes, coding: Coding, levels: &Levels, known: bool, out: &mut Vec<u8>) {
    out.clear();
    let mut body = CompressedBody::new(Frames::new(input, known), coding, levels, false).unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            Poll::Ready(None) => return,
            Poll::Ready(Some(Err(e))) => panic!("encoder failed: {e}"),
            Poll::Pending => unreachable!("the input body is always ready"),
        }
    }
}

fn decode(coding: Coding, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        Coding::Gzip => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .unwrap();
        }
        Coding::Br => {
            brotli::Decompressor::new(data, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        Coding::Zstd => out = zstd::stream::decode_all(data).unwrap(),
    }
    out
}

/// One row of the final table.
struct Row {
    input: &'static str,
    case: String,
    in_len: usize,
    out_len: usize,
    bytes: u128,
    nanos: u128,
}

fn bench_compression(c: &mut Criterion, rows: &RefCell<Vec<Row>>) {
    let inputs: [(&'static str, Bytes, bool); 2] =
        [("json64k", json_64k(), false), ("html1m", html_1m(), true)];
    for (name, input, large) in &inputs {
        let mut group = c.benchmark_group(format!("compression/{name}"));
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(if *large { 3 } else { 2 }))
            .throughput(Throughput::Bytes(input.len() as u64));
        for &(coding, level, on_large, known) in CASES {
            if *large && !on_large {
                continue;
            }
            let suffix = if known { "-known-length" } else { "" };
            let case = format!("{}-{level}{suffix}", coding.as_str());
            let id = BenchmarkId::from_parameter(&case);
            let lv = levels(coding, level);
            let mut measured = false;
            let mut out = Vec::new();
            let mut bytes = 0u128;
            let mut nanos = 0u128;
            group.bench_with_input(id, input, |b, input| {
                if !measured {
                    // Once per case (criterion calls this closure only when
                    // the case is selected): size, ratio, and a round trip.
                    measured = true;
                    compress(input, coding, &lv, known, &mut out);
                    assert!(
                        decode(coding, &out) == input[..],
                        "{name} {case}: round trip failed"
                    );
                    println!(
                        "compression/{name}/{case}: {} -> {} bytes, ratio {:.2}",
                        input.len(),
                        out.len(),
                        input.len() as f64 / out.len() as f64
                    );
                    rows.borrow_mut().push(Row {
                        input: name,
                        case: case.clone(),
                        in_len: input.len(),
                        out_len: out.len(),
                        bytes: 0,
                        nanos: 0,
                    });
                }
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        compress(black_box(input), coding, &lv, known, &mut out);
                        black_box(out.len());
                    }
                    let took = start.elapsed();
                    bytes += u128::from(iters) * input.len() as u128;
                    nanos += took.as_nanos();
                    took
                });
            });
            if let Some(row) = rows.borrow_mut().last_mut() {
                if row.input == *name && row.case == case {
                    row.bytes = bytes;
                    row.nanos = nanos;
                }
            }
        }
        group.finish();
    }
}

fn print_table(rows: &[Row]) {
    if rows.is_empty() {
        return;
    }
    println!();
    println!("| input | coding-level | in bytes | out bytes | ratio | MiB/s |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for r in rows {
        let mibs = if r.nanos == 0 {
            "n/a".to_string()
        } else {
            let secs = r.nanos as f64 / 1e9;
            format!("{:.1}", r.bytes as f64 / secs / (1024.0 * 1024.0))
        };
        println!(
            "| {} | {} | {} | {} | {:.2} | {mibs} |",
            r.input,
            r.case,
            r.in_len,
            r.out_len,
            r.in_len as f64 / r.out_len as f64
        );
    }
}

/// What a response-cache hit costs per request for a stored 64 KiB JSON
/// (docs/cache.md): a copy stored per coding is served by handing out its
/// bytes (`copy`: a full memcpy, the most a hit can spend on the body);
/// storing identity only would compress on every hit (`gzip6`, `br4`, as
/// the gate's defaults, length declared).
fn bench_cache_hit(c: &mut Criterion) {
    let input = json_64k();
    let mut g = c.benchmark_group("cache_hit");
    g.throughput(Throughput::Bytes(input.len() as u64));
    let mut out = Vec::with_capacity(input.len());
    g.bench_function("copy", |b| {
        b.iter(|| {
            out.clear();
            out.extend_from_slice(black_box(&input));
            black_box(&out);
        })
    });
    for (name, coding, level) in [("gzip6", Coding::Gzip, 6), ("br4", Coding::Br, 4)] {
        let l = levels(coding, level);
        g.bench_function(name, |b| {
            b.iter(|| compress(black_box(&input), coding, &l, true, &mut out))
        });
    }
    g.finish();
}

fn main() {
    let rows = RefCell::new(Vec::new());
    let mut c = Criterion::default().configure_from_args();
    bench_cache_hit(&mut c);
    bench_compression(&mut c, &rows);
    c.final_summary();
    print_table(&rows.borrow());
}
