//! The group-commit writer: one thread (`natter-store-writer`) that makes every
//! message, membership change and last-seen time durable, many per `fdatasync`.
//!
//! # Contract
//!
//! * Cores hand it [`WriteOp`]s through a [`WriterSender`] (bounded,
//!   [`CHANNEL_CAPACITY`]); [`WriterSender::try_send`] never blocks, so a core
//!   never stalls on the disk — when the queue is full the core keeps the op and
//!   retries on a later turn.
//! * Per round the thread blocks for the first op, then drains whatever else is
//!   queued up to [`MAX_OPS_PER_COMMIT`] ops or [`MAX_TEXT_BYTES_PER_COMMIT`]
//!   bytes of text, writes all of it as **one** fjall batch with
//!   [`PersistMode::SyncData`] (one journal record, one `fdatasync`), and only
//!   after that returned calls `deliver(core, completions)` once per origin
//!   core, with that core's completions in the order it sent the ops (a
//!   [`WriteOp::LastSeen`] has no completion: nobody waits for it). Ops of one
//!   origin are committed in the order they were sent (the channel is FIFO and a
//!   batch is applied in order), so a chat's messages, all sent by its owner
//!   core, land in `seq` order.
//! * While a round commits, cores keep queueing (pipelining): the next round
//!   takes everything that arrived meanwhile, so under load each `fdatasync`
//!   carries many records.
//! * The writer **never blocks on a core**. Completions go through a
//!   [`CompletionSink`] that may refuse them (that core's queue is full): the
//!   writer then keeps them, per core, appends later completions of that core
//!   behind them, and offers them again after every commit and every
//!   [`HANDOVER_RETRY`] — so completions reach each core in commit order (FIFO
//!   per core), and one slow core never stalls the commits or completions of
//!   the others. What is kept for a core is bounded by what that core has in
//!   flight (its ops were all sent by it).
//!
//! * Every [`space::CHECK_INTERVAL`] (busy or idle) it re-reads the free
//!   space of the data directory against `--disk-reserve` ([`space`]), so the
//!   cores' `storage_full` refusals start and end within that time.
//! * As often, it measures the journal and, past `--journal-limit` of growth,
//!   seals every keyspace's memtable ([`engine::JournalGuard`]), so a restart
//!   never replays more than that unflushed.
//!
//! # Failure: the poison rule
//!
//! A failed commit or sync is never retried and never acknowledged: nothing of
//! that batch is delivered, the store is marked poisoned, the failure is logged
//! at error level, and the process exits with [`POISON_EXIT_CODE`] right there
//! (from the writer thread, inside [`Store::commit_writes`]).
//! On restart fjall replays its journal; whatever that batch had put in the
//! journal either replays whole or not at all (a batch is one atomic journal
//! record), and since none of it was acknowledged, neither outcome breaks a
//! promise. `docs/DURABILITY.md` explains why exiting beats carrying on.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use fjall::{OwnedWriteBatch, PersistMode};

pub use super::POISON_EXIT_CODE;
use super::records::{ChatRecord, encode_member};
use super::{Store, StoreError, engine, keys, now_ms, space};
pub use crate::core::{Completion, WriteOp};
use crate::ids::{ChatId, CoreId, UserId};
use crate::metrics::Metrics;

/// The writer thread's name. Its death is a storage failure whatever killed
/// it (the fail-stop supervision exits with [`POISON_EXIT_CODE`]): what it held
/// is neither committed nor acknowledged, and only a restart recovers.
pub const WRITER_THREAD: &str = "natter-store-writer";

/// Ops the writer's queue holds before [`WriterSender::try_send`] gives them
/// back. At the ~400 k records/s one thread commits, this is ~160 ms of work:
/// enough to ride out a slow `fdatasync` without pushing back on the cores,
/// small enough (each op is ~100 bytes plus its text) to bound memory.
pub const CHANNEL_CAPACITY: usize = 65_536;

/// Most ops in one commit. Commits of ~2,000 records already reach ~400 k
/// records/s here; beyond 8,192 a batch only adds latency for the records at
/// its front (all of them wait for the one `fdatasync`) and memory for the batch.
pub const MAX_OPS_PER_COMMIT: usize = 8_192;

/// Most message text in one commit, in bytes (the round stops draining once it
/// reaches this; one op may take it past). Bounds the batch's memory and the
/// time one `fdatasync` takes: 40 texts of 400 KB, or thousands of short ones.
pub const MAX_TEXT_BYTES_PER_COMMIT: usize = 16 << 20;

