//! The `session` target's store: what the cores read ([`ChatStore`], [`SyncStore`]) kept in
//! memory, holding a fixed set of users, friendships and chats, and exactly what the harness's
//! storage writer has committed: every message, membership change, device cursor and last-seen
//! time. It can be told to fail every read ([`crate::fuzzing::session::Op::StoreFault`]), sync and
//! history reads included.
//!
//! Its sync reads have the fjall store's semantics (`store/cursors.rs`): `sync_page` is
//! `messages_page` (ascending, bounded by a count and a text budget that the last message may
//! cross), `sync_history` is `messages_before` (newest first, never past the text budget except
//! with the page's first message, and whether older ones exist), `sync_user_chats` is ascending,
//! `sync_device_cursor` is the last committed [`WriteOp::Cursor`](crate::store::writer::WriteOp)
//! of that device and chat (also when it is lower), and `sync_last_seq` is 0 for an empty chat.
//!
//! The chats (ids 1–5; 0, 6 and 7 do not exist):
//!
//! | chat | kind | owner | members |
//! |---|---|---|---|
//! | 1 | direct | 1 | 1, 2 |
//! | 2 | group | 1 | 1, 2, 3 |
//! | 3 | group | 4 | 4, 5, 6 |
//! | 4 | group | 2 | 1–8 |
//! | 5 | group | 7 | 7 |

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::core::{ChatSnapshot, ChatStore, ReadError, SyncStore};
use crate::ids::{ChatId, ClientMsgId, DeviceId, Seq, UserId};
use crate::store::{ChatKind, StoredMessage};

/// Chat ids `1..=CHAT_IDS` are the ones operations name (the last two do not exist).
pub const CHAT_IDS: u64 = 7;

/// Pairs of friends (both directions).
const FRIENDS: [(u64, u64); 10] = [
    (1, 2),
    (1, 3),
    (1, 4),
    (1, 5),
    (2, 3),
    (2, 8),
    (4, 5),
    (4, 6),
    (4, 7),
    (7, 8),
];

/// A chat as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct StoredChat {
    pub(super) kind: ChatKind,
    pub(super) owner: UserId,
    pub(super) members: BTreeSet<UserId>,
}

/// The chats every run starts with.
pub(super) fn initial_chats() -> HashMap<ChatId, StoredChat> {
    let chat = |kind, owner: u64, members: &[u64]| StoredChat {
        kind,
        owner: UserId(owner),
        members: members.iter().copied().map(UserId).collect(),
    };
    HashMap::from([
        (ChatId(1), chat(ChatKind::Direct, 1, &[1, 2])),
        (ChatId(2), chat(ChatKind::Group, 1, &[1, 2, 3])),
        (ChatId(3), chat(ChatKind::Group, 4, &[4, 5, 6])),
        (ChatId(4), chat(ChatKind::Group, 2, &[1, 2, 3, 4, 5, 6, 7, 8])),
        (ChatId(5), chat(ChatKind::Group, 7, &[7])),
    ])
}

/// Whether `a` and `b` are friends.
pub(super) fn friends(a: UserId, b: UserId) -> bool {
    FRIENDS
        .iter()
        .any(|&(x, y)| (x, y) == (a.0, b.0) || (y, x) == (a.0, b.0))
}

/// The committed state.
#[derive(Debug)]
struct Committed {
    chats: HashMap<ChatId, StoredChat>,
    last_seq: HashMap<ChatId, Seq>,
    dedupe: HashMap<(ChatId, UserId, ClientMsgId), (Seq, u64)>,
    /// Every committed message, by chat and seq (a chat's history is one range, as in fjall).
    messages: BTreeMap<(ChatId, Seq), StoredMessage>,
    /// The last committed cursor of each device and chat.
    cursors: HashMap<(DeviceId, ChatId), Seq>,
    last_seen: HashMap<UserId, u64>,
    failing: bool,
}

/// The in-memory store the harness's cores read.
#[derive(Debug)]
pub(super) struct MemoryStore {
    state: Mutex<Committed>,
}

