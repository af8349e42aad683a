//! WebSocket route limits (`websocket: { max_message, messages_per_second,
//! idle_timeout }`): frame boundaries found in a relayed byte stream
//! (RFC 6455 §5.2) without buffering or unmasking it, the per-message size
//! rule, and the Close frame the gate sends when a limit ends a session. The
//! server moves the bytes; this module only reads frame headers.
//!
//! Sizes are payload bytes as sent, so on a limited route the gate lets no
//! extension be negotiated (`permessage-deflate` would make them compressed
//! sizes) and refuses frames that would need one (RSV bits), along with
//! every other malformed client frame the worker's parser would have to
//! handle: a frame the tracker misread would let what follows pass unseen.

/// A frame header as it crossed the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub fin: bool,
    /// RSV1-3 (bits 0b100, 0b010, 0b001): meaningful only to an extension.
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub len: u64,
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
        rsv: (h[0] >> 4) & 0x07,
        opcode: h[0] & 0x0f,
        masked: h[1] & 0x80 != 0,
        len,
    }
}

/// Why the gate ends a session, with the close code it sends (RFC 6455
/// §7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// 1002: a frame RFC 6455 forbids, or one that needs an extension.
    ProtocolError,
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
            Violation::ProtocolError => 1002,
            Violation::MessageTooBig => 1009,
            Violation::TooManyMessages => 1008,
            Violation::Idle => 1001,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Violation::ProtocolError => "protocol error",
            Violation::MessageTooBig => "message too big",
            Violation::TooManyMessages => "too many messages",
            Violation::Idle => "idle timeout",
        }
    }
}

/// A fragment that leaves its message open and carries less than this
/// counts against `messages_per_second`: a flood of tiny continuation frames
/// costs the worker a parse each, while clients that fragment (in 4 KiB
/// frames, say) are not slowed down.
pub const SMALL_FRAGMENT: u64 = 1024;

/// The rules for the client's frames, frame by frame: well-formed (RFC 6455
/// §5.2–5.5, no extension), messages (all their fragments) within
/// `max_message`, and messages and pings within `messages_per_second`.
pub struct ClientRule {
    max_message: Option<u64>,
    rate: Option<MessageRate>,
    /// Payload so far of the message being received, if one is open.
    open: Option<u64>,
}

impl ClientRule {
    pub fn new(max_message: Option<u64>, rate: Option<MessageRate>) -> ClientRule {
        ClientRule {
            max_message,
            rate,
            open: None,
        }
    }

    /// Checks one frame before any byte of it is forwarded.
    pub fn on_frame(&mut self, head: FrameHead) -> Result<(), Violation> {
        // RSV bits: no extension was negotiated (a compressed frame would be
        // counted compressed). Top length bit: invalid, and the tracker would
        // skip the rest of the session as payload.
        if head.rsv != 0 || !head.masked || head.len >> 63 != 0 {
            return Err(Violation::ProtocolError);
        }
        let counted = match head.opcode {
            // Close, ping, pong: one unfragmented frame of at most 125 bytes.
            8..=10 if !head.fin || head.len > 125 => return Err(Violation::ProtocolError),
            // A ping makes the worker write a pong: it counts as a message.
            8..=10 => head.opcode == 9,
            0..=2 => {
                let size = match (head.opcode, self.open) {
                    (0, Some(so_far)) => so_far.saturating_add(head.len),
                    // A continuation with nothing to continue, or a new
                    // message inside an open one (it would restart the sum).
                    (0, None) | (_, Some(_)) => return Err(Violation::ProtocolError),
                    (_, None) => head.len,
                };
                if self.max_message.is_some_and(|max| size > max) {
                    return Err(Violation::MessageTooBig);
                }
                self.open = (!head.fin).then_some(size);
                head.opcode != 0 || (!head.fin && head.len < SMALL_FRAGMENT)
            }
            _ => return Err(Violation::ProtocolError),
        };
        match &self.rate {
            Some(r) if counted && !r.allow() => Err(Violation::TooManyMessages),
            _ => Ok(()),
        }
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
        raw_frame((u8::from(fin) << 7) | opcode, true, len)
    }

