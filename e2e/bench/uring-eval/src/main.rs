//! `uring-eval`: one byte-level TCP relay, on one thread, on the event
//! loop the first argument names; for `e2e/bench/uring.sh`, which asks
//! whether an io_uring data path would make Ringway cheaper per message.
//!
//!     uring-eval RUNTIME LISTEN BACKEND...
//!
//! RUNTIME is one of:
//! - `epoll`: tokio's current-thread runtime (epoll readiness, as Ringway);
//! - `tokio-uring`: tokio-uring 0.5 (io_uring completions under tokio's
//!   scheduler);
//! - `monoio`: monoio's io_uring driver (a thread-per-core runtime built
//!   for io_uring);
//! - `monoio-epoll`: monoio's epoll driver, to tell the runtime's own cost
//!   from io_uring's.
//!
//! Every accepted connection is relayed to the next BACKEND in turn. It
//! parses nothing: what it measures is the cost of moving bytes, the floor
//! under any WebSocket relay. Each direction is its own task with one
//! fixed buffer that is read into and written out of (no queue), the same
//! shape on every runtime, and a source's end is passed on as a half-close.

use std::{net::SocketAddr, rc::Rc};

/// Bytes read at once in each direction.
const BUFFER: usize = 16 * 1024;
/// io_uring submission-queue entries (the completion queue is twice that):
/// room for a read per socket of a thousand connections and their writes.
const RING_ENTRIES: u32 = 4096;

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: uring-eval epoll|tokio-uring|monoio|monoio-epoll LISTEN BACKEND...";
    let runtime = args.next().expect(usage);
    let listen: SocketAddr = args.next().expect(usage).parse().expect("LISTEN");
    let backends: Rc<[SocketAddr]> = args
        .map(|b| b.parse().expect("BACKEND"))
        .collect::<Vec<_>>()
        .into();
    assert!(!backends.is_empty(), "{usage}");
    let result = match runtime.as_str() {
        "epoll" => epoll::run(listen, backends),
        "tokio-uring" => tokio_uring_relay::run(listen, backends),
        "monoio" => monoio_relay::run::<monoio::IoUringDriver>(listen, backends),
        "monoio-epoll" => monoio_relay::run::<monoio::LegacyDriver>(listen, backends),
        other => panic!("unknown runtime {other}; {usage}"),
    };
    if let Err(e) = result {
        eprintln!("uring-eval: {e}");
        std::process::exit(1);
    }
}

/// The backend for the `n`th connection.
fn pick(backends: &[SocketAddr], n: &mut usize) -> SocketAddr {
    let b = backends[*n % backends.len()];
    *n += 1;
    b
}

mod epoll {
    use std::{io, net::SocketAddr, rc::Rc};

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{
            TcpListener, TcpStream,
            tcp::{OwnedReadHalf, OwnedWriteHalf},
        },
        task::LocalSet,
    };

    pub fn run(listen: SocketAddr, backends: Rc<[SocketAddr]>) -> io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        LocalSet::new().block_on(&runtime, async move {
            let listener = TcpListener::bind(listen).await?;
            eprintln!("uring-eval epoll: listening on {listen}");
            let mut n = 0;
            loop {
                let (client, _) = listener.accept().await?;
                let backend = super::pick(&backends, &mut n);
                tokio::task::spawn_local(async move {
                    let _ = relay(client, backend).await;
                });
            }
        })
    }

    async fn relay(client: TcpStream, backend: SocketAddr) -> io::Result<()> {
        let server = TcpStream::connect(backend).await?;
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        tokio::task::spawn_local(pump(client_read, server_write));
        pump(server_read, client_write).await
    }

    async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf) -> io::Result<()> {
        let mut buffer = vec![0; super::BUFFER];
        loop {
            let n = from.read(&mut buffer).await?;
            if n == 0 {
                return to.shutdown().await;
            }
            to.write_all(&buffer[..n]).await?;
        }
    }
}

mod tokio_uring_relay {
    use std::{io, net::SocketAddr, rc::Rc};

    use tokio_uring::{
        buf::BoundedBuf,
        net::{TcpListener, TcpStream},
    };

    pub fn run(listen: SocketAddr, backends: Rc<[SocketAddr]>) -> io::Result<()> {
        tokio_uring::builder()
            .entries(super::RING_ENTRIES)
            .start(async move {
                let listener = TcpListener::bind(listen)?;
                eprintln!("uring-eval tokio-uring: listening on {listen}");
                let mut n = 0;
                loop {
                    let (client, _) = listener.accept().await?;
                    let backend = super::pick(&backends, &mut n);
                    tokio_uring::spawn(async move {
                        let _ = relay(client, backend).await;
                    });
                }
            })
    }

    async fn relay(client: TcpStream, backend: SocketAddr) -> io::Result<()> {
        let server = TcpStream::connect(backend).await?;
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        let (client, server) = (Rc::new(client), Rc::new(server));
        tokio_uring::spawn(pump(Rc::clone(&client), Rc::clone(&server)));
        pump(server, client).await
    }

    async fn pump(from: Rc<TcpStream>, to: Rc<TcpStream>) -> io::Result<()> {
        let mut buffer = vec![0; super::BUFFER];
        loop {
            let (read, b) = from.read(buffer).await;
            let n = read?;
            if n == 0 {
                return to.shutdown(std::net::Shutdown::Write);
            }
            let (written, b) = to.write_all(b.slice(..n)).await;
            written?;
            buffer = b.into_inner();
        }
    }
}

mod monoio_relay {
    use std::{io, net::SocketAddr, rc::Rc};

    use monoio::{
        Buildable, Driver, RuntimeBuilder,
        buf::IoBuf,
        io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable},
        net::{TcpListener, TcpStream},
    };

    pub fn run<D: Buildable + Driver>(
        listen: SocketAddr,
        backends: Rc<[SocketAddr]>,
    ) -> io::Result<()> {
        let mut runtime = D::build(RuntimeBuilder::<D>::new().with_entries(super::RING_ENTRIES))?;
        runtime.block_on(async move {
            let listener = TcpListener::bind(listen)?;
            eprintln!("uring-eval monoio: listening on {listen}");
            let mut n = 0;
            loop {
                let (client, _) = listener.accept().await?;
                let backend = super::pick(&backends, &mut n);
                monoio::spawn(async move {
                    let _ = relay(client, backend).await;
                });
            }
        })
    }

    async fn relay(client: TcpStream, backend: SocketAddr) -> io::Result<()> {
        let server = TcpStream::connect_addr(backend).await?;
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        monoio::spawn(pump(client_read, server_write));
        pump(server_read, client_write).await
    }

    async fn pump(mut from: impl AsyncReadRent, mut to: impl AsyncWriteRent) -> io::Result<()> {
        let mut buffer = vec![0; super::BUFFER];
        loop {
            let (read, b) = from.read(buffer).await;
            let n = read?;
            if n == 0 {
                return to.shutdown().await;
            }
            let (written, b) = to.write_all(b.slice(..n)).await;
            written?;
            buffer = b.into_inner();
        }
    }
}
