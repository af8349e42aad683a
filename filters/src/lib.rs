//! asgi-gate policies, one module each. Every function here is pure: it reads
//! and writes headers, addresses, claims and an injected clock, and knows
//! nothing about listeners, pools or the runtime, so each is tested on its own.
// `deny`, not `forbid`: hugepages.rs holds the one allowed `unsafe` (a
// measured madvise hint).
#![deny(unsafe_code)]

pub mod cache;
pub mod compression;
pub mod concurrency;
pub mod cors;
pub mod forwarding;
pub mod header_names;
pub mod hosts;
mod hugepages;
pub mod jwt;
pub mod limits;
pub mod path;
pub mod ranges;
pub mod ratelimit;
pub mod request_id;
pub mod revocation;
pub mod security_headers;
pub mod static_path;
pub mod websocket;
