//! The `natter_search_*` series on `/metrics`: how far the index is behind
//! the store (messages and seconds), documents indexed, commits and their
//! latency, queries and their latency. Written by the observer (writer
//! thread), the indexer thread and the side-port (relaxed atomics), read when
//! `/metrics` is scraped.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The search counters (module docs).
#[derive(Debug, Default)]
pub struct SearchMetrics {
    /// Message records (texts, edits, deletes) committed to the store and seen
    /// by the observer.
    pub observed: AtomicU64,
    /// Of `observed`, records the observer dropped (queue full) since the
    /// indexer's last catch-up began; that catch-up covers them (they were
    /// committed before it read the store), and counts them then.
    pub dropped: AtomicU64,
    /// Of those, the ones whose effect is in a committed index generation.
    pub committed: AtomicU64,
    /// Documents added to the index (a re-add after an edit counts again).
    pub indexed_docs: AtomicU64,
    /// Documents in the index's last committed generation (one per stored,
    /// not deleted text).
    pub docs: AtomicU64,
    /// Bytes of the index's files on disk after the last commit.
    pub index_bytes: AtomicU64,
    /// Index commits.
    pub commits: AtomicU64,
    /// Total commit time, nanoseconds.
    pub commit_nanos: AtomicU64,
    /// Longest commit so far, nanoseconds.
    pub commit_max_nanos: AtomicU64,
    /// Since when (ms since the Unix epoch) the index has been behind the
    /// store without a break, 0 when it is caught up: an upper bound on the
    /// age of the oldest record not yet searchable.
    pub lag_since_ms: AtomicU64,
    /// Catch-ups from the store (start, queue overflow).
    pub catch_ups: AtomicU64,
    /// Queries answered (any outcome after validation).
    pub queries: AtomicU64,
    /// Total query time, nanoseconds.
    pub query_nanos: AtomicU64,
    /// Queries that hit the time budget and answered with what they had.
    pub query_timeouts: AtomicU64,
    /// Newest-first queries answered by one pass over the whole index (a
    /// rare word or few chats made that the cheaper plan; `query.rs`).
    pub query_whole: AtomicU64,
    /// Time windows newest-first queries visited (a query in the window plan
    /// visits one or more).
    pub query_windows: AtomicU64,
}

/// Milliseconds since the Unix epoch, never 0 for a real clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl SearchMetrics {
    /// Counts one index commit that took `elapsed`.
    pub fn observe_commit(&self, elapsed: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commit_nanos.fetch_add(nanos(elapsed), Ordering::Relaxed);
        self.commit_max_nanos.fetch_max(nanos(elapsed), Ordering::Relaxed);
    }

    /// Counts one query that took `elapsed`.
    pub fn observe_query(&self, elapsed: Duration, timed_out: bool) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.query_nanos.fetch_add(nanos(elapsed), Ordering::Relaxed);
        if timed_out {
            self.query_timeouts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records observed but not yet in a committed index generation.
    pub fn lag_messages(&self) -> u64 {
        self.observed
            .load(Ordering::Relaxed)
            .saturating_sub(self.committed.load(Ordering::Relaxed))
    }

    /// Seconds the oldest waiting record has waited (0 when none waits).
    pub fn lag_seconds(&self) -> f64 {
        match self.lag_since_ms.load(Ordering::Relaxed) {
            0 => 0.0,
            since => now_ms().saturating_sub(since) as f64 / 1000.0,
        }
    }

    /// Appends the series in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let secs = |n: &AtomicU64| n.load(Ordering::Relaxed) as f64 / 1e9;
        let counters = [
            (
                "natter_search_observed_total",
                "Message records committed to the store and handed to the indexer",
                self.observed.load(Ordering::Relaxed),
            ),
            (
                "natter_search_indexed_docs_total",
                "Documents added to the search index (re-adds after edits included)",
                self.indexed_docs.load(Ordering::Relaxed),
            ),
            (
                "natter_search_commits_total",
                "Search index commits",
                self.commits.load(Ordering::Relaxed),
            ),
            (
                "natter_search_catch_ups_total",
                "Catch-ups of the search index from the store (start, queue overflow)",
                self.catch_ups.load(Ordering::Relaxed),
            ),
            (
                "natter_search_queries_total",
                "Search queries answered",
                self.queries.load(Ordering::Relaxed),
            ),
            (
                "natter_search_query_timeouts_total",
                "Search queries cut short by the time budget",
                self.query_timeouts.load(Ordering::Relaxed),
            ),
            (
                "natter_search_query_whole_index_total",
                "Newest-first search queries answered by one pass over the whole index",
                self.query_whole.load(Ordering::Relaxed),
            ),
            (
                "natter_search_query_windows_total",
                "Time windows visited by newest-first search queries (newest back, each 4x longer)",
                self.query_windows.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}.\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let gauges = [
            (
                "natter_search_lag_messages",
                "Message records committed to the store whose effect is not yet searchable",
                self.lag_messages() as f64,
            ),
            (
                "natter_search_lag_seconds",
                "Seconds the search index has been behind the store without a break (an upper bound on the oldest waiting record's age)",
                self.lag_seconds(),
            ),
            (
                "natter_search_docs",
                "Documents in the search index (stored texts that are not deleted)",
                self.docs.load(Ordering::Relaxed) as f64,
            ),
            (
                "natter_search_index_bytes",
                "Bytes of the search index's files on disk",
                self.index_bytes.load(Ordering::Relaxed) as f64,
            ),
            (
                "natter_search_commit_seconds_max",
                "Longest search index commit",
                secs(&self.commit_max_nanos),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} gauge\n{name} {value}");
        }
        let name = "natter_search_commit_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time spent in search index commits.\n# TYPE {name} summary\n{name}_sum {}\n{name}_count {}",
            secs(&self.commit_nanos),
            self.commits.load(Ordering::Relaxed)
        );
        let name = "natter_search_query_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time spent answering search queries.\n# TYPE {name} summary\n{name}_sum {}\n{name}_count {}",
            secs(&self.query_nanos),
            self.queries.load(Ordering::Relaxed)
        );
    }
}
