//! Codec tests for natter-wire: round trips of every body, incremental splitting of a stream in any
//! chunking, the length-prefix limits, garbage and truncated input, invalid UTF-8, verifier limits,
//! and the error-code catalogue.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashSet;

use bytes::{BufMut, Bytes, BytesMut};
use natter_wire::{
    Ack, Body, ChatState, ChatStates, Cursor, DEFAULT_MAX_FRAME, Delete, Edit, Encoder, ErrorBody, ErrorCode,
    Frame, FrameDecoder, Hello, History, HistoryPage, Limits, Message, PROTOCOL_VERSION, Ping, Pong,
    Presence, Receipt, Send, SendOk, Sync, SyncDone, Typing, Welcome, WireError, fb, peek_request_id, view,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// helpers

/// One frame of every body variant, with non-default values in every field.
fn one_of_each() -> Vec<Frame> {
    let message = |seq: u64| Message {
        chat_id: 42,
        seq,
        sender: 7,
        server_ts_ms: 1_700_000_000_000 + seq,
        client_msg_id: 900 + seq,
        text: format!("message {seq}: héllo wörld ✓ 😀"),
        ..Message::default()
    };
    let bodies = vec![
        Body::Hello(Hello {
            token: "ab".repeat(32),
            device: "pixel 9 / natter-android 0.1".into(),
            protocol_version: PROTOCOL_VERSION,
            sync_first: true,
            conversation: true,
        }),
        Body::Welcome(Welcome {
            user_id: 1,
            device_id: 2,
            heartbeat_interval_ms: 30_000,
            server_time_ms: 1_700_000_000_000,
            protocol_version: PROTOCOL_VERSION,
            max_frame: 524_288,
        }),
        Body::Send(Send {
            chat_id: 42,
            client_msg_id: u64::MAX,
            text: "hi there".into(),
        }),
        Body::SendOk(SendOk {
            client_msg_id: 5,
            chat_id: 42,
            seq: 17,
            server_ts_ms: 99,
        }),
        Body::Message(message(1)),
        Body::Sync(Sync {
            cursors: vec![
                Cursor { chat_id: 1, seq: 10 },
                Cursor {
                    chat_id: u64::MAX,
                    seq: u64::MAX,
                },
            ],
        }),
        Body::SyncDone(SyncDone {
            heads: vec![Cursor { chat_id: 3, seq: 4 }],
        }),
        Body::History(History {
            chat_id: 42,
            before_seq: 100,
            limit: 50,
        }),
        Body::HistoryPage(HistoryPage {
            chat_id: 42,
            messages: (1..=3).rev().map(message).collect(),
            has_more: true,
        }),
        Body::Ack(Ack { chat_id: 42, seq: 3 }),
        Body::Presence(Presence {
            user_id: 8,
            online: true,
            last_seen_ms: 12,
        }),
        Body::Ping(Ping { nonce: 0xDEAD_BEEF }),
        Body::Pong(Pong { nonce: 0xDEAD_BEEF }),
        Body::Error(ErrorBody::new(
            ErrorCode::NotMember,
            "not a member of chat 42",
            77,
        )),
        Body::Resync,
        Body::Edit(Edit {
            chat_id: 42,
            target_seq: 3,
            client_msg_id: 901,
            text: "fixed ✓".into(),
        }),
        Body::Delete(Delete {
            chat_id: 42,
            target_seq: 3,
            client_msg_id: 902,
        }),
        Body::Typing(Typing {
            chat_id: 42,
            active: true,
            user_id: 7,
        }),
        Body::Receipt(Receipt {
            chat_id: 42,
            user_id: 8,
            delivered_seq: 3,
            read_seq: 2,
        }),
        Body::ChatStates(ChatStates {
            chats: vec![ChatState {
                chat_id: 42,
                last_seq: 3,
                read_seq: 1,
                unread: 2,
            }],
        }),
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| Frame::new(i as u64 + 1, body))
        .collect()
}

/// Feeds `stream` to a decoder in chunks of the given sizes (cycled; 0 is read as 1) and returns every
/// frame it splits off, decoded.
fn feed(stream: &[u8], chunks: &[usize], limits: &Limits) -> Result<Vec<Frame>, WireError> {
    let decoder = FrameDecoder::new(limits.clone());
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = stream;
    let mut sizes = chunks.iter().copied().cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(1).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        buf.extend_from_slice(chunk);
        rest = tail;
        while let Some(frame) = decoder.split(&mut buf)? {
            out.push(Frame::decode(&frame, limits)?);
        }
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    Ok(out)
}

fn with_prefix(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present")
}

// ---------------------------------------------------------------------------------------------
// strategies

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[a-z ]{0,200}", Just(String::new())]
}

