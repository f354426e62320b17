//! Message search (issue 16): a full-text index of every chat's messages,
//! fed off the message path, queried by the side-port.
//!
//! * `analyzer.rs` — the text analysis (words, CJK bigrams, lower-casing,
//!   ASCII folding), shared by indexing and queries.
//! * `index.rs` — the tantivy index in `--data-dir/search/`, its schema, and
//!   the durable watermark in each commit's payload.
//! * `indexer.rs` — the indexer thread: catches up from the store at start,
//!   then follows the commits the storage writer reports.
//! * `query.rs` — query parsing, the membership filter, the time budget,
//!   snippets.
//! * `metrics.rs` — the `natter_search_*` series.
//!
//! # The seam with the message path
//! The storage writer shows every committed batch to a
//! [`crate::store::writer::CommitObserver`] after its `fdatasync`; natterd's
//! observer hands [`SearchHandle::committed`] the `(chat, seq)` of each
//! message record (text, edit or delete) in it. That is a `try_send` into a
//! bounded queue and never blocks: when the queue is full the batch is
//! dropped and a flag set, and the indexer catches up from the store instead
//! (nothing is lost, only found a moment later). The indexer reads the texts
//! from the store itself, so the queue holds ids, never texts.
//!
//! # Exactly the stored messages
//! Each chat's seqs are gapless and edits and deletes are records with their
//! own seq, so "the highest seq applied per chat" is a complete watermark:
//! applying the record at a seq means putting the current stored state of the
//! message it concerns (a text, or an edit's or delete's target) into the
//! index, deleting the document's key first. Replaying a record is harmless,
//! so the watermark may lag the index, never lead it: it is written in the
//! payload of the very tantivy commit that makes the documents durable.

mod analyzer;
mod index;
mod indexer;
mod metrics;
mod query;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError};
use tantivy::{IndexReader, ReloadPolicy};

pub use analyzer::{ANALYZER, MAX_TOKEN_BYTES, analyzer, is_cjk};
pub use index::{INDEX_DIR, SCHEMA_VERSION, Watermark};
pub use indexer::{CATCH_UP_PAGE, COMMIT_DOCS, COMMIT_INTERVAL, EVENTS_PER_TURN, INDEXER_NICE, reindex};
pub use metrics::SearchMetrics;
pub use query::{
    DEFAULT_LIMIT, FIRST_WINDOW_DOCS, Hit, MAX_LIMIT, MAX_QUERY_BYTES, MAX_QUERY_TERMS, QUERY_BUDGET,
    QueryError, SNIPPET_CHARS, SearchRequest, SearchResults, SortOrder, WINDOW_GROWTH, parse,
};

use crate::core::WriteOp;
use crate::ids::{ChatId, Seq};
use crate::store::Store;

/// Commit batches the indexer's queue holds. Each is the `(chat, seq)` list of
/// one group commit (16 bytes a record); when full, batches are dropped and
/// the indexer catches up from the store.
pub const EVENT_QUEUE_CAPACITY: usize = 4096;

/// Records the indexer's queue holds at most, whatever the batches' sizes
/// (16 bytes each: 16 MiB). Past it, batches are dropped as when the queue is
/// full, and the indexer catches up from the store: a lagging index costs
/// store reads later, not memory now (without it a lag of 3.5 M records held
/// 56 MB and more in the queue).
pub const MAX_QUEUED_RECORDS: usize = 1 << 20;

/// Why search failed (none of these is the message path's business: it never
/// waits for search).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    /// The caller's query is malformed or too big (400).
    #[error("{0}")]
    Query(QueryError),
    /// Internal: tantivy failed (I/O under the index, a damaged segment).
    #[error("search index: {0}")]
    Index(String),
    /// Internal: the index directory could not be created or cleared.
    #[error("search index directory: {0}")]
    Io(String),
    /// The store could not be read.
    #[error("store: {0}")]
    Store(String),
}

/// The index as queries see it: shared by the side-port's workers; the
/// indexer reloads the reader after each commit.
pub struct SearchIndex {
    reader: IndexReader,
    fields: index::Fields,
    /// The `natter_search_*` counters.
    pub metrics: Arc<SearchMetrics>,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex").finish_non_exhaustive()
    }
}

/// One batch of committed message records.
#[derive(Debug)]
enum Event {
    /// The `(chat, seq)` of each message record of one group commit, and when
    /// it was observed (ms since the Unix epoch).
    Committed(Vec<(ChatId, Seq)>),
    /// Commit what is applied and stop.
    Stop,
}

