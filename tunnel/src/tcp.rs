//! Joining a TCP stream to a tunneled connection.

use std::io;
use std::time::Duration;

use tokio::io::copy_bidirectional_with_sizes;
use tokio::net::TcpStream;

use crate::{Connection, io_reason};

/// The size of each direction's copy buffer: large reads mean few system calls and full
/// chunks on the wire.
const COPY_BUFFER: usize = 64 << 10;

/// Carries bytes both ways between `tcp` and `conn` until both directions have ended, each
/// end's shutdown passed on to the other, and returns the byte counts (TCP to tunnel, tunnel
/// to TCP).
///
/// If either end fails, the other is reset rather than closed, so that its peer sees an
/// error instead of an end of data: the TCP stream closes with RST, and the connection with a
/// reset whose reason names `tcp_name` (for example `localhost:8080: connection reset`).
pub async fn join_tcp(
    mut tcp: TcpStream,
    mut conn: Connection,
    tcp_name: &str,
) -> io::Result<(u64, u64)> {
    // Latency matters more than packet count: small writes (a prompt, a keystroke) go at once.
    let _ = tcp.set_nodelay(true);
    match copy_bidirectional_with_sizes(&mut tcp, &mut conn, COPY_BUFFER, COPY_BUFFER).await {
        Ok(counts) => Ok(counts),
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
