//! Criterion bench of the group-commit writer's commit step
//! ([`Store::commit_writes`]): one durable fjall batch (`SyncData`, one
//! `fdatasync`) of 1, 100 and 1,000 messages of 160 bytes, each with its
//! dedupe record, in a temporary directory on the machine's real disk.
//!
//! Throughput is reported in messages, so the `elem/s` figures show how the
//! records per commit — not the commits per second — make durable sends fast.
//! Run: `cargo bench -p natter-server --bench store_commit`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use natter_server::ids::{ChatId, ClientMsgId, CoreId, Seq, UserId};
use natter_server::store::writer::WriteOp;
use natter_server::store::{Store, StoredMessage};

/// Chats the benched messages are spread over (keys interleave like real traffic).
const CHATS: u64 = 64;

fn commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let store = Store::open(dir.path()).unwrap_or_else(|e| panic!("open store: {e}"));
    let text: String = "natter ".repeat(23).chars().take(160).collect();
    let mut next_seq = [0u64; CHATS as usize];
    let mut group = c.benchmark_group("store_commit");
    for batch in [1u64, 100, 1_000] {
        group.throughput(Throughput::Elements(batch));
        group.bench_with_input(BenchmarkId::new("sync_data", batch), &batch, |b, &batch| {
            b.iter_batched(
                || {
                    (0..batch)
                        .map(|i| {
                            let chat = i % CHATS;
                            let seq = &mut next_seq[chat as usize];
                            *seq += 1;
                            WriteOp::Message {
                                origin: CoreId(0),
                                msg: StoredMessage {
                                    chat: ChatId(chat + 1),
                                    seq: Seq(*seq),
                                    sender: UserId(1_000 + i),
                                    server_ts_ms: 1_700_000_000_000,
                                    client_msg_id: ClientMsgId(*seq),
                                    text: text.clone(),
                                    meta: Default::default(),
                                },
                            }
                        })
                        .collect::<Vec<_>>()
                },
                |ops| store.commit_writes(black_box(&ops)),
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = commit
}
criterion_main!(benches);
