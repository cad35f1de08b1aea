//! Transport adapters between an accepted socket and hyper or rustls: reading a
//! connection's opening (a whole request head or first TLS record) with small
//! buffers, replaying it (`Prefixed`), dropping a client that stops reading
//! (`WriteDeadline`), and a response body that holds a guard until hyper has
//! taken all of it (`Tracked`). Nothing here knows about the connection cap: the
//! mark a stalled write holds and the guard a body holds are given by the caller.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{IO_TIMEOUT, MAX_HEAD};

/// TLS record type of a handshake (the first byte a TLS client sends).
pub(super) const TLS_HANDSHAKE: u8 = 0x16;

/// Why a connection was closed before HTTP.
pub(super) enum Refused {
    Timeout,
    Closed,
    Io(std::io::Error),
    Tls(String),
    PlainHttp,
}

/// What a client sent first, read with a buffer the size of what arrived: a
/// complete HTTP request head (or MAX_HEAD bytes of one), or a complete first
/// TLS record. hyper (about 16 KiB of buffers per connection) and rustls are only
/// given a connection once it has sent that much, so a flood of silent, slow-head
/// or stalled-handshake connections costs little more than their sockets.
/// Hand-written because neither library can start with smaller buffers.
pub(super) async fn read_opening(stream: &TcpStream) -> Result<Vec<u8>, Refused> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        stream.readable().await.map_err(Refused::Io)?;
        let want = opening_missing(&got).min(buf.len());
        match stream.try_read(&mut buf[..want]) {
            Ok(0) => return Err(Refused::Closed),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if opening_complete(&got, n) {
                    return Ok(got);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Refused::Io(e)),
        }
    }
}

/// Whether `got` holds a whole first TLS record, a whole HTTP head, or MAX_HEAD
/// bytes; the last `new` bytes just arrived (only they and the 2 before are searched
/// for the head's end, so a head sent byte by byte costs linear time).
fn opening_complete(got: &[u8], new: usize) -> bool {
    match got.first() {
        None => false,
        Some(&TLS_HANDSHAKE) => opening_missing(got) == 0,
        Some(_) => {
            let tail = &got[got.len().saturating_sub(new + 2)..];
            got.len() >= MAX_HEAD
                || tail.windows(2).any(|w| w == b"\n\n")
                || tail.windows(3).any(|w| w == b"\n\r\n")
        }
    }
}

/// Bytes still to read: the rest of a TLS record, or up to MAX_HEAD of a head.
fn opening_missing(got: &[u8]) -> usize {
    match got {
        [TLS_HANDSHAKE, _, _, hi, lo, body @ ..] => {
            (usize::from(*hi) << 8 | usize::from(*lo)).saturating_sub(body.len())
        }
        [TLS_HANDSHAKE, ..] => 5 - got.len(),
        _ => MAX_HEAD.saturating_sub(got.len()),
    }
}

/// A stream that first yields bytes already read from it.
pub(super) struct Prefixed<T> {
    prefix: Vec<u8>,
    pos: usize,
    inner: T,
}

impl<T> Prefixed<T> {
    /// `inner`, after `prefix` (the bytes already read from it).
    pub(super) fn new(prefix: Vec<u8>, inner: T) -> Self {
        Prefixed { prefix, pos: 0, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A stream whose writes fail once they have made no progress for IO_TIMEOUT
/// (a client that stops reading its response). While a write is stalled it holds
/// a mark from `busy` (the connection's `RequestInProgress`): a response is never
/// cut to make room.
pub(super) struct WriteDeadline<T, B, M> {
    inner: T,
    stalled: Option<(Pin<Box<tokio::time::Sleep>>, M)>,
    busy: B,
}

impl<T, B: Fn() -> M, M> WriteDeadline<T, B, M> {
    /// `busy` marks the connection busy for as long as its mark lives.
    pub(super) fn new(inner: T, busy: B) -> Self {
        WriteDeadline { inner, stalled: None, busy }
    }

    fn check<R>(&mut self, cx: &mut Context<'_>, r: Poll<std::io::Result<R>>) -> Poll<std::io::Result<R>> {
        match r {
            Poll::Pending => {
                let busy = &self.busy;
                let (sleep, _) =
                    self.stalled.get_or_insert_with(|| (Box::pin(tokio::time::sleep(IO_TIMEOUT)), busy()));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
                    Poll::Pending => Poll::Pending,
                }
            }
            done => {
                self.stalled = None;
                done
            }
        }
    }
}

impl<T: AsyncRead + Unpin, B: Unpin, M: Unpin> AsyncRead for WriteDeadline<T, B, M> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin, B: Fn() -> M + Unpin, M: Unpin> AsyncWrite for WriteDeadline<T, B, M> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, r)
    }

    /// Forwarded: without it hyper copies each response body into its own buffer
    /// (20 MiB per scrape at 10,000 mounts) instead of writing it as it is.
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, r)
    }
}

