//! Response bodies: small entries in one piece, large ones streamed from the blocking pool.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use tokio::sync::mpsc;

/// The body type of every answer.
pub type ResponseBody = BoxBody<Bytes, io::Error>;

/// A body that is all in memory (entries up to [`SMALL`], messages, listings, JSON).
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// Entries up to this size are read in one go; larger ones are streamed in [`CHUNK`] pieces so a
/// gigabyte entry costs a box a megabyte or two of memory, not a gigabyte.
pub const SMALL: u64 = 256 * 1024;

/// The piece size for streamed entries. Smaller than one might guess: with 256 KiB pieces, four
/// parallel 64 MiB downloads ran about a third faster than with 1 MiB pieces (and 4 MiB pieces
/// were slower still), likely because a smaller piece is still in cache when it is sent.
pub const CHUNK: usize = 256 * 1024;

/// A body fed from a channel by a producer on the blocking pool. If the producer fails midway it
/// sends the error, and hyper cuts the connection: with `Content-Length` already sent, the client
/// sees a short body, never a wrong one.
pub struct ChannelBody {
    receiver: mpsc::Receiver<io::Result<Bytes>>,
}

impl ChannelBody {
    /// A body and the sender that feeds it; a few chunks of buffer keep the disk and the socket
    /// both busy.
    pub fn new() -> (mpsc::Sender<io::Result<Bytes>>, ChannelBody) {
        let (sender, receiver) = mpsc::channel(4);
        (sender, ChannelBody { receiver })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.receiver
            .poll_recv(cx)
            .map(|item| item.map(|chunk| chunk.map(Frame::data)))
    }
}

/// The buffers one streamed entry is read into, each used again once hyper has sent it. A fresh
/// [`CHUNK`] per piece cost a `memset`, and a page fault per 4 KiB as the allocator handed the
/// memory back to the kernel between pieces: together about a quarter of the box's CPU time on
/// large entries (`scripts/bench-box`). Reuse bounds the buffers of a stream to the pieces in
/// flight, as before.
pub struct ChunkPool {
    recycle: std_mpsc::Sender<Vec<u8>>,
    recycled: std_mpsc::Receiver<Vec<u8>>,
}

impl ChunkPool {
    /// An empty pool: buffers are made as the first pieces need them.
    pub fn new() -> ChunkPool {
        let (recycle, recycled) = std_mpsc::channel();
        ChunkPool { recycle, recycled }
    }

    /// A [`CHUNK`]-byte buffer, one that came back if there is one.
    pub fn take(&self) -> Vec<u8> {
        self.recycled
            .try_recv()
            .unwrap_or_else(|_| vec![0u8; CHUNK])
    }

    /// The first `len` bytes of `buf` as a body piece; `buf` comes back to this pool when the
    /// piece is dropped (or is freed, if the pool is gone by then).
    pub fn piece(&self, buf: Vec<u8>, len: usize) -> Bytes {
        Bytes::from_owner(Recycled {
            buf,
            len,
            recycle: self.recycle.clone(),
        })
    }
}

/// A piece's buffer on its way through hyper, and back to its [`ChunkPool`] when dropped.
struct Recycled {
    buf: Vec<u8>,
    len: usize,
    recycle: std_mpsc::Sender<Vec<u8>>,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        let _ = self.recycle.send(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_give_their_buffer_back_when_dropped() {
        let pool = ChunkPool::new();
        let mut buf = pool.take();
        assert_eq!(buf.len(), CHUNK);
        buf[..3].copy_from_slice(b"abc");
        let address = buf.as_ptr();
        let piece = pool.piece(buf, 3);
        assert_eq!(&piece[..], b"abc");
        let clone = piece.slice(1..);
        drop(piece);
        // Still in use by the clone: a new buffer.
        let other = pool.take();
        assert_ne!(other.as_ptr(), address);
        drop(clone);
        let again = pool.take();
        assert_eq!(again.as_ptr(), address);
    }
}
