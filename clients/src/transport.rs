//! The transports a [`crate::Connection`] runs over: raw TCP, TLS 1.3 (rustls
//! with ring), WebSocket (tungstenite, plain or over TLS) and QUIC
//! (quinn-proto, `quic.rs`), chosen by an endpoint URL (`tcp://`, `tls://`,
//! `ws://`, `wss://`, `quic://`) as `GET /v1/endpoints` lists them.
//!
//! TLS trusts the server by [`Trust`]: a pinned SHA-256 fingerprint of its
//! certificate (what natterd logs and serves as `cert_sha256`; works for its
//! self-signed certificate) or a CA file (PEM), checked with the host name.
//! Everything here is blocking, with the read timeouts set on the TCP socket
//! underneath, like the raw TCP connection.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use sha2::{Digest, Sha256};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use crate::error::ClientError;

/// Largest WebSocket message the client accepts: a frame of natterd's largest
/// configurable size (16 MiB).
const WS_MAX_MESSAGE: usize = 16 << 20;

/// How a TLS client decides to trust natterd's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trust {
    /// The SHA-256 of the server's leaf certificate (DER), hex (colons and
    /// case ignored), as `cert_sha256` in `GET /v1/endpoints` and natterd's log.
    /// The host name is not checked: the pin names the certificate itself.
    Fingerprint(String),
    /// PEM file of the certificate authorities to trust; the certificate must
    /// name the host (or IP address) connected to.
    CaFile(PathBuf),
}

/// Where and how to connect: a parsed endpoint URL.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Endpoint {
    /// `tcp`, `tls`, `ws` or `wss`.
    pub scheme: Scheme,
    /// Host name or IP address, as written in the URL.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The WebSocket path (`/` unless given).
    pub path: String,
}

/// The transport of an [`Endpoint`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Raw TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// WebSocket over TCP.
    Ws,
    /// WebSocket over TLS.
    Wss,
    /// QUIC (UDP, TLS 1.3 inside, ALPN `natter/1`, one bidirectional stream).
    Quic,
}

impl Scheme {
    /// Whether the transport needs a [`Trust`].
    pub fn uses_tls(self) -> bool {
        matches!(self, Scheme::Tls | Scheme::Wss | Scheme::Quic)
    }
}

