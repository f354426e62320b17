//! TLS 1.3 over TCP: the server configuration (rustls with the ring
//! provider, TLS 1.3 only), where its certificate comes from, and
//! [`TlsStream`], a rustls `ServerConnection` driven non-blocking by the
//! core's own loop (the `read_tls` → `process_new_packets` → plaintext →
//! `write_tls` shape of rustls' mio example).
//!
//! The certificate is `--tls-cert`/`--tls-key` (PEM) when given; otherwise a
//! self-signed one (rcgen, ECDSA P-256, names `localhost`, `127.0.0.1`, `::1`
//! and the bind address) is created in `<data-dir>/tls/` on first start and
//! reused afterwards, so a client that pinned its fingerprint keeps working
//! across restarts. The SHA-256 fingerprint of the leaf certificate (DER) is
//! logged and served by `GET /v1/endpoints`.

use std::io::{self, IoSlice, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::ServerConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Plaintext plus unsent TLS records one connection may hold inside rustls.
/// Past it `write` takes nothing (`WouldBlock`): the worker's own outbound
/// queue, with its limits and slow-consumer policy, holds the rest, so TLS
/// adds at most this to a connection's memory. 64 KiB is four full records:
/// enough for one `write_tls` to fill a socket buffer.
pub const TLS_BUFFER_LIMIT: usize = 64 * 1024;

/// Why the TLS set-up failed (natterd does not start).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A PEM file holds no certificate / no private key, or is malformed.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the certificate and key (e.g. they do not match).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The self-signed certificate could not be generated.
    #[error("generating the self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// Only one of `--tls-cert` and `--tls-key` was given.
    #[error("--tls-cert and --tls-key must be given together")]
    HalfGiven,
}

/// The TLS configuration every core shares, and the certificate's fingerprint.
#[derive(Clone, Debug)]
pub struct TlsSetup {
    /// rustls' server configuration (TLS 1.3 only, ring).
    pub config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the leaf certificate's DER, lowercase hex (64 characters).
    pub fingerprint: String,
    /// Where the certificate came from (for the log line).
    pub cert_path: PathBuf,
}

impl TlsSetup {
    /// Loads `cert`/`key`, or (neither given) the self-signed pair in
    /// `<data_dir>/tls/`, creating it first if it does not exist.
    ///
    /// # Errors
    /// Unreadable or malformed files, a key that does not fit the certificate,
    /// a data dir that cannot be written.
    pub fn load(
        cert: Option<&Path>,
        key: Option<&Path>,
        data_dir: &Path,
        bind: IpAddr,
    ) -> Result<Self, TlsError> {
        let (cert_path, key_path) = match (cert, key) {
            (Some(c), Some(k)) => (c.to_owned(), k.to_owned()),
            (None, None) => self_signed(data_dir, bind)?,
            _ => return Err(TlsError::HalfGiven),
        };
        let pem_err = |path: &Path, e: rustls::pki_types::pem::Error| TlsError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
            .map_err(|e| pem_err(&cert_path, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| pem_err(&cert_path, e))?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::Pem {
                path: cert_path,
                message: "no certificate in the file".into(),
            });
        };
        let fingerprint = fingerprint(leaf);
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| pem_err(&key_path, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        // natter clients reconnect with a token, not a TLS session: tickets would
        // only add bytes to every handshake.
        config.send_tls13_tickets = 0;
        Ok(Self {
            config: Arc::new(config),
            fingerprint,
            cert_path,
        })
    }
}

/// SHA-256 of a certificate's DER as lowercase hex: what clients pin.
pub fn fingerprint(cert: &[u8]) -> String {
    Sha256::digest(cert).iter().map(|b| format!("{b:02x}")).collect()
}

