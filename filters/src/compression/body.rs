//! The response body, compressed frame by frame with bounded memory, and the
//! size probe for bodies that came without a `Content-Length`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{Coding, Levels};

/// Errors of a compressed body: the inner body's, or the encoder's.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Input is fed to the encoder at most this much at a time, and what the
/// encoder produced is handed on before the next piece: a 16 MiB frame from
/// the worker never becomes one 16 MiB output buffer.
const PIECE: usize = 64 * 1024;

/// A gzip body whose exact size is known and at most this is compressed in
/// one pass by libdeflate instead of streamed through flate2: on the
/// integration app's 64 KiB JSON at level 6 that is 205 µs and 4691 bytes
/// against miniz_oxide's 672 µs and 5017 bytes (zlib level 9: 4954 bytes),
/// see the `compression` criterion bench. libdeflate cannot stream, so the
/// bound keeps memory per response at this much input plus its output.
const ONE_PASS_MAX: usize = 256 * 1024;

/// Brotli's output staging buffer.
const BROTLI_BUFFER: usize = 16 * 1024;

/// Brotli window: 2^20 = 1 MiB (brotli's own default is 4 MiB; ngx_brotli's
/// 512 KiB). Measured on a 100 MiB stream: peak RSS +5.6 MiB per stream at
/// 1 MiB against +11.6 MiB at 4 MiB. Only bodies with repeats more than
/// 1 MiB apart lose ratio, and a proxy holds one encoder per response.
const BROTLI_LGWIN: u32 = 20;

/// Brotli (quality 2 and up) merges blocks into metablocks of up to twice
/// its window and writes nothing until one is complete: 8 MiB of output at
/// once with the default window. A flush every this much input ends the
/// metablock so output keeps flowing. It costs nothing measurable: on a
/// 4 MiB JSON-like body the flushed stream came out 1-2 % smaller than the
/// unflushed one (a test keeps the overhead under 1 %).
const BROTLI_FLUSH_EVERY: usize = 256 * 1024;

/// A streaming encoder writing into a `Vec` that is emptied after every
/// step, so it holds only what one step produced.
enum Encoder {
    /// gzip of a body whose size is known and at most [`ONE_PASS_MAX`]:
    /// collected, then compressed in one pass by libdeflate at the end.
    GzipWhole {
        input: Vec<u8>,
        level: u32,
    },
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br {
        writer: Box<brotli::CompressorWriter<Vec<u8>>>,
        since_flush: usize,
    },
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    /// `one_pass`: the body's exact size when known and no flush per chunk
    /// is wanted.
    fn new(coding: Coding, levels: &Levels, one_pass: Option<u64>) -> io::Result<Encoder> {
        Ok(match coding {
            Coding::Gzip => match one_pass.and_then(|n| usize::try_from(n).ok()) {
                Some(n) if n <= ONE_PASS_MAX => Encoder::GzipWhole {
                    input: Vec::with_capacity(n),
                    level: levels.gzip_clamped(),
                },
                _ => gzip_stream(levels.gzip_clamped()),
            },
            Coding::Br => Encoder::Br {
                writer: Box::new(brotli::CompressorWriter::new(
                    Vec::new(),
                    BROTLI_BUFFER,
                    levels.br_clamped(),
                    BROTLI_LGWIN,
                )),
                since_flush: 0,
            },
            Coding::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(
                Vec::new(),
                levels.zstd_clamped(),
            )?),
        })
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Encoder::GzipWhole { input, level } => {
                if input.len() + data.len() <= ONE_PASS_MAX {
                    input.extend_from_slice(data);
                    return Ok(());
                }
                // More than the declared size: stream from here on.
                let mut e = gzip_stream(*level);
                e.write(input)?;
                e.write(data)?;
                *self = e;
                Ok(())
            }
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Br {
                writer,
                since_flush,
            } => {
                writer.write_all(data)?;
                *since_flush += data.len();
                if *since_flush >= BROTLI_FLUSH_EVERY {
                    *since_flush = 0;
                    writer.flush()?;
                }
                Ok(())
            }
            Encoder::Zstd(e) => e.write_all(data),
        }
    }

    /// Emits everything written so far as a decodable prefix: gzip
    /// Z_SYNC_FLUSH, brotli BROTLI_OPERATION_FLUSH, zstd ZSTD_e_flush.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::GzipWhole { input, level } => {
                let mut e = gzip_stream(*level);
                e.write(input)?;
                e.flush()?;
                *self = e;
                Ok(())
            }
            Encoder::Gzip(e) => e.flush(),
            Encoder::Br {
                writer,
                since_flush,
            } => {
                *since_flush = 0;
                writer.flush()
            }
            Encoder::Zstd(e) => e.flush(),
        }
    }

    /// Ends the stream; the last bytes are then in [`Encoder::take`].
    fn finish(self) -> io::Result<Vec<u8>> {
        match self {
            Encoder::GzipWhole { input, level } => gzip_one_pass(&input, level),
            Encoder::Gzip(e) => e.finish(),
            // The brotli writer cannot fail into a Vec; into_inner finishes.
            Encoder::Br { writer, .. } => Ok(writer.into_inner()),
            Encoder::Zstd(e) => e.finish(),
        }
    }

    /// What the encoder has written out since the last call.
    fn take(&mut self) -> Vec<u8> {
        let out = match self {
            // Nothing is written out before `finish`.
            Encoder::GzipWhole { .. } => return Vec::new(),
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Br { writer, .. } => writer.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        };
        std::mem::take(out)
    }
}

