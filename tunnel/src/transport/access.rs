//! [`RelayAccess`]: all a client needs to reach a relay, and the [`RelayChannel`] it opens.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::HeaderValue;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::body::Body;
use tonic::transport::channel::ResponseFuture;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::Service;

use super::trust::{Presented, Recorder};
use crate::{Error, RelayUrl, Token, TransportSettings, Trust};

/// How a client reaches a relay: its address, which certificate to trust, and the token to
/// present.
#[derive(Clone, Debug)]
pub struct RelayAccess {
    /// The relay's address.
    pub url: RelayUrl,
    /// Which certificates to accept, for an `https://` relay.
    pub trust: Trust,
    /// The bearer token sent with every call, if any.
    pub token: Option<Token>,
}

impl From<RelayUrl> for RelayAccess {
    /// The relay at `url`, verified by the system's certificate authorities, without a token.
    fn from(url: RelayUrl) -> Self {
        RelayAccess {
            url,
            trust: Trust::default(),
            token: None,
        }
    }
}

impl RelayAccess {
    /// The relay at `url`, trusted as `trust`, presenting `token`.
    pub fn new(url: RelayUrl, trust: Trust, token: Option<Token>) -> Self {
        RelayAccess { url, trust, token }
    }

    /// The gRPC endpoint for this relay, tuned by `settings`.
    fn endpoint(&self, settings: &TransportSettings) -> Endpoint {
        Endpoint::from(self.url.uri())
            .connect_timeout(settings.connect_timeout)
            .initial_stream_window_size(settings.stream_window)
            .initial_connection_window_size(settings.connection_window)
            .max_frame_size(settings.max_frame_size)
            .http2_adaptive_window(false)
            .http2_keep_alive_interval(settings.keepalive_interval)
            .keep_alive_timeout(settings.keepalive_timeout)
            .keep_alive_while_idle(true)
    }

    /// Refuses to put a token on a plaintext connection that leaves this machine. Checked
    /// before anything is resolved or sent, by every way of connecting, so no command and no
    /// embedding program can leak a token by naming an `http://` relay elsewhere.
    fn check_token_transport(&self) -> Result<(), Error> {
        if self.token.is_some() && !self.url.is_tls() && !self.url.is_loopback() {
            return Err(Error::PlaintextToken {
                relay: self.url.to_string(),
            });
        }
        Ok(())
    }

    fn connector(&self) -> Result<Connector, Error> {
        self.check_token_transport()?;
        let tls = if self.url.is_tls() {
            let config = self
                .trust
                .client_config()
                .map_err(|reason| Error::BadTrust {
                    relay: self.url.to_string(),
                    reason,
                })?;
            Some(config)
        } else {
            None
        };
        Ok(Connector { tls })
    }

    fn unreachable(&self) -> impl Fn(tonic::transport::Error) -> Error + '_ {
        |source| Error::RelayUnreachable {
            relay: self.url.to_string(),
            source,
        }
    }

    /// Opens the HTTP/2 connection to the relay (with TLS for `https://`), failing at once
    /// when it cannot be reached or its certificate is not trusted, and before connecting when
    /// it would send a token over plaintext to another machine ([`Error::PlaintextToken`]).
    pub async fn connect(&self, settings: &TransportSettings) -> Result<RelayChannel, Error> {
        let channel = self
            .endpoint(settings)
            .connect_with_connector(self.connector()?)
            .await
            .map_err(self.unreachable())?;
        Ok(self.wrap(channel))
    }

    /// A channel that connects at its first call, and again after it loses the relay. Like
    /// [`connect`](Self::connect), it refuses at once to send a token over plaintext to
    /// another machine.
    pub fn connect_lazy(&self, settings: &TransportSettings) -> Result<RelayChannel, Error> {
        let channel = self
            .endpoint(settings)
            .connect_with_connector_lazy(self.connector()?);
        Ok(self.wrap(channel))
    }

    /// Makes a TLS handshake with the relay and reports the certificate it presents and
    /// whether [`trust`](Self::trust) vouches for it, without sending anything: how `login`
    /// shows a new relay's fingerprint before trusting it.
    pub async fn probe(&self, settings: &TransportSettings) -> Result<Presented, Error> {
        let relay = self.url.to_string();
        if !self.url.is_tls() {
            return Err(Error::BadTrust {
                relay,
                reason: "it is plaintext (http://): there is no certificate to check".to_owned(),
            });
        }
        let recorder = Recorder::new(&self.trust).map_err(|reason| Error::BadTrust {
            relay: relay.clone(),
            reason,
        })?;
        let connector = Connector {
            tls: Some(recorder.client_config()),
        };
        let io_error = |source: io::Error| Error::RelayIo {
            relay: relay.clone(),
            source,
        };
        let handshake = connector.open(self.url.uri());
        tokio::time::timeout(settings.connect_timeout, handshake)
            .await
            .map_err(|_| io_error(io::ErrorKind::TimedOut.into()))?
            .map_err(io_error)?;
        recorder.presented().ok_or_else(|| Error::BadTrust {
            relay,
            reason: "the relay presented no certificate".to_owned(),
        })
    }

    fn wrap(&self, channel: Channel) -> RelayChannel {
        let authorization = self.token.as_ref().map(|token| {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", token.secret()))
                .expect("tokens are printable ASCII");
            value.set_sensitive(true);
            value
        });
        RelayChannel {
            channel,
            authorization,
        }
    }
}

