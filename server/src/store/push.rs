//! The push keyspaces: one pusher per device (where to send its
//! notifications) and the per-(device, chat) "notified up to" watermark.
//!
//! | keyspace     | key                    | value                                  |
//! |--------------|------------------------|----------------------------------------|
//! | `pushers`    | `user_id ++ device_id` | [`Pusher`] as JSON (versioned by `v`)  |
//! | `push_marks` | `device_id ++ chat_id` | `seq`, `u64` BE                        |
//!
//! # What is owed, derived from durable facts
//!
//! There is no queue of notifications on disk that could diverge from the
//! messages. A device with a pusher is owed a notification for a chat when
//! the chat's last committed `seq` is above every one of: its `push_marks`
//! watermark, its own sync cursor (`cursors`), and its user's read marker
//! (`read_markers`) — and the newest message is not its own user's. The push
//! thread rebuilds that at start (and after an overflow of its in-memory
//! table) with [`Store::owed_at_start`]. Watermarks are written with
//! [`PersistMode::Buffer`]: they survive a process crash (kill -9), and losing
//! one in a power cut costs at most a duplicate notification, never a lost one.
//!
//! Pusher changes are account writes: one durable batch ([`PersistMode::SyncData`])
//! before the side-port answers. Registering writes the device's watermark for
//! every chat of its user at its current last `seq`, in the same batch, so a
//! new pusher owes nothing for the past.

use fjall::PersistMode;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, corrupt, keys};
use crate::ids::{ChatId, DeviceId, Seq, UserId};

/// Keyspace of pushers by `user_id ++ device_id`.
pub(crate) const PUSHERS: &str = "pushers";
/// Keyspace of notified-up-to watermarks by `device_id ++ chat_id`.
pub(crate) const PUSH_MARKS: &str = "push_marks";

/// What a notification carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushFormat {
    /// Chat id, sender, seq and counts; no text (the default: the gateway and
    /// the platform's push service see no content).
    ContentFree,
    /// As content-free, plus the message text cut to `--push-text-max` characters.
    WithText,
}

impl PushFormat {
    /// The name used in the HTTP API (`"content_free"`, `"with_text"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContentFree => "content_free",
            Self::WithText => "with_text",
        }
    }
}

/// One device's pusher: where its notifications go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pusher {
    /// The device's user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
    /// The app's id at the gateway (e.g. `"com.example.natter.ios"`); 1–64 bytes.
    pub app_id: String,
    /// The platform's token for the device (APNs / FCM), 1–512 bytes. Never logged.
    pub pushkey: String,
    /// The gateway's notify URL (`…/_matrix/push/v1/notify`), checked against
    /// the allow-list when it was registered.
    pub gateway_url: String,
    /// Content-free or with text.
    pub format: PushFormat,
    /// When it was registered, ms since the Unix epoch.
    pub created_ms: u64,
}

/// The stored form of a [`Pusher`] (user and device are its key).
#[derive(Serialize, Deserialize)]
struct PusherRecord {
    /// Record version, 1.
    v: u8,
    app_id: String,
    pushkey: String,
    gateway_url: String,
    format: PushFormat,
    created_ms: u64,
}

/// A notification owed at start-up: `device` has not been told of `chat` up to `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwedAtStart {
    /// The device's user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
    /// The chat.
    pub chat: ChatId,
    /// The chat's last committed seq.
    pub seq: Seq,
}

