//! Target `frame_bodies`: one FlatBuffer through the verifier, then every field of every body
//! type read through the zero-copy accessors, then the owned conversion and its round trip.
//!
//! Input: the FlatBuffer itself, *without* the 4-byte length prefix — the target prepends the
//! prefix that matches, so every mutation reaches the verifier instead of failing the length check
//! (`frame_decoder` fuzzes the prefix). It is checked under two [`Limits`]: natterd's defaults and
//! tight ones (depth 2, 3 tables) that make the verifier's limits bite. Invariants:
//!
//! * nothing panics, including the generated accessors on a verified buffer (under ASan, no
//!   out-of-bounds read either);
//! * a verified frame has a body of a known type, and [`Frame::from_view`] converts it;
//! * [`Frame::decode`] gives the same frame as `view` + `from_view`;
//! * what passes the tight limits passes the default ones;
//! * the owned frame re-encodes — through [`Frame::encode`], a reused [`Encoder`] and the
//!   [`Encoder::message`] / [`Encoder::error`] shortcuts, all byte-identical — to a buffer that
//!   decodes to the same frame.

use std::cell::RefCell;
use std::hint::black_box;

use natter_wire::{Body, ErrorCode, Frame, Limits, PREFIX_LEN, fb, view};

/// Longest input the target looks at (a frame a little over natterd's 512 KiB default limit).
pub const MAX_INPUT: usize = 600 * 1024;

thread_local! {
    /// One encoder reused across inputs, as a core reuses its encoder across frames.
    static ENCODER: RefCell<natter_wire::Encoder> = RefCell::new(natter_wire::Encoder::new());
}

/// The tight limits: a `Frame` table and one body table, nothing nested deeper.
fn tight() -> Limits {
    Limits {
        max_depth: 2,
        max_tables: 3,
        ..Limits::default()
    }
}

