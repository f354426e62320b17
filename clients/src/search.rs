//! Message search over the HTTP side-port (`GET /v1/search`, issue 16): the
//! caller's messages that contain the query's words, from the chats it is a
//! member of now.

use serde::Deserialize;

use crate::{ClientError, HttpClient};

/// One hit of [`HttpClient::search`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SearchHit {
    /// The chat.
    pub chat_id: u64,
    /// The message's seq in the chat.
    pub seq: u64,
    /// The sender's user id.
    pub sender: u64,
    /// Server timestamp, ms since the Unix epoch.
    pub server_ts_ms: u64,
    /// Up to 160 characters of the message's current text around the matches.
    pub snippet: String,
    /// Byte ranges `[start, end)` of the matched words within `snippet`.
    pub highlights: Vec<(usize, usize)>,
}

/// What [`HttpClient::search`] found.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SearchAnswer {
    /// The hits, newest first (or best first with `relevance`).
    pub hits: Vec<SearchHit>,
    /// True when the server's time budget cut the search short.
    pub partial: bool,
}

/// The optional parameters of a search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchOptions {
    /// Only this chat.
    pub chat_id: Option<u64>,
    /// Only seqs below this (needs `chat_id`).
    pub before_seq: Option<u64>,
    /// At most this many hits (1 to 100; the server's default is 20).
    pub limit: Option<u32>,
    /// Order by relevance instead of newest first.
    pub relevance: bool,
}

/// Percent-encodes a query-string value (everything but unreserved characters).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl HttpClient {
    /// `GET /v1/search?q=…`: the caller's messages matching `query`.
    ///
    /// # Errors
    /// [`ClientError::Http`] 400 `invalid_query` (empty, too long, unclosed
    /// quote, …), 404 `unknown_chat` for a `chat_id` the caller is not in, 429
    /// `rate_limited`; transport errors.
    pub fn search(
        &self,
        token: &str,
        query: &str,
        options: &SearchOptions,
    ) -> Result<SearchAnswer, ClientError> {
        let mut path = format!("/v1/search?q={}", encode(query));
        if let Some(chat) = options.chat_id {
            path.push_str(&format!("&chat_id={chat}"));
        }
        if let Some(before) = options.before_seq {
            path.push_str(&format!("&before_seq={before}"));
        }
        if let Some(limit) = options.limit {
            path.push_str(&format!("&limit={limit}"));
        }
        if options.relevance {
            path.push_str("&order=relevance");
        }
        self.call_json("GET /v1/search", "GET", &path, Some(token), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_percent_encoded() {
        assert_eq!(encode("café tower&x=1"), "caf%C3%A9%20tower%26x%3D1");
        assert_eq!(encode("a-b_c.d~"), "a-b_c.d~");
    }
}
