//! A deadline on the answer side of a connection: a client that stops reading is cut off.
//!
//! hyper bounds the time a client takes to send its headers, and the box bounds each piece of a
//! body, but nothing bounds a write: a client that asks for a large entry and never reads would
//! hold its connection slot for good, and the blocking-pool thread streaming the entry with it.
//! Enough of them would hang the box. [`WriteDeadline`] makes a write that cannot proceed for the
//! box's `io_timeout` fail, so hyper drops the connection and the streaming thread stops at its
//! next chunk.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A connection whose writes fail with [`io::ErrorKind::TimedOut`] when the peer has taken no
/// bytes for `timeout`. Reads pass through untouched (they have their own deadlines).
pub struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Armed when a write (or flush, or shutdown) cannot proceed; disarmed by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, timeout: Duration) -> WriteDeadline<S> {
        WriteDeadline {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Passes a finished write through, or waits on the deadline for an unfinished one.
    fn within_deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stalled = None;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the client took no bytes for {timeout:?}"),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.within_deadline(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.within_deadline(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.within_deadline(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.within_deadline(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_times_out_and_progress_resets_the_deadline() {
        // A pipe with room for 4 bytes; the test is its only reader.
        let (near, mut far) = tokio::io::duplex(4);
        let mut conn = WriteDeadline::new(near, Duration::from_secs(5));
        conn.write_all(b"abcd").await.unwrap();
        // Full: the next write waits, and fails once the deadline passes.
        let err = conn.write_all(b"e").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // A reader that keeps taking bytes is never cut off, however long the whole takes.
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 2];
            while got.len() < 4 + 40 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let n = far.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        conn.write_all(&[b'x'; 40]).await.unwrap();
        let got = reader.await.unwrap();
        assert_eq!(&got[..4], b"abcd");
        assert!(got[4..].iter().all(|&b| b == b'x'));
    }
}