/// How soon the writer offers refused completions again when no new op
/// arrives to wake it. A full core queue drains within a loop turn or two
/// (well under a millisecond when the core is healthy); retrying every
/// millisecond keeps acks prompt without spinning the writer thread.
pub const HANDOVER_RETRY: Duration = Duration::from_millis(1);

/// What a [`CompletionSink`] did with completions offered to it.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    /// Handed over (the core will see them after everything handed before).
    Taken,
    /// The core cannot take them now (its queue is full): they come back,
    /// to be offered again, in order, before anything later for that core.
    Full(Vec<Completion>),
    /// The core has stopped: nothing for it will ever be taken (dropped).
    Gone,
}

/// Where the writer thread hands completions: one call per origin core with
/// that core's completions in op order. It must not block: a core that cannot
/// take them now answers [`Offered::Full`] and the writer retries later.
pub trait CompletionSink: Send {
    /// Offers `completions` (all of origin `core`, in op order).
    fn offer(&mut self, core: CoreId, completions: Vec<Completion>) -> Offered;
}

/// A plain function always takes what it is given (tests, benchmarks, fuzzing).
impl<F: Fn(CoreId, Vec<Completion>) + Send> CompletionSink for F {
    fn offer(&mut self, core: CoreId, completions: Vec<Completion>) -> Offered {
        self(core, completions);
        Offered::Taken
    }
}

impl WriteOp {
    /// The core this op's completion goes to.
    pub fn origin(&self) -> CoreId {
        match self {
            Self::Message { origin, .. }
            | Self::Membership { origin, .. }
            | Self::LastSeen { origin, .. }
            | Self::Cursor { origin, .. }
            | Self::Amend { origin, .. }
            | Self::Receipt { origin, .. } => *origin,
        }
    }

    /// Bytes of message text this op carries (its weight against
    /// [`MAX_TEXT_BYTES_PER_COMMIT`]).
    fn text_bytes(&self) -> usize {
        match self {
            Self::Message { msg, .. } => msg.text.len(),
            Self::Amend { msg, rewrites, .. } => {
                msg.text.len() + rewrites.iter().map(|m| m.text.len()).sum::<usize>()
            }
            Self::Membership { .. } | Self::LastSeen { .. } | Self::Cursor { .. } | Self::Receipt { .. } => 0,
        }
    }

    /// What the origin core is told once this op is durable (`None`: nothing).
    fn completion(&self) -> Option<Completion> {
        match self {
            Self::Message { msg, .. } | Self::Amend { msg, .. } => Some(Completion::Message {
                chat: msg.chat,
                seq: msg.seq,
            }),
            Self::Membership { ticket, .. } => Some(Completion::Membership { ticket: *ticket }),
            Self::LastSeen { .. } | Self::Cursor { .. } | Self::Receipt { .. } => None,
        }
    }
}

/// How the writer hands completions back: `deliver(core, completions)`.
type Deliver = Box<dyn Fn(CoreId, Vec<Completion>) + Send>;

/// Called on the writer thread with every committed batch of ops, after its
/// `fdatasync` and before the completions go out (the push thread's feed:
/// `crate::push`). It must not block: it hands a summary to a bounded queue.
pub type CommitObserver = Box<dyn FnMut(&[WriteOp]) + Send>;

/// The writer thread's owner: stops it with [`Writer::shutdown`]. Dropping it
/// without that also makes the thread commit what is queued and end, but
/// nobody waits for it.
#[derive(Debug)]
pub struct Writer {
    thread: JoinHandle<()>,
    stop: Sender<()>,
}

/// A core's handle to the writer's queue. Cheap to clone; each core holds one.
#[derive(Debug, Clone)]
pub struct WriterSender {
    tx: Sender<WriteOp>,
}

impl WriterSender {
    /// Queues `op` for the next commit. Never blocks: a core must not stall on
    /// the writer.
    ///
    /// # Errors
    /// Gives the op back when the queue is full (retry on a later turn, in
    /// order) or the writer has stopped.
    // A refused op goes back to the caller by value, as it came: boxing it would cost every
    // message an allocation to save a move on the rare full queue.
    #[allow(clippy::result_large_err)]
    pub fn try_send(&self, op: WriteOp) -> Result<(), WriteOp> {
        self.tx.try_send(op).map_err(TrySendError::into_inner)
    }