fn gzip_stream(level: u32) -> Encoder {
    Encoder::Gzip(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::new(level),
    ))
}

/// gzip of `input` in one pass, with a compressor kept per thread (it holds
/// a few hundred KiB of match-finder tables; allocating one per response
/// would cost more than compressing 64 KiB).
fn gzip_one_pass(input: &[u8], level: u32) -> io::Result<Vec<u8>> {
    use libdeflater::{CompressionLvl, Compressor};
    thread_local! {
        static GZIP: RefCell<Option<(u32, Compressor)>> = const { RefCell::new(None) };
    }
    GZIP.with_borrow_mut(|cached| {
        if cached.as_ref().is_none_or(|(l, _)| *l != level) {
            let lvl = CompressionLvl::new(level as i32).unwrap_or_default();
            *cached = Some((level, Compressor::new(lvl)));
        }
        let Some((_, compressor)) = cached.as_mut() else {
            return Err(io::Error::other("no gzip compressor"));
        };
        let mut out = vec![0; compressor.gzip_compress_bound(input.len())];
        let n = compressor
            .gzip_compress(input, &mut out)
            .map_err(io::Error::other)?;
        out.truncate(n);
        Ok(out)
    })
}

pin_project! {
    /// `inner` compressed with one coding, frame by frame.
    ///
    /// Data frames are fed to the encoder in pieces of at most 64 KiB and
    /// whatever the encoder emits is yielded at once, so memory stays at the
    /// encoder's own state plus one input frame: measured on a 100 MiB
    /// stream, peak RSS +1 MiB for gzip, +3.5 MiB for zstd, +5.6 MiB for
    /// brotli, output frames at most 256 KiB. With `flush_each_chunk`
    /// (event streams) the encoder is flushed after every input frame, so
    /// the client can decode each event as soon as it is sent. Trailers pass
    /// through after the end of the compressed stream.
    pub struct CompressedBody<B> {
        #[pin]
        inner: B,
        encoder: Option<Encoder>,
        // The unfed rest of the current input frame.
        pending: Bytes,
        flush_each_chunk: bool,
        inner_done: bool,
        trailers: Option<HeaderMap>,
        done: bool,
    }
}

impl<B: Body> CompressedBody<B> {
    /// Fails only when the zstd context cannot be allocated.
    pub fn new(
        inner: B,
        coding: Coding,
        levels: &Levels,
        flush_each_chunk: bool,
    ) -> io::Result<Self> {
        let one_pass = match flush_each_chunk {
            true => None,
            false => inner.size_hint().exact(),
        };
        Ok(CompressedBody {
            inner,
            encoder: Some(Encoder::new(coding, levels, one_pass)?),
            pending: Bytes::new(),
            flush_each_chunk,
            inner_done: false,
            trailers: None,
            done: false,
        })
    }
}

