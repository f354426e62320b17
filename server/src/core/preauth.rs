//! The limit on input before authentication. Until its Hello is handled a
//! connection is anonymous, and whatever it has buffered is memory an attacker
//! holds for free until the hello deadline: at 200,000 connections per core a
//! partial frame of `--max-frame` each would be ~100 GiB. Hello is small, so
//! the first frame may declare at most [`MAX_PRE_AUTH_INPUT`] bytes; a larger
//! prefix is refused at once (`frame_too_large`, then close), without waiting
//! for its body.

use bytes::BytesMut;
use natter_wire::ErrorCode;

use super::{ConnId, Core, MAX_DEVICE_DESCRIPTION, State};

/// Most bytes a connection may buffer before it is authenticated: its first
/// frame (the Hello) including the 4-byte length prefix. A Hello carries a
/// token of 43–64 characters, a device description of at most
/// [`MAX_DEVICE_DESCRIPTION`] bytes and a few integers: well under 1 KiB
/// encoded, so 4 KiB leaves room for any honest client while bounding an
/// anonymous connection's memory to one small buffer.
pub const MAX_PRE_AUTH_INPUT: usize = 4096;

const _: () = assert!(MAX_DEVICE_DESCRIPTION + 64 + 256 < MAX_PRE_AUTH_INPUT);

impl Core {
    /// Refuses a connection still awaiting its Hello whose first frame
    /// declares more than [`MAX_PRE_AUTH_INPUT`] bytes. Returns true when it
    /// was refused (an Error is queued, then Close; `buf` is cleared).
    pub(super) fn refuse_oversized_pre_auth(&mut self, conn: ConnId, buf: &mut BytesMut) -> bool {
        let awaiting = self
            .sessions
            .get(conn.0)
            .is_some_and(|s| matches!(s.state, State::AwaitingHello { .. }));
        if !awaiting {
            return false;
        }
        let declared = match buf.get(..4) {
            Some(&[a, b, c, d]) => (u32::from_le_bytes([a, b, c, d]) as usize).saturating_add(4),
            _ => return false,
        };
        if declared <= MAX_PRE_AUTH_INPUT {
            return false;
        }
        buf.clear();
        let message = format!(
            "pre-authentication input is limited to {MAX_PRE_AUTH_INPUT} bytes: the first frame, \
             Hello, declared {declared}"
        );
        self.fail(conn, ErrorCode::FrameTooLarge, &message, 0);
        true
    }
}
