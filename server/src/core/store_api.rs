//! The core's vocabulary towards storage: the records it hands the storage
//! writer ([`WriteOp`]) and what comes back once they are durable
//! ([`Completion`]), the stored message and chat kinds it reads, and the one
//! error type of every store read it makes ([`ReadError`]). The store
//! (`crate::store`) implements the core's read traits ([`super::ChatStore`],
//! [`super::SyncStore`]) and consumes these types; nothing here knows fjall.

use crate::ids::{ChatId, ClientMsgId, CoreId, DeviceId, Seq, UserId};

/// Most members a group has, its owner included.
pub const MAX_GROUP_MEMBERS: usize = 100;

/// What kind of chat a chat record describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChatKind {
    /// A 1:1 chat between two friends; its members never change.
    Direct,
    /// A group of up to [`MAX_GROUP_MEMBERS`] members with an owner.
    Group,
}

/// What a stored message is: a text, or an edit or delete of an earlier text of the chat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// An ordinary message.
    #[default]
    Text,
    /// A new text for [`MessageMeta::target`].
    Edit,
    /// The removal of [`MessageMeta::target`].
    Delete,
}

/// Most edits one message takes ([`MessageMeta::edits`] is bounded by it): a delete scrubs the
/// text of every edit, so the list must stay small.
pub const MAX_EDITS_PER_MESSAGE: usize = 64;

/// The conversation fields of a stored message (issue 15). All zero / empty for a text that was
/// never edited or deleted, which the store then encodes in the original, shorter record layout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageMeta {
    /// Text, Edit or Delete.
    pub kind: MessageKind,
    /// For an Edit or Delete: the Text it changes (`Seq(0)` for a Text).
    pub target: Seq,
    /// For a Text: its latest Edit (`Seq(0)`: never edited).
    pub edited: Seq,
    /// For a Text: its Delete (`Seq(0)`: not deleted).
    pub deleted: Seq,
    /// For a Text: every Edit of it, ascending (at most [`MAX_EDITS_PER_MESSAGE`]); a delete
    /// removes their texts too.
    pub edits: Vec<Seq>,
}

impl MessageMeta {
    /// The wire `MessageKind`.
    pub fn wire_kind(&self) -> natter_wire::fb::MessageKind {
        match self.kind {
            MessageKind::Text => natter_wire::fb::MessageKind::Text,
            MessageKind::Edit => natter_wire::fb::MessageKind::Edit,
            MessageKind::Delete => natter_wire::fb::MessageKind::Delete,
        }
    }
}

/// One stored message: its key `(chat, seq)` plus its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// The chat.
    pub chat: ChatId,
    /// Its position in the chat (gapless from 1).
    pub seq: Seq,
    /// Who sent it.
    pub sender: UserId,
    /// When the owner core accepted it, milliseconds since the Unix epoch.
    pub server_ts_ms: u64,
    /// The sender's id for the send (dedupe key).
    pub client_msg_id: ClientMsgId,
    /// The text (valid UTF-8, 1 to 100,000 characters; checked before it gets here). Empty for a
    /// Delete record, and once deleted for the Text and each of its Edits.
    pub text: String,
    /// Kind, target and edit state (all default for a plain text).
    pub meta: MessageMeta,
}

impl StoredMessage {
    /// The wire form, as sent live, by sync and by history.
    pub fn into_wire(self) -> natter_wire::Message {
        natter_wire::Message {
            chat_id: self.chat.0,
            seq: self.seq.0,
            sender: self.sender.0,
            server_ts_ms: self.server_ts_ms,
            client_msg_id: self.client_msg_id.0,
            text: self.text,
            kind: self.meta.wire_kind(),
            target_seq: self.meta.target.0,
            edited_seq: self.meta.edited.0,
            deleted_seq: self.meta.deleted.0,
        }
    }
}

/// One write the core hands to the storage writer ([`Action::Write`](super::Action::Write)),
/// to be made durable by the next group commit, in order with the core's earlier writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// A message and its dedupe record, in one batch.
    Message {
        /// The core to report completion to (the chat's owner core).
        origin: CoreId,
        /// The message, `seq` already assigned.
        msg: StoredMessage,
    },
    /// An Edit or Delete record (with its dedupe record, as a message) and the rewritten records it
    /// changes — the target's new state and, for a delete, each of its edits without text — all in
    /// one batch, so the change is durable whole or not at all. Completes as a message.
    Amend {
        /// The core to report completion to (the chat's owner core).
        origin: CoreId,
        /// The Edit or Delete record, `seq` assigned.
        msg: StoredMessage,
        /// Records of the same chat overwritten in place.
        rewrites: Vec<StoredMessage>,
    },
    /// A member's delivered seq in a chat (the highest any of its devices acknowledged; one
    /// `receipts` row, the newest write wins). Rides in the next group commit; no completion.
    Receipt {
        /// The chat's owner core, which decided it.
        origin: CoreId,
        /// The chat.
        chat: ChatId,
        /// The member.
        user: UserId,
        /// Delivered up to this seq.
        delivered: Seq,
    },
    /// Add or remove a group member (members + user_chats rows).
    Membership {
        /// The core to report completion to (the chat's owner core).
        origin: CoreId,
        /// The group.
        chat: ChatId,
        /// The member added or removed.
        user: UserId,
        /// Add (true) or remove (false).
        add: bool,
        /// The group's owner from this change on, when the change is its owner
        /// leaving (the longest-standing remaining member; `None` otherwise, and
        /// when nobody remains). Written to the chat record in the same batch as
        /// the removal, so the two are durable together or not at all.
        new_owner: Option<UserId>,
        /// The origin's number for this change, echoed in its completion.
        ticket: u64,
    },
    /// A user went offline: their last-seen time (one `last_seen` row, the
    /// newest write wins). Rides in the next group commit; no completion.
    LastSeen {
        /// The user's home core, which decided it.
        origin: CoreId,
        /// The user.
        user: UserId,
        /// Last seen, milliseconds since the Unix epoch.
        last_seen_ms: u64,
    },
    /// A device acknowledged everything up to `seq` in `chat` (one `cursors`
    /// row, the newest write wins). Rides in the next group commit; no completion.
    Cursor {
        /// The device's home core, which took the Ack.
        origin: CoreId,
        /// The device.
        device: DeviceId,
        /// The chat.
        chat: ChatId,
        /// The acknowledged seq.
        seq: Seq,
    },
}

/// What the storage writer reports to an origin core once a [`WriteOp`] is
/// durable ([`Core::handle_committed`](super::Core::handle_committed)), in op order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// The message `(chat, seq)` and its dedupe record are committed and synced.
    Message {
        /// The chat.
        chat: ChatId,
        /// The message's seq.
        seq: Seq,
    },
    /// The membership change with this ticket is committed and synced.
    Membership {
        /// The ticket of the [`WriteOp::Membership`].
        ticket: u64,
    },
}

/// Why a store read the core made failed. The store maps its own errors onto
/// these; the core answers the request with `unavailable` and carries on
/// (writes never fail here: a failed write stops the process).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// Internal: a stored record does not decode (damaged data or an
    /// incompatible version).
    #[error("corrupt record in the store: {what}")]
    Corrupt {
        /// Which record, for the log.
        what: String,
    },
    /// The store could not answer (I/O error, poisoned after a failed sync).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}
