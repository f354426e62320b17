//! The fjall store's side of the core's read traits ([`ChatStore`],
//! [`SyncStore`]): each read maps onto the store's own queries, and its
//! errors onto the core's [`ReadError`]. Each read is also counted on the
//! thread that makes it ([`take_reads_on_this_thread`]), so an event loop can
//! report the store reads it made itself (`natter_loop_store_reads_total`).

use std::cell::Cell;

use super::{Store, StoreError};
use crate::core::{ChatSnapshot, ChatStore, ReadError, StoredMessage, SyncStore};
use crate::ids::{ChatId, ClientMsgId, DeviceId, Seq, UserId};

thread_local! {
    static READS: Cell<u64> = const { Cell::new(0) };
}

/// Counts one read on the calling thread.
fn note() {
    READS.with(|r| r.set(r.get().wrapping_add(1)));
}

/// The reads this thread made through the core's read traits since the last
/// call (and resets the count).
pub fn take_reads_on_this_thread() -> u64 {
    READS.with(|r| r.replace(0))
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt { what } => ReadError::Corrupt { what },
            other => ReadError::Unavailable(other.to_string()),
        }
    }
}

impl ChatStore for Store {
    fn chat_snapshot(&self, chat: ChatId) -> Result<Option<ChatSnapshot>, ReadError> {
        note();
        let Some(info) = self.chat(chat)? else {
            return Ok(None);
        };
        Ok(Some(ChatSnapshot {
            kind: info.kind,
            owner: info.owner,
            last_seq: self.last_seq(chat)?,
            delivered: self.delivered_seqs(chat)?,
            read: {
                let mut read = Vec::new();
                for &user in &info.members {
                    let seq = self.read_marker(user, chat)?;
                    if seq.0 != 0 {
                        read.push((user, seq));
                    }
                }
                read
            },
            read_receipts_off: {
                let mut off = Vec::new();
                for &user in &info.members {
                    if !self.settings(user)?.read_receipts {
                        off.push(user);
                    }
                }
                off
            },
            members: info.members,
        }))
    }

    fn dedupe(
        &self,
        chat: ChatId,
        sender: UserId,
        cmid: ClientMsgId,
    ) -> Result<Option<(Seq, u64)>, ReadError> {
        note();
        Ok(Store::dedupe(self, chat, sender, cmid)?)
    }

    fn below_space_reserve(&self) -> bool {
        self.space().is_low()
    }

    fn are_friends(&self, a: UserId, b: UserId) -> Result<bool, ReadError> {
        note();
        Ok(Store::are_friends(self, a, b)?)
    }

    fn member_since(&self, chat: ChatId, user: UserId) -> Result<Option<u64>, ReadError> {
        note();
        Ok(Store::member_since(self, chat, user)?)
    }

    fn friend_ids(&self, user: UserId) -> Result<Vec<UserId>, ReadError> {
        note();
        Ok(Store::friend_ids(self, user)?)
    }

    fn last_seen(&self, user: UserId) -> Result<Option<u64>, ReadError> {
        note();
        Ok(Store::last_seen(self, user)?)
    }

    fn stored_text(&self, chat: ChatId, seq: Seq) -> Result<Option<String>, ReadError> {
        note();
        let Some(after) = seq.0.checked_sub(1) else {
            return Ok(None);
        };
        let page = self.messages_page(chat, Seq(after), 1, usize::MAX)?;
        Ok(page.into_iter().find(|m| m.seq == seq).map(|m| m.text))
    }

    fn stored_message(&self, chat: ChatId, seq: Seq) -> Result<Option<StoredMessage>, ReadError> {
        note();
        Ok(self.message(chat, seq)?)
    }
}

impl SyncStore for Store {
    fn sync_user_chats(&self, user: UserId) -> Result<Vec<ChatId>, ReadError> {
        note();
        Ok(self.user_chats(user)?)
    }

    fn sync_is_member(&self, chat: ChatId, user: UserId) -> Result<bool, ReadError> {
        note();
        Ok(self.member_since(chat, user)?.is_some())
    }

    fn sync_last_seq(&self, chat: ChatId) -> Result<Seq, ReadError> {
        note();
        Ok(self.last_seq(chat)?)
    }

    fn sync_device_cursor(&self, device: DeviceId, chat: ChatId) -> Result<Option<Seq>, ReadError> {
        note();
        Ok(self.device_cursor(device, chat)?)
    }

    fn sync_page(
        &self,
        chat: ChatId,
        after: Seq,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>, ReadError> {
        note();
        Ok(self.messages_page(chat, after, max_msgs, max_bytes)?)
    }

    fn sync_history(
        &self,
        chat: ChatId,
        before: Seq,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Result<(Vec<StoredMessage>, bool), ReadError> {
        note();
        Ok(self.messages_before(chat, before, max_msgs, max_bytes)?)
    }

    fn sync_chat_states(&self, user: UserId) -> Result<Vec<natter_wire::ChatState>, ReadError> {
        note();
        let mut out = Vec::new();
        for chat in self.user_chats(user)? {
            let last = self.last_seq(chat)?;
            let read = self.read_marker(user, chat)?.min(last);
            out.push(natter_wire::ChatState {
                chat_id: chat.0,
                last_seq: last.0,
                read_seq: read.0,
                unread: self.unread(user, chat, read, last)?,
            });
        }
        Ok(out)
    }
}
