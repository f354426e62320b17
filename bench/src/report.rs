//! [`Report`]: the figures of a run under the key names fixed for every scenario,
//! written as one JSON object (`--json FILE`) and as a human summary on stdout.
//!
//! Every figure is optional: a scenario fills in those it measures and the others
//! are left out of the JSON (not written as zero, so "not measured" never reads as
//! "measured zero").

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use serde::Serialize;

use crate::error::BenchError;
use crate::series::Series;

/// The figures of one run. Field names are the JSON keys.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct Report {
    /// The scenario that ran (`connect`, `one2one`, …).
    pub(crate) scenario: String,
    /// The client transport (`tcp`, `tls`, `quic`, `ws`).
    pub(crate) transport: String,
    /// Length of the measured phase in seconds (connect: the idle hold).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) duration_s: Option<f64>,
    /// Messages sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sent: Option<u64>,
    /// Sends acknowledged by the server (after its fsync).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) acked: Option<u64>,
    /// Messages delivered to recipients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) delivered: Option<u64>,
    /// Acknowledged sends per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) msgs_per_sec: Option<f64>,
    /// Deliveries per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) deliveries_per_sec: Option<f64>,
    /// Median send → ack latency, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ack_p50_us: Option<u64>,
    /// 99th percentile send → ack latency, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ack_p99_us: Option<u64>,
    /// 99.9th percentile send → ack latency, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ack_p999_us: Option<u64>,
    /// Median send → delivery latency, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) deliver_p50_us: Option<u64>,
    /// 99th percentile send → delivery latency, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) deliver_p99_us: Option<u64>,
    /// 99.9th percentile send → delivery latency, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) deliver_p999_us: Option<u64>,
    /// Acknowledged messages never delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) lost: Option<u64>,
    /// Messages delivered more than once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) duplicated: Option<u64>,
    /// Messages delivered out of `seq` order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reordered: Option<u64>,
    /// Operations that failed (refused, timed out, connection lost).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) errors: Option<u64>,
    /// natterd's resident memory, bytes (connect: right after all connections).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_rss_bytes: Option<u64>,
    /// one2one / group: natterd's store records per group commit during the run
    /// (`natter_store_records_total` / `natter_store_commits_total`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) records_per_commit: Option<f64>,
    /// `--conversation`: Receipt frames received by every device, over the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) receipt_frames: Option<u64>,
    /// `--conversation`: `receipt_frames` per acknowledged message (coalescing keeps it far
    /// below the members per message an uncoalesced receipt would cost).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) receipt_frames_per_message: Option<f64>,
    /// `--conversation`: Typing frames received by every device, over the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) typing_frames: Option<u64>,
    /// Connections established (connect: and still open at the end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) connections: Option<u64>,
    /// connect: connections established (TCP + Hello → Welcome) per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) connect_per_sec: Option<f64>,
    /// connect: growth of natterd's RSS while connecting, divided by the connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rss_per_connection_bytes: Option<u64>,
    /// connect: growth of natterd's store write buffer (`natter_store_write_buffer_bytes`,
    /// its memtables) over the same interval as `rss_per_connection_bytes`, bytes;
    /// negative when memtables were flushed meanwhile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) write_buffer_growth_bytes: Option<i64>,
    /// connect: `rss_per_connection_bytes` net of the write buffer's growth (the
    /// rows written at connect wait in memtables, which `--journal-limit` bounds
    /// whatever the connection count and flushes to disk: not per-connection
    /// memory). A shrinking write buffer is not added back, so this never exceeds
    /// the raw figure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rss_per_connection_net_bytes: Option<u64>,
    /// connect over QUIC: natterd's RSS growth from the settled half-way point
    /// (half the connections open) to the settled end, divided by the second
    /// half's connections: the marginal cost of one more idle connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rss_per_connection_marginal_bytes: Option<u64>,
    /// connect over QUIC: UDP sockets (quinn-proto endpoints) the connections
    /// were spread over (`--quic-connections-per-socket` each, the last fewer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) udp_sockets: Option<u64>,
    /// presence: `Presence` pushes (snapshots not counted) received per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) presence_pushes_per_sec: Option<f64>,
    /// presence: median "came online" change → friend's push latency, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) presence_p50_us: Option<u64>,
    /// presence: 99th percentile change → push latency, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) presence_p99_us: Option<u64>,
    /// presence: 99.9th percentile change → push latency, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) presence_p999_us: Option<u64>,
    /// presence: 99th percentile "went offline" latency past the grace period, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) presence_offline_p99_us: Option<u64>,
    /// presence: reconnect storm → every device sees every friend online, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) storm_settle_s: Option<f64>,
    /// sync: messages the device was behind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) behind: Option<u64>,
    /// sync: messages the device received before SyncDone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) synced: Option<u64>,
    /// sync: catch-up messages per second (Sync sent → SyncDone received).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sync_msgs_per_sec: Option<f64>,
    /// sync: natterd's peak resident memory during the catch-up, bytes (flood,
    /// one2one / group, syncstorm: during the measured phase).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_peak_rss_bytes: Option<u64>,
    /// natterd's resident memory when the measured phase started, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_rss_before_bytes: Option<u64>,
    /// `server_peak_rss_bytes - server_rss_before_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_rss_growth_bytes: Option<u64>,
    /// search: seconds from the end of the fill until the index lag was 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) search_index_catch_up_s: Option<f64>,
    /// search: messages made searchable per second (fill plus catch-up time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) search_indexed_per_sec: Option<f64>,
    /// search: one-word query latency, median, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) search_q1_p50_us: Option<u64>,
    /// search: one-word query latency, 99th percentile, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) search_q1_p99_us: Option<u64>,
    /// search: three-word query latency, median, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) search_q3_p50_us: Option<u64>,
    /// search: three-word query latency, 99th percentile, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) search_q3_p99_us: Option<u64>,
    /// search: documents in the index after the fill.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) search_index_docs: Option<u64>,
    /// search: bytes of the index on disk after the fill.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) search_index_bytes: Option<u64>,
    /// search: `search_index_bytes / search_index_docs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) search_index_bytes_per_message: Option<f64>,
    /// search: queries answered `partial` (time budget hit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) search_partial: Option<u64>,
    /// `Error` frames received, by error code name (`code N` for codes this build
    /// does not know).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) errors_by_code: Option<BTreeMap<String, u64>>,
    /// one2one / group, open loop: sends skipped because their connection already
    /// had 1 MiB the socket had not taken (natterd not reading).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sends_skipped: Option<u64>,
    /// flood: requests written (never read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) requests: Option<u64>,
    /// flood: connections natterd accepted (Welcome; prehello: TCP connected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) accepted_connections: Option<u64>,
    /// flood: connections natterd closed (or reset) during the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_closed_connections: Option<u64>,
    /// flood: seconds from the start of the flood to the first close by natterd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_close_first_s: Option<f64>,
    /// flood: seconds from the start of the flood to the last close by natterd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_close_last_s: Option<f64>,
    /// flood: most closes by natterd within any one second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_closed_max_per_s: Option<u64>,
    /// flood: seconds into the flood at which natterd's RSS passed
    /// `--max-server-rss-mib` and the flood was stopped (absent: never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_rss_cap_reached_s: Option<f64>,
    /// seam: recipient devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) devices: Option<u64>,
    /// seam: reconnects of the recipient devices (after their own disconnects and
    /// after natterd restarts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reconnects: Option<u64>,
    /// seam: natterd kill -9 + restart cycles done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) kill_restarts: Option<u64>,
    /// seam: messages committed in the run's chats (the heads at the end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) committed: Option<u64>,
    /// seam: `duplicated` / `reordered` deliveries that came before the `SyncDone`
    /// of their connection's sync.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) anomalies_before_sync_done: Option<u64>,
    /// seam: sends retried under their `client_msg_id` after a lost connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) retried: Option<u64>,
    /// syncstorm: bystander pings answered during the storm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pings: Option<u64>,
    /// syncstorm: median bystander ping latency during the storm (from the intended
    /// send instant), µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ping_p50_us: Option<u64>,
    /// syncstorm: 99th percentile ping latency during the storm, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ping_p99_us: Option<u64>,
    /// syncstorm: 99.9th percentile ping latency during the storm, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ping_p999_us: Option<u64>,
    /// syncstorm: median ping latency in the quiet baseline before the storm, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ping_baseline_p50_us: Option<u64>,
    /// syncstorm: 99th percentile ping latency in the baseline, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ping_baseline_p99_us: Option<u64>,
    /// syncstorm: 99.9th percentile ping latency in the baseline, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ping_baseline_p999_us: Option<u64>,
    /// syncstorm: storm ping p99 per home core of the bystander (`"0"`, `"1"`, …), µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ping_p99_us_by_core: Option<BTreeMap<String, u64>>,
    /// syncstorm: baseline ping p99 per home core, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ping_baseline_p99_us_by_core: Option<BTreeMap<String, u64>>,
    /// syncstorm: first storm connect → last `SyncDone`, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) storm_s: Option<f64>,
    /// syncstorm: natterd's event-loop turns over 2 ms during the storm (its
    /// `natter_loop_slow_turns_total`, both cores), where natterd exports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) loop_slow_turns: Option<u64>,
    /// syncstorm: natterd's event-loop turns during the storm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) loop_turns: Option<u64>,
    /// syncstorm: natterd's longest event-loop turn since its restart, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) loop_turn_max_us: Option<u64>,
    /// syncstorm: store reads natterd's event loops made themselves during
    /// the storm (`natter_loop_store_reads_total`), where natterd exports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) loop_store_reads: Option<u64>,
    /// push: offline devices with a pusher.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) push_devices: Option<u64>,
    /// push: notifications the bench's gateway received in the push-on phase
    /// (and its drain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pushes: Option<u64>,
    /// push: notifications received per second of the push-on phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pushes_per_sec: Option<f64>,
    /// push: median delay from the SendOk of a notification's message to the
    /// notification's arrival at the gateway, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) push_delay_p50_us: Option<u64>,
    /// push: 99th percentile of that delay, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) push_delay_p99_us: Option<u64>,
    /// push: acked sends per second of the push-off phase (no pushers yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) msgs_per_sec_push_off: Option<f64>,
    /// push: `msgs_per_sec` (push on) / `msgs_per_sec_push_off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) push_throughput_ratio: Option<f64>,
    /// push: per push-on phase, its acked sends per second over the mean of
    /// the push-off phases just before and just after it (phases alternate
    /// off, on, off, …; `push_throughput_ratio` is their median).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) push_throughput_ratios: Option<Vec<f64>>,
    /// push: natterd's CPU time (all threads, from `/proc/<pid>/task/*/schedstat`)
    /// per acked send in the push-off phases, µs (median of the phases).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) push_cpu_us_per_msg_off: Option<f64>,
    /// push: the same in the push-on phases, each counted until its drain ends
    /// (so the notifications that leave after the phase are charged to it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) push_cpu_us_per_msg_on: Option<f64>,
    /// push: `push_cpu_us_per_msg_on` / `push_cpu_us_per_msg_off`, the CPU cost of
    /// push per message, which the machine's noise changes far less than throughput.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) push_cpu_ratio: Option<f64>,
    /// push: the CPU time of natterd's push threads alone (`natter-push` and
    /// its gateway senders) per acked send in the push-on phases, µs (median).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) push_threads_cpu_us_per_msg: Option<f64>,
    /// Per-second series: the whole seconds of the measured phase that the
    /// `*_second_*` figures count (warm-up, drain and partial seconds left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) series_seconds: Option<u64>,
    /// Acks per second of the slowest counted second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) min_second_msgs_per_sec: Option<f64>,
    /// Median of the counted seconds' acks per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) median_second_msgs_per_sec: Option<f64>,
    /// The highest ack p99 of any counted second (that second's acks alone), µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) worst_second_ack_p99_us: Option<u64>,
    /// The highest delivery p99 of any counted second, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) worst_second_deliver_p99_us: Option<u64>,
    /// `--text-bytes` of the run: bytes (ASCII, so also characters) of every message text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) text_bytes: Option<u64>,
    /// `--spawn`: messages natterd stored over its life (its `natter_messages_total`
    /// before the stop), the divisor of `disk_bytes_per_message`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) messages_stored: Option<u64>,
    /// `messages_stored × text_bytes`: the raw text the store holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) raw_text_bytes: Option<u64>,
    /// `--spawn`: the data directory's size on disk (`st_blocks × 512` summed) right
    /// after the run, natterd still running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) disk_bytes_running: Option<u64>,
    /// `--spawn`: the data directory's size on disk after natterd's clean stop
    /// (SIGTERM: journal synced, store closed) — the figure `disk_bytes_per_message`
    /// divides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) disk_bytes: Option<u64>,
    /// `disk_bytes / messages_stored`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) disk_bytes_per_message: Option<f64>,
    /// The per-second rows (`--series`, `--plot`); not part of the JSON.
    #[serde(skip)]
    pub(crate) series: Option<Series>,
}

