//! The two sockets of a proxied connection, read and written by polling:
//! no future per operation, and no buffer held while the connection is
//! idle.
//!
//! A read goes into the worker thread's scratch buffer and is written on
//! within the same poll; only bytes the destination cannot take yet are
//! copied into the connection's own (otherwise empty) buffer.

use std::{
    cell::RefCell,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::server::TlsStream;

/// Bytes read per readiness event.
pub(crate) const SCRATCH_BYTES: usize = 32 * 1024;

thread_local! {
    /// One read buffer per worker thread, shared by all its connections:
    /// a read is scanned and written on before the poll returns.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice());
}

/// Runs `f` with this thread's scratch buffer. `f` must not await.
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with_borrow_mut(|s| f(s))
}

/// One side's socket: plain TCP, or TLS over TCP (the client side).
pub(crate) enum Io {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS; `unflushed` when records are waiting to be written.
    Tls(Box<TlsStream<TcpStream>>, bool),
}

impl Io {
    /// TLS over `stream`.
    pub(crate) fn tls(stream: TlsStream<TcpStream>) -> Self {
        Self::Tls(Box::new(stream), false)
    }

    /// Reads into `buf`; `Ready(Ok(0))` at end of stream. On `Pending` the
    /// task is woken when there is something to read.
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut rb = ReadBuf::new(buf);
        ready!(match self {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, &mut rb),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, &mut rb),
        })?;
        Poll::Ready(Ok(rb.filled().len()))
    }

    /// Writes some of `data`. On `Pending` the task is woken when the
    /// socket takes more.
    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, data),
            Self::Tls(s, unflushed) => {
                let n = ready!(Pin::new(s.as_mut()).poll_write(cx, data))?;
                *unflushed = true;
                if let Poll::Ready(r) = Pin::new(s.as_mut()).poll_flush(cx) {
                    r?;
                    *unflushed = false;
                }
                Poll::Ready(Ok(n))
            }
        }
    }

    /// TLS records are waiting to be written.
    pub(crate) fn unflushed(&self) -> bool {
        matches!(self, Self::Tls(_, true))
    }

    /// Writes waiting TLS records.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Self::Tls(s, unflushed) = self {
            ready!(Pin::new(s.as_mut()).poll_flush(cx))?;
            *unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Half-closes the stream (FIN; TLS close_notify first).
    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    /// Reads some bytes, waiting for them (handshake phase).
    pub(crate) async fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf).await,
            Self::Tls(s, _) => s.read(buf).await,
        }
    }

    /// Writes all of `bytes` and flushes (handshake phase).
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.write_all(bytes).await,
            Self::Tls(s, _) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }

    /// The socket's send buffer as the kernel reports it (twice what
    /// `SO_SNDBUF` asked for); 0 if it cannot be read.
    pub(crate) fn send_buffer_size(&self) -> usize {
        socket2::SockRef::from(self.tcp())
            .send_buffer_size()
            .unwrap_or(0)
    }

    /// Makes closing this socket a reset (`SO_LINGER` 0): whatever is
    /// still queued for the peer is dropped with it. Best effort.
    pub(crate) fn reset_on_close(&self) {
        let _ = socket2::SockRef::from(self.tcp()).set_linger(Some(std::time::Duration::ZERO));
    }

    /// The TCP socket underneath.
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Tcp(s) => s,
            Self::Tls(s, _) => s.get_ref().0,
        }
    }

    /// Whether the stream is TLS.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(..))
    }
}