impl Endpoint {
    /// Parses `tcp://host:port`, `tls://host:port`, `ws://host:port/path`,
    /// `wss://host:port/path` or `quic://host:port` (IPv6 hosts in brackets).
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for another scheme or a missing port.
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = |why: &str| ClientError::InvalidArgument(format!("endpoint {url:?}: {why}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "tcp" => Scheme::Tcp,
            "tls" => Scheme::Tls,
            "ws" => Scheme::Ws,
            "wss" => Scheme::Wss,
            "quic" => Scheme::Quic,
            _ => return Err(bad("scheme must be tcp, tls, ws, wss or quic")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (rest.get(..i).unwrap_or_default(), rest.get(i..).unwrap_or("/")),
            None => (rest, "/"),
        };
        let (host, port) = authority.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port = port.parse().map_err(|_| bad("bad port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Self {
            scheme,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }

    fn socket_addr(&self) -> Result<SocketAddr, ClientError> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| ClientError::InvalidArgument(format!("{} does not resolve", self.host)))
    }
}

/// The byte stream under a connection.
#[derive(Debug)]
pub(crate) enum Io {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
    Ws(Box<WebSocket<Plain>>),
    Quic(Box<crate::quic::QuicIo>),
}

/// The stream under a WebSocket: TCP or TLS.
#[derive(Debug)]
pub(crate) enum Plain {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Plain {
    fn tcp(&self) -> &TcpStream {
        match self {
            Plain::Tcp(s) => s,
            Plain::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Plain {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Plain::Tcp(s) => s.read(buf),
            Plain::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Plain {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Plain::Tcp(s) => s.write(buf),
            Plain::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Plain::Tcp(s) => s.flush(),
            Plain::Tls(s) => s.flush(),
        }
    }
}

/// What one read brought.
pub(crate) enum Got {
    /// Frame bytes.
    Data,
    /// Nothing within the timeout.
    Nothing,
    /// The server closed (for WebSocket: with this close code, if any).
    Closed(Option<u16>),
}

impl Io {
    /// Connects to `endpoint` (TCP with `TCP_NODELAY`, then the TLS handshake
    /// and the WebSocket upgrade as the scheme needs), each step within `timeout`.
    pub(crate) fn open(
        endpoint: &Endpoint,
        trust: Option<&Trust>,
        origin: Option<&str>,
        timeout: Duration,
    ) -> Result<Io, ClientError> {
        let addr = endpoint.socket_addr()?;
        if endpoint.scheme == Scheme::Quic {
            let trust = trust.ok_or_else(|| {
                ClientError::InvalidArgument("a QUIC endpoint needs a Trust (fingerprint or CA file)".into())
            })?;
            return Ok(Io::Quic(Box::new(crate::quic::QuicIo::open(
                addr,
                &endpoint.host,
                trust,
                timeout,
            )?)));
        }
        let tcp = TcpStream::connect_timeout(&addr, timeout)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let tls = |tcp: TcpStream| -> Result<Box<StreamOwned<ClientConnection, TcpStream>>, ClientError> {
            let trust = trust.ok_or_else(|| {
                ClientError::InvalidArgument("a TLS endpoint needs a Trust (fingerprint or CA file)".into())
            })?;
            let mut tls = StreamOwned::new(client_tls(trust, &endpoint.host)?, tcp);
            while tls.conn.is_handshaking() {
                tls.conn
                    .complete_io(&mut tls.sock)
                    .map_err(|e| handshake("TLS", e.to_string()))?;
            }
            Ok(Box::new(tls))
        };
        let io = match endpoint.scheme {
            Scheme::Tcp | Scheme::Quic => Io::Tcp(tcp),
            Scheme::Tls => Io::Tls(tls(tcp)?),
            Scheme::Ws | Scheme::Wss => {
                let plain = if endpoint.scheme == Scheme::Wss {
                    Plain::Tls(tls(tcp)?)
                } else {
                    Plain::Tcp(tcp)
                };
                let mut request = tungstenite::handshake::client::Request::builder()
                    .uri(format!(
                        "ws://{}:{}{}",
                        endpoint.host, endpoint.port, endpoint.path
                    ))
                    .header("Host", format!("{}:{}", endpoint.host, endpoint.port))
                    .header("Connection", "Upgrade")
                    .header("Upgrade", "websocket")
                    .header("Sec-WebSocket-Version", "13")
                    .header(
                        "Sec-WebSocket-Key",
                        tungstenite::handshake::client::generate_key(),
                    );
                if let Some(origin) = origin {
                    request = request.header("Origin", origin);
                }
                let request = request
                    .body(())
                    .map_err(|e| handshake("WebSocket", e.to_string()))?;
                let config = WebSocketConfig::default()
                    .max_message_size(Some(WS_MAX_MESSAGE))
                    .max_frame_size(Some(WS_MAX_MESSAGE));
                let (ws, _) = tungstenite::client::client_with_config(request, plain, Some(config))
                    .map_err(|e| handshake("WebSocket", ws_handshake_error(e)))?;
                Io::Ws(Box::new(ws))
            }
        };
        Ok(io)
    }

    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Io::Tcp(s) => Some(s),
            Io::Tls(s) => Some(s.get_ref()),
            Io::Ws(s) => Some(s.get_ref().tcp()),
            Io::Quic(_) => None,
        }
    }

