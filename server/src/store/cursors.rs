//! Sync reads and device state in the store: each device's delivered cursor
//! per chat (`cursors`, written by the group-commit writer from `Ack`), each
//! user's read marker per chat (`read_markers`), and the bounded page reads
//! that sync and history are served from.
//!
//! Every read here is bounded by a message count *and* a byte budget, so one
//! call costs a bounded amount of memory whatever the chat holds.

use fjall::PersistMode;

use super::{Store, StoreError, StoredMessage, corrupt, keys};
use crate::ids::{ChatId, DeviceId, Seq, UserId};

impl Store {
    /// Up to `max_msgs` messages of `chat` with `seq > after`, ascending, stopping
    /// once their texts reach `max_bytes` (at least one message when any exists).
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn messages_page(
        &self,
        chat: ChatId,
        after: Seq,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let Some(first) = after.0.checked_add(1) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        let range = keys::pair(chat.0, first)..=keys::pair(chat.0, u64::MAX);
        for guard in self.messages.range(range) {
            if out.len() >= max_msgs || bytes >= max_bytes {
                break;
            }
            let (key, value) = guard.into_inner()?;
            let msg = decode(chat, &key, &value)?;
            bytes += msg.text.len();
            out.push(msg);
        }
        Ok(out)
    }

    /// Up to `max_msgs` messages of `chat` with `seq < before`, **newest first**,
    /// whose texts together stay within `max_bytes` — except that the first
    /// message is always taken, whatever its size (at least one when any exists);
    /// and whether older messages exist beyond the last one returned.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn messages_before(
        &self,
        chat: ChatId,
        before: Seq,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Result<(Vec<StoredMessage>, bool), StoreError> {
        if before.0 <= 1 {
            return Ok((Vec::new(), false));
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        let range = keys::pair(chat.0, 1)..keys::pair(chat.0, before.0);
        for guard in self.messages.range(range).rev() {
            if out.len() >= max_msgs {
                return Ok((out, true));
            }
            let (key, value) = guard.into_inner()?;
            let msg = decode(chat, &key, &value)?;
            // Never past the budget, except with the page's first message
            // (it gets a page of its own).
            if !out.is_empty() && bytes + msg.text.len() > max_bytes {
                return Ok((out, true));
            }
            bytes += msg.text.len();
            out.push(msg);
        }
        Ok((out, false))
    }

    /// The cursor `device` acknowledged in `chat` (everything up to it was
    /// delivered to the device), if it ever acknowledged one.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn device_cursor(&self, device: DeviceId, chat: ChatId) -> Result<Option<Seq>, StoreError> {
        let Some(value) = self.cursors.get(keys::pair(device.0, chat.0))? else {
            return Ok(None);
        };
        keys::decode_id(&value)
            .map(|s| Some(Seq(s)))
            .ok_or_else(|| corrupt(format!("cursors[{device}/{chat}]")))
    }

    /// The seq up to which `user` has read `chat` (0 when never marked).
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn read_marker(&self, user: UserId, chat: ChatId) -> Result<Seq, StoreError> {
        let Some(value) = self.read_markers.get(keys::pair(user.0, chat.0))? else {
            return Ok(Seq(0));
        };
        keys::decode_id(&value)
            .map(Seq)
            .ok_or_else(|| corrupt(format!("read_markers[{user}/{chat}]")))
    }

    /// Moves `user`'s read marker in `chat` forward to `seq` (never back: a
    /// marker from a device that is behind does not undo another's). Durable
    /// before it returns. Returns the marker now stored.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn set_read_marker(&self, user: UserId, chat: ChatId, seq: Seq) -> Result<Seq, StoreError> {
        // Serialised with the other account writes, so two markers for one user
        // cannot race past each other.
        let _guard = self.lock();
        let current = self.read_marker(user, chat)?;
        if seq <= current {
            return Ok(current);
        }
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&self.read_markers, keys::pair(user.0, chat.0), keys::id(seq.0));
        self.commit(batch, "read marker");
        Ok(seq)
    }
}

