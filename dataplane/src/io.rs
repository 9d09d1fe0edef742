//! Reading and writing the two sockets of a proxied connection without
//! holding a buffer while the connection is idle.
//!
//! Plain TCP: wait for readiness, then read into the worker thread's scratch
//! buffer and write on at once; only bytes the peer cannot take yet are
//! copied into a per-connection buffer. TLS streams keep a read buffer of
//! their own (rustls holds per-connection buffers anyway).

use std::{
    cell::RefCell,
    future::poll_fn,
    io,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{
        TcpStream,
        tcp::{ReadHalf, WriteHalf},
    },
};
use tokio_rustls::server::TlsStream;

/// Bytes read per readiness event.
pub(crate) const SCRATCH_BYTES: usize = 32 * 1024;

thread_local! {
    /// One read buffer per worker thread, shared by all its connections:
    /// a read is scanned and written on before the task yields.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice());
}

/// Runs `f` with this thread's scratch buffer. `f` must not await.
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with_borrow_mut(|s| f(s))
}

/// A client connection after accept (and TLS, when configured).
pub(crate) enum ClientStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

type TlsRead = tokio::io::ReadHalf<TlsStream<TcpStream>>;
type TlsWrite = tokio::io::WriteHalf<TlsStream<TcpStream>>;

/// The reading side of a socket.
pub(crate) enum Reader<'a> {
    Tcp(ReadHalf<'a>),
    Tls {
        half: TlsRead,
        buf: Box<[u8]>,
        start: usize,
        end: usize,
        eof: bool,
    },
}

/// The writing side of a socket.
pub(crate) enum Writer<'a> {
    Tcp(WriteHalf<'a>),
    Tls {
        half: TlsWrite,
        /// Plaintext was accepted but its records are not all on the wire.
        unflushed: bool,
    },
}

impl<'a> Reader<'a> {
    /// Waits until a read will not block (data, EOF or an error).
    pub(crate) async fn ready(&mut self) -> io::Result<()> {
        match self {
            Self::Tcp(half) => half.readable().await,
            Self::Tls {
                half,
                buf,
                start,
                end,
                eof,
            } => {
                if *start < *end || *eof {
                    return Ok(());
                }
                let n = tokio::io::AsyncReadExt::read(half, buf).await?;
                *start = 0;
                *end = n;
                *eof = n == 0;
                Ok(())
            }
        }
    }

    /// Reads what is there without waiting: `Ok(None)` if nothing is,
    /// `Ok(Some(0))` at end of stream.
    pub(crate) fn read_now(&mut self, dst: &mut [u8]) -> io::Result<Option<usize>> {
        match self {
            Self::Tcp(half) => {
                let mut buf = ReadBuf::new(dst);
                // Polling with a no-op waker performs the read; on a short
                // read tokio clears the readiness, so no extra read returns
                // EAGAIN. `ready()` registers the real waker.
                match Pin::new(half).poll_read(&mut noop_cx(), &mut buf) {
                    Poll::Ready(Ok(())) => Ok(Some(buf.filled().len())),
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => Ok(None),
                }
            }
            Self::Tls {
                buf,
                start,
                end,
                eof,
                ..
            } => {
                if *start < *end {
                    let n = (*end - *start).min(dst.len());
                    dst[..n].copy_from_slice(&buf[*start..*start + n]);
                    *start += n;
                    Ok(Some(n))
                } else if *eof {
                    Ok(Some(0))
                } else {
                    Ok(None)
                }
            }
        }
    }
}

impl Writer<'_> {
    /// Writes what the socket takes now, without waiting.
    pub(crate) fn write_now(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut cx = noop_cx();
        match self {
            Self::Tcp(half) => match Pin::new(half).poll_write(&mut cx, data) {
                Poll::Ready(Ok(n)) => Ok(n),
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                Poll::Ready(Err(e)) => Err(e),
                Poll::Pending => Ok(0),
            },
            Self::Tls { half, unflushed } => {
                let n = match Pin::new(&mut *half).poll_write(&mut cx, data) {
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => 0,
                };
                *unflushed = match Pin::new(half).poll_flush(&mut cx) {
                    Poll::Ready(Ok(())) => false,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => true,
                };
                Ok(n)
            }
        }
    }

    /// Waits until the socket takes some of `data`, and writes it. With
    /// no data, writes the TLS records still waiting.
    pub(crate) async fn write_some(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            self.flush().await?;
            return Ok(0);
        }
        loop {
            match self {
                Self::Tcp(half) => {
                    half.writable().await?;
                }
                Self::Tls { half, unflushed } => {
                    let n = poll_fn(|cx| Pin::new(&mut *half).poll_write(cx, data)).await?;
                    poll_fn(|cx| Pin::new(&mut *half).poll_flush(cx)).await?;
                    *unflushed = false;
                    return Ok(n);
                }
            }
            let n = self.write_now(data)?;
            if n > 0 {
                return Ok(n);
            }
        }
    }

    /// TLS records are waiting to be written.
    pub(crate) fn unflushed(&self) -> bool {
        matches!(
            self,
            Self::Tls {
                unflushed: true,
                ..
            }
        )
    }

    /// Writes the waiting TLS records.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        if let Self::Tls { half, unflushed } = self {
            poll_fn(|cx| Pin::new(&mut *half).poll_flush(cx)).await?;
            *unflushed = false;
        }
        Ok(())
    }

    /// Half-closes the stream (FIN; TLS close_notify first).
    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Self::Tcp(half) => poll_fn(|cx| Pin::new(&mut *half).poll_shutdown(cx)).await,
            Self::Tls { half, .. } => poll_fn(|cx| Pin::new(&mut *half).poll_shutdown(cx)).await,
        }
    }
}

/// Splits a TCP stream into borrowed halves (no allocation, no lock).
pub(crate) fn split_tcp(stream: &mut TcpStream) -> (Reader<'_>, Writer<'_>) {
    let (r, w) = stream.split();
    (Reader::Tcp(r), Writer::Tcp(w))
}

/// Splits a TLS stream; the reader gets a buffer of its own.
pub(crate) fn split_tls(stream: TlsStream<TcpStream>) -> (Reader<'static>, Writer<'static>) {
    let (r, w) = tokio::io::split(stream);
    (
        Reader::Tls {
            half: r,
            buf: vec![0u8; 16 * 1024].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
        },
        Writer::Tls {
            half: w,
            unflushed: false,
        },
    )
}

fn noop_cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}
