//! What the search indexer (`crate::search`) reads to catch up: every chat's
//! id, in pages. Messages themselves are read with [`Store::messages`] and
//! [`Store::message`]; nothing here writes.

use super::{Store, StoreError, corrupt, keys};
use crate::ids::ChatId;

impl Store {
    /// Up to `limit` chat ids above `after`, ascending: one range scan of
    /// `chats`. Callers bound `limit` (a page).
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn chat_ids_after(&self, after: ChatId, limit: usize) -> Result<Vec<ChatId>, StoreError> {
        let Some(first) = after.0.checked_add(1) else {
            return Ok(Vec::new());
        };
        self.chats
            .range(keys::id(first)..)
            .take(limit)
            .map(|guard| {
                let key = guard.key()?;
                keys::decode_id(&key)
                    .map(ChatId)
                    .ok_or_else(|| corrupt("chats[..]".to_owned()))
            })
            .collect()
    }
}