    /// Queues `op`, waiting while the queue is full. Only for a core leaving
    /// its loop at shutdown (its last `last_seen` writes): safe because the
    /// writer never waits on a core.
    ///
    /// # Errors
    /// Gives the op back when the writer has stopped.
    // A refused op goes back to the caller by value, as it came: boxing it would cost every
    // message an allocation to save a move on the rare full queue.
    #[allow(clippy::result_large_err)]
    pub fn send_blocking(&self, op: WriteOp) -> Result<(), WriteOp> {
        self.tx.send(op).map_err(|e| e.into_inner())
    }

    /// Ops queued and not yet taken by the writer.
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    /// True when no op is queued.
    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }
}

impl Writer {
    /// Starts the writer thread over `store`. `deliver(core, completions)` is
    /// called from the writer thread after each durable commit, once per origin
    /// core with ops in that commit, completions in op order. It must not block
    /// for long: the next commit waits for it.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn start(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        deliver: Box<dyn Fn(CoreId, Vec<Completion>) + Send>,
    ) -> std::io::Result<(Writer, WriterSender)> {
        Self::start_with_capacity(store, metrics, deliver, CHANNEL_CAPACITY)
    }

    /// [`Writer::start`] with a queue of `capacity` ops (tests use tiny ones).
    pub(crate) fn start_with_capacity(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        deliver: Deliver,
        capacity: usize,
    ) -> std::io::Result<(Writer, WriterSender)> {
        Self::start_with_sink(store, metrics, Box::new(deliver), capacity)
    }

    /// Starts the writer thread with a queue of `capacity` ops, handing
    /// completions to `sink`, which may refuse them for a while (a full core
    /// queue): see the module docs.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn start_with_sink(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        sink: Box<dyn CompletionSink>,
        capacity: usize,
    ) -> std::io::Result<(Writer, WriterSender)> {
        Self::start_observed(store, metrics, sink, capacity, None)
    }

    /// [`Writer::start_with_sink`], also showing every committed batch to
    /// `observer` ([`CommitObserver`]).
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn start_observed(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        sink: Box<dyn CompletionSink>,
        capacity: usize,
        observer: Option<CommitObserver>,
    ) -> std::io::Result<(Writer, WriterSender)> {
        let (tx, ops) = crossbeam_channel::bounded(capacity);
        let (stop, stop_rx) = crossbeam_channel::bounded(1);
        let journal =
            engine::JournalGuard::new(store.dir().to_owned(), store.engine_settings().journal_limit);
        let thread = std::thread::Builder::new()
            .name(WRITER_THREAD.into())
            .spawn(move || {
                WriterThread {
                    store,
                    metrics,
                    sink,
                    observer,
                    ops,
                    stop: stop_rx,
                    per_core: Vec::new(),
                    held: 0,
                    journal,
                }
                .run();
            })?;
        Ok((Writer { thread, stop }, WriterSender { tx }))
    }

    /// True once the writer thread has ended. Before [`Writer::shutdown`] that
    /// means it died: nothing more will be committed or acknowledged.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stops the writer after committing (and delivering) everything already
    /// queued. Call it once the cores have stopped sending.
    ///
    /// # Errors
    /// [`StoreError::WriterPanicked`] when the thread died of a panic (in
    /// `deliver`); whatever it had committed stays committed.
    pub fn shutdown(self) -> Result<(), StoreError> {
        // A send error means the thread is gone already; join tells how.
        let _ = self.stop.send(());
        self.thread.join().map_err(|_| StoreError::WriterPanicked)
    }
}

/// The writer thread's state.
struct WriterThread {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    sink: Box<dyn CompletionSink>,
    observer: Option<CommitObserver>,
    ops: Receiver<WriteOp>,
    stop: Receiver<()>,
    /// Completions committed and not yet taken by their core, indexed by
    /// origin core, in op order; empty once handed over.
    per_core: Vec<Vec<Completion>>,
    /// How many entries of `per_core` are non-empty after a hand-over (0: the
    /// writer may block waiting for ops).
    held: usize,
    /// The journal bound (`--journal-limit`), measured every
    /// [`engine::CHECK_INTERVAL`] of a busy writer.
    journal: engine::JournalGuard,
}

