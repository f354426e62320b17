//! natter-client: the Rust client library for natterd.
//!
//! Two halves, matching the server's two ports:
//!
//! * [`HttpClient`] talks to the HTTP side-port: sign up, log in (one token per
//!   device), log out, discover the endpoints, manage friends, read health and
//!   metrics. Every non-2xx answer is a [`ClientError::Http`] carrying the server's
//!   stable snake_case error code.
//! * [`Connection`] is one blocking TCP session on the frame port: it sends `Hello`
//!   with the device's token, waits for `Welcome`, then sends and receives typed
//!   [`natter_wire::Frame`]s (size-prefixed FlatBuffers, verified before use).
//!   An `Error` frame in answer to the handshake or a request becomes
//!   [`ClientError::Refused`]; a closed connection becomes [`ClientError::Closed`].
//!
//! Both are blocking and thread-free, which suits tests, tools and benchmarks;
//! mobile and web clients use bindings generated from the wire schema instead
//! (see `docs/PROTOCOL.md`).
//!
//! # Example
//!
//! ```no_run
//! use natter_client::{ClientError, Connection, HttpClient};
//!
//! # fn main() -> Result<(), ClientError> {
//! let http = HttpClient::new("http://127.0.0.1:7180");
//! match http.signup("alice", "correct horse battery") {
//!     Ok(_user_id) => {}
//!     Err(e) if e.http_status() == Some(409) => {} // already signed up
//!     Err(e) => return Err(e),
//! }
//! let login = http.login("alice", "correct horse battery", "laptop")?;
//! let (mut conn, welcome) = Connection::connect(login.endpoints.tcp, &login.token, "laptop")?;
//! println!("user {} device {} online", welcome.user_id, welcome.device_id);
//! let rtt = conn.ping()?;
//! println!("round trip {rtt:?}");
//! http.logout(&login.token)?;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod chats;
mod connection;
mod error;
mod http;
mod presence;
mod quic;
mod search;
mod transport;

pub use chats::{ChatSummary, Group, GroupMember, MemberReceipt};
pub use connection::{Connection, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REPLY_TIMEOUT};
pub use error::{ClientError, ServerCode};
pub use http::{
    DEFAULT_HTTP_TIMEOUT, Endpoints, Friend, FriendList, FriendStatus, HttpClient, Login, RawResponse,
};
pub use presence::UserPresence;
pub use quic::ALPN as QUIC_ALPN;
pub use search::{SearchAnswer, SearchHit, SearchOptions};
pub use transport::{Endpoint, Scheme, Trust, fingerprint, tls_client_config};
