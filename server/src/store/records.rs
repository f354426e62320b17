//! Encoding of the store's record values (users, devices, chats, members,
//! messages).
//!
//! A record is a version byte followed by fields in a fixed order: integers as
//! big-endian `u64`, strings as a `u16` big-endian length plus UTF-8 bytes,
//! hashes as 32 raw bytes. A message's text is the exception: it is the last
//! field and takes the rest of the value (up to ~400 KB, more than a `u16`
//! length holds, and no length prefix is needed for the last field). Decoding
//! reads through [`Reader`], which checks every length and returns `None` on
//! anything malformed (short, long, bad UTF-8, unknown version); records come
//! from disk and must never panic the server.

pub use crate::core::{ChatKind, StoredMessage};
use crate::core::{MAX_EDITS_PER_MESSAGE, MessageKind, MessageMeta};
use crate::ids::{ChatId, ClientMsgId, Seq, UserId};

/// Version byte of the current user record layout.
const USER_V1: u8 = 1;
/// Version byte of the current device record layout.
const DEVICE_V1: u8 = 1;
/// Version byte of the current chat record layout.
const CHAT_V1: u8 = 1;
/// Version byte of the current member record layout.
const MEMBER_V1: u8 = 1;
/// Version byte of the current message record layout.
const MESSAGE_V1: u8 = 1;
/// Version byte of the message layout with conversation fields (issue 15): after the client id,
/// kind (u8), target, edited, deleted (u64 each), the number of edits (u8) and their seqs, then
/// the text. Used only for records whose [`MessageMeta`] is not the default, so plain texts keep
/// the shorter V1 layout (and data directories written before issue 15 read unchanged).
const MESSAGE_V2: u8 = 2;
/// Bytes of a message value before its text: version, sender, timestamp, client id.
pub(crate) const MESSAGE_HEADER_LEN: usize = 1 + 8 + 8 + 8;

/// A user account as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    /// The account's id (the record's key).
    pub id: UserId,
    /// Lowercased, validated username.
    pub username: String,
    /// argon2id hash of the password as a PHC string (`$argon2id$v=19$m=...`).
    pub password_phc: String,
    /// Signup time, milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// A logged-in device as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The name the client gave at login.
    pub name: String,
    /// Login time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// sha256 of the device's token (its key in the `tokens` keyspace).
    pub token_hash: [u8; 32],
}

impl UserRecord {
    /// Encodes the record's value (the id is the key, not part of the value).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(1 + 2 + self.username.len() + 2 + self.password_phc.len() + 8);
        w.u8(USER_V1);
        w.str(&self.username);
        w.str(&self.password_phc);
        w.u64(self.created_ms);
        w.0
    }

    /// Decodes a stored value for user `id`; `None` if malformed.
    pub(crate) fn decode(id: UserId, bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.u8()? != USER_V1 {
            return None;
        }
        let record = Self {
            id,
            username: r.str()?.to_owned(),
            password_phc: r.str()?.to_owned(),
            created_ms: r.u64()?,
        };
        r.end()?;
        Some(record)
    }

    /// Decodes only the username of a stored value, without copying the hash.
    pub(crate) fn decode_username(bytes: &[u8]) -> Option<String> {
        let mut r = Reader(bytes);
        if r.u8()? != USER_V1 {
            return None;
        }
        Some(r.str()?.to_owned())
    }
}

impl DeviceRecord {
    /// Encodes the record's value.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(1 + 2 + self.name.len() + 8 + 32);
        w.u8(DEVICE_V1);
        w.str(&self.name);
        w.u64(self.created_ms);
        w.bytes32(&self.token_hash);
        w.0
    }

    /// Decodes a stored value; `None` if malformed.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.u8()? != DEVICE_V1 {
            return None;
        }
        let record = Self {
            name: r.str()?.to_owned(),
            created_ms: r.u64()?,
            token_hash: r.bytes32()?,
        };
        r.end()?;
        Some(record)
    }
}

impl ChatKind {
    fn to_byte(self) -> u8 {
        match self {
            Self::Direct => 1,
            Self::Group => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Direct),
            2 => Some(Self::Group),
            _ => None,
        }
    }
}

/// A chat as stored under `chats[chat_id]` (members live in their own keyspace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChatRecord {
    /// Direct or group.
    pub(crate) kind: ChatKind,
    /// The group's name (empty for a direct chat).
    pub(crate) name: String,
    /// The group's owner; for a direct chat, the user who opened it.
    pub(crate) owner: UserId,
    /// Creation time, milliseconds since the Unix epoch.
    pub(crate) created_ms: u64,
}

