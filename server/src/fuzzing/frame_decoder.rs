//! Target `frame_decoder`: a byte stream of size-prefixed frames, delivered in chunks of
//! fuzzer-chosen sizes, through the incremental [`FrameDecoder`], the verifier ([`view`]) and the
//! owned conversion ([`Frame::decode`]) — what every connection's read path does.
//!
//! Input: `[a, b, stream...]`; the stream is appended to the decoder's buffer in chunks of
//! alternately `a` and `b` bytes (0 counts as 1). Invariants:
//!
//! * nothing panics;
//! * chunking does not matter: the frames split off (and the error that ends the stream, if any)
//!   are exactly those of a second decoder that is given the whole stream at once;
//! * every split-off frame is exactly as long as its prefix announces, within the limit;
//! * a frame that decodes re-encodes to bytes that decode to the same [`Frame`];
//! * [`peek_request_id`] agrees with the verified frame's `request_id`, and never panics on a
//!   frame the verifier refused.

use std::hint::black_box;

use bytes::BytesMut;
use natter_wire::{Frame, FrameDecoder, Limits, PREFIX_LEN, WireError, peek_request_id, view};

/// Largest frame (prefix included) the target's decoder accepts: small enough that the fuzzer
/// reaches `FrameTooLarge` with short inputs.
pub const MAX_FRAME: usize = 64 * 1024;

/// Feeds one input; panics when an invariant breaks.
pub fn run(data: &[u8]) {
    let [a, b, stream @ ..] = data else {
        return;
    };
    let sizes = [usize::from(*a).max(1), usize::from(*b).max(1)];
    let limits = Limits::with_max_frame(MAX_FRAME);
    let decoder = FrameDecoder::new(limits.clone());

    let (whole, whole_end) = split_all(&decoder, &mut BytesMut::from(stream));

    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut end = None;
    let mut rest = stream;
    let mut turn = 0;
    'feed: while !rest.is_empty() {
        let size = sizes.get(turn % 2).copied().unwrap_or(1).min(rest.len());
        turn += 1;
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        buf.extend_from_slice(chunk);
        loop {
            match decoder.split(&mut buf) {
                Ok(Some(frame)) => {
                    check_frame(&frame, &limits);
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(err) => {
                    end = Some(err);
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(
        frames, whole,
        "chunked splitting disagrees with splitting the whole stream"
    );
    assert_eq!(
        end, whole_end,
        "chunked splitting ends differently from the whole stream"
    );
    black_box(frames);
}

/// Splits every frame off `buf` at once.
fn split_all(decoder: &FrameDecoder, buf: &mut BytesMut) -> (Vec<bytes::Bytes>, Option<WireError>) {
    let mut frames = Vec::new();
    loop {
        match decoder.split(buf) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return (frames, None),
            Err(err) => return (frames, Some(err)),
        }
    }
}

fn check_frame(frame: &[u8], limits: &Limits) {
    let announced = frame
        .first_chunk::<PREFIX_LEN>()
        .map(|p| u32::from_le_bytes(*p) as usize + PREFIX_LEN);
    assert_eq!(
        announced,
        Some(frame.len()),
        "split a frame of another length than announced"
    );
    assert!(frame.len() <= limits.max_frame, "split a frame over the limit");

    match view(frame, limits) {
        Ok(v) => {
            assert_eq!(
                peek_request_id(frame),
                Some(v.request_id()),
                "peek_request_id disagrees with the verified frame"
            );
            let owned = match Frame::from_view(v) {
                Ok(owned) => owned,
                Err(err) => panic!("a verified frame does not convert: {err}"),
            };
            assert_eq!(Frame::decode(frame, limits).as_ref(), Ok(&owned));
            let again = Frame::decode(&owned.encode(), &Limits::default());
            assert_eq!(again.as_ref(), Ok(&owned), "re-encoding changed the frame");
        }
        Err(err) => {
            black_box(peek_request_id(frame));
            black_box(err.code());
        }
    }
}