fn arb_cursor() -> impl Strategy<Value = Cursor> {
    (any::<u64>(), any::<u64>()).prop_map(|(chat_id, seq)| Cursor { chat_id, seq })
}

fn arb_message() -> impl Strategy<Value = Message> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        arb_text(),
        (0u8..3, any::<u64>(), any::<u64>(), any::<u64>()),
    )
        .prop_map(
            |(
                chat_id,
                seq,
                sender,
                server_ts_ms,
                client_msg_id,
                text,
                (kind, target_seq, edited_seq, deleted_seq),
            )| {
                Message {
                    chat_id,
                    seq,
                    sender,
                    server_ts_ms,
                    client_msg_id,
                    text,
                    kind: fb::MessageKind(kind),
                    target_seq,
                    edited_seq,
                    deleted_seq,
                }
            },
        )
}

fn arb_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (arb_text(), arb_text(), any::<u32>(), any::<bool>(), any::<bool>()).prop_map(
            |(token, device, protocol_version, sync_first, conversation)| Body::Hello(Hello {
                token,
                device,
                protocol_version,
                sync_first,
                conversation,
            })
        ),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(|(a, b, c, d, e, f)| {
                Body::Welcome(Welcome {
                    user_id: a,
                    device_id: b,
                    heartbeat_interval_ms: c,
                    server_time_ms: d,
                    protocol_version: e,
                    max_frame: f,
                })
            }),
        (any::<u64>(), any::<u64>(), arb_text()).prop_map(|(chat_id, client_msg_id, text)| Body::Send(
            Send {
                chat_id,
                client_msg_id,
                text
            }
        )),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(a, b, c, d)| Body::SendOk(
            SendOk {
                client_msg_id: a,
                chat_id: b,
                seq: c,
                server_ts_ms: d
            }
        )),
        arb_message().prop_map(Body::Message),
        prop::collection::vec(arb_cursor(), 0..20).prop_map(|cursors| Body::Sync(Sync { cursors })),
        prop::collection::vec(arb_cursor(), 0..20).prop_map(|heads| Body::SyncDone(SyncDone { heads })),
        (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(chat_id, before_seq, limit)| Body::History(
            History {
                chat_id,
                before_seq,
                limit
            }
        )),
        (
            any::<u64>(),
            prop::collection::vec(arb_message(), 0..8),
            any::<bool>()
        )
            .prop_map(|(chat_id, messages, has_more)| Body::HistoryPage(HistoryPage {
                chat_id,
                messages,
                has_more
            })),
        (any::<u64>(), any::<u64>()).prop_map(|(chat_id, seq)| Body::Ack(Ack { chat_id, seq })),
        (any::<u64>(), any::<bool>(), any::<u64>()).prop_map(|(user_id, online, last_seen_ms)| {
            Body::Presence(Presence {
                user_id,
                online,
                last_seen_ms,
            })
        }),
        any::<u64>().prop_map(|nonce| Body::Ping(Ping { nonce })),
        any::<u64>().prop_map(|nonce| Body::Pong(Pong { nonce })),
        (any::<u16>(), arb_text(), any::<u64>()).prop_map(|(code, message, request_id)| Body::Error(
            ErrorBody {
                code,
                message,
                request_id
            }
        )),
        Just(Body::Resync),
        (any::<u64>(), any::<u64>(), any::<u64>(), arb_text()).prop_map(
            |(chat_id, target_seq, client_msg_id, text)| {
                Body::Edit(Edit {
                    chat_id,
                    target_seq,
                    client_msg_id,
                    text,
                })
            }
        ),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(chat_id, target_seq, client_msg_id)| {
            Body::Delete(Delete {
                chat_id,
                target_seq,
                client_msg_id,
            })
        }),
        (any::<u64>(), any::<bool>(), any::<u64>()).prop_map(|(chat_id, active, user_id)| Body::Typing(
            Typing {
                chat_id,
                active,
                user_id
            }
        )),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(a, b, c, d)| {
            Body::Receipt(Receipt {
                chat_id: a,
                user_id: b,
                delivered_seq: c,
                read_seq: d,
            })
        }),
        prop::collection::vec((any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()), 0..8).prop_map(|v| {
            Body::ChatStates(ChatStates {
                chats: v
                    .into_iter()
                    .map(|(chat_id, last_seq, read_seq, unread)| ChatState {
                        chat_id,
                        last_seq,
                        read_seq,
                        unread,
                    })
                    .collect(),
            })
        }),
    ]
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    (any::<u64>(), arb_body()).prop_map(|(request_id, body)| Frame::new(request_id, body))
}