impl ChatRecord {
    /// Encodes the record's value.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(1 + 1 + 8 + 8 + 2 + self.name.len());
        w.u8(CHAT_V1);
        w.u8(self.kind.to_byte());
        w.u64(self.owner.0);
        w.u64(self.created_ms);
        w.str(&self.name);
        w.0
    }

    /// Decodes a stored value; `None` if malformed.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.u8()? != CHAT_V1 {
            return None;
        }
        let record = Self {
            kind: ChatKind::from_byte(r.u8()?)?,
            owner: UserId(r.u64()?),
            created_ms: r.u64()?,
            name: r.str()?.to_owned(),
        };
        r.end()?;
        Some(record)
    }
}

/// Encodes a `members[chat ++ user]` value: when the user joined.
pub(crate) fn encode_member(joined_ms: u64) -> [u8; 9] {
    let mut out = [0u8; 9];
    let (version, time) = out.split_at_mut(1);
    version.copy_from_slice(&[MEMBER_V1]);
    time.copy_from_slice(&joined_ms.to_be_bytes());
    out
}

/// Decodes a `members` value into the join time; `None` if malformed.
pub(crate) fn decode_member(bytes: &[u8]) -> Option<u64> {
    let mut r = Reader(bytes);
    if r.u8()? != MEMBER_V1 {
        return None;
    }
    let joined = r.u64()?;
    r.end()?;
    Some(joined)
}

impl StoredMessage {
    /// Encodes the `messages[chat ++ seq]` value.
    pub(crate) fn encode_value(&self) -> Vec<u8> {
        let plain = self.meta == MessageMeta::default();
        let extra = if plain {
            0
        } else {
            1 + 24 + 1 + 8 * self.meta.edits.len()
        };
        let mut w = Writer::with_capacity(MESSAGE_HEADER_LEN + extra + self.text.len());
        w.u8(if plain { MESSAGE_V1 } else { MESSAGE_V2 });
        w.u64(self.sender.0);
        w.u64(self.server_ts_ms);
        w.u64(self.client_msg_id.0);
        if !plain {
            w.u8(match self.meta.kind {
                MessageKind::Text => 0,
                MessageKind::Edit => 1,
                MessageKind::Delete => 2,
            });
            w.u64(self.meta.target.0);
            w.u64(self.meta.edited.0);
            w.u64(self.meta.deleted.0);
            // The owner core never lets the list pass MAX_EDITS_PER_MESSAGE (< 256).
            let edits = self
                .meta
                .edits
                .get(..MAX_EDITS_PER_MESSAGE)
                .unwrap_or(&self.meta.edits);
            w.u8(edits.len() as u8);
            for seq in edits {
                w.u64(seq.0);
            }
        }
        w.0.extend_from_slice(self.text.as_bytes());
        w.0
    }

    /// Decodes the value stored for `(chat, seq)`; `None` if malformed.
    pub(crate) fn decode_value(chat: ChatId, seq: Seq, bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != MESSAGE_V1 && version != MESSAGE_V2 {
            return None;
        }
        let sender = UserId(r.u64()?);
        let server_ts_ms = r.u64()?;
        let client_msg_id = ClientMsgId(r.u64()?);
        let mut meta = MessageMeta::default();
        if version == MESSAGE_V2 {
            meta.kind = match r.u8()? {
                0 => MessageKind::Text,
                1 => MessageKind::Edit,
                2 => MessageKind::Delete,
                _ => return None,
            };
            meta.target = Seq(r.u64()?);
            meta.edited = Seq(r.u64()?);
            meta.deleted = Seq(r.u64()?);
            let n = usize::from(r.u8()?);
            if n > MAX_EDITS_PER_MESSAGE {
                return None;
            }
            for _ in 0..n {
                meta.edits.push(Seq(r.u64()?));
            }
            // The encoder writes a plain message as V1; a V2 record with nothing in it is not
            // one it writes (one encoding per value: the store_records fuzz target checks it).
            if meta == MessageMeta::default() {
                return None;
            }
        }
        let text = std::str::from_utf8(r.rest()).ok()?.to_owned();
        Some(Self {
            chat,
            seq,
            sender,
            server_ts_ms,
            client_msg_id,
            text,
            meta,
        })
    }
}

/// Appends fields to a record value.
struct Writer(Vec<u8>);

impl Writer {
    fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    fn u8(&mut self, x: u8) {
        self.0.push(x);
    }

    fn u64(&mut self, x: u64) {
        self.0.extend_from_slice(&x.to_be_bytes());
    }

    /// Strings longer than `u16::MAX` bytes are cut at a character boundary;
    /// callers validate lengths long before (usernames ≤ 32, hashes ≈ 100).
    fn str(&mut self, s: &str) {
        let mut end = s.len().min(usize::from(u16::MAX));
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let bytes = s.as_bytes().get(..end).unwrap_or_default();
        self.0.extend_from_slice(&(end as u16).to_be_bytes());
        self.0.extend_from_slice(bytes);
    }

    fn bytes32(&mut self, b: &[u8; 32]) {
        self.0.extend_from_slice(b);
    }
}

