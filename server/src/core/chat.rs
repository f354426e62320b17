//! Chats on their owner core: members, the next `seq`, the sends in flight to
//! the storage writer (the in-memory half of the dedupe window) and the
//! recipients of each message grouped by home core.
//!
//! Also the messages cores exchange about chats ([`CoreMsg`]) and the read
//! interface the core needs from the store ([`ChatStore`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use super::{ChatKind, ReadError};
use crate::core::ConnId;
use crate::core::presence::PresenceUpdate;
use crate::ids::{ChatId, ClientMsgId, CoreId, Seq, UserId};

/// Where an answer goes: one session on one core. The generation tells a
/// reused connection id from the session the answer was meant for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The core holding the session.
    pub core: CoreId,
    /// The connection on that core.
    pub conn: ConnId,
    /// The session's generation on that core.
    pub generation: u32,
}

/// A Send forwarded from the sender's home core to the chat's owner core.
#[derive(Debug, Clone, PartialEq)]
pub struct SendRequest {
    /// The sending session.
    pub origin: Origin,
    /// The Send frame's request id, echoed in SendOk or Error.
    pub request_id: u64,
    /// The authenticated sender.
    pub sender: UserId,
    /// The chat.
    pub chat: ChatId,
    /// The client's id for this send (dedupe key with sender and chat).
    pub client_msg_id: ClientMsgId,
    /// The text: UTF-8, 1 to 100,000 scalar values (checked by the session's core).
    pub text: String,
}

/// An Edit (`text: Some`) or Delete (`text: None`) forwarded from the sender's home core to the
/// chat's owner core (`conversation.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct AmendRequest {
    /// The sending session.
    pub origin: Origin,
    /// The frame's request id, echoed in SendOk or Error.
    pub request_id: u64,
    /// The authenticated sender.
    pub sender: UserId,
    /// The chat.
    pub chat: ChatId,
    /// The message edited or deleted.
    pub target: Seq,
    /// The client's id for this change (dedupe key with sender and chat, as for a Send).
    pub client_msg_id: ClientMsgId,
    /// The new text of an Edit (checked like a Send's), `None` for a Delete.
    pub text: Option<String>,
}

/// Work one core hands another (batched per loop turn into one queue operation).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CoreMsg {
    /// A send for a chat the receiving core owns.
    Send(SendRequest),
    /// A frame for one session the receiving core holds (SendOk, Error).
    Reply {
        /// The session.
        to: Origin,
        /// An encoded frame.
        frame: Bytes,
    },
    /// A message for every online device of these users (homed on the receiving core).
    Push {
        /// The message's chat (carried so the receiver never parses `frame`).
        chat: ChatId,
        /// The message's seq in the chat.
        seq: Seq,
        /// The encoded Message frame, shared by every recipient.
        frame: Bytes,
        /// The recipients on the receiving core.
        users: Arc<[UserId]>,
        /// The sending session, which gets SendOk instead.
        skip: Option<Origin>,
    },
    /// A user's presence, from its home core, for its friends homed on the
    /// receiving core (see `core/presence.rs`).
    Presence(PresenceUpdate),
    /// An Edit or Delete for a chat the receiving core owns.
    Amend(AmendRequest),
    /// A typing indicator for a chat the receiving core owns (from the typist's home core).
    Typing {
        /// The chat.
        chat: ChatId,
        /// Who types.
        user: UserId,
        /// Started (or still) typing, or stopped.
        active: bool,
    },
    /// One of `user`'s devices acknowledged `seq` in `chat` (from its home core, to the owner).
    Delivered {
        /// The chat.
        chat: ChatId,
        /// The member.
        user: UserId,
        /// The acknowledged seq.
        seq: Seq,
    },
    /// `user` moved its read marker in `chat` to `seq` (from the HTTP side-port, to the owner).
    ReadMarker {
        /// The chat.
        chat: ChatId,
        /// The member.
        user: UserId,
        /// The read marker now stored.
        seq: Seq,
    },
    /// `user` turned read receipts on or off (from the HTTP side-port, to every core).
    Settings {
        /// The user.
        user: UserId,
        /// Read receipts on.
        read_receipts: bool,
    },
    /// A conversation frame (Receipt, Typing) for every conversation session of these users,
    /// homed on the receiving core.
    Notify {
        /// The recipients on the receiving core.
        users: Arc<[UserId]>,
        /// The encoded frame, shared by every recipient.
        frame: Bytes,
    },
    /// A session finished a sync: the owner answers with the current receipts of these chats
    /// (as one Reply), for `viewer`'s eyes.
    ReceiptsQuery {
        /// The session.
        to: Origin,
        /// Its user.
        viewer: UserId,
        /// Chats the receiving core owns.
        chats: Vec<ChatId>,
    },
}

/// What the owner core needs to know about a chat to serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatSnapshot {
    /// Direct or group.
    pub kind: ChatKind,
    /// The group's owner (for a direct chat: the one who created it).
    pub owner: UserId,
    /// Current members.
    pub members: Vec<UserId>,
    /// The last committed seq (0 when empty).
    pub last_seq: Seq,
    /// Members' delivered seqs (the `receipts` rows).
    pub delivered: Vec<(UserId, Seq)>,
    /// Members' read markers (only those that are set).
    pub read: Vec<(UserId, Seq)>,
    /// Members who turned read receipts off.
    pub read_receipts_off: Vec<UserId>,
}