// ---------------------------------------------------------------------------------------------
// round trips

#[test]
fn every_body_variant_round_trips() {
    let frames = one_of_each();
    let names: HashSet<_> = frames.iter().map(|f| f.body.name()).collect();
    assert_eq!(names.len(), 20, "one frame per union member");
    assert_eq!(
        fb::Body::ENUM_VALUES.len(),
        21,
        "NONE + 20 bodies: a new union member needs a test"
    );

    let limits = Limits::default();
    let mut encoder = Encoder::new();
    for frame in &frames {
        let bytes = frame.encode();
        assert_eq!(Frame::decode(&bytes, &limits).unwrap(), *frame);
        // The reused encoder produces the same bytes as a fresh one.
        assert_eq!(encoder.encode(frame), bytes, "{}", frame.body.name());

        let v = view(&bytes, &limits).unwrap();
        assert_eq!(v.request_id(), frame.request_id);
        assert_eq!(v.body_type(), frame.body.body_type());
        assert_eq!(Frame::from_view(v).unwrap(), *frame);
    }
}

#[test]
fn encoder_shortcuts_match_frame_encode() {
    let limits = Limits::default();
    let mut encoder = Encoder::new();
    let m = Message {
        chat_id: 1,
        seq: 2,
        sender: 3,
        server_ts_ms: 4,
        client_msg_id: 5,
        text: "x".repeat(160),
        kind: fb::MessageKind::Edit,
        target_seq: 1,
        ..Message::default()
    };
    let bytes = encoder.message(9, &m);
    assert_eq!(bytes, Frame::new(9, Body::Message(m.clone())).encode());
    assert_eq!(
        Frame::decode(&bytes, &limits).unwrap(),
        Frame::new(9, Body::Message(m))
    );

    let bytes = encoder.error(ErrorCode::RateLimited, "slow down", 33);
    let frame = Frame::decode(&bytes, &limits).unwrap();
    assert_eq!(
        frame,
        Frame::new(
            33,
            Body::Error(ErrorBody::new(ErrorCode::RateLimited, "slow down", 33))
        )
    );
    let Body::Error(e) = frame.body else {
        unreachable!()
    };
    assert_eq!(e.error_code(), Some(ErrorCode::RateLimited));
}

#[test]
fn largest_text_fits_the_default_limit_and_encoder_recovers_after_it() {
    let limits = Limits::default();
    let mut encoder = Encoder::new();
    // 100,000 four-byte characters: the largest text the protocol allows.
    let text = "😀".repeat(natter_wire::MAX_TEXT_CHARS);
    let big = Frame::new(
        1,
        Body::Send(Send {
            chat_id: 1,
            client_msg_id: 2,
            text,
        }),
    );
    let bytes = encoder.encode(&big);
    assert!(bytes.len() <= DEFAULT_MAX_FRAME, "{} bytes", bytes.len());
    assert_eq!(Frame::decode(&bytes, &limits).unwrap(), big);
    // The encoder keeps working (with a fresh builder) afterwards.
    let small = Frame::new(2, Body::Ping(Ping { nonce: 1 }));
    assert_eq!(encoder.encode(&small), small.encode());
}