    /// Our end of the connection (the UDP socket for QUIC).
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        match (self, self.tcp()) {
            (Io::Quic(q), _) => q.local_addr(),
            (_, Some(tcp)) => tcp.local_addr(),
            (_, None) => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// The server's end of the connection.
    pub(crate) fn peer_addr(&self) -> io::Result<SocketAddr> {
        match (self, self.tcp()) {
            (Io::Quic(q), _) => Ok(q.peer_addr()),
            (_, Some(tcp)) => tcp.peer_addr(),
            (_, None) => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// QUIC only: moves the connection to a new local UDP socket (migration).
    pub(crate) fn rebind(&mut self, local: SocketAddr) -> Result<SocketAddr, ClientError> {
        match self {
            Io::Quic(q) => Ok(q.rebind(local)?),
            _ => Err(ClientError::InvalidArgument(
                "only a QUIC connection can change its local address".into(),
            )),
        }
    }

    /// Writes `bytes` whole: on WebSocket as one binary message.
    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Io::Tcp(s) => s.write_all(bytes),
            Io::Tls(s) => {
                s.write_all(bytes)?;
                s.flush()
            }
            Io::Ws(ws) => ws_io(ws.send(Message::Binary(bytes.to_vec().into()))),
            Io::Quic(q) => q.write_all(bytes),
        }
    }

    /// Sends a WebSocket text message (tests of the server's refusal).
    pub(crate) fn write_text(&mut self, text: &str) -> Result<(), ClientError> {
        match self {
            Io::Ws(ws) => Ok(ws_io(ws.send(Message::Text(text.to_owned().into())))?),
            _ => Err(ClientError::InvalidArgument(
                "text messages exist on WebSocket only".into(),
            )),
        }
    }

    /// One read of at most `wait` (the socket's read timeout) into `out`.
    pub(crate) fn read_some(
        &mut self,
        out: &mut bytes::BytesMut,
        chunk: &mut [u8],
        wait: Duration,
    ) -> io::Result<Got> {
        if let Io::Quic(q) = self {
            return Ok(match q.read_some(out, wait)? {
                None => Got::Nothing,
                Some(false) => Got::Data,
                Some(true) => Got::Closed(None),
            });
        }
        if let Some(tcp) = self.tcp() {
            tcp.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        }
        let n = match self {
            Io::Quic(_) => return Ok(Got::Nothing),
            Io::Tcp(s) => s.read(chunk),
            Io::Tls(s) => match s.read(chunk) {
                // The server closed without close_notify: closed all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
            Io::Ws(ws) => {
                return match ws.read() {
                    Ok(Message::Binary(b)) => {
                        out.extend_from_slice(&b);
                        Ok(Got::Data)
                    }
                    Ok(Message::Close(frame)) => Ok(Got::Closed(frame.map(|f| u16::from(f.code)))),
                    Ok(Message::Text(_)) => Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the server sent a text message",
                    )),
                    Ok(_) => Ok(Got::Data),
                    Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                        Ok(Got::Closed(None))
                    }
                    Err(tungstenite::Error::Io(e)) => match e.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => {
                            Ok(Got::Nothing)
                        }
                        io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::UnexpectedEof => Ok(Got::Closed(None)),
                        _ => Err(e),
                    },
                    Err(tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                    )) => Ok(Got::Closed(None)),
                    Err(e) => Err(io::Error::other(e)),
                };
            }
        };
        match n {
            Ok(0) => Ok(Got::Closed(None)),
            Ok(n) => {
                out.extend_from_slice(chunk.get(..n).unwrap_or_default());
                Ok(Got::Data)
            }
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => {
                    Ok(Got::Nothing)
                }
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => Ok(Got::Closed(None)),
                _ => Err(e),
            },
        }
    }

    /// Closes the sending half: FIN on TCP, close_notify then FIN on TLS, a
    /// Close frame on WebSocket.
    pub(crate) fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Io::Tcp(s) => s.shutdown(Shutdown::Write),
            Io::Tls(s) => {
                s.conn.send_close_notify();
                s.flush()?;
                s.get_ref().shutdown(Shutdown::Write)
            }
            Io::Ws(ws) => ws_io(ws.close(None)),
            Io::Quic(q) => q.shutdown_write(),
        }
    }

    /// Best effort: both halves down (after invalid bytes from the server).
    pub(crate) fn shutdown_both(&mut self) {
        match self {
            Io::Quic(q) => q.close(),
            _ => {
                if let Some(tcp) = self.tcp() {
                    let _ = tcp.shutdown(Shutdown::Both);
                }
            }
        }
    }
}

