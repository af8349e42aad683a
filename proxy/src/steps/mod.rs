//! The per-request steps the pipeline calls that need more than a filter:
//! JWT policies with their refreshed keys and the revocation list
//! (`auth`), the response cache (`cache`), response compression
//! (`compress`), static routes (`static_files`) and the WebSocket relay
//! (`websocket`). Each holds the state the gate prepares for it at build
//! time and the code that runs on a request; the decisions themselves are
//! `filters/`' pure functions.
//!
//! A step is given what it needs (a counter, a timeout, its route's
//! policy) and never names the [`Gate`](crate::gate::Gate), the pipeline
//! or `reject`: a refusal is its own small error type, which `reject.rs`
//! turns into a status.

pub mod auth;
pub mod cache;
pub mod compress;
pub mod static_files;
pub mod websocket;
