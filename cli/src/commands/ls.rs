//! `sesame ls`.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use sesame_proto::v1::remote_service_client::RemoteServiceClient;
use sesame_proto::v1::{ListRemotesRequest, Remote};
use sesame_tunnel::{Error, RelayAccess, RemoteName, TransportSettings};

use crate::args::LsArgs;

/// The largest page the relay serves.
const PAGE_SIZE: i32 = 1000;

/// The most pages read: a million remotes, far past any one relay.
const MAX_PAGES: usize = 1000;

/// A remote as `ls --json` prints it.
#[derive(Debug, Serialize)]
struct RemoteRow {
    name: String,
    ports: Vec<u32>,
    /// The public endpoints: virtual host URLs and `tcp://host:port` addresses.
    public: Vec<String>,
    /// RFC 3339, UTC.
    connect_time: Option<String>,
    agent_version: String,
}

impl RemoteRow {
    fn new(remote: Remote) -> Self {
        RemoteRow {
            name: RemoteName::from_resource_name(&remote.name)
                .map(|name| name.to_string())
                .unwrap_or(remote.name),
            ports: remote.ports.iter().map(|p| p.port).collect(),
            public: remote
                .ports
                .iter()
                .flat_map(|port| {
                    let urls = port.http.iter().flat_map(|http| http.urls.iter().cloned());
                    let tcp = port.tcp.iter().map(|tcp| format!("tcp://{}", tcp.address));
                    urls.chain(tcp)
                })
                .collect(),
            connect_time: remote
                .connect_time
                .and_then(|t| SystemTime::try_from(t).ok())
                .map(super::token::rfc3339),
            agent_version: remote.agent_version,
        }
    }
}

pub(crate) async fn run(access: RelayAccess, args: LsArgs) -> anyhow::Result<()> {
    let channel = access.connect(&TransportSettings::default()).await?;
    let relay = &access.url;
    let mut client = RemoteServiceClient::new(channel);
    let mut rows = Vec::new();
    let mut page_token = String::new();
    for _ in 0..MAX_PAGES {
        let request = ListRemotesRequest {
            page_size: PAGE_SIZE,
            page_token,
        };
        let page = client
            .list_remotes(request)
            .await
            .map_err(Error::from_status)?
            .into_inner();
        rows.extend(page.remotes.into_iter().map(RemoteRow::new));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }

    if args.json {
        crate::output::line(&serde_json::to_string_pretty(&rows)?)?;
    } else if rows.is_empty() {
        crate::output::line(&format!(
            "no remotes are connected to {relay}, or none this token may see"
        ))?;
    } else {
        crate::output::print(table(&rows, SystemTime::now()))?;
    }
    Ok(())
}

/// The rows as an aligned table: name, ports, connected since, agent, public endpoints.
fn table(rows: &[RemoteRow], now: SystemTime) -> String {
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|row| {
            let ports = row
                .ports
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let since = row
                .connect_time
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .map(|t| since(t, now))
                .unwrap_or_else(|| "-".to_owned());
            let public = row.public.join(" ");
            [
                row.name.clone(),
                ports,
                since,
                row.agent_version.clone(),
                public,
            ]
        })
        .collect();
    let header = ["NAME", "PORTS", "CONNECTED", "AGENT", "PUBLIC"].map(str::to_owned);
    let mut widths = [0; 5];
    for row in std::iter::once(&header).chain(&cells) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&cells) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// How long ago `then` was, coarsely: `42s ago`, `5m ago`, `3h ago`, `2d ago`.
fn since(then: SystemTime, now: SystemTime) -> String {
    let secs = now.duration_since(then).unwrap_or(Duration::ZERO).as_secs();
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_aligned() {
        let now = humantime::parse_rfc3339("2026-11-23T12:00:00Z").unwrap();
        let rows = [
            RemoteRow {
                name: "device-42".into(),
                ports: vec![22, 80],
                public: vec!["https://device-42.example.com".into()],
                connect_time: Some("2026-11-23T11:55:00Z".into()),
                agent_version: "sesame/0.1.0".into(),
            },
            RemoteRow {
                name: "pi".into(),
                ports: vec![],
                public: vec![],
                connect_time: None,
                agent_version: String::new(),
            },
        ];
        assert_eq!(
            table(&rows, now),
            "NAME       PORTS  CONNECTED  AGENT         PUBLIC\n\
             device-42  22,80  5m ago     sesame/0.1.0  https://device-42.example.com\n\
             pi                -\n"
        );
    }

    #[test]
    fn ages_are_coarse() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ago = |secs| since(now - Duration::from_secs(secs), now);
        assert_eq!(ago(5), "5s ago");
        assert_eq!(ago(125), "2m ago");
        assert_eq!(ago(7300), "2h ago");
        assert_eq!(ago(200_000), "2d ago");
        assert_eq!(since(now + Duration::from_secs(5), now), "0s ago");
    }
}
