//! Response bodies: small entries in one piece, large ones streamed from the blocking pool.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
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
/// gigabyte entry costs a box a few megabytes of memory, not a gigabyte.
pub const SMALL: u64 = 256 * 1024;

/// The piece size for streamed entries.
pub const CHUNK: usize = 1 << 20;

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
