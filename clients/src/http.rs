//! [`HttpClient`]: typed calls to natterd's HTTP side-port (signup, login, logout,
//! endpoints, friends, health, metrics), and the JSON shapes they return.
//!
//! Every call is one blocking request on a shared [`ureq::Agent`] (keep-alive, no
//! TLS). A non-2xx answer becomes [`ClientError::Http`] with the server's stable
//! error code; a 2xx answer whose body does not parse becomes
//! [`ClientError::UnexpectedResponse`].

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use ureq::http;

use crate::error::ClientError;

/// How long one HTTP request may take end to end. Signup and login hash a password
/// (argon2id, ~26 ms with the default cost) and queue behind other hashes, so this is
/// generous.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest response body read (`/metrics` of a many-core server stays far below).
const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// How much of a non-JSON error body is kept as the error message.
const MAX_ERROR_MESSAGE_CHARS: usize = 200;

/// The addresses a client should connect to, from `GET /v1/endpoints` and login.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Endpoints {
    /// The HTTP side-port.
    pub http: SocketAddr,
    /// The raw TCP frame port.
    pub tcp: SocketAddr,
    /// The TLS port, if enabled.
    #[serde(default)]
    pub tls: Option<SocketAddr>,
    /// The WebSocket port, if enabled.
    #[serde(default)]
    pub ws: Option<SocketAddr>,
    /// Every enabled transport as a URL (`tcp://`, `tls://`, `ws://`, `wss://`);
    /// pass one to [`crate::Connection::connect_url`].
    #[serde(default)]
    pub urls: Vec<String>,
    /// SHA-256 of the server's TLS certificate, hex: pin it with
    /// [`crate::Trust::Fingerprint`].
    #[serde(default)]
    pub cert_sha256: Option<String>,
}

impl Endpoints {
    /// The first URL of this scheme (`"tls"`, `"ws"`, …), if the server has it.
    pub fn url(&self, scheme: &str) -> Option<&str> {
        let prefix = format!("{scheme}://");
        self.urls
            .iter()
            .map(String::as_str)
            .find(|u| u.starts_with(&prefix))
    }
}

/// The answer to a successful login: the device's token and where to connect.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Login {
    /// The account that logged in.
    pub user_id: u64,
    /// The device this login created; each login is a new device.
    pub device_id: u64,
    /// The bearer token for HTTP calls and for `Hello` (keep it secret).
    pub token: String,
    /// Where to connect.
    pub endpoints: Endpoints,
}

/// The state of a friendship after a friend request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FriendStatus {
    /// The request is pending until the other user accepts it.
    Requested,
    /// The two users are friends (the other user had already asked).
    Friends,
}

/// A user in a friend list.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Friend {
    /// The user's id.
    pub user_id: u64,
    /// The user's name (lowercase).
    pub username: String,
}

/// The answer of `GET /v1/friends`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct FriendList {
    /// Accepted friendships.
    pub friends: Vec<Friend>,
    /// Requests other users sent to this user, not yet accepted.
    #[serde(default)]
    pub incoming: Vec<Friend>,
    /// Requests this user sent, not yet accepted.
    #[serde(default)]
    pub outgoing: Vec<Friend>,
}

/// A response as it came, for calls the typed methods do not cover (tests of the
/// server's validation, unknown routes, wrong methods).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    ///
    /// # Errors
    /// [`ClientError::UnexpectedResponse`] if the body is not JSON.
    pub fn json(&self) -> Result<serde_json::Value, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| ClientError::UnexpectedResponse {
            endpoint: "raw request",
            message: format!("body is not JSON: {e}"),
        })
    }
}

/// A blocking client for natterd's HTTP side-port.
///
/// Cheap to clone (the connection pool is shared) and usable from several threads.
#[derive(Clone, Debug)]
pub struct HttpClient {
    agent: ureq::Agent,
    base: String,
}

impl HttpClient {
    /// A client for the side-port at `base_url`, e.g. `http://127.0.0.1:7180`. A bare
    /// `host:port` (as printed in `NATTERD_READY`) is taken as `http://host:port`;
    /// a trailing `/` is ignored.
    pub fn new(base_url: &str) -> Self {
        Self::with_timeout(base_url, DEFAULT_HTTP_TIMEOUT)
    }

