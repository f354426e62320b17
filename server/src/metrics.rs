//! Process-wide counters for `/metrics` (Prometheus text format).
//!
//! Each core writes only its own [`CoreMetrics`] (relaxed atomics on a cache
//! line of its own), so counting costs the message path no shared lock; the
//! HTTP side-port reads them all when scraped.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters owned by one event-loop core.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct CoreMetrics {
    /// Open connections on this core (authenticated or not).
    pub connections: AtomicU64,
    /// Authenticated sessions on this core.
    pub sessions: AtomicU64,
    /// Connections accepted by this core's listener since start.
    pub accepted: AtomicU64,
    /// Frames received from clients.
    pub frames_in: AtomicU64,
    /// Frames written to clients.
    pub frames_out: AtomicU64,
    /// Connections closed because the peer sent a malformed or oversized frame.
    pub protocol_errors: AtomicU64,
    /// Messages this core sequenced as the chats' owner core.
    pub messages: AtomicU64,
    /// Message frames this core pushed to its sessions.
    pub deliveries: AtomicU64,
    /// Sessions closed as slow consumers.
    pub slow_consumers: AtomicU64,
    /// Connections refused: their address had too many awaiting their Hello.
    pub preauth_refused: AtomicU64,
    /// Connections awaiting their Hello closed to make room for a new one.
    pub preauth_evicted: AtomicU64,
    /// Connections accepted and closed at once for lack of a file descriptor.
    pub accept_shed: AtomicU64,
    /// Presence frames (snapshots and pushes) this core queued for its sessions.
    pub presence_pushes: AtomicU64,
    /// Users homed on this core that are online (grace periods included).
    pub online_users: AtomicU64,
    /// Event-loop turns taken (poll wake-up to the end of the turn's work).
    pub turns: AtomicU64,
    /// Turns whose work took longer than [`SLOW_TURN`]: while a turn works,
    /// every other session on the core waits, so these are the loop's stalls.
    pub slow_turns: AtomicU64,
    /// The longest turn's work since start, in microseconds.
    pub turn_max_micros: AtomicU64,
    /// The most bytes ever queued for one connection of this core since
    /// start: what a client that stops reading costs natterd at worst
    /// (bounded by the slow-consumer limit plus the frame that crossed it).
    pub outbound_peak_bytes: AtomicU64,
    /// Store reads the loop thread made itself (sync, History and token
    /// reads run on the core's reader thread and are not counted here).
    pub loop_store_reads: AtomicU64,
    /// QUIC datagrams that reached this core's socket but belong to another
    /// core's connection (the client's address changed), forwarded there.
    pub quic_forwarded: AtomicU64,
    /// QUIC Retry packets sent (address validation during a handshake flood).
    pub quic_retries: AtomicU64,
    /// QUIC connection attempts refused (too many handshakes in progress).
    pub quic_refused: AtomicU64,
    /// QUIC datagrams received on this core's socket.
    pub quic_datagrams_in: AtomicU64,
    /// QUIC datagrams dropped because the socket's send buffer was full.
    pub quic_send_dropped: AtomicU64,
    /// QUIC connections owned by this core's endpoint (handshaking, live or draining).
    pub quic_connections: AtomicU64,
}

/// A loop turn longer than this counts in `natter_loop_slow_turns_total`:
/// 2 ms, the latency budget a session's frame may wait behind others' work.
pub const SLOW_TURN: Duration = Duration::from_millis(2);

impl CoreMetrics {
    /// Counts one loop turn whose work took `elapsed`.
    pub fn observe_turn(&self, elapsed: Duration) {
        self.turns.fetch_add(1, Ordering::Relaxed);
        if elapsed > SLOW_TURN {
            self.slow_turns.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.turn_max_micros.fetch_max(micros, Ordering::Relaxed);
    }
}

/// HTTP status codes counted individually; anything else lands in "other".
const HTTP_STATUSES: [u16; 13] = [200, 201, 204, 400, 401, 403, 404, 405, 409, 413, 429, 500, 503];

/// Counters of the HTTP side-port.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    by_status: [AtomicU64; HTTP_STATUSES.len()],
    other: AtomicU64,
}

impl HttpMetrics {
    /// Counts one answered request with `status`.
    pub fn record(&self, status: u16) {
        match HTTP_STATUSES.iter().position(|s| *s == status) {
            Some(i) => self.by_status.get(i).map(|c| c.fetch_add(1, Ordering::Relaxed)),
            None => Some(self.other.fetch_add(1, Ordering::Relaxed)),
        };
    }
}