impl<B> Body for CompressedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(None);
            }
            let Some(encoder) = this.encoder.as_mut() else {
                // The compressed stream has ended: trailers, then the end.
                *this.done = true;
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            if !this.pending.is_empty() {
                let piece = this.pending.split_to(this.pending.len().min(PIECE));
                encoder.write(&piece)?;
                if this.pending.is_empty() && *this.flush_each_chunk {
                    encoder.flush()?;
                }
                let out = encoder.take();
                if !out.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                }
                continue;
            }
            if *this.inner_done {
                let Some(encoder) = this.encoder.take() else {
                    continue;
                };
                let out = encoder.finish()?;
                if !out.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                }
                continue;
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                None => *this.inner_done = true,
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => *this.pending = data.copy_to_bytes(data.remaining()),
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            // Trailers end a body.
                            *this.trailers = Some(t);
                            *this.inner_done = true;
                        }
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

pin_project! {
    /// A body whose first frames were read ahead by [`buffer_head`]: they are
    /// replayed first, then the rest of `inner` follows untouched.
    pub struct Buffered<B> {
        #[pin]
        inner: B,
        head: VecDeque<Frame<Bytes>>,
        head_len: u64,
        ended: bool,
    }
}

impl<B> Buffered<B> {
    /// Data bytes read ahead.
    pub fn head_len(&self) -> u64 {
        self.head_len
    }

    /// The whole body was read ahead (its exact length is `head_len`).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The body is known to be shorter than `min_size`: it ended within what
    /// was read ahead. A body still going on is never "small".
    pub fn is_small(&self, min_size: u64) -> bool {
        self.ended && (self.head_len == 0 || self.head_len < min_size)
    }
}

