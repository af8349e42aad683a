//! The response body, compressed frame by frame with bounded memory, and the
//! size probe for bodies that came without a `Content-Length`.

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

/// Brotli's output staging buffer.
const BROTLI_BUFFER: usize = 16 * 1024;

/// Brotli window: 2^22 = 4 MiB, brotli's own default. Its ring buffer
/// grows with the input, so a small response never pays for all of it.
const BROTLI_LGWIN: u32 = 22;

/// A streaming encoder writing into a `Vec` that is emptied after every
/// step, so it holds only what one step produced.
enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    fn new(coding: Coding, levels: &Levels) -> io::Result<Encoder> {
        Ok(match coding {
            Coding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(levels.gzip_clamped()),
            )),
            Coding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                BROTLI_BUFFER,
                levels.br_clamped(),
                BROTLI_LGWIN,
            ))),
            Coding::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(
                Vec::new(),
                levels.zstd_clamped(),
            )?),
        })
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Br(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write_all(data),
        }
    }

    /// Emits everything written so far as a decodable prefix: gzip
    /// Z_SYNC_FLUSH, brotli BROTLI_OPERATION_FLUSH, zstd ZSTD_e_flush.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Br(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }

    /// Ends the stream; the last bytes are then in [`Encoder::take`].
    fn finish(self) -> io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            // The brotli writer cannot fail into a Vec; into_inner finishes.
            Encoder::Br(e) => Ok(e.into_inner()),
            Encoder::Zstd(e) => e.finish(),
        }
    }

    /// What the encoder has written out since the last call.
    fn take(&mut self) -> Vec<u8> {
        let out = match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Br(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        };
        std::mem::take(out)
    }
}

pin_project! {
    /// `inner` compressed with one coding, frame by frame.
    ///
    /// Data frames are fed to the encoder in pieces of at most 64 KiB and
    /// whatever the encoder emits is yielded at once, so memory stays at the
    /// encoder's own state (window and tables: gzip 32 KiB, brotli and zstd
    /// at most a few MiB) plus one input frame. With `flush_each_chunk`
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

impl<B> CompressedBody<B> {
    /// Fails only when the zstd context cannot be allocated.
    pub fn new(
        inner: B,
        coding: Coding,
        levels: &Levels,
        flush_each_chunk: bool,
    ) -> io::Result<Self> {
        Ok(CompressedBody {
            inner,
            encoder: Some(Encoder::new(coding, levels)?),
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
