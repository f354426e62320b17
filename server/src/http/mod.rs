//! The HTTP side-port: signup, login, logout, friends, chats (DMs, groups and
//! their members), service discovery, health and Prometheus metrics —
//! everything that is not real-time. `docs/HTTP.md` documents every route.
//!
//! * `api.rs` — [`Api::handle`]: routing, auth, validation, store calls; a pure
//!   function of a parsed [`Request`], so it is tested (and fuzzed) without sockets.
//! * `error.rs` — [`HttpError`]: the one table of status codes and error codes.
//! * `password.rs` — argon2id hashing, at most `cores` at once.
//! * `ratelimit.rs` — token buckets: per address for signup and login, per user
//!   for every other write (LRU-bounded).
//! * `server.rs` — [`start`]: HTTP/1.1 over TCP (httparse, one mio I/O thread,
//!   a worker pool), with every size, count and time bounded.

mod api;
mod error;
mod password;
mod ratelimit;
mod server;

use std::net::SocketAddr;

use serde::Serialize;

pub use api::{
    APP_ID_MAX, Api, DEVICE_NAME_MAX, GROUP_NAME_MAX, MEMBERSHIP_DEADLINE, PASSWORD_MAX, PASSWORD_MIN,
    PUSHKEY_MAX, Request, Response, USERNAME_MAX, USERNAME_MIN, validate_group_name, validate_username,
};
pub use error::HttpError;
pub use server::{
    HttpServer, IDLE_TIMEOUT, LINGER, LINGER_MAX_BYTES, MAX_BODY, MAX_CONNECTIONS, MAX_HEAD, MAX_HEADERS,
    QUEUE_PER_WORKER, REQUEST_TIMEOUT, SHUTDOWN_GRACE, WRITE_TIMEOUT, start,
};

/// Where clients connect: returned by `GET /v1/endpoints` and by login, as
/// `{"http":"127.0.0.1:7180","tcp":"127.0.0.1:7100"}`. The addresses are the
/// ones actually bound (so port 0 shows the chosen port). Later transports add
/// fields (`tls`, `quic`, `ws`); clients ignore fields they do not know.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoints {
    /// The HTTP side-port.
    pub http: SocketAddr,
    /// The raw TCP chat listener.
    pub tcp: SocketAddr,
}