/// The self-signed pair in `<data_dir>/tls/`, created when missing.
fn self_signed(data_dir: &Path, bind: IpAddr) -> Result<(PathBuf, PathBuf), TlsError> {
    let dir = data_dir.join("tls");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let file_err = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::File { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(file_err(&dir))?;
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if !bind.is_unspecified() && !bind.is_loopback() {
        names.push(bind.to_string());
    }
    let pair = rcgen::generate_simple_self_signed(names)?;
    // The key first, readable by natterd's user only; the certificate last, so
    // a start interrupted in between generates both again.
    write_private(&key_path, pair.signing_key.serialize_pem().as_bytes()).map_err(file_err(&key_path))?;
    std::fs::write(&cert_path, pair.cert.pem()).map_err(file_err(&cert_path))?;
    tracing::info!(cert = %cert_path.display(), "created a self-signed TLS certificate");
    Ok((cert_path, key_path))
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(data)?;
    file.sync_all()
}

/// A TLS server connection over a non-blocking socket. As [`Read`] it yields
/// plaintext (driving the handshake as needed); as [`Write`] it takes
/// plaintext into rustls (at most [`TLS_BUFFER_LIMIT`] held) and pushes
/// records to the socket.
#[derive(Debug)]
pub struct TlsStream {
    tcp: TcpStream,
    tls: ServerConnection,
    close_sent: bool,
    /// An error met after a read had already gathered plaintext: returned by
    /// the next read, so the frames before it are not lost.
    deferred: Option<io::Error>,
}

impl TlsStream {
    /// A connection that has not seen its ClientHello yet.
    ///
    /// # Errors
    /// When rustls cannot start a connection with this configuration.
    pub fn new(tcp: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let mut tls = ServerConnection::new(config).map_err(io::Error::other)?;
        tls.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        Ok(Self {
            tcp,
            tls,
            close_sent: false,
            deferred: None,
        })
    }

    /// The socket underneath.
    pub fn tcp(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// True until the handshake has completed.
    pub fn is_handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }

    /// Writes pending TLS records to the socket.
    ///
    /// # Errors
    /// `WouldBlock` while some are left; other errors: the socket is gone.
    pub fn flush_buffered(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Queues `close_notify` (once).
    pub fn start_close(&mut self) {
        if !self.close_sent {
            self.close_sent = true;
            self.tls.send_close_notify();
        }
    }

    /// Flushes what it can; `WouldBlock` is no error here (records wait).
    fn push(&mut self) -> io::Result<()> {
        match self.flush_buffered() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }
}

impl Read for TlsStream {
    /// Fills `buf` with as much plaintext as the socket has (several records:
    /// rustls reads 4 KiB per `read_tls`), so the worker hands the core many
    /// frames per call, as on raw TCP.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        let mut filled = 0;
        loop {
            let rest = buf.get_mut(filled..).unwrap_or_default();
            if rest.is_empty() {
                return Ok(filled);
            }
            match self.tls.reader().read(rest) {
                // close_notify: the frames before it first.
                Ok(0) => return Ok(filled),
                Ok(n) => {
                    filled += n;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed the socket without close_notify: a close all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(filled),
                Err(e) => return self.fail(filled, e),
            }
            // No plaintext buffered: take records from the socket.
            match self.tls.read_tls(&mut self.tcp) {
                Ok(0) => return Ok(filled),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && filled > 0 => return Ok(filled),
                Err(e) => return self.fail(filled, e),
            }
            if let Err(e) = self.tls.process_new_packets() {
                // rustls queued an alert saying why: best effort to send it.
                let _ = self.push();
                return self.fail(filled, io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // The handshake (or a key update) may have something to answer.
            if let Err(e) = self.push() {
                return self.fail(filled, e);
            }
        }
    }
}

impl TlsStream {
    /// Returns `e` now, or after the `filled` bytes already gathered.
    fn fail(&mut self, filled: usize, e: io::Error) -> io::Result<usize> {
        if filled == 0 {
            return Err(e);
        }
        self.deferred = Some(e);
        Ok(filled)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // Make room first: rustls takes nothing while its buffer is at the limit.
        self.push()?;
        let n = self.tls.writer().write_vectored(bufs)?;
        self.push()?;
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_buffered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let bind = IpAddr::from([127, 0, 0, 1]);
        let first = TlsSetup::load(None, None, dir.path(), bind).unwrap();
        assert_eq!(first.fingerprint.len(), 64);
        let second = TlsSetup::load(None, None, dir.path(), bind).unwrap();
        assert_eq!(first.fingerprint, second.fingerprint, "reused, not regenerated");
        let given = TlsSetup::load(
            Some(&dir.path().join("tls/cert.pem")),
            Some(&dir.path().join("tls/key.pem")),
            Path::new("/nonexistent"),
            bind,
        )
        .unwrap();
        assert_eq!(given.fingerprint, first.fingerprint);
        assert!(matches!(
            TlsSetup::load(Some(&dir.path().join("tls/cert.pem")), None, dir.path(), bind),
            Err(TlsError::HalfGiven)
        ));
        assert!(matches!(
            TlsSetup::load(
                Some(&dir.path().join("missing.pem")),
                Some(&dir.path().join("tls/key.pem")),
                dir.path(),
                bind
            ),
            Err(TlsError::Pem { .. })
        ));
    }
}