/// Upper bounds of the `natter_store_commit_seconds` histogram buckets, in
/// seconds (`+Inf` is implied): from a quiet `fdatasync` (~0.1 ms) to a
/// pathological one (1 s), about three per decade.
pub const COMMIT_SECONDS_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The same bounds in nanoseconds, for comparing without floating point.
const COMMIT_BUCKET_NANOS: [u64; 13] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// Counters of the group-commit writer; only the writer thread writes them.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    /// Durable batch commits (one `fdatasync` each).
    pub commits: AtomicU64,
    /// Records committed (a message with its dedupe row, or a membership change).
    pub records: AtomicU64,
    /// Commits per latency bucket (not cumulative; the last is `+Inf`).
    commit_buckets: [AtomicU64; COMMIT_BUCKET_NANOS.len() + 1],
    /// Sum of commit latencies, nanoseconds.
    commit_nanos: AtomicU64,
    /// Bytes of journal on disk at the writer's last measurement
    /// (`store/engine.rs`: allocated blocks of the `*.jnl` files).
    journal_bytes: AtomicU64,
    /// Times the writer sealed every memtable because the journal had grown by
    /// `--journal-limit`.
    journal_seals: AtomicU64,
    /// Bytes in the store's memtables (active and sealed, all keyspaces) not
    /// yet flushed to tables, at the writer's last measurement: the store's
    /// memory beyond its block cache.
    write_buffer_bytes: AtomicU64,
    /// The LSM trees' state at the writer's last measurement
    /// ([`crate::store::LsmState`]), for telling a stall's cause from the
    /// outside: fjall throttles writes past 20 level-0 runs, halts them at 30,
    /// and halts a keyspace's writes at 4 sealed memtables.
    lsm: [AtomicU64; 4],
}

impl StoreMetrics {
    /// Counts one commit of `records` records that took `elapsed` (journal write
    /// plus `fdatasync`).
    pub fn observe_commit(&self, elapsed: Duration, records: u64) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = COMMIT_BUCKET_NANOS
            .iter()
            .position(|bound| nanos <= *bound)
            .unwrap_or(COMMIT_BUCKET_NANOS.len());
        if let Some(count) = self.commit_buckets.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        self.commit_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.records.fetch_add(records, Ordering::Relaxed);
        self.commits.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the writer's last journal measurement: `bytes` on disk, the
    /// seals made so far, and the memtables' unflushed bytes.
    pub fn observe_journal(&self, bytes: u64, seals: u64, write_buffer: u64) {
        self.journal_bytes.store(bytes, Ordering::Relaxed);
        self.journal_seals.store(seals, Ordering::Relaxed);
        self.write_buffer_bytes.store(write_buffer, Ordering::Relaxed);
    }

    /// Records the LSM trees' state measured by the writer.
    pub fn observe_lsm(&self, state: crate::store::LsmState) {
        let values = [
            state.l0_tables,
            state.sealed_memtables,
            state.flushes_pending,
            state.compactions_running,
        ];
        for (slot, value) in self.lsm.iter().zip(values) {
            slot.store(value, Ordering::Relaxed);
        }
    }

    fn render(&self, out: &mut String) {
        for (slot, (name, help)) in self.lsm.iter().zip([
            (
                "natter_store_l0_tables",
                "Level-0 tables of the messages and dedupe keyspaces (fjall throttles writes past 20 level-0 runs and halts them at 30).",
            ),
            (
                "natter_store_sealed_memtables",
                "Sealed memtables of the messages and dedupe keyspaces waiting for their flush (fjall halts a keyspace's writes at 4).",
            ),
            ("natter_store_flushes_pending", "Memtable flushes queued or running on fjall's workers."),
            ("natter_store_compactions_running", "Compactions running on fjall's workers."),
        ]) {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                slot.load(Ordering::Relaxed)
            );
        }
        let name = "natter_store_journal_bytes";
        let _ = writeln!(
            out,
            "# HELP {name} Bytes of journal on disk at the storage writer's last measurement (what a restart replays).\n# TYPE {name} gauge\n{name} {}",
            self.journal_bytes.load(Ordering::Relaxed)
        );
        let name = "natter_store_write_buffer_bytes";
        let _ = writeln!(
            out,
            "# HELP {name} Bytes in the store's memtables not yet flushed to tables, at the storage writer's last measurement.\n# TYPE {name} gauge\n{name} {}",
            self.write_buffer_bytes.load(Ordering::Relaxed)
        );
        let commits = self.commits.load(Ordering::Relaxed);
        for (name, help, value) in [
            (
                "natter_store_commits_total",
                "Durable group commits (one fdatasync each)",
                commits,
            ),
            (
                "natter_store_records_total",
                "Records made durable by group commits (records per commit = records / commits)",
                self.records.load(Ordering::Relaxed),
            ),
            (
                "natter_store_journal_seals_total",
                "Times every memtable was sealed because the journal grew by --journal-limit",
                self.journal_seals.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}.\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let name = "natter_store_commit_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Latency of one group commit: journal write plus fdatasync.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (bound, count) in COMMIT_SECONDS_BUCKETS.iter().zip(&self.commit_buckets) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        if let Some(inf) = self.commit_buckets.last() {
            cumulative += inf.load(Ordering::Relaxed);
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.commit_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// One per-core series: name, type, help text and the field it reads.
type PerCoreSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&CoreMetrics) -> &AtomicU64,
);