#[test]
fn absent_fields_read_as_defaults() {
    // A Hello and a Sync built by another FlatBuffers implementation that omits every field.
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let hello = fb::Hello::create(&mut fbb, &fb::HelloArgs::default()).as_union_value();
    let root = fb::Frame::create(
        &mut fbb,
        &fb::FrameArgs {
            request_id: 0,
            body_type: fb::Body::Hello,
            body: Some(hello),
        },
    );
    fb::finish_size_prefixed_frame_buffer(&mut fbb, root);
    let frame = Frame::decode(fbb.finished_data(), &Limits::default()).unwrap();
    assert_eq!(frame, Frame::new(0, Body::Hello(Hello::default())));

    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let sync = fb::Sync::create(&mut fbb, &fb::SyncArgs::default()).as_union_value();
    let root = fb::Frame::create(
        &mut fbb,
        &fb::FrameArgs {
            request_id: 5,
            body_type: fb::Body::Sync,
            body: Some(sync),
        },
    );
    fb::finish_size_prefixed_frame_buffer(&mut fbb, root);
    let frame = Frame::decode(fbb.finished_data(), &Limits::default()).unwrap();
    assert_eq!(frame, Frame::new(5, Body::Sync(Sync::default())));
}

// ---------------------------------------------------------------------------------------------
// incremental splitting

#[test]
fn stream_fed_byte_by_byte_yields_the_same_frames() {
    let frames = one_of_each();
    let stream: Vec<u8> = frames.iter().flat_map(|f| f.encode().to_vec()).collect();
    let limits = Limits::default();
    assert_eq!(feed(&stream, &[1], &limits).unwrap(), frames);
    assert_eq!(feed(&stream, &[stream.len()], &limits).unwrap(), frames);
    assert_eq!(feed(&stream, &[3, 1, 4, 1, 5, 9, 2, 6], &limits).unwrap(), frames);
}

#[test]
fn split_waits_for_the_whole_frame_and_leaves_the_rest() {
    let decoder = FrameDecoder::new(Limits::default());
    let a = Frame::new(1, Body::Ping(Ping { nonce: 1 })).encode();
    let b = Frame::new(2, Body::Pong(Pong { nonce: 2 })).encode();
    let mut buf = BytesMut::new();
    assert_eq!(decoder.split(&mut buf).unwrap(), None);
    buf.extend_from_slice(&a[..3]);
    assert_eq!(decoder.split(&mut buf).unwrap(), None);
    buf.extend_from_slice(&a[3..a.len() - 1]);
    assert_eq!(decoder.split(&mut buf).unwrap(), None);
    assert_eq!(buf.len(), a.len() - 1, "nothing consumed while incomplete");
    buf.extend_from_slice(&a[a.len() - 1..]);
    buf.extend_from_slice(&b[..5]);
    assert_eq!(decoder.split(&mut buf).unwrap(), Some(a));
    assert_eq!(decoder.split(&mut buf).unwrap(), None);
    buf.extend_from_slice(&b[5..]);
    assert_eq!(decoder.split(&mut buf).unwrap(), Some(b));
    assert!(buf.is_empty());
}

// ---------------------------------------------------------------------------------------------
// length prefix limits

#[test]
fn four_gib_prefix_fails_at_once() {
    let decoder = FrameDecoder::new(Limits::default());
    let mut buf = BytesMut::new();
    for (i, byte) in [0xFF_u8; 4].into_iter().enumerate() {
        buf.put_u8(byte);
        let result = decoder.split(&mut buf);
        if i < 3 {
            assert_eq!(result.unwrap(), None, "prefix incomplete after {} bytes", i + 1);
        } else {
            let err = result.unwrap_err();
            assert_eq!(
                err,
                WireError::FrameTooLarge {
                    len: u32::MAX as usize + 4,
                    max: DEFAULT_MAX_FRAME
                }
            );
            assert_eq!(err.code(), ErrorCode::FrameTooLarge);
        }
    }
    assert!(matches!(
        view(&[0xFF; 16], &Limits::default()),
        Err(WireError::FrameTooLarge { .. })
    ));
}

#[test]
fn frame_over_a_configured_limit_is_refused() {
    let limits = Limits::with_max_frame(256);
    assert_eq!(limits.max_depth, Limits::default().max_depth);
    let small = Frame::new(
        1,
        Body::Send(Send {
            chat_id: 1,
            client_msg_id: 1,
            text: "a".repeat(100),
        }),
    );
    let large = Frame::new(
        2,
        Body::Send(Send {
            chat_id: 1,
            client_msg_id: 2,
            text: "a".repeat(300),
        }),
    );
    let small_bytes = small.encode();
    let large_bytes = large.encode();
    assert!(small_bytes.len() <= 256 && large_bytes.len() > 256);

    assert_eq!(feed(&small_bytes, &[7], &limits).unwrap(), vec![small]);
    let decoder = FrameDecoder::new(limits.clone());
    let mut buf = BytesMut::from(&large_bytes[..4]);
    assert_eq!(
        decoder.split(&mut buf).unwrap_err(),
        WireError::FrameTooLarge {
            len: large_bytes.len(),
            max: 256
        }
    );
    assert!(
        matches!(view(&large_bytes, &limits), Err(WireError::FrameTooLarge { len, max: 256 }) if len == large_bytes.len())
    );

    // The exact limit is accepted.
    let exact = Limits::with_max_frame(large_bytes.len());
    assert_eq!(Frame::decode(&large_bytes, &exact).unwrap(), large);
}