/// Reads fields off the front of a record value; every method returns `None`
/// when the value is too short or malformed.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().ok()?);
        std::str::from_utf8(self.take(usize::from(len))?).ok()
    }

    fn bytes32(&mut self) -> Option<[u8; 32]> {
        self.take(32)?.try_into().ok()
    }

    /// Everything not read yet (the last, unprefixed field).
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    /// Succeeds only if every byte was consumed (trailing garbage is corruption).
    fn end(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn user() -> UserRecord {
        UserRecord {
            id: UserId(9),
            username: "zoë".into(),
            password_phc: "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into(),
            created_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn round_trips() {
        let u = user();
        assert_eq!(UserRecord::decode(UserId(9), &u.encode()), Some(u.clone()));
        assert_eq!(UserRecord::decode_username(&u.encode()), Some("zoë".to_owned()));
        let d = DeviceRecord {
            name: "phone".into(),
            created_ms: 5,
            token_hash: [7; 32],
        };
        assert_eq!(DeviceRecord::decode(&d.encode()), Some(d));
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let bytes = user().encode();
        for n in 0..bytes.len() {
            assert_eq!(
                UserRecord::decode(UserId(9), &bytes[..n]),
                None,
                "prefix of {n} bytes"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(UserRecord::decode(UserId(9), &long), None);
        let mut bad_version = bytes.clone();
        bad_version[0] = 99;
        assert_eq!(UserRecord::decode(UserId(9), &bad_version), None);
        let mut bad_utf8 = bytes;
        bad_utf8[3] = 0xff;
        assert_eq!(UserRecord::decode(UserId(9), &bad_utf8), None);
        assert_eq!(DeviceRecord::decode(&[DEVICE_V1, 0, 200]), None);
    }

    fn message() -> StoredMessage {
        StoredMessage {
            chat: ChatId(3),
            seq: Seq(17),
            sender: UserId(5),
            server_ts_ms: 1_700_000_000_123,
            client_msg_id: ClientMsgId(u64::MAX),
            text: "héllo 👋".into(),
            meta: Default::default(),
        }
    }

    #[test]
    fn chat_member_and_message_round_trips() {
        for kind in [ChatKind::Direct, ChatKind::Group] {
            let chat = ChatRecord {
                kind,
                name: "the crew".into(),
                owner: UserId(8),
                created_ms: 12,
            };
            assert_eq!(ChatRecord::decode(&chat.encode()), Some(chat));
        }
        assert_eq!(decode_member(&encode_member(99)), Some(99));
        let m = message();
        assert_eq!(
            StoredMessage::decode_value(m.chat, m.seq, &m.encode_value()),
            Some(m.clone())
        );
        assert_eq!(m.encode_value().len(), MESSAGE_HEADER_LEN + m.text.len());
        let long = StoredMessage {
            text: "x".repeat(400_000),
            ..message()
        };
        assert_eq!(
            StoredMessage::decode_value(long.chat, long.seq, &long.encode_value()),
            Some(long)
        );
    }

    #[test]
    fn malformed_chat_records_are_refused() {
        let chat = ChatRecord {
            kind: ChatKind::Group,
            name: "g".into(),
            owner: UserId(1),
            created_ms: 2,
        }
        .encode();
        for n in 0..chat.len() {
            assert_eq!(ChatRecord::decode(&chat[..n]), None, "prefix of {n} bytes");
        }
        let mut bad_kind = chat.clone();
        bad_kind[1] = 7;
        assert_eq!(ChatRecord::decode(&bad_kind), None);
        let mut long = chat;
        long.push(0);
        assert_eq!(ChatRecord::decode(&long), None);
        assert_eq!(decode_member(&[MEMBER_V1, 0, 0]), None);
        assert_eq!(decode_member(&[2, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        let msg = message().encode_value();
        for n in 0..MESSAGE_HEADER_LEN {
            assert_eq!(StoredMessage::decode_value(ChatId(1), Seq(1), &msg[..n]), None);
        }
        let mut bad_utf8 = msg.clone();
        bad_utf8[MESSAGE_HEADER_LEN] = 0xff;
        assert_eq!(StoredMessage::decode_value(ChatId(1), Seq(1), &bad_utf8), None);
        let mut bad_version = msg;
        bad_version[0] = 0;
        assert_eq!(StoredMessage::decode_value(ChatId(1), Seq(1), &bad_version), None);
    }

    #[test]
    fn over_long_strings_are_cut_at_a_char_boundary() {
        let mut w = Writer::with_capacity(0);
        let s = "é".repeat(40_000); // 80,000 bytes
        w.str(&s);
        let mut r = Reader(&w.0);
        let back = r.str().unwrap();
        assert!(back.len() <= usize::from(u16::MAX) && s.starts_with(back));
    }
}
