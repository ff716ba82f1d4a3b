//! A connection that gives up on a client that stops reading: every
//! connection the server accepts is wrapped in [`GuardedIo`] (`conn.rs`).
//! Event streams are why it exists (`api/stream.rs`): they never end by
//! themselves, so a client that stops reading would otherwise hold its
//! connection, and graceful shutdown, forever.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::api::stream::StreamSettings;

/// A connection that gives up on a client that stops reading.
///
/// hyper writes a response only as fast as the client reads it, and does not
/// even poll a streaming body while its write buffer is full. An event
/// stream never ends by itself, so without this a client that stops reading
/// (a frozen tab, a stopped process, a dead network path without a reset)
/// would keep its connection forever, and graceful shutdown, which waits for
/// every response, would wait for it too. Every connection is wrapped in it
/// (`conn.rs`).
///
/// A connection that fails a write which made no progress for too long.
#[derive(Debug)]
pub struct GuardedIo<T> {
    io: T,
    settings: StreamSettings,
    stop: CancellationToken,
    /// Present while a write is waiting for the client to read.
    stall: Option<Stall>,
}

/// A write that is waiting: since when, and the timers that end the wait.
struct Stall {
    since: Instant,
    timer: Pin<Box<Sleep>>,
    stopping: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Whether the deadline was already shortened for shutdown.
    shortened: bool,
}

impl fmt::Debug for Stall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stall")
            .field("since", &self.since)
            .field("shortened", &self.shortened)
            .finish_non_exhaustive()
    }
}

impl<T> GuardedIo<T> {
    /// Guards `io`; `stop` is the server's shutdown token.
    pub fn new(io: T, settings: StreamSettings, stop: CancellationToken) -> Self {
        GuardedIo {
            io,
            settings,
            stop,
            stall: None,
        }
    }

    /// Passes a finished write through; fails a pending one once it has
    /// waited too long, arming the timers so the task is woken then.
    fn guard<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.stall = None;
            return r;
        }
        let settings = self.settings;
        let stop = &self.stop;
        let stall = self.stall.get_or_insert_with(|| {
            let since = Instant::now();
            Stall {
                since,
                timer: Box::pin(tokio::time::sleep_until(since + settings.write_stall)),
                stopping: Box::pin(stop.clone().cancelled_owned()),
                shortened: false,
            }
        });
        if !stall.shortened && stall.stopping.as_mut().poll(cx).is_ready() {
            stall.shortened = true;
            let grace = settings.shutdown_write_grace.min(settings.write_stall);
            stall.timer.as_mut().reset(stall.since + grace);
        }
        if stall.timer.as_mut().poll(cx).is_ready() {
            self.stall = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.guard(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.guard(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.guard(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.guard(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use tokio::io::AsyncWriteExt;

    fn settings() -> StreamSettings {
        StreamSettings {
            keep_alive: Duration::from_secs(10),
            write_stall: Duration::from_secs(30),
            shutdown_write_grace: Duration::from_secs(1),
        }
    }

    /// A guarded pipe whose reader never reads: writes block after 64 bytes.
    fn stuck_pipe(
        stop: &CancellationToken,
    ) -> (GuardedIo<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (near, far) = tokio::io::duplex(64);
        (GuardedIo::new(near, settings(), stop.clone()), far)
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_no_progress_fails_after_the_stall_limit() {
        let stop = CancellationToken::new();
        let (mut io, _far) = stuck_pipe(&stop);
        let started = Instant::now();
        let err = io.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), settings().write_stall);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_restarts_the_stall_clock() {
        let stop = CancellationToken::new();
        let (mut io, mut far) = stuck_pipe(&stop);
        let reader = tokio::spawn(async move {
            // Reads 64 bytes every 20 s: slow, but never stalled for 30 s.
            let mut buf = [0u8; 64];
            let mut total = 0;
            while total < 1024 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                total += tokio::io::AsyncReadExt::read(&mut far, &mut buf)
                    .await
                    .unwrap();
            }
        });
        io.write_all(&[0u8; 1024]).await.unwrap();
        reader.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_shortens_the_wait_for_a_stuck_client() {
        let stop = CancellationToken::new();
        let (mut io, _far) = stuck_pipe(&stop);
        let started = Instant::now();
        let canceller = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                stop.cancel();
            })
        };
        let err = io.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // The write began at 0 s; shutdown at 5 s; the grace (1 s) counts
        // from the start of the wait, so the write fails at once.
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        canceller.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn after_shutdown_a_new_wait_gets_the_grace() {
        let stop = CancellationToken::new();
        stop.cancel();
        let (mut io, _far) = stuck_pipe(&stop);
        let started = Instant::now();
        let err = io.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), settings().shutdown_write_grace);
    }
}