impl Store {
    /// Registers (or replaces) `pusher` for its device, and marks every chat of
    /// its user as notified up to its current last seq: one durable batch.
    /// The caller checked that the device is the caller's.
    ///
    /// # Errors
    /// A store failure.
    pub fn set_pusher(&self, pusher: &Pusher) -> Result<(), StoreError> {
        self.refuse_if_full()?;
        let record = PusherRecord {
            v: 1,
            app_id: pusher.app_id.clone(),
            pushkey: pusher.pushkey.clone(),
            gateway_url: pusher.gateway_url.clone(),
            format: pusher.format,
            created_ms: pusher.created_ms,
        };
        let value = serde_json::to_vec(&record).map_err(|e| corrupt(format!("pusher encode: {e}")))?;
        let chats = self.user_chats(pusher.user)?;
        let _guard = self.lock();
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&self.pushers, keys::pair(pusher.user.0, pusher.device.0), value);
        for chat in chats {
            let last = self.last_seq(chat)?;
            batch.insert(
                &self.push_marks,
                keys::pair(pusher.device.0, chat.0),
                keys::id(last.0),
            );
        }
        self.commit(batch, "pusher");
        Ok(())
    }

    /// The pusher of `user`'s `device`, if it has one.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn pusher(&self, user: UserId, device: DeviceId) -> Result<Option<Pusher>, StoreError> {
        match self.pushers.get(keys::pair(user.0, device.0))? {
            None => Ok(None),
            Some(value) => decode_pusher(&keys::pair(user.0, device.0), &value).map(Some),
        }
    }

    /// Removes the pusher of `user`'s `device` (durable); `false` when it had none.
    /// With `only_key`, removes it only if its pushkey is still that one (a
    /// gateway's `rejected` must not remove a pusher registered again since).
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn remove_pusher(
        &self,
        user: UserId,
        device: DeviceId,
        only_key: Option<&str>,
    ) -> Result<bool, StoreError> {
        let _guard = self.lock();
        let Some(current) = self.pusher(user, device)? else {
            return Ok(false);
        };
        if only_key.is_some_and(|key| key != current.pushkey) {
            return Ok(false);
        }
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.remove(&self.pushers, keys::pair(user.0, device.0));
        self.commit(batch, "pusher removal");
        Ok(true)
    }

    /// Every pusher (the push thread's index, loaded once at start).
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn all_pushers(&self) -> Result<Vec<Pusher>, StoreError> {
        self.pushers
            .iter()
            .map(|guard| {
                let (key, value) = guard.into_inner()?;
                decode_pusher(&key, &value)
            })
            .collect()
    }

    /// The seq up to which `device` was notified of (or shown) `chat`.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn push_mark(&self, device: DeviceId, chat: ChatId) -> Result<Seq, StoreError> {
        match self.push_marks.get(keys::pair(device.0, chat.0))? {
            None => Ok(Seq(0)),
            Some(value) => keys::decode_id(&value)
                .map(Seq)
                .ok_or_else(|| corrupt(format!("push_marks[{device}/{chat}]"))),
        }
    }

    /// Moves watermarks forward (never back: a mark is only written above the
    /// stored one), in one batch that survives a process crash
    /// ([`PersistMode::Buffer`]; see the module docs for why not `SyncData`).
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn set_push_marks(&self, marks: &[(DeviceId, ChatId, Seq)]) -> Result<(), StoreError> {
        self.set_push_marks_above(marks, |_, _| None)
    }

    /// [`Store::set_push_marks`], taking the stored watermark from `known`
    /// where it has one (the push thread remembers what it read and wrote), so
    /// a busy device costs no read-before-write; the store answers the others.
    /// `known` must never be above the stored mark (the caller's record only
    /// lags it), or a mark between the two would be skipped.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn set_push_marks_above(
        &self,
        marks: &[(DeviceId, ChatId, Seq)],
        known: impl Fn(DeviceId, ChatId) -> Option<Seq>,
    ) -> Result<(), StoreError> {
        if marks.is_empty() {
            return Ok(());
        }
        // The highest mark per key first: within a batch the last insert would win.
        let mut highest: std::collections::HashMap<(DeviceId, ChatId), Seq> =
            std::collections::HashMap::new();
        for &(device, chat, seq) in marks {
            let e = highest.entry((device, chat)).or_insert(seq);
            *e = (*e).max(seq);
        }
        let mut batch = self.db.batch().durability(Some(PersistMode::Buffer));
        for ((device, chat), seq) in highest {
            let stored = match known(device, chat) {
                Some(mark) => mark,
                None => self.push_mark(device, chat)?,
            };
            if stored < seq {
                batch.insert(&self.push_marks, keys::pair(device.0, chat.0), keys::id(seq.0));
            }
        }
        self.commit(batch, "push watermarks");
        Ok(())
    }

    /// What `pusher`'s device is owed now, derived from the durable facts (module
    /// docs): per chat of its user, the last seq when it is above the device's
    /// watermark, cursor and the user's read marker, and the newest message is
    /// not the user's own. Costs a few point reads per chat of the user.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn owed_at_start(&self, pusher: &Pusher) -> Result<Vec<OwedAtStart>, StoreError> {
        let mut owed = Vec::new();
        for chat in self.user_chats(pusher.user)? {
            let last = self.last_seq(chat)?;
            let seen = self
                .push_mark(pusher.device, chat)?
                .max(self.device_cursor(pusher.device, chat)?.unwrap_or(Seq(0)))
                .max(self.read_marker(pusher.user, chat)?);
            if last <= seen {
                continue;
            }
            let newest = self.messages(chat, Seq(last.0 - 1), 1)?;
            if newest.first().is_some_and(|m| m.sender == pusher.user) {
                continue;
            }
            owed.push(OwedAtStart {
                user: pusher.user,
                device: pusher.device,
                chat,
                seq: last,
            });
        }
        Ok(owed)
    }

    /// The unread count of `user` in `chat` (last seq minus the read marker)
    /// and the user's total over all of their chats (the badge). One range read
    /// and one point read per chat of the user.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn unread_counts(&self, user: UserId, chat: ChatId) -> Result<(u64, u64), StoreError> {
        self.unread_counts_with(user, chat, |_| None)
    }

    /// [`Store::unread_counts`], taking a chat's last seq from `known` where it
    /// has one (the push thread's record of committed messages), so a busy
    /// chat costs no reverse range read of `messages` per notification; the
    /// store answers for the chats `known` does not.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn unread_counts_with(
        &self,
        user: UserId,
        chat: ChatId,
        known: impl Fn(ChatId) -> Option<Seq>,
    ) -> Result<(u64, u64), StoreError> {
        let (mut this, mut total) = (0, 0u64);
        for c in self.user_chats(user)? {
            let last = match known(c) {
                Some(seq) => seq,
                None => self.last_seq(c)?,
            };
            let unread = last.0.saturating_sub(self.read_marker(user, c)?.0);
            if c == chat {
                this = unread;
            }
            total = total.saturating_add(unread);
        }
        Ok((this, total))
    }
}

