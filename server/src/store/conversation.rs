//! The store's part of the conversation features (issue 15): each member's
//! delivered seq per chat (`receipts`, written by the owner core through the
//! group-commit writer), each user's settings (`settings`: read receipts on or
//! off), one message read by seq (what an edit or delete checks), and the
//! unread count of a user in a chat.
//!
//! | keyspace   | key                  | value                                        |
//! |------------|----------------------|----------------------------------------------|
//! | `receipts` | `chat_id ++ user_id` | delivered seq, `u64` BE                      |
//! | `settings` | `user_id`            | version byte 1, flags byte (bit 0: read receipts **off**) |

use fjall::PersistMode;

use super::{Store, StoreError, corrupt, keys};
use crate::core::{MessageKind, StoredMessage};
use crate::ids::{ChatId, Seq, UserId};

/// Keyspace of members' delivered seqs by `chat_id ++ user_id`.
pub(crate) const RECEIPTS: &str = "receipts";
/// Keyspace of user settings by `user_id`.
pub(crate) const SETTINGS: &str = "settings";

/// Most message records one unread count reads: past it, the rest of the range
/// is counted as unread seq by seq (an upper bound), so `GET /v1/chats` stays
/// bounded whatever a user left unread.
pub const UNREAD_SCAN_LIMIT: u64 = 10_000;

const SETTINGS_V1: u8 = 1;
const FLAG_READ_RECEIPTS_OFF: u8 = 1;

/// A user's settings (`PUT /v1/settings`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Send read receipts (and see others'); when off, others see delivered only, and so does
    /// this user of everyone else (as WhatsApp does).
    pub read_receipts: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self { read_receipts: true }
    }
}

impl Store {
    /// The delivered seq of every member of `chat` that has one, by user id.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn delivered_seqs(&self, chat: ChatId) -> Result<Vec<(UserId, Seq)>, StoreError> {
        let mut out = Vec::new();
        for guard in self.receipts.prefix(keys::id(chat.0)) {
            let (key, value) = guard.into_inner()?;
            let (_, user) = keys::decode_pair(&key).ok_or_else(|| corrupt(format!("receipts[{chat}/..]")))?;
            let seq = keys::decode_id(&value).ok_or_else(|| corrupt(format!("receipts[{chat}/{user}]")))?;
            out.push((UserId(user), Seq(seq)));
        }
        Ok(out)
    }

    /// A user's settings (the defaults when never set).
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn settings(&self, user: UserId) -> Result<Settings, StoreError> {
        let Some(value) = self.settings.get(keys::id(user.0))? else {
            return Ok(Settings::default());
        };
        match value.as_ref() {
            [SETTINGS_V1, flags] => Ok(Settings {
                read_receipts: flags & FLAG_READ_RECEIPTS_OFF == 0,
            }),
            _ => Err(corrupt(format!("settings[{user}]"))),
        }
    }

    /// Stores a user's settings, durably before it returns.
    pub fn set_settings(&self, user: UserId, settings: Settings) {
        let flags = if settings.read_receipts {
            0
        } else {
            FLAG_READ_RECEIPTS_OFF
        };
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&self.settings, keys::id(user.0), [SETTINGS_V1, flags]);
        self.commit(batch, "settings");
    }

    /// The message `(chat, seq)`, if stored.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn message(&self, chat: ChatId, seq: Seq) -> Result<Option<StoredMessage>, StoreError> {
        let Some(after) = seq.0.checked_sub(1) else {
            return Ok(None);
        };
        let page = self.messages_page(chat, Seq(after), 1, usize::MAX)?;
        Ok(page.into_iter().find(|m| m.seq == seq))
    }

    /// What `user` has unread in `chat`: the Text messages of others after `read`, up to `last`,
    /// that are not deleted (edit and delete records, and the user's own messages, are not
    /// unread). Reads at most [`UNREAD_SCAN_LIMIT`] records; past that every further seq counts.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn unread(&self, user: UserId, chat: ChatId, read: Seq, last: Seq) -> Result<u64, StoreError> {
        if read >= last {
            return Ok(0);
        }
        let span = last.0 - read.0;
        let scanned = span.min(UNREAD_SCAN_LIMIT);
        let mut unread = span - scanned;
        let range = keys::pair(chat.0, read.0 + 1)..=keys::pair(chat.0, read.0 + scanned);
        for guard in self.messages.range(range) {
            let (key, value) = guard.into_inner()?;
            let (_, seq) = keys::decode_pair(&key).ok_or_else(|| corrupt(format!("messages[{chat}/..]")))?;
            let msg = StoredMessage::decode_value(chat, Seq(seq), &value)
                .ok_or_else(|| corrupt(format!("messages[{chat}/{seq}]")))?;
            if msg.meta.kind == MessageKind::Text && msg.meta.deleted == Seq(0) && msg.sender != user {
                unread += 1;
            }
        }
        Ok(unread)
    }
}
