//! The store's on-disk layout: keyspace names and how keys are encoded.
//!
//! Every id is a big-endian `u64`, so byte order equals numeric order and a
//! composite key `a ++ b` groups all of `a`'s rows into one contiguous range that
//! a prefix scan on `a` returns in `b` order. The same two shapes serve every
//! keyspace, now and later:
//!
//! | keyspace    | key                               | value                                   |
//! |-------------|-----------------------------------|-----------------------------------------|
//! | `meta`      | counter name (ASCII)              | next id, `u64` BE                        |
//! | `users`     | `user_id`                         | [`super::records`] user record           |
//! | `usernames` | lowercased username (UTF-8)       | `user_id`                                |
//! | `tokens`    | sha256(token), 32 bytes           | `user_id ++ device_id`                   |
//! | `devices`   | `user_id ++ device_id`            | [`super::records`] device record         |
//! | `friends`   | `user_id ++ other_id`             | one [`FriendState`] byte                 |
//! | `chats`     | `chat_id`                         | [`super::records`] chat record           |
//! | `members`   | `chat_id ++ user_id`              | [`super::records`] member record         |
//! | `user_chats`| `user_id ++ chat_id`              | empty (an index)                         |
//! | `dms`       | `min(user) ++ max(user)`          | `chat_id`                                |
//! | `messages`  | `chat_id ++ seq`                  | [`super::records`] message record        |
//! | `dedupe`    | `chat_id ++ sender ++ client_msg_id` | `seq ++ server_ts_ms`                 |
//! | `last_seen` | `user_id`                         | last seen, ms since the Unix epoch, `u64` BE |
//!
//! So a chat's history is one contiguous range of `messages` (its last key holds
//! the chat's last `seq`), a chat's members one range of `members`, a user's chats
//! one range of `user_chats`; a retried send is one point read in `dedupe`.
//! Later keyspaces follow the same pattern (cursors `device_id ++ chat_id`;
//! `pushers` and `push_marks`, whose names and table live in `push.rs`).
//!
//! Decoding never panics: a key or value of the wrong length decodes to `None`,
//! which the caller reports as [`super::StoreError::Corrupt`].

/// Keyspace of counters (`next_user_id`, `next_device_id`).
pub(crate) const META: &str = "meta";
/// Keyspace of user records by id.
pub(crate) const USERS: &str = "users";
/// Keyspace mapping lowercased usernames to user ids (uniqueness index).
pub(crate) const USERNAMES: &str = "usernames";
/// Keyspace mapping token hashes to `user_id ++ device_id`.
pub(crate) const TOKENS: &str = "tokens";
/// Keyspace of device records by `user_id ++ device_id`.
pub(crate) const DEVICES: &str = "devices";
/// Keyspace of friendship states by `user_id ++ other_id` (both directions stored).
pub(crate) const FRIENDS: &str = "friends";
/// Keyspace of chat records by `chat_id`.
pub(crate) const CHATS: &str = "chats";
/// Keyspace of memberships by `chat_id ++ user_id`.
pub(crate) const MEMBERS: &str = "members";
/// Index of each user's chats: `user_id ++ chat_id` with an empty value.
pub(crate) const USER_CHATS: &str = "user_chats";
/// Keyspace mapping a user pair `min ++ max` to their direct chat.
pub(crate) const DMS: &str = "dms";
/// Keyspace of messages by `chat_id ++ seq`.
pub(crate) const MESSAGES: &str = "messages";
/// Keyspace of send dedupe records by `chat_id ++ sender ++ client_msg_id`.
pub(crate) const DEDUPE: &str = "dedupe";
/// Keyspace of each user's last-seen time (ms since the Unix epoch) by `user_id`.
pub(crate) const LAST_SEEN: &str = "last_seen";
/// Keyspace of each device's delivered cursor by `device_id ++ chat_id` (value: seq).
pub(crate) const CURSORS: &str = "cursors";
/// Keyspace of each user's read marker by `user_id ++ chat_id` (value: seq).
pub(crate) const READ_MARKERS: &str = "read_markers";

/// `meta` key of the next user id to hand out.
pub(crate) const NEXT_USER_ID: &[u8] = b"next_user_id";
/// `meta` key of the next device id to hand out.
pub(crate) const NEXT_DEVICE_ID: &[u8] = b"next_device_id";
/// `meta` key of the next chat id to hand out.
pub(crate) const NEXT_CHAT_ID: &[u8] = b"next_chat_id";

/// Length of a single-id key.
pub(crate) const ID_LEN: usize = 8;
/// Length of a two-id key.
pub(crate) const PAIR_LEN: usize = 16;
/// Length of a three-id key.
pub(crate) const TRIPLE_LEN: usize = 24;

