//! Store reads the core does not make itself: it hands each one to the driver
//! as an [`Action::Read`](super::Action::Read) and gets the answer back through
//! [`Core::handle_read`](super::Core::handle_read), so a cold read (20–35 ms
//! here when fjall first loads a table's index and filter) stalls one reader
//! thread, never the event loop and every other session on it.
//!
//! Sync (its plan and its pages) and History go this way. [`ReadRequest::run`]
//! is the one place that turns a request into store calls: the runtime's
//! reader thread, the core tests and the fuzzing harness all run requests
//! through it, so they all read exactly what the server reads.
//!
//! What a request reads is whatever is committed when the reader gets to it,
//! which may be later than when the core asked: the seam in `sync.rs` holds the
//! live pushes that arrive in between and reconciles them with the answer.

use std::collections::HashMap;

use super::{ReadError, StoredMessage, SyncStore};
use crate::ids::{ChatId, DeviceId, Seq, UserId};

/// Names one read the core asked for; the driver gives it back with the answer.
/// Unique per core for the core's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReadTicket(pub u64);

/// A read the driver runs off the event loop ([`ReadRequest::run`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadRequest {
    /// A sync's plan: the user's chats, each one's head, and where this device
    /// starts in it (the cursor the Sync gave, else the device's stored cursor,
    /// else the head minus [`super::NEW_DEVICE_BACKLOG`]).
    SyncPlan {
        /// The syncing user.
        user: UserId,
        /// The syncing device.
        device: DeviceId,
        /// The cursors the Sync frame carried, by chat.
        given: HashMap<ChatId, u64>,
    },
    /// The next page of a sync: the chats in order, each from its cursor,
    /// while the page has room (one membership check per chat, after its page).
    SyncPages {
        /// The syncing user (pages of chats it has left are dropped).
        user: UserId,
        /// `(chat, last seq already sent)`, in the order to read them.
        chats: Vec<(ChatId, u64)>,
        /// Most messages in the page, over all its chats.
        max_msgs: usize,
        /// Most text bytes in the page, over all its chats (one message may pass it).
        max_bytes: usize,
    },
    /// One History page, for a member only (a non-member gets an empty page).
    History {
        /// Who asked.
        user: UserId,
        /// The chat.
        chat: ChatId,
        /// Messages with `seq < before`.
        before: Seq,
        /// Most messages.
        limit: usize,
        /// Most text bytes when several messages share the page.
        max_bytes: usize,
    },
    /// The user's chats with read markers and unread counts (ChatStates after Welcome).
    ChatStates {
        /// The user.
        user: UserId,
    },
}

/// Where a sync starts in one chat, as its plan read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedChat {
    /// The chat.
    pub chat: ChatId,
    /// The last seq the device has: the stream starts after it.
    pub after: u64,
    /// The chat's last committed seq when the plan read it.
    pub head: u64,
}

/// What a sync page read of one chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatPage {
    /// The chat.
    pub chat: ChatId,
    /// Its messages after the cursor, ascending (empty when not a member).
    pub messages: Vec<StoredMessage>,
    /// The read ended before the page's limits did: these were all the
    /// messages committed when it was read, so the chat is caught up.
    pub complete: bool,
    /// The user was still a member after the page was read.
    pub member: bool,
}

/// The answer to a [`ReadRequest`], of the same variant.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadAnswer {
    /// For [`ReadRequest::SyncPlan`]: every chat of the user, ascending.
    SyncPlan(Result<Vec<PlannedChat>, ReadError>),
    /// For [`ReadRequest::SyncPages`]: the chats read, a prefix of the
    /// request's, in its order.
    SyncPages(Result<Vec<ChatPage>, ReadError>),
    /// For [`ReadRequest::History`]: newest first, and whether older ones exist.
    History(Result<(Vec<StoredMessage>, bool), ReadError>),
    /// For [`ReadRequest::ChatStates`]: one entry per chat, ascending.
    ChatStates(Result<Vec<natter_wire::ChatState>, ReadError>),
}

impl ReadRequest {
    /// Makes the request's store reads and returns the answer.
    pub fn run(&self, store: &dyn SyncStore) -> ReadAnswer {
        match self {
            ReadRequest::SyncPlan { user, device, given } => {
                ReadAnswer::SyncPlan(plan(store, *user, *device, given))
            }
            ReadRequest::SyncPages {
                user,
                chats,
                max_msgs,
                max_bytes,
            } => ReadAnswer::SyncPages(pages(store, *user, chats, *max_msgs, *max_bytes)),
            ReadRequest::History {
                user,
                chat,
                before,
                limit,
                max_bytes,
            } => ReadAnswer::History(store.sync_is_member(*chat, *user).and_then(|member| {
                if member && *limit > 0 {
                    store.sync_history(*chat, *before, *limit, *max_bytes)
                } else {
                    Ok((Vec::new(), false))
                }
            })),
            ReadRequest::ChatStates { user } => ReadAnswer::ChatStates(store.sync_chat_states(*user)),
        }
    }

    /// The answer of this request's kind that reports `error` (a driver that
    /// could not run it).
    pub fn failed(&self, error: ReadError) -> ReadAnswer {
        match self {
            ReadRequest::SyncPlan { .. } => ReadAnswer::SyncPlan(Err(error)),
            ReadRequest::SyncPages { .. } => ReadAnswer::SyncPages(Err(error)),
            ReadRequest::History { .. } => ReadAnswer::History(Err(error)),
            ReadRequest::ChatStates { .. } => ReadAnswer::ChatStates(Err(error)),
        }
    }
}

fn plan(
    store: &dyn SyncStore,
    user: UserId,
    device: DeviceId,
    given: &HashMap<ChatId, u64>,
) -> Result<Vec<PlannedChat>, ReadError> {
    let chats = store.sync_user_chats(user)?;
    let mut plan = Vec::with_capacity(chats.len());
    for chat in chats {
        let head = store.sync_last_seq(chat)?.0;
        let after = match given.get(&chat) {
            Some(&seq) => seq,
            None => match store.sync_device_cursor(device, chat)? {
                Some(seq) => seq.0,
                None => head.saturating_sub(super::NEW_DEVICE_BACKLOG),
            },
        };
        plan.push(PlannedChat { chat, after, head });
    }
    Ok(plan)
}

fn pages(
    store: &dyn SyncStore,
    user: UserId,
    chats: &[(ChatId, u64)],
    max_msgs: usize,
    max_bytes: usize,
) -> Result<Vec<ChatPage>, ReadError> {
    let mut out = Vec::new();
    let (mut msgs, mut bytes) = (0, 0);
    for &(chat, after) in chats {
        if msgs >= max_msgs || bytes >= max_bytes {
            break;
        }
        let want = max_msgs - msgs;
        // The page first, then membership: a message sent after the user's
        // removal is committed after the removal, so if the page holds one,
        // the check already sees the removal and the page is dropped (the
        // other order could let a removal and later messages slip between).
        let messages = store.sync_page(chat, Seq(after), want, max_bytes - bytes)?;
        let member = store.sync_is_member(chat, user)?;
        let text: usize = messages.iter().map(|m| m.text.len()).sum();
        let complete = messages.len() < want && bytes + text < max_bytes;
        if member {
            msgs += messages.len();
            bytes += text;
            out.push(ChatPage {
                chat,
                messages,
                complete,
                member,
            });
        } else {
            out.push(ChatPage {
                chat,
                messages: Vec::new(),
                complete: true,
                member,
            });
        }
    }
    Ok(out)
}
