//! The side-port's error catalogue: every error the HTTP API can answer, with its
//! status and its stable `code` string, in one table.
//!
//! Clients branch on `code`, never on `message` (human text that may change). The
//! body is always `{"error":{"code":"…","message":"…"}}`. Each code has one
//! meaning; `not_friends` alone has two statuses for that one meaning ("you and
//! that user are not friends"): 404 when the friendship is the resource asked
//! for (`DELETE /v1/friends/{id}`), 403 when an operation needs it (a DM, a group
//! member).
//!
//! | status | code                   | when |
//! |--------|------------------------|------|
//! | 400    | `bad_request`          | the HTTP request itself is malformed (request line, headers, `Content-Length`) |
//! | 400    | `malformed_json`       | the body is not JSON (syntax error, truncated, not UTF-8) |
//! | 400    | `unknown_field`        | the JSON object has a field the endpoint does not take |
//! | 400    | `missing_field`        | a required field is absent |
//! | 400    | `invalid_type`         | a field has the wrong type (or the body is not an object) |
//! | 400    | `invalid_username`     | username not 3–32 characters of `[a-z0-9_.-]` after lowercasing |
//! | 400    | `invalid_password`     | password not 8–1024 bytes |
//! | 400    | `invalid_device_name`  | device name not 1–64 characters, or has control characters |
//! | 400    | `invalid_user_id`      | a user id (path segment, query parameter or body field) is not a positive integer |
//! | 400    | `cannot_befriend_self` | a friend request to yourself |
//! | 400    | `invalid_chat_id`      | a `{chat_id}` path segment is not a positive integer |
//! | 400    | `invalid_group_name`   | group name not 1–64 characters, blank, or has control characters |
//! | 400    | `cannot_chat_with_self`| a direct chat with yourself |
//! | 401    | `invalid_token`        | missing, malformed, unknown or revoked `Authorization: Bearer` token |
//! | 401    | `invalid_credentials`  | login with an unknown username or a wrong password (same answer for both) |
//! | 403    | `not_friends`          | a DM with, or a group member who is, not a friend (of the group's owner); the presence of a non-friend |
//! | 403    | `not_owner`            | only a group's owner adds members or removes others |
//! | 404    | `not_found`            | no such route |
//! | 404    | `user_not_found`       | the named user does not exist |
//! | 404    | `no_friend_request`    | accepting a request that was never made |
//! | 404    | `not_friends`          | removing a relation that does not exist |
//! | 404    | `unknown_chat`         | no such group, or the caller is not a member (existence is not revealed) |
//! | 404    | `not_member`           | removing a user who is not a member of the group |
//! | 405    | `method_not_allowed`   | the route exists but not with this method (`Allow` lists the right ones) |
//! | 409    | `username_taken`       | signup with a name that exists (case-insensitively) |
//! | 409    | `already_member`       | adding a user who is already a member |
//! | 409    | `too_many_members`     | a group would have more than 100 members (owner included) |
//! | 409    | `too_many_friends`     | a friendship would give you or the other user more than 5,000 friends |
//! | 409    | `too_many_outgoing_requests` | you already have 1,000 friend requests waiting for an answer |
//! | 409    | `too_many_incoming_requests` | the user you asked already has 1,000 requests waiting for their answer |
//! | 411    | `length_required`      | a body sent without `Content-Length` (chunked bodies are not accepted) |
//! | 413    | `body_too_large`       | body over 64 KiB |
//! | 429    | `rate_limited`         | too many signups/logins from this address, too many failed logins at this account (any address), or too many writes (friend requests) from this account; retry after `Retry-After` seconds |
//! | 431    | `headers_too_large`    | request line plus headers over 16 KiB, or over 64 headers |
//! | 500    | `internal`             | a bug or a corrupt record; logged |
//! | 503    | `unavailable`          | the store failed, the server is overloaded/stopping, or a group change got no answer in 10 s; retry later |
//! | 400    | `invalid_device_id`    | a `{device_id}` path segment is not a positive integer |
//! | 400    | `invalid_pusher`       | `app_id` not 1–64 bytes of printable ASCII, `pushkey` not 1–512 bytes without control characters, or an unknown `format` |
//! | 400    | `invalid_gateway_url`  | `gateway_url` is not `https://host[:port]/_matrix/push/v1/notify` (or `http://`) |
//! | 400    | `no_push_gateway`      | no `gateway_url` given and the server has no `--push-gateway` |
//! | 403    | `gateway_not_allowed`  | `gateway_url` names a host outside `--push-gateway-allow` |
//! | 404    | `unknown_device`       | no such device among the caller's own (other users' devices are not revealed) |
//! | 404    | `no_pusher`            | the device has no pusher |
//! | 400    | `invalid_query`        | `GET /v1/search`: the query is empty, has no searchable words, is over 512 bytes or 16 terms, has an unclosed quote or bad percent-encoding; or `limit`, `before_seq` or `order` is out of range (the message says which) |
//! | 429    | `rate_limited`         | (also) too many searches from this account (`GET /v1/search`, 60 a minute); retry after `Retry-After` seconds |
//! | 507    | `storage_full`         | the disk is below the free-space reserve (`--disk-reserve`): signup, friend requests and acceptances, new chats, group members and pushers are refused (login, logout, reads and read markers still work); retry after `Retry-After` seconds |

