//! WebSocket route limits (`websocket: { max_message, messages_per_second,
//! idle_timeout }`): frame boundaries found in a relayed byte stream
//! (RFC 6455 §5.2) without buffering or unmasking it, the per-message size
//! rule, and the Close frame the gate sends when a limit ends a session. The
//! server moves the bytes; this module only reads frame headers.
//!
//! Sizes are payload bytes as sent: with `permessage-deflate` negotiated
//! between browser and worker, `max_message` limits the compressed size.

/// A frame header as it crossed the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub fin: bool,
    pub opcode: u8,
    pub len: u64,
}

impl FrameHead {
    /// Text, binary or continuation: part of a message.
    pub fn is_data(&self) -> bool {
        self.opcode < 8
    }
}

/// Finds frame headers in one direction of a stream, chunk by chunk, however
/// the chunks cut it.
#[derive(Debug, Default)]
pub struct FrameTracker {
    /// Bytes of the current header seen so far (at most 14).
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: u64,
}

impl FrameTracker {
    /// Scans `data`, calling `on_frame` for each complete header with the
    /// offset in `data` where that header began (0 when it began in an
    /// earlier chunk). Stops at the first `Err` and returns it with that
    /// offset: the bytes before it may be forwarded, the rest must not.
    pub fn scan<E>(
        &mut self,
        data: &[u8],
        mut on_frame: impl FnMut(FrameHead) -> Result<(), E>,
    ) -> Result<(), (usize, E)> {
        let mut i = 0;
        while i < data.len() {
            if self.payload_left > 0 {
                let skip = self.payload_left.min((data.len() - i) as u64);
                self.payload_left -= skip;
                i += skip as usize;
                continue;
            }
            let start = if self.have == 0 { i } else { 0 };
            while self.have < header_len(&self.header[..self.have]) && i < data.len() {
                self.header[self.have] = data[i];
                self.have += 1;
                i += 1;
            }
            let need = header_len(&self.header[..self.have]);
            if self.have < need {
                break;
            }
            let head = parse(&self.header[..need]);
            self.have = 0;
            self.payload_left = head.len;
            on_frame(head).map_err(|e| (start, e))?;
        }
        Ok(())
    }

    /// Between frames: a frame written now would not cut another one.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }
}

/// The header's full length, as far as the bytes seen tell (2 until the
/// length byte is in).
fn header_len(seen: &[u8]) -> usize {
    let Some(&b1) = seen.get(1) else {
        return 2;
    };
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

fn parse(h: &[u8]) -> FrameHead {
    let len = match h[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
        n => u64::from(n),
    };
    FrameHead {
        fin: h[0] & 0x80 != 0,
        opcode: h[0] & 0x0f,
        len,
    }
}

/// Why the gate ends a session, with the close code it sends (RFC 6455
/// §7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// 1009
    MessageTooBig,
    /// 1008
    TooManyMessages,
    /// 1001
    Idle,
}

impl Violation {
    pub fn code(self) -> u16 {
        match self {
            Violation::MessageTooBig => 1009,
            Violation::TooManyMessages => 1008,
            Violation::Idle => 1001,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Violation::MessageTooBig => "message too big",
            Violation::TooManyMessages => "too many messages",
            Violation::Idle => "idle timeout",
        }
    }
}

/// Counts the client's messages and their size, frame by frame.
#[derive(Debug)]
pub struct MessageRule {
    max_message: Option<u64>,
    /// Payload so far of the message being received, if one is open.
    open: Option<u64>,
}

impl MessageRule {
    pub fn new(max_message: Option<u64>) -> MessageRule {
        MessageRule {
            max_message,
            open: None,
        }
    }

    /// Checks one frame: `Ok(true)` when it starts a new message (for the
    /// rate limit), `Err` when the message it belongs to is too big.
    /// Control frames are never counted.
    pub fn on_frame(&mut self, head: FrameHead) -> Result<bool, Violation> {
        if !head.is_data() {
            return Ok(false);
        }
        let starts = head.opcode != 0 || self.open.is_none();
        let size = match (starts, self.open) {
            (false, Some(so_far)) => so_far.saturating_add(head.len),
            _ => head.len,
        };
        if self.max_message.is_some_and(|max| size > max) {
            return Err(Violation::MessageTooBig);
        }
        self.open = (!head.fin).then_some(size);
        Ok(starts)
    }
}

/// `messages_per_second` for one session: governor's direct (unkeyed) GCRA
/// limiter, burst equal to the rate.
pub struct MessageRate(governor::DefaultDirectRateLimiter);

impl MessageRate {
    pub fn per_second(n: std::num::NonZeroU32) -> MessageRate {
        MessageRate(governor::RateLimiter::direct(governor::Quota::per_second(
            n,
        )))
    }

