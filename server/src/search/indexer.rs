//! The indexer thread: applies committed message records to the index in
//! batches and commits at most every [`COMMIT_INTERVAL`], with the watermark
//! in the commit's payload. At start (and after its queue overflowed, or a
//! failed index write) it catches up from the store: every chat whose last
//! seq is above its watermark is read from the watermark on.
//!
//! Applying `(chat, seq)` reads the records `(watermark, seq]` of the chat
//! from the store and, for each, puts the current state of the message it
//! concerns into the index ([`super::index::upsert`]): a text itself, an
//! edit's or delete's target. So the live path and the catch-up are the same
//! code, and both converge to what the store holds.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tantivy::IndexWriter;

use super::index::{self, Fields, Watermark, upsert};
use super::{Event, SearchError, SearchIndex, SearchMetrics};
use crate::core::MessageKind;
use crate::ids::{ChatId, Seq};
use crate::store::Store;

/// Longest a committed message waits before it is searchable (plus the time
/// of one commit): frequent enough to feel live, rare enough that a commit
/// (one new segment, an fsync) costs little at 20,000 messages a second.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(500);

/// Records applied before a commit comes early: bounds the work a kill -9
/// throws away and the writer's buffer.
pub const COMMIT_DOCS: usize = 100_000;

/// Text bytes added since the last commit at which a commit comes early:
/// tantivy queues added documents (a copy of each text) by count, not size, so
/// without this bound a batch of 100,000-character messages would hold
/// hundreds of MB until it is indexed; the commit waits until it is.
pub(super) const COMMIT_TEXT_BYTES: usize = 16 << 20;

/// Queue events taken per turn before the batch is applied: bounds the
/// in-memory map of what to apply.
pub const EVENTS_PER_TURN: usize = 1024;

/// Records read from the store per range read (catch-up and live).
pub const CATCH_UP_PAGE: usize = 512;

/// Text bytes read from the store per range read (past it the page ends; at
/// least one record is read): 512 maximum-size messages would be ~200 MB.
pub(super) const CATCH_UP_PAGE_BYTES: usize = 4 << 20;

/// Chat ids read per page when the catch-up enumerates the chats.
const CHAT_PAGE: usize = 1024;

/// The indexer thread's nice value (0 is the event loops'): under CPU
/// saturation the scheduler gives the message path precedence and the index
/// lags (visible in `natter_search_lag_*`) and catches up when load drops.
pub const INDEXER_NICE: i32 = 10;

/// Pause after a failed turn before the next try (a full disk under the
/// index, a store read error): the message path is unaffected meanwhile.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The indexer's state (module docs).
pub(super) struct Indexer {
    writer: IndexWriter,
    /// The index directory (for its size on `/metrics`).
    dir: std::path::PathBuf,
    fields: Fields,
    /// What is applied (possibly not yet committed).
    applied: Watermark,
    /// What the last commit made durable.
    durable: Watermark,
    store: Arc<Store>,
    search: Arc<SearchIndex>,
    events: Receiver<Event>,
    overflow: Arc<AtomicBool>,
    /// Records in `events` ([`super::MAX_QUEUED_RECORDS`]).
    queued: Arc<AtomicUsize>,
    /// natterd is stopping: commit what is applied and return, leaving the
    /// rest to the next start's catch-up.
    stop: Arc<AtomicBool>,
    /// Records applied since the last commit.
    dirty: usize,
    /// Text bytes of the documents added since the last commit.
    dirty_bytes: usize,
    /// Observed records (from the queue) applied since the last commit.
    dirty_observed: u64,
    /// When the first record since the last commit was applied.
    dirty_since: Option<Instant>,
    /// Observed records dropped or abandoned while a catch-up was owed: the
    /// catch-up covers them, and counts them committed with its commit.
    owed_observed: u64,
    /// A catch-up from the store is owed (start, overflow, failure).
    catch_up: bool,
}