use std::fmt::Write as _;

/// One entry of the error catalogue (see the module docs for the table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpError {
    /// 400: the HTTP request itself is malformed.
    BadRequest,
    /// 400: the body is not JSON.
    MalformedJson,
    /// 400: the JSON object has a field the endpoint does not take.
    UnknownField,
    /// 400: a required field is absent.
    MissingField,
    /// 400: a field has the wrong type.
    InvalidType,
    /// 400: username fails validation.
    InvalidUsername,
    /// 400: password fails validation.
    InvalidPassword,
    /// 400: device name fails validation.
    InvalidDeviceName,
    /// 400: a user id (path segment, query parameter or body field) is not a positive integer.
    InvalidUserId,
    /// 400: a friend request to yourself.
    CannotBefriendSelf,
    /// 400: a `{chat_id}` path segment is not a positive integer.
    InvalidChatId,
    /// 400: group name fails validation.
    InvalidGroupName,
    /// 400: a direct chat with yourself.
    CannotChatWithSelf,
    /// 401: missing or bad bearer token.
    InvalidToken,
    /// 401: unknown user or wrong password.
    InvalidCredentials,
    /// 403: the operation needs a friendship that does not exist (code `not_friends`).
    FriendshipRequired,
    /// 403: only the group's owner may do that.
    NotOwner,
    /// 404: no such route.
    NotFound,
    /// 404: the named user does not exist.
    UserNotFound,
    /// 404: no pending request from that user.
    NoFriendRequest,
    /// 404: no relation with that user.
    NotFriends,
    /// 404: no such group, or the caller is not a member of it.
    UnknownChat,
    /// 404: the user is not a member of the group.
    NotMember,
    /// 405: the route exists with other methods.
    MethodNotAllowed,
    /// 409: the username exists.
    UsernameTaken,
    /// 409: the user is already a member of the group.
    AlreadyMember,
    /// 409: the group would exceed its member limit.
    TooManyMembers,
    /// 409 (limit hit): a friendship would take one of the two users past
    /// [`crate::store::MAX_FRIENDS`].
    TooManyFriends,
    /// 409 (limit hit): the caller already has
    /// [`crate::store::MAX_OUTGOING_REQUESTS`] requests waiting for an answer.
    TooManyOutgoingRequests,
    /// 409 (limit hit): the user asked already has
    /// [`crate::store::MAX_INCOMING_REQUESTS`] requests waiting for their answer.
    TooManyIncomingRequests,
    /// 411: a body without `Content-Length`.
    LengthRequired,
    /// 413: body over the limit.
    BodyTooLarge,
    /// 429: too many signups/logins from this address.
    RateLimited,
    /// 429 (code `rate_limited`): too many writes from this account
    /// (`--user-write-rate-limit`).
    UserRateLimited,
    /// 431: request head over the limit.
    HeadersTooLarge,
    /// 500: a bug or a corrupt record.
    Internal,
    /// 503: the store failed, or the server is overloaded or stopping.
    Unavailable,
    /// 400: a `{device_id}` path segment is not a positive integer.
    InvalidDeviceId,
    /// 400: a pusher's `app_id`, `pushkey` or `format` fails validation.
    InvalidPusher,
    /// 400: a pusher's `gateway_url` is not a notify URL.
    InvalidGatewayUrl,
    /// 400: no `gateway_url` and no `--push-gateway`.
    NoPushGateway,
    /// 403 (refused by policy): the gateway host is not on `--push-gateway-allow`.
    GatewayNotAllowed,
    /// 404: not one of the caller's devices.
    UnknownDevice,
    /// 404: the device has no pusher.
    NoPusher,
    /// 429 (code `rate_limited`; limit hit): too many failed logins at this
    /// account, from any address (`--login-backoff-*`).
    AccountThrottled,
    /// 400: a search query or one of its parameters fails validation.
    InvalidQuery,
    /// 429 (code `rate_limited`; limit hit): too many searches from this account.
    SearchRateLimited,
    /// 507: the disk is below the free-space reserve (`--disk-reserve`); the
    /// write was not made. Retry once space is freed (`Retry-After`).
    StorageFull,
}

