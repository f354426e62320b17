//! The `sync` scenario: a device that is `--behind N` messages behind, spread over
//! `--chats` chats, catches up with one `Sync`.
//!
//! Setup: users `bench_s_sender` and `bench_s_reader` (friends; reused across runs),
//! and `--chats` groups owned by the sender with the reader in them (created per run).
//! The sender fills them round-robin through natterd (pipelined sends, each
//! acknowledged after its group commit). Then a fresh device of the reader connects
//! and sends `Sync` with cursor 0 for every chat of the run, and reads until
//! `SyncDone`, checking each chat's seqs arrive once and gapless in order.
//!
//! Figures: `behind`, `synced`, `sync_msgs_per_sec` (messages received between
//! sending Sync and receiving SyncDone, per second), `server_peak_rss_bytes`
//! (natterd's peak resident memory during the catch-up, sampled every 20 ms) and
//! `server_rss_bytes` (before the catch-up), plus `lost`, `duplicated`, `reordered`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use natter_wire::{Body, Cursor, Frame, Send, Sync};

use crate::error::BenchError;
use crate::interrupt;
use crate::report::Report;
use crate::target::{RssSampler, Target};

const PASSWORD: &str = "natter-bench-password";
/// Sends in flight while filling the backlog.
const WINDOW: u64 = 4096;
/// How long one frame may take to arrive before the run is declared stuck.
const STALL: Duration = Duration::from_secs(60);

/// The sync scenario's flags.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct SyncArgs {
    /// sync: how many messages the device is behind.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) behind: u64,
    /// sync: how many chats the backlog is spread over.
    #[arg(long, default_value_t = 100)]
    pub(crate) chats: u64,
}

/// Bytes of text per message unless `--text-bytes` says otherwise.
pub(crate) const DEFAULT_TEXT_BYTES: usize = 32;

/// Checks the flags before anything starts.
///
/// # Errors
/// [`BenchError::Usage`] when a flag is out of range.
pub(crate) fn check_args(args: &SyncArgs, text_bytes: usize) -> Result<(), BenchError> {
    if args.behind == 0 || args.chats == 0 || args.chats > 10_000 {
        return Err(BenchError::Usage(
            "--behind must be at least 1 and --chats between 1 and 10000".into(),
        ));
    }
    if text_bytes == 0 || text_bytes > 4096 {
        return Err(BenchError::Usage(
            "--text-bytes must be between 1 and 4096".into(),
        ));
    }
    Ok(())
}

