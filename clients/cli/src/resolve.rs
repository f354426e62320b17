//! Turning what the user typed into ids: a CHAT argument (a friend's username, a group's
//! name, or `#ID`) into a chat id, a username into a user id, and ids back into names
//! for printing ([`Names`]).
//!
//! Resolution order for a CHAT without `#`: a direct chat or group of that name in
//! `GET /v1/chats`, else a friend of that name (whose direct chat is opened with
//! `POST /v1/dms`). A name that is both a direct chat and a group, or two groups, is
//! ambiguous: the user is told to write `#ID` (`natter chats` lists the ids).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use natter_client::{ChatSummary, HttpClient};

use crate::error::CliError;
use crate::profile::Session;

/// The shortest pause between two [`Names::refresh`]es (with [`Names::lookup`], an id
/// still unknown after a refresh is never looked up again, so a stream of messages from
/// a stranger cannot turn into a stream of HTTP calls).
const NAMES_REFRESH_INTERVAL: Duration = Duration::from_millis(200);

/// A logged-in user's HTTP side: the client, the side-port URL and the session.
#[derive(Clone, Debug)]
pub(crate) struct Account {
    /// The side-port client.
    pub(crate) http: HttpClient,
    /// The side-port URL, for messages.
    pub(crate) server: String,
    /// Who is logged in.
    pub(crate) session: Session,
}

/// A chat the user named, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChatRef {
    /// The chat.
    pub(crate) chat_id: u64,
    /// How to show it: the friend's name for a direct chat, the group's name for a group.
    pub(crate) label: String,
    /// The last committed seq when resolved.
    pub(crate) last_seq: u64,
    /// The user's read marker when resolved.
    pub(crate) read_seq: u64,
    /// Whether it is a group.
    pub(crate) group: bool,
}

impl Account {
    /// Maps a side-port error to a [`CliError`] (a 401 means the session is gone).
    pub(crate) fn fail(&self, error: natter_client::ClientError) -> CliError {
        if error.http_status() == Some(401) {
            return CliError::SessionRevoked {
                username: self.session.username.clone(),
            };
        }
        CliError::from_client(error, &self.server)
    }

    /// The user's chats.
    ///
    /// # Errors
    /// Side-port failures.
    pub(crate) fn chats(&self) -> Result<Vec<ChatSummary>, CliError> {
        self.http.chats(&self.session.token).map_err(|e| self.fail(e))
    }

    /// Resolves a CHAT argument (see the module doc).
    ///
    /// # Errors
    /// [`CliError::Usage`] for an unknown or ambiguous chat; side-port failures.
    pub(crate) fn resolve_chat(&self, chat: &str) -> Result<ChatRef, CliError> {
        let chats = self.chats()?;
        let summary_ref = |c: &ChatSummary| ChatRef {
            chat_id: c.chat_id,
            label: c.name.clone(),
            last_seq: c.last_seq,
            read_seq: c.read_seq,
            group: c.kind == "group",
        };
        if let Some(id) = chat.strip_prefix('#') {
            let id: u64 = id
                .parse()
                .map_err(|_| CliError::Usage(format!("{chat:?} is not a chat id (#ID takes digits)")))?;
            return chats
                .iter()
                .find(|c| c.chat_id == id)
                .map(summary_ref)
                .ok_or_else(|| CliError::Usage(format!("unknown chat #{id}: `natter chats` lists yours")));
        }
        let wanted = chat.to_lowercase();
        let named: Vec<&ChatSummary> = chats
            .iter()
            .filter(|c| {
                if c.kind == "group" {
                    c.name == chat
                } else {
                    c.name == wanted
                }
            })
            .collect();
        match named.as_slice() {
            [one] => return Ok(summary_ref(one)),
            [] => {}
            many => {
                let ids: Vec<String> = many.iter().map(|c| format!("#{}", c.chat_id)).collect();
                return Err(CliError::Usage(format!(
                    "{chat:?} names several chats ({}): write one as #ID",
                    ids.join(", ")
                )));
            }
        }
        // No chat yet: a friend's direct chat is opened on first use.
        let friends = self.http.friends(&self.session.token).map_err(|e| self.fail(e))?;
        let Some(friend) = friends.friends.iter().find(|f| f.username == wanted) else {
            return Err(CliError::Usage(format!(
                "unknown chat {chat:?}: not a friend's name, a group's name or a #ID (`natter chats` lists yours)"
            )));
        };
        let chat_id = self
            .http
            .direct_chat(&self.session.token, friend.user_id)
            .map_err(|e| self.fail(e))?;
        Ok(ChatRef {
            chat_id,
            label: friend.username.clone(),
            last_seq: 0,
            read_seq: 0,
            group: false,
        })
    }

    /// Resolves a group argument (a group's name or `#ID`).
    ///
    /// # Errors
    /// [`CliError::Usage`] when it names no group of the user's.
    pub(crate) fn resolve_group(&self, group: &str) -> Result<ChatRef, CliError> {
        let chats = self.chats()?;
        let found: Vec<&ChatSummary> = chats
            .iter()
            .filter(|c| c.kind == "group")
            .filter(|c| match group.strip_prefix('#') {
                Some(id) => id.parse::<u64>().ok() == Some(c.chat_id),
                None => c.name == group,
            })
            .collect();
        match found.as_slice() {
            [one] => Ok(ChatRef {
                chat_id: one.chat_id,
                label: one.name.clone(),
                last_seq: one.last_seq,
                read_seq: one.read_seq,
                group: true,
            }),
            [] => Err(CliError::Usage(format!(
                "unknown group {group:?}: `natter chats` lists yours"
            ))),
            many => {
                let ids: Vec<String> = many.iter().map(|c| format!("#{}", c.chat_id)).collect();
                Err(CliError::Usage(format!(
                    "{group:?} names several groups ({}): write one as #ID",
                    ids.join(", ")
                )))
            }
        }
    }