/// Feeds one input; panics when an invariant breaks.
pub fn run(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let Ok(len) = u32::try_from(data.len()) else {
        return;
    };
    let mut frame = Vec::with_capacity(PREFIX_LEN + data.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(data);

    let default = check(&frame, &Limits::default());
    let tight = check(&frame, &tight());
    if let Some(tight) = tight {
        assert_eq!(
            default.as_ref(),
            Some(&tight),
            "a frame within the tight limits fails the default ones"
        );
    }
}

/// Verifies and reads `frame` under `limits`; the owned frame if it verified.
fn check(frame: &[u8], limits: &Limits) -> Option<Frame> {
    let v = match view(frame, limits) {
        Ok(v) => v,
        Err(err) => {
            assert!(
                Frame::decode(frame, limits).is_err(),
                "decode accepts what view refuses"
            );
            black_box(err.code());
            return None;
        }
    };
    black_box(read_every_field(v));
    let owned = match Frame::from_view(v) {
        Ok(owned) => owned,
        Err(err) => panic!("a verified frame does not convert: {err}"),
    };
    assert_eq!(Frame::decode(frame, limits).as_ref(), Ok(&owned));
    check_encoders(&owned);
    Some(owned)
}

fn check_encoders(owned: &Frame) {
    let encoded = owned.encode();
    let again = Frame::decode(&encoded, &Limits::default());
    assert_eq!(again.as_ref(), Ok(owned), "re-encoding changed the frame");
    ENCODER.with(|encoder| {
        let mut encoder = encoder.borrow_mut();
        assert_eq!(
            encoder.encode(owned),
            encoded,
            "Encoder::encode differs from Frame::encode"
        );
        match &owned.body {
            Body::Message(m) => {
                assert_eq!(
                    encoder.message(owned.request_id, m),
                    encoded,
                    "Encoder::message differs"
                );
            }
            Body::Error(e) if e.request_id == owned.request_id => {
                if let Some(code) = ErrorCode::from_u16(e.code) {
                    assert_eq!(
                        encoder.error(code, &e.message, e.request_id),
                        encoded,
                        "Encoder::error differs"
                    );
                }
            }
            _ => {}
        }
    });
}

/// Reads every field of the frame through the generated accessors and folds them into a number,
/// so the optimiser cannot drop a read.
fn read_every_field(v: fb::Frame<'_>) -> u64 {
    let mut acc = v.request_id();
    let mut add = |x: u64| acc = acc.rotate_left(5) ^ x;
    let text = |s: Option<&str>| s.map_or(u64::MAX, |s| s.len() as u64 ^ s.chars().count() as u64);
    match v.body_type() {
        fb::Body::Hello => {
            if let Some(b) = v.body_as_hello() {
                add(text(b.token()));
                add(text(b.device()));
                add(u64::from(b.protocol_version()));
            }
        }
        fb::Body::Welcome => {
            if let Some(b) = v.body_as_welcome() {
                add(b.user_id());
                add(b.device_id());
                add(u64::from(b.heartbeat_interval_ms()));
                add(b.server_time_ms());
                add(u64::from(b.protocol_version()));
            }
        }
        fb::Body::Send => {
            if let Some(b) = v.body_as_send() {
                add(b.chat_id());
                add(b.client_msg_id());
                add(text(b.text()));
            }
        }
        fb::Body::SendOk => {
            if let Some(b) = v.body_as_send_ok() {
                add(b.client_msg_id());
                add(b.chat_id());
                add(b.seq());
                add(b.server_ts_ms());
            }
        }
        fb::Body::Message => {
            if let Some(m) = v.body_as_message() {
                add(read_message(m));
            }
        }
        fb::Body::Sync => {
            if let Some(b) = v.body_as_sync() {
                for c in b.cursors().iter().flatten() {
                    add(c.chat_id() ^ c.seq());
                }
            }
        }
        fb::Body::SyncDone => {
            if let Some(b) = v.body_as_sync_done() {
                for c in b.heads().iter().flatten() {
                    add(c.chat_id() ^ c.seq());
                }
            }
        }
        fb::Body::History => {
            if let Some(b) = v.body_as_history() {
                add(b.chat_id());
                add(b.before_seq());
                add(u64::from(b.limit()));
            }
        }
        fb::Body::HistoryPage => {
            if let Some(b) = v.body_as_history_page() {
                add(b.chat_id());
                add(u64::from(b.has_more()));
                for m in b.messages().iter().flatten() {
                    add(read_message(m));
                }
            }
        }
        fb::Body::Ack => {
            if let Some(b) = v.body_as_ack() {
                add(b.chat_id());
                add(b.seq());
            }
        }
        fb::Body::Presence => {
            if let Some(b) = v.body_as_presence() {
                add(b.user_id());
                add(u64::from(b.online()));
                add(b.last_seen_ms());
            }
        }
        fb::Body::Ping => add(v.body_as_ping().map_or(0, |b| b.nonce())),
        fb::Body::Pong => add(v.body_as_pong().map_or(0, |b| b.nonce())),
        fb::Body::Error => {
            if let Some(b) = v.body_as_error() {
                add(u64::from(b.code()));
                add(text(b.message()));
                add(b.request_id());
            }
        }
        fb::Body::Resync => add(u64::from(v.body_as_resync().is_some())),
        fb::Body::Edit => {
            if let Some(b) = v.body_as_edit() {
                add(b.chat_id() ^ b.target_seq() ^ b.client_msg_id());
                add(text(b.text()));
            }
        }
        fb::Body::Delete => {
            if let Some(b) = v.body_as_delete() {
                add(b.chat_id() ^ b.target_seq() ^ b.client_msg_id());
            }
        }
        fb::Body::Typing => {
            if let Some(b) = v.body_as_typing() {
                add(b.chat_id() ^ b.user_id() ^ u64::from(b.active()));
            }
        }
        fb::Body::Receipt => {
            if let Some(b) = v.body_as_receipt() {
                add(b.chat_id() ^ b.user_id() ^ b.delivered_seq() ^ b.read_seq());
            }
        }
        fb::Body::ChatStates => {
            if let Some(b) = v.body_as_chat_states() {
                for c in b.chats().iter().flatten() {
                    add(c.chat_id() ^ c.last_seq() ^ c.read_seq() ^ c.unread());
                }
            }
        }
        other => panic!("view accepted a frame with body type {}", other.0),
    }
    acc
}

fn read_message(m: fb::Message<'_>) -> u64 {
    let text = m.text().map_or(0, |s| s.len() as u64 ^ s.chars().count() as u64);
    m.chat_id() ^ m.seq() ^ m.sender() ^ m.server_ts_ms() ^ m.client_msg_id() ^ text
}