fn decode(chat: ChatId, key: &[u8], value: &[u8]) -> Result<StoredMessage, StoreError> {
    keys::decode_pair(key)
        .and_then(|(c, seq)| {
            (c == chat.0).then_some(())?;
            StoredMessage::decode_value(chat, Seq(seq), value)
        })
        .ok_or_else(|| corrupt(format!("messages[{chat}/..]")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ids::ClientMsgId;
    use crate::store::writer::WriteOp;

    fn msg(chat: ChatId, seq: u64, text: &str) -> WriteOp {
        WriteOp::Message {
            origin: crate::ids::CoreId(0),
            msg: StoredMessage {
                chat,
                seq: Seq(seq),
                sender: UserId(1),
                server_ts_ms: seq,
                client_msg_id: ClientMsgId(seq),
                text: text.into(),
                meta: Default::default(),
            },
        }
    }

    #[test]
    fn pages_are_bounded_by_count_and_bytes_and_history_is_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (ChatId(5), ChatId(6));
        let ops: Vec<WriteOp> = (1..=10)
            .map(|s| msg(a, s, "0123456789"))
            .chain([msg(b, 1, "x")])
            .collect();
        store.commit_writes(&ops);
        let seqs = |v: &[StoredMessage]| v.iter().map(|m| m.seq.0).collect::<Vec<_>>();
        assert_eq!(
            seqs(&store.messages_page(a, Seq(0), 4, 1 << 20).unwrap()),
            [1, 2, 3, 4]
        );
        assert_eq!(
            seqs(&store.messages_page(a, Seq(7), 100, 1 << 20).unwrap()),
            [8, 9, 10]
        );
        assert_eq!(seqs(&store.messages_page(a, Seq(0), 100, 25).unwrap()), [1, 2, 3]);
        assert!(store.messages_page(a, Seq(10), 100, 100).unwrap().is_empty());
        assert!(
            store
                .messages_page(a, Seq(u64::MAX), 100, 100)
                .unwrap()
                .is_empty()
        );
        let (page, more) = store.messages_before(a, Seq(0), 3, 1 << 20).unwrap();
        assert!(page.is_empty() && !more);
        let (page, more) = store.messages_before(a, Seq(u64::MAX), 3, 1 << 20).unwrap();
        assert_eq!((seqs(&page), more), (vec![10, 9, 8], true));
        let (page, more) = store.messages_before(a, Seq(4), 3, 1 << 20).unwrap();
        assert_eq!((seqs(&page), more), (vec![3, 2, 1], false));
        // History never goes past its byte budget: 10-byte texts, 25 bytes → two.
        let (page, more) = store.messages_before(a, Seq(4), 10, 25).unwrap();
        assert_eq!((seqs(&page), more), (vec![3, 2], true));
        // ... except that a message larger than the budget gets a page of its own.
        let (page, more) = store.messages_before(a, Seq(4), 10, 5).unwrap();
        assert_eq!((seqs(&page), more), (vec![3], true));
        assert_eq!(seqs(&store.messages_before(b, Seq(5), 10, 100).unwrap().0), [1]);
    }

    #[test]
    fn cursors_ride_the_group_commit_and_read_markers_only_move_forward() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.device_cursor(DeviceId(3), ChatId(4)).unwrap(), None);
            store.commit_writes(&[WriteOp::Cursor {
                origin: crate::ids::CoreId(0),
                device: DeviceId(3),
                chat: ChatId(4),
                seq: Seq(17),
            }]);
            assert_eq!(
                store.set_read_marker(UserId(1), ChatId(4), Seq(9)).unwrap(),
                Seq(9)
            );
            assert_eq!(
                store.set_read_marker(UserId(1), ChatId(4), Seq(2)).unwrap(),
                Seq(9)
            );
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.device_cursor(DeviceId(3), ChatId(4)).unwrap(),
            Some(Seq(17))
        );
        assert_eq!(store.device_cursor(DeviceId(4), ChatId(4)).unwrap(), None);
        assert_eq!(store.read_marker(UserId(1), ChatId(4)).unwrap(), Seq(9));
        assert_eq!(store.read_marker(UserId(2), ChatId(4)).unwrap(), Seq(0));
    }
}
