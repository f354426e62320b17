//! Criterion benches for the hot paths of the codec: encoding a pushed `Message` frame with a
//! 160-byte text through a reused [`Encoder`], and splitting + verifying (`view`) one such frame.

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use natter_wire::{Encoder, FrameDecoder, Limits, Message, view};

fn message() -> Message {
    Message {
        chat_id: 1_234,
        seq: 987_654,
        sender: 42,
        server_ts_ms: 1_700_000_000_000,
        client_msg_id: 0xDEAD_BEEF,
        text: "natter ".repeat(23).chars().take(160).collect(),
        ..Message::default()
    }
}

fn encode_message(c: &mut Criterion) {
    let m = message();
    assert_eq!(m.text.len(), 160);
    let mut encoder = Encoder::new();
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_message_160b", |b| {
        b.iter(|| encoder.message(0, black_box(&m)))
    });

    let frame = encoder.message(0, &m);
    let decoder = FrameDecoder::new(Limits::default());
    let limits = Limits::default();
    group.bench_function("split_view_message_160b", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(black_box(&frame[..]));
            let Ok(Some(one)) = decoder.split(&mut buf) else {
                unreachable!("a whole frame")
            };
            let Ok(v) = view(&one, &limits) else {
                unreachable!("a valid frame")
            };
            black_box(v.body_as_message().map(|m| m.seq()))
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = encode_message
}
criterion_main!(benches);
