//! `sesame relay token create | ls | revoke`: the relay's `TokenService`.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use sesame_proto::v1::token_service_client::TokenServiceClient;
use sesame_proto::v1::{CreateTokenRequest, ListTokensRequest, RevokeTokenRequest, Token};
use sesame_tunnel::{Error, RelayAccess, RelayChannel, TransportSettings};

use crate::args::{TokenCommand, TokenCreateArgs};

async fn client(access: &RelayAccess) -> anyhow::Result<TokenServiceClient<RelayChannel>> {
    let channel = access.connect(&TransportSettings::default()).await?;
    Ok(TokenServiceClient::new(channel))
}

pub(crate) async fn run(access: RelayAccess, command: TokenCommand) -> anyhow::Result<()> {
    let mut tokens = client(&access).await?;
    match command {
        TokenCommand::Create(args) => create(&mut tokens, args).await,
        TokenCommand::Ls(args) => {
            let list = tokens
                .list_tokens(ListTokensRequest {})
                .await
                .map_err(Error::from_status)?
                .into_inner()
                .tokens;
            let rows: Vec<TokenRow> = list.into_iter().map(TokenRow::new).collect();
            if args.json {
                crate::output::line(&serde_json::to_string_pretty(&rows)?)?;
            } else {
                crate::output::print(table(&rows, SystemTime::now()))?;
            }
            Ok(())
        }
        TokenCommand::Revoke(args) => {
            let id = args.id.trim().trim_start_matches("tokens/");
            let token = tokens
                .revoke_token(RevokeTokenRequest {
                    name: format!("tokens/{id}"),
                })
                .await
                .map_err(Error::from_status)?
                .into_inner();
            let row = TokenRow::new(token);
            if args.json {
                crate::output::line(&serde_json::to_string_pretty(&row)?)?;
                return Ok(());
            }
            crate::output::line(&format!(
                "revoked token {} ({}): its sessions and connections are ending",
                row.id,
                if row.label.is_empty() {
                    "no label"
                } else {
                    &row.label
                }
            ))?;
            Ok(())
        }
    }
}

async fn create(
    tokens: &mut TokenServiceClient<RelayChannel>,
    args: TokenCreateArgs,
) -> anyhow::Result<()> {
    if let Some(expires) = args.expires {
        check_expiry(SystemTime::now(), expires)?;
    }
    let ttl = args
        .expires
        .map(prost_types::Duration::try_from)
        .transpose()
        .map_err(|_| anyhow::anyhow!("--expires is too long"))?;
    let created = tokens
        .create_token(CreateTokenRequest {
            scopes: args.scopes,
            label: args.label,
            ttl,
        })
        .await
        .map_err(Error::from_status)?
        .into_inner();
    let row = TokenRow::new(created.token.unwrap_or_default());
    if args.json {
        /// A token just created, with the secret that is shown only now.
        #[derive(Serialize)]
        struct Created<'a> {
            #[serde(flatten)]
            token: &'a TokenRow,
            secret: &'a str,
        }
        let created = Created {
            token: &row,
            secret: &created.secret,
        };
        crate::output::line(&serde_json::to_string_pretty(&created)?)?;
        return Ok(());
    }
    crate::output::line(&format!(
        "created token {} with scopes {}",
        row.id,
        row.scopes.join(", ")
    ))?;
    if let Some(expires) = row.expires {
        crate::output::line(&format!("it expires at {}", rfc3339(expires)))?;
    }
    crate::output::line("it is shown only now:")?;
    crate::output::line(&format!("  {}", created.secret))?;
    crate::output::line("use it with: sesame login RELAY_URL --token TOKEN, or SESAME_TOKEN")?;
    Ok(())
}

/// The last moment a token may expire: the end of year 9999, the last time RFC 3339 (and so
/// every listing of tokens) can write.
const LAST_EXPIRY_UNIX: u64 = 253_402_300_799;

/// Refuses an expiry `ttl` after `now` that is not a moment ahead that listings can write.
fn check_expiry(now: SystemTime, ttl: Duration) -> anyhow::Result<()> {
    if ttl.is_zero() {
        anyhow::bail!("--expires must be longer than 0s");
    }
    let last = SystemTime::UNIX_EPOCH + Duration::from_secs(LAST_EXPIRY_UNIX);
    if now.checked_add(ttl).is_none_or(|at| at > last) {
        anyhow::bail!("--expires is too long: a token can expire on 9999-12-31 at the latest");
    }
    Ok(())
}

/// `time` in RFC 3339, or, for a moment it cannot write (after year 9999), the last one it can.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let last = SystemTime::UNIX_EPOCH + Duration::from_secs(LAST_EXPIRY_UNIX);
    humantime::format_rfc3339_seconds(time.min(last)).to_string()
}

/// A token as `ls` prints it.
#[derive(Debug, Serialize)]
struct TokenRow {
    id: String,
    label: String,
    scopes: Vec<String>,
    #[serde(with = "humantime_serde_opt")]
    created: Option<SystemTime>,
    #[serde(with = "humantime_serde_opt")]
    expires: Option<SystemTime>,
    #[serde(with = "humantime_serde_opt")]
    revoked: Option<SystemTime>,
    owned_names: Vec<String>,
    live_remotes: u32,
}

/// Times as RFC 3339 strings in JSON.
mod humantime_serde_opt {
    use std::time::SystemTime;

    pub(super) fn serialize<S: serde::Serializer>(
        time: &Option<SystemTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => serializer.serialize_some(&super::rfc3339(*time)),
            None => serializer.serialize_none(),
        }
    }
}

impl TokenRow {
    fn new(token: Token) -> Self {
        let time = |t: Option<prost_types::Timestamp>| t.and_then(|t| SystemTime::try_from(t).ok());
        TokenRow {
            id: token
                .name
                .strip_prefix("tokens/")
                .unwrap_or(&token.name)
                .to_owned(),
            label: token.label,
            scopes: token.scopes,
            created: time(token.create_time),
            expires: time(token.expire_time),
            revoked: time(token.revoke_time),
            owned_names: token.owned_names,
            live_remotes: token.live_remotes,
        }
    }

    fn status(&self, now: SystemTime) -> String {
        if self.revoked.is_some() {
            return "revoked".to_owned();
        }
        match self.expires {
            Some(at) if at <= now => "expired".to_owned(),
            Some(at) => {
                let left = at.duration_since(now).unwrap_or_default();
                let left = Duration::from_secs(left.as_secs());
                format!("expires in {}", humantime::format_duration(left))
            }
            None => "valid".to_owned(),
        }
    }
}

fn table(rows: &[TokenRow], now: SystemTime) -> String {
    let header = ["ID", "LABEL", "SCOPES", "STATUS", "LIVE", "NAMES"].map(str::to_owned);
    let cells: Vec<[String; 6]> = std::iter::once(header)
        .chain(rows.iter().map(|row| {
            [
                row.id.clone(),
                if row.label.is_empty() {
                    "-".to_owned()
                } else {
                    row.label.clone()
                },
                row.scopes.join(","),
                row.status(now),
                row.live_remotes.to_string(),
                if row.owned_names.is_empty() {
                    "-".to_owned()
                } else {
                    row.owned_names.join(",")
                },
            ]
        }))
        .collect();
    let widths: Vec<usize> = (0..6)
        .map(|i| {
            cells
                .iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &cells {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