/// The store reads the core makes (a trait so the core stays free of I/O
/// plumbing; natterd's fjall store implements it in `crate::store`).
pub trait ChatStore: crate::core::sync::SyncStore + Send + Sync + std::fmt::Debug {
    /// Loads a chat, or `None` when it does not exist.
    ///
    /// # Errors
    /// The store failed.
    fn chat_snapshot(&self, chat: ChatId) -> Result<Option<ChatSnapshot>, ReadError>;

    /// The committed `(seq, server_ts_ms)` of an earlier send with the same key.
    ///
    /// # Errors
    /// The store failed.
    fn dedupe(
        &self,
        chat: ChatId,
        sender: UserId,
        cmid: ClientMsgId,
    ) -> Result<Option<(Seq, u64)>, ReadError>;

    /// Whether the disk is below the free-space reserve (`--disk-reserve`):
    /// the owner core then refuses new messages with `storage_full` (retries of
    /// stored ones are still answered from the dedupe record). A cheap flag
    /// read, kept fresh by the storage writer.
    fn below_space_reserve(&self) -> bool;

    /// Whether two users are friends.
    ///
    /// # Errors
    /// The store failed.
    fn are_friends(&self, a: UserId, b: UserId) -> Result<bool, ReadError>;

    /// When `user` joined `chat` (ms since the Unix epoch) as committed, or
    /// `None` when it is not a committed member. The owner core reads it to pick
    /// the next owner when a group's owner leaves.
    ///
    /// # Errors
    /// The store failed.
    fn member_since(&self, chat: ChatId, user: UserId) -> Result<Option<u64>, ReadError>;

    /// A user's accepted friends (presence loads them on the user's first session).
    ///
    /// # Errors
    /// The store failed.
    fn friend_ids(&self, user: UserId) -> Result<Vec<UserId>, ReadError>;

    /// A user's durable last-seen time (ms since the Unix epoch), if recorded.
    ///
    /// # Errors
    /// The store failed.
    fn last_seen(&self, user: UserId) -> Result<Option<u64>, ReadError>;

    /// The text of the committed message `(chat, seq)`, if stored (read on a
    /// dedupe hit, to tell a retry from a reused `client_msg_id`).
    ///
    /// # Errors
    /// The store failed.
    fn stored_text(&self, chat: ChatId, seq: Seq) -> Result<Option<String>, ReadError>;

    /// The committed message `(chat, seq)`, if stored (read by an Edit or Delete of it).
    ///
    /// # Errors
    /// The store failed.
    fn stored_message(&self, chat: ChatId, seq: Seq) -> Result<Option<super::StoredMessage>, ReadError>;
}

/// A send handed to the storage writer and not yet committed.
#[derive(Debug)]
pub(crate) struct InFlight {
    pub(crate) sender: UserId,
    pub(crate) client_msg_id: ClientMsgId,
    pub(crate) server_ts_ms: u64,
    /// [`super::text_digest`] of the text: a retry must repeat it.
    pub(crate) text_digest: u64,
    /// The text's length in bytes (counted in `Core::in_flight_bytes`).
    pub(crate) text_bytes: usize,
    /// The encoded Message frame (request id 0), pushed after commit.
    pub(crate) frame: Bytes,
    /// Sessions waiting for SendOk: the original and any retries that came
    /// while the first was in flight.
    pub(crate) waiters: Vec<(Origin, u64)>,
    /// The members when the seq was assigned, grouped by home core.
    pub(crate) recipients: Arc<[Arc<[UserId]>]>,
}

/// A chat as its owner core holds it.
#[derive(Debug)]
pub(crate) struct ChatState {
    pub(crate) kind: ChatKind,
    pub(crate) owner: UserId,
    pub(crate) members: HashSet<UserId>,
    /// Members grouped by home core (index = core), rebuilt on membership changes
    /// and shared by every in-flight message.
    pub(crate) recipients: Arc<[Arc<[UserId]>]>,
    /// The seq the next accepted send gets.
    pub(crate) next_seq: u64,
    /// In-flight sends by dedupe key → their seq.
    pub(crate) in_flight: HashMap<(UserId, ClientMsgId), Seq>,
    /// Membership changes applied here but not yet committed: the chat must
    /// stay cached until they are (the store does not have them yet).
    pub(crate) memberships_in_flight: usize,
    /// In the owner core's idle queue (an eviction candidate).
    pub(crate) idle_queued: bool,
    /// Receipts, typing and the records of edits in flight (`conversation.rs`).
    pub(crate) conv: super::conversation::ChatConv,
}

impl ChatState {
    pub(crate) fn new(snapshot: ChatSnapshot, cores: usize) -> Self {
        let mut chat = Self {
            kind: snapshot.kind,
            owner: snapshot.owner,
            members: snapshot.members.into_iter().collect(),
            recipients: Arc::new([]),
            next_seq: snapshot.last_seq.0 + 1,
            in_flight: HashMap::new(),
            memberships_in_flight: 0,
            idle_queued: false,
            conv: super::conversation::ChatConv::new(
                &snapshot.delivered,
                &snapshot.read,
                &snapshot.read_receipts_off,
            ),
        };
        chat.rebuild_recipients(cores);
        chat
    }

    /// Nothing in flight: the store has all of it, so it may be evicted.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.is_empty() && self.memberships_in_flight == 0 && !self.conv.flush_queued
    }

    pub(crate) fn rebuild_recipients(&mut self, cores: usize) {
        let mut by_core: Vec<Vec<UserId>> = vec![Vec::new(); cores];
        let mut members: Vec<UserId> = self.members.iter().copied().collect();
        members.sort_unstable();
        for user in members {
            if let Some(list) = by_core.get_mut(user.home_core(cores).0) {
                list.push(user);
            }
        }
        self.recipients = by_core.into_iter().map(Arc::from).collect();
    }
}
