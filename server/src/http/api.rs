//! The side-port's request handling as a pure function of a parsed request:
//! routing, authentication, rate limiting, validation, and the calls into the
//! store. [`Api::handle`] knows nothing of sockets, so unit tests and fuzz
//! targets drive it directly; `server.rs` is the transport around it.
//!
//! Chats are created here (durably, in the store). Membership changes of an
//! existing group are not: they are ordered with the group's messages, so the
//! handler checks what it can (the ids, that the caller is a member), hands the
//! change to the chat's owner core as a [`Command::Membership`] and waits up to
//! [`MEMBERSHIP_DEADLINE`] for the core's answer, which comes once the change is
//! durable (or refused).
//!
//! Presence lives on the users' home cores: a friendship change is committed
//! here, then announced to both users' home cores ([`Command::FriendsChanged`]),
//! and `GET /v1/presence` asks the user's home core ([`Command::PresenceQuery`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::config::Config;
use crate::http::Endpoints;
use crate::http::error::HttpError;
use crate::http::lockout::AccountThrottle;
use crate::http::password::Passwords;
use crate::http::ratelimit::{RateLimiter, UserRateLimiter};
use crate::ids::{ChatId, DeviceId, UserId};
use crate::metrics::Metrics;
use crate::push::{GatewayUrlError, PushConfig, PushHandle, check_gateway_url};
use crate::runtime::{Command, MembershipChange, MembershipError, Mesh};
use crate::store::{
    ChatInfo, ChatKind, FriendOutcome, MAX_FRIENDS, MAX_GROUP_MEMBERS, PushFormat, Pusher, Store, StoreError,
};

/// Shortest accepted username, in characters.
pub const USERNAME_MIN: usize = 3;
/// Longest accepted username, in characters.
pub const USERNAME_MAX: usize = 32;
/// Shortest accepted password, in bytes.
pub const PASSWORD_MIN: usize = 8;
/// Longest accepted password, in bytes (argon2 input; bounds hashing work).
pub const PASSWORD_MAX: usize = 1024;
/// Longest accepted device name, in characters.
pub const DEVICE_NAME_MAX: usize = 64;
/// Longest accepted group name, in characters (Unicode scalar values).
pub const GROUP_NAME_MAX: usize = 64;
/// How long a membership change waits for the owner core's answer before the
/// side-port answers 503. The core answers once the change is committed, which
/// takes a few milliseconds; 10 s means the core or the disk is stuck, and the
/// client should retry (a retried add answers `already_member`, a retried
/// remove `not_member`, if the first one went through after all).
pub const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(10);

const JSON: &str = "application/json";
/// The OpenAPI 3.1 description of every route, served at `/v1/openapi.json`.
const OPENAPI: &str = include_str!("../../../docs/openapi.json");
/// Longest accepted pusher `app_id`, in bytes.
pub const APP_ID_MAX: usize = 64;
/// Longest accepted `pushkey`, in bytes (the Matrix spec's bound; APNs tokens
/// are 64 hex characters, FCM tokens ~160).
pub const PUSHKEY_MAX: usize = 512;
const PROMETHEUS: &str = "text/plain; version=0.0.4";

/// A parsed HTTP request, independent of any HTTP library.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The method, e.g. `"POST"` (case-sensitive, as HTTP says).
    pub method: &'a str,
    /// The request target's path, possibly with a `?query` (ignored).
    pub path: &'a str,
    /// The `Authorization` header's value, if any.
    pub authorization: Option<&'a str>,
    /// The body (at most 64 KiB; the transport enforces that).
    pub body: &'a [u8],
    /// The client's address, for rate limiting.
    pub remote: IpAddr,
}

/// What to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// JSON, Prometheus text, or empty (204).
    pub body: String,
    /// The `Content-Type` of `body`.
    pub content_type: &'static str,
    /// For 405: the methods the route takes (the `Allow` header).
    pub allow: Option<&'static str>,
    /// For 429 and 507: whole seconds until a retry can succeed (the `Retry-After` header).
    pub retry_after: Option<u64>,
}

impl Response {
    fn json(status: u16, value: &serde_json::Value) -> Self {
        Self {
            status,
            body: value.to_string(),
            content_type: JSON,
            allow: None,
            retry_after: None,
        }
    }

    fn no_content() -> Self {
        Self {
            status: 204,
            body: String::new(),
            content_type: JSON,
            allow: None,
            retry_after: None,
        }
    }

    /// The error response for `error` with its default message.
    pub fn error(error: HttpError) -> Self {
        Self {
            status: error.status(),
            body: error.body(),
            content_type: JSON,
            allow: None,
            retry_after: None,
        }
    }

    fn error_with(error: HttpError, message: &str) -> Self {
        Self {
            status: error.status(),
            body: error.body_with(message),
            content_type: JSON,
            allow: None,
            retry_after: None,
        }
    }
}

impl From<HttpError> for Response {
    fn from(error: HttpError) -> Self {
        Self::error(error)
    }
}