impl Report {
    /// An empty report for `scenario` over `transport`.
    pub(crate) fn new(scenario: &str, transport: &str) -> Self {
        Report {
            scenario: scenario.to_owned(),
            transport: transport.to_owned(),
            ..Report::default()
        }
    }

    /// Takes the per-second rows and fills in the `*_second_*` figures from them.
    pub(crate) fn set_series(&mut self, series: Series) {
        if let Some(stats) = series.stats() {
            self.series_seconds = Some(stats.seconds as u64);
            self.min_second_msgs_per_sec = Some(stats.min_second_msgs_per_sec);
            self.median_second_msgs_per_sec = Some(stats.median_second_msgs_per_sec);
            self.worst_second_ack_p99_us = stats.worst_second_ack_p99_us;
            self.worst_second_deliver_p99_us = stats.worst_second_deliver_p99_us;
        }
        self.series = Some(series);
    }

    /// The failures the run counted: `errors` plus the correctness counters
    /// (`lost`, `duplicated`, `reordered`); any of them makes the run fail.
    pub(crate) fn failures(&self) -> u64 {
        [self.errors, self.lost, self.duplicated, self.reordered]
            .iter()
            .map(|v| v.unwrap_or(0))
            .sum()
    }

    /// The report as one pretty-printed JSON object.
    pub(crate) fn to_json(&self) -> String {
        // Serializing a struct of strings and numbers cannot fail; fall back to the
        // compact form's error text rather than panic.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// Writes [`Report::to_json`] and a newline to `path`.
    ///
    /// # Errors
    /// [`BenchError::Io`] if the file cannot be written.
    pub(crate) fn write_json(&self, path: &Path) -> Result<(), BenchError> {
        fs::write(path, format!("{}\n", self.to_json()))?;
        Ok(())
    }

    /// The human summary: one figure per line, only those measured.
    pub(crate) fn summary(&self) -> String {
        let mut out = format!("\n{} over {}\n", self.scenario, self.transport);
        let mut line = |name: &str, value: String| {
            let _ = writeln!(out, "  {name:<26} {value}");
        };
        if let Some(v) = self.connections {
            line("connections", v.to_string());
        }
        if let Some(v) = self.connect_per_sec {
            line("connect_per_sec", format!("{v:.0}"));
        }
        if let Some(v) = self.server_rss_bytes {
            line("server_rss_bytes", format!("{v} ({})", mib(v)));
        }
        if let Some(v) = self.rss_per_connection_bytes {
            line(
                "rss_per_connection_bytes",
                format!("{v} ({:.2} KiB)", v as f64 / 1024.0),
            );
        }
        if let Some(v) = self.write_buffer_growth_bytes {
            line("write_buffer_growth_bytes", v.to_string());
        }
        if let Some(v) = self.rss_per_connection_net_bytes {
            line(
                "rss_per_connection_net_bytes",
                format!("{v} ({:.2} KiB)", v as f64 / 1024.0),
            );
        }
        if let Some(v) = self.rss_per_connection_marginal_bytes {
            line(
                "rss_per_connection_marginal_bytes",
                format!("{v} ({:.2} KiB)", v as f64 / 1024.0),
            );
        }
        for (name, value) in [
            ("sent", self.sent),
            ("acked", self.acked),
            ("delivered", self.delivered),
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("reordered", self.reordered),
        ] {
            if let Some(v) = value {
                line(name, v.to_string());
            }
        }
        for (name, value) in [
            ("msgs_per_sec", self.msgs_per_sec),
            ("deliveries_per_sec", self.deliveries_per_sec),
        ] {
            if let Some(v) = value {
                line(name, format!("{v:.0}"));
            }
        }
        for (name, value) in [
            ("ack_p50_us", self.ack_p50_us),
            ("ack_p99_us", self.ack_p99_us),
            ("ack_p999_us", self.ack_p999_us),
            ("deliver_p50_us", self.deliver_p50_us),
            ("deliver_p99_us", self.deliver_p99_us),
            ("deliver_p999_us", self.deliver_p999_us),
        ] {
            if let Some(v) = value {
                line(name, v.to_string());
            }
        }
        if let Some(v) = self.records_per_commit {
            line("records_per_commit", format!("{v:.1}"));
        }
        if let Some(v) = self.receipt_frames {
            line("receipt_frames", v.to_string());
        }
        if let Some(v) = self.receipt_frames_per_message {
            line("receipt_frames_per_message", format!("{v:.3}"));
        }
        if let Some(v) = self.typing_frames {
            line("typing_frames", v.to_string());
        }
        if let Some(v) = self.storm_settle_s {
            line("storm_settle_s", format!("{v:.3}"));
        }
        if let Some(v) = self.presence_pushes_per_sec {
            line("presence_pushes_per_sec", format!("{v:.0}"));
        }
        for (name, value) in [
            ("presence_p50_us", self.presence_p50_us),
            ("presence_p99_us", self.presence_p99_us),
            ("presence_p999_us", self.presence_p999_us),
            ("presence_offline_p99_us", self.presence_offline_p99_us),
        ] {
            if let Some(v) = value {
                line(name, v.to_string());
            }
        }
        for (name, value) in [("behind", self.behind), ("synced", self.synced)] {
            if let Some(v) = value {
                line(name, v.to_string());
            }
        }
        if let Some(v) = self.sync_msgs_per_sec {
            line("sync_msgs_per_sec", format!("{v:.0}"));
        }
        if let Some(v) = self.server_peak_rss_bytes {
            line("server_peak_rss_bytes", format!("{v} ({})", mib(v)));
        }
        for (name, value) in [
            ("server_rss_before_bytes", self.server_rss_before_bytes),
            ("server_rss_growth_bytes", self.server_rss_growth_bytes),
        ] {
            if let Some(v) = value {
                line(name, format!("{v} ({})", mib(v)));
            }
        }
        for (name, value) in [
            ("udp_sockets", self.udp_sockets),
            ("sends_skipped", self.sends_skipped),
            ("requests", self.requests),
            ("accepted_connections", self.accepted_connections),
            ("server_closed_connections", self.server_closed_connections),
            ("server_closed_max_per_s", self.server_closed_max_per_s),
            ("devices", self.devices),
            ("reconnects", self.reconnects),
            ("kill_restarts", self.kill_restarts),
            ("committed", self.committed),
            ("retried", self.retried),
            ("anomalies_before_sync_done", self.anomalies_before_sync_done),
            ("pings", self.pings),
            ("ping_baseline_p50_us", self.ping_baseline_p50_us),
            ("ping_baseline_p99_us", self.ping_baseline_p99_us),
            ("ping_baseline_p999_us", self.ping_baseline_p999_us),
            ("ping_p50_us", self.ping_p50_us),
            ("ping_p99_us", self.ping_p99_us),
            ("ping_p999_us", self.ping_p999_us),
            ("loop_turns", self.loop_turns),
            ("loop_slow_turns", self.loop_slow_turns),
            ("loop_store_reads", self.loop_store_reads),
            ("loop_turn_max_us", self.loop_turn_max_us),
            ("push_devices", self.push_devices),
            ("pushes", self.pushes),
            ("push_delay_p50_us", self.push_delay_p50_us),
            ("push_delay_p99_us", self.push_delay_p99_us),
        ] {
            if let Some(v) = value {
                line(name, v.to_string());
            }
        }
        for (name, value) in [
            ("pushes_per_sec", self.pushes_per_sec),
            ("msgs_per_sec_push_off", self.msgs_per_sec_push_off),
            ("push_throughput_ratio", self.push_throughput_ratio),
            ("push_cpu_us_per_msg_off", self.push_cpu_us_per_msg_off),
            ("push_cpu_us_per_msg_on", self.push_cpu_us_per_msg_on),
            ("push_cpu_ratio", self.push_cpu_ratio),
            ("push_threads_cpu_us_per_msg", self.push_threads_cpu_us_per_msg),
            ("server_close_first_s", self.server_close_first_s),
            ("server_close_last_s", self.server_close_last_s),
            ("server_rss_cap_reached_s", self.server_rss_cap_reached_s),
            ("storm_s", self.storm_s),
        ] {
            if let Some(v) = value {
                line(name, format!("{v:.3}"));
            }
        }
        if let Some(ratios) = &self.push_throughput_ratios {
            let text: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
            line("push_throughput_ratios", format!("[{}]", text.join(", ")));
        }
        for (name, value) in [
            ("ping_baseline_p99_us_by_core", &self.ping_baseline_p99_us_by_core),
            ("ping_p99_us_by_core", &self.ping_p99_us_by_core),
            ("errors_by_code", &self.errors_by_code),
        ] {
            if let Some(map) = value {
                let text: Vec<String> = map.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                line(name, format!("{{{}}}", text.join(", ")));
            }
        }
        if let Some(v) = self.series_seconds {
            line("series_seconds", v.to_string());
        }
        for (name, value) in [
            ("min_second_msgs_per_sec", self.min_second_msgs_per_sec),
            ("median_second_msgs_per_sec", self.median_second_msgs_per_sec),
        ] {
            if let Some(v) = value {
                line(name, format!("{v:.0}"));
            }
        }
        for (name, value) in [
            ("worst_second_ack_p99_us", self.worst_second_ack_p99_us),
            ("worst_second_deliver_p99_us", self.worst_second_deliver_p99_us),
            ("text_bytes", self.text_bytes),
            ("messages_stored", self.messages_stored),
            ("raw_text_bytes", self.raw_text_bytes),
        ] {
            if let Some(v) = value {
                line(name, v.to_string());
            }
        }
        for (name, value) in [
            ("disk_bytes_running", self.disk_bytes_running),
            ("disk_bytes", self.disk_bytes),
        ] {
            if let Some(v) = value {
                line(name, format!("{v} ({})", mib(v)));
            }
        }
        if let Some(v) = self.disk_bytes_per_message {
            line("disk_bytes_per_message", format!("{v:.1}"));
        }
        if let Some(v) = self.duration_s {
            line("duration_s", format!("{v:.1}"));
        }
        if let Some(v) = self.errors {
            line("errors", v.to_string());
        }
        out
    }
}

/// `bytes` in MiB with two decimals.
fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_fixed_key_names_and_omits_unmeasured_figures() {
        let report = Report {
            duration_s: Some(10.0),
            connections: Some(10_000),
            connect_per_sec: Some(25_000.5),
            server_rss_bytes: Some(50_000_000),
            rss_per_connection_bytes: Some(3_000),
            errors: Some(0),
            ..Report::new("connect", "tcp")
        };
        let value: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        let object = value.as_object().unwrap();
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "connect_per_sec",
                "connections",
                "duration_s",
                "errors",
                "rss_per_connection_bytes",
                "scenario",
                "server_rss_bytes",
                "transport"
            ]
        );
        assert_eq!(object["scenario"], "connect");
        assert_eq!(object["connections"], 10_000);
    }

    #[test]
    fn summary_lists_measured_figures() {
        let report = Report {
            connections: Some(3),
            errors: Some(1),
            ..Report::new("connect", "tcp")
        };
        let text = report.summary();
        assert!(text.contains("connect over tcp"), "{text}");
        assert!(text.contains("connections"), "{text}");
        assert!(text.contains("errors"), "{text}");
        assert!(!text.contains("acked"), "{text}");
    }

    #[test]
    fn correctness_counters_are_failures() {
        let clean = Report {
            lost: Some(0),
            duplicated: Some(0),
            reordered: Some(0),
            errors: Some(0),
            ..Report::new("one2one", "tcp")
        };
        assert_eq!(clean.failures(), 0);
        assert_eq!(
            Report {
                lost: Some(2),
                ..clean.clone()
            }
            .failures(),
            2
        );
        assert_eq!(
            Report {
                reordered: Some(1),
                ..clean.clone()
            }
            .failures(),
            1
        );
        assert_eq!(
            Report::new("connect", "tcp").failures(),
            0,
            "unmeasured is not a failure"
        );
    }

    #[test]
    fn write_json_writes_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("figures.json");
        Report::new("connect", "tcp").write_json(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("}\n"), "{text}");
    }
}