impl HttpError {
    /// Every entry of the catalogue, in table order (the tests check that no
    /// variant is missing and that each status has its reason phrase).
    pub const ALL: [HttpError; 48] = [
        Self::BadRequest,
        Self::MalformedJson,
        Self::UnknownField,
        Self::MissingField,
        Self::InvalidType,
        Self::InvalidUsername,
        Self::InvalidPassword,
        Self::InvalidDeviceName,
        Self::InvalidUserId,
        Self::CannotBefriendSelf,
        Self::InvalidChatId,
        Self::InvalidGroupName,
        Self::CannotChatWithSelf,
        Self::InvalidToken,
        Self::InvalidCredentials,
        Self::FriendshipRequired,
        Self::NotOwner,
        Self::NotFound,
        Self::UserNotFound,
        Self::NoFriendRequest,
        Self::NotFriends,
        Self::UnknownChat,
        Self::NotMember,
        Self::MethodNotAllowed,
        Self::UsernameTaken,
        Self::AlreadyMember,
        Self::TooManyMembers,
        Self::TooManyFriends,
        Self::TooManyOutgoingRequests,
        Self::TooManyIncomingRequests,
        Self::LengthRequired,
        Self::BodyTooLarge,
        Self::RateLimited,
        Self::UserRateLimited,
        Self::HeadersTooLarge,
        Self::Internal,
        Self::Unavailable,
        Self::InvalidDeviceId,
        Self::InvalidPusher,
        Self::InvalidGatewayUrl,
        Self::NoPushGateway,
        Self::GatewayNotAllowed,
        Self::UnknownDevice,
        Self::NoPusher,
        Self::AccountThrottled,
        Self::StorageFull,
        Self::InvalidQuery,
        Self::SearchRateLimited,
    ];

