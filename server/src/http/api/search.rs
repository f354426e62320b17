//! The side-port's search route (issue 16): `GET /v1/search?q=…[&chat_id=…]
//! [&before_seq=…][&limit=…][&order=newest|relevance]`.
//!
//! Membership is read from the store at query time, so a member removed from
//! a group stops finding its messages with the next query; a `chat_id` the
//! caller is not a member of answers 404 `unknown_chat`, as every other route
//! does for a chat the caller cannot see (existence is not revealed).

use std::time::Instant;

use serde_json::json;

use super::{Api, Handled, Request, Response, parse_id, query_param, rate_limited, store_error};
use crate::http::error::HttpError;
use crate::ids::{ChatId, Seq};
use crate::search::{DEFAULT_LIMIT, MAX_LIMIT, SearchError, SearchRequest, SortOrder};

/// Searches per user per minute (a burst of as many): a query walks postings
/// lists and reads up to 100 texts from the store, so an account gets a
/// person's pace, not a scraper's.
pub(crate) const SEARCH_RATE_LIMIT: u32 = 60;

fn invalid(message: &str) -> Response {
    Response::error_with(HttpError::InvalidQuery, message)
}

/// Decodes a query-string value: `%XX` escapes and `+` for a space; the
/// result must be UTF-8.
fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The request's parameters, validated.
fn parse_request(path: &str) -> Result<SearchRequest, Response> {
    let q = match query_param(path, "q") {
        None => return Err(invalid("the query is empty (give q=…)")),
        Some(raw) => percent_decode(raw).ok_or_else(|| invalid("q is not percent-encoded UTF-8"))?,
    };
    let chat = match query_param(path, "chat_id") {
        None => None,
        Some(raw) => Some(ChatId(parse_id(raw).ok_or(HttpError::InvalidChatId)?)),
    };
    let before_seq = match query_param(path, "before_seq") {
        None => None,
        Some(raw) => Some(Seq(
            parse_id(raw).ok_or_else(|| invalid("before_seq is a positive integer"))?
        )),
    };
    if before_seq.is_some() && chat.is_none() {
        return Err(invalid("before_seq needs chat_id (seqs are per chat)"));
    }
    let limit = match query_param(path, "limit") {
        None => DEFAULT_LIMIT,
        Some(raw) => parse_id(raw)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n <= MAX_LIMIT)
            .ok_or_else(|| invalid(&format!("limit is 1 to {MAX_LIMIT}")))?,
    };
    let order = match query_param(path, "order") {
        None | Some("newest") => SortOrder::Newest,
        Some("relevance") => SortOrder::Relevance,
        Some(_) => return Err(invalid("order is newest or relevance")),
    };
    Ok(SearchRequest {
        q,
        chat,
        before_seq,
        limit,
        order,
    })
}

impl Api {
    /// `GET /v1/search`: the caller's matching messages (module docs).
    pub(super) fn search(&self, req: &Request<'_>) -> Handled {
        let (user, _) = self.authenticate(req)?;
        self.searches
            .check(user, Instant::now())
            .map_err(|seconds| rate_limited(HttpError::SearchRateLimited, seconds))?;
        let request = parse_request(req.path)?;
        let Some(index) = &self.search else {
            return Err(HttpError::Unavailable.into());
        };
        let chats = match request.chat {
            Some(chat) => {
                if self
                    .store
                    .member_since(chat, user)
                    .map_err(store_error)?
                    .is_none()
                {
                    return Err(HttpError::UnknownChat.into());
                }
                vec![chat]
            }
            None => self.store.user_chats(user).map_err(store_error)?,
        };
        let started = Instant::now();
        let results = index.search(&self.store, &chats, &request);
        let elapsed = started.elapsed();
        let results = match results {
            Ok(results) => results,
            Err(SearchError::Query(e)) => return Err(invalid(&e.to_string())),
            Err(e) => {
                tracing::error!(error = %e, "search failed");
                return Err(HttpError::Unavailable.into());
            }
        };
        index.metrics.observe_query(elapsed, results.partial);
        let hits: Vec<serde_json::Value> = results
            .hits
            .iter()
            .map(|h| {
                json!({
                    "chat_id": h.chat.0,
                    "seq": h.seq.0,
                    "sender": h.sender.0,
                    "server_ts_ms": h.server_ts_ms,
                    "snippet": h.snippet,
                    "highlights": h.highlights.iter().map(|(a, b)| [a, b]).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(Response::json(
            200,
            &json!({"hits": hits, "partial": results.partial, "took_ms": elapsed.as_millis() as u64}),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_takes_escapes_and_plus_and_refuses_bad_input() {
        assert_eq!(percent_decode("caf%C3%A9+tower").as_deref(), Some("café tower"));
        assert_eq!(percent_decode("%E6%9D%B1%E4%BA%AC").as_deref(), Some("東京"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%FF"), None);
    }

    #[test]
    fn parameters_are_checked() {
        assert!(parse_request("/v1/search?q=hi").is_ok());
        assert_eq!(parse_request("/v1/search").unwrap_err().status, 400);
        assert_eq!(parse_request("/v1/search?q=hi&limit=0").unwrap_err().status, 400);
        assert_eq!(
            parse_request("/v1/search?q=hi&limit=101").unwrap_err().status,
            400
        );
        assert_eq!(parse_request("/v1/search?q=hi&limit=100").unwrap().limit, 100);
        assert_eq!(
            parse_request("/v1/search?q=hi&before_seq=3").unwrap_err().status,
            400
        );
        assert_eq!(
            parse_request("/v1/search?q=hi&chat_id=x").unwrap_err().status,
            400
        );
        assert_eq!(parse_request("/v1/search?q=hi&order=x").unwrap_err().status, 400);
        let r = parse_request("/v1/search?q=hi&chat_id=2&before_seq=9&order=relevance").unwrap();
        assert_eq!(
            (r.chat, r.before_seq, r.order),
            (Some(ChatId(2)), Some(Seq(9)), SortOrder::Relevance)
        );
    }
}
