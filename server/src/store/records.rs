//! Encoding of the store's record values (users, devices).
//!
//! A record is a version byte followed by fields in a fixed order: integers as
//! big-endian `u64`, strings as a `u16` big-endian length plus UTF-8 bytes,
//! hashes as 32 raw bytes. Decoding reads through [`Reader`], which checks every
//! length and returns `None` on anything malformed (short, long, bad UTF-8,
//! unknown version); records come from disk and must never panic the server.

use crate::ids::UserId;

/// Version byte of the current user record layout.
const USER_V1: u8 = 1;
/// Version byte of the current device record layout.
const DEVICE_V1: u8 = 1;

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

    /// Succeeds only if every byte was consumed (trailing garbage is corruption).
    fn end(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

#[cfg(test)]
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