    /// The catalogue: `(status, code, default message)`.
    pub fn parts(self) -> (u16, &'static str, &'static str) {
        match self {
            Self::BadRequest => (400, "bad_request", "malformed HTTP request"),
            Self::MalformedJson => (400, "malformed_json", "the body is not valid JSON"),
            Self::UnknownField => (
                400,
                "unknown_field",
                "the body has a field this endpoint does not take",
            ),
            Self::MissingField => (400, "missing_field", "the body lacks a required field"),
            Self::InvalidType => (400, "invalid_type", "a field of the body has the wrong type"),
            Self::InvalidUsername => (
                400,
                "invalid_username",
                "usernames are 3 to 32 characters of a-z, 0-9, '_', '.', '-' (case-insensitive)",
            ),
            Self::InvalidPassword => (400, "invalid_password", "passwords are 8 to 1024 bytes"),
            Self::InvalidDeviceName => (
                400,
                "invalid_device_name",
                "device names are 1 to 64 characters without control characters",
            ),
            Self::InvalidUserId => (400, "invalid_user_id", "user ids are positive integers"),
            Self::CannotBefriendSelf => (400, "cannot_befriend_self", "you cannot befriend yourself"),
            Self::InvalidChatId => (400, "invalid_chat_id", "chat ids are positive integers"),
            Self::InvalidGroupName => (
                400,
                "invalid_group_name",
                "group names are 1 to 64 characters, not blank, without control characters",
            ),
            Self::CannotChatWithSelf => (400, "cannot_chat_with_self", "a direct chat needs another user"),
            Self::InvalidToken => (
                401,
                "invalid_token",
                "missing, unknown or revoked token (send 'Authorization: Bearer <token>')",
            ),
            Self::InvalidCredentials => (401, "invalid_credentials", "wrong username or password"),
            Self::FriendshipRequired => (403, "not_friends", "you can only chat with your friends"),
            Self::NotOwner => (
                403,
                "not_owner",
                "only the group's owner adds members or removes others",
            ),
            Self::NotFound => (404, "not_found", "no such endpoint"),
            Self::UserNotFound => (404, "user_not_found", "no such user"),
            Self::NoFriendRequest => (
                404,
                "no_friend_request",
                "that user has not asked to be your friend",
            ),
            Self::NotFriends => (404, "not_friends", "no friendship or request with that user"),
            Self::UnknownChat => (404, "unknown_chat", "no such chat"),
            Self::NotMember => (404, "not_member", "that user is not a member of the group"),
            Self::MethodNotAllowed => (
                405,
                "method_not_allowed",
                "this endpoint does not take that method",
            ),
            Self::UsernameTaken => (409, "username_taken", "that username is taken"),
            Self::AlreadyMember => (
                409,
                "already_member",
                "that user is already a member of the group",
            ),
            Self::TooManyMembers => (
                409,
                "too_many_members",
                "a group has at most 100 members, its owner included",
            ),
            Self::TooManyFriends => (409, "too_many_friends", "a user has at most 5000 friends"),
            Self::TooManyOutgoingRequests => (
                409,
                "too_many_outgoing_requests",
                "you have 1000 friend requests waiting for an answer; withdraw some first",
            ),
            Self::TooManyIncomingRequests => (
                409,
                "too_many_incoming_requests",
                "that user has 1000 friend requests waiting for their answer",
            ),
            Self::LengthRequired => (
                411,
                "length_required",
                "send the body with a Content-Length header",
            ),
            Self::BodyTooLarge => (413, "body_too_large", "request bodies are limited to 64 KiB"),
            Self::RateLimited => (
                429,
                "rate_limited",
                "too many signups or logins from your address; retry later",
            ),
            Self::UserRateLimited => (
                429,
                "rate_limited",
                "too many writes from your account; retry after Retry-After seconds",
            ),
            Self::HeadersTooLarge => (431, "headers_too_large", "request headers are too large"),
            Self::Internal => (500, "internal", "internal server error"),
            Self::Unavailable => (503, "unavailable", "service unavailable; retry later"),
            Self::InvalidDeviceId => (400, "invalid_device_id", "device ids are positive integers"),
            Self::InvalidPusher => (
                400,
                "invalid_pusher",
                "app_id is 1 to 64 bytes of printable ASCII, pushkey 1 to 512 bytes without control \
                 characters, format \"content_free\" or \"with_text\"",
            ),
            Self::InvalidGatewayUrl => (
                400,
                "invalid_gateway_url",
                "gateway_url is http://host[:port]/_matrix/push/v1/notify (no https yet)",
            ),
            Self::NoPushGateway => (
                400,
                "no_push_gateway",
                "this server has no default push gateway: give a gateway_url",
            ),
            Self::GatewayNotAllowed => (
                403,
                "gateway_not_allowed",
                "that push gateway host is not allowed on this server",
            ),
            Self::UnknownDevice => (404, "unknown_device", "no such device of yours"),
            Self::NoPusher => (404, "no_pusher", "that device has no pusher"),
            Self::AccountThrottled => (
                429,
                "rate_limited",
                "too many failed logins at this account; retry after Retry-After seconds",
            ),
            Self::InvalidQuery => (400, "invalid_query", "the search query is malformed or too big"),
            Self::SearchRateLimited => (
                429,
                "rate_limited",
                "too many searches from your account; retry after Retry-After seconds",
            ),
            Self::StorageFull => (
                507,
                "storage_full",
                "the server's disk is below its free-space reserve; retry later",
            ),
        }
    }

