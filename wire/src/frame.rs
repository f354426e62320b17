//! Size-prefixed framing and verification: [`Limits`], the incremental [`FrameDecoder`] that splits a
//! byte stream into frames, and [`view`], which verifies one frame and returns the zero-copy
//! FlatBuffers accessor.
//!
//! On a byte stream every frame is a u32 little-endian length `len` followed by `len` bytes of
//! FlatBuffer whose root is `Frame` (the FlatBuffers size-prefixed format). The whole frame is
//! `4 + len` bytes; `Limits::max_frame` bounds that total. Nothing here trusts the bytes it reads:
//! lengths are checked before use, and every buffer goes through the FlatBuffers verifier with
//! tightened options before a single field is read.

use bytes::{Bytes, BytesMut};
use flatbuffers::VerifierOptions;

use crate::{DEFAULT_MAX_FRAME, WireError, fb};

/// Length of the size prefix in front of every frame.
pub const PREFIX_LEN: usize = 4;

/// The smallest length a prefix may announce: a FlatBuffer needs at least its root offset and a table
/// offset. Smaller prefixes are refused with [`WireError::TooShort`].
pub const MIN_FRAME_BODY: usize = 8;

/// Limits applied to every frame read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole frame accepted, the 4-byte length prefix included. Also the verifier's maximum
    /// apparent size.
    pub max_frame: usize,
    /// Deepest nesting of tables the verifier accepts.
    pub max_depth: usize,
    /// Most tables the verifier accepts in one frame.
    pub max_tables: usize,
}

impl Default for Limits {
    /// `max_frame` = [`DEFAULT_MAX_FRAME`] (512 KiB: a 100,000-character text is at most ~400 KB of
    /// UTF-8), `max_depth` 16 (the deepest frame, a `HistoryPage`, nests 3 tables), `max_tables` 4096
    /// (a `HistoryPage` of 200 messages holds 202).
    fn default() -> Self {
        Limits {
            max_frame: DEFAULT_MAX_FRAME,
            max_depth: 16,
            max_tables: 4096,
        }
    }
}

impl Limits {
    /// The default limits with another maximum frame size (prefix included).
    pub fn with_max_frame(max_frame: usize) -> Self {
        Limits {
            max_frame,
            ..Limits::default()
        }
    }

    /// The FlatBuffers verifier options for these limits (the library's defaults allow 2 GiB and a
    /// million tables; these are tightened to `max_frame`, `max_depth` and `max_tables`).
    pub fn verifier_options(&self) -> VerifierOptions {
        VerifierOptions {
            max_depth: self.max_depth,
            max_tables: self.max_tables,
            max_apparent_size: self.max_frame,
            ignore_missing_null_terminator: false,
        }
    }

    /// Checks the length prefix at the start of `buf` and returns the whole frame's length (prefix
    /// included), or `Ok(None)` while fewer than 4 bytes are available.
    ///
    /// # Errors
    ///
    /// [`WireError::FrameTooLarge`] when the frame would exceed `max_frame`, [`WireError::TooShort`]
    /// when the prefix announces fewer than [`MIN_FRAME_BODY`] bytes.
    pub fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, WireError> {
        let Some(prefix) = buf.first_chunk::<PREFIX_LEN>() else {
            return Ok(None);
        };
        // u32 always fits in usize on the 32- and 64-bit targets natter supports; saturate otherwise.
        let len = usize::try_from(u32::from_le_bytes(*prefix)).unwrap_or(usize::MAX);
        let total = len.saturating_add(PREFIX_LEN);
        if total > self.max_frame {
            return Err(WireError::FrameTooLarge {
                len: total,
                max: self.max_frame,
            });
        }
        if len < MIN_FRAME_BODY {
            return Err(WireError::TooShort { len });
        }
        Ok(Some(total))
    }
}

/// Incremental splitter for a byte stream of size-prefixed frames.
///
/// It keeps no state of its own: append whatever a read returned to a [`BytesMut`] and call
/// [`split`](Self::split) until it returns `Ok(None)`. Any error means the stream is out of sync or
/// hostile; answer with [`WireError::code`] and close the connection.
#[derive(Clone, Debug, Default)]
pub struct FrameDecoder {
    limits: Limits,
}

impl FrameDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        FrameDecoder { limits }
    }

    /// The limits this decoder enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Splits the next complete frame (prefix included) off the front of `buf`; `Ok(None)` if more
    /// bytes are needed. Does not verify the contents: pass the frame to [`view`] or
    /// [`crate::Frame::decode`].
    ///
    /// # Errors
    ///
    /// As soon as the 4-byte prefix is known: [`WireError::FrameTooLarge`] when it announces more than
    /// `max_frame` (a 4 GiB prefix fails at once, without waiting for the body), and
    /// [`WireError::TooShort`] when it announces less than a minimal FlatBuffer. `buf` is left as it
    /// was.
    pub fn split(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        match self.limits.frame_len(buf)? {
            Some(total) if buf.len() >= total => Ok(Some(buf.split_to(total).freeze())),
            _ => Ok(None),
        }
    }
}

