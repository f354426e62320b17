//! Target `store_records`: the store's key and record decoders on arbitrary bytes — what natterd
//! does with every key and value it reads back from disk (`store/keys.rs`, `store/records.rs`).
//!
//! Input: the bytes of one stored key or value; every decoder sees them. Invariants:
//!
//! * nothing panics;
//! * ids and pairs decode exactly when the length is 8 / 16 bytes, and re-encode to the input;
//! * a friendship byte decodes only as one of the three known bytes, and its mirror's mirror is
//!   itself;
//! * user, device and chat records, member values and message values are canonical: one that
//!   decodes re-encodes to exactly the input; `decode_username` agrees with the full user decode.

use std::hint::black_box;

use crate::ids::UserId;
use crate::store::fuzz_hooks as hooks;

/// Feeds one input; panics when an invariant breaks.
pub fn run(data: &[u8]) {
    match hooks::decode_id(data) {
        Some(id) => assert_eq!(hooks::encode_id(id), data, "id key does not round-trip"),
        None => assert_ne!(data.len(), 8, "an 8-byte id key was refused"),
    }
    match hooks::decode_pair(data) {
        Some((a, b)) => assert_eq!(hooks::encode_pair(a, b), data, "pair key does not round-trip"),
        None => assert_ne!(data.len(), 16, "a 16-byte pair key was refused"),
    }
    if let Some((byte, mirror)) = hooks::decode_friend_state(data) {
        assert_eq!(data, [byte], "a friendship value is not its own byte");
        let back = hooks::decode_friend_state(&[mirror]).map(|(_, m)| m);
        assert_eq!(back, Some(byte), "mirror of the mirror differs");
    }

    let username = hooks::decode_username(data);
    match hooks::decode_user(UserId(7), data) {
        Some(user) => {
            assert_eq!(user.id, UserId(7));
            assert_eq!(hooks::encode_user(&user), data, "user record is not canonical");
            assert_eq!(
                username.as_deref(),
                Some(user.username.as_str()),
                "decode_username disagrees"
            );
        }
        None => {
            black_box(username);
        }
    }
    if let Some(device) = hooks::decode_device(data) {
        assert_eq!(
            hooks::encode_device(&device),
            data,
            "device record is not canonical"
        );
    }
    for (what, reencoded) in [
        ("chat record", hooks::reencode_chat(data)),
        ("member value", hooks::reencode_member(data)),
        ("message value", hooks::reencode_message(data)),
    ] {
        if let Some(bytes) = reencoded {
            assert_eq!(bytes, data, "{what} is not canonical");
        }
    }
}