fn login(target: &Target, name: &str, device: &str) -> Result<natter_client::Login, BenchError> {
    match target.http.signup(name, PASSWORD) {
        Ok(_) => {}
        Err(e) if e.http_status() == Some(409) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(target.http.login(name, PASSWORD, device)?)
}

/// Runs the scenario against `target`.
///
/// # Errors
/// [`BenchError::Client`] / [`BenchError::Setup`] when natterd refuses the setup or
/// a connection fails; [`BenchError::Interrupted`] after Ctrl-C.
pub(crate) fn run(target: &Target, args: &SyncArgs, text_bytes: usize) -> Result<Report, BenchError> {
    let sender = login(target, "bench_s_sender", "bench")?;
    let reader = login(target, "bench_s_reader", "bench-setup")?;
    match target.http.friend_request(&sender.token, "bench_s_reader") {
        Ok(_) => {}
        Err(e) if e.http_status() == Some(409) => {}
        Err(e) => return Err(e.into()),
    }
    match target.http.accept_friend(&reader.token, sender.user_id) {
        Ok(()) => {}
        Err(e) if e.http_status().is_some_and(|s| s == 404 || s == 409) => {}
        Err(e) => return Err(e.into()),
    }
    let mut chats = Vec::new();
    for i in 0..args.chats {
        chats.push(
            target
                .http
                .create_group(&sender.token, &format!("sync {i}"), &[reader.user_id])?,
        );
    }
    println!("filling {} messages over {} chats ...", args.behind, chats.len());
    let fill_started = Instant::now();
    fill(target, &sender.token, &chats, args.behind, text_bytes)?;
    let fill_secs = fill_started.elapsed().as_secs_f64();
    println!(
        "filled in {fill_secs:.1}s ({:.0} sends/s); catching up ...",
        args.behind as f64 / fill_secs
    );
    interrupt::check()?;

    // A fresh device of the reader.
    let device = target.http.login("bench_s_reader", PASSWORD, "bench-sync")?;
    let mut conn = target.connect(&device.token, "natter-bench sync")?.0;
    conn.set_timeout(STALL);
    let sampler = RssSampler::start(target);
    let cursors = chats.iter().map(|&chat_id| Cursor { chat_id, seq: 0 }).collect();
    let started = Instant::now();
    conn.send_body(Body::Sync(Sync { cursors }))?;
    let mut next: HashMap<u64, u64> = chats.iter().map(|&c| (c, 1)).collect();
    let (mut synced, mut duplicated, mut reordered, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let done = loop {
        match conn.recv_timeout(STALL)? {
            Some(Frame {
                body: Body::Message(m),
                ..
            }) => {
                synced += 1;
                if let Some(expected) = next.get_mut(&m.chat_id) {
                    if m.seq == *expected {
                        *expected += 1;
                    } else if m.seq < *expected {
                        duplicated += 1;
                    } else {
                        reordered += 1;
                        *expected = m.seq + 1;
                    }
                }
            }
            Some(Frame {
                body: Body::SyncDone(done),
                ..
            }) => break done,
            Some(Frame {
                body: Body::Error(_), ..
            }) => errors += 1,
            Some(_) => {}
            None => {
                return Err(BenchError::Setup(format!(
                    "no frame for {STALL:?} during the sync"
                )));
            }
        }
        if synced.is_multiple_of(1 << 20) {
            interrupt::check()?;
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let rss = sampler.stop();
    let expected: u64 = done.heads.iter().map(|c| c.seq).sum();
    let lost = expected.saturating_sub(synced - duplicated);

    let mut report = Report::new("sync", "tcp");
    report.behind = Some(args.behind);
    report.synced = Some(synced);
    report.delivered = Some(synced);
    report.duration_s = Some(secs);
    report.sync_msgs_per_sec = Some(synced as f64 / secs);
    report.server_rss_bytes = rss.map(|r| r.before);
    report.server_peak_rss_bytes = Some(rss.map_or(0, |r| r.peak));
    report.lost = Some(lost);
    report.duplicated = Some(duplicated);
    report.reordered = Some(reordered);
    report.errors = Some(errors);
    Ok(report)
}

/// Sends `behind` messages of `text_bytes` bytes round-robin over `chats` from one
/// connection of `token`, pipelined ([`WINDOW`] in flight), until all are
/// acknowledged.
///
/// # Errors
/// [`BenchError::Setup`] if a send is refused or an answer takes longer than
/// [`STALL`]; [`BenchError::Client`] if the connection fails.
pub(crate) fn fill(
    target: &Target,
    token: &str,
    chats: &[u64],
    behind: u64,
    text_bytes: usize,
) -> Result<(), BenchError> {
    let text = "s".repeat(text_bytes);
    fill_texts(target, token, chats, behind, |_| text.clone())
}

/// [`fill`] with the text of send `i` from `text(i)`.
///
/// # Errors
/// As [`fill`].
pub(crate) fn fill_texts(
    target: &Target,
    token: &str,
    chats: &[u64],
    behind: u64,
    mut text: impl FnMut(u64) -> String,
) -> Result<(), BenchError> {
    let mut conn = target.connect(token, "natter-bench sync sender")?.0;
    conn.set_timeout(STALL);
    let (mut sent, mut acked) = (0u64, 0u64);
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    while acked < behind {
        while sent < behind && sent - acked < WINDOW {
            let chat_id = chats
                .get((sent % chats.len() as u64) as usize)
                .copied()
                .unwrap_or(0);
            conn.send_body(Body::Send(Send {
                chat_id,
                client_msg_id: run_id.wrapping_add(sent),
                text: text(sent),
            }))?;
            sent += 1;
        }
        match conn.recv_timeout(STALL)? {
            Some(Frame {
                body: Body::SendOk(_),
                ..
            }) => acked += 1,
            Some(Frame {
                body: Body::Error(e), ..
            }) => {
                return Err(BenchError::Setup(format!(
                    "a send was refused: {} (code {})",
                    e.message, e.code
                )));
            }
            Some(_) => {}
            None => return Err(BenchError::Setup(format!("no SendOk for {STALL:?}"))),
        }
        if acked.is_multiple_of(65_536) {
            interrupt::check()?;
        }
    }
    Ok(())
}
