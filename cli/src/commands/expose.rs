//! `sesame expose`.

use std::collections::HashSet;

use anyhow::{Context, bail};
use sesame_tunnel::{
    HttpProtocol, HttpPublish, Publish, RelayAccess, RemoteName, Session, TcpPublish,
    TransportSettings,
};

use crate::args::ExposeArgs;
use crate::spec::ExposeSpec;
use crate::status;

pub(crate) async fn run(
    access: RelayAccess,
    args: ExposeArgs,
    transport: TransportSettings,
) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    if let Some(twice) = args.ports.iter().find(|spec| !seen.insert(spec.port)) {
        bail!("port {} is given twice", twice.port);
    }
    let publishing = publishing(&args)?;
    // Bound before the relay is reached, so that a taken address fails at once.
    let metrics = match args.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?,
        ),
        None => None,
    };
    let mut stop = std::pin::pin!(super::stop_requested());
    let name = match args.name {
        Some(name) => name,
        None => default_name()?,
    };
    let relay = access.url.clone();
    let starting = async {
        let session = Session::builder(name.clone())
            .relay(access)
            .transport(transport)
            .connect()
            .await?;
        let mut forwards = Vec::with_capacity(args.ports.len());
        for (spec, publish) in args.ports.iter().zip(publishing) {
            let forward = session
                .forward_with(spec.port, spec.target.clone(), publish)
                .await
                .with_context(|| format!("cannot expose port {}", spec.port))?;
            forwards.push(forward);
        }
        anyhow::Ok((session, forwards))
    };
    let (session, _forwards) = tokio::select! {
        () = &mut stop => return Ok(()),
        started = starting => started?,
    };

    println!("remote {name} is connected to relay {relay}");
    let stop_metrics = tokio_util::sync::CancellationToken::new();
    let _stop_metrics = stop_metrics.clone().drop_guard();
    if let Some(listener) = metrics {
        println!("  metrics at http://{}/metrics", listener.local_addr()?);
        let render = crate::agent_metrics::renderer(session.clone());
        tokio::spawn(sesame_relay::metrics::serve_metrics(
            render,
            listener,
            stop_metrics,
        ));
    }
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
        let published = session.published(spec.port);
        for url in &published.http_urls {
            println!("    public: {url}");
        }
        if let Some(address) = &published.tcp_address {
            println!("    public: tcp://{address}");
        }
    }

    tokio::select! {
        () = stop => {
            session.close();
            Ok(())
        }
        // The display runs until the session ends, having shown why.
        () = status::show(&session) => Err(session.closed().await.into()),
    }
}

/// How to publish each port, in the order given, from the public endpoint flags.
fn publishing(args: &ExposeArgs) -> anyhow::Result<Vec<Publish>> {
    let only_port = || match args.ports.as_slice() {
        [only] => Ok(only.port),
        _ => Err(anyhow::anyhow!(
            "several ports are exposed: say which one is public, as in --http=PORT or --tcp=PORT"
        )),
    };
    let exposed = |port: u16| -> anyhow::Result<u16> {
        if args.ports.iter().any(|spec: &ExposeSpec| spec.port == port) {
            Ok(port)
        } else {
            bail!("port {port} is not among the ports exposed")
        }
    };
    let http = match (args.http, args.http2) {
        (None, false) => None,
        (None | Some(0), true) | (Some(0), false) => Some(only_port()?),
        (Some(port), _) => Some(exposed(port)?),
    };
    if args.host_header.is_some() && http.is_none() {
        bail!("--host-header needs --http: it sets the Host header HTTP requests arrive with");
    }
    let mut tcp = Vec::new();
    for &port in &args.tcp {
        let port = if port == 0 {
            only_port()?
        } else {
            exposed(port)?
        };
        if tcp.contains(&port) {
            bail!("--tcp names port {port} twice");
        }
        tcp.push(port);
    }
    if args.remote_port.is_some() && tcp.len() != 1 {
        bail!("--remote-port needs exactly one --tcp: it is the relay port for that one");
    }
    if args.proxy_protocol && tcp.is_empty() {
        bail!("--proxy-protocol needs --tcp: the header goes on public TCP connections");
    }
    Ok(args
        .ports
        .iter()
        .map(|spec| {
            let mut publish = Publish::none();
            if http == Some(spec.port) {
                let protocol = if args.http2 {
                    HttpProtocol::H2c
                } else {
                    HttpProtocol::Http1
                };
                let mut http = HttpPublish::new(protocol);
                if let Some(host) = &args.host_header {
                    http = http.host_header(host.clone());
                }
                publish = publish.http(http);
            }
            if tcp.contains(&spec.port) {
                let mut tcp = TcpPublish::any_port().proxy_protocol(args.proxy_protocol);
                if let Some(port) = args.remote_port {
                    tcp = tcp.port(port);
                }
                publish = publish.tcp(tcp);
            }
            publish
        })
        .collect())
}

/// A name from this machine's host name.
fn default_name() -> anyhow::Result<RemoteName> {
    let host = gethostname::gethostname();
    let host = host.to_string_lossy();
    RemoteName::from_hostname(&host).with_context(|| {
        format!("cannot make a remote name from the host name {host:?}: give one with --name")
    })
}