/// Reads the start of a body with no `Content-Length` to tell whether it is
/// shorter than `min_size`: waits for the first frame, then takes further
/// frames only while they are ready without waiting, until `min_size` data
/// bytes are held or the body ends. So it holds at most `min_size` plus one
/// frame, and never delays a streaming body beyond its first frame.
///
/// A body that does not end within what was ready is treated as large, the
/// rule Starlette's GZipMiddleware applies to streaming responses.
pub async fn buffer_head<B>(mut body: B, min_size: u64) -> Result<Buffered<B>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut head = VecDeque::new();
    let mut head_len: u64 = 0;
    let mut ended = body.is_end_stream();
    if !ended {
        poll_fn(|cx| loop {
            if head_len >= min_size {
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut body).poll_frame(cx) {
                Poll::Pending if head.is_empty() => return Poll::Pending,
                Poll::Pending => return Poll::Ready(Ok(())),
                Poll::Ready(None) => {
                    ended = true;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = match frame.into_data() {
                        Ok(mut d) => {
                            let d = d.copy_to_bytes(d.remaining());
                            head_len += d.len() as u64;
                            Frame::data(d)
                        }
                        Err(f) => f,
                    };
                    let trailers = frame.is_trailers();
                    head.push_back(frame);
                    if trailers || body.is_end_stream() {
                        ended = true;
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        })
        .await?;
    }
    Ok(Buffered {
        inner: body,
        head,
        head_len,
        ended,
    })
}

impl<B> Body for Buffered<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Some(frame) = this.head.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if *this.ended {
            return Poll::Ready(None);
        }
        this.inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let queued: u64 = self
            .head
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        if self.ended {
            return SizeHint::with_exact(queued);
        }
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(queued));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(queued));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    const ALL: [Coding; 3] = [Coding::Br, Coding::Gzip, Coding::Zstd];

    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    fn noop_cx<T>(f: impl FnOnce(&mut Context<'_>) -> T) -> T {
        let waker = Waker::from(Arc::new(Noop));
        f(&mut Context::from_waker(&waker))
    }

    /// What a test body yields, in order.
    enum Step {
        Data(Bytes),
        /// One `Poll::Pending` (the next poll goes on).
        Pending,
        Trailers(HeaderMap),
        Fail,
    }

    /// The steps, and the size the body declares (as a `Content-Length`).
    struct Script(VecDeque<Step>, Option<u64>);

    fn script(steps: impl IntoIterator<Item = Step>) -> Script {
        Script(steps.into_iter().collect(), None)
    }

    fn sized(steps: impl IntoIterator<Item = Step>, declared: u64) -> Script {
        Script(steps.into_iter().collect(), Some(declared))
    }

    fn data(s: &[u8]) -> Step {
        Step::Data(Bytes::copy_from_slice(s))
    }

    impl Body for Script {
        type Data = Bytes;
        type Error = io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            match self.0.pop_front() {
                None => Poll::Ready(None),
                Some(Step::Data(d)) => Poll::Ready(Some(Ok(Frame::data(d)))),
                Some(Step::Pending) => Poll::Pending,
                Some(Step::Trailers(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                Some(Step::Fail) => Poll::Ready(Some(Err(io::Error::other("upstream reset")))),
            }
        }
        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
        fn size_hint(&self) -> SizeHint {
            self.1.map_or_else(SizeHint::default, SizeHint::with_exact)
        }
    }

    /// Polls until the body is pending or ended; the data and trailers seen.
    fn drain<B>(body: &mut B) -> (Vec<u8>, Option<HeaderMap>, bool)
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Debug,
    {
        let mut out = Vec::new();
        let mut trailers = None;
        noop_cx(|cx| loop {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => return (out, trailers, false),
                Poll::Ready(None) => return (out, trailers, true),
                Poll::Ready(Some(frame)) => {
                    let frame = frame.unwrap();
                    if let Some(d) = frame.data_ref() {
                        out.extend_from_slice(d);
                    } else {
                        trailers = frame.into_trailers().ok();
                    }
                }
            }
        })
    }

    fn decode(coding: Coding, encoded: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match coding {
            Coding::Gzip => {
                flate2::read::GzDecoder::new(encoded)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Coding::Br => {
                brotli::Decompressor::new(encoded, 4096)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Coding::Zstd => out = zstd::decode_all(encoded).unwrap(),
        }
        out
    }

    fn compress(coding: Coding, steps: Vec<Step>, flush: bool) -> Vec<u8> {
        let mut body =
            CompressedBody::new(script(steps), coding, &Levels::default(), flush).unwrap();
        let (out, _, ended) = drain(&mut body);
        assert!(ended);
        assert!(body.is_end_stream());
        out
    }

    /// Text that compresses like JSON: repetitive but not constant.
    fn sample(len: usize) -> Vec<u8> {
        let mut s = Vec::with_capacity(len + 64);
        let mut i = 0u64;
        while s.len() < len {
            s.extend_from_slice(
                format!("{{\"id\":{i},\"name\":\"item-{}\"}},", i * 7919 % 1000).as_bytes(),
            );
            i += 1;
        }
        s.truncate(len);
        s
    }

    #[test]
    fn round_trips() {
        let big = sample(300_000);
        for coding in ALL {
            for flush in [false, true] {
                assert_eq!(decode(coding, &compress(coding, vec![], flush)), b"");
                let small = compress(coding, vec![data(b"hello")], flush);
                assert_eq!(decode(coding, &small), b"hello", "{coding:?}");
                let chunks: Vec<Step> = big.chunks(7_000).map(data).collect();
                let out = compress(coding, chunks, flush);
                assert_eq!(decode(coding, &out), big, "{coding:?} flush={flush}");
                assert!(out.len() < big.len() / 4, "{coding:?} compresses");
                // Empty frames and pending polls in between change nothing.
                let steps = vec![
                    data(b""),
                    data(b"ab"),
                    Step::Pending,
                    data(b""),
                    data(b"cd"),
                ];
                let mut body =
                    CompressedBody::new(script(steps), coding, &Levels::default(), flush).unwrap();
                let (mut out, _, ended) = drain(&mut body);
                assert!(!ended);
                let (rest, _, ended) = drain(&mut body);
                assert!(ended);
                out.extend_from_slice(&rest);
                assert_eq!(decode(coding, &out), b"abcd");
            }
        }
    }

    #[test]
    fn every_level_round_trips() {
        let input = sample(20_000);
        for gzip in [0, 1, 9] {
            for (br, zstd) in [(0, 1), (11, 19)] {
                let levels = Levels { gzip, br, zstd };
                for coding in ALL {
                    let mut body =
                        CompressedBody::new(script([data(&input)]), coding, &levels, false)
                            .unwrap();
                    assert_eq!(decode(coding, &drain(&mut body).0), input);
                }
            }
        }
    }

    fn gzip_of(body: Script, flush: bool, levels: &Levels) -> (Vec<u8>, bool) {
        let mut body = CompressedBody::new(body, Coding::Gzip, levels, flush).unwrap();
        let (mut out, _, ended) = drain(&mut body);
        let early = !out.is_empty();
        if !ended {
            let (rest, _, ended) = drain(&mut body);
            assert!(ended);
            out.extend_from_slice(&rest);
        }
        (out, early)
    }

    #[test]
    fn gzip_of_a_known_small_body_is_one_pass_and_smaller() {
        let input = sample(64 * 1024);
        let steps = || {
            let mut v: Vec<Step> = input.chunks(16 * 1024).map(data).collect();
            v.insert(1, Step::Pending);
            v
        };
        let levels = Levels::default();
        let (one_pass, early) = gzip_of(sized(steps(), input.len() as u64), false, &levels);
        assert!(!early, "nothing is sent before the whole body is in");
        assert_eq!(decode(Coding::Gzip, &one_pass), input);
        let (streamed, early) = gzip_of(script(steps()), false, &levels);
        assert!(early, "the streaming encoder sends as it goes");
        assert_eq!(decode(Coding::Gzip, &streamed), input);
        assert!(
            one_pass.len() < streamed.len(),
            "libdeflate {} vs miniz {}",
            one_pass.len(),
            streamed.len()
        );
        for gzip in 0..=9 {
            let levels = Levels { gzip, ..levels };
            let (out, _) = gzip_of(sized([data(&input)], input.len() as u64), false, &levels);
            assert_eq!(decode(Coding::Gzip, &out), input, "level {gzip}");
        }
        let (empty, _) = gzip_of(sized([], 0), false, &levels);
        assert_eq!(decode(Coding::Gzip, &empty), b"");
    }

    #[test]
    fn gzip_streams_when_the_body_is_large_unknown_flushed_or_longer_than_declared() {
        let levels = Levels::default();
        let big = sample(ONE_PASS_MAX + 1);
        let chunks = |b: &[u8]| -> Vec<Step> { b.chunks(100_000).map(data).collect() };
        let (out, early) = gzip_of(sized(chunks(&big), big.len() as u64), false, &levels);
        assert!(early, "over the one-pass bound: streamed");
        assert_eq!(decode(Coding::Gzip, &out), big);
        // Declared small, turns out larger: switches to streaming midway.
        let (out, early) = gzip_of(sized(chunks(&big), 1000), false, &levels);
        assert!(early);
        assert_eq!(decode(Coding::Gzip, &out), big);
        // Event streams are flushed per chunk even with a known size.
        let (out, early) = gzip_of(
            sized([data(b"data: 1\n\n"), Step::Pending], 9),
            true,
            &levels,
        );
        assert!(early);
        assert_eq!(decode(Coding::Gzip, &out), b"data: 1\n\n");
    }

    /// Feeds bytes to a streaming decoder and returns what it decoded so far.
    enum StreamDecoder {
        Gzip(flate2::write::GzDecoder<Vec<u8>>),
        Br(Box<brotli::DecompressorWriter<Vec<u8>>>),
        Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
    }

    impl StreamDecoder {
        fn new(coding: Coding) -> Self {
            match coding {
                Coding::Gzip => StreamDecoder::Gzip(flate2::write::GzDecoder::new(Vec::new())),
                Coding::Br => {
                    StreamDecoder::Br(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096)))
                }
                Coding::Zstd => {
                    StreamDecoder::Zstd(zstd::stream::write::Decoder::new(Vec::new()).unwrap())
                }
            }
        }
        fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
            match self {
                StreamDecoder::Gzip(d) => {
                    d.write_all(bytes).unwrap();
                    d.flush().unwrap();
                    d.get_ref().clone()
                }
                StreamDecoder::Br(d) => {
                    d.write_all(bytes).unwrap();
                    d.flush().unwrap();
                    d.get_ref().clone()
                }
                StreamDecoder::Zstd(d) => {
                    d.write_all(bytes).unwrap();
                    d.flush().unwrap();
                    d.get_ref().clone()
                }
            }
        }
    }

    #[test]
    fn event_streams_are_decodable_after_every_chunk() {
        let events: Vec<Vec<u8>> = (0..5)
            .map(|i| format!("event: tick\ndata: {{\"n\":{i}}}\n\n").into_bytes())
            .collect();
        for coding in ALL {
            let mut steps = Vec::new();
            for e in &events {
                steps.push(data(e));
                steps.push(Step::Pending);
            }
            let mut body =
                CompressedBody::new(script(steps), coding, &Levels::default(), true).unwrap();
            let mut decoder = StreamDecoder::new(coding);
            let mut want = Vec::new();
            let mut all = Vec::new();
            for e in &events {
                // The worker sent one event and went quiet: all of it must be out.
                let (out, _, ended) = drain(&mut body);
                assert!(!ended);
                want.extend_from_slice(e);
                all.extend_from_slice(&out);
                assert_eq!(decoder.feed(&out), want, "{coding:?}");
            }
            let (tail, _, ended) = drain(&mut body);
            assert!(ended);
            all.extend_from_slice(&tail);
            assert_eq!(decode(coding, &all), want);
        }
    }

    #[test]
    fn without_flush_small_chunks_are_held_by_the_encoder() {
        // The contrast to the event-stream case: not flushed, a small chunk
        // does not come out on its own (gzip holds it until more or the end).
        let steps = vec![data(b"data: 1\n\n"), Step::Pending, data(b"data: 2\n\n")];
        let mut body =
            CompressedBody::new(script(steps), Coding::Gzip, &Levels::default(), false).unwrap();
        let (out, _, _) = drain(&mut body);
        let mut decoder = StreamDecoder::new(Coding::Gzip);
        assert!(decoder.feed(&out).is_empty());
    }

    #[test]
    fn trailers_pass_through_after_the_stream_ends() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        for coding in ALL {
            let steps = vec![data(b"payload"), Step::Trailers(t.clone())];
            let mut body =
                CompressedBody::new(script(steps), coding, &Levels::default(), false).unwrap();
            let (out, trailers, ended) = drain(&mut body);
            assert!(ended);
            assert_eq!(trailers.as_ref(), Some(&t));
            assert_eq!(decode(coding, &out), b"payload");
        }
    }

    #[test]
    fn upstream_errors_are_passed_on() {
        for coding in ALL {
            let steps = vec![data(b"abc"), Step::Fail];
            let mut body =
                CompressedBody::new(script(steps), coding, &Levels::default(), false).unwrap();
            let err = noop_cx(|cx| loop {
                match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Ready(Some(Err(e))) => return e,
                    Poll::Ready(Some(Ok(_))) => continue,
                    other => panic!("{:?}", other.map(|o| o.map(|r| r.is_ok()))),
                }
            });
            assert_eq!(err.to_string(), "upstream reset");
        }
    }

    #[test]
    fn a_huge_frame_comes_out_in_bounded_pieces() {
        // 8 MiB of incompressible bytes in one frame: output frames stay near
        // PIECE instead of one 8 MiB buffer.
        let mut rng = fastrand::Rng::with_seed(7);
        let input: Vec<u8> = (0..8 << 20).map(|_| rng.u8(..)).collect();
        for coding in ALL {
            let mut body = CompressedBody::new(
                script([Step::Data(Bytes::from(input.clone()))]),
                coding,
                &Levels::default(),
                false,
            )
            .unwrap();
            let mut all = Vec::new();
            let mut max = 0;
            noop_cx(|cx| {
                while let Poll::Ready(Some(f)) = Pin::new(&mut body).poll_frame(cx) {
                    let d = f.unwrap().into_data().unwrap();
                    max = max.max(d.len());
                    all.extend_from_slice(&d);
                }
            });
            let bound = PIECE.max(BROTLI_FLUSH_EVERY) + PIECE;
            assert!(max <= bound, "{coding:?}: frame of {max} bytes");
            assert_eq!(decode(coding, &all), input, "{coding:?}");
        }
    }

    #[test]
    fn brotli_periodic_flush_costs_little() {
        let input = sample(4 << 20);
        let ours = compress(
            Coding::Br,
            vec![Step::Data(Bytes::from(input.clone()))],
            false,
        );
        let mut plain = brotli::CompressorWriter::new(Vec::new(), BROTLI_BUFFER, 4, BROTLI_LGWIN);
        plain.write_all(&input).unwrap();
        let plain = plain.into_inner();
        let overhead = ours.len() as f64 / plain.len() as f64 - 1.0;
        eprintln!(
            "br: {} vs {} bytes ({:.3} %)",
            ours.len(),
            plain.len(),
            overhead * 100.0
        );
        assert!(overhead < 0.01, "{overhead}");
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        noop_cx(|cx| loop {
            if let Poll::Ready(v) = f.as_mut().poll(cx) {
                return v;
            }
        })
    }

    #[test]
    fn probe_of_a_body_that_ends_small() {
        let b = block_on(buffer_head(script([data(b"tiny")]), 1024)).unwrap();
        assert!(b.ended());
        assert_eq!(b.head_len(), 4);
        assert!(b.is_small(1024));
        assert!(!b.is_small(4));
        assert_eq!(b.size_hint().exact(), Some(4));
        let mut b = b;
        let (out, _, ended) = drain(&mut b);
        assert_eq!((out.as_slice(), ended), (&b"tiny"[..], true));

        // Nothing at all: ended and small.
        let b = block_on(buffer_head(script([]), 1024)).unwrap();
        assert!(b.ended() && b.is_small(1024) && b.is_small(0));

        // Trailers end the body too, and are replayed.
        let mut t = HeaderMap::new();
        t.insert("x-t", http::HeaderValue::from_static("1"));
        let mut b = block_on(buffer_head(
            script([data(b"ab"), Step::Trailers(t.clone())]),
            1024,
        ))
        .unwrap();
        assert!(b.is_small(1024));
        let (out, trailers, ended) = drain(&mut b);
        assert_eq!(
            (out.as_slice(), trailers, ended),
            (&b"ab"[..], Some(t), true)
        );
    }

    #[test]
    fn probe_of_a_streaming_body_stops_at_the_first_wait() {
        // First event is small, then the worker is quiet: the probe returns
        // with one frame and calls the body large.
        // (The probe sees the first Pending, the drain below the second.)
        let steps = vec![
            data(b"data: 1\n\n"),
            Step::Pending,
            Step::Pending,
            data(b"data: 2\n\n"),
        ];
        let mut b = block_on(buffer_head(script(steps), 1024)).unwrap();
        assert!(!b.ended());
        assert_eq!(b.head_len(), 9);
        assert!(!b.is_small(1024));
        let (first, _, ended) = drain(&mut b);
        assert_eq!((first.as_slice(), ended), (&b"data: 1\n\n"[..], false));
        let (rest, _, ended) = drain(&mut b);
        assert_eq!((rest.as_slice(), ended), (&b"data: 2\n\n"[..], true));
    }

    #[test]
    fn probe_holds_at_most_min_size_plus_a_frame() {
        let steps: Vec<Step> = (0..10).map(|_| data(&[b'x'; 400])).collect();
        let mut b = block_on(buffer_head(script(steps), 1000)).unwrap();
        assert_eq!(b.head_len(), 1200, "three frames reach 1000");
        assert!(!b.ended() && !b.is_small(1000));
        let (out, _, ended) = drain(&mut b);
        assert!(ended);
        assert_eq!(out, vec![b'x'; 4000]);
    }

    #[test]
    fn probe_waits_for_the_first_frame_and_reports_errors() {
        // Pending before anything arrived: the probe waits.
        let fut = buffer_head(script([Step::Pending, data(b"late")]), 1024);
        let b = block_on(fut).unwrap();
        assert_eq!(b.head_len(), 4);
        assert!(b.is_small(1024));
        let err = block_on(buffer_head(script([Step::Fail]), 1024));
        assert!(err.is_err());
    }

    #[test]
    fn probe_then_compress() {
        // The server's path for a streamed body that turned out large.
        let input = sample(50_000);
        let steps: Vec<Step> = input.chunks(4096).map(data).collect();
        let b = block_on(buffer_head(script(steps), 1024)).unwrap();
        assert!(!b.is_small(1024));
        let mut body = CompressedBody::new(b, Coding::Br, &Levels::default(), false).unwrap();
        let (out, _, ended) = drain(&mut body);
        assert!(ended);
        assert_eq!(decode(Coding::Br, &out), input);
    }
}
