//! What each one-shot verb does: account (`signup`, `login`, `logout`), friends, `dm`,
//! groups, `chats`, `send` and `history`. The live verbs (`tail`, `chat`) are in
//! `live_commands.rs`. Each prints its result on stdout and returns a [`CliError`] for
//! the one line `main` prints on stderr.

use std::io::Read;
use std::time::Duration;

use natter_client::{ClientError, FriendStatus, HttpClient};
use natter_wire::{Body, History, MAX_TEXT_CHARS, Send};

use crate::error::CliError;
use crate::format::{self, out};
use crate::live;
use crate::profile::{Profile, Session};
use crate::resolve::{Account, FriendKind, Names};

/// The side-port used when neither `--server`, `NATTER_SERVER` nor a session names one.
pub(crate) const DEFAULT_SERVER: &str = "http://127.0.0.1:7180";

/// Attempts of one `send` before giving up (the same `client_msg_id` each time).
const SEND_ATTEMPTS: u32 = 5;

/// Pause after the first failed send attempt, doubled per attempt.
const SEND_BACKOFF: Duration = Duration::from_millis(200);

/// Most bytes `send CHAT -` takes from stdin: the longest legal text is 100,000
/// characters of at most 4 bytes, plus a `\r\n`. More is refused as too long unread.
const MAX_STDIN_BYTES: u64 = (MAX_TEXT_CHARS as u64) * 4 + 2;

/// Messages per `History` request (the server's cap).
const HISTORY_PAGE: u32 = 200;

/// The device name sent at login and in `Hello`: the profile's device id.
pub(crate) fn device_name(profile: &Profile) -> Result<String, CliError> {
    Ok(format!("natter-cli {}", profile.device_id()?))
}

/// `natter signup NAME`: creates the account, then logs in like `natter login`.
pub(crate) fn signup(profile: &Profile, server: &str, name: &str, password: &str) -> Result<(), CliError> {
    let http = HttpClient::new(server);
    http.signup(name, password)
        .map_err(|e| CliError::from_client(e, server))?;
    let session = login_session(profile, server, &http, name, password)?;
    out!(
        "signed up and logged in as {} (user {})",
        session.username,
        session.user_id
    );
    Ok(())
}

/// `natter login NAME`.
pub(crate) fn login(profile: &Profile, server: &str, name: &str, password: &str) -> Result<(), CliError> {
    let http = HttpClient::new(server);
    let session = login_session(profile, server, &http, name, password)?;
    out!("logged in as {} (user {})", session.username, session.user_id);
    Ok(())
}

/// Logs in, stores the session, returns it.
fn login_session(
    profile: &Profile,
    server: &str,
    http: &HttpClient,
    name: &str,
    password: &str,
) -> Result<Session, CliError> {
    let device = device_name(profile)?;
    let login = http.login(name, password, &device).map_err(|e| match e {
        ClientError::Http { status: 401, .. } => {
            CliError::Usage("wrong username or password (invalid_credentials)".into())
        }
        other => CliError::from_client(other, server),
    })?;
    let session = Session {
        server: http.base_url().to_owned(),
        username: name.to_lowercase(),
        user_id: login.user_id,
        device_id: login.device_id,
        token: login.token,
    };
    profile.save_session(&session)?;
    Ok(session)
}

/// `natter logout`: revokes the token (if the server still knows it) and forgets it.
pub(crate) fn logout(profile: &Profile, account: &Account) -> Result<(), CliError> {
    match account.http.logout(&account.session.token) {
        Ok(()) => {}
        // Already revoked elsewhere: forgetting it is all that is left to do.
        Err(e) if e.http_status() == Some(401) => {}
        Err(e) => return Err(CliError::from_client(e, &account.server)),
    }
    profile.clear_session()?;
    out!("logged out {}", account.session.username);
    Ok(())
}

/// `natter friends`: friends with presence, then requests both ways.
pub(crate) fn friends(account: &Account) -> Result<(), CliError> {
    let token = &account.session.token;
    let list = account.http.friends(token).map_err(|e| account.fail(e))?;
    if list.friends.is_empty() && list.incoming.is_empty() && list.outgoing.is_empty() {
        out!("no friends yet: `natter friends add NAME`");
    }
    for friend in &list.friends {
        let state = match account.http.presence(token, friend.user_id) {
            Ok(p) if p.online => "online".to_owned(),
            Ok(p) => format!("offline, {}", format::last_seen(p.last_seen_ms)),
            Err(_) => "presence unknown".to_owned(),
        };
        out!("{:<32} {state}", friend.username);
    }
    for asked in &list.incoming {
        out!(
            "{:<32} asked to be your friend: `natter friends accept {}`",
            asked.username,
            asked.username
        );
    }
    for asked in &list.outgoing {
        out!("{:<32} request sent, not accepted yet", asked.username);
    }
    Ok(())
}

