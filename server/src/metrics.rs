//! Process-wide counters for `/metrics` (Prometheus text format).
//!
//! Each core writes only its own [`CoreMetrics`] (relaxed atomics on a cache
//! line of its own), so counting costs the message path no shared lock; the
//! HTTP side-port reads them all when scraped.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

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
}

/// HTTP status codes counted individually; anything else lands in "other".
const HTTP_STATUSES: [u16; 12] = [200, 201, 204, 400, 401, 403, 404, 405, 409, 413, 429, 500];

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

/// All of natterd's counters.
#[derive(Debug)]
pub struct Metrics {
    /// One entry per core, indexed by `CoreId`.
    pub cores: Vec<CoreMetrics>,
    /// The side-port's counters.
    pub http: HttpMetrics,
}

impl Metrics {
    /// Fresh counters for `cores` event loops.
    pub fn new(cores: usize) -> Self {
        Self {
            cores: (0..cores).map(|_| CoreMetrics::default()).collect(),
            http: HttpMetrics::default(),
        }
    }

    /// Renders every counter in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let per_core: [(&str, &str, &str, fn(&CoreMetrics) -> &AtomicU64); 6] = [
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
}
