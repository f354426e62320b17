//! The store's decoders as the `store_records` fuzz target reaches them: every
//! function that turns bytes read from disk into a key or a record, plus the
//! matching encoders for round-trip checks. Compiled only with the `fuzzing`
//! feature (CONTRIBUTING.md, convention 12); the store itself never calls it.
//!
//! The layout they decode is documented in `keys.rs` and `records.rs`. The `encode_*` functions
//! build the seeds of `fuzz/corpus/store_records/`.

use super::keys::{self, FriendState};
use super::records::{self, ChatRecord, DeviceRecord, StoredMessage, UserRecord};
use crate::ids::{ChatId, Seq, UserId};

/// `keys::decode_id`: an 8-byte big-endian id, else `None`.
pub(crate) fn decode_id(bytes: &[u8]) -> Option<u64> {
    keys::decode_id(bytes)
}

/// `keys::id`: the key of one id.
pub(crate) fn encode_id(id: u64) -> Vec<u8> {
    keys::id(id).to_vec()
}

/// `keys::decode_pair`: a 16-byte `a ++ b` key, else `None`.
pub(crate) fn decode_pair(bytes: &[u8]) -> Option<(u64, u64)> {
    keys::decode_pair(bytes)
}

/// `keys::pair`: the key `a ++ b`.
pub(crate) fn encode_pair(a: u64, b: u64) -> Vec<u8> {
    keys::pair(a, b).to_vec()
}

/// A friendship value: its stored byte if `bytes` decodes, and the byte of
/// its mirror state (the value stored for the other direction).
pub(crate) fn decode_friend_state(bytes: &[u8]) -> Option<(u8, u8)> {
    let state = FriendState::decode(bytes)?;
    Some((state.to_byte(), state.mirror().to_byte()))
}

/// `UserRecord::decode` for user `id`.
pub(crate) fn decode_user(id: UserId, bytes: &[u8]) -> Option<UserRecord> {
    UserRecord::decode(id, bytes)
}

/// `UserRecord::decode_username`.
pub(crate) fn decode_username(bytes: &[u8]) -> Option<String> {
    UserRecord::decode_username(bytes)
}

/// `UserRecord::encode`.
pub(crate) fn encode_user(user: &UserRecord) -> Vec<u8> {
    user.encode()
}

/// `DeviceRecord::decode`.
pub(crate) fn decode_device(bytes: &[u8]) -> Option<DeviceRecord> {
    DeviceRecord::decode(bytes)
}

/// `DeviceRecord::encode`.
pub(crate) fn encode_device(device: &DeviceRecord) -> Vec<u8> {
    device.encode()
}

/// `ChatRecord::decode`, then `encode`: the re-encoded value if `bytes` decodes.
pub(crate) fn reencode_chat(bytes: &[u8]) -> Option<Vec<u8>> {
    ChatRecord::decode(bytes).map(|chat| chat.encode())
}

/// `records::decode_member`, then `encode_member`: the re-encoded value if `bytes` decodes.
pub(crate) fn reencode_member(bytes: &[u8]) -> Option<Vec<u8>> {
    records::decode_member(bytes).map(|joined| records::encode_member(joined).to_vec())
}

/// `StoredMessage::decode_value` (as message 1 of chat 1), then `encode_value`: the re-encoded
/// value if `bytes` decodes.
pub(crate) fn reencode_message(bytes: &[u8]) -> Option<Vec<u8>> {
    StoredMessage::decode_value(ChatId(1), Seq(1), bytes).map(|m| m.encode_value())
}

/// A `chats` value (`ChatRecord::encode`), for seeds.
pub(crate) fn encode_chat(group: bool, owner: u64, created_ms: u64, name: &str) -> Vec<u8> {
    let kind = if group {
        super::ChatKind::Group
    } else {
        super::ChatKind::Direct
    };
    ChatRecord {
        kind,
        name: name.to_owned(),
        owner: UserId(owner),
        created_ms,
    }
    .encode()
}

/// A `members` value (`records::encode_member`), for seeds.
pub(crate) fn encode_member(joined_ms: u64) -> Vec<u8> {
    records::encode_member(joined_ms).to_vec()
}

/// A `messages` value (`StoredMessage::encode_value`), for seeds.
pub(crate) fn encode_message(sender: u64, server_ts_ms: u64, client_msg_id: u64, text: &str) -> Vec<u8> {
    StoredMessage {
        chat: ChatId(1),
        seq: Seq(1),
        sender: UserId(sender),
        server_ts_ms,
        client_msg_id: crate::ids::ClientMsgId(client_msg_id),
        text: text.to_owned(),
        meta: Default::default(),
    }
    .encode_value()
}