/// `natter friends add NAME`.
pub(crate) fn friend_add(account: &Account, name: &str) -> Result<(), CliError> {
    let status = account
        .http
        .friend_request(&account.session.token, name)
        .map_err(|e| account.fail(e))?;
    match status {
        FriendStatus::Friends => out!("you and {name} are friends"),
        _ => out!("friend request sent to {name}"),
    }
    Ok(())
}

/// `natter friends accept NAME`.
pub(crate) fn friend_accept(account: &Account, name: &str) -> Result<(), CliError> {
    let user_id = account.friend_id(name, FriendKind::Incoming)?;
    account
        .http
        .accept_friend(&account.session.token, user_id)
        .map_err(|e| account.fail(e))?;
    out!("you and {name} are friends");
    Ok(())
}

/// `natter friends remove NAME`.
pub(crate) fn friend_remove(account: &Account, name: &str) -> Result<(), CliError> {
    let user_id = account.friend_id(name, FriendKind::Any)?;
    account
        .http
        .remove_friend(&account.session.token, user_id)
        .map_err(|e| account.fail(e))?;
    out!("removed {name}");
    Ok(())
}

/// `natter dm NAME`: opens the direct chat (or finds it) and prints its id.
pub(crate) fn dm(account: &Account, name: &str) -> Result<(), CliError> {
    let user_id = account.friend_id(name, FriendKind::Friend)?;
    let chat_id = account
        .http
        .direct_chat(&account.session.token, user_id)
        .map_err(|e| account.fail(e))?;
    out!("#{chat_id} direct chat with {}", name.to_lowercase());
    Ok(())
}

/// `natter group create NAME MEMBER…`.
pub(crate) fn group_create(account: &Account, name: &str, members: &[String]) -> Result<(), CliError> {
    let ids = members
        .iter()
        .map(|m| account.friend_id(m, FriendKind::Friend))
        .collect::<Result<Vec<u64>, CliError>>()?;
    let chat_id = account
        .http
        .create_group(&account.session.token, name, &ids)
        .map_err(|e| account.fail(e))?;
    out!("#{chat_id} group {name} created");
    Ok(())
}

/// `natter group add GROUP NAME`.
pub(crate) fn group_add(account: &Account, group: &str, name: &str) -> Result<(), CliError> {
    let chat = account.resolve_group(group)?;
    let user_id = account.friend_id(name, FriendKind::Friend)?;
    account
        .http
        .add_member(&account.session.token, chat.chat_id, user_id)
        .map_err(|e| account.fail(e))?;
    out!("added {name} to {}", chat.label);
    Ok(())
}

/// `natter group remove GROUP NAME`: the member is looked up in the group itself, so the
/// owner can remove someone who is not a friend, and anyone can remove themself.
pub(crate) fn group_remove(account: &Account, group: &str, name: &str) -> Result<(), CliError> {
    let chat = account.resolve_group(group)?;
    let info = account
        .http
        .group(&account.session.token, chat.chat_id)
        .map_err(|e| account.fail(e))?;
    let wanted = name.to_lowercase();
    let member = info
        .members
        .iter()
        .find(|m| m.username == wanted)
        .ok_or_else(|| CliError::Usage(format!("{name} is not a member of {}", chat.label)))?;
    account
        .http
        .remove_member(&account.session.token, chat.chat_id, member.user_id)
        .map_err(|e| account.fail(e))?;
    if member.user_id == account.session.user_id {
        out!("you left {}", chat.label);
    } else {
        out!("removed {name} from {}", chat.label);
    }
    Ok(())
}

/// `natter chats`: one line per chat, `#ID  kind  name  N unread`.
pub(crate) fn chats(account: &Account) -> Result<(), CliError> {
    let chats = account.chats()?;
    if chats.is_empty() {
        out!("no chats yet: `natter dm NAME` or `natter group create NAME MEMBER…`");
    }
    for chat in chats {
        out!(
            "{:<8} {:<6} {:<32} {} unread",
            format!("#{}", chat.chat_id),
            chat.kind,
            chat.name,
            chat.unread
        );
    }
    Ok(())
}