    /// Like [`HttpClient::new`], with a different end-to-end timeout per request.
    pub fn with_timeout(base_url: &str, timeout: Duration) -> Self {
        let trimmed = base_url.trim().trim_end_matches('/');
        let base = if trimmed.contains("://") {
            trimmed.to_owned()
        } else {
            format!("http://{trimmed}")
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .new_agent();
        Self { agent, base }
    }

    /// A client for the side-port listening on `addr`.
    pub fn from_addr(addr: SocketAddr) -> Self {
        Self::new(&format!("http://{addr}"))
    }

    /// The base URL requests go to, e.g. `http://127.0.0.1:7180`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /v1/signup`: creates an account and returns its user id.
    ///
    /// # Errors
    /// [`ClientError::Http`] with status 409 (`username_taken`) if the name exists
    /// (names are case-insensitive), 400 for an invalid name or password, 429 when
    /// rate-limited; transport errors as [`ClientError::Transport`].
    pub fn signup(&self, username: &str, password: &str) -> Result<u64, ClientError> {
        #[derive(Deserialize)]
        struct Created {
            user_id: u64,
        }
        let body = serde_json::json!({ "username": username, "password": password });
        let created: Created = self.call_json("POST /v1/signup", "POST", "/v1/signup", None, Some(&body))?;
        Ok(created.user_id)
    }

    /// `POST /v1/login`: logs in as a new device and returns its token.
    ///
    /// # Errors
    /// [`ClientError::Http`] with status 401 for a wrong name or password, 429 when
    /// rate-limited; transport errors as [`ClientError::Transport`].
    pub fn login(&self, username: &str, password: &str, device_name: &str) -> Result<Login, ClientError> {
        let body = serde_json::json!({
            "username": username,
            "password": password,
            "device_name": device_name,
        });
        self.call_json("POST /v1/login", "POST", "/v1/login", None, Some(&body))
    }

    /// `POST /v1/logout`: revokes `token`; live sessions that used it are closed.
    ///
    /// # Errors
    /// [`ClientError::Http`] with status 401 if the token is not valid.
    pub fn logout(&self, token: &str) -> Result<(), ClientError> {
        self.call_empty("POST", "/v1/logout", Some(token), None)
    }

    /// `GET /v1/endpoints`: where clients should connect.
    ///
    /// # Errors
    /// Transport errors, or [`ClientError::UnexpectedResponse`] for a malformed answer.
    pub fn endpoints(&self) -> Result<Endpoints, ClientError> {
        self.call_json("GET /v1/endpoints", "GET", "/v1/endpoints", None, None)
    }

    /// `POST /v1/friends/requests`: asks `username` to be a friend (or accepts their
    /// pending request).
    ///
    /// # Errors
    /// [`ClientError::Http`] with status 404 for an unknown user, 400 when asking
    /// oneself, 401 for a bad token.
    pub fn friend_request(&self, token: &str, username: &str) -> Result<FriendStatus, ClientError> {
        #[derive(Deserialize)]
        struct Answer {
            status: FriendStatus,
        }
        let body = serde_json::json!({ "username": username });
        let answer: Answer = self.call_json(
            "POST /v1/friends/requests",
            "POST",
            "/v1/friends/requests",
            Some(token),
            Some(&body),
        )?;
        Ok(answer.status)
    }

    /// `POST /v1/friends/requests/{user_id}/accept`: accepts a pending request.
    ///
    /// # Errors
    /// [`ClientError::Http`] with status 404 if there is no such pending request.
    pub fn accept_friend(&self, token: &str, user_id: u64) -> Result<(), ClientError> {
        let path = format!("/v1/friends/requests/{user_id}/accept");
        self.call_empty("POST", &path, Some(token), None)
    }

    /// `GET /v1/friends`: friends and pending requests both ways.
    ///
    /// # Errors
    /// [`ClientError::Http`] with status 401 for a bad token.
    pub fn friends(&self, token: &str) -> Result<FriendList, ClientError> {
        self.call_json("GET /v1/friends", "GET", "/v1/friends", Some(token), None)
    }

    /// `DELETE /v1/friends/{user_id}`: ends a friendship (or withdraws a request).
    ///
    /// # Errors
    /// [`ClientError::Http`] with status 404 if there is nothing to remove.
    pub fn remove_friend(&self, token: &str, user_id: u64) -> Result<(), ClientError> {
        let path = format!("/v1/friends/{user_id}");
        self.call_empty("DELETE", &path, Some(token), None)
    }

    /// `GET /healthz`: succeeds while the server is up.
    ///
    /// # Errors
    /// [`ClientError::Http`] if the server reports itself unhealthy; transport errors.
    pub fn healthz(&self) -> Result<(), ClientError> {
        self.call_empty("GET", "/healthz", None, None)
    }

    /// `GET /metrics`: the Prometheus text exposition.
    ///
    /// # Errors
    /// Transport errors, or [`ClientError::UnexpectedResponse`] if it is not UTF-8.
    pub fn metrics(&self) -> Result<String, ClientError> {
        let body = self.call_ok("GET", "/metrics", None, None)?;
        String::from_utf8(body).map_err(|_| ClientError::UnexpectedResponse {
            endpoint: "GET /metrics",
            message: "body is not UTF-8".into(),
        })
    }

    /// Sends any request and returns the response as it came, whatever its status.
    /// `body`, if given, is sent as `application/json` (it need not be valid JSON).
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for an invalid method or path; transport
    /// errors. A non-2xx status is *not* an error here.
    pub fn raw_request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<RawResponse, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut builder = http::Request::builder().method(method).uri(&url);
        if let Some(token) = token {
            builder = builder.header("Authorization", format!("Bearer {token}"));
        }
        let invalid = |e: http::Error| ClientError::InvalidArgument(format!("{method} {url}: {e}"));
        let mut response = match body {
            Some(bytes) => {
                let request = builder
                    .header("Content-Type", "application/json")
                    .body(bytes.to_vec())
                    .map_err(invalid)?;
                self.agent.run(request)?
            }
            // An explicit empty body: ureq would otherwise send a bodiless POST
            // chunked, and natterd accepts only Content-Length bodies.
            None => self.agent.run(builder.body(Vec::<u8>::new()).map_err(invalid)?)?,
        };
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()?;
        Ok(RawResponse { status, body })
    }

