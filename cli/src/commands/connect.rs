//! `sesame connect`.

use std::net::SocketAddr;

use anyhow::Context;
use sesame_proto::v1::GetRemoteRequest;
use sesame_proto::v1::remote_service_client::RemoteServiceClient;
use sesame_tunnel::{
    Connection, Dialer, Error, RelayAccess, RelayChannel, RemoteName, TransportSettings, join_tcp,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::args::ConnectArgs;

pub(crate) async fn run(
    relay: RelayAccess,
    args: ConnectArgs,
    settings: TransportSettings,
) -> anyhow::Result<()> {
    let channel = relay.connect(&settings).await?;
    let dialer = Dialer::new(channel.clone(), settings);
    if args.stdio {
        let conn = dialer.dial(&args.name, args.port).await?;
        return stdio(conn).await;
    }
    let stop = super::stop_requested();
    // Fail now, not at the first connection, if the remote or its port is not there.
    check_exposed(RemoteServiceClient::new(channel), &args.name, args.port).await?;
    let listen = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    println!(
        "listening on {local}: connections go to {} port {}",
        args.name, args.port
    );
    tokio::select! {
        () = stop => Ok(()),
        result = serve(listener, dialer, args.name, args.port) => result,
    }
}

async fn check_exposed(
    mut remotes: RemoteServiceClient<RelayChannel>,
    name: &RemoteName,
    port: u16,
) -> Result<(), Error> {
    let request = GetRemoteRequest {
        name: name.resource_name(),
    };
    let remote = remotes.get_remote(request).await?.into_inner();
    if remote
        .ports
        .iter()
        .any(|exposed| exposed.port == u32::from(port))
    {
        Ok(())
    } else {
        Err(Error::PortNotExposed {
            name: name.to_string(),
            port,
        })
    }
}

/// Accepts local connections and carries each to the remote, until stopped.
async fn serve(
    listener: TcpListener,
    dialer: Dialer,
    name: RemoteName,
    port: u16,
) -> anyhow::Result<()> {
    loop {
        let (local, peer) = listener
            .accept()
            .await
            .context("cannot accept connections")?;
        let (dialer, name) = (dialer.clone(), name.clone());
        tokio::spawn(async move {
            if let Err(error) = forward(local, peer, &dialer, &name, port).await {
                warn!("connection from {peer}: {error}");
            }
        });
    }
}

async fn forward(
    local: TcpStream,
    peer: SocketAddr,
    dialer: &Dialer,
    name: &RemoteName,
    port: u16,
) -> anyhow::Result<()> {
    let remote = dialer.dial(name, port).await?;
    let (sent, received) = join_tcp(local, remote, &format!("local client {peer}")).await?;
    debug!(sent, received, "connection closed");
    Ok(())
}

/// Carries one connection over stdin and stdout, until both directions have ended.
async fn stdio(conn: Connection) -> anyhow::Result<()> {
    let (mut from_remote, mut to_remote) = tokio::io::split(conn);
    let upload = async {
        tokio::io::copy(&mut tokio::io::stdin(), &mut to_remote).await?;
        to_remote.shutdown().await
    };
    let download = async {
        let mut stdout = tokio::io::stdout();
        tokio::io::copy(&mut from_remote, &mut stdout).await?;
        stdout.flush().await
    };
    let (uploaded, downloaded) = tokio::join!(upload, download);
    downloaded.context("the connection failed")?;
    match uploaded {
        // The remote closed the connection before stdin ended: nothing more can be sent.
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("the connection failed"),
    }
}