    /// The HTTP status.
    pub fn status(self) -> u16 {
        self.parts().0
    }

    /// The stable machine-readable code.
    pub fn code(self) -> &'static str {
        self.parts().1
    }

    /// The default human-readable message.
    pub fn message(self) -> &'static str {
        self.parts().2
    }

    /// The JSON error body with the default message.
    pub fn body(self) -> String {
        self.body_with(self.message())
    }

    /// The JSON error body with a more specific message.
    pub fn body_with(self, message: &str) -> String {
        let mut out = String::with_capacity(48 + message.len());
        let _ = write!(
            out,
            r#"{{"error":{{"code":"{}","message":{}}}}}"#,
            self.code(),
            serde_json::Value::from(message)
        );
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_json_with_code_and_message() {
        let body = HttpError::UsernameTaken.body_with("name \"x\" is taken");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "username_taken");
        assert_eq!(v["error"]["message"], "name \"x\" is taken");
        assert_eq!(HttpError::NotFound.status(), 404);
    }

    /// The position of `e` in [`HttpError::ALL`]; an exhaustive match, so a new
    /// variant does not compile until it is listed here (and in `ALL`).
    fn position(e: HttpError) -> usize {
        use HttpError as E;
        match e {
            E::BadRequest => 0,
            E::MalformedJson => 1,
            E::UnknownField => 2,
            E::MissingField => 3,
            E::InvalidType => 4,
            E::InvalidUsername => 5,
            E::InvalidPassword => 6,
            E::InvalidDeviceName => 7,
            E::InvalidUserId => 8,
            E::CannotBefriendSelf => 9,
            E::InvalidChatId => 10,
            E::InvalidGroupName => 11,
            E::CannotChatWithSelf => 12,
            E::InvalidToken => 13,
            E::InvalidCredentials => 14,
            E::FriendshipRequired => 15,
            E::NotOwner => 16,
            E::NotFound => 17,
            E::UserNotFound => 18,
            E::NoFriendRequest => 19,
            E::NotFriends => 20,
            E::UnknownChat => 21,
            E::NotMember => 22,
            E::MethodNotAllowed => 23,
            E::UsernameTaken => 24,
            E::AlreadyMember => 25,
            E::TooManyMembers => 26,
            E::TooManyFriends => 27,
            E::TooManyOutgoingRequests => 28,
            E::TooManyIncomingRequests => 29,
            E::LengthRequired => 30,
            E::BodyTooLarge => 31,
            E::RateLimited => 32,
            E::UserRateLimited => 33,
            E::HeadersTooLarge => 34,
            E::Internal => 35,
            E::Unavailable => 36,
            E::InvalidDeviceId => 37,
            E::InvalidPusher => 38,
            E::InvalidGatewayUrl => 39,
            E::NoPushGateway => 40,
            E::GatewayNotAllowed => 41,
            E::UnknownDevice => 42,
            E::NoPusher => 43,
            E::AccountThrottled => 44,
            E::StorageFull => 45,
            E::InvalidQuery => 46,
            E::SearchRateLimited => 47,
        }
    }

    #[test]
    fn all_lists_every_variant_once() {
        for (i, e) in HttpError::ALL.iter().enumerate() {
            assert_eq!(position(*e), i, "{e:?}");
        }
    }

    #[test]
    fn codes_are_snake_case_and_statuses_are_errors() {
        for e in HttpError::ALL {
            let (status, code, message) = e.parts();
            assert!((400..600).contains(&status), "{e:?}");
            assert!(
                !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}"
            );
            assert!(!message.is_empty());
        }
    }
}