/// What the storage writer's observer calls; cheap to clone.
#[derive(Clone, Debug)]
pub struct SearchHandle {
    events: Sender<Event>,
    overflow: Arc<AtomicBool>,
    /// Records in `events` (the indexer subtracts what it takes).
    queued: Arc<AtomicUsize>,
    metrics: Arc<SearchMetrics>,
}

impl SearchHandle {
    /// The writer's [`crate::store::writer::CommitObserver`]: the message
    /// records of one committed batch. Never blocks.
    pub fn committed(&self, ops: &[WriteOp]) {
        let mut records: Vec<(ChatId, Seq)> = Vec::with_capacity(ops.len());
        records.extend(ops.iter().filter_map(|op| match op {
            WriteOp::Message { msg, .. } | WriteOp::Amend { msg, .. } => Some((msg.chat, msg.seq)),
            WriteOp::Receipt { .. }
            | WriteOp::Membership { .. }
            | WriteOp::LastSeen { .. }
            | WriteOp::Cursor { .. } => None,
        }));
        if records.is_empty() {
            return;
        }
        let n = records.len();
        let queued = if self.queued.fetch_add(n, Ordering::Relaxed) + n > MAX_QUEUED_RECORDS {
            false
        } else {
            match self.events.try_send(Event::Committed(records)) {
                Ok(()) => {
                    self.metrics.observed.fetch_add(n as u64, Ordering::Relaxed);
                    true
                }
                Err(TrySendError::Disconnected(_) | TrySendError::Full(_)) => false,
            }
        };
        if !queued {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            // Still owed to the index: counted in the lag until a catch-up
            // has indexed them.
            self.metrics.observed.fetch_add(n as u64, Ordering::Relaxed);
            self.metrics.dropped.fetch_add(n as u64, Ordering::Relaxed);
            if !self.overflow.swap(true, Ordering::Relaxed) {
                tracing::warn!("search queue full: the indexer catches up from the store once it drains");
            }
        }
        let _ = self.metrics.lag_since_ms.compare_exchange(
            0,
            metrics::now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

/// The running indexer thread.
#[derive(Debug)]
pub struct SearchService {
    handle: SearchHandle,
    /// Set by [`SearchService::shutdown`]; the indexer checks it between
    /// pages, so a stop never waits for a lagging index to catch up.
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SearchService {
    /// Stops the indexer after it has done everything owed so far (its
    /// start's catch-up and every queued record), committed: for
    /// `natterd reindex`, whose whole point is that work.
    pub fn finish(mut self) {
        let _ = self.handle.events.send(Event::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Commits what the indexer applied and stops it (what it had not read
    /// yet is found again from the store at the next start).
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Only a wake-up: with the queue full the indexer is busy and sees the
        // flag at its next page.
        let _ = self.handle.events.try_send(Event::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Opens (or creates) the index under `data_dir` and starts the indexer
/// thread, which first catches up from `store`. Returns the thread, the
/// handle for the writer's observer and the index for queries.
///
/// # Errors
/// The index cannot be opened or the thread cannot start.
pub fn start(
    data_dir: &Path,
    store: Arc<Store>,
    metrics: Arc<SearchMetrics>,
) -> Result<(SearchService, SearchHandle, Arc<SearchIndex>), SearchError> {
    let (index, fields, watermark) = index::open(data_dir)?;
    let reader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()
        .map_err(|e: tantivy::TantivyError| SearchError::Index(e.to_string()))?;
    let search = Arc::new(SearchIndex {
        reader,
        fields,
        metrics: metrics.clone(),
    });
    let (tx, rx) = crossbeam_channel::bounded(EVENT_QUEUE_CAPACITY);
    let handle = SearchHandle {
        events: tx,
        overflow: Arc::new(AtomicBool::new(false)),
        queued: Arc::new(AtomicUsize::new(0)),
        metrics: metrics.clone(),
    };
    let writer = index::writer(&index)?;
    let stop = Arc::new(AtomicBool::new(false));
    let indexer = indexer::Indexer::new(
        writer,
        data_dir.join(INDEX_DIR),
        watermark,
        store,
        search.clone(),
        indexer::Inbox {
            events: rx,
            overflow: handle.overflow.clone(),
            queued: handle.queued.clone(),
            stop: stop.clone(),
        },
    );
    let thread = std::thread::Builder::new()
        .name("natter-search".into())
        .spawn(move || indexer.run())
        .map_err(|e| SearchError::Io(e.to_string()))?;
    Ok((
        SearchService {
            handle: handle.clone(),
            stop,
            thread: Some(thread),
        },
        handle,
        search,
    ))
}