impl WriterThread {
    fn run(mut self) {
        let mut batch_ops = Vec::with_capacity(MAX_OPS_PER_COMMIT);
        let mut stopping = false;
        let mut last_space_check = Instant::now();
        let mut last_journal_check = Instant::now();
        // What the start replayed into memtables shows before the first write.
        self.metrics.store.observe_journal(
            engine::journal_bytes(self.store.dir()).unwrap_or(0),
            0,
            self.store.write_buffer_bytes(),
        );
        loop {
            if !stopping {
                // With completions held for a full core, wake up to offer them
                // again even if no op arrives; with a free-space reserve, wake up
                // to re-check it (sends are refused while it is low, so no op
                // may come to wake the writer when space is freed).
                let retry = if self.held > 0 {
                    crossbeam_channel::after(HANDOVER_RETRY)
                } else if self.store.space().reserve() > 0 {
                    crossbeam_channel::after(space::CHECK_INTERVAL)
                } else {
                    crossbeam_channel::never()
                };
                crossbeam_channel::select! {
                    recv(self.ops) -> op => match op {
                        Ok(op) => batch_ops.push(op),
                        // Every sender is gone: nothing more can come.
                        Err(_) => stopping = true,
                    },
                    recv(self.stop) -> _ => stopping = true,
                    recv(retry) -> _ => {},
                }
            }
            if last_space_check.elapsed() >= space::CHECK_INTERVAL {
                self.store.space().check();
                last_space_check = Instant::now();
            }
            if last_journal_check.elapsed() >= engine::CHECK_INTERVAL {
                let bytes = self.journal.check(&self.store);
                self.metrics.store.observe_journal(
                    bytes,
                    self.journal.seals(),
                    self.store.write_buffer_bytes(),
                );
                self.metrics.store.observe_lsm(self.store.lsm_state());
                last_journal_check = Instant::now();
            }
            self.drain(&mut batch_ops);
            if !batch_ops.is_empty() {
                self.commit(&mut batch_ops);
            }
            self.hand_over();
            if stopping && batch_ops.is_empty() && self.ops.is_empty() {
                // Completions still refused by a core are dropped: at shutdown
                // the cores have stopped and nobody waits for them.
                return;
            }
        }
    }

    /// Offers every core its held completions; what a full core refuses stays,
    /// in order, in front of whatever comes for it later.
    fn hand_over(&mut self) {
        let mut held = 0;
        for (core, list) in self.per_core.iter_mut().enumerate() {
            if list.is_empty() {
                continue;
            }
            match self.sink.offer(CoreId(core), std::mem::take(list)) {
                Offered::Taken | Offered::Gone => {}
                Offered::Full(back) => {
                    *list = back;
                    held += 1;
                }
            }
        }
        self.held = held;
    }