/// A response body that holds its request's guard (the connection's `InFlight`)
/// until hyper has taken all of it.
pub(super) struct Tracked<G> {
    body: Full<Bytes>,
    _in_flight: Option<G>,
}

impl<G> Tracked<G> {
    /// `body`, holding `in_flight` until it has been taken.
    pub(super) fn new(body: Full<Bytes>, in_flight: G) -> Self {
        Tracked { body, _in_flight: Some(in_flight) }
    }
}

impl<G> From<Full<Bytes>> for Tracked<G> {
    fn from(body: Full<Bytes>) -> Self {
        Tracked { body, _in_flight: None }
    }
}

impl<G: Unpin> Body for Tracked<G> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::server::conn::{ConnState, RequestInProgress};

    /// A WriteDeadline whose stalled writes mark `conn` busy, as the server's do.
    fn deadline<T>(
        inner: T,
    ) -> (WriteDeadline<T, impl Fn() -> RequestInProgress, RequestInProgress>, Arc<ConnState>) {
        let conn = Arc::<ConnState>::default();
        let c = conn.clone();
        (WriteDeadline::new(inner, move || RequestInProgress::new(c.clone(), None)), conn)
    }

    /// A peer that never reads: the write fails after IO_TIMEOUT of no progress,
    /// instead of holding the connection (and its slot) forever; while it is
    /// stalled, the connection counts as busy.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_times_out() {
        let (client, _server_side_unread) = tokio::io::duplex(64);
        let (mut w, conn) = deadline(client);
        let started = tokio::time::Instant::now();
        let err = w.write_all(&[0u8; 4096]).await.expect_err("the reader never reads");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= IO_TIMEOUT);
        assert_eq!(conn.busy.load(Ordering::Relaxed), 1, "busy while stalled");
        drop(w);
        assert_eq!(conn.busy.load(Ordering::Relaxed), 0, "not busy once dropped");
    }

    /// A slow but steady reader is not cut off: progress resets the deadline.
    #[tokio::test(start_paused = true)]
    async fn progress_resets_the_deadline() {
        use tokio::io::AsyncReadExt;
        let (client, mut server) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut total = 0;
            while total < 640 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                total += server.read(&mut buf).await.expect("read");
            }
            total
        });
        let (mut w, conn) = deadline(client);
        w.write_all(&[0u8; 640]).await.expect("each chunk drains within 10 s");
        assert_eq!(reader.await.expect("reader"), 640);
        assert_eq!(conn.busy.load(Ordering::Relaxed), 0, "not busy once written");
    }

    #[test]
    fn an_opening_is_a_whole_head_or_a_whole_tls_record() {
        let whole = |b: &[u8]| opening_complete(b, b.len());
        assert!(!whole(b""));
        assert!(!whole(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(whole(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(whole(b"GET / HTTP/1.0\n\n"));
        assert!(whole(&vec![b'x'; MAX_HEAD]), "too long: hyper answers 431");
        // Byte by byte: the end is found in the last byte and the two before it.
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let ends: Vec<bool> = (1..=head.len()).map(|n| opening_complete(&head[..n], 1)).collect();
        assert_eq!(ends.iter().position(|e| *e), Some(head.len() - 1));
        assert_eq!(opening_missing(b"GET"), MAX_HEAD - 3);
        assert_eq!(opening_missing(&[0x16, 3, 1]), 2, "the record header first");
        assert_eq!(opening_missing(&[0x16, 3, 1, 0x02, 0x00]), 512);
        let mut record = vec![0x16, 3, 1, 0, 3, 1, 2];
        assert!(!whole(&record));
        record.push(3);
        assert!(whole(&record));
    }

    /// The bytes read before hyper or rustls take over are given back first.
    #[tokio::test]
    async fn a_prefixed_stream_replays_its_prefix() {
        use tokio::io::AsyncReadExt;
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.expect("write");
        drop(client);
        let mut p = Prefixed { prefix: b"hello".to_vec(), pos: 0, inner: server };
        let mut out = String::new();
        p.read_to_string(&mut out).await.expect("read");
        assert_eq!(out, "hello world");
    }
}
