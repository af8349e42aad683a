//! The client's body on its way to the worker, cut off at `max_body` and
//! after `body_timeout` without a byte; or read whole first ([`RequestBody::buffer`]),
//! in memory up to [`IN_MEMORY`] and in an unnamed temporary file beyond.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;

/// Most of a buffered body kept in memory; the rest goes to a temporary
/// file (in `TMPDIR`), as nginx's `client_body_buffer_size` does.
pub const IN_MEMORY: usize = 64 * 1024;
/// Read size from a buffered body's file.
const FILE_CHUNK: usize = 64 * 1024;

/// Why a request body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("request body exceeds the {max}-byte limit")]
    TooLarge { max: u64 },
    #[error("client body error: {0}")]
    Client(#[source] hyper::Error),
    #[error("the client sent no request body bytes for {0:?}")]
    TimedOut(Duration),
    /// Buffering this body would pass `limits.max_buffered`.
    #[error("the gate's request buffers are full")]
    OverBudget,
    /// The temporary file of a buffered body could not be written or read.
    #[error("request body buffer: {0}")]
    Buffer(#[source] std::io::Error),
}

/// Bytes of request bodies buffered now, gate-wide.
static BUFFERED: AtomicU64 = AtomicU64::new(0);

/// A share of `limits.max_buffered`, given back when dropped (when the
/// buffered body has been sent, or the request ends).
#[derive(Default)]
struct Reservation(u64);

impl Reservation {
    /// Takes `n` more bytes of the budget `max`, or refuses.
    fn grow(&mut self, n: u64, max: u64) -> Result<(), RequestBodyError> {
        let before = BUFFERED.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > max {
            BUFFERED.fetch_sub(n, Ordering::Relaxed);
            return Err(RequestBodyError::OverBudget);
        }
        self.0 += n;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        BUFFERED.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// A body read whole before it was sent.
enum Buffered {
    /// Taken (left empty) when sent.
    Memory(Bytes),
    File {
        file: tokio::fs::File,
        left: u64,
        buf: BytesMut,
    },
}

/// The client's body, failing once more than `max` bytes arrived or when
/// no byte came for `timeout`. The error aborts the upstream request, so the
/// worker sees an incomplete body, never a truncated one that looks whole,
/// and its connection is closed rather than pooled. It is polled by the
/// worker connection's task, which is woken by the timer.
pub struct RequestBody {
    inner: Option<Incoming>,
    seen: u64,
    max: u64,
    timeout: Duration,
    /// Made at the first wait; armed at the first wait after bytes moved.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// Set by [`RequestBody::buffer`]: what is sent instead of `inner`,
    /// and its share of `limits.max_buffered`. Boxed: every request's
    /// future holds a `RequestBody`, few buffer.
    buffered: Option<Box<(Buffered, Reservation)>>,
}

impl RequestBody {
    pub fn new(inner: Incoming, max: u64, timeout: Duration) -> Self {
        RequestBody {
            inner: Some(inner),
            seen: 0,
            max,
            timeout,
            sleep: None,
            armed: false,
            buffered: None,
        }
    }

    /// Whether the client sends no body at all.
    pub fn is_empty(&self) -> bool {
        self.buffered.is_none() && self.is_end_stream()
    }

    /// Reads the whole body now, under the same `max_body` and
    /// `body_timeout`, and returns it with its length: the request then
    /// takes a worker slot only when it is ready, and a slow upload costs
    /// the worker nothing. Up to [`IN_MEMORY`] bytes stay in memory; a
    /// longer body goes to an unnamed temporary file, removed when closed.
    pub async fn buffer(mut self, budget: u64) -> Result<(RequestBody, u64), RequestBodyError> {
        let mut reserved = Reservation::default();
        // A declared length is reserved before a byte is read, so a
        // request that cannot fit is refused before the client uploads it.
        if let Some(n) = self.size_hint().exact() {
            reserved.grow(n, budget)?;
        }
        let buffered = collect(&mut self, &mut reserved, budget).await?;
        let len = self.seen;
        self.inner = None;
        self.sleep = None;
        self.buffered = Some(Box::new((buffered, reserved)));
        Ok((self, len))
    }

    /// No body (the gate's own requests, such as health checks).
    pub fn empty() -> Self {
        RequestBody {
            inner: None,
            seen: 0,
            max: 0,
            timeout: Duration::ZERO,
            sleep: None,
            armed: false,
            buffered: None,
        }
    }

    /// The client has nothing for us: true once that lasted `timeout`.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.timeout;
        let sleep = match &mut self.sleep {
            Some(s) => {
                if !self.armed {
                    s.as_mut().reset(tokio::time::Instant::now() + timeout);
                }
                s
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep(timeout))),
        };
        self.armed = true;
        sleep.as_mut().poll(cx).is_ready()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(b) = self.buffered.as_mut() {
            return poll_buffered(&mut b.0, cx);
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => {
                if self.stalled(cx) {
                    self.inner = None;
                    crate::metrics::client_cutoff("request_body");
                    let t = self.timeout;
                    return Poll::Ready(Some(Err(RequestBodyError::TimedOut(t))));
                }
                return Poll::Pending;
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => {
                return Poll::Ready(Some(Err(RequestBodyError::Client(e))))
            }
            Poll::Ready(Some(Ok(f))) => f,
        };
        self.armed = false;
        if let Some(data) = frame.data_ref() {
            self.seen += data.len() as u64;
            if self.seen > self.max {
                let max = self.max;
                return Poll::Ready(Some(Err(RequestBodyError::TooLarge { max })));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        match self.buffered.as_deref().map(|(b, _)| b) {
            Some(Buffered::Memory(m)) => m.is_empty(),
            Some(Buffered::File { left, .. }) => *left == 0,
            None => self.inner.as_ref().is_none_or(|b| b.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (self.buffered.as_deref().map(|(b, _)| b), &self.inner) {
            (Some(Buffered::Memory(m)), _) => SizeHint::with_exact(m.len() as u64),
            (Some(Buffered::File { left, .. }), _) => SizeHint::with_exact(*left),
            (None, Some(b)) => b.size_hint(),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}

/// Reads `body` to its end: in memory up to [`IN_MEMORY`] bytes, in an
/// unnamed temporary file beyond. The bytes are copied into one buffer, so
/// that a body sent in tiny chunks costs its length and not a `Bytes` (and
/// the hyper read buffer it pins) per chunk, and the file is written in
/// blocks of at least [`FILE_CHUNK`], not one blocking write per chunk.
async fn collect<B>(
    body: &mut B,
    reserved: &mut Reservation,
    budget: u64,
) -> Result<Buffered, RequestBodyError>
where
    B: Body<Data = Bytes, Error = RequestBodyError> + Unpin,
{
    use http_body_util::BodyExt;
    // The bytes not yet in the file (all of them while there is none).
    let mut pending = BytesMut::new();
    let mut file: Option<tokio::fs::File> = None;
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            // Trailers: HTTP/1.1 workers do not see them.
            continue;
        };
        len += data.len() as u64;
        if len > reserved.0 {
            reserved.grow(len - reserved.0, budget)?;
        }
        pending.extend_from_slice(&data);
        let full = match file {
            None => pending.len() > IN_MEMORY,
            Some(_) => pending.len() >= FILE_CHUNK,
        };
        if full {
            let f = match &mut file {
                Some(f) => f,
                None => file.insert(temp_file().await.map_err(RequestBodyError::Buffer)?),
            };
            f.write_all(&pending)
                .await
                .map_err(RequestBodyError::Buffer)?;
            pending.clear();
        }
    }
    Ok(match file {
        None => Buffered::Memory(pending.freeze()),
        Some(mut f) => {
            use tokio::io::AsyncSeekExt;
            f.write_all(&pending)
                .await
                .map_err(RequestBodyError::Buffer)?;
            f.flush().await.map_err(RequestBodyError::Buffer)?;
            f.seek(std::io::SeekFrom::Start(0))
                .await
                .map_err(RequestBodyError::Buffer)?;
            Buffered::File {
                file: f,
                left: len,
                buf: BytesMut::new(),
            }
        }
    })
}

/// An unnamed file in the temporary directory (gone when closed).
async fn temp_file() -> std::io::Result<tokio::fs::File> {
    let f = tokio::task::spawn_blocking(tempfile::tempfile)
        .await
        .map_err(std::io::Error::other)??;
    Ok(tokio::fs::File::from_std(f))
}

fn poll_buffered(
    b: &mut Buffered,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
    match b {
        Buffered::Memory(m) => {
            if m.is_empty() {
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Ok(Frame::data(std::mem::take(m)))))
        }
        Buffered::File { file, left, buf } => {
            if *left == 0 {
                return Poll::Ready(None);
            }
            let want = (*left).min(FILE_CHUNK as u64) as usize;
            buf.resize(want, 0);
            let mut rb = ReadBuf::new(&mut buf[..]);
            match Pin::new(file).poll_read(cx, &mut rb) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Some(Err(RequestBodyError::Buffer(e)))),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        let e = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                        return Poll::Ready(Some(Err(RequestBodyError::Buffer(e))));
                    }
                    *left -= n as u64;
                    buf.truncate(n);
                    Poll::Ready(Some(Ok(Frame::data(buf.split().freeze()))))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    /// `n` frames of one byte each, the bytes counting 0, 1, 2, ...
    fn one_byte_frames(
        n: usize,
    ) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, RequestBodyError>> + Unpin>
    {
        StreamBody::new(futures_util::stream::iter(
            (0..n).map(|i| Ok(Frame::data(Bytes::from(vec![i as u8])))),
        ))
    }

    /// Every frame the buffered body gives, and their bytes.
    async fn drain(b: Buffered) -> (usize, Vec<u8>) {
        let mut body = RequestBody::empty();
        body.buffered = Some(Box::new((b, Reservation::default())));
        let mut frames = 0;
        let mut out = Vec::new();
        while let Some(f) = body.frame().await {
            frames += 1;
            out.extend_from_slice(f.unwrap().data_ref().unwrap());
        }
        (frames, out)
    }

    fn counting(n: usize) -> Vec<u8> {
        (0..n).map(|i| i as u8).collect()
    }

    #[tokio::test]
    async fn a_body_of_tiny_frames_is_kept_as_one_buffer() {
        // 64 KiB sent one byte per chunk (6 bytes a chunk on the wire, 9 a
        // DATA frame on h2) was kept as 65 536 `Bytes` of 32 bytes each,
        // every one pinning hyper's read buffer: 2.5 MB of gate memory per
        // 64 KiB upload, measured.
        let b = collect(
            &mut one_byte_frames(IN_MEMORY),
            &mut Reservation::default(),
            u64::MAX,
        )
        .await
        .unwrap();
        assert!(matches!(b, Buffered::Memory(_)));
        let (frames, bytes) = drain(b).await;
        assert_eq!(bytes, counting(IN_MEMORY));
        assert_eq!(frames, 1, "the buffered body is {frames} pieces");
    }

    #[tokio::test]
    async fn a_body_past_the_memory_threshold_goes_to_a_file_whole() {
        let n = IN_MEMORY + 1;
        let b = collect(
            &mut one_byte_frames(n),
            &mut Reservation::default(),
            u64::MAX,
        )
        .await
        .unwrap();
        assert!(matches!(b, Buffered::File { .. }));
        let (_, bytes) = drain(b).await;
        assert_eq!(bytes, counting(n));
        // Several file chunks, and the memory part first.
        let n = 3 * FILE_CHUNK + 17;
        let body = StreamBody::new(futures_util::stream::iter(
            counting(n)
                .chunks(1000)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect::<Vec<_>>(),
        ));
        let mut body = body;
        let (_, bytes) = drain(
            collect(&mut body, &mut Reservation::default(), u64::MAX)
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(bytes, counting(n));
    }
}
