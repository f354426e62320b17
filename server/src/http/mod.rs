//! The HTTP side-port: signup, login, logout, friends, chats (DMs, groups and
//! their members), service discovery, health and Prometheus metrics —
//! everything that is not real-time. `docs/HTTP.md` documents every route.
//!
//! * `api.rs` — [`Api::handle`]: routing, auth, validation, store calls; a pure
//!   function of a parsed [`Request`], so it is tested (and fuzzed) without sockets.
//! * `error.rs` — [`HttpError`]: the one table of status codes and error codes.
//! * `lockout.rs` — per-account backoff of failed logins (any address).
//! * `password.rs` — argon2id hashing, at most `cores` at once; re-hash checks.
//! * `ratelimit.rs` — token buckets: per address for signup and login, per user
//!   for every other write (LRU-bounded).
//! * `server.rs` — [`start`]: HTTP/1.1 over TCP (httparse, one mio I/O thread,
//!   a worker pool), with every size, count and time bounded.
//! * `web.rs` — the web page (`clients/web/dist/`, embedded) at `/`, `/app.js`, `/app.css`.

mod api;
mod error;
mod lockout;
mod password;
mod ratelimit;
mod server;
mod web;

use std::net::SocketAddr;

use serde::Serialize;

pub use api::{
    APP_ID_MAX, Api, DEVICE_NAME_MAX, GROUP_NAME_MAX, MEMBERSHIP_DEADLINE, PASSWORD_MAX, PASSWORD_MIN,
    PUSHKEY_MAX, Request, Response, USERNAME_MAX, USERNAME_MIN, validate_group_name, validate_username,
};
pub use error::HttpError;
pub use lockout::LoginBackoff;
pub use ratelimit::MAX_TRACKED as MAX_TRACKED_ADDRESSES;
pub use server::{
    HttpServer, IDLE_TIMEOUT, LINGER, LINGER_MAX_BYTES, MAX_BODY, MAX_CONNECTIONS, MAX_HEAD, MAX_HEADERS,
    QUEUE_PER_WORKER, REQUEST_TIMEOUT, SHUTDOWN_GRACE, SidePortLimits, WRITE_TIMEOUT, start, start_limited,
};

/// Where clients connect: returned by `GET /v1/endpoints` and by login, e.g.
/// `{"http":"127.0.0.1:7180","tcp":"127.0.0.1:7100","tls":"127.0.0.1:7101",
/// "ws":"127.0.0.1:7102","urls":["tcp://127.0.0.1:7100","tls://127.0.0.1:7101",
/// "ws://127.0.0.1:7102/"],"cert_sha256":"…"}`. The addresses are the ones
/// actually bound (so port 0 shows the chosen port); a transport that is off
/// has no field and no URL. Clients ignore fields they do not know.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoints {
    /// The HTTP side-port.
    pub http: SocketAddr,
    /// The raw TCP chat listener.
    pub tcp: SocketAddr,
    /// The TLS listener, if enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<SocketAddr>,
    /// The WebSocket listener, if enabled (`ws_tls`: it speaks `wss://`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws: Option<SocketAddr>,
    /// The QUIC port (UDP), if enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quic: Option<SocketAddr>,
    /// Every enabled transport as a URL (`tcp://`, `tls://`, `ws://`,
    /// `wss://` or `quic://`), fastest first (QUIC last: it is listed where
    /// clients look for it, not preferred over TCP).
    pub urls: Vec<String>,
    /// SHA-256 of the TLS certificate (DER), lowercase hex, for pinning; only
    /// when a transport uses TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_sha256: Option<String>,
}

impl Endpoints {
    /// The endpoints of a natterd with these listeners (`ws_tls`: the
    /// WebSocket listener speaks TLS).
    pub fn new(
        http: SocketAddr,
        tcp: SocketAddr,
        tls: Option<SocketAddr>,
        ws: Option<SocketAddr>,
        ws_tls: bool,
        cert_sha256: Option<String>,
    ) -> Self {
        let mut urls = vec![format!("tcp://{tcp}")];
        if let Some(tls) = tls {
            urls.push(format!("tls://{tls}"));
        }
        if let Some(ws) = ws {
            urls.push(format!("{}://{ws}/", if ws_tls { "wss" } else { "ws" }));
        }
        let uses_tls = tls.is_some() || (ws.is_some() && ws_tls);
        Self {
            http,
            tcp,
            tls,
            ws,
            quic: None,
            urls,
            cert_sha256: cert_sha256.filter(|_| uses_tls),
        }
    }

    /// Adds the QUIC port (`quic://host:port`, which uses the TLS
    /// certificate: `cert_sha256` is then always listed); `None` leaves the
    /// endpoints as they are.
    pub fn with_quic(mut self, quic: Option<SocketAddr>, cert_sha256: Option<String>) -> Self {
        if let Some(addr) = quic {
            self.quic = Some(addr);
            self.urls.push(format!("quic://{addr}"));
            if self.cert_sha256.is_none() {
                self.cert_sha256 = cert_sha256;
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_enabled_transports_are_listed_and_the_fingerprint_only_with_tls() {
        let http = SocketAddr::from(([127, 0, 0, 1], 7180));
        let tcp = SocketAddr::from(([127, 0, 0, 1], 7100));
        let ws = SocketAddr::from(([127, 0, 0, 1], 7102));
        let plain = Endpoints::new(http, tcp, None, Some(ws), false, Some("ab".into()));
        assert_eq!(plain.urls, ["tcp://127.0.0.1:7100", "ws://127.0.0.1:7102/"]);
        assert_eq!(plain.cert_sha256, None, "no transport uses TLS");
        let wss = Endpoints::new(http, tcp, None, Some(ws), true, Some("ab".into()));
        let quic = SocketAddr::from(([127, 0, 0, 1], 7101));
        let with_quic = plain.clone().with_quic(Some(quic), Some("ab".into()));
        assert_eq!(
            with_quic.urls.last().map(String::as_str),
            Some("quic://127.0.0.1:7101")
        );
        assert_eq!(
            with_quic.cert_sha256.as_deref(),
            Some("ab"),
            "QUIC uses the certificate"
        );
        assert_eq!(plain.clone().with_quic(None, Some("ab".into())), plain);
        assert_eq!(wss.urls, ["tcp://127.0.0.1:7100", "wss://127.0.0.1:7102/"]);
        assert_eq!(wss.cert_sha256.as_deref(), Some("ab"));
    }
}