    /// The user id of a friend (or a pending request either way) called `name`.
    ///
    /// # Errors
    /// [`CliError::Usage`] when no friend or request has that name.
    pub(crate) fn friend_id(&self, name: &str, what: FriendKind) -> Result<u64, CliError> {
        let list = self.http.friends(&self.session.token).map_err(|e| self.fail(e))?;
        let wanted = name.to_lowercase();
        let pool: Vec<&natter_client::Friend> = match what {
            FriendKind::Friend => list.friends.iter().collect(),
            FriendKind::Incoming => list.incoming.iter().collect(),
            FriendKind::Any => list
                .friends
                .iter()
                .chain(&list.incoming)
                .chain(&list.outgoing)
                .collect(),
        };
        pool.iter()
            .find(|f| f.username == wanted)
            .map(|f| f.user_id)
            .ok_or_else(|| {
                CliError::Usage(match what {
                    FriendKind::Friend => format!("{name} is not your friend (`natter friends add {name}`)"),
                    FriendKind::Incoming => {
                        format!("no friend request from {name} (`natter friends` lists them)")
                    }
                    FriendKind::Any => format!("{name} is not a friend and no request is pending with them"),
                })
            })
    }
}

/// Which part of the friend list [`Account::friend_id`] looks in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FriendKind {
    /// Accepted friends.
    Friend,
    /// Requests waiting for the user's answer.
    Incoming,
    /// Friends and requests both ways.
    Any,
}

/// User and chat names for printing, refreshed from the side-port when an unknown id
/// shows up (at most once per [`NAMES_REFRESH_INTERVAL`]).
#[derive(Debug)]
pub(crate) struct Names {
    users: HashMap<u64, String>,
    chats: HashMap<u64, String>,
    refreshed: Option<Instant>,
    /// Ids a refresh did not name: not looked up again.
    missing_users: HashSet<u64>,
    missing_chats: HashSet<u64>,
}

impl Names {
    /// Names known from the session alone (the user's own).
    pub(crate) fn new(session: &Session) -> Names {
        let mut users = HashMap::new();
        users.insert(session.user_id, session.username.clone());
        Names {
            users,
            chats: HashMap::new(),
            refreshed: None,
            missing_users: HashSet::new(),
            missing_chats: HashSet::new(),
        }
    }

    /// Asks the side-port for friends, chats and group members (at most once per
    /// [`NAMES_REFRESH_INTERVAL`]). Failures are ignored: names are a nicety, ids are
    /// printed instead.
    pub(crate) fn refresh(&mut self, account: &Account) {
        if self
            .refreshed
            .is_some_and(|t| t.elapsed() < NAMES_REFRESH_INTERVAL)
        {
            return;
        }
        self.refreshed = Some(Instant::now());
        let token = &account.session.token;
        if let Ok(list) = account.http.friends(token) {
            for f in list.friends.iter().chain(&list.incoming).chain(&list.outgoing) {
                self.users.insert(f.user_id, f.username.clone());
            }
        }
        if let Ok(chats) = account.http.chats(token) {
            for chat in chats {
                if chat.kind == "group"
                    && let Ok(group) = account.http.group(token, chat.chat_id)
                {
                    for m in group.members {
                        self.users.insert(m.user_id, m.username);
                    }
                }
                self.chats.insert(chat.chat_id, chat.name);
            }
        }
    }

    /// Makes sure `user` and `chat` (if given) have names: refreshes once for an id not
    /// seen before; an id the refresh does not name stays unnamed from then on.
    pub(crate) fn lookup(&mut self, account: &Account, user: u64, chat: Option<u64>) {
        let user_unknown = !self.users.contains_key(&user) && !self.missing_users.contains(&user);
        let chat_unknown =
            chat.is_some_and(|c| !self.chats.contains_key(&c) && !self.missing_chats.contains(&c));
        if !user_unknown && !chat_unknown {
            return;
        }
        if let Some(t) = self.refreshed {
            let wait = NAMES_REFRESH_INTERVAL.saturating_sub(t.elapsed());
            std::thread::sleep(wait);
        }
        self.refreshed = None;
        self.refresh(account);
        if !self.users.contains_key(&user) {
            self.missing_users.insert(user);
        }
        if let Some(c) = chat
            && !self.chats.contains_key(&c)
        {
            self.missing_chats.insert(c);
        }
    }

    /// A user's name, or `user#ID`.
    pub(crate) fn user(&self, user: u64) -> String {
        self.users
            .get(&user)
            .cloned()
            .unwrap_or_else(|| format!("user#{user}"))
    }

    /// A chat's label, or `#ID`.
    pub(crate) fn chat(&self, chat: u64) -> String {
        self.chats
            .get(&chat)
            .cloned()
            .unwrap_or_else(|| format!("#{chat}"))
    }
}