/// How the rest of natterd reaches the indexer thread.
pub(super) struct Inbox {
    /// Committed records, and the wake-up at stop.
    pub events: Receiver<Event>,
    /// Set by the observer when `events` was full (a catch-up is owed).
    pub overflow: Arc<AtomicBool>,
    /// Records in `events`, which the indexer subtracts as it takes them.
    pub queued: Arc<AtomicUsize>,
    /// Set at shutdown.
    pub stop: Arc<AtomicBool>,
}

impl Indexer {
    pub(super) fn new(
        writer: IndexWriter,
        dir: std::path::PathBuf,
        watermark: Watermark,
        store: Arc<Store>,
        search: Arc<SearchIndex>,
        inbox: Inbox,
    ) -> Self {
        let Inbox {
            events,
            overflow,
            queued,
            stop,
        } = inbox;
        Self {
            writer,
            dir,
            fields: search.fields,
            applied: watermark.clone(),
            durable: watermark,
            store,
            search,
            events,
            overflow,
            queued,
            stop,
            dirty: 0,
            dirty_bytes: 0,
            dirty_observed: 0,
            dirty_since: None,
            owed_observed: 0,
            catch_up: true,
        }
    }

    fn metrics(&self) -> &SearchMetrics {
        &self.search.metrics
    }