/// All of natterd's counters.
#[derive(Debug)]
pub struct Metrics {
    /// One entry per core, indexed by `CoreId`.
    pub cores: Vec<CoreMetrics>,
    /// The side-port's counters.
    pub http: HttpMetrics,
    /// The group-commit writer's counters.
    pub store: StoreMetrics,
    /// The push thread's counters (`crate::push`).
    pub push: crate::push::PushMetrics,
    /// The search indexer's and queries' counters (`crate::search`), shared
    /// with the indexer thread.
    pub search: std::sync::Arc<crate::search::SearchMetrics>,
}

impl Metrics {
    /// Fresh counters for `cores` event loops.
    pub fn new(cores: usize) -> Self {
        Self {
            cores: (0..cores).map(|_| CoreMetrics::default()).collect(),
            http: HttpMetrics::default(),
            store: StoreMetrics::default(),
            push: crate::push::PushMetrics::default(),
            search: std::sync::Arc::default(),
        }
    }

    /// Renders every counter in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let per_core: [PerCoreSeries; 25] = [
            ("natter_connections", "gauge", "Open client connections", |c| {
                &c.connections
            }),
            ("natter_sessions", "gauge", "Authenticated sessions", |c| {
                &c.sessions
            }),
            ("natter_accepted_total", "counter", "Connections accepted", |c| {
                &c.accepted
            }),
            (
                "natter_frames_in_total",
                "counter",
                "Frames received from clients",
                |c| &c.frames_in,
            ),
            (
                "natter_frames_out_total",
                "counter",
                "Frames sent to clients",
                |c| &c.frames_out,
            ),
            (
                "natter_protocol_errors_total",
                "counter",
                "Connections closed for malformed or oversized frames",
                |c| &c.protocol_errors,
            ),
            (
                "natter_messages_total",
                "counter",
                "Messages sequenced by this core as owner core",
                |c| &c.messages,
            ),
            (
                "natter_deliveries_total",
                "counter",
                "Messages sent to sessions (live pushes and sync)",
                |c| &c.deliveries,
            ),
            (
                "natter_slow_consumers_total",
                "counter",
                "Sessions whose outbound buffer overflowed (sent Resync, or closed before authenticating)",
                |c| &c.slow_consumers,
            ),
            (
                "natter_preauth_refused_total",
                "counter",
                "Connections refused: too many from their address had not sent their Hello",
                |c| &c.preauth_refused,
            ),
            (
                "natter_preauth_evicted_total",
                "counter",
                "Connections that had not sent their Hello, closed to make room for a new one",
                |c| &c.preauth_evicted,
            ),
            (
                "natter_accept_shed_total",
                "counter",
                "Connections accepted and closed at once for lack of a file descriptor",
                |c| &c.accept_shed,
            ),
            (
                "natter_presence_pushes_total",
                "counter",
                "Presence frames (snapshots and pushes) queued for sessions",
                |c| &c.presence_pushes,
            ),
            (
                "natter_online_users",
                "gauge",
                "Users homed on this core that are online, grace periods included",
                |c| &c.online_users,
            ),
            ("natter_loop_turns_total", "counter", "Event-loop turns", |c| {
                &c.turns
            }),
            (
                "natter_loop_slow_turns_total",
                "counter",
                "Event-loop turns whose work took over 2 ms (every other session on the core waited)",
                |c| &c.slow_turns,
            ),
            (
                "natter_loop_turn_max_microseconds",
                "gauge",
                "The longest event-loop turn since start, in microseconds",
                |c| &c.turn_max_micros,
            ),
            (
                "natter_outbound_peak_bytes",
                "gauge",
                "The most bytes queued for one connection of this core since start",
                |c| &c.outbound_peak_bytes,
            ),
            (
                "natter_loop_store_reads_total",
                "counter",
                "Store reads the event-loop thread made itself (the reader thread's are not counted)",
                |c| &c.loop_store_reads,
            ),
            (
                "natter_quic_forwarded_datagrams_total",
                "counter",
                "QUIC datagrams that reached this core's socket and were forwarded to the core owning their connection",
                |c| &c.quic_forwarded,
            ),
            (
                "natter_quic_retries_total",
                "counter",
                "QUIC Retry packets sent (address validation while handshakes pile up)",
                |c| &c.quic_retries,
            ),
            (
                "natter_quic_refused_total",
                "counter",
                "QUIC connection attempts refused (too many handshakes in progress)",
                |c| &c.quic_refused,
            ),
            (
                "natter_quic_datagrams_in_total",
                "counter",
                "QUIC datagrams received on this core's socket",
                |c| &c.quic_datagrams_in,
            ),
            (
                "natter_quic_send_dropped_total",
                "counter",
                "QUIC datagrams dropped because the socket's send buffer was full (QUIC retransmits them)",
                |c| &c.quic_send_dropped,
            ),
            (
                "natter_quic_connections",
                "gauge",
                "QUIC connections owned by this core's endpoint",
                |c| &c.quic_connections,
            ),
        ];
        for (name, kind, help, field) in per_core {
            let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} {kind}");
            for (core, m) in self.cores.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{core=\"{core}\"}} {}",
                    field(m).load(Ordering::Relaxed)
                );
            }
        }
        let name = "natter_http_requests_total";
        let _ = writeln!(
            out,
            "# HELP {name} HTTP requests answered, by status.\n# TYPE {name} counter"
        );
        for (status, count) in HTTP_STATUSES.iter().zip(&self.http.by_status) {
            let _ = writeln!(
                out,
                "{name}{{status=\"{status}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "{name}{{status=\"other\"}} {}",
            self.http.other.load(Ordering::Relaxed)
        );
        self.store.render(&mut out);
        self.push.render(&mut out);
        self.search.render(&mut out);
        if let Some(rss) = resident_memory_bytes() {
            let name = "process_resident_memory_bytes";
            let _ = writeln!(
                out,
                "# HELP {name} Resident memory size in bytes.\n# TYPE {name} gauge\n{name} {rss}"
            );
        }
        out
    }
}

/// natterd's resident set size, from `/proc/self/status` (Linux).
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_per_core_and_http_counters() {
        let m = Metrics::new(2);
        m.cores[1].connections.fetch_add(3, Ordering::Relaxed);
        m.http.record(201);
        m.http.record(418);
        let text = m.render();
        assert!(text.contains("natter_connections{core=\"0\"} 0"));
        assert!(text.contains("natter_connections{core=\"1\"} 3"));
        assert!(text.contains("natter_http_requests_total{status=\"201\"} 1"));
        assert!(text.contains("natter_http_requests_total{status=\"other\"} 1"));
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "));
        assert!(
            rss.is_some_and(|v| v.parse::<u64>().is_ok_and(|b| b > 1 << 20)),
            "{text}"
        );
    }

    #[test]
    fn renders_the_lsm_gauges_the_writer_observed() {
        let m = Metrics::new(1);
        m.store.observe_lsm(crate::store::LsmState {
            l0_tables: 21,
            sealed_memtables: 4,
            flushes_pending: 2,
            compactions_running: 1,
        });
        let text = m.render();
        for line in [
            "natter_store_l0_tables 21",
            "natter_store_sealed_memtables 4",
            "natter_store_flushes_pending 2",
            "natter_store_compactions_running 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn renders_the_commit_histogram_cumulatively() {
        let m = Metrics::new(1);
        let empty = m.render();
        assert!(empty.contains("natter_store_commits_total 0"), "{empty}");
        assert!(empty.contains("natter_store_commit_seconds_bucket{le=\"+Inf\"} 0"));
        m.store.observe_commit(Duration::from_micros(50), 10);
        m.store.observe_commit(Duration::from_micros(100), 1);
        m.store.observe_commit(Duration::from_millis(3), 20);
        m.store.observe_commit(Duration::from_secs(2), 1);
        let text = m.render();
        for line in [
            "# TYPE natter_store_commit_seconds histogram",
            "natter_store_commits_total 4",
            "natter_store_records_total 32",
            "natter_store_commit_seconds_bucket{le=\"0.0001\"} 2",
            "natter_store_commit_seconds_bucket{le=\"0.0025\"} 2",
            "natter_store_commit_seconds_bucket{le=\"0.005\"} 3",
            "natter_store_commit_seconds_bucket{le=\"1\"} 3",
            "natter_store_commit_seconds_bucket{le=\"+Inf\"} 4",
            "natter_store_commit_seconds_count 4",
            "natter_store_commit_seconds_sum 2.00315",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
