//! Joining a TCP stream to a tunneled connection.
//!
//! Bytes cross without an intermediate buffer: each socket read lands in a `Bytes` that
//! becomes a data message as it is, and each chunk that arrives through the tunnel is written
//! to the socket from where the transport decoded it. A general-purpose copy loop would read
//! into a zeroed buffer and copy out of it once more in each direction.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use crate::{Connection, io_reason};

/// The most one socket read takes: large reads mean few system calls and full chunks on the
/// wire.
const READ_BYTES: usize = 64 << 10;

/// Below this much room left in the read buffer, the next read gets a fresh one, so that a
/// trickle of small reads does not turn into a trickle of tiny allocations.
const MIN_READ_BYTES: usize = 4 << 10;

/// Carries bytes both ways between `tcp` and `conn` until both directions have ended, each
/// end's shutdown passed on to the other, and returns the byte counts (TCP to tunnel, tunnel
/// to TCP).
///
/// If either end fails, the other is reset rather than closed, so that its peer sees an
/// error instead of an end of data: the TCP stream closes with RST, and the connection with a
/// reset whose reason names `tcp_name` (for example `localhost:8080: connection reset`).
pub async fn join_tcp(tcp: TcpStream, conn: Connection, tcp_name: &str) -> io::Result<(u64, u64)> {
    join(tcp, conn, tcp_name, None).await
}

/// Carries bytes as [`join_tcp`] does, and fails both ends (with an error of kind
/// `TimedOut`) once neither direction has carried a byte for between one and two `idle`
/// periods: a connection left idle gives its resources back.
pub async fn join_tcp_until_idle(
    tcp: TcpStream,
    conn: Connection,
    tcp_name: &str,
    idle: Duration,
) -> io::Result<(u64, u64)> {
    join(tcp, conn, tcp_name, Some(idle)).await
}

async fn join(
    mut tcp: TcpStream,
    mut conn: Connection,
    tcp_name: &str,
    idle: Option<Duration>,
) -> io::Result<(u64, u64)> {
    // Latency matters more than packet count: small writes (a prompt, a keystroke) go at once.
    let _ = tcp.set_nodelay(true);
    let mut to_tunnel = ToTunnel::default();
    let mut to_tcp = ToTcp::default();
    // Progress is checked once per period rather than timed on every read: the data path
    // reads no clock.
    let mut watch = idle.map(|idle| (Box::pin(tokio::time::sleep(idle)), idle, (0, 0)));
    let joined = poll_fn(|cx| {
        // Both directions are polled every time, so that each registers its wake-up.
        let up = to_tunnel.poll(cx, &mut tcp, &mut conn)?;
        let down = to_tcp.poll(cx, &mut tcp, &mut conn)?;
        if let (Poll::Ready(()), Poll::Ready(())) = (up, down) {
            return Poll::Ready(Ok(()));
        }
        if let Some((period, idle, seen)) = &mut watch {
            while period.as_mut().poll(cx).is_ready() {
                let counts = (to_tunnel.count, to_tcp.count);
                if counts == *seen {
                    let message = format!("carried nothing for {}", crate::format_duration(*idle));
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, message)));
                }
                *seen = counts;
                let next = tokio::time::Instant::now() + *idle;
                period.as_mut().reset(next);
            }
        }
        Poll::Pending
    })
    .await;
    match joined {
        Ok(()) => Ok((to_tunnel.count, to_tcp.count)),
        Err(error) => {
            // A zero linger never blocks on close (the reason `set_linger` is deprecated):
            // the kernel discards unsent data and sends RST at once.
            #[allow(deprecated)]
            let _ = tcp.set_linger(Some(Duration::ZERO));
            conn.reset(format!("{tcp_name}: {}", io_reason(&error)));
            Err(error)
        }
    }
}

/// From the TCP stream into the tunnel.
#[derive(Default)]
struct ToTunnel {
    /// Where socket reads land; each read is split off as a chunk of its own.
    buf: BytesMut,
    /// A chunk read and not yet taken by the connection.
    pending: Bytes,
    done: bool,
    count: u64,
}

impl ToTunnel {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        tcp: &mut TcpStream,
        conn: &mut Connection,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len() as u64;
                ready!(conn.poll_write_chunk(cx, &mut self.pending))?;
                self.count += n;
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            ready!(tcp.poll_read_ready(cx))?;
            // The buffer is taken only once there is something to read, so an idle
            // connection holds none.
            if self.buf.capacity() - self.buf.len() < MIN_READ_BYTES {
                self.buf = BytesMut::with_capacity(READ_BYTES);
            }
            // A read through `AsyncRead` that returns less than it asked for tells tokio the
            // socket is drained, which spares the next read's `EAGAIN` round trip to the kernel.
            match ready!(poll_read_buf(Pin::new(&mut *tcp), cx, &mut self.buf))? {
                0 => {
                    conn.shutdown_write();
                    self.done = true;
                }
                _ => self.pending = self.buf.split().freeze(),
            }
        }
    }
}

/// From the tunnel into the TCP stream.
#[derive(Default)]
struct ToTcp {
    /// What is left to write of the last chunk received.
    pending: Bytes,
    done: bool,
    count: u64,
}

impl ToTcp {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        tcp: &mut TcpStream,
        conn: &mut Connection,
    ) -> Poll<io::Result<()>> {
        loop {
            while !self.pending.is_empty() {
                let n = ready!(Pin::new(&mut *tcp).poll_write(cx, &self.pending))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pending.advance(n);
                self.count += n as u64;
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            match ready!(conn.poll_read_chunk(cx))? {
                Some(chunk) => self.pending = chunk,
                None => {
                    ready!(Pin::new(&mut *tcp).poll_shutdown(cx))?;
                    self.done = true;
                }
            }
        }
    }
}