    /// The thread's body: until [`Event::Stop`] or the queue's senders are gone.
    pub(super) fn run(mut self) {
        // Per thread on Linux: PRIO_PROCESS with this thread's id.
        if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), INDEXER_NICE) {
            tracing::warn!(error = %e, "could not lower the search indexer's priority");
        }
        let mut retry_at: Option<Instant> = None;
        loop {
            if self.stopping() {
                return self.finish();
            }
            let now = Instant::now();
            if self.overflow.swap(false, Ordering::Relaxed) {
                self.catch_up = true;
            }
            if self.catch_up && retry_at.is_none_or(|t| now >= t) {
                match self.catch_up_all() {
                    Ok(()) => {
                        self.catch_up = false;
                        retry_at = None;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "search catch-up failed; retrying");
                        self.abandon();
                        retry_at = Some(Instant::now() + RETRY_AFTER);
                    }
                }
            }
            if self.stopping() {
                return self.finish();
            }
            let timeout = match (self.dirty_since, retry_at) {
                (Some(since), _) => COMMIT_INTERVAL.saturating_sub(since.elapsed()),
                (None, Some(t)) => t.saturating_duration_since(Instant::now()),
                (None, None) => Duration::from_secs(3600),
            };
            let mut batch: HashMap<ChatId, Seq> = HashMap::new();
            let mut observed = 0u64;
            let mut stop = false;
            match self.events.recv_timeout(timeout) {
                Ok(Event::Committed(records)) => {
                    observed += self.take(&mut batch, records);
                    for _ in 1..EVENTS_PER_TURN {
                        match self.events.try_recv() {
                            Ok(Event::Committed(records)) => observed += self.take(&mut batch, records),
                            Ok(Event::Stop) => {
                                stop = true;
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
                Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => stop = true,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if self.stopping() {
                return self.finish();
            }
            if self.catch_up {
                self.owed_observed += observed;
            } else {
                let mut failed = None;
                for (chat, upto) in batch {
                    if let Err(e) = self.apply_chat(chat, upto) {
                        failed = Some(e);
                        break;
                    }
                }
                self.dirty_observed += observed;
                match failed {
                    // Nothing applied since the last commit: the records were
                    // already in it (a catch-up read them first).
                    None if self.dirty_since.is_none() => {
                        let covered = std::mem::take(&mut self.dirty_observed);
                        self.metrics().committed.fetch_add(covered, Ordering::Relaxed);
                    }
                    None => {}
                    Some(e) => {
                        tracing::error!(error = %e, "search indexing failed; catching up from the store");
                        self.abandon();
                        self.catch_up = true;
                        retry_at = Some(Instant::now() + RETRY_AFTER);
                    }
                }
            }
            // While a catch-up is owed, queued batches are dropped: it reads
            // everything they name from the store.
            let due = self
                .dirty_since
                .is_some_and(|since| since.elapsed() >= COMMIT_INTERVAL || self.full());
            if (due || stop)
                && self.dirty_since.is_some()
                && let Err(e) = self.commit()
            {
                tracing::error!(error = %e, "search index commit failed; catching up from the store");
                self.abandon();
                self.catch_up = true;
                retry_at = Some(Instant::now() + RETRY_AFTER);
            }
            if stop {
                return;
            }
        }
    }

    /// Takes one queued batch into `batch` (see [`merge`]).
    fn take(&self, batch: &mut HashMap<ChatId, Seq>, records: Vec<(ChatId, Seq)>) -> u64 {
        self.queued.fetch_sub(records.len(), Ordering::Relaxed);
        merge(batch, records)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// At stop: commits what is applied (the next start catches up the rest).
    fn finish(&mut self) {
        if self.dirty_since.is_some()
            && let Err(e) = self.commit()
        {
            tracing::error!(error = %e, "search index commit at stop failed; the next start catches up");
        }
    }

    /// Whether what was applied since the last commit is past a bound
    /// ([`COMMIT_DOCS`], [`COMMIT_TEXT_BYTES`]), so it commits now.
    fn full(&self) -> bool {
        self.dirty >= COMMIT_DOCS || self.dirty_bytes >= COMMIT_TEXT_BYTES
    }

    /// Applies the records of `chat` above its watermark up to `upto`.
    fn apply_chat(&mut self, chat: ChatId, upto: Seq) -> Result<(), SearchError> {
        let mut after = self.applied.get(chat);
        while after < upto.0 && !self.stopping() {
            let page = self
                .store
                .messages_page(
                    chat,
                    Seq(after),
                    CATCH_UP_PAGE.min(usize::try_from(upto.0 - after).unwrap_or(CATCH_UP_PAGE)),
                    CATCH_UP_PAGE_BYTES,
                )
                .map_err(|e| SearchError::Store(e.to_string()))?;
            let Some(last) = page.last().map(|m| m.seq.0) else {
                break;
            };
            for record in page {
                match record.meta.kind {
                    MessageKind::Text => {
                        if upsert(&self.writer, &self.fields, &record, false)? {
                            self.dirty_bytes += record.text.len();
                            self.metrics().indexed_docs.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    MessageKind::Edit | MessageKind::Delete => {
                        let target = self
                            .store
                            .message(chat, record.meta.target)
                            .map_err(|e| SearchError::Store(e.to_string()))?;
                        if let Some(target) = target
                            && upsert(&self.writer, &self.fields, &target, true)?
                        {
                            self.dirty_bytes += target.text.len();
                            self.metrics().indexed_docs.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                self.dirty += 1;
                self.dirty_since.get_or_insert_with(Instant::now);
            }
            after = last;
            self.applied.chats.insert(chat, after);
            if self.full() {
                self.commit()?;
            }
        }
        Ok(())
    }

    /// Applies every chat of the store from its watermark to its last seq.
    fn catch_up_all(&mut self) -> Result<(), SearchError> {
        self.metrics().catch_ups.fetch_add(1, Ordering::Relaxed);
        // Dropped before this point means committed before the reads below.
        self.owed_observed += self.metrics().dropped.swap(0, Ordering::Relaxed);
        let started = Instant::now();
        let mut after = ChatId(0);
        let mut applied = 0usize;
        loop {
            let chats = self
                .store
                .chat_ids_after(after, CHAT_PAGE)
                .map_err(|e| SearchError::Store(e.to_string()))?;
            let Some(&last) = chats.last() else { break };
            for chat in chats {
                if self.stopping() {
                    return Ok(());
                }
                let last_seq = self
                    .store
                    .last_seq(chat)
                    .map_err(|e| SearchError::Store(e.to_string()))?;
                let before = self.dirty;
                self.apply_chat(chat, last_seq)?;
                applied += self.dirty.saturating_sub(before);
            }
            after = last;
        }
        self.dirty_observed += std::mem::take(&mut self.owed_observed);
        if self.dirty_since.is_some() {
            self.commit()?;
        } else {
            let covered = std::mem::take(&mut self.dirty_observed);
            self.metrics().committed.fetch_add(covered, Ordering::Relaxed);
            let docs = self.search.reader.searcher().num_docs();
            self.metrics().docs.store(docs, Ordering::Relaxed);
        }
        tracing::info!(
            records = applied,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "search index caught up with the store"
        );
        Ok(())
    }

    /// Makes what is applied durable, with the watermark as payload, and
    /// shows it to queries.
    fn commit(&mut self) -> Result<(), SearchError> {
        let started = Instant::now();
        let mut prepared = self
            .writer
            .prepare_commit()
            .map_err(|e| SearchError::Index(e.to_string()))?;
        prepared.set_payload(&self.applied.encode());
        prepared.commit().map_err(|e| SearchError::Index(e.to_string()))?;
        self.durable = self.applied.clone();
        // Queries see the new generation before the lag says it is there.
        self.search
            .reader
            .reload()
            .map_err(|e| SearchError::Index(e.to_string()))?;
        let metrics = self.search.metrics.clone();
        metrics
            .docs
            .store(self.search.reader.searcher().num_docs(), Ordering::Relaxed);
        metrics.index_bytes.store(dir_bytes(&self.dir), Ordering::Relaxed);
        metrics.observe_commit(started.elapsed());
        metrics
            .committed
            .fetch_add(self.dirty_observed, Ordering::Relaxed);
        self.dirty = 0;
        self.dirty_bytes = 0;
        self.dirty_observed = 0;
        self.dirty_since = None;
        // Caught up when nothing is queued: the lag clock stops (the observer
        // starts it again with the next record). Otherwise it keeps running from
        // when the index first fell behind, an upper bound on the oldest
        // waiting record's age.
        if self.events.is_empty() && !self.catch_up && !self.overflow.load(Ordering::Relaxed) {
            metrics.lag_since_ms.store(0, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Throws away what was applied since the last commit (the catch-up
    /// applies it again).
    fn abandon(&mut self) {
        if let Err(e) = self.writer.rollback() {
            tracing::error!(error = %e, "search index rollback failed");
        }
        self.applied = self.durable.clone();
        self.dirty = 0;
        self.dirty_bytes = 0;
        self.owed_observed += std::mem::take(&mut self.dirty_observed);
        self.dirty_since = None;
    }
}

/// Bytes of the files directly in `dir` (the index is one flat directory);
/// 0 when it cannot be read.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(|e| e.ok()?.metadata().ok())
            .filter(std::fs::Metadata::is_file)
            .map(|m| m.len())
            .sum()
    })
}

/// Folds one commit's records into the per-chat "apply up to" map; returns
/// how many records there were.
fn merge(batch: &mut HashMap<ChatId, Seq>, records: Vec<(ChatId, Seq)>) -> u64 {
    let n = records.len() as u64;
    for (chat, seq) in records {
        let e = batch.entry(chat).or_insert(seq);
        if seq > *e {
            *e = seq;
        }
    }
    n
}

/// `natterd reindex`: deletes the index under `data_dir` and builds it again
/// from the store, then commits. natterd must not be running (the store's
/// lock refuses a second opener). Returns the documents the index holds
/// (one per stored text that is not deleted).
///
/// # Errors
/// The store or the index cannot be opened, read or written.
pub fn reindex(data_dir: &Path) -> Result<u64, SearchError> {
    let store = Arc::new(Store::open(data_dir).map_err(|e| SearchError::Store(e.to_string()))?);
    let dir = data_dir.join(index::INDEX_DIR);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| SearchError::Io(e.to_string()))?;
    }
    let metrics = Arc::new(SearchMetrics::default());
    let (service, _handle, search) = super::start(data_dir, store.clone(), metrics.clone())?;
    // The thread starts with a catch-up of everything; Stop, queued behind it,
    // commits and ends it.
    service.finish();
    let docs = metrics.docs.load(Ordering::Relaxed);
    drop(search);
    if metrics.catch_ups.load(Ordering::Relaxed) == 0 {
        return Err(SearchError::Index("the rebuild did not run".to_owned()));
    }
    Ok(docs)
}
