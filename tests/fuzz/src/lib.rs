//! What the fuzz targets share: a runtime on a paused clock, a client that plays an input into a
//! connection, and a scratch directory for files written anew on each run.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::runtime::Runtime;

/// The first bytes of an HTTP/2 connection with prior knowledge.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The longest any one step of a run may take.
pub const STEP: Duration = Duration::from_millis(200);

/// How long the client waits before it shuts its write side, when it lets the server settle:
/// less than any timeout of the relay's.
const SETTLE: Duration = Duration::from_millis(1);

/// The most bytes of the server's answer read.
const MAX_ANSWER: usize = 1 << 20;

/// A current-thread runtime whose clock is paused: a timer fires as soon as nothing else can
/// run, so timeouts cost no real time and a run never waits idle.
pub fn paused_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

/// Plays `input` as the client of a connection: the HTTP/2 preface first if `preface`, then the
/// input; then, if `settle`, lets the server act on all of it before shutting the write side
/// (an HTTP/2 server drops the calls it has not handed out when the connection ends). Reads
/// the answer meanwhile, until the server closes or 1 MiB has come.
pub async fn play_client(client: DuplexStream, preface: bool, settle: bool, input: &[u8]) {
    let (mut reader, mut writer) = tokio::io::split(client);
    let write = async {
        if preface {
            writer.write_all(PREFACE).await?;
        }
        writer.write_all(input).await?;
        if settle {
            // With the clock paused, this passes once every task waits: virtual time, not a
            // wait for readiness.
            tokio::time::sleep(SETTLE).await;
        }
        writer.shutdown().await
    };
    // The server may stop reading before the input ends: reading on regardless keeps it going.
    let read = async {
        let mut answer = 0;
        let mut buf = [0; 16 << 10];
        while answer < MAX_ANSWER {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer += n,
            }
        }
    };
    let (_, ()) = tokio::join!(write, read);
}

/// A temporary directory, memory-backed where there is one, for files written on every run.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("a temporary directory")
}
