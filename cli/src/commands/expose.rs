//! `sesame expose`.

use std::collections::HashSet;

use anyhow::{Context, bail};
use sesame_tunnel::{RelayUrl, RemoteName, Session, TransportSettings};

use crate::args::ExposeArgs;
use crate::status;

pub async fn run(
    relay: RelayUrl,
    args: ExposeArgs,
    transport: TransportSettings,
) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    if let Some(twice) = args.ports.iter().find(|spec| !seen.insert(spec.port)) {
        bail!("port {} is given twice", twice.port);
    }
    let name = match args.name {
        Some(name) => name,
        None => default_name()?,
    };
    let session = Session::builder(name.clone())
        .relay(relay.clone())
        .transport(transport)
        .connect()
        .await?;
    let mut forwards = Vec::with_capacity(args.ports.len());
    for spec in &args.ports {
        let forward = session
            .forward(spec.port, spec.target.clone())
            .await
            .with_context(|| format!("cannot expose port {}", spec.port))?;
        forwards.push(forward);
    }

    println!("remote {name} is connected to relay {relay}");
    let relay_flag = if relay.to_string() == sesame_tunnel::DEFAULT_RELAY {
        String::new()
    } else {
        format!(" --relay {relay}")
    };
    for spec in &args.ports {
        println!(
            "  port {} -> {}    reach it with: sesame{relay_flag} connect {name} --port {}",
            spec.port, spec.target, spec.port
        );
    }

    tokio::select! {
        () = super::stop_requested() => {
            session.close();
            Ok(())
        }
        // The display runs until the session ends, having shown why.
        () = status::show(&session) => Err(session.closed().await.into()),
    }
}

/// A name from this machine's host name.
fn default_name() -> anyhow::Result<RemoteName> {
    let host = gethostname::gethostname();
    let host = host.to_string_lossy();
    RemoteName::from_hostname(&host).with_context(|| {
        format!("cannot make a remote name from the host name {host:?}: give one with --name")
    })
}