/// An HTTP/2 connection to a relay that presents a token with every call. Cheap to clone:
/// clones share the connection.
#[derive(Clone)]
pub struct RelayChannel {
    channel: Channel,
    authorization: Option<HeaderValue>,
}

impl RelayChannel {
    /// A channel over an existing tonic channel (in-memory transports, tests), presenting
    /// `token` with every call.
    pub fn new(channel: Channel, token: Option<&Token>) -> Self {
        RelayAccess {
            url: crate::DEFAULT_RELAY.parse().expect("valid"),
            trust: Trust::default(),
            token: token.cloned(),
        }
        .wrap(channel)
    }
}

impl std::fmt::Debug for RelayChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayChannel")
            .field("token", &self.authorization.as_ref().map(|_| "<secret>"))
            .finish_non_exhaustive()
    }
}

impl Service<http::Request<Body>> for RelayChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.channel.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if let Some(authorization) = &self.authorization {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, authorization.clone());
        }
        self.channel.call(request)
    }
}

/// Opens TCP connections to the relay, with TLS when configured.
#[derive(Clone)]
struct Connector {
    tls: Option<Arc<ClientConfig>>,
}

impl Connector {
    async fn open(&self, uri: Uri) -> io::Result<RelayStream> {
        let host = uri.host().unwrap_or_default();
        let port = uri.port_u16().unwrap_or(crate::DEFAULT_PORT);
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tcp = TcpStream::connect((bare.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        let Some(tls) = &self.tls else {
            return Ok(RelayStream::Plain(tcp));
        };
        let name = ServerName::try_from(bare)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let stream = TlsConnector::from(tls.clone()).connect(name, tcp).await?;
        Ok(RelayStream::Tls(Box::new(stream)))
    }
}

impl Service<Uri> for Connector {
    type Response = TokioIo<RelayStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.open(uri).await.map(TokioIo::new) })
    }
}

/// A connection to a relay: plain TCP, or TLS over TCP.
enum RelayStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for RelayStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RelayStream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            RelayStream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RelayStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            RelayStream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            RelayStream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            RelayStream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            RelayStream::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            RelayStream::Plain(tcp) => tcp.is_write_vectored(),
            RelayStream::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RelayStream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            RelayStream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RelayStream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            RelayStream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(url: &str, token: bool) -> RelayAccess {
        let token = token.then(|| "sesame_0123abcd_s3cr3t".parse().unwrap());
        RelayAccess::new(url.parse().unwrap(), Trust::default(), token)
    }

    #[test]
    fn a_token_goes_over_plaintext_only_to_this_machine() {
        for allowed in [
            access("http://127.0.0.1:7373", true),
            access("http://[::1]:7373", true),
            access("http://localhost:7373", true),
            access("https://10.0.0.1:7373", true),
            // Without a token there is no secret to leak.
            access("http://10.0.0.1:7373", false),
        ] {
            assert!(allowed.check_token_transport().is_ok(), "{}", allowed.url);
        }
        for refused in [
            access("http://10.0.0.1:7373", true),
            access("http://relay.example:7373", true),
            access("http://[2001:db8::1]:7373", true),
        ] {
            let error = refused.check_token_transport().unwrap_err();
            assert!(
                matches!(error, Error::PlaintextToken { .. }),
                "{}: {error}",
                refused.url
            );
            let message = error.to_string();
            assert!(message.contains(&refused.url.to_string()), "{message}");
            assert!(message.contains("use https://"), "{message}");
        }
    }

    #[tokio::test]
    async fn every_way_of_connecting_refuses_before_connecting() {
        let settings = TransportSettings::default();
        let leaky = access("http://10.0.0.1:7373", true);
        // A connection attempt would end as `RelayUnreachable` (or not within the test's
        // time): `PlaintextToken` means none was made.
        let refused = leaky.connect(&settings).await.unwrap_err();
        assert!(matches!(refused, Error::PlaintextToken { .. }), "{refused}");
        let refused = leaky.connect_lazy(&settings).unwrap_err();
        assert!(matches!(refused, Error::PlaintextToken { .. }), "{refused}");
    }
}
