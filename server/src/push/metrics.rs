//! The `natter_push_*` series on `/metrics`: notifications sent, failed,
//! retried, rejected, coalesced and skipped (live device), the owed-table
//! depth, and the gateway latency histogram. Written by the push thread and
//! its sender threads (relaxed atomics), read when `/metrics` is scraped.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of `natter_push_gateway_seconds`, in seconds (`+Inf` implied):
/// from a local gateway (~1 ms) to the response timeout's range.
pub const LATENCY_SECONDS_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The push counters (module docs).
#[derive(Debug, Default)]
pub struct PushMetrics {
    /// Notifications the gateway accepted.
    pub sent: AtomicU64,
    /// Attempts that failed (timeout, connection, 5xx, or a refused request).
    pub failed: AtomicU64,
    /// Failed attempts scheduled again with backoff.
    pub retried: AtomicU64,
    /// Pushkeys the gateway listed as rejected (their pushers are removed).
    pub rejected: AtomicU64,
    /// Messages folded into a notification already owed.
    pub coalesced: AtomicU64,
    /// Notifications not sent because the device had a live session.
    pub skipped_live: AtomicU64,
    /// Owed `(device, chat)` entries held now (waiting, backing off or in flight).
    pub queue_depth: AtomicU64,
    buckets: [AtomicU64; LATENCY_SECONDS_BUCKETS.len() + 1],
    latency_nanos: AtomicU64,
}

impl PushMetrics {
    /// Counts one gateway exchange that took `elapsed` (whatever its outcome).
    pub fn observe_latency(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = LATENCY_SECONDS_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_SECONDS_BUCKETS.len());
        if let Some(bucket) = self.buckets.get(i) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.latency_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Appends the series in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        for (name, kind, help, value) in [
            (
                "natter_push_sent_total",
                "counter",
                "Notifications the push gateway accepted",
                &self.sent,
            ),
            (
                "natter_push_failed_total",
                "counter",
                "Gateway attempts that failed (timeout, connection, 5xx, refused)",
                &self.failed,
            ),
            (
                "natter_push_retried_total",
                "counter",
                "Failed attempts retried with backoff",
                &self.retried,
            ),
            (
                "natter_push_rejected_total",
                "counter",
                "Pushkeys the gateway rejected (pusher removed)",
                &self.rejected,
            ),
            (
                "natter_push_coalesced_total",
                "counter",
                "Messages folded into a notification already owed",
                &self.coalesced,
            ),
            (
                "natter_push_skipped_live_total",
                "counter",
                "Notifications not sent because the device had a live session",
                &self.skipped_live,
            ),
            (
                "natter_push_queue_depth",
                "gauge",
                "Owed (device, chat) notifications held by the push thread",
                &self.queue_depth,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}.\n# TYPE {name} {kind}\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let name = "natter_push_gateway_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Latency of one push gateway exchange.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (bound, count) in LATENCY_SECONDS_BUCKETS.iter().zip(&self.buckets) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        if let Some(inf) = self.buckets.last() {
            cumulative += inf.load(Ordering::Relaxed);
        }
        let sum = self.latency_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {cumulative}\n{name}_sum {sum}\n{name}_count {cumulative}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = PushMetrics::default();
        m.sent.fetch_add(2, Ordering::Relaxed);
        m.observe_latency(Duration::from_micros(500));
        m.observe_latency(Duration::from_millis(30));
        m.observe_latency(Duration::from_secs(20));
        let mut text = String::new();
        m.render(&mut text);
        for line in [
            "natter_push_sent_total 2",
            "natter_push_gateway_seconds_bucket{le=\"0.001\"} 1",
            "natter_push_gateway_seconds_bucket{le=\"0.05\"} 2",
            "natter_push_gateway_seconds_bucket{le=\"10\"} 2",
            "natter_push_gateway_seconds_bucket{le=\"+Inf\"} 3",
            "natter_push_gateway_seconds_count 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