    /// Counts one message; `false` when it is over the rate.
    pub fn allow(&self) -> bool {
        self.0.check().is_ok()
    }
}

/// A server-to-client Close frame (unmasked) with `v`'s code and reason.
pub fn close_frame(v: Violation) -> Vec<u8> {
    let reason = v.reason().as_bytes();
    let mut f = Vec::with_capacity(4 + reason.len());
    f.push(0x88);
    f.push((2 + reason.len()) as u8);
    f.extend_from_slice(&v.code().to_be_bytes());
    f.extend_from_slice(reason);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame (masked with a fixed key), payload all `x`.
    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        match len {
            0..=125 => f.push(0x80 | len as u8),
            126..=0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    fn heads_in_chunks(stream: &[u8], chunk: usize) -> Vec<FrameHead> {
        let mut t = FrameTracker::default();
        let mut seen = Vec::new();
        for c in stream.chunks(chunk) {
            t.scan(c, |h| {
                seen.push(h);
                Ok::<(), ()>(())
            })
            .unwrap();
        }
        assert!(t.at_boundary());
        seen
    }

    #[test]
    fn headers_are_found_however_the_stream_is_cut() {
        let mut stream = frame(true, 1, 5);
        stream.extend(frame(false, 2, 300));
        stream.extend(frame(true, 9, 0));
        stream.extend(frame(true, 0, 70_000));
        let want = vec![
            FrameHead {
                fin: true,
                opcode: 1,
                len: 5,
            },
            FrameHead {
                fin: false,
                opcode: 2,
                len: 300,
            },
            FrameHead {
                fin: true,
                opcode: 9,
                len: 0,
            },
            FrameHead {
                fin: true,
                opcode: 0,
                len: 70_000,
            },
        ];
        for chunk in [1, 2, 3, 7, 13, 100, 4096, stream.len()] {
            assert_eq!(heads_in_chunks(&stream, chunk), want, "chunks of {chunk}");
        }
        // Server frames are not masked.
        let server = [0x81, 2, b'h', b'i', 0x82, 0];
        assert_eq!(heads_in_chunks(&server, 1).len(), 2);
    }

    #[test]
    fn violation_offset_is_where_its_header_began() {
        let mut stream = frame(true, 1, 10);
        let second = stream.len();
        stream.extend(frame(true, 2, 200));
        let mut t = FrameTracker::default();
        let r = t.scan(&stream, |h| if h.len > 100 { Err("big") } else { Ok(()) });
        assert_eq!(r, Err((second, "big")));
        // A header split over two chunks reports offset 0 in the second.
        let mut t = FrameTracker::default();
        let cut = second + 1;
        assert!(t.scan(&stream[..cut], |_| Ok::<(), &str>(())).is_ok());
        let r = t.scan(&stream[cut..], |h| {
            if h.len > 100 {
                Err("big")
            } else {
                Ok(())
            }
        });
        assert_eq!(r, Err((0, "big")));
    }

    #[test]
    fn message_sizes_add_up_over_fragments() {
        let head = |fin, opcode, len| FrameHead { fin, opcode, len };
        let mut r = MessageRule::new(Some(100));
        assert_eq!(r.on_frame(head(true, 1, 100)), Ok(true));
        assert_eq!(r.on_frame(head(false, 2, 60)), Ok(true));
        assert_eq!(
            r.on_frame(head(true, 9, 125)),
            Ok(false),
            "ping between fragments"
        );
        assert_eq!(r.on_frame(head(false, 0, 40)), Ok(false));
        assert_eq!(r.on_frame(head(true, 0, 1)), Err(Violation::MessageTooBig));
        let mut r = MessageRule::new(Some(100));
        assert_eq!(
            r.on_frame(head(true, 2, 101)),
            Err(Violation::MessageTooBig)
        );
        let mut unlimited = MessageRule::new(None);
        assert_eq!(unlimited.on_frame(head(true, 2, u64::MAX)), Ok(true));
    }

    #[test]
    fn message_rate_allows_a_burst_then_refuses() {
        let r = MessageRate::per_second(std::num::NonZeroU32::new(3).unwrap());
        assert!((0..3).all(|_| r.allow()));
        assert!(!r.allow());
    }

    #[test]
    fn close_frames_carry_code_and_reason() {
        let f = close_frame(Violation::MessageTooBig);
        assert_eq!(&f[..4], &[0x88, 17, 0x03, 0xF1]);
        assert_eq!(&f[4..], b"message too big");
        assert_eq!(Violation::TooManyMessages.code(), 1008);
        assert_eq!(Violation::Idle.code(), 1001);
    }
}
