//! Response compression (br, gzip, zstd). This module owns the whole
//! decision and the encoding: negotiation of `Accept-Encoding`
//! ([`negotiate`]), whether a response is compressed ([`should_compress`]),
//! the header rules ([`apply_headers`], [`add_vary`],
//! [`strip_accept_encoding`]), the size probe for bodies without a
//! `Content-Length` ([`buffer_head`]) and the streaming encoder
//! ([`CompressedBody`]). The server only strings them together; the
//! per-route switch is the server passing a [`Policy`] or not.
//!
//! Why not tower-http's `CompressionLayer` (over async-compression): it
//! falls short of several points of the contract, each of which would have
//! needed our own code around it anyway. Its negotiation breaks ties between
//! equal q-values by a fixed built-in order, not `compression.algorithms`,
//! and ignores `*` (so `*;q=0.5` or `br;q=0, *` are not honoured). Its
//! `SizeAbove` predicate reads only `Content-Length`/`size_hint` (a `u16`)
//! and cannot decide from the first chunk of a streamed body. It never
//! flushes the encoder per chunk (for SSE it only offers to not compress,
//! while we must compress opted-in event streams with each event decodable
//! on arrival). It does not weaken a strong `ETag`, and it adds `Vary` only
//! to responses it compressed, not to those that were too small or not
//! accepted. It also works on `Response` inside a tower `Service`, which the
//! gate's hyper pipeline does not use. What remained (a streaming encoder
//! with flush) is small on flate2, brotli and zstd directly, so that is
//! what [`CompressedBody`] is.
//!
//! Levels default to gzip 6, br 4, zstd 3, the libraries' usual balanced
//! points (zlib's default, brotli's fastest level with full context
//! modelling, zstd's default), confirmed by the criterion bench in
//! `benches/`: each level above them costs several times the CPU for a few
//! percent of size. gzip bodies of known size up to 256 KiB go through
//! libdeflate in one pass (smaller and faster than streaming, see
//! `body.rs`); the rest stream through flate2. Configured levels are
//! clamped into what browsers decode (zstd at most 19, whose 8 MiB window is
//! the HTTP limit).
//!
//! How the server strings it together, on a route with a [`Policy`]:
//! 1. Request: `let accepted = negotiate(req.headers(), &policy.algorithms);`
//!    then [`strip_accept_encoding`] before forwarding. (No policy on the
//!    route: neither, and nothing below.)
//! 2. Response head: `should_compress(&policy, &method, accepted, status,
//!    resp.headers())`:
//!    - `Compress(c)`: [`apply_headers`]`(headers, c)` and the body becomes
//!      `CompressedBody::new(body, c, &policy.levels,
//!      is_event_stream(headers))`.
//!    - `UnknownSize(c)` (no `Content-Length`): `let b =
//!      buffer_head(body, policy.min_size).await?;` (waits for the first
//!      frame only). If `b.is_small(policy.min_size)`, send `b` as is with
//!      [`add_vary`] (its `size_hint` is exact, so a `Content-Length` can be
//!      set); else as `Compress(c)` with `b` as the body.
//!    - `TooSmall`, `NotAccepted` ([`Decision::needs_vary`]): body untouched,
//!      [`add_vary`].
//!    - `NotEligible(_)`: untouched.

mod body;
mod negotiate;
mod policy;

pub use body::{buffer_head, BoxError, Buffered, CompressedBody};
pub use negotiate::{negotiate, negotiate_values};
pub use policy::{
    add_vary, apply_headers, is_event_stream, media_matches, should_compress,
    strip_accept_encoding, Decision, Policy, Reason,
};

/// A content coding the gate produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coding {
    Br,
    Gzip,
    Zstd,
}

impl Coding {
    /// The token used in `Content-Encoding` and in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Gzip => "gzip",
            Coding::Zstd => "zstd",
        }
    }

    /// A coding token, case-insensitive; `x-gzip` is gzip (RFC 9110 §8.4.1.3).
    pub fn parse(s: &str) -> Option<Coding> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("br") {
            Some(Coding::Br)
        } else if s.eq_ignore_ascii_case("gzip") || s.eq_ignore_ascii_case("x-gzip") {
            Some(Coding::Gzip)
        } else if s.eq_ignore_ascii_case("zstd") {
            Some(Coding::Zstd)
        } else {
            None
        }
    }

    fn index(self) -> usize {
        match self {
            Coding::Br => 0,
            Coding::Gzip => 1,
            Coding::Zstd => 2,
        }
    }
}

/// Compression level per coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    /// 0..=9
    pub gzip: u32,
    /// 0..=11
    pub br: u32,
    /// 1..=19
    pub zstd: i32,
}

impl Default for Levels {
    fn default() -> Self {
        Levels {
            gzip: 6,
            br: 4,
            zstd: 3,
        }
    }
}

impl Levels {
    fn gzip_clamped(&self) -> u32 {
        self.gzip.min(9)
    }

    fn br_clamped(&self) -> u32 {
        self.br.min(11)
    }

    fn zstd_clamped(&self) -> i32 {
        self.zstd.clamp(1, 19)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coding_tokens() {
        for c in [Coding::Br, Coding::Gzip, Coding::Zstd] {
            assert_eq!(Coding::parse(c.as_str()), Some(c));
        }
        assert_eq!(Coding::parse(" X-Gzip "), Some(Coding::Gzip));
        assert_eq!(Coding::parse("BR"), Some(Coding::Br));
        assert_eq!(Coding::parse("deflate"), None);
        assert_eq!(Coding::parse("identity"), None);
    }

    #[test]
    fn levels_are_clamped() {
        let l = Levels {
            gzip: 99,
            br: 99,
            zstd: 22,
        };
        assert_eq!(
            (l.gzip_clamped(), l.br_clamped(), l.zstd_clamped()),
            (9, 11, 19)
        );
        let l = Levels {
            gzip: 0,
            br: 0,
            zstd: -5,
        };
        assert_eq!(
            (l.gzip_clamped(), l.br_clamped(), l.zstd_clamped()),
            (0, 0, 1)
        );
    }
}
