//! Response caching policy for a shared cache (RFC 9111), pure functions
//! over request and response headers and a time passed in: what may be
//! served from the cache (`bypass`), what may be stored and for how long
//! (`storable`, `Freshness`), the key with `Vary` (`key`), surrogate keys
//! for purges, and conditional requests answered from a stored response.
//! Storage and request coalescing are the proxy's (`proxy/src/cache/`).
//!
//! - Stored (RFC 9111 §3): GET responses with a status from RFC 9110
//!   §15.1's heuristically cacheable list (plus 302/307), with explicit
//!   freshness (`s-maxage` > `max-age` > `Expires` − `Date`, §4.2.1); no
//!   heuristic freshness. Never: `no-store`, `private`, `no-cache` (read
//!   as "not stored": storing it would send every request to the worker
//!   anyway), `Set-Cookie`, `Vary: *`, 206, 304.
//! - `Authorization` (§3.5): only on routes that allow it, and then only
//!   responses marked `public` or `s-maxage`.
//! - Age (§4.2.3), stale-while-revalidate (RFC 5861 §3) and
//!   stale-if-error (RFC 5861 §4); `must-revalidate` and
//!   `proxy-revalidate` forbid both (§4.2.4).
//!
//! ```
//! use asgi_gate_filters::cache::{storable, State};
//! use http::{HeaderMap, HeaderValue, StatusCode};
//! let mut h = HeaderMap::new();
//! h.insert("cache-control", HeaderValue::from_static("max-age=60, stale-while-revalidate=30"));
//! let f = storable(StatusCode::OK, &h, false, 0).unwrap();
//! assert_eq!(f.state(59_999), State::Fresh);
//! assert_eq!(f.state(60_000), State::StaleWhileRevalidate);
//! ```

mod control;
mod freshness;
pub mod key;

pub use control::{RequestControl, ResponseControl};
pub use freshness::{bypass, storable, Bypass, Freshness, NotStored, State};
pub use key::{
    has_preconditions, not_modified, primary_key, strip_surrogate_headers, surrogate_keys,
    variant_key, vary_names, KeyParts, CONDITIONAL,
};