/// Verifies a size-prefixed frame (prefix included) against `limits` and returns the zero-copy view.
///
/// On success the prefix matches the buffer's length, the FlatBuffer passed the verifier (with
/// [`Limits::verifier_options`], so every string is UTF-8) and the body is one of the union members
/// this version knows, so `body_as_*` for the frame's `body_type()` returns `Some`.
///
/// # Errors
///
/// [`WireError::FrameTooLarge`] / [`WireError::TooShort`] for a bad prefix, [`WireError::Malformed`]
/// when the prefix disagrees with `frame.len()` or the verifier fails, [`WireError::InvalidUtf8`] for
/// a string that is not UTF-8, [`WireError::MissingBody`] for a frame without a known body.
pub fn view<'a>(frame: &'a [u8], limits: &Limits) -> Result<fb::Frame<'a>, WireError> {
    let total = limits
        .frame_len(frame)?
        .ok_or(WireError::TooShort { len: frame.len() })?;
    if total != frame.len() {
        return Err(WireError::Malformed(format!(
            "length prefix announces a {total}-byte frame but the buffer holds {} bytes",
            frame.len()
        )));
    }
    let opts = limits.verifier_options();
    let root = fb::size_prefixed_root_as_frame_with_opts(&opts, frame)?;
    let body_type = root.body_type();
    if body_type == fb::Body::NONE || body_type.0 > fb::Body::ENUM_MAX || root.body().is_none() {
        return Err(WireError::MissingBody);
    }
    Ok(root)
}

/// Best-effort read of the `request_id` of a frame that failed [`view`], so that an error answer
/// (for example [`crate::ErrorCode::InvalidUtf8`] for a `Send`) can echo it.
///
/// It walks the prefix, root offset and vtable with bounds checks only; it never panics, but for a
/// buffer the verifier refused the value may be meaningless. Returns `None` when the offsets lead
/// outside `frame`, and `Some(0)` when the field is absent (its default).
pub fn peek_request_id(frame: &[u8]) -> Option<u64> {
    let root_offset = usize::try_from(read_u32(frame, PREFIX_LEN)?).ok()?;
    let table = PREFIX_LEN.checked_add(root_offset)?;
    let vtable_offset = i64::from(read_i32(frame, table)?);
    let vtable = usize::try_from(i64::try_from(table).ok()?.checked_sub(vtable_offset)?).ok()?;
    let slot = usize::from(fb::Frame::VT_REQUEST_ID);
    let vtable_len = usize::from(read_u16(frame, vtable)?);
    if vtable_len < slot.checked_add(2)? {
        return Some(0);
    }
    let field_offset = usize::from(read_u16(frame, vtable.checked_add(slot)?)?);
    if field_offset == 0 {
        return Some(0);
    }
    let bytes = frame
        .get(table.checked_add(field_offset)?..)?
        .first_chunk::<8>()?;
    Some(u64::from_le_bytes(*bytes))
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    buf.get(at..)?.first_chunk::<4>().map(|b| u32::from_le_bytes(*b))
}

fn read_i32(buf: &[u8], at: usize) -> Option<i32> {
    buf.get(at..)?.first_chunk::<4>().map(|b| i32::from_le_bytes(*b))
}

fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    buf.get(at..)?.first_chunk::<2>().map(|b| u16::from_le_bytes(*b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_len_checks_the_prefix_bounds() {
        let limits = Limits::with_max_frame(100);
        assert_eq!(limits.frame_len(&[]), Ok(None));
        assert_eq!(limits.frame_len(&[8, 0, 0]), Ok(None));
        assert_eq!(limits.frame_len(&[8, 0, 0, 0]), Ok(Some(12)));
        assert_eq!(limits.frame_len(&[96, 0, 0, 0, 1, 2]), Ok(Some(100)));
        assert_eq!(
            limits.frame_len(&[97, 0, 0, 0]),
            Err(WireError::FrameTooLarge { len: 101, max: 100 })
        );
        assert_eq!(
            limits.frame_len(&[7, 0, 0, 0]),
            Err(WireError::TooShort { len: 7 })
        );
    }

    #[test]
    fn verifier_options_follow_the_limits() {
        let limits = Limits {
            max_frame: 1000,
            max_depth: 3,
            max_tables: 7,
        };
        let opts = limits.verifier_options();
        assert_eq!(
            (opts.max_apparent_size, opts.max_depth, opts.max_tables),
            (1000, 3, 7)
        );
        assert!(!opts.ignore_missing_null_terminator);
    }
}
