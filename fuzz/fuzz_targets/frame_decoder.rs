//! Fuzz target: a byte stream of size-prefixed frames, delivered in chunks of
//! fuzzer-chosen sizes, through the incremental decoder, the verifier and the
//! owned conversion. Must never panic, and every frame the decoder accepts must
//! re-encode to a frame that decodes to the same value.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use natter_wire::{Frame, FrameDecoder, Limits};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let limits = Limits::with_max_frame(64 * 1024);
    let decoder = FrameDecoder::new(limits.clone());
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.split(&mut buf) {
                Ok(Some(frame)) => {
                    if let Ok(owned) = Frame::decode(&frame, &limits) {
                        let again = Frame::decode(&owned.encode(), &Limits::default());
                        assert_eq!(again.ok().as_ref(), Some(&owned));
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