fn decode_pusher(key: &[u8], value: &[u8]) -> Result<Pusher, StoreError> {
    let (user, device) = keys::decode_pair(key).ok_or_else(|| corrupt("pushers key".into()))?;
    let r: PusherRecord =
        serde_json::from_slice(value).map_err(|e| corrupt(format!("pushers[{user}/{device}]: {e}")))?;
    Ok(Pusher {
        user: UserId(user),
        device: DeviceId(device),
        app_id: r.app_id,
        pushkey: r.pushkey,
        gateway_url: r.gateway_url,
        format: r.format,
        created_ms: r.created_ms,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ids::{ClientMsgId, CoreId};
    use crate::store::StoredMessage;
    use crate::store::writer::WriteOp;

    fn pusher(user: UserId, device: DeviceId, key: &str) -> Pusher {
        Pusher {
            user,
            device,
            app_id: "app".into(),
            pushkey: key.into(),
            gateway_url: "http://127.0.0.1:1/_matrix/push/v1/notify".into(),
            format: PushFormat::ContentFree,
            created_ms: 1,
        }
    }

    fn message(chat: ChatId, seq: u64, sender: UserId) -> WriteOp {
        WriteOp::Message {
            origin: CoreId(0),
            msg: StoredMessage {
                chat,
                seq: Seq(seq),
                sender,
                server_ts_ms: 1,
                client_msg_id: ClientMsgId(seq),
                text: "hi".into(),
                meta: Default::default(),
            },
        }
    }

    #[test]
    fn what_is_owed_is_derived_from_marks_cursors_read_markers_and_the_sender() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let alice = store.create_user("alice", "phc").unwrap();
        let bob = store.create_user("bob", "phc").unwrap();
        store.request_friend(alice, bob).unwrap();
        store.accept_friend(bob, alice).unwrap();
        let (chat, _) = store.create_dm(alice, bob).unwrap();
        let (phone, _) = store.create_device(bob, "phone").unwrap();
        store.commit_writes(&[message(chat, 1, alice)]);
        // Registering marks the past as notified.
        let p = pusher(bob, phone, "k1");
        store.set_pusher(&p).unwrap();
        assert_eq!(store.push_mark(phone, chat).unwrap(), Seq(1));
        assert!(store.owed_at_start(&p).unwrap().is_empty());
        store.commit_writes(&[message(chat, 2, alice)]);
        let owed = store.owed_at_start(&p).unwrap();
        assert_eq!(owed.len(), 1);
        assert_eq!((owed[0].chat, owed[0].seq), (chat, Seq(2)));
        assert_eq!(store.unread_counts(bob, chat).unwrap(), (2, 2));
        // The read marker covers it.
        store.set_read_marker(bob, chat, Seq(2)).unwrap();
        assert!(store.owed_at_start(&p).unwrap().is_empty());
        // Bob's own newest message owes nothing; a mark covers the next one.
        store.commit_writes(&[message(chat, 3, bob)]);
        assert!(store.owed_at_start(&p).unwrap().is_empty());
        store.commit_writes(&[message(chat, 4, alice)]);
        store
            .set_push_marks(&[(phone, chat, Seq(4)), (phone, chat, Seq(3))])
            .unwrap();
        assert_eq!(store.push_mark(phone, chat).unwrap(), Seq(4));
        assert!(store.owed_at_start(&p).unwrap().is_empty());
        // A rejected key removes only the pusher that still has it.
        assert!(!store.remove_pusher(bob, phone, Some("other")).unwrap());
        assert_eq!(store.all_pushers().unwrap(), vec![p]);
        assert!(store.remove_pusher(bob, phone, Some("k1")).unwrap());
        assert!(store.all_pushers().unwrap().is_empty());
    }
}