/// Encodes one id as a key (or as the prefix of all pair keys starting with it).
pub(crate) fn id(x: u64) -> [u8; ID_LEN] {
    x.to_be_bytes()
}

/// Encodes a composite `a ++ b` key.
pub(crate) fn pair(a: u64, b: u64) -> [u8; PAIR_LEN] {
    let mut key = [0u8; PAIR_LEN];
    let (left, right) = key.split_at_mut(ID_LEN);
    left.copy_from_slice(&a.to_be_bytes());
    right.copy_from_slice(&b.to_be_bytes());
    key
}

/// Encodes a composite `a ++ b ++ c` key (the `dedupe` keyspace).
pub(crate) fn triple(a: u64, b: u64, c: u64) -> [u8; TRIPLE_LEN] {
    let mut key = [0u8; TRIPLE_LEN];
    for (chunk, x) in key.chunks_exact_mut(ID_LEN).zip([a, b, c]) {
        chunk.copy_from_slice(&x.to_be_bytes());
    }
    key
}

/// The key of a direct chat between `a` and `b`: the same for either order.
pub(crate) fn dm_pair(a: u64, b: u64) -> [u8; PAIR_LEN] {
    pair(a.min(b), a.max(b))
}

/// Decodes a single-id key or value; `None` unless exactly 8 bytes.
pub(crate) fn decode_id(bytes: &[u8]) -> Option<u64> {
    let array: [u8; ID_LEN] = bytes.try_into().ok()?;
    Some(u64::from_be_bytes(array))
}

/// Decodes an `a ++ b` key or value; `None` unless exactly 16 bytes.
pub(crate) fn decode_pair(bytes: &[u8]) -> Option<(u64, u64)> {
    if bytes.len() != PAIR_LEN {
        return None;
    }
    let (left, right) = bytes.split_at(ID_LEN);
    Some((decode_id(left)?, decode_id(right)?))
}

/// The relation stored under `friends[user ++ other]`, seen from `user`.
/// Both directions are written in the same batch, so `friends[other ++ user]`
/// always holds the mirror state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum FriendState {
    /// `user` and `other` are friends (mirror: `Friend`).
    Friend = 1,
    /// `user` asked `other` (mirror: `Incoming`).
    Outgoing = 2,
    /// `other` asked `user` (mirror: `Outgoing`).
    Incoming = 3,
}

impl FriendState {
    /// The stored byte.
    pub(crate) fn to_byte(self) -> u8 {
        self as u8
    }

    /// Decodes a stored value; `None` for anything but one known byte.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        match bytes {
            [1] => Some(Self::Friend),
            [2] => Some(Self::Outgoing),
            [3] => Some(Self::Incoming),
            _ => None,
        }
    }

    /// The state stored on the other side of the relation.
    pub(crate) fn mirror(self) -> Self {
        match self {
            Self::Friend => Self::Friend,
            Self::Outgoing => Self::Incoming,
            Self::Incoming => Self::Outgoing,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn pairs_sort_by_first_then_second_id() {
        let mut keys = [pair(2, 1), pair(1, 300), pair(1, 2), pair(256, 0)];
        keys.sort();
        assert_eq!(keys, [pair(1, 2), pair(1, 300), pair(2, 1), pair(256, 0)]);
        assert!(pair(7, 9).starts_with(&id(7)));
        let mut triples = [triple(1, 2, 3), triple(1, 1, u64::MAX), triple(0, 9, 9)];
        triples.sort();
        assert_eq!(
            triples,
            [triple(0, 9, 9), triple(1, 1, u64::MAX), triple(1, 2, 3)]
        );
        assert!(triple(4, 5, 6).starts_with(&pair(4, 5)));
        assert_eq!(dm_pair(9, 2), dm_pair(2, 9));
        assert_eq!(dm_pair(9, 2), pair(2, 9));
    }

    #[test]
    fn decoding_checks_lengths() {
        assert_eq!(decode_pair(&pair(u64::MAX, 3)), Some((u64::MAX, 3)));
        assert_eq!(decode_id(&id(42)), Some(42));
        assert_eq!(decode_id(&[1, 2, 3]), None);
        assert_eq!(decode_pair(&[0; 15]), None);
        assert_eq!(decode_pair(&[0; 17]), None);
        for state in [FriendState::Friend, FriendState::Outgoing, FriendState::Incoming] {
            assert_eq!(FriendState::decode(&[state.to_byte()]), Some(state));
            assert_eq!(state.mirror().mirror(), state);
        }
        assert_eq!(FriendState::decode(&[0]), None);
        assert_eq!(FriendState::decode(&[1, 1]), None);
        assert_eq!(FriendState::decode(&[]), None);
    }
}