/// Checks a text before it is sent: not empty (or only white space), at most
/// [`MAX_TEXT_CHARS`] characters.
///
/// # Errors
/// [`CliError::Usage`] naming what is wrong.
pub(crate) fn check_text(text: &str) -> Result<(), CliError> {
    if text.trim().is_empty() {
        return Err(CliError::Usage("empty message: nothing to send".into()));
    }
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(CliError::Usage(format!(
            "message too long: {chars} characters, at most {MAX_TEXT_CHARS} are allowed"
        )));
    }
    Ok(())
}

/// The text of `send`: the words joined, or stdin for `-` (one trailing newline dropped).
fn send_text(words: &[String]) -> Result<String, CliError> {
    if let [only] = words
        && only == "-"
    {
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .take(MAX_STDIN_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| CliError::Input(format!("cannot read stdin: {e}")))?;
        if bytes.len() as u64 > MAX_STDIN_BYTES {
            return Err(CliError::Usage(format!(
                "message too long: more than {MAX_STDIN_BYTES} bytes on stdin, at most {MAX_TEXT_CHARS} characters are allowed"
            )));
        }
        let mut text =
            String::from_utf8(bytes).map_err(|_| CliError::Input("stdin is not UTF-8 text".into()))?;
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        return Ok(text);
    }
    Ok(words.join(" "))
}

/// `natter send CHAT TEXT`: checks the text, resolves the chat, sends with retries under
/// one `client_msg_id`, prints `sent #SEQ to CHAT`.
pub(crate) fn send(
    account: &Account,
    profile: &Profile,
    chat: &str,
    words: &[String],
) -> Result<(), CliError> {
    let text = send_text(words)?;
    check_text(&text)?;
    let chat = account.resolve_chat(chat)?;
    let device = device_name(profile)?;
    let client_msg_id = loop {
        let id = getrandom::u64().map_err(|e| CliError::Input(format!("no random source: {e}")))?;
        if id != 0 {
            break id;
        }
    };
    let mut pause = SEND_BACKOFF;
    let mut attempt = 1;
    let ok = loop {
        // sync_first: natterd holds live pushes back until a Sync that never comes, so this
        // short connection is sent nothing it would only skip.
        let result = live::open(account, &device, true).and_then(|(mut conn, _, _)| {
            conn.request(Body::Send(Send {
                chat_id: chat.chat_id,
                client_msg_id,
                text: text.clone(),
            }))
        });
        match result {
            Ok(frame) => match frame.body {
                Body::SendOk(ok) => break ok,
                other => {
                    return Err(CliError::Connection(format!(
                        "unexpected answer {}",
                        other.name()
                    )));
                }
            },
            Err(e) if CliError::is_revoked(&e) => {
                return Err(CliError::SessionRevoked {
                    username: account.session.username.clone(),
                });
            }
            Err(e) if attempt < SEND_ATTEMPTS && retryable_send(&e) => {
                std::thread::sleep(pause);
                pause *= 2;
                attempt += 1;
            }
            Err(e) => return Err(account.fail(e)),
        }
    };
    // Your own message is read by you: move the marker along if nothing before it was unread.
    if chat.read_seq.saturating_add(1) == ok.seq {
        let _ = account
            .http
            .mark_read(&account.session.token, chat.chat_id, ok.seq);
    }
    out!("sent #{} to {}", ok.seq, chat.label);
    Ok(())
}

/// Whether a failed send attempt is worth another (with the same `client_msg_id`).
fn retryable_send(error: &ClientError) -> bool {
    use natter_wire::ErrorCode;
    match error {
        ClientError::Refused { code, .. } => matches!(
            code.known(),
            Some(
                ErrorCode::Overloaded
                    | ErrorCode::Unavailable
                    | ErrorCode::RateLimited
                    | ErrorCode::Internal
                    | ErrorCode::ShuttingDown
                    | ErrorCode::TooManyConnections
            )
        ),
        // natterd down or restarting: the side-port is unreachable or the socket broke.
        ClientError::Transport(_)
        | ClientError::Io(_)
        | ClientError::Closed
        | ClientError::Timeout { .. } => true,
        _ => false,
    }
}