#[test]
fn prefix_below_a_minimal_flatbuffer_is_too_short() {
    let decoder = FrameDecoder::new(Limits::default());
    for len in 0..8_u32 {
        let mut buf = BytesMut::from(&len.to_le_bytes()[..]);
        let err = decoder.split(&mut buf).unwrap_err();
        assert_eq!(err, WireError::TooShort { len: len as usize });
        assert_eq!(err.code(), ErrorCode::BadFrame);
    }
    assert_eq!(
        view(&[1, 0], &Limits::default()).unwrap_err(),
        WireError::TooShort { len: 2 }
    );
}

#[test]
fn prefix_disagreeing_with_the_buffer_is_malformed() {
    let bytes = Frame::new(1, Body::Ping(Ping { nonce: 1 })).encode();
    let mut longer = bytes.to_vec();
    longer.extend_from_slice(&[0; 8]);
    assert!(matches!(
        view(&longer, &Limits::default()),
        Err(WireError::Malformed(_))
    ));
    assert!(matches!(
        view(&bytes[..bytes.len() - 1], &Limits::default()),
        Err(WireError::Malformed(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// truncated, corrupted and malformed frames

#[test]
fn truncated_frames_are_rejected() {
    let limits = Limits::default();
    for frame in one_of_each() {
        let bytes = frame.encode();
        for cut in 1..=bytes.len() - 4 {
            let kept = bytes.len() - cut;
            // Prefix patched to the truncated length: only the verifier can catch it.
            let mut truncated = bytes[..kept].to_vec();
            if truncated.len() >= 4 {
                truncated[..4].copy_from_slice(&((kept - 4) as u32).to_le_bytes());
            }
            match Frame::decode(&truncated, &limits) {
                Err(_) => {}
                // Cutting only the alignment padding after the last object leaves a valid frame
                // (FlatBuffers pads to at most 8 bytes); it must then read exactly the same.
                Ok(decoded) => {
                    assert!(cut < 8, "{}: cut of {cut} bytes accepted", frame.body.name());
                    assert_eq!(decoded, frame);
                }
            }
            // Unpatched: the decoder waits for the missing bytes, view refuses the mismatch.
            let mut buf = BytesMut::from(&bytes[..kept]);
            assert_eq!(FrameDecoder::new(limits.clone()).split(&mut buf).unwrap(), None);
            assert!(view(&bytes[..kept], &limits).is_err());
        }
    }
}

#[test]
fn invalid_utf8_in_send_text_is_reported_as_such() {
    let frame = Frame::new(
        31,
        Body::Send(Send {
            chat_id: 1,
            client_msg_id: 2,
            text: "hello world".into(),
        }),
    );
    let mut bytes = frame.encode().to_vec();
    let at = find(&bytes, b"hello world");
    bytes[at + 4] = 0xFF;
    let err = Frame::decode(&bytes, &Limits::default()).unwrap_err();
    assert_eq!(err, WireError::InvalidUtf8);
    assert_eq!(err.code(), ErrorCode::InvalidUtf8);
    assert_eq!(
        view(&bytes, &Limits::default()).unwrap_err(),
        WireError::InvalidUtf8
    );
    // The server can still echo the request id in its Error answer.
    assert_eq!(peek_request_id(&bytes), Some(31));
}

#[test]
fn peek_request_id_reads_valid_frames_and_never_panics_on_junk() {
    for frame in one_of_each() {
        assert_eq!(peek_request_id(&frame.encode()), Some(frame.request_id));
    }
    assert_eq!(peek_request_id(&Frame::new(0, Body::Resync).encode()), Some(0));
    assert_eq!(peek_request_id(&[]), None);
    assert_eq!(peek_request_id(&[0xFF; 64]), None);
}

fn frame_with_union(body_type: fb::Body, with_body: bool) -> Vec<u8> {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let body = with_body.then(|| fb::Ping::create(&mut fbb, &fb::PingArgs { nonce: 1 }).as_union_value());
    let root = fb::Frame::create(
        &mut fbb,
        &fb::FrameArgs {
            request_id: 4,
            body_type,
            body,
        },
    );
    fb::finish_size_prefixed_frame_buffer(&mut fbb, root);
    fbb.finished_data().to_vec()
}

#[test]
fn missing_or_unknown_body_is_missing_body() {
    let limits = Limits::default();
    for bytes in [
        frame_with_union(fb::Body::NONE, false),
        frame_with_union(fb::Body(200), true),
    ] {
        let err = view(&bytes, &limits).unwrap_err();
        assert_eq!(err, WireError::MissingBody);
        assert_eq!(err.code(), ErrorCode::BadFrame);
        assert_eq!(
            Frame::decode(&bytes, &limits).unwrap_err(),
            WireError::MissingBody
        );
    }
    // A union type without its value is inconsistent: the verifier refuses it.
    let err = view(&frame_with_union(fb::Body::Ping, false), &limits).unwrap_err();
    assert!(matches!(err, WireError::Malformed(_)), "{err:?}");
    assert_eq!(err.code(), ErrorCode::BadFrame);
}

#[test]
fn a_full_history_page_fits_but_too_many_tables_do_not() {
    let limits = Limits::default();
    let page = |n: u64| {
        let messages = (1..=n)
            .map(|seq| Message {
                chat_id: 1,
                seq,
                text: "m".into(),
                ..Message::default()
            })
            .collect();
        Frame::new(
            1,
            Body::HistoryPage(HistoryPage {
                chat_id: 1,
                messages,
                has_more: true,
            }),
        )
    };
    let full = page(200);
    assert_eq!(Frame::decode(&full.encode(), &limits).unwrap(), full);

    let bytes = page(5000).encode();
    assert!(bytes.len() <= limits.max_frame, "{} bytes", bytes.len());
    let err = Frame::decode(&bytes, &limits).unwrap_err();
    assert!(
        matches!(&err, WireError::Malformed(m) if m.contains("tables")),
        "{err:?}"
    );
}

#[test]
fn shared_strings_cannot_inflate_the_apparent_size() {
    // 200 messages all pointing at one 3 KB string: a 20 KB buffer that reads as 600 KB.
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let text = fbb.create_string(&"x".repeat(3000));
    let offsets: Vec<_> = (1..=200)
        .map(|seq| {
            fb::Message::create(
                &mut fbb,
                &fb::MessageArgs {
                    seq,
                    text: Some(text),
                    ..Default::default()
                },
            )
        })
        .collect();
    let messages = fbb.create_vector(&offsets);
    let page = fb::HistoryPage::create(
        &mut fbb,
        &fb::HistoryPageArgs {
            chat_id: 1,
            messages: Some(messages),
            has_more: false,
        },
    )
    .as_union_value();
    let root = fb::Frame::create(
        &mut fbb,
        &fb::FrameArgs {
            request_id: 1,
            body_type: fb::Body::HistoryPage,
            body: Some(page),
        },
    );
    fb::finish_size_prefixed_frame_buffer(&mut fbb, root);
    let bytes = fbb.finished_data();
    assert!(bytes.len() < 32 * 1024);
    let err = view(bytes, &Limits::default()).unwrap_err();
    assert!(
        matches!(&err, WireError::Malformed(m) if m.contains("pparent")),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// error codes

#[test]
fn every_error_code_round_trips_and_has_a_unique_name() {
    let mut names = HashSet::new();
    for (i, code) in ErrorCode::ALL.into_iter().enumerate() {
        assert_eq!(
            code.as_u16() as usize,
            i + 1,
            "codes are numbered 1.. without gaps"
        );
        assert_eq!(ErrorCode::from_u16(code.as_u16()), Some(code));
        assert_eq!(u16::from(code), code.as_u16());
        assert!(names.insert(code.name()), "duplicate name {}", code.name());
        assert!(
            code.name()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{}",
            code.name()
        );
        assert_eq!(ErrorCode::from_name(code.name()), Some(code));
        assert_eq!(code.to_string(), code.name());
    }
    assert_eq!(ErrorCode::from_u16(0), None);
    assert_eq!(ErrorCode::from_u16(ErrorCode::ALL.len() as u16 + 1), None);
    assert_eq!(ErrorCode::from_name("no_such_code"), None);
    assert_eq!(ErrorCode::BadFrame.name(), "bad_frame");
    assert_eq!(ErrorCode::TooManyConnections.as_u16(), 19);
}

#[test]
fn connection_closing_codes_are_the_documented_ones() {
    let closing: Vec<_> = ErrorCode::ALL
        .into_iter()
        .filter(|c| c.closes_connection())
        .collect();
    assert_eq!(
        closing,
        [
            ErrorCode::BadFrame,
            ErrorCode::FrameTooLarge,
            ErrorCode::NotAuthenticated,
            ErrorCode::InvalidToken,
            ErrorCode::UnsupportedVersion,
            ErrorCode::UnexpectedFrame,
            ErrorCode::TokenRevoked,
            ErrorCode::ShuttingDown,
            ErrorCode::HeartbeatTimeout,
            ErrorCode::TooManyConnections,
            ErrorCode::SlowConsumer,
            ErrorCode::TooManySessions,
        ]
    );
    for code in [
        ErrorCode::Overloaded,
        ErrorCode::MissingClientMsgId,
        ErrorCode::ClientMsgIdReused,
        ErrorCode::StorageFull,
        ErrorCode::NotMember,
        ErrorCode::EmptyText,
        ErrorCode::TextTooLong,
        ErrorCode::InvalidUtf8,
        ErrorCode::UnknownChat,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::AlreadyAuthenticated,
        ErrorCode::NotSender,
        ErrorCode::WindowClosed,
        ErrorCode::MessageDeleted,
        ErrorCode::UnknownTarget,
        ErrorCode::TooManyEdits,
    ] {
        assert!(!code.closes_connection());
    }
}

// ---------------------------------------------------------------------------------------------
// properties

/// Runs untrusted bytes through every reading entry point; none may panic.
fn read_everything(bytes: &[u8], limits: &Limits) {
    let decoder = FrameDecoder::new(limits.clone());
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(frame)) = decoder.split(&mut buf) {
        let _ = view(&frame, limits);
        if let Ok(frame) = Frame::decode(&frame, limits) {
            // Anything that decodes re-encodes to something that decodes to the same frame.
            assert_eq!(Frame::decode(&frame.encode(), &Limits::default()).unwrap(), frame);
        }
    }
    let _ = view(bytes, limits);
    let _ = Frame::decode(bytes, limits);
    let _ = peek_request_id(bytes);
}

proptest! {
    #[test]
    fn any_frame_round_trips(frame in arb_frame()) {
        let bytes = frame.encode();
        prop_assert_eq!(Frame::decode(&bytes, &Limits::default())?, frame);
    }

    #[test]
    fn any_stream_in_any_chunking_yields_the_same_frames(
        frames in prop::collection::vec(arb_frame(), 1..8),
        chunks in prop::collection::vec(1_usize..64, 1..16),
    ) {
        let mut encoder = Encoder::new();
        let stream: Vec<u8> = frames.iter().flat_map(|f| encoder.encode(f).to_vec()).collect();
        prop_assert_eq!(feed(&stream, &chunks, &Limits::default())?, frames);
    }

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        read_everything(&bytes, &Limits::default());
        read_everything(&bytes, &Limits::with_max_frame(64));
    }

    #[test]
    fn garbage_behind_a_matching_prefix_never_panics(bytes in prop::collection::vec(any::<u8>(), 8..1024)) {
        read_everything(&with_prefix(&bytes), &Limits::default());
    }

    #[test]
    fn corrupted_frames_never_panic(
        frame in arb_frame(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = frame.encode().to_vec();
        for (index, value) in flips {
            // Keep the prefix so the corruption reaches the verifier.
            let at = 4 + index.index(bytes.len() - 4);
            bytes[at] = value;
        }
        read_everything(&bytes, &Limits::default());
    }
}

#[test]
fn encoded_frames_are_shared_bytes() {
    // Frames from the encoder are `Bytes`, cheap to clone into several outbound queues.
    let bytes: Bytes = Encoder::new().encode(&Frame::new(1, Body::Resync));
    let clone = bytes.clone();
    assert_eq!(bytes.as_ptr(), clone.as_ptr());
}