impl MemoryStore {
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(Committed {
                chats: initial_chats(),
                last_seq: HashMap::new(),
                dedupe: HashMap::new(),
                messages: BTreeMap::new(),
                cursors: HashMap::new(),
                last_seen: HashMap::new(),
                failing: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Committed> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every read fails from now on (`true`) or succeeds again (`false`).
    pub(super) fn set_failing(&self, failing: bool) {
        self.lock().failing = failing;
    }

    /// The storage writer committed a message (and its dedupe record).
    pub(super) fn commit_message(&self, msg: &StoredMessage) {
        let mut state = self.lock();
        state.last_seq.insert(msg.chat, msg.seq);
        state.dedupe.insert(
            (msg.chat, msg.sender, msg.client_msg_id),
            (msg.seq, msg.server_ts_ms),
        );
        state.messages.insert((msg.chat, msg.seq), msg.clone());
    }

    /// The storage writer committed a device's cursor (the newest wins, also when lower).
    pub(super) fn commit_cursor(&self, device: DeviceId, chat: ChatId, seq: Seq) {
        self.lock().cursors.insert((device, chat), seq);
    }

    /// Whether `user` is a committed member of `chat`, whatever the fault switch says (the
    /// harness's view, not a core's read).
    pub(super) fn is_member(&self, chat: ChatId, user: UserId) -> bool {
        self.lock()
            .chats
            .get(&chat)
            .is_some_and(|c| c.members.contains(&user))
    }

    /// The committed chats of `user`, ascending, whatever the fault switch says.
    pub(super) fn chats_of(&self, user: UserId) -> Vec<ChatId> {
        let state = self.lock();
        let mut chats: Vec<ChatId> = state
            .chats
            .iter()
            .filter(|(_, c)| c.members.contains(&user))
            .map(|(&id, _)| id)
            .collect();
        chats.sort_unstable();
        chats
    }

    /// The last committed seq of `chat` (0 when it holds none), whatever the fault switch says.
    pub(super) fn head(&self, chat: ChatId) -> Seq {
        self.lock().last_seq.get(&chat).copied().unwrap_or(Seq(0))
    }

    /// The committed cursor of `device` in `chat`, whatever the fault switch says.
    pub(super) fn cursor(&self, device: DeviceId, chat: ChatId) -> Option<Seq> {
        self.lock().cursors.get(&(device, chat)).copied()
    }

    /// The storage writer committed a user's last-seen time.
    pub(super) fn commit_last_seen(&self, user: UserId, last_seen_ms: u64) {
        self.lock().last_seen.insert(user, last_seen_ms);
    }

    /// The storage writer committed a membership change (and, when the owner
    /// left, the new owner).
    pub(super) fn commit_membership(&self, chat: ChatId, user: UserId, add: bool, new_owner: Option<UserId>) {
        if let Some(c) = self.lock().chats.get_mut(&chat) {
            if add {
                c.members.insert(user);
            } else {
                c.members.remove(&user);
            }
            if let Some(owner) = new_owner {
                c.owner = owner;
            }
        }
    }

    fn check(&self) -> Result<MutexGuard<'_, Committed>, ReadError> {
        let state = self.lock();
        if state.failing {
            return Err(ReadError::Corrupt {
                what: "a fault injected by the fuzz harness".to_owned(),
            });
        }
        Ok(state)
    }
}

/// The fjall store's sync reads (`store/cursors.rs`), over the committed state.
impl SyncStore for MemoryStore {
    fn sync_user_chats(&self, user: UserId) -> Result<Vec<ChatId>, ReadError> {
        drop(self.check()?);
        Ok(self.chats_of(user))
    }

    fn sync_is_member(&self, chat: ChatId, user: UserId) -> Result<bool, ReadError> {
        let state = self.check()?;
        Ok(state.chats.get(&chat).is_some_and(|c| c.members.contains(&user)))
    }

    fn sync_last_seq(&self, chat: ChatId) -> Result<Seq, ReadError> {
        Ok(self.check()?.last_seq.get(&chat).copied().unwrap_or(Seq(0)))
    }

    fn sync_device_cursor(&self, device: DeviceId, chat: ChatId) -> Result<Option<Seq>, ReadError> {
        Ok(self.check()?.cursors.get(&(device, chat)).copied())
    }

