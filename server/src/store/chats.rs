//! Chats in the store: creating direct chats and groups (durable before the
//! call returns), reading a chat with its members, a user's chats, a chat's
//! messages and last `seq`, and the send dedupe lookup.
//!
//! Messages, dedupe records, membership changes of existing groups and the
//! new owner when a group's owner leaves are *written* only by the
//! group-commit writer (`writer.rs`), in the order the chat's owner core
//! decided them; this file only reads them.

use fjall::PersistMode;

use super::records::{ChatRecord, decode_member, encode_member};
use super::{ChatKind, MAX_GROUP_MEMBERS, Store, StoreError, StoredMessage, corrupt, keys, now_ms};
use crate::ids::{ChatId, ClientMsgId, Seq, UserId};

/// A chat with its current members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatInfo {
    /// The chat's id.
    pub id: ChatId,
    /// Direct or group.
    pub kind: ChatKind,
    /// The group's name (empty for a direct chat).
    pub name: String,
    /// The group's owner (for a direct chat, whoever opened it).
    pub owner: UserId,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Current members, ascending by id.
    pub members: Vec<UserId>,
}

impl Store {
    /// Opens the direct chat between `a` and `b`, or returns the one they have:
    /// the same pair (in either order) always gets the same chat. The bool is
    /// true when the chat was created by this call. A new chat (its record, both
    /// memberships, both `user_chats` rows and the pair index) is one batch,
    /// `fdatasync`ed before this returns (a failed commit ends the process: the
    /// poison rule). Friendship is the caller's check.
    ///
    /// # Errors
    /// [`StoreError::SelfChat`] when `a == b`, [`StoreError::UnknownUser`], or a
    /// store failure.
    pub fn create_dm(&self, a: UserId, b: UserId) -> Result<(ChatId, bool), StoreError> {
        if a == b {
            return Err(StoreError::SelfChat);
        }
        let pair_key = keys::dm_pair(a.0, b.0);
        let mut counters = self.lock();
        if let Some(value) = self.dms.get(pair_key)? {
            let id = keys::decode_id(&value).ok_or_else(|| corrupt(format!("dms[{a}/{b}]")))?;
            return Ok((ChatId(id), false));
        }
        self.require_users(&[a, b])?;
        self.refuse_if_full()?;
        let chat = ChatId(counters.next_chat);
        let record = ChatRecord {
            kind: ChatKind::Direct,
            name: String::new(),
            owner: a,
            created_ms: now_ms(),
        };
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&self.chats, keys::id(chat.0), record.encode());
        for user in [a, b] {
            batch.insert(
                &self.members,
                keys::pair(chat.0, user.0),
                encode_member(record.created_ms),
            );
            batch.insert(&self.user_chats, keys::pair(user.0, chat.0), []);
        }
        batch.insert(&self.dms, pair_key, keys::id(chat.0));
        batch.insert(&self.meta, keys::NEXT_CHAT_ID, keys::id(chat.0 + 1));
        self.commit(batch, "direct chat creation");
        counters.next_chat = chat.0 + 1;
        Ok((chat, true))
    }

    /// Creates a group owned by `owner` with `members` (duplicates and the owner
    /// collapse; the owner is always a member), durably in one batch. `name` is
    /// the caller's validated name. Friendship is the caller's check.
    ///
    /// # Errors
    /// [`StoreError::TooManyMembers`] over [`MAX_GROUP_MEMBERS`] distinct members,
    /// [`StoreError::UnknownUser`], [`StoreError::StorageFull`] below the
    /// free-space reserve, or a store failure.
    pub fn create_group(&self, owner: UserId, name: &str, members: &[UserId]) -> Result<ChatId, StoreError> {
        let mut all: Vec<UserId> = members.iter().copied().chain([owner]).collect();
        all.sort_unstable();
        all.dedup();
        if all.len() > MAX_GROUP_MEMBERS {
            return Err(StoreError::TooManyMembers { count: all.len() });
        }
        let mut counters = self.lock();
        self.require_users(&all)?;
        self.refuse_if_full()?;
        let chat = ChatId(counters.next_chat);
        let record = ChatRecord {
            kind: ChatKind::Group,
            name: name.to_owned(),
            owner,
            created_ms: now_ms(),
        };
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&self.chats, keys::id(chat.0), record.encode());
        for user in &all {
            batch.insert(
                &self.members,
                keys::pair(chat.0, user.0),
                encode_member(record.created_ms),
            );
            batch.insert(&self.user_chats, keys::pair(user.0, chat.0), []);
        }
        batch.insert(&self.meta, keys::NEXT_CHAT_ID, keys::id(chat.0 + 1));
        self.commit(batch, "group creation");
        counters.next_chat = chat.0 + 1;
        Ok(chat)
    }

    /// The chat `chat` with its current members (one point read and one prefix
    /// scan), or `None` if it does not exist.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn chat(&self, chat: ChatId) -> Result<Option<ChatInfo>, StoreError> {
        let Some(value) = self.chats.get(keys::id(chat.0))? else {
            return Ok(None);
        };
        let record = ChatRecord::decode(&value).ok_or_else(|| corrupt(format!("chats[{chat}]")))?;
        Ok(Some(ChatInfo {
            id: chat,
            kind: record.kind,
            name: record.name,
            owner: record.owner,
            created_ms: record.created_ms,
            members: self.members(chat)?,
        }))
    }

    /// The current members of `chat`, ascending (empty for an unknown chat).
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn members(&self, chat: ChatId) -> Result<Vec<UserId>, StoreError> {
        self.members
            .prefix(keys::id(chat.0))
            .map(|guard| {
                let key = guard.key()?;
                match keys::decode_pair(&key) {
                    Some((_, user)) => Ok(UserId(user)),
                    None => Err(corrupt(format!("members[{chat}/..]"))),
                }
            })
            .collect()
    }

    /// When `user` joined `chat` (milliseconds since the Unix epoch), or `None`
    /// when it is not a current member: one point read.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn member_since(&self, chat: ChatId, user: UserId) -> Result<Option<u64>, StoreError> {
        let Some(value) = self.members.get(keys::pair(chat.0, user.0))? else {
            return Ok(None);
        };
        decode_member(&value)
            .map(Some)
            .ok_or_else(|| corrupt(format!("members[{chat}/{user}]")))
    }

    /// The chats `user` is a member of, ascending by id.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn user_chats(&self, user: UserId) -> Result<Vec<ChatId>, StoreError> {
        self.user_chats
            .prefix(keys::id(user.0))
            .map(|guard| {
                let key = guard.key()?;
                match keys::decode_pair(&key) {
                    Some((_, chat)) => Ok(ChatId(chat)),
                    None => Err(corrupt(format!("user_chats[{user}/..]"))),
                }
            })
            .collect()
    }

    /// The `seq` of `chat`'s last committed message, `Seq(0)` when it has none:
    /// the last key of the chat's range in `messages`. On restart, an owner core
    /// continues the chat at `last_seq + 1`.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn last_seq(&self, chat: ChatId) -> Result<Seq, StoreError> {
        let range = keys::pair(chat.0, 0)..=keys::pair(chat.0, u64::MAX);
        let Some(guard) = self.messages.range(range).next_back() else {
            return Ok(Seq(0));
        };
        let key = guard.key()?;
        match keys::decode_pair(&key) {
            Some((c, seq)) if c == chat.0 => Ok(Seq(seq)),
            _ => Err(corrupt(format!("messages[{chat}/..]"))),
        }
    }

    /// The `(seq, server_ts_ms)` that `sender`'s send `cmid` in `chat` was stored
    /// under, if it was: one point read, the owner core's check for a retried send
    /// that fell out of its in-memory window (or came after a restart).
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn dedupe(
        &self,
        chat: ChatId,
        sender: UserId,
        cmid: ClientMsgId,
    ) -> Result<Option<(Seq, u64)>, StoreError> {
        let Some(value) = self.dedupe.get(keys::triple(chat.0, sender.0, cmid.0))? else {
            return Ok(None);
        };
        let (seq, ts) =
            keys::decode_pair(&value).ok_or_else(|| corrupt(format!("dedupe[{chat}/{sender}/{cmid}]")))?;
        Ok(Some((Seq(seq), ts)))
    }

    /// Up to `limit` messages of `chat` with `seq > after`, ascending: one range
    /// scan. Callers bound `limit` (a page).
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn messages(&self, chat: ChatId, after: Seq, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
        let Some(first) = after.0.checked_add(1) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let range = keys::pair(chat.0, first)..=keys::pair(chat.0, u64::MAX);
        self.messages
            .range(range)
            .take(limit)
            .map(|guard| {
                let (key, value) = guard.into_inner()?;
                let decoded = keys::decode_pair(&key).and_then(|(c, seq)| {
                    (c == chat.0).then_some(())?;
                    StoredMessage::decode_value(chat, Seq(seq), &value)
                });
                decoded.ok_or_else(|| corrupt(format!("messages[{chat}/..]")))
            })
            .collect()
    }

    /// Checks that every user in `users` has an account.
    fn require_users(&self, users: &[UserId]) -> Result<(), StoreError> {
        for user in users {
            if !self.users.contains_key(keys::id(user.0))? {
                return Err(StoreError::UnknownUser(*user));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::ids::CoreId;
    use crate::store::writer::WriteOp;

    const PHC: &str = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA";

    fn open_with_users(n: usize) -> (tempfile::TempDir, Store, Vec<UserId>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let users = (0..n)
            .map(|i| store.create_user(&format!("user{i}"), PHC).unwrap())
            .collect();
        (dir, store, users)
    }

    fn message(chat: ChatId, seq: u64, sender: UserId) -> WriteOp {
        WriteOp::Message {
            origin: CoreId(0),
            msg: StoredMessage {
                chat,
                seq: Seq(seq),
                sender,
                server_ts_ms: 500 + seq,
                client_msg_id: ClientMsgId(10 * seq),
                text: format!("message {seq}"),
                meta: Default::default(),
            },
        }
    }

    #[test]
    fn a_pair_has_one_direct_chat() {
        let (_dir, store, u) = open_with_users(3);
        let (chat, created) = store.create_dm(u[0], u[1]).unwrap();
        assert!(created);
        assert_eq!(store.create_dm(u[0], u[1]).unwrap(), (chat, false));
        assert_eq!(store.create_dm(u[1], u[0]).unwrap(), (chat, false));
        let (other, created) = store.create_dm(u[2], u[0]).unwrap();
        assert!(created && other != chat);
        let info = store.chat(chat).unwrap().unwrap();
        assert_eq!(
            (info.id, info.kind, info.name.as_str(), info.owner, info.members),
            (chat, ChatKind::Direct, "", u[0], vec![u[0], u[1]])
        );
        assert!(info.created_ms > 0);
        assert_eq!(store.user_chats(u[0]).unwrap(), [chat, other]);
        assert_eq!(store.user_chats(u[1]).unwrap(), [chat]);
        assert!(matches!(store.create_dm(u[1], u[1]), Err(StoreError::SelfChat)));
        assert!(matches!(
            store.create_dm(u[1], UserId(77)),
            Err(StoreError::UnknownUser(UserId(77)))
        ));
        assert_eq!(store.chat(ChatId(99)).unwrap(), None);
        assert!(store.members(ChatId(99)).unwrap().is_empty());
    }

    #[test]
    fn groups_collapse_members_and_enforce_the_limit() {
        let (_dir, store, u) = open_with_users(4);
        let group = store
            .create_group(u[1], "crew", &[u[3], u[0], u[3], u[1]])
            .unwrap();
        let info = store.chat(group).unwrap().unwrap();
        assert_eq!(
            (info.kind, info.name.as_str(), info.owner),
            (ChatKind::Group, "crew", u[1])
        );
        assert_eq!(info.members, [u[0], u[1], u[3]]);
        assert_eq!(store.user_chats(u[3]).unwrap(), [group]);
        assert!(store.user_chats(u[2]).unwrap().is_empty());
        assert!(store.member_since(group, u[0]).unwrap().is_some());
        assert_eq!(store.member_since(group, u[2]).unwrap(), None);
        let solo = store.create_group(u[2], "just me", &[]).unwrap();
        assert_eq!(store.members(solo).unwrap(), [u[2]]);
        assert!(matches!(
            store.create_group(u[0], "ghosts", &[UserId(50)]),
            Err(StoreError::UnknownUser(UserId(50)))
        ));

        let many: Vec<UserId> = (1..=MAX_GROUP_MEMBERS as u64).map(UserId).collect();
        assert!(matches!(
            store.create_group(UserId(1_000), "big", &many),
            Err(StoreError::TooManyMembers { count }) if count == MAX_GROUP_MEMBERS + 1
        ));
    }

    #[test]
    fn messages_read_as_ranges_and_dedupe_as_point_reads() {
        let (_dir, store, u) = open_with_users(2);
        let (chat, _) = store.create_dm(u[0], u[1]).unwrap();
        let next = ChatId(chat.0 + 1);
        assert_eq!(store.last_seq(chat).unwrap(), Seq(0));
        assert!(store.messages(chat, Seq(0), 10).unwrap().is_empty());
        let ops: Vec<WriteOp> = (1..=5)
            .map(|seq| message(chat, seq, u[seq as usize % 2]))
            .collect();
        store.commit_writes(&ops);
        // A neighbouring chat's rows do not leak into this chat's range.
        store.commit_writes(&[message(next, 1, u[0])]);
        assert_eq!(store.last_seq(chat).unwrap(), Seq(5));
        assert_eq!(store.last_seq(next).unwrap(), Seq(1));
        let seqs = |after: u64, limit: usize| -> Vec<u64> {
            store
                .messages(chat, Seq(after), limit)
                .unwrap()
                .iter()
                .map(|m| m.seq.0)
                .collect()
        };
        assert_eq!(seqs(0, 100), [1, 2, 3, 4, 5]);
        assert_eq!(seqs(2, 2), [3, 4]);
        assert_eq!(seqs(4, 100), [5]);
        assert!(seqs(5, 100).is_empty());
        assert!(seqs(0, 0).is_empty());
        assert!(seqs(u64::MAX, 100).is_empty());
        let third = &store.messages(chat, Seq(2), 1).unwrap()[0];
        assert_eq!(
            (
                third.sender,
                third.server_ts_ms,
                third.client_msg_id,
                third.text.as_str()
            ),
            (u[1], 503, ClientMsgId(30), "message 3")
        );
        assert_eq!(
            store.dedupe(chat, u[1], ClientMsgId(30)).unwrap(),
            Some((Seq(3), 503))
        );
        assert_eq!(
            store.dedupe(chat, u[0], ClientMsgId(30)).unwrap(),
            None,
            "per sender"
        );
        assert_eq!(
            store.dedupe(next, u[1], ClientMsgId(30)).unwrap(),
            None,
            "per chat"
        );
    }

    #[test]
    fn chats_and_the_chat_counter_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (dm, group) = {
            let store = Store::open(dir.path()).unwrap();
            let a = store.create_user("alice", PHC).unwrap();
            let b = store.create_user("bob", PHC).unwrap();
            let (dm, _) = store.create_dm(a, b).unwrap();
            let group = store.create_group(a, "g", &[b]).unwrap();
            store.commit_writes(&[message(group, 1, b)]);
            (dm, group)
        };
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (UserId(1), UserId(2));
        assert_eq!(store.create_dm(b, a).unwrap(), (dm, false));
        assert_eq!(store.chat(group).unwrap().unwrap().members, [a, b]);
        assert_eq!(store.last_seq(group).unwrap(), Seq(1));
        assert_eq!(
            store.dedupe(group, b, ClientMsgId(10)).unwrap(),
            Some((Seq(1), 501))
        );
        let later = store.create_group(b, "later", &[]).unwrap();
        assert_eq!(later, ChatId(group.0 + 1), "chat ids continue, never reused");
    }

    #[test]
    fn corrupt_chat_rows_are_errors_not_panics() {
        let (_dir, store, u) = open_with_users(2);
        let (chat, _) = store.create_dm(u[0], u[1]).unwrap();
        store.dms.insert(keys::dm_pair(u[0].0, u[1].0), [1u8, 2]).unwrap();
        assert!(matches!(
            store.create_dm(u[0], u[1]),
            Err(StoreError::Corrupt { .. })
        ));
        store.members.insert(keys::pair(chat.0, 9), [9u8]).unwrap();
        assert!(matches!(
            store.member_since(chat, UserId(9)),
            Err(StoreError::Corrupt { .. })
        ));
        store
            .members
            .insert([0u8, 0, 0, 0, 0, 0, 0, chat.0 as u8, 1], [])
            .unwrap();
        assert!(matches!(store.members(chat), Err(StoreError::Corrupt { .. })));
        assert!(matches!(store.chat(chat), Err(StoreError::Corrupt { .. })));
        store.chats.insert(keys::id(chat.0), [1u8, 7]).unwrap();
        assert!(matches!(store.chat(chat), Err(StoreError::Corrupt { .. })));
        store
            .user_chats
            .insert([0u8, 0, 0, 0, 0, 0, 0, u[0].0 as u8], [])
            .unwrap();
        assert!(matches!(store.user_chats(u[0]), Err(StoreError::Corrupt { .. })));
        store.messages.insert(keys::pair(chat.0, 1), [1u8, 0]).unwrap();
        assert!(matches!(
            store.messages(chat, Seq(0), 5),
            Err(StoreError::Corrupt { .. })
        ));
        store
            .messages
            .insert([0u8, 0, 0, 0, 0, 0, 0, chat.0 as u8, 0xff], [])
            .unwrap();
        assert!(matches!(store.last_seq(chat), Err(StoreError::Corrupt { .. })));
        store.dedupe.insert(keys::triple(chat.0, 1, 2), [0u8; 3]).unwrap();
        assert!(matches!(
            store.dedupe(chat, UserId(1), ClientMsgId(2)),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