/// Every route of the side-port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route<'a> {
    Healthz,
    Metrics,
    Signup,
    Login,
    Logout,
    Endpoints,
    Friends,
    FriendRequest,
    AcceptFriend(&'a str),
    RemoveFriend(&'a str),
    CreateDm,
    CreateGroup,
    Group(&'a str),
    AddMember(&'a str),
    RemoveMember(&'a str, &'a str),
    Chats,
    Presence,
    ReadMarker(&'a str),
    /// `/v1/devices/{id}/pusher`: GET, POST and DELETE.
    Pusher(&'a str),
    OpenApi,
    /// `/v1/chats/{id}/receipts` (`api/conversation.rs`).
    Receipts(&'a str),
    /// `/v1/settings`: GET and PUT (`api/conversation.rs`).
    Settings,
    /// `/v1/search` (`api/search.rs`).
    Search,
}

impl<'a> Route<'a> {
    fn parse(path: &'a str) -> Option<Self> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let mut segments = path.strip_prefix('/')?.split('/');
        let route = match (
            segments.next()?,
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            ("healthz", None, ..) => Self::Healthz,
            ("metrics", None, ..) => Self::Metrics,
            ("v1", Some("signup"), None, ..) => Self::Signup,
            ("v1", Some("login"), None, ..) => Self::Login,
            ("v1", Some("logout"), None, ..) => Self::Logout,
            ("v1", Some("endpoints"), None, ..) => Self::Endpoints,
            ("v1", Some("friends"), None, ..) => Self::Friends,
            ("v1", Some("friends"), Some("requests"), None, _) => Self::FriendRequest,
            ("v1", Some("friends"), Some("requests"), Some(id), Some("accept"))
                if segments.next().is_none() =>
            {
                Self::AcceptFriend(id)
            }
            ("v1", Some("friends"), Some(id), None, _) if id != "requests" => Self::RemoveFriend(id),
            ("v1", Some("dms"), None, ..) => Self::CreateDm,
            ("v1", Some("groups"), None, ..) => Self::CreateGroup,
            ("v1", Some("groups"), Some(id), None, _) => Self::Group(id),
            ("v1", Some("groups"), Some(id), Some("members"), None) => Self::AddMember(id),
            ("v1", Some("groups"), Some(id), Some("members"), Some(user)) if segments.next().is_none() => {
                Self::RemoveMember(id, user)
            }
            ("v1", Some("chats"), None, ..) => Self::Chats,
            ("v1", Some("chats"), Some(id), Some("read"), None) => Self::ReadMarker(id),
            ("v1", Some("presence"), None, ..) => Self::Presence,
            ("v1", Some("devices"), Some(id), Some("pusher"), None) => Self::Pusher(id),
            ("v1", Some("openapi.json"), None, ..) => Self::OpenApi,
            ("v1", Some("chats"), Some(id), Some("receipts"), None) => Self::Receipts(id),
            ("v1", Some("settings"), None, ..) => Self::Settings,
            ("v1", Some("search"), None, ..) => Self::Search,
            _ => return None,
        };
        Some(route)
    }

    /// The methods this route takes (the `Allow` header).
    fn method(self) -> &'static str {
        match self {
            Self::Pusher(_) => "GET, POST, DELETE",
            Self::Receipts(_) | Self::Search => "GET",
            Self::Settings => "GET, PUT",
            Self::OpenApi => "GET",
            Self::Healthz
            | Self::Metrics
            | Self::Endpoints
            | Self::Friends
            | Self::Group(_)
            | Self::Chats
            | Self::Presence => "GET",
            Self::Signup
            | Self::Login
            | Self::Logout
            | Self::FriendRequest
            | Self::AcceptFriend(_)
            | Self::CreateDm
            | Self::CreateGroup
            | Self::AddMember(_)
            | Self::ReadMarker(_) => "POST",
            Self::RemoveFriend(_) | Self::RemoveMember(..) => "DELETE",
        }
    }
}

/// Whether a request to `path` may hash a password (signup, login): the
/// transport queues those apart, so cheap requests never wait behind argon2.
pub(crate) fn hashes_password(path: &str) -> bool {
    matches!(Route::parse(path), Some(Route::Signup | Route::Login))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignupBody {
    username: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
    device_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FriendRequestBody {
    username: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadBody {
    seq: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserIdBody {
    user_id: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PusherBody {
    app_id: String,
    pushkey: String,
    #[serde(default)]
    gateway_url: Option<String>,
    #[serde(default)]
    format: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupBody {
    name: String,
    members: Vec<u64>,
}

/// The side-port's shared state; one per process, used by every HTTP worker.
#[derive(Debug)]
pub struct Api {
    store: Arc<Store>,
    mesh: Mesh,
    metrics: Arc<Metrics>,
    endpoints: Endpoints,
    passwords: Passwords,
    limiter: RateLimiter,
    /// Writes other than signup and login, per user (`--user-write-rate-limit`).
    writes: UserRateLimiter,
    /// Friend requests per user (`--friend-request-rate-limit`): each one
    /// looks a username up, so this bounds how fast an account probes names.
    friend_requests: UserRateLimiter,
    /// Consecutive failed logins per username (`--login-backoff-*`).
    accounts: AccountThrottle,
    /// Push settings (gateway URL checks).
    push_config: PushConfig,
    /// The push thread, told of pushers, logouts and read markers.
    push: Option<PushHandle>,
    /// The message search index (`None`: search answers 503).
    search: Option<Arc<crate::search::SearchIndex>>,
    /// Searches per user ([`search::SEARCH_RATE_LIMIT`] a minute).
    searches: UserRateLimiter,
}

/// The outcome of a handler: a success response or an error from the catalogue.
type Handled = Result<Response, Response>;

impl Api {
    /// Builds the API over the shared store, the core mesh (for logout) and the
    /// metrics, with limits from `config`: argon2 cost `config.password_cost`,
    /// at most `config.cores` hashes at once, `config.auth_rate_limit`
    /// signups+logins per address per minute, `config.user_write_rate_limit`
    /// other writes per user per minute.
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        mesh: Mesh,
        metrics: Arc<Metrics>,
        endpoints: Endpoints,
    ) -> Self {
        Self {
            store,
            mesh,
            metrics,
            endpoints,
            passwords: Passwords::new(config.password_cost, config.cores),
            limiter: RateLimiter::with_capacity(config.auth_rate_limit, config.limits.auth_rate_limit_table),
            writes: UserRateLimiter::new(config.user_write_rate_limit),
            friend_requests: UserRateLimiter::new(config.limits.friend_request_rate_limit),
            accounts: AccountThrottle::new(config.limits.login_backoff),
            push_config: config.push.clone(),
            push: None,
            search: None,
            searches: UserRateLimiter::new(search::SEARCH_RATE_LIMIT),
        }
    }

    /// Tells `push` of pusher changes, logouts and read markers from now on.
    #[must_use]
    pub fn with_push(mut self, push: PushHandle) -> Self {
        self.push_config = push.config().clone();
        self.push = Some(push);
        self
    }

    /// Answers `GET /v1/search` from `index` from now on.
    #[must_use]
    pub fn with_search(mut self, index: Arc<crate::search::SearchIndex>) -> Self {
        self.search = Some(index);
        self
    }

    /// The metrics this API reports on `/metrics` (the transport counts answers into them).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Answers one request. Blocking: may hash a password and waits for the
    /// store's fsync on writes. Never panics on any input.
    pub fn handle(&self, req: &Request<'_>) -> Response {
        if let Some(page) = crate::http::web::handle(req) {
            return page;
        }
        let Some(route) = Route::parse(req.path) else {
            return HttpError::NotFound.into();
        };
        if !route.method().split(", ").any(|m| m == req.method) {
            return Response {
                allow: Some(route.method()),
                ..Response::error(HttpError::MethodNotAllowed)
            };
        }
        let result = match route {
            Route::Healthz => Ok(Response::json(200, &json!({"status": "ok"}))),
            Route::Metrics => Ok(Response {
                status: 200,
                body: self.metrics.render(),
                content_type: PROMETHEUS,
                allow: None,
                retry_after: None,
            }),
            Route::Endpoints => Ok(Response::json(200, &json!(&self.endpoints))),
            Route::Signup => self.signup(req),
            Route::Login => self.login(req),
            Route::Logout => self.logout(req),
            Route::Friends => self.list_friends(req),
            Route::FriendRequest => self.request_friend(req),
            Route::AcceptFriend(id) => self.accept_friend(req, id),
            Route::RemoveFriend(id) => self.remove_friend(req, id),
            Route::CreateDm => self.create_dm(req),
            Route::CreateGroup => self.create_group(req),
            Route::Group(id) => self.group(req, id),
            Route::AddMember(id) => self.add_member(req, id),
            Route::RemoveMember(id, user) => self.remove_member(req, id, user),
            Route::Chats => self.chats(req),
            Route::Presence => self.presence(req),
            Route::ReadMarker(id) => self.mark_read(req, id),
            Route::Pusher(id) => match req.method {
                "POST" => self.set_pusher(req, id),
                "DELETE" => self.delete_pusher(req, id),
                _ => self.get_pusher(req, id),
            },
            Route::Receipts(id) => self.receipts(req, id),
            Route::Settings => match req.method {
                "PUT" => self.put_settings(req),
                _ => self.get_settings(req),
            },
            Route::Search => self.search(req),
            Route::OpenApi => Ok(Response {
                status: 200,
                body: OPENAPI.to_owned(),
                content_type: JSON,
                allow: None,
                retry_after: None,
            }),
        };
        result.unwrap_or_else(|error| error)
    }

    fn signup(&self, req: &Request<'_>) -> Handled {
        self.rate_limit(req)?;
        let body: SignupBody = parse_json(req.body)?;
        let username = validate_username(&body.username)?;
        validate_password(&body.password)?;
        // Cheap early answer for a taken name; `create_user` re-checks under its lock.
        if self.store.user_by_name(&username).map_err(store_error)?.is_some() {
            return Err(HttpError::UsernameTaken.into());
        }
        let phc = self.passwords.hash(&body.password).map_err(|e| {
            tracing::error!(error = %e, "password hashing failed");
            Response::error(HttpError::Internal)
        })?;
        let user = self.store.create_user(&username, &phc).map_err(store_error)?;
        tracing::debug!(%user, "signup");
        Ok(Response::json(201, &json!({"user_id": user.0})))
    }

    fn login(&self, req: &Request<'_>) -> Handled {
        self.rate_limit(req)?;
        let body: LoginBody = parse_json(req.body)?;
        validate_device_name(&body.device_name)?;
        if body.password.len() > PASSWORD_MAX {
            // No account has such a password; answer at once, whoever is named.
            return Err(HttpError::InvalidCredentials.into());
        }
        // A name that cannot exist and an unknown name get the same answer, and
        // the same time, as a wrong password.
        let name = validate_username(&body.username);
        // Per-account backoff, keyed alike for existing and unknown names.
        let key = match &name {
            Ok(name) => name.clone(),
            Err(_) => body
                .username
                .chars()
                .take(USERNAME_MAX + 1)
                .collect::<String>()
                .to_lowercase(),
        };
        self.accounts
            .begin(&key, Instant::now())
            .map_err(|seconds| rate_limited(HttpError::AccountThrottled, seconds))?;
        let user = match name {
            Ok(name) => match self.store.user_by_name(&name) {
                Ok(user) => user,
                Err(e) => {
                    self.accounts.failed(&key, Instant::now());
                    return Err(store_error(e));
                }
            },
            Err(_) => None,
        };
        let Some(user) = user else {
            self.passwords.verify_dummy(&body.password);
            self.accounts.failed(&key, Instant::now());
            return Err(HttpError::InvalidCredentials.into());
        };
        if !self.passwords.verify(&body.password, &user.password_phc) {
            self.accounts.failed(&key, Instant::now());
            return Err(HttpError::InvalidCredentials.into());
        }
        self.accounts.succeeded(&key);
        if self.passwords.needs_rehash(&user.password_phc) {
            self.rehash(user.id, &body.password);
        }
        let (device, token) = self
            .store
            .create_device(user.id, &body.device_name)
            .map_err(store_error)?;
        tracing::debug!(user = %user.id, %device, "login");
        Ok(Response::json(
            200,
            &json!({
                "user_id": user.id.0,
                "device_id": device.0,
                "token": token,
                "endpoints": &self.endpoints,
            }),
        ))
    }

    /// Re-hashes `password` at the configured cost and stores it: an account
    /// hashed under an older, cheaper cost is upgraded at its next successful
    /// login (the plaintext exists only then). A failure is logged and the
    /// login still succeeds with the old hash kept.
    fn rehash(&self, user: UserId, password: &str) {
        match self.passwords.hash(password) {
            Ok(phc) => match self.store.set_password(user, &phc) {
                Ok(_) => tracing::info!(%user, "password re-hashed at the current cost"),
                Err(e) => tracing::warn!(%user, error = %e, "password re-hash not stored"),
            },
            Err(e) => tracing::warn!(%user, error = %e, "password re-hash failed"),
        }
    }

    fn logout(&self, req: &Request<'_>) -> Handled {
        let token = bearer(req)?;
        match self.store.revoke(token).map_err(store_error)? {
            Some((user, device)) => {
                self.mesh.close_device(user, device);
                if let Some(push) = &self.push {
                    push.pusher_removed(user, device);
                }
                tracing::debug!(%user, %device, "logout");
                Ok(Response::no_content())
            }
            None => Err(HttpError::InvalidToken.into()),
        }
    }

    fn list_friends(&self, req: &Request<'_>) -> Handled {
        let (user, _) = self.authenticate(req)?;
        let list = self.store.friends(user).map_err(store_error)?;
        let entries = |v: &[(UserId, String)]| {
            v.iter()
                .map(|(id, name)| json!({"user_id": id.0, "username": name}))
                .collect::<Vec<_>>()
        };
        Ok(Response::json(
            200,
            &json!({
                "friends": entries(&list.friends),
                "incoming": entries(&list.incoming),
                "outgoing": entries(&list.outgoing),
            }),
        ))
    }

    fn request_friend(&self, req: &Request<'_>) -> Handled {
        let (user, _) = self.authenticate_write(req)?;
        self.friend_requests
            .check(user, Instant::now())
            .map_err(|seconds| rate_limited(HttpError::UserRateLimited, seconds))?;
        let body: FriendRequestBody = parse_json(req.body)?;
        let name = validate_username(&body.username)?;
        let other = self
            .store
            .user_by_name(&name)
            .map_err(store_error)?
            .ok_or(HttpError::UserNotFound)?;
        if other.id == user {
            return Err(HttpError::CannotBefriendSelf.into());
        }
        let status = match self.store.request_friend(user, other.id).map_err(store_error)? {
            FriendOutcome::Requested => "requested",
            FriendOutcome::BecameFriends => {
                self.friends_changed(user, other.id);
                "friends"
            }
            FriendOutcome::AlreadyFriends => "friends",
        };
        Ok(Response::json(
            200,
            &json!({"status": status, "user_id": other.id.0}),
        ))
    }

    fn accept_friend(&self, req: &Request<'_>, id: &str) -> Handled {
        let (user, _) = self.authenticate_write(req)?;
        let from = parse_user_id(id)?;
        if self.store.accept_friend(user, from).map_err(store_error)? {
            self.friends_changed(user, from);
            Ok(Response::json(
                200,
                &json!({"status": "friends", "user_id": from.0}),
            ))
        } else {
            Err(HttpError::NoFriendRequest.into())
        }
    }

    fn remove_friend(&self, req: &Request<'_>, id: &str) -> Handled {
        let (user, _) = self.authenticate_write(req)?;
        let other = parse_user_id(id)?;
        if self.store.remove_friend(user, other).map_err(store_error)? {
            self.friends_changed(user, other);
            Ok(Response::no_content())
        } else {
            Err(HttpError::NotFriends.into())
        }
    }

    fn create_dm(&self, req: &Request<'_>) -> Handled {
        let (user, _) = self.authenticate_write(req)?;
        let body: UserIdBody = parse_json(req.body)?;
        let other = positive_user_id(body.user_id)?;
        if other == user {
            return Err(HttpError::CannotChatWithSelf.into());
        }
        // A missing user is "not a friend" too: one answer for both, so user
        // ids reveal nothing (the authorization matrix, tests/authz.rs).
        if !self.store.are_friends(user, other).map_err(store_error)? {
            return Err(HttpError::FriendshipRequired.into());
        }
        let (chat, created) = self.store.create_dm(user, other).map_err(store_error)?;
        if created {
            tracing::debug!(%user, %other, %chat, "direct chat created");
        }
        Ok(Response::json(
            if created { 201 } else { 200 },
            &json!({"chat_id": chat.0}),
        ))
    }

    fn create_group(&self, req: &Request<'_>) -> Handled {
        let (owner, _) = self.authenticate_write(req)?;
        let body: GroupBody = parse_json(req.body)?;
        let name = validate_group_name(&body.name)?;
        // Collapse duplicates and the owner, keeping the request's order so that
        // the first offending id is the one named.
        let mut members: Vec<UserId> = Vec::with_capacity(body.members.len().min(MAX_GROUP_MEMBERS));
        for raw in body.members {
            let id = positive_user_id(raw)?;
            if id != owner && !members.contains(&id) {
                if members.len() + 1 >= MAX_GROUP_MEMBERS {
                    return Err(Response::error_with(
                        HttpError::TooManyMembers,
                        &format!("a group has at most {MAX_GROUP_MEMBERS} members, its owner included"),
                    ));
                }
                members.push(id);
            }
        }
        for member in &members {
            if !self.store.are_friends(owner, *member).map_err(store_error)? {
                return Err(Response::error_with(
                    HttpError::FriendshipRequired,
                    &format!("user {member} is not your friend; group members must be the owner's friends"),
                ));
            }
        }
        let chat = self
            .store
            .create_group(owner, name, &members)
            .map_err(store_error)?;
        tracing::debug!(%owner, %chat, members = members.len() + 1, "group created");
        Ok(Response::json(201, &json!({"chat_id": chat.0})))
    }

    fn group(&self, req: &Request<'_>, id: &str) -> Handled {
        let (user, _) = self.authenticate(req)?;
        let info = self.group_of_member(user, parse_chat_id(id)?)?;
        let mut members = Vec::with_capacity(info.members.len());
        for member in &info.members {
            let name = self
                .store
                .username(*member)
                .map_err(store_error)?
                .ok_or_else(|| {
                    tracing::error!(chat = %info.id, %member, "a group member has no account");
                    Response::error(HttpError::Internal)
                })?;
            members.push(json!({"user_id": member.0, "username": name}));
        }
        Ok(Response::json(
            200,
            &json!({
                "chat_id": info.id.0,
                "name": info.name,
                "owner": info.owner.0,
                "members": members,
            }),
        ))
    }

    fn add_member(&self, req: &Request<'_>, id: &str) -> Handled {
        let (actor, _) = self.authenticate_write(req)?;
        let chat = parse_chat_id(id)?;
        let body: UserIdBody = parse_json(req.body)?;
        let user = positive_user_id(body.user_id)?;
        let info = self.group_of_member(actor, chat)?;
        if self.store.username(user).map_err(store_error)?.is_none() {
            // Answered as the owner core answers an existing non-friend of the
            // owner (after `not_owner` for anyone else): user ids reveal nothing.
            return Err(if info.owner == actor {
                membership_error(MembershipError::NotFriends)
            } else {
                HttpError::NotOwner.into()
            });
        }
        if self.store.space().is_low() {
            return Err(store_error(StoreError::StorageFull));
        }
        self.change_membership(chat, actor, user, true)?;
        Ok(Response::json(
            201,
            &json!({"chat_id": chat.0, "user_id": user.0}),
        ))
    }

    fn remove_member(&self, req: &Request<'_>, id: &str, user: &str) -> Handled {
        let (actor, _) = self.authenticate_write(req)?;
        let chat = parse_chat_id(id)?;
        let user = parse_user_id(user)?;
        self.group_of_member(actor, chat)?;
        self.change_membership(chat, actor, user, false)?;
        Ok(Response::no_content())
    }

    fn chats(&self, req: &Request<'_>) -> Handled {
        let (user, _) = self.authenticate(req)?;
        let ids = self.store.user_chats(user).map_err(store_error)?;
        let mut chats = Vec::with_capacity(ids.len());
        for id in ids {
            // A chat row can vanish only through corruption; skip what cannot be shown.
            let Some(info) = self.store.chat(id).map_err(store_error)? else {
                tracing::error!(chat = %id, %user, "user_chats names a missing chat");
                continue;
            };
            let (kind, name) = match info.kind {
                ChatKind::Group => ("group", info.name),
                ChatKind::Direct => {
                    // A DM is named after the other member, as the caller sees it.
                    let peer = info.members.iter().copied().find(|m| *m != user);
                    let name = match peer {
                        Some(peer) => self
                            .store
                            .username(peer)
                            .map_err(store_error)?
                            .unwrap_or_default(),
                        None => String::new(),
                    };
                    ("direct", name)
                }
            };
            let last_seq = self.store.last_seq(id).map_err(store_error)?;
            let read = self
                .store
                .read_marker(user, id)
                .map_err(store_error)?
                .min(last_seq);
            let unread = self.store.unread(user, id, read, last_seq).map_err(store_error)?;
            chats.push(json!({
                "chat_id": id.0, "kind": kind, "name": name, "last_seq": last_seq.0,
                "read_seq": read.0, "unread": unread,
            }));
        }
        Ok(Response::json(200, &json!({"chats": chats})))
    }

    /// `POST /v1/chats/{id}/read {"seq": n}`: the caller has read `chat` up to
    /// `n` (capped at the chat's last seq; the marker never moves back).
    fn mark_read(&self, req: &Request<'_>, id: &str) -> Handled {
        let (user, _) = self.authenticate_write(req)?;
        let chat = parse_chat_id(id)?;
        let body: ReadBody = parse_json(req.body)?;
        if self
            .store
            .member_since(chat, user)
            .map_err(store_error)?
            .is_none()
        {
            return Err(HttpError::UnknownChat.into());
        }
        let last_seq = self.store.last_seq(chat).map_err(store_error)?;
        let seq = crate::ids::Seq(body.seq.min(last_seq.0));
        let read = self.store.set_read_marker(user, chat, seq).map_err(store_error)?;
        if let Some(push) = &self.push {
            push.read(user, chat, read);
        }
        self.read_marker_moved(user, chat, read);
        let unread = self
            .store
            .unread(user, chat, read, last_seq)
            .map_err(store_error)?;
        Ok(Response::json(
            200,
            &json!({"chat_id": chat.0, "read_seq": read.0, "unread": unread}),
        ))
    }

    /// `POST /v1/devices/{id}/pusher`: registers (or replaces) the pusher of
    /// one of the caller's own devices.
    fn set_pusher(&self, req: &Request<'_>, id: &str) -> Handled {
        let (user, _) = self.authenticate_write(req)?;
        let device = self.own_device(user, id)?;
        let body: PusherBody = parse_json(req.body)?;
        let app_ok = (1..=APP_ID_MAX).contains(&body.app_id.len())
            && body.app_id.bytes().all(|b| b.is_ascii_graphic());
        let key_ok =
            (1..=PUSHKEY_MAX).contains(&body.pushkey.len()) && !body.pushkey.chars().any(char::is_control);
        let format = match body.format.as_deref() {
            None | Some("content_free") => Some(PushFormat::ContentFree),
            Some("with_text") => Some(PushFormat::WithText),
            Some(_) => None,
        };
        let (true, true, Some(format)) = (app_ok, key_ok, format) else {
            return Err(HttpError::InvalidPusher.into());
        };
        let gateway_url =
            check_gateway_url(&self.push_config, body.gateway_url.as_deref()).map_err(|e| -> Response {
                match e {
                    GatewayUrlError::NotAllowed => HttpError::GatewayNotAllowed.into(),
                    GatewayUrlError::NoDefault => HttpError::NoPushGateway.into(),
                    _ => HttpError::InvalidGatewayUrl.into(),
                }
            })?;
        let existed = self.store.pusher(user, device).map_err(store_error)?.is_some();
        let pusher = Pusher {
            user,
            device,
            app_id: body.app_id,
            pushkey: body.pushkey,
            gateway_url,
            format,
            created_ms: unix_ms(),
        };
        self.store.set_pusher(&pusher).map_err(store_error)?;
        let answer = pusher_json(&pusher);
        if let Some(push) = &self.push {
            push.pusher_set(pusher);
        }
        tracing::debug!(%user, %device, "pusher set");
        Ok(Response::json(if existed { 200 } else { 201 }, &answer))
    }

    /// `GET /v1/devices/{id}/pusher`.
    fn get_pusher(&self, req: &Request<'_>, id: &str) -> Handled {
        let (user, _) = self.authenticate(req)?;
        let device = self.own_device(user, id)?;
        match self.store.pusher(user, device).map_err(store_error)? {
            Some(pusher) => Ok(Response::json(200, &pusher_json(&pusher))),
            None => Err(HttpError::NoPusher.into()),
        }
    }

    /// `DELETE /v1/devices/{id}/pusher`.
    fn delete_pusher(&self, req: &Request<'_>, id: &str) -> Handled {
        let (user, _) = self.authenticate_write(req)?;
        let device = self.own_device(user, id)?;
        if !self
            .store
            .remove_pusher(user, device, None)
            .map_err(store_error)?
        {
            return Err(HttpError::NoPusher.into());
        }
        if let Some(push) = &self.push {
            push.pusher_removed(user, device);
        }
        Ok(Response::no_content())
    }

    /// The `{device_id}` segment if it names one of `user`'s logged-in devices;
    /// `unknown_device` otherwise (another user's device is not revealed).
    fn own_device(&self, user: UserId, id: &str) -> Result<DeviceId, Response> {
        let device = parse_id(id).map(DeviceId).ok_or(HttpError::InvalidDeviceId)?;
        match self.store.device(user, device).map_err(store_error)? {
            Some(_) => Ok(device),
            None => Err(HttpError::UnknownDevice.into()),
        }
    }

    /// The group `chat` if `user` is a member of it; otherwise (no such chat, a
    /// DM, not a member) `unknown_chat`, so that ids do not reveal what exists.
    fn group_of_member(&self, user: UserId, chat: ChatId) -> Result<ChatInfo, Response> {
        match self.store.chat(chat).map_err(store_error)? {
            Some(info) if info.kind == ChatKind::Group && info.members.contains(&user) => Ok(info),
            _ => Err(HttpError::UnknownChat.into()),
        }
    }

    /// Hands a membership change to the chat's owner core and waits for its answer.
    fn change_membership(
        &self,
        chat: ChatId,
        actor: UserId,
        user: UserId,
        add: bool,
    ) -> Result<(), Response> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let change = MembershipChange {
            chat,
            actor,
            user,
            add,
        };
        let core = chat.owner_core(self.mesh.len());
        if self
            .mesh
            .send_blocking(core, Command::Membership { change, reply })
            .is_err()
        {
            tracing::warn!(%chat, %core, "membership change: the owner core is gone");
            return Err(HttpError::Unavailable.into());
        }
        match answer.recv_timeout(MEMBERSHIP_DEADLINE) {
            Ok(Ok(())) => {
                tracing::debug!(%chat, %actor, %user, add, "membership changed");
                Ok(())
            }
            Ok(Err(error)) => Err(membership_error(error)),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                tracing::warn!(%chat, %core, "membership change: no answer from the owner core in time");
                Err(HttpError::Unavailable.into())
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                tracing::warn!(%chat, %core, "membership change: the owner core dropped it (stopping?)");
                Err(HttpError::Unavailable.into())
            }
        }
    }

    /// Tells both users' home cores that their friendship changed (it is
    /// committed already), so presence starts or stops flowing between them.
    fn friends_changed(&self, a: UserId, b: UserId) {
        let cores = self.mesh.len();
        let (home_a, home_b) = (a.home_core(cores), b.home_core(cores));
        // One command per distinct home core: a core handles both users it is home to.
        let homes = if home_a == home_b {
            vec![home_a]
        } else {
            vec![home_a, home_b]
        };
        for core in homes {
            if self
                .mesh
                .send_blocking(core, Command::FriendsChanged { a, b })
                .is_err()
            {
                tracing::warn!(%core, "friendship change: the home core is gone (stopping?)");
            }
        }
    }

    /// `GET /v1/presence?user_id=N`: a friend's presence (or the caller's own),
    /// answered by the user's home core.
    fn presence(&self, req: &Request<'_>) -> Handled {
        let (caller, _) = self.authenticate(req)?;
        let raw = query_param(req.path, "user_id").ok_or_else(|| {
            Response::error_with(HttpError::MissingField, "missing query parameter user_id")
        })?;
        let user = parse_user_id(raw)?;
        // Not a friend and no such user answer alike: user ids reveal nothing.
        if user != caller && !self.store.are_friends(caller, user).map_err(store_error)? {
            return Err(Response::error_with(
                HttpError::FriendshipRequired,
                "only friends see each other's presence",
            ));
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        let core = user.home_core(self.mesh.len());
        if self
            .mesh
            .send_blocking(core, Command::PresenceQuery { user, reply })
            .is_err()
        {
            return Err(HttpError::Unavailable.into());
        }
        match answer.recv_timeout(MEMBERSHIP_DEADLINE) {
            Ok(Ok(p)) => Ok(Response::json(
                200,
                &json!({"user_id": p.user.0, "online": p.online, "last_seen_ms": p.last_seen_ms}),
            )),
            Ok(Err(e)) => {
                tracing::error!(error = %e, %user, "presence: store failed");
                Err(HttpError::Unavailable.into())
            }
            Err(_) => {
                tracing::warn!(%user, %core, "presence: no answer from the home core in time");
                Err(HttpError::Unavailable.into())
            }
        }
    }

    fn authenticate(&self, req: &Request<'_>) -> Result<(UserId, DeviceId), Response> {
        let token = bearer(req)?;
        self.store
            .authenticate(token)
            .map_err(store_error)?
            .ok_or_else(|| HttpError::InvalidToken.into())
    }

    /// [`Api::authenticate`] for a write other than signup and login, then one
    /// token of the user's write bucket: 429 `rate_limited` with `Retry-After`
    /// when it is empty. Checked before the body is read, so refused requests
    /// cost a token lookup and nothing more. Logout is not limited: revoking a
    /// token must work even while someone floods writes with another of the
    /// user's tokens.
    fn authenticate_write(&self, req: &Request<'_>) -> Result<(UserId, DeviceId), Response> {
        let (user, device) = self.authenticate(req)?;
        self.writes
            .check(user, Instant::now())
            .map_err(|seconds| rate_limited(HttpError::UserRateLimited, seconds))?;
        Ok((user, device))
    }

    fn rate_limit(&self, req: &Request<'_>) -> Result<(), Response> {
        self.limiter
            .check(req.remote, Instant::now())
            .map_err(|seconds| rate_limited(HttpError::RateLimited, seconds))
    }
}

/// A pusher as the API shows it (to its own user only).
fn pusher_json(p: &Pusher) -> serde_json::Value {
    json!({
        "device_id": p.device.0,
        "app_id": p.app_id,
        "pushkey": p.pushkey,
        "gateway_url": p.gateway_url,
        "format": p.format.as_str(),
        "created_ms": p.created_ms,
    })
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `Retry-After` of a 507 `storage_full`, in seconds: the reserve is re-checked
/// every 100 ms, but freeing disk space is an operator's job, not a moment's.
const STORAGE_FULL_RETRY_AFTER_S: u64 = 10;

/// A 429 answer with its `Retry-After` (whole seconds).
fn rate_limited(error: HttpError, retry_after: u64) -> Response {
    Response {
        retry_after: Some(retry_after),
        ..Response::error(error)
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer<'a>(req: &Request<'a>) -> Result<&'a str, Response> {
    let value = req.authorization.ok_or(HttpError::InvalidToken)?;
    match value.trim().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
        _ => Err(HttpError::InvalidToken.into()),
    }
}

/// The value of `name` in the request target's query string (`?a=1&b=2`), if
/// present. Values are used as given (ids need no percent-decoding).
fn query_param<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path.split_once('?')?;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

/// Parses a JSON body into `T`, mapping each kind of failure to its code.
///
/// Only a JSON object is accepted: serde would also read a struct from an
/// array (`["bob","pw"]`, positionally), which no route documents.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => {}
        Some(b'[' | b'"' | b't' | b'f' | b'n' | b'-' | b'0'..=b'9') => {
            return Err(Response::error_with(
                HttpError::InvalidType,
                "the body must be a JSON object",
            ));
        }
        // Not the start of any JSON value: serde reports the syntax error.
        Some(_) => {}
    }
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        let text = e.to_string();
        let kind = match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => HttpError::MalformedJson,
            Category::Data if text.starts_with("unknown field") => HttpError::UnknownField,
            Category::Data if text.starts_with("missing field") => HttpError::MissingField,
            Category::Data => HttpError::InvalidType,
        };
        Response::error_with(kind, &text)
    })
}

/// Validates a username and returns its canonical (lowercase) form: 3–32
/// characters of `[a-z0-9_.-]` after ASCII lowercasing. Non-ASCII input is refused
/// outright (so no Unicode case folding can map look-alikes onto a name).
///
/// # Errors
/// `invalid_username`.
pub fn validate_username(name: &str) -> Result<String, HttpError> {
    let ok = (USERNAME_MIN..=USERNAME_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(HttpError::InvalidUsername)
    }
}

fn validate_password(password: &str) -> Result<(), HttpError> {
    if (PASSWORD_MIN..=PASSWORD_MAX).contains(&password.len()) {
        Ok(())
    } else {
        Err(HttpError::InvalidPassword)
    }
}

fn validate_device_name(name: &str) -> Result<(), HttpError> {
    let chars = name.chars().count();
    if (1..=DEVICE_NAME_MAX).contains(&chars) && !name.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(HttpError::InvalidDeviceName)
    }
}

/// Validates a group name: 1–64 characters, not only whitespace, no control
/// characters. Returns it unchanged (names are shown as given).
///
/// # Errors
/// `invalid_group_name`.
pub fn validate_group_name(name: &str) -> Result<&str, HttpError> {
    let chars = name.chars().count();
    if (1..=GROUP_NAME_MAX).contains(&chars) && !name.trim().is_empty() && !name.chars().any(char::is_control)
    {
        Ok(name)
    } else {
        Err(HttpError::InvalidGroupName)
    }
}

/// A positive id path segment: decimal digits only, not zero.
fn parse_id(segment: &str) -> Option<u64> {
    if segment.is_empty() || !segment.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    segment.parse::<u64>().ok().filter(|id| *id > 0)
}

/// A `{user_id}` path segment.
fn parse_user_id(segment: &str) -> Result<UserId, HttpError> {
    parse_id(segment).map(UserId).ok_or(HttpError::InvalidUserId)
}

/// A `{chat_id}` path segment.
fn parse_chat_id(segment: &str) -> Result<ChatId, HttpError> {
    parse_id(segment).map(ChatId).ok_or(HttpError::InvalidChatId)
}

/// A `user_id` from a JSON body: ids start at 1.
fn positive_user_id(raw: u64) -> Result<UserId, HttpError> {
    if raw == 0 {
        Err(HttpError::InvalidUserId)
    } else {
        Ok(UserId(raw))
    }
}

/// The status and code for a membership change the owner core refused.
fn membership_error(error: MembershipError) -> Response {
    let kind = match error {
        // A DM id under /v1/groups is as unknown as a missing id.
        MembershipError::UnknownChat | MembershipError::NotAGroup => HttpError::UnknownChat,
        MembershipError::NotOwner => HttpError::NotOwner,
        MembershipError::NotFriends => {
            return Response::error_with(
                HttpError::FriendshipRequired,
                "that user is not a friend of the group's owner",
            );
        }
        MembershipError::TooManyMembers => HttpError::TooManyMembers,
        MembershipError::AlreadyMember => HttpError::AlreadyMember,
        MembershipError::NotMember => HttpError::NotMember,
        MembershipError::Store(e) => {
            tracing::error!(error = %e, "membership change: store failed");
            HttpError::Unavailable
        }
    };
    kind.into()
}

fn store_error(error: StoreError) -> Response {
    match error {
        StoreError::UsernameTaken => HttpError::UsernameTaken.into(),
        StoreError::UnknownUser(_) => HttpError::UserNotFound.into(),
        StoreError::SelfFriendship => HttpError::CannotBefriendSelf.into(),
        StoreError::SelfChat => HttpError::CannotChatWithSelf.into(),
        StoreError::TooManyMembers { .. } => HttpError::TooManyMembers.into(),
        StoreError::TooManyFriends { user } => Response::error_with(
            HttpError::TooManyFriends,
            &format!("user {user} already has {MAX_FRIENDS} friends, the most a user has"),
        ),
        StoreError::TooManyOutgoingRequests => HttpError::TooManyOutgoingRequests.into(),
        StoreError::TooManyIncomingRequests => HttpError::TooManyIncomingRequests.into(),
        StoreError::Io(e) => {
            tracing::error!(error = %e, "store unavailable");
            HttpError::Unavailable.into()
        }
        StoreError::StorageFull => Response {
            retry_after: Some(STORAGE_FULL_RETRY_AFTER_S),
            ..Response::error(HttpError::StorageFull)
        },
        other => {
            tracing::error!(error = %other, "store error");
            HttpError::Internal.into()
        }
    }
}

mod conversation;
mod search;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests;