    /// Up to `max_msgs` messages with `seq > after`, ascending, stopping once their texts reach
    /// `max_bytes` (the last one may cross it; at least one when any exists).
    fn sync_page(
        &self,
        chat: ChatId,
        after: Seq,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>, ReadError> {
        let state = self.check()?;
        let Some(first) = after.0.checked_add(1) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        for msg in state
            .messages
            .range((chat, Seq(first))..=(chat, Seq(u64::MAX)))
            .map(|(_, m)| m)
        {
            if out.len() >= max_msgs || bytes >= max_bytes {
                break;
            }
            bytes += msg.text.len();
            out.push(msg.clone());
        }
        Ok(out)
    }

    /// Up to `max_msgs` messages with `seq < before`, newest first, within `max_bytes` of text
    /// except for the first; and whether older ones exist beyond the last one returned.
    fn sync_history(
        &self,
        chat: ChatId,
        before: Seq,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Result<(Vec<StoredMessage>, bool), ReadError> {
        let state = self.check()?;
        if before.0 <= 1 {
            return Ok((Vec::new(), false));
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for msg in state
            .messages
            .range((chat, Seq(1))..(chat, before))
            .rev()
            .map(|(_, m)| m)
        {
            if out.len() >= max_msgs {
                return Ok((out, true));
            }
            if !out.is_empty() && bytes + msg.text.len() > max_bytes {
                return Ok((out, true));
            }
            bytes += msg.text.len();
            out.push(msg.clone());
        }
        Ok((out, false))
    }
}

impl ChatStore for MemoryStore {
    fn chat_snapshot(&self, chat: ChatId) -> Result<Option<ChatSnapshot>, ReadError> {
        let state = self.check()?;
        Ok(state.chats.get(&chat).map(|c| ChatSnapshot {
            kind: c.kind,
            owner: c.owner,
            members: c.members.iter().copied().collect(),
            last_seq: state.last_seq.get(&chat).copied().unwrap_or(Seq(0)),
            delivered: Vec::new(),
            read: Vec::new(),
            read_receipts_off: Vec::new(),
        }))
    }

    fn dedupe(
        &self,
        chat: ChatId,
        sender: UserId,
        cmid: ClientMsgId,
    ) -> Result<Option<(Seq, u64)>, ReadError> {
        Ok(self.check()?.dedupe.get(&(chat, sender, cmid)).copied())
    }

    /// The model store has no disk: it is never below a reserve.
    fn below_space_reserve(&self) -> bool {
        false
    }

    fn are_friends(&self, a: UserId, b: UserId) -> Result<bool, ReadError> {
        let _state = self.check()?;
        Ok(friends(a, b))
    }

    /// This store keeps no join times: every committed member joined at 0, so
    /// an owner leaving hands the group to the lowest remaining id.
    fn member_since(&self, chat: ChatId, user: UserId) -> Result<Option<u64>, ReadError> {
        let state = self.check()?;
        Ok(state
            .chats
            .get(&chat)
            .filter(|c| c.members.contains(&user))
            .map(|_| 0))
    }

    fn friend_ids(&self, user: UserId) -> Result<Vec<UserId>, ReadError> {
        let _state = self.check()?;
        let mut ids: Vec<UserId> = FRIENDS
            .iter()
            .filter_map(|&(x, y)| match (x == user.0, y == user.0) {
                (true, _) => Some(UserId(y)),
                (_, true) => Some(UserId(x)),
                _ => None,
            })
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    fn last_seen(&self, user: UserId) -> Result<Option<u64>, ReadError> {
        Ok(self.check()?.last_seen.get(&user).copied())
    }

    fn stored_text(&self, chat: ChatId, seq: Seq) -> Result<Option<String>, ReadError> {
        Ok(self.check()?.messages.get(&(chat, seq)).map(|m| m.text.clone()))
    }

    fn stored_message(&self, chat: ChatId, seq: Seq) -> Result<Option<StoredMessage>, ReadError> {
        Ok(self.check()?.messages.get(&(chat, seq)).cloned())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ids::CoreId;
    use crate::store::Store;
    use crate::store::writer::WriteOp;

    fn msg(chat: u64, seq: u64, len: usize) -> StoredMessage {
        StoredMessage {
            chat: ChatId(chat),
            seq: Seq(seq),
            sender: UserId(1),
            server_ts_ms: seq,
            client_msg_id: ClientMsgId(seq),
            text: "x".repeat(len),
            meta: Default::default(),
        }
    }

    /// Every sync read of the memory store answers what the fjall store answers for the same
    /// committed writes, over a grid of cursors, counts and byte budgets.
    #[test]
    fn sync_reads_match_the_fjall_store() {
        let dir = tempfile::tempdir().unwrap();
        let fjall = Store::open(dir.path()).unwrap();
        let memory = MemoryStore::new();
        let mut ops = Vec::new();
        for seq in 1..=12 {
            let m = msg(2, seq, (seq as usize * 7) % 23 + 1);
            memory.commit_message(&m);
            ops.push(WriteOp::Message {
                origin: CoreId(0),
                msg: m,
            });
        }
        let other = msg(3, 1, 5);
        memory.commit_message(&other);
        ops.push(WriteOp::Message {
            origin: CoreId(0),
            msg: other,
        });
        for (device, seq) in [(1, 9), (1, 4), (2, 7)] {
            memory.commit_cursor(DeviceId(device), ChatId(2), Seq(seq));
            ops.push(WriteOp::Cursor {
                origin: CoreId(0),
                device: DeviceId(device),
                chat: ChatId(2),
                seq: Seq(seq),
            });
        }
        fjall.commit_writes(&ops);
        let seqs = |v: Vec<StoredMessage>| v.into_iter().map(|m| (m.seq, m.text)).collect::<Vec<_>>();
        for chat in [ChatId(1), ChatId(2), ChatId(3)] {
            assert_eq!(
                memory.sync_last_seq(chat).unwrap(),
                fjall.sync_last_seq(chat).unwrap()
            );
            for device in [DeviceId(1), DeviceId(2), DeviceId(3)] {
                assert_eq!(
                    memory.sync_device_cursor(device, chat).unwrap(),
                    fjall.sync_device_cursor(device, chat).unwrap()
                );
            }
            for at in [0, 1, 2, 5, 11, 12, 13, u64::MAX] {
                for max_msgs in [0, 1, 3, 100] {
                    for max_bytes in [0, 1, 10, 30, 1000] {
                        let args = (chat, Seq(at), max_msgs, max_bytes);
                        assert_eq!(
                            seqs(memory.sync_page(chat, Seq(at), max_msgs, max_bytes).unwrap()),
                            seqs(fjall.sync_page(chat, Seq(at), max_msgs, max_bytes).unwrap()),
                            "sync_page{args:?}"
                        );
                        let (m, m_more) = memory.sync_history(chat, Seq(at), max_msgs, max_bytes).unwrap();
                        let (f, f_more) = fjall.sync_history(chat, Seq(at), max_msgs, max_bytes).unwrap();
                        assert_eq!((seqs(m), m_more), (seqs(f), f_more), "sync_history{args:?}");
                    }
                }
            }
        }
    }

    /// `sync_user_chats` is ascending, membership follows committed changes, and a fault fails
    /// every sync read.
    #[test]
    fn members_follow_commits_and_faults_fail_sync_reads() {
        let store = MemoryStore::new();
        assert_eq!(
            store.sync_user_chats(UserId(2)).unwrap(),
            [ChatId(1), ChatId(2), ChatId(4)]
        );
        store.commit_membership(ChatId(3), UserId(2), true, None);
        store.commit_membership(ChatId(2), UserId(2), false, None);
        assert_eq!(
            store.sync_user_chats(UserId(2)).unwrap(),
            [ChatId(1), ChatId(3), ChatId(4)]
        );
        assert!(!store.sync_is_member(ChatId(2), UserId(2)).unwrap());
        store.set_failing(true);
        assert!(store.sync_user_chats(UserId(2)).is_err());
        assert!(store.sync_is_member(ChatId(1), UserId(1)).is_err());
        assert!(store.sync_last_seq(ChatId(1)).is_err());
        assert!(store.sync_device_cursor(DeviceId(1), ChatId(1)).is_err());
        assert!(store.sync_page(ChatId(1), Seq(0), 10, 10).is_err());
        assert!(store.sync_history(ChatId(1), Seq(0), 10, 10).is_err());
    }
}