/// `natter history CHAT`: the newest `limit` messages, oldest first; marks them read.
pub(crate) fn history(account: &Account, profile: &Profile, chat: &str, limit: u32) -> Result<(), CliError> {
    let chat = account.resolve_chat(chat)?;
    let device = device_name(profile)?;
    // sync_first: no live pushes to skip while paging (see `send`).
    let (mut conn, _, _) = live::open(account, &device, true).map_err(|e| account.fail(e))?;
    let mut messages = Vec::new();
    let mut before_seq = 0;
    loop {
        let want = (limit as usize).saturating_sub(messages.len());
        if want == 0 {
            break;
        }
        let frame = conn
            .request(Body::History(History {
                chat_id: chat.chat_id,
                before_seq,
                limit: u32::try_from(want).unwrap_or(HISTORY_PAGE).min(HISTORY_PAGE),
            }))
            .map_err(|e| account.fail(e))?;
        let Body::HistoryPage(page) = frame.body else {
            return Err(CliError::Connection(format!(
                "unexpected answer {}",
                frame.body.name()
            )));
        };
        let oldest = page.messages.last().map(|m| m.seq);
        messages.extend(page.messages);
        match oldest {
            Some(seq) if page.has_more && seq > 1 => before_seq = seq,
            _ => break,
        }
    }
    messages.truncate(limit as usize);
    messages.reverse();
    if messages.is_empty() {
        out!("no messages in {} yet", chat.label);
        return Ok(());
    }
    let mut names = Names::new(&account.session);
    names.refresh(account);
    for m in &messages {
        out!("{}", format::message_line(m, None, &names.user(m.sender)));
    }
    if let Some(newest) = messages.last() {
        let _ = account
            .http
            .mark_read(&account.session.token, chat.chat_id, newest.seq);
    }
    Ok(())
}

/// `natter search QUERY… [--chat CHAT] [--limit N] [--relevance]`: one line per hit,
/// `TIME [CHAT] SENDER #SEQ: snippet`, the matched words in `*…*`.
pub(crate) fn search(
    account: &Account,
    query: &str,
    chat: Option<&str>,
    limit: u32,
    relevance: bool,
) -> Result<(), CliError> {
    let chat_id = match chat {
        Some(chat) => Some(account.resolve_chat(chat)?.chat_id),
        None => None,
    };
    let options = natter_client::SearchOptions {
        chat_id,
        limit: Some(limit),
        relevance,
        ..natter_client::SearchOptions::default()
    };
    let answer = account
        .http
        .search(&account.session.token, query, &options)
        .map_err(|e| account.fail(e))?;
    if answer.hits.is_empty() {
        out!("no messages match {query:?}");
        return Ok(());
    }
    let mut names = Names::new(&account.session);
    names.refresh(account);
    for hit in &answer.hits {
        out!(
            "{} [{}] {} #{}: {}",
            format::utc(hit.server_ts_ms),
            names.chat(hit.chat_id),
            names.user(hit.sender),
            hit.seq,
            marked(&hit.snippet, &hit.highlights).replace('\n', " ")
        );
    }
    if answer.partial {
        out!("(the search took too long: more messages may match)");
    }
    Ok(())
}

/// `snippet` with each highlighted byte range wrapped in `*…*` (ranges that do not
/// fall on character boundaries are left unmarked).
fn marked(snippet: &str, highlights: &[(usize, usize)]) -> String {
    let mut out = String::with_capacity(snippet.len() + 2 * highlights.len());
    let mut at = 0;
    for &(start, end) in highlights {
        let (Some(before), Some(word)) = (snippet.get(at..start), snippet.get(start..end)) else {
            continue;
        };
        out.push_str(before);
        out.push('*');
        out.push_str(word);
        out.push('*');
        at = end;
    }
    out.push_str(snippet.get(at..).unwrap_or_default());
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    #[test]
    fn search_snippets_mark_their_matches() {
        assert_eq!(marked("meet at the Café", &[(12, 17)]), "meet at the *Café*");
        assert_eq!(marked("a b", &[(0, 1), (2, 3)]), "*a* *b*");
        assert_eq!(marked("é", &[(1, 2)]), "é");
    }

    use super::*;

    #[test]
    fn texts_are_checked_before_sending() {
        assert!(check_text("").is_err());
        assert!(check_text(" \n\t").is_err());
        assert!(check_text("hi").is_ok());
        assert!(check_text(&"é".repeat(MAX_TEXT_CHARS)).is_ok());
        let err = check_text(&"x".repeat(MAX_TEXT_CHARS + 1)).unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
    }
}
