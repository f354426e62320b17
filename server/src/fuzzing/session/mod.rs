//! Target `session`: structure-aware sequences of events against the sans-IO core — two
//! [`Core`]s of a two-core natterd, driven the way `runtime/worker.rs` drives them, with their
//! command queues, a storage writer and an in-memory store, under a simulated clock, with no
//! sockets and no threads.
//!
//! # Input
//!
//! The bytes decode (with [`arbitrary`]) into a [`SessionInput`]: up to [`MAX_OPS`] [`Op`]s —
//! accept a connection; feed it bytes (well-formed frames built from arbitrary owned
//! [`natter_wire::Frame`]s, a frame cut in two, a corrupted frame, a flood of one frame, or raw
//! garbage), at once or later; answer a pending token lookup with `Valid` / `Invalid` /
//! `StoreUnavailable`; let time pass; close a connection from the peer's side; let a core take
//! the next command from its queue (a migrating session, the other core's work, commit
//! completions, a membership change from the side-port); commit writes; close a device's
//! sessions (logout); report an outbound overflow, or that it drained (`Core::handle_drained`:
//! the next sync page); make the store fail (sync and history reads too); shut a core down.
//! [`SessionInput::to_bytes`] is the inverse, so seeds are written as operations
//! ([`crate::fuzzing::seeds`]). The store holds users 1–[`USERS`] and five chats (see `store.rs`),
//! and every message, membership change and device cursor the harness's writer committed.
//!
//! # Driving
//!
//! The harness is a model driver that keeps the core's contract: after every `handle_*` call it
//! drains [`Core::poll_action`] and carries each action out in order — a `Migrate` is detached at
//! once and queued for the home core, `ToCore` work is queued for its core, a `Write` goes to the
//! writer's queue, an `Authenticate` waits for an [`Op::Auth`], a `Close` waits for [`Op::Reap`] or
//! [`Op::PeerClosed`] (the contract allows any delay before [`Core::handle_closed`]). Every
//! operation ends the loop turn of both cores (`handle_end_of_turn`). At the end every write is
//! committed and every queue drained until the cores are idle; then time runs on until every
//! connection must have timed out.
//!
//! # Invariants (a panic names the one that broke)
//!
//! * nothing panics inside the core;
//! * before its `Welcome` a connection is sent nothing but `Error`s, and every such `Error` is
//!   followed by a `Close` (as is every `Error` whose code closes the connection);
//! * a `Welcome` follows only a `Valid` answer to that connection's latest lookup, names that user
//!   and device, comes from the user's home core, and comes once; a `Migrate` follows only a
//!   `Valid` answer for a user homed on the target core;
//! * the server never sends a client-to-server frame, and every frame it sends decodes;
//! * no `Transmit`, `Authenticate` or second `Close` after a connection's `Close`, and a call's
//!   actions concern only the connections that call is about;
//! * per [`Core::handle_input`] call at most [`FRAMES_PER_SESSION_PER_TURN`] frames are taken and
//!   answered (a Sync's stream pages go with its `SyncDone` or `Error` and are not counted);
//!   `Budget` means a frame is waiting and a budget was spent (the frames, or
//!   [`REPLY_BYTES_PER_CALL`] of answers), `Paused` that the session takes no frames now, and
//!   `Drained` that nothing the decoder could act on at once is left;
//! * messages: every write goes to the chat's owner core's writer queue with the next `seq` of
//!   the chat (gapless), from a member, once per `(chat, sender, client_msg_id)` (dedupe); a
//!   `SendOk` answers a `Send` that connection made and names the committed message — only after
//!   its commit; a pushed `Message` was committed, is pushed only to users who were members when
//!   its `seq` was assigned (**no message visible to a non-member**), with the stored content, in
//!   increasing `seq` per chat and connection; membership changes are written only for groups,
//!   by their owner core, and succeed only after their commit; each gets exactly one answer;
//! * once idle, every `Send` of an open session has been answered;
//! * sync and the seam (docs/PROTOCOL.md): no `Message` reaches a session that said
//!   `Hello{sync_first}`, or was sent `Resync`, before its next Sync; after a Sync, per chat of
//!   its plan, the Messages it gets (pages with the Sync's request id, pushes with 0) are exactly
//!   cursor+1, cursor+2, … — no duplicate, no gap except the session's own sends (answered by
//!   SendOk) — until `Resync` or an `Error` with the Sync's id; a `SyncDone` answers a Sync the
//!   session sent, the latest once its stream began, once, with heads equal to what was streamed;
//!   once idle (every page drained), a synced session holds every committed message of those
//!   chats; a sync page goes only to a member then or now, a push only to a member then;
//! * history: a non-empty `HistoryPage` only for a member, newest first and contiguous, the
//!   committed messages, at most [`HISTORY_MAX_MESSAGES`], `has_more` exactly when older ones
//!   exist, and within [`MAX_FRAME`] encoded;
//! * an `Ack` stores the cursor of the session's own device, for a chat it is a member of;
//! * a connection is refused only when its core is at [`MAX_CONNECTIONS`], and never gets the id of
//!   a live one;
//! * timeouts are never early — a hello timeout only after the hello deadline, a heartbeat timeout
//!   only after [`HEARTBEAT_TIMEOUT`] of silence — and at the end, every connection has timed out;
//! * after every operation each core's counts match the model (connections, authenticated
//!   sessions), [`Core::check_invariants`] holds, and [`Core::phase`] agrees with the model.