fn ws_io(result: tungstenite::Result<()>) -> io::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(tungstenite::Error::Io(e)) => Err(e),
        Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        Err(e) => Err(io::Error::other(e)),
    }
}

fn ws_handshake_error<S: tungstenite::handshake::HandshakeRole>(e: tungstenite::HandshakeError<S>) -> String {
    match e {
        tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response)) => {
            format!("upgrade refused with HTTP {}", response.status().as_u16())
        }
        tungstenite::HandshakeError::Failure(e) => e.to_string(),
        tungstenite::HandshakeError::Interrupted(_) => "upgrade timed out".into(),
    }
}

fn handshake(transport: &'static str, message: String) -> ClientError {
    ClientError::Handshake { transport, message }
}

/// A TLS 1.3 client connection to `host` trusting by `trust`.
fn client_tls(trust: &Trust, host: &str) -> Result<ClientConnection, ClientError> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| ClientError::InvalidArgument(format!("server name {host:?}: {e}")))?;
    ClientConnection::new(tls_client_config(trust)?, name).map_err(|e| handshake("TLS", e.to_string()))
}

/// The rustls client configuration natter-client uses (TLS 1.3 only, ring),
/// trusting by `trust`: for tools that drive TLS themselves (natter-bench's
/// non-blocking connections).
///
/// # Errors
/// [`ClientError::InvalidArgument`] for an unreadable or malformed CA file.
pub fn tls_client_config(trust: &Trust) -> Result<Arc<ClientConfig>, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| handshake("TLS", e.to_string()))?;
    let config = match trust {
        Trust::Fingerprint(pin) => {
            let pin: String = pin
                .chars()
                .filter(|c| *c != ':')
                .map(|c| c.to_ascii_lowercase())
                .collect();
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned {
                    pin,
                    algorithms: provider.signature_verification_algorithms,
                }))
                .with_no_client_auth()
        }
        Trust::CaFile(path) => {
            let bad =
                |e: &dyn std::fmt::Display| ClientError::InvalidArgument(format!("{}: {e}", path.display()));
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

/// SHA-256 of a certificate's DER as lowercase hex.
pub fn fingerprint(cert: &[u8]) -> String {
    Sha256::digest(cert).iter().map(|b| format!("{b:02x}")).collect()
}

/// Trusts exactly the certificate whose SHA-256 is `pin` (signatures are still
/// checked, so the server must hold its key).
#[derive(Debug)]
struct Pinned {
    pin: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls_parse() {
        let e = Endpoint::parse("wss://localhost:7102/chat").unwrap();
        assert_eq!(
            (e.scheme, e.host.as_str(), e.port, e.path.as_str()),
            (Scheme::Wss, "localhost", 7102, "/chat")
        );
        let e = Endpoint::parse("tls://[::1]:7101").unwrap();
        assert_eq!((e.scheme, e.host.as_str(), e.port), (Scheme::Tls, "::1", 7101));
        assert_eq!(Endpoint::parse("tcp://127.0.0.1:7100").unwrap().path, "/");
        let e = Endpoint::parse("quic://127.0.0.1:7101").unwrap();
        assert_eq!((e.scheme, e.port), (Scheme::Quic, 7101));
        assert!(e.scheme.uses_tls(), "QUIC needs a Trust");
        assert!(Endpoint::parse("sctp://127.0.0.1:7101").is_err());
        assert!(Endpoint::parse("tcp://127.0.0.1").is_err());
        assert!(Endpoint::parse("127.0.0.1:7100").is_err());
    }
}