    /// Sends a request and returns the body of a 2xx answer; anything else becomes
    /// [`ClientError::Http`].
    fn call_ok(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        json: Option<&serde_json::Value>,
    ) -> Result<Vec<u8>, ClientError> {
        let body = json.map(|value| value.to_string().into_bytes());
        let response = self.raw_request(method, path, token, body.as_deref())?;
        if (200..300).contains(&response.status) {
            Ok(response.body)
        } else {
            Err(error_from_response(response.status, &response.body))
        }
    }

    /// [`HttpClient::call_ok`] and ignore the body.
    pub(crate) fn call_empty(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        json: Option<&serde_json::Value>,
    ) -> Result<(), ClientError> {
        self.call_ok(method, path, token, json).map(drop)
    }

    /// [`HttpClient::call_ok`] and parse the body as `T`.
    pub(crate) fn call_json<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        method: &str,
        path: &str,
        token: Option<&str>,
        json: Option<&serde_json::Value>,
    ) -> Result<T, ClientError> {
        let body = self.call_ok(method, path, token, json)?;
        parse_body(endpoint, &body)
    }
}

/// Parses a 2xx body as `T`.
fn parse_body<T: DeserializeOwned>(endpoint: &'static str, body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|e| ClientError::UnexpectedResponse {
        endpoint,
        message: e.to_string(),
    })
}

