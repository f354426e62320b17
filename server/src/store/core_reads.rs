//! The fjall store's side of the core's read traits ([`ChatStore`],
//! [`SyncStore`]): each read maps onto the store's own queries, and its
//! errors onto the core's [`ReadError`].

use super::{Store, StoreError};
use crate::core::{ChatSnapshot, ChatStore, ReadError, StoredMessage, SyncStore};
use crate::ids::{ChatId, ClientMsgId, DeviceId, Seq, UserId};

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
        let Some(info) = self.chat(chat)? else {
            return Ok(None);
        };
        Ok(Some(ChatSnapshot {
            kind: info.kind,
            owner: info.owner,
            members: info.members,
            last_seq: self.last_seq(chat)?,
        }))
    }

    fn dedupe(
        &self,
        chat: ChatId,
        sender: UserId,
        cmid: ClientMsgId,
    ) -> Result<Option<(Seq, u64)>, ReadError> {
        Ok(Store::dedupe(self, chat, sender, cmid)?)
    }

    fn are_friends(&self, a: UserId, b: UserId) -> Result<bool, ReadError> {
        Ok(Store::are_friends(self, a, b)?)
    }

    fn member_since(&self, chat: ChatId, user: UserId) -> Result<Option<u64>, ReadError> {
        Ok(Store::member_since(self, chat, user)?)
    }

    fn friend_ids(&self, user: UserId) -> Result<Vec<UserId>, ReadError> {
        Ok(Store::friend_ids(self, user)?)
    }

    fn last_seen(&self, user: UserId) -> Result<Option<u64>, ReadError> {
        Ok(Store::last_seen(self, user)?)
    }

    fn stored_text(&self, chat: ChatId, seq: Seq) -> Result<Option<String>, ReadError> {
        let Some(after) = seq.0.checked_sub(1) else {
            return Ok(None);
        };
        let page = self.messages_page(chat, Seq(after), 1, usize::MAX)?;
        Ok(page.into_iter().find(|m| m.seq == seq).map(|m| m.text))
    }
}

impl SyncStore for Store {
    fn sync_user_chats(&self, user: UserId) -> Result<Vec<ChatId>, ReadError> {
        Ok(self.user_chats(user)?)
    }

    fn sync_is_member(&self, chat: ChatId, user: UserId) -> Result<bool, ReadError> {
        Ok(self.member_since(chat, user)?.is_some())
    }

    fn sync_last_seq(&self, chat: ChatId) -> Result<Seq, ReadError> {
        Ok(self.last_seq(chat)?)
    }

    fn sync_device_cursor(&self, device: DeviceId, chat: ChatId) -> Result<Option<Seq>, ReadError> {
        Ok(self.device_cursor(device, chat)?)
    }

    fn sync_page(
        &self,
        chat: ChatId,
        after: Seq,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>, ReadError> {
        Ok(self.messages_page(chat, after, max_msgs, max_bytes)?)
    }

    fn sync_history(
        &self,
        chat: ChatId,
        before: Seq,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Result<(Vec<StoredMessage>, bool), ReadError> {
        Ok(self.messages_before(chat, before, max_msgs, max_bytes)?)
    }
}
