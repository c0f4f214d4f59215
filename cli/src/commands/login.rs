//! `sesame login` and `sesame logout`.

use std::io::IsTerminal;

use anyhow::{Context, bail};
use sesame_proto::v1::GetCallerTokenRequest;
use sesame_proto::v1::token_service_client::TokenServiceClient;
use sesame_tunnel::tonic::Code;
use sesame_tunnel::{Error, Fingerprint, RelayAccess, RelayUrl, Token, TransportSettings, Trust};

use crate::args::{ClientFlags, LoginArgs, LogoutArgs};
use crate::credentials::{Credentials, RelayEntry, Stored, read_ca};

pub(crate) async fn login(cli: &ClientFlags, args: LoginArgs) -> anyhow::Result<()> {
    let url = args.url;
    let settings = TransportSettings::default();
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let (trust, entry) = choose_trust(cli, &url, &settings, interactive).await?;
    let token = match &cli.token {
        Some(token) => token.clone(),
        None if interactive => {
            let text = dialoguer::Password::new()
                .with_prompt(format!("token for {url}"))
                .interact()
                .context("cannot read the token")?;
            text.parse::<Token>().map_err(anyhow::Error::msg)?
        }
        None => bail!("no token to log in with: pass --token TOKEN or set SESAME_TOKEN"),
    };

    // Try the token before keeping it.
    let access = RelayAccess::new(url.clone(), trust, Some(token.clone()));
    let channel = access.connect(&settings).await?;
    let described = match TokenServiceClient::new(channel)
        .get_caller_token(GetCallerTokenRequest {})
        .await
    {
        Ok(token) => {
            let token = token.into_inner();
            let id = token
                .name
                .strip_prefix("tokens/")
                .unwrap_or(&token.name)
                .to_owned();
            format!("token {id} (scopes {})", token.scopes.join(", "))
        }
        Err(status) if status.code() == Code::Unimplemented => {
            "a relay that needs no token".to_owned()
        }
        Err(status) => return Err(Error::from_status(status).into()),
    };

    let credentials = Credentials::open()?;
    let stored = credentials.store_token(&url, &token)?;
    let mut config = credentials.config()?;
    config.relays.insert(url.to_string(), entry);
    config.default_relay = Some(url.to_string());
    credentials.save_config(&config)?;
    println!("logged in to {url} with {described}");
    match stored {
        Stored::Keyring => println!("the token is in the system keyring"),
        Stored::File(path, reason) => println!(
            "no system keyring could keep the token ({reason}), so it is in {}, which only you \
             can read",
            path.display()
        ),
    }
    println!("{url} is now the relay that commands use unless --relay says otherwise");
    Ok(())
}

/// How to trust the relay: the fingerprint or CA given, a certificate the system's
/// authorities vouch for, or, asked on a terminal, the fingerprint it presents.
async fn choose_trust(
    cli: &ClientFlags,
    url: &RelayUrl,
    settings: &TransportSettings,
    interactive: bool,
) -> anyhow::Result<(Trust, RelayEntry)> {
    if !url.is_tls() {
        // Before the token is asked for: it could not be sent anyway.
        if !url.is_loopback() {
            return Err(Error::PlaintextToken {
                relay: url.to_string(),
            }
            .into());
        }
        eprintln!("warning: {url} is plaintext: the token will cross the connection unencrypted");
        return Ok((Trust::SystemRoots, RelayEntry::default()));
    }
    if let Some(pin) = cli.fingerprint {
        let presented = RelayAccess::new(url.clone(), Trust::Pinned(pin), None)
            .probe(settings)
            .await?;
        if presented.fingerprint != pin {
            bail!(
                "the relay at {url} presents a certificate with fingerprint {}, not {pin}: it is \
                 not the relay you meant, or its certificate changed",
                presented.fingerprint
            );
        }
        let entry = RelayEntry {
            fingerprint: Some(pin.to_string()),
            ..RelayEntry::default()
        };
        return Ok((Trust::Pinned(pin), entry));
    }
    if let Some(ca) = &cli.ca {
        // Read once: what is checked now is what is kept, whatever happens to the file later.
        let (trust, pem) = read_ca(ca)?;
        let presented = RelayAccess::new(url.clone(), trust.clone(), None)
            .probe(settings)
            .await?;
        if let Err(why) = presented.verdict {
            bail!(
                "the relay's certificate is not vouched for by {}: {why}",
                ca.display()
            );
        }
        let entry = RelayEntry {
            ca_certificates: Some(pem),
            ..RelayEntry::default()
        };
        return Ok((trust, entry));
    }
    let presented = RelayAccess::new(url.clone(), Trust::SystemRoots, None)
        .probe(settings)
        .await?;
    if presented.verdict.is_ok() {
        return Ok((Trust::SystemRoots, RelayEntry::default()));
    }
    let fingerprint = presented.fingerprint;
    if !interactive {
        bail!(
            "the relay's certificate is not signed by an authority this system trusts (it is \
             self-signed, perhaps); its SHA-256 fingerprint is {fingerprint}. If that is what \
             the relay printed at start, pass --fingerprint {fingerprint}"
        );
    }
    eprintln!("the relay at {url} presents a certificate no authority of this system vouches for.");
    eprintln!("its SHA-256 fingerprint is:\n  {fingerprint}");
    eprintln!("compare it with the fingerprint the relay printed when it started.");
    let trusted = dialoguer::Confirm::new()
        .with_prompt("trust this relay?")
        .default(false)
        .interact()
        .context("cannot read the answer")?;
    if !trusted {
        bail!("not logged in: the relay's certificate was not trusted");
    }
    Ok((
        pinned(fingerprint),
        RelayEntry {
            fingerprint: Some(fingerprint.to_string()),
            ..RelayEntry::default()
        },
    ))
}

fn pinned(fingerprint: Fingerprint) -> Trust {
    Trust::Pinned(fingerprint)
}

pub(crate) fn logout(cli: &ClientFlags, args: LogoutArgs) -> anyhow::Result<()> {
    let credentials = Credentials::open()?;
    let url = match args.url.or_else(|| cli.relay.clone()) {
        Some(url) => url,
        None => match credentials.config()?.default_relay {
            Some(url) => url.parse().map_err(anyhow::Error::msg)?,
            None => bail!("not logged in to any relay: say which one to forget"),
        },
    };
    let forgotten = credentials.forget(&url)?;
    if forgotten.is_empty() {
        println!("nothing was stored for {url}");
    } else {
        println!("forgot, for {url}: {}", forgotten.join("; "));
    }
    Ok(())
}