    /// Takes queued ops into `batch_ops` until the queue is empty or a budget is
    /// reached (what is left waits for the next round; nothing is dropped).
    fn drain(&self, batch_ops: &mut Vec<WriteOp>) {
        let mut text: usize = batch_ops.iter().map(WriteOp::text_bytes).sum();
        while batch_ops.len() < MAX_OPS_PER_COMMIT && text < MAX_TEXT_BYTES_PER_COMMIT {
            match self.ops.try_recv() {
                Ok(op) => {
                    text += op.text_bytes();
                    batch_ops.push(op);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
    }

    /// Writes `batch_ops` as one durable batch, then queues their completions
    /// per origin core (behind any still held) for [`WriterThread::hand_over`].
    /// Exits the process if the commit fails.
    fn commit(&mut self, batch_ops: &mut Vec<WriteOp>) {
        let started = Instant::now();
        // On failure this exits the process (the poison rule): nothing below runs.
        self.store.commit_writes(batch_ops);
        self.metrics
            .store
            .observe_commit(started.elapsed(), batch_ops.len() as u64);
        if let Some(observe) = self.observer.as_mut() {
            observe(batch_ops);
        }
        for op in batch_ops.drain(..) {
            let core = op.origin().0;
            if self.per_core.len() <= core {
                self.per_core.resize_with(core + 1, Vec::new);
            }
            if let (Some(list), Some(completion)) = (self.per_core.get_mut(core), op.completion()) {
                list.push(completion);
            }
        }
    }
}

impl Store {
    /// Writes `ops` as **one** fjall batch with [`PersistMode::SyncData`]: a
    /// message becomes its `messages` row plus its `dedupe` row, a membership
    /// change its `members` and `user_chats` rows (inserted or removed), a
    /// last-seen time its `last_seen` row, all in op order; returns once the
    /// batch is in the journal and `fdatasync`ed.
    ///
    /// This is the writer thread's commit step; cores never call it (they queue
    /// through [`WriterSender`]). It is public for the store-commit benchmark.
    ///
    /// A failed commit does not return: the poison rule marks the store
    /// poisoned, logs, and exits the process with [`POISON_EXIT_CODE`].
    pub fn commit_writes(&self, ops: &[WriteOp]) {
        let mut batch = OwnedWriteBatch::with_capacity(self.db.clone(), ops.len() * 2)
            .durability(Some(PersistMode::SyncData));
        let joined_ms = now_ms();
        for op in ops {
            match op {
                WriteOp::Message { msg, .. } => {
                    batch.insert(
                        &self.messages,
                        keys::pair(msg.chat.0, msg.seq.0),
                        msg.encode_value(),
                    );
                    batch.insert(
                        &self.dedupe,
                        keys::triple(msg.chat.0, msg.sender.0, msg.client_msg_id.0),
                        keys::pair(msg.seq.0, msg.server_ts_ms),
                    );
                }
                WriteOp::Amend { msg, rewrites, .. } => {
                    for m in rewrites {
                        batch.insert(&self.messages, keys::pair(m.chat.0, m.seq.0), m.encode_value());
                    }
                    batch.insert(
                        &self.messages,
                        keys::pair(msg.chat.0, msg.seq.0),
                        msg.encode_value(),
                    );
                    batch.insert(
                        &self.dedupe,
                        keys::triple(msg.chat.0, msg.sender.0, msg.client_msg_id.0),
                        keys::pair(msg.seq.0, msg.server_ts_ms),
                    );
                }
                WriteOp::Receipt {
                    chat,
                    user,
                    delivered,
                    ..
                } => {
                    batch.insert(&self.receipts, keys::pair(chat.0, user.0), keys::id(delivered.0));
                }
                WriteOp::Membership {
                    chat,
                    user,
                    add: true,
                    ..
                } => {
                    batch.insert(
                        &self.members,
                        keys::pair(chat.0, user.0),
                        encode_member(joined_ms),
                    );
                    batch.insert(&self.user_chats, keys::pair(user.0, chat.0), []);
                }
                WriteOp::Membership {
                    chat,
                    user,
                    add: false,
                    new_owner,
                    ..
                } => {
                    batch.remove(&self.members, keys::pair(chat.0, user.0));
                    batch.remove(&self.user_chats, keys::pair(user.0, chat.0));
                    if let Some(owner) = new_owner {
                        self.batch_owner_change(&mut batch, *chat, *owner);
                    }
                }
                WriteOp::LastSeen {
                    user, last_seen_ms, ..
                } => {
                    batch.insert(&self.last_seen, keys::id(user.0), keys::id(*last_seen_ms));
                }
                WriteOp::Cursor {
                    device, chat, seq, ..
                } => {
                    batch.insert(&self.cursors, keys::pair(device.0, chat.0), keys::id(seq.0));
                }
            }
        }
        self.commit(batch, "group commit");
    }

    /// Adds to `batch` the chat record of `chat` with `owner` as its owner. The
    /// record is read from the store: only its owner ever changes after
    /// creation, and the owner core sends a chat's owner changes in order, so
    /// if one batch holds two of them the later insert wins, as it should.
    fn batch_owner_change(&self, batch: &mut OwnedWriteBatch, chat: ChatId, owner: UserId) {
        let record = match self.chats.get(keys::id(chat.0)) {
            Ok(Some(value)) => ChatRecord::decode(&value),
            Ok(None) => None,
            // The store cannot read what it must rewrite: as for a failed write.
            Err(error) => self.fail_stop("group commit (reading a chat record)", &error),
        };
        match record {
            Some(mut record) => {
                record.owner = owner;
                batch.insert(&self.chats, keys::id(chat.0), record.encode());
            }
            // The owner core loaded this chat from that record; only corruption gets here.
            None => {
                tracing::error!(%chat, %owner, "owner change of a chat whose record is missing or corrupt")
            }
        }
    }
}

/// The writer's commit step for one op, run by the caller: commits `op`
/// durably through [`Store::commit_writes`] and returns the core it came from
/// and its completion, if it has one. For tests that drive the sans-IO core
/// without the writer thread (and want each write on disk before its completion).
#[cfg(test)]
pub(crate) fn apply_for_test(store: &Store, op: WriteOp) -> (CoreId, Option<Completion>) {
    store.commit_writes(std::slice::from_ref(&op));
    (op.origin(), op.completion())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