/// Turns a non-2xx response into [`ClientError::Http`], reading the
/// `{"error": {"code", "message"}}` body when it has that shape.
pub(crate) fn error_from_response(status: u16, body: &[u8]) -> ClientError {
    #[derive(Deserialize)]
    struct Envelope {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(Envelope { error }) => ClientError::Http {
            status,
            code: error.code,
            message: error.message,
        },
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            ClientError::Http {
                status,
                code: format!("http_{status}"),
                message: text.trim().chars().take(MAX_ERROR_MESSAGE_CHARS).collect(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_is_parsed() {
        let body = br#"{"error":{"code":"username_taken","message":"the name alice is taken"}}"#;
        match error_from_response(409, body) {
            ClientError::Http {
                status,
                code,
                message,
            } => {
                assert_eq!(status, 409);
                assert_eq!(code, "username_taken");
                assert_eq!(message, "the name alice is taken");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn error_body_without_message_keeps_the_code() {
        let err = error_from_response(401, br#"{"error":{"code":"invalid_token"}}"#);
        assert_eq!(err.http_code(), Some("invalid_token"));
        assert_eq!(err.http_status(), Some(401));
    }

    #[test]
    fn non_json_error_body_falls_back_to_status() {
        match error_from_response(502, b"  Bad Gateway\n") {
            ClientError::Http {
                status,
                code,
                message,
            } => {
                assert_eq!(status, 502);
                assert_eq!(code, "http_502");
                assert_eq!(message, "Bad Gateway");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn long_non_json_error_body_is_cut() {
        let body = "x".repeat(10_000);
        match error_from_response(500, body.as_bytes()) {
            ClientError::Http { message, .. } => assert_eq!(message.len(), MAX_ERROR_MESSAGE_CHARS),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn login_answer_is_parsed() {
        let body = br#"{"user_id":7,"device_id":3,"token":"abc",
            "endpoints":{"http":"127.0.0.1:7180","tcp":"127.0.0.1:7100","ws":"127.0.0.1:7102"}}"#;
        let login: Login = parse_body("POST /v1/login", body).unwrap();
        assert_eq!(login.user_id, 7);
        assert_eq!(login.device_id, 3);
        assert_eq!(login.token, "abc");
        assert_eq!(login.endpoints.tcp, "127.0.0.1:7100".parse().unwrap());
        assert_eq!(login.endpoints.http, "127.0.0.1:7180".parse().unwrap());
    }

    #[test]
    fn malformed_success_body_is_unexpected_response() {
        let err = parse_body::<Login>("POST /v1/login", br#"{"user_id":"seven"}"#).unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::UnexpectedResponse {
                    endpoint: "POST /v1/login",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn friend_list_and_status_are_parsed() {
        let body = br#"{"friends":[{"user_id":2,"username":"bob"}],"incoming":[],
            "outgoing":[{"user_id":3,"username":"carol"}]}"#;
        let list: FriendList = parse_body("GET /v1/friends", body).unwrap();
        assert_eq!(
            list.friends,
            vec![Friend {
                user_id: 2,
                username: "bob".into()
            }]
        );
        assert!(list.incoming.is_empty());
        assert_eq!(list.outgoing.len(), 1);

        let status: FriendStatus = serde_json::from_str(r#""requested""#).unwrap();
        assert_eq!(status, FriendStatus::Requested);
        let status: FriendStatus = serde_json::from_str(r#""friends""#).unwrap();
        assert_eq!(status, FriendStatus::Friends);
    }

    #[test]
    fn base_url_is_normalised() {
        assert_eq!(
            HttpClient::new("127.0.0.1:7180").base_url(),
            "http://127.0.0.1:7180"
        );
        assert_eq!(
            HttpClient::new("http://127.0.0.1:7180/").base_url(),
            "http://127.0.0.1:7180"
        );
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(HttpClient::from_addr(addr).base_url(), "http://127.0.0.1:9");
    }

    #[test]
    fn unreachable_server_is_a_transport_error() {
        // Bind a port, then free it: nothing listens there afterwards.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = HttpClient::with_timeout(&format!("127.0.0.1:{port}"), Duration::from_secs(5));
        let err = client.healthz().unwrap_err();
        assert!(matches!(err, ClientError::Transport(_)), "{err:?}");
    }
}