    /// A frame from its first byte (FIN, RSV1-3, opcode) as given.
    fn raw_frame(b0: u8, masked: bool, len: usize) -> Vec<u8> {
        let mask = if masked { 0x80 } else { 0 };
        let mut f = vec![b0];
        match len {
            0..=125 => f.push(mask | len as u8),
            126..=0xffff => {
                f.push(mask | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(mask | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    /// What the relay decides on a client stream: `Err` with the offset and
    /// close code of the first violation.
    fn verdict(
        stream: &[u8],
        max_message: Option<u64>,
        per_second: Option<u32>,
    ) -> Result<(), (usize, u16)> {
        let mut t = FrameTracker::default();
        let rate = per_second
            .and_then(std::num::NonZeroU32::new)
            .map(MessageRate::per_second);
        let mut rule = ClientRule::new(max_message, rate);
        t.scan(stream, |h| rule.on_frame(h))
            .map_err(|(at, v)| (at, v.code()))
    }

    /// `first` followed by `bad`: the verdict must be `code` at `bad`'s start.
    fn refused_at_second(first: &[u8], bad: &[u8], max: Option<u64>, rate: Option<u32>) -> u16 {
        let mut stream = first.to_vec();
        stream.extend_from_slice(bad);
        // More traffic after it, which must not matter.
        stream.extend(frame(true, 2, 10));
        match verdict(&stream, max, rate) {
            Err((at, code)) => {
                assert_eq!(at, first.len(), "refused at the wrong frame");
                code
            }
            Ok(()) => panic!("frame {:02x?} passed", &bad[..bad.len().min(14)]),
        }
    }

    #[test]
    fn a_length_with_its_top_bit_set_is_refused_with_1002() {
        // 64-bit length 0x8000_0000_0000_0000 (RFC 6455 §5.2: MSB must be 0).
        let mut bad = vec![0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        bad.extend_from_slice(b"payload");
        let ok = frame(true, 1, 5);
        // With only a rate limit it switched the tracker off for good.
        assert_eq!(refused_at_second(&ok, &bad, None, Some(100)), 1002);
        // With max_message it was a 1009; it is a malformed frame, not a big one.
        assert_eq!(refused_at_second(&ok, &bad, Some(1 << 20), None), 1002);
        // The largest valid length is still just a (too big) message.
        let mut big = vec![
            0x82,
            0x80 | 127,
            0x7f,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
        ];
        big.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(refused_at_second(&ok, &big, Some(1 << 20), None), 1009);
    }

    #[test]
    fn pings_count_against_messages_per_second() {
        let mut pings = Vec::new();
        for _ in 0..3 {
            pings.extend(frame(true, 9, 4));
        }
        assert_eq!(
            refused_at_second(&pings, &frame(true, 9, 4), None, Some(3)),
            1008
        );
        // Messages and pings share one budget.
        let first = [frame(true, 1, 3), frame(true, 9, 0)].concat();
        assert_eq!(
            refused_at_second(&first, &frame(true, 9, 0), None, Some(2)),
            1008
        );
        // Pongs (answers to the worker's pings) and Close are not counted.
        let mut pongs = Vec::new();
        for _ in 0..10 {
            pongs.extend(frame(true, 10, 4));
        }
        pongs.extend(frame(true, 8, 2));
        assert_eq!(verdict(&pongs, None, Some(1)), Ok(()));
    }

    #[test]
    fn rsv_bits_without_an_extension_are_refused_with_1002() {
        // The gate lets no extension through, so RSV1 (permessage-deflate's
        // "compressed") would make max_message count compressed bytes.
        let ok = frame(true, 1, 5);
        for b0 in [0xC2, 0xA2, 0x92, 0x41, 0xC9] {
            let bad = raw_frame(b0, true, 20);
            assert_eq!(
                refused_at_second(&ok, &bad, Some(1 << 20), None),
                1002,
                "first byte {b0:#04x}"
            );
            assert_eq!(refused_at_second(&ok, &bad, None, Some(100)), 1002);
        }
    }

    #[test]
    fn control_frames_over_125_bytes_or_fragmented_are_refused_with_1002() {
        let ok = frame(true, 1, 5);
        for (bad, what) in [
            (frame(true, 9, 126), "ping of 126 bytes"),
            (frame(true, 10, 70_000), "pong of 70000 bytes"),
            (frame(true, 8, 200), "close of 200 bytes"),
            (frame(false, 9, 4), "ping without FIN"),
            (frame(false, 10, 0), "pong without FIN"),
        ] {
            assert_eq!(
                refused_at_second(&ok, &bad, Some(1 << 20), Some(100)),
                1002,
                "{what}"
            );
        }
    }

    #[test]
    fn a_continuation_without_a_start_is_refused_with_1002() {
        let ok = frame(true, 1, 5);
        assert_eq!(
            refused_at_second(&ok, &frame(true, 0, 5), Some(100), None),
            1002
        );
        assert_eq!(
            refused_at_second(&ok, &frame(false, 0, 5), None, Some(100)),
            1002
        );
    }

    #[test]
    fn a_new_message_inside_a_fragmented_one_is_refused_with_1002() {
        // It restarted the size count: 60 + 60 bytes passed a 100-byte limit.
        let open = frame(false, 1, 60);
        assert_eq!(
            refused_at_second(&open, &frame(false, 2, 60), Some(100), None),
            1002
        );
        assert_eq!(
            refused_at_second(&open, &frame(true, 1, 1), Some(100), None),
            1002
        );
    }

    #[test]
    fn reserved_opcodes_are_refused_with_1002() {
        let ok = frame(true, 1, 5);
        for opcode in [3, 7, 0xB, 0xF] {
            let bad = frame(true, opcode, 5);
            assert_eq!(
                refused_at_second(&ok, &bad, Some(100), Some(100)),
                1002,
                "opcode {opcode:#x}"
            );
        }
    }

    #[test]
    fn unmasked_client_frames_are_refused_with_1002() {
        let ok = frame(true, 1, 5);
        let bad = raw_frame(0x82, false, 20);
        assert_eq!(refused_at_second(&ok, &bad, Some(100), None), 1002);
    }

    #[test]
    fn small_fragments_that_leave_a_message_open_count_against_the_rate() {
        // A flood of tiny continuation frames costs the worker a parse each
        // and was never counted.
        let mut first = frame(false, 2, 0);
        for _ in 0..4 {
            first.extend(frame(false, 0, 0));
        }
        assert_eq!(
            refused_at_second(&first, &frame(false, 0, 1), None, Some(5)),
            1008
        );
        // Fragments of 1 KiB and more, and the final one, are not counted.
        let mut big = frame(false, 2, 1024);
        for _ in 0..10 {
            big.extend(frame(false, 0, 1024));
        }
        big.extend(frame(true, 0, 1));
        assert_eq!(verdict(&big, None, Some(1)), Ok(()));
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
            client_head(true, 1, 5),
            client_head(false, 2, 300),
            client_head(true, 9, 0),
            client_head(true, 0, 70_000),
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

    fn client_head(fin: bool, opcode: u8, len: u64) -> FrameHead {
        FrameHead {
            fin,
            rsv: 0,
            opcode,
            masked: true,
            len,
        }
    }

    #[test]
    fn message_sizes_add_up_over_fragments() {
        let head = client_head;
        let mut r = ClientRule::new(Some(100), None);
        assert_eq!(r.on_frame(head(true, 1, 100)), Ok(()));
        assert_eq!(r.on_frame(head(false, 2, 60)), Ok(()));
        assert_eq!(
            r.on_frame(head(true, 9, 125)),
            Ok(()),
            "ping between fragments"
        );
        assert_eq!(r.on_frame(head(false, 0, 40)), Ok(()));
        assert_eq!(r.on_frame(head(true, 0, 1)), Err(Violation::MessageTooBig));
        let mut r = ClientRule::new(Some(100), None);
        assert_eq!(
            r.on_frame(head(true, 2, 101)),
            Err(Violation::MessageTooBig)
        );
        let mut unlimited = ClientRule::new(None, None);
        assert_eq!(unlimited.on_frame(head(true, 2, i64::MAX as u64)), Ok(()));
        // Server frames are unmasked, so the tracker reports it.
        let server = [0x81, 2, b'h', b'i'];
        let mut t = FrameTracker::default();
        let _ = t.scan(&server, |h| {
            assert!(!h.masked && h.rsv == 0);
            Ok::<(), ()>(())
        });
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
