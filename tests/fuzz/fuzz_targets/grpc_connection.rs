//! Untrusted input: everything a client (an agent, a dialer, or anyone who can reach the
//! relay's port) sends on one connection to the relay's gRPC listener.
//!
//! Each input is a whole connection to a real relay (`Relay::builder().build()`, served in
//! process with `serve_with_incoming` over an in-memory stream): HTTP/2 frames, gRPC
//! messages, and so every handler of `TunnelService`, `DialerService` and `RemoteService`.
//! The first byte is never sent: when it is even, the HTTP/2 client preface is sent first, so
//! that the fuzzer reaches frames and messages at once; unless its second bit is set, the
//! client waits until the relay has acted on everything before it shuts its write side (an
//! HTTP/2 server drops the calls it has not handed out yet when the connection ends). The
//! client reads what the relay answers until it closes or a short time passes, and the relay
//! shuts down. Nothing may panic or hang.
//!
//! The runtime's clock is paused: a timer fires as soon as nothing else can run, so the
//! relay's timeouts (and this target's) cost no real time and a run never waits idle.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use futures_util::{StreamExt as _, stream};
use libfuzzer_sys::fuzz_target;
use sesame_fuzz::{STEP, paused_runtime, play_client};
use sesame_relay::{Relay, RelayConfig};
use tokio::runtime::Runtime;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(paused_runtime)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let preface = mode & 1 == 0;
    let settle = mode & 2 == 0;
    runtime().block_on(connection(preface, settle, rest));
});

async fn connection(preface: bool, settle: bool, input: &[u8]) {
    let mut config = RelayConfig::default();
    // Calls that wait for a message give up within a run.
    config.handshake_timeout = STEP;
    config.dial_timeout = STEP;
    config.grace_period = Duration::ZERO;
    let relay = Relay::builder().config(config).build();

    let (client, server) = tokio::io::duplex(64 << 10);
    // One connection, then none: an incoming stream that ended would shut the relay down.
    let incoming = stream::iter([Ok::<_, std::io::Error>(server)]).chain(stream::pending());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(relay.serve_with_incoming(incoming, async {
        let _ = stopped.await;
    }));

    let _ = tokio::time::timeout(STEP, play_client(client, preface, settle, input)).await;

    let _ = stop.send(());
    match tokio::time::timeout(STEP, serving).await {
        Ok(Ok(())) => {}
        Ok(Err(join)) => std::panic::resume_unwind(join.into_panic()),
        Err(_) => panic!("the relay did not shut down within {STEP:?}"),
    }
}