mod harness;
mod input;
mod store;

use std::time::Duration;

pub use input::{
    AuthChoice, Blob, Emit, Id, Input, Op, SessionInput, Text, Version, WireBody, WireCursor, WireFrame,
    WireMessage,
};
pub use store::CHAT_IDS;

#[cfg(doc)]
use crate::core::{Core, FRAMES_PER_SESSION_PER_TURN, HISTORY_MAX_MESSAGES, REPLY_BYTES_PER_CALL};

/// Cores of the simulated natterd.
pub const CORES: usize = 2;
/// The cores' heartbeat timeout (the hello deadline is the smaller of this and
/// [`crate::core::HELLO_TIMEOUT`]).
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections per core: small, so the limit is reached.
pub const MAX_CONNECTIONS: usize = 8;
/// The cores' frame limit (prefix included): natterd's default, so that a `Send` can be over
/// the text limit without being over the frame limit.
pub const MAX_FRAME: usize = natter_wire::DEFAULT_MAX_FRAME;
/// Sends per second per session: low, so a flood reaches the rate limit.
pub const SEND_RATE: u32 = 20;
/// Bytes one [`Input`] delivers at most (a flood of large frames is cut there), so that no input
/// makes the harness allocate gigabytes.
pub const MAX_ARRIVAL: usize = 4 << 20;
/// Bytes a connection's receive buffer holds at most; what arrives beyond it is dropped (the
/// runtime stops reading a connection long before).
pub const MAX_BUFFERED: usize = 8 << 20;
/// Most operations decoded from one input.
pub const MAX_OPS: usize = 256;
/// Users `1..=USERS` are the ones a `Valid` answer can name.
pub const USERS: u64 = 8;
/// Devices per user: user `u`'s are ids `(u - 1) * DEVICES + 1 ..= u * DEVICES`.
pub const DEVICES: u64 = 4;
/// Longest text a [`Text`] can stand for (the protocol's limit is 100,000 characters).
pub const MAX_TEXT: usize = 120_000;

/// Feeds one input; panics when an invariant breaks.
pub fn run(data: &[u8]) {
    let input = SessionInput::from_bytes(data);
    let mut harness = harness::Harness::new();
    for op in &input.ops {
        harness.apply(op);
        harness.check_all();
    }
    harness.finish();
}

/// Feeds one input like [`run`] and says how often the sync and history checks ran.
#[cfg(test)]
fn run_reached(data: &[u8]) -> harness::Reached {
    let input = SessionInput::from_bytes(data);
    let mut harness = harness::Harness::new();
    for op in &input.ops {
        harness.apply(op);
        harness.check_all();
    }
    harness.finish();
    harness.reached
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fuzzing::seeds;

    fn reached(name: &str) -> harness::Reached {
        let seed = seeds::corpus("session")
            .into_iter()
            .find(|s| s.name == format!("seed-{name}"))
            .unwrap();
        run_reached(&seed.data)
    }

    /// The sync seeds reach the seam checks: pages and pushes checked against the cursors,
    /// SyncDone heads, a held `sync_first` session, pages after `handle_drained`, a Resync.
    #[test]
    fn sync_seeds_reach_the_seam_checks() {
        let r = reached("sync-first-reconnect");
        assert!(r.held_sessions >= 1 && r.sync_dones >= 1, "{r:?}");
        // Seqs 2 and 3 from the sync (cursor 1), then 4 and 5 live.
        assert!(r.seam_messages >= 4, "{r:?}");
        let r = reached("sync-pages-and-the-seam");
        assert!(r.drained_pages >= 1 && r.sync_dones >= 1, "{r:?}");
        assert!(r.seam_messages >= 10, "{r:?}");
        let r = reached("sync-backlog-and-stored-cursor");
        // 50 of the backlog, then 30 after the stored cursor, then 5 after the cursor 55.
        assert!(r.seam_messages >= 85 && r.sync_dones >= 3, "{r:?}");
        let r = reached("sync-store-fault-and-resync");
        assert!(r.resyncs >= 1 && r.sync_dones >= 1, "{r:?}");
        let r = reached("sync-replaced-and-rate-limited");
        assert!(r.sync_dones >= 1 && r.seam_messages >= 1, "{r:?}");
    }

    /// The conversation seed reaches the conversation checks: Typing, Receipt and ChatStates go
    /// to its conversation sessions (and the check that the plain one gets none ran on them).
    #[test]
    fn conversation_seed_reaches_the_conversation_checks() {
        let r = reached("conversation-edit-delete-typing");
        assert!(r.conversation_frames >= 3 && r.amends >= 2, "{r:?}");
    }

    /// The history seed gets pages of committed messages (the checks ran on them).
    #[test]
    fn history_seed_reaches_the_page_checks() {
        let r = reached("history-pages");
        assert!(r.history_messages >= 8, "{r:?}");
    }
}
