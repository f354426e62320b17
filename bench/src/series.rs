//! Per-second series of a run (issue 12): what each second of the run looked like, so
//! that a stall shows as the second it happened in instead of vanishing into the run's
//! average.
//!
//! This module owns the whole measurement; a scenario only feeds it:
//! - [`Seconds`]: per driver thread, the acks and deliveries by the second in which they
//!   *arrived* (counted from the first send), each with its latency (open loop: from the
//!   message's intended send instant, as the run's own histograms);
//! - [`ServerProbe`]: the coordinator's samples of natterd at each second boundary —
//!   sends in flight, resident memory, and the store counters
//!   `natter_store_commits_total` / `natter_store_records_total` of `/metrics`;
//! - [`Series::build`] joins both into one [`Row`] per second, [`Series::stats`] gives
//!   the summary figures, and the series is written as CSV ([`Series::write_csv`]), a
//!   table on stdout ([`Series::table`]) and an SVG chart ([`Series::write_svg`]).
//!
//! The summary figures (`min_second_msgs_per_sec`, `median_second_msgs_per_sec`,
//! `worst_second_ack_p99_us`) count only the *whole* seconds that lie inside the
//! measured phase: the warm-up, the drain and a partial second at either end of the
//! measured phase are left out, because a second that is only partly loaded reads as a
//! dip that is not one. Those rows are still in the CSV and the chart, with
//! `counted` = 0.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

use hdrhistogram::Histogram;

use crate::error::BenchError;
use crate::target::{Target, metric_sum};

/// One second, in nanoseconds.
pub(crate) const SECOND_NS: u64 = 1_000_000_000;
/// Most seconds a series holds: a day. Later arrivals are counted in
/// [`Seconds::beyond`] instead of growing the vector without bound.
pub(crate) const MAX_SECONDS: usize = 86_400;
/// Largest latency a per-second histogram tells apart, µs (one hour; larger values are
/// recorded as this).
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Significant digits of the per-second histograms: 1 % is plenty for one second's
/// p50 / p99, and keeps each histogram at ~13 KB (`u32` counts), so a 10-minute run
/// costs ~16 MB per driver thread.
const SECOND_SIGFIG: u8 = 2;
/// The CSV header, in column order (see [`Row`]).
pub(crate) const CSV_HEADER: &str = "t_s,acked_per_sec,delivered_per_sec,ack_p50_us,ack_p99_us,\
deliver_p50_us,deliver_p99_us,in_flight,server_rss_bytes,commits_per_sec,records_per_commit,counted";
/// Width and height of the SVG chart, pixels.
const SVG_SIZE: (u32, u32) = (1200, 800);

/// A per-second latency histogram of µs from 1 µs to [`MAX_LATENCY_US`].
fn second_histogram() -> Option<Histogram<u32>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, SECOND_SIGFIG).ok()
}

/// What arrived in one second.
#[derive(Clone, Debug, Default)]
struct Second {
    /// Acks that arrived in it.
    acked: u64,
    /// Deliveries (first time each) that arrived in it.
    delivered: u64,
    /// Their send → ack latencies, µs (allocated at the first one).
    ack: Option<Histogram<u32>>,
    /// Their send → delivery latencies, µs.
    deliver: Option<Histogram<u32>>,
}

/// Acks and deliveries by the second in which they arrived, counted from the series'
/// origin (a messaging run: its first send). One per driver thread, merged at the end.
#[derive(Clone, Debug, Default)]
pub(crate) struct Seconds {
    seconds: Vec<Second>,
    /// Arrivals past [`MAX_SECONDS`], not in any second.
    beyond: u64,
}

impl Seconds {
    /// An empty record.
    pub(crate) fn new() -> Seconds {
        Seconds::default()
    }

    /// The second `at_ns` falls in, grown as needed; `None` past [`MAX_SECONDS`].
    fn second(&mut self, at_ns: u64) -> Option<&mut Second> {
        let index = usize::try_from(at_ns / SECOND_NS)
            .ok()
            .filter(|&i| i < MAX_SECONDS);
        let Some(index) = index else {
            self.beyond += 1;
            return None;
        };
        if index >= self.seconds.len() {
            self.seconds.resize_with(index + 1, Second::default);
        }
        self.seconds.get_mut(index)
    }

    /// An ack that arrived `at_ns` after the origin, `latency_us` after its (intended)
    /// send.
    pub(crate) fn ack(&mut self, at_ns: u64, latency_us: u64) {
        if let Some(second) = self.second(at_ns) {
            second.acked += 1;
            record(&mut second.ack, latency_us);
        }
    }

    /// A delivery that arrived `at_ns` after the origin, `latency_us` after its
    /// (intended) send.
    pub(crate) fn delivery(&mut self, at_ns: u64, latency_us: u64) {
        if let Some(second) = self.second(at_ns) {
            second.delivered += 1;
            record(&mut second.deliver, latency_us);
        }
    }

    /// Adds `other` (another thread's record) into this one.
    pub(crate) fn merge(&mut self, other: &Seconds) {
        if other.seconds.len() > self.seconds.len() {
            self.seconds.resize_with(other.seconds.len(), Second::default);
        }
        for (mine, theirs) in self.seconds.iter_mut().zip(&other.seconds) {
            mine.acked += theirs.acked;
            mine.delivered += theirs.delivered;
            merge_histogram(&mut mine.ack, theirs.ack.as_ref());
            merge_histogram(&mut mine.deliver, theirs.deliver.as_ref());
        }
        self.beyond += other.beyond;
    }

    /// Seconds with anything in them (the last one's index + 1).
    pub(crate) fn len(&self) -> usize {
        self.seconds.len()
    }
}

/// Records `value_us` (at least 1) into the histogram, allocating it first.
fn record(histogram: &mut Option<Histogram<u32>>, value_us: u64) {
    if histogram.is_none() {
        *histogram = second_histogram();
    }
    if let Some(h) = histogram {
        h.saturating_record(value_us.clamp(1, MAX_LATENCY_US));
    }
}

/// Adds `other` into `mine`.
fn merge_histogram(mine: &mut Option<Histogram<u32>>, other: Option<&Histogram<u32>>) {
    let Some(other) = other else { return };
    match mine {
        // Same bounds and precision, so adding cannot fail.
        Some(h) => {
            let _ = h.add(other);
        }
        None => *mine = Some(other.clone()),
    }
}

/// p50 and p99 of a histogram, µs; `None` when it is empty.
fn p50_p99(histogram: Option<&Histogram<u32>>) -> (Option<u64>, Option<u64>) {
    match histogram {
        Some(h) if !h.is_empty() => (Some(h.value_at_quantile(0.5)), Some(h.value_at_quantile(0.99))),
        _ => (None, None),
    }
}

/// natterd at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct ServerSample {
    /// When, ns since the series' origin.
    pub(crate) at_ns: u64,
    /// The benchmark's sends not answered yet.
    pub(crate) in_flight: Option<i64>,
    /// natterd's resident memory, bytes.
    pub(crate) rss: Option<u64>,
    /// `natter_store_commits_total`.
    pub(crate) commits: Option<f64>,
    /// `natter_store_records_total`.
    pub(crate) records: Option<f64>,
}

/// Samples natterd once per second boundary of the series (the caller calls
/// [`ServerProbe::sample`] when [`ServerProbe::due`] says so, from the thread that
/// watches the run) and once at the end ([`ServerProbe::finish`]).
#[derive(Debug)]
pub(crate) struct ServerProbe<'a> {
    target: &'a Target,
    /// By boundary: `samples[k]` was taken at (or soon after) second `k`; `None` where
    /// the watcher was late past the next boundary.
    samples: Vec<Option<ServerSample>>,
    /// The next boundary to sample, ns since the origin.
    next_ns: u64,
    /// `/metrics` failed once (warned once, not every second).
    warned: bool,
}

impl<'a> ServerProbe<'a> {
    /// A probe of `target` whose first sample is due at the origin.
    pub(crate) fn new(target: &'a Target) -> ServerProbe<'a> {
        ServerProbe {
            target,
            samples: Vec::new(),
            next_ns: 0,
            warned: false,
        }
    }

    /// Whether a boundary has passed since the last sample (`at_ns` since the origin).
    pub(crate) fn due(&self, at_ns: u64) -> bool {
        at_ns >= self.next_ns
    }

    /// Samples natterd now (`at_ns` since the origin) for the last boundary passed;
    /// `in_flight` is the scenario's count of unanswered sends, if it has one.
    pub(crate) fn sample(&mut self, at_ns: u64, in_flight: Option<i64>) {
        let boundary = at_ns / SECOND_NS;
        let sample = self.read(at_ns, in_flight);
        self.put(boundary, sample);
        self.next_ns = boundary.saturating_add(1).saturating_mul(SECOND_NS);
    }

    /// The sample that closes the last (partial) second, at the run's end `at_ns`.
    pub(crate) fn finish(&mut self, at_ns: u64, in_flight: Option<i64>) {
        let sample = self.read(at_ns, in_flight);
        // The right edge of the second `at_ns` lies in (a boundary itself if whole).
        self.put(at_ns.div_ceil(SECOND_NS), sample);
    }

    /// The samples by boundary.
    pub(crate) fn into_samples(self) -> Vec<Option<ServerSample>> {
        self.samples
    }

    fn put(&mut self, boundary: u64, sample: ServerSample) {
        let Some(index) = usize::try_from(boundary).ok().filter(|&i| i <= MAX_SECONDS) else {
            return;
        };
        if index >= self.samples.len() {
            self.samples.resize(index + 1, None);
        }
        if let Some(slot) = self.samples.get_mut(index) {
            *slot = Some(sample);
        }
    }

    fn read(&mut self, at_ns: u64, in_flight: Option<i64>) -> ServerSample {
        let (commits, records) = match self.target.http.metrics() {
            Ok(text) => (
                metric_sum(&text, "natter_store_commits_total"),
                metric_sum(&text, "natter_store_records_total"),
            ),
            Err(e) => {
                if !self.warned {
                    eprintln!("warning: cannot read natterd's /metrics for the series: {e}");
                    self.warned = true;
                }
                (None, None)
            }
        };
        ServerSample {
            at_ns,
            in_flight,
            rss: self.target.server_rss(),
            commits,
            records,
        }
    }
}

/// One second of a run. Rates are per second of the time the row covers (a whole
/// second except the last row's).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Row {
    /// Start of the second, whole seconds since the series' origin.
    pub(crate) t_s: u64,
    /// Seconds the row covers (1 but for the run's last, partial, second).
    pub(crate) span_s: f64,
    /// Acks that arrived in it, per second.
    pub(crate) acked_per_sec: f64,
    /// Deliveries that arrived in it, per second.
    pub(crate) delivered_per_sec: f64,
    /// Median latency of the second's acks, µs.
    pub(crate) ack_p50_us: Option<u64>,
    /// 99th percentile latency of the second's acks, µs.
    pub(crate) ack_p99_us: Option<u64>,
    /// Median latency of the second's deliveries, µs.
    pub(crate) deliver_p50_us: Option<u64>,
    /// 99th percentile latency of the second's deliveries, µs.
    pub(crate) deliver_p99_us: Option<u64>,
    /// Unanswered sends at the end of the second.
    pub(crate) in_flight: Option<i64>,
    /// natterd's resident memory at the end of the second, bytes.
    pub(crate) server_rss_bytes: Option<u64>,
    /// natterd's group commits in the second, per second.
    pub(crate) commits_per_sec: Option<f64>,
    /// Store records per group commit in the second.
    pub(crate) records_per_commit: Option<f64>,
    /// A whole second inside the measured phase: one of those the summary figures count.
    pub(crate) counted: bool,
}

/// The summary of a series' counted seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct SeriesStats {
    /// Counted seconds.
    pub(crate) seconds: usize,
    /// The slowest counted second's acks per second.
    pub(crate) min_second_msgs_per_sec: f64,
    /// The median of the counted seconds' acks per second (the mean of the middle two
    /// for an even count).
    pub(crate) median_second_msgs_per_sec: f64,
    /// The highest per-second ack p99 among the counted seconds, µs.
    pub(crate) worst_second_ack_p99_us: Option<u64>,
    /// The highest per-second delivery p99 among the counted seconds, µs.
    pub(crate) worst_second_deliver_p99_us: Option<u64>,
}

/// One row per second of a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Series {
    /// The rows, second 0 first.
    pub(crate) rows: Vec<Row>,
}

impl Series {
    /// Joins the arrivals and natterd's samples into rows, from the origin to `end_ns`
    /// (the end of the run, ns since the origin). `measured` is the measured phase
    /// (`start_ns..end_ns` since the origin); the whole seconds inside it are the
    /// counted ones.
    pub(crate) fn build(
        seconds: &Seconds,
        samples: &[Option<ServerSample>],
        end_ns: u64,
        measured: std::ops::Range<u64>,
    ) -> Series {
        let count = usize::try_from(end_ns.div_ceil(SECOND_NS))
            .unwrap_or(MAX_SECONDS)
            .max(seconds.len())
            .min(MAX_SECONDS);
        let rows = (0..count)
            .filter_map(|k| {
                let start = (k as u64).saturating_mul(SECOND_NS);
                let end = start.saturating_add(SECOND_NS);
                let covered = end.min(end_ns.max(start)).saturating_sub(start);
                let span_s = if covered == 0 { 1.0 } else { covered as f64 / 1e9 };
                let second = seconds.seconds.get(k);
                if covered == 0 && second.is_none() {
                    return None;
                }
                let (ack_p50_us, ack_p99_us) = p50_p99(second.and_then(|s| s.ack.as_ref()));
                let (deliver_p50_us, deliver_p99_us) = p50_p99(second.and_then(|s| s.deliver.as_ref()));
                let left = samples.get(k).copied().flatten();
                let right = samples.get(k + 1).copied().flatten();
                let (commits_per_sec, records_per_commit) = store_rates(left, right);
                Some(Row {
                    t_s: k as u64,
                    span_s,
                    acked_per_sec: second.map_or(0, |s| s.acked) as f64 / span_s,
                    delivered_per_sec: second.map_or(0, |s| s.delivered) as f64 / span_s,
                    ack_p50_us,
                    ack_p99_us,
                    deliver_p50_us,
                    deliver_p99_us,
                    in_flight: right.and_then(|s| s.in_flight),
                    server_rss_bytes: right.and_then(|s| s.rss),
                    commits_per_sec,
                    records_per_commit,
                    counted: start >= measured.start && end <= measured.end && end <= end_ns,
                })
            })
            .collect();
        Series { rows }
    }

    /// The summary of the counted seconds, `None` when no second was counted (a
    /// measured phase shorter than one whole second).
    pub(crate) fn stats(&self) -> Option<SeriesStats> {
        let counted: Vec<&Row> = self.rows.iter().filter(|r| r.counted).collect();
        let mut rates: Vec<f64> = counted.iter().map(|r| r.acked_per_sec).collect();
        rates.sort_by(f64::total_cmp);
        let min = *rates.first()?;
        let mid = rates.len() / 2;
        let median = if rates.len().is_multiple_of(2) {
            (rates.get(mid - 1)? + rates.get(mid)?) / 2.0
        } else {
            *rates.get(mid)?
        };
        Some(SeriesStats {
            seconds: counted.len(),
            min_second_msgs_per_sec: min,
            median_second_msgs_per_sec: median,
            worst_second_ack_p99_us: counted.iter().filter_map(|r| r.ack_p99_us).max(),
            worst_second_deliver_p99_us: counted.iter().filter_map(|r| r.deliver_p99_us).max(),
        })
    }

    /// The series as CSV: [`CSV_HEADER`], then one line per row; a figure that was
    /// not measured is an empty field.
    pub(crate) fn to_csv(&self) -> String {
        let mut out = format!("{CSV_HEADER}\n");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{},{:.1},{:.1},{},{},{},{},{},{},{},{},{}",
                r.t_s,
                r.acked_per_sec,
                r.delivered_per_sec,
                field(r.ack_p50_us),
                field(r.ack_p99_us),
                field(r.deliver_p50_us),
                field(r.deliver_p99_us),
                field(r.in_flight),
                field(r.server_rss_bytes),
                field(r.commits_per_sec.map(|v| format!("{v:.1}"))),
                field(r.records_per_commit.map(|v| format!("{v:.2}"))),
                u8::from(r.counted),
            );
        }
        out
    }

    /// Writes [`Series::to_csv`] to `path`.
    ///
    /// # Errors
    /// [`BenchError::Io`] if the file cannot be written.
    pub(crate) fn write_csv(&self, path: &Path) -> Result<(), BenchError> {
        fs::write(path, self.to_csv())?;
        Ok(())
    }

    /// A compact table for stdout, one line per second (`*` marks the counted ones).
    pub(crate) fn table(&self) -> String {
        let mut out = String::from(
            "     t   acked/s  deliver/s  ack p50 ms  ack p99 ms  dlv p99 ms  in flight   rss MiB  commits/s  rec/commit\n",
        );
        let ms = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |us| format!("{:.2}", us as f64 / 1e3));
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{}{:>5} {:>9.0} {:>10.0} {:>11} {:>11} {:>11} {:>10} {:>9} {:>10} {:>11}",
                if r.counted { '*' } else { ' ' },
                r.t_s,
                r.acked_per_sec,
                r.delivered_per_sec,
                ms(r.ack_p50_us),
                ms(r.ack_p99_us),
                ms(r.deliver_p99_us),
                field(r.in_flight),
                r.server_rss_bytes.map_or_else(
                    || "-".to_owned(),
                    |b| format!("{:.1}", b as f64 / (1 << 20) as f64)
                ),
                r.commits_per_sec
                    .map_or_else(|| "-".to_owned(), |v| format!("{v:.0}")),
                r.records_per_commit
                    .map_or_else(|| "-".to_owned(), |v| format!("{v:.1}")),
            );
        }
        out
    }

    /// Draws the series as an SVG chart at `path`: acks and deliveries per second on
    /// top, the per-second ack and delivery p99 (ms, log scale) below, the measured
    /// phase's counted seconds shaded in both. Text is SVG `<text>`: no font is read.
    ///
    /// # Errors
    /// [`BenchError::Io`] if the chart cannot be drawn or written.
    pub(crate) fn write_svg(&self, path: &Path, title: &str) -> Result<(), BenchError> {
        let svg = self
            .to_svg(title)
            .map_err(|e| BenchError::Io(io::Error::other(e)))?;
        fs::write(path, svg)?;
        Ok(())
    }

    /// The SVG text of [`Series::write_svg`].
    fn to_svg(&self, title: &str) -> Result<String, String> {
        use plotters::prelude::*;

        let err = |e: DrawingAreaErrorKind<_>| e.to_string();
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, SVG_SIZE).into_drawing_area();
            root.fill(&WHITE).map_err(err)?;
            let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
            let (upper, lower) = root.split_vertically(SVG_SIZE.1 / 2 - 20);
            let x_max = self.rows.last().map_or(1.0, |r| r.t_s as f64 + r.span_s).max(1.0);
            // A row's figures are drawn at the middle of the time it covers.
            let mid = |r: &Row| r.t_s as f64 + r.span_s / 2.0;
            let counted: Vec<&Row> = self.rows.iter().filter(|r| r.counted).collect();
            let shade = |chart_y: (f64, f64)| {
                counted.first().zip(counted.last()).map(|(first, last)| {
                    Rectangle::new(
                        [
                            (first.t_s as f64, chart_y.0),
                            (last.t_s as f64 + last.span_s, chart_y.1),
                        ],
                        RGBColor(235, 242, 250).filled(),
                    )
                })
            };

            let rate_max = self
                .rows
                .iter()
                .map(|r| r.acked_per_sec.max(r.delivered_per_sec))
                .fold(0.0, f64::max)
                .max(1.0)
                * 1.1;
            let mut rates = ChartBuilder::on(&upper)
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(80)
                .build_cartesian_2d(0.0..x_max, 0.0..rate_max)
                .map_err(err)?;
            rates
                .configure_mesh()
                .x_desc("seconds since the first send")
                .y_desc("per second")
                .y_label_formatter(&|v| format!("{:.0}k", v / 1e3))
                .light_line_style(WHITE)
                .draw()
                .map_err(err)?;
            rates.draw_series(shade((0.0, rate_max))).map_err(err)?;
            let blue = RGBColor(31, 119, 180);
            let orange = RGBColor(255, 127, 14);
            rates
                .draw_series(LineSeries::new(
                    self.rows.iter().map(|r| (mid(r), r.acked_per_sec)),
                    blue.stroke_width(2),
                ))
                .map_err(err)?
                .label("acked / s")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2)));
            rates
                .draw_series(LineSeries::new(
                    self.rows.iter().map(|r| (mid(r), r.delivered_per_sec)),
                    orange.stroke_width(1),
                ))
                .map_err(err)?
                .label("delivered / s")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], orange.stroke_width(2)));
            rates
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;

            let p99s = || {
                self.rows
                    .iter()
                    .flat_map(|r| [r.ack_p99_us, r.deliver_p99_us])
                    .flatten()
                    .map(|us| us as f64 / 1e3)
            };
            let lo = p99s().fold(f64::INFINITY, f64::min);
            let hi = p99s().fold(0.0, f64::max);
            let (lo, hi) = if lo.is_finite() && hi > 0.0 {
                ((lo / 2.0).max(0.001), hi * 2.0)
            } else {
                (0.01, 1_000.0)
            };
            let mut latency = ChartBuilder::on(&lower)
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(80)
                .build_cartesian_2d(0.0..x_max, (lo..hi).log_scale())
                .map_err(err)?;
            latency
                .configure_mesh()
                .x_desc("seconds since the first send")
                .y_desc("p99 of the second, ms (log)")
                .y_label_formatter(&|v| {
                    if *v >= 1.0 {
                        format!("{v:.0}")
                    } else {
                        format!("{v:.2}")
                    }
                })
                .light_line_style(WHITE)
                .draw()
                .map_err(err)?;
            latency.draw_series(shade((lo, hi))).map_err(err)?;
            let red = RGBColor(214, 39, 40);
            let green = RGBColor(44, 160, 44);
            for (name, color, pick) in [
                (
                    "ack p99",
                    red,
                    (|r: &Row| r.ack_p99_us) as fn(&Row) -> Option<u64>,
                ),
                ("delivery p99", green, |r: &Row| r.deliver_p99_us),
            ] {
                // A second without acks leaves a gap, not a zero (log scale).
                latency
                    .draw_series(
                        segments(&self.rows, pick)
                            .into_iter()
                            .map(|points| PathElement::new(points, color.stroke_width(2))),
                    )
                    .map_err(err)?
                    .label(name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            }
            latency
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
            root.present().map_err(err)?;
        }
        Ok(svg)
    }
}

/// The runs of consecutive rows where `pick` has a value, as (second's middle, ms)
/// points: one polyline each, so a second without a value is a gap.
fn segments(rows: &[Row], pick: fn(&Row) -> Option<u64>) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for r in rows {
        match pick(r) {
            Some(us) => {
                if let Some(last) = out.last_mut() {
                    last.push((r.t_s as f64 + r.span_s / 2.0, us as f64 / 1e3));
                }
            }
            None => {
                if out.last().is_some_and(|l| !l.is_empty()) {
                    out.push(Vec::new());
                }
            }
        }
    }
    out.retain(|l| !l.is_empty());
    out
}

/// Commits per second and records per commit between two samples, where both have the
/// counters and time passed.
fn store_rates(left: Option<ServerSample>, right: Option<ServerSample>) -> (Option<f64>, Option<f64>) {
    let (Some(left), Some(right)) = (left, right) else {
        return (None, None);
    };
    let secs = right.at_ns.saturating_sub(left.at_ns) as f64 / 1e9;
    let commits = right.commits.zip(left.commits).map(|(r, l)| r - l);
    let records = right.records.zip(left.records).map(|(r, l)| r - l);
    let per_sec = commits.filter(|_| secs > 0.0).map(|c| c / secs);
    let per_commit = commits.zip(records).filter(|(c, _)| *c > 0.0).map(|(c, r)| r / c);
    (per_sec, per_commit)
}

/// A CSV / table field: the value, or empty.
fn field<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(String::new, |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = SECOND_NS;

    fn sample(at_ns: u64, commits: f64, records: f64) -> Option<ServerSample> {
        Some(ServerSample {
            at_ns,
            in_flight: Some(7),
            rss: Some(1 << 20),
            commits: Some(commits),
            records: Some(records),
        })
    }

    #[test]
    fn arrivals_are_bucketed_by_the_second_they_arrived_in() {
        let mut s = Seconds::new();
        s.ack(0, 10);
        s.ack(S - 1, 20);
        s.ack(S, 30);
        s.delivery(2 * S + 5, 40);
        assert_eq!(s.len(), 3);
        assert_eq!(
            s.seconds
                .iter()
                .map(|x| (x.acked, x.delivered))
                .collect::<Vec<_>>(),
            [(2, 0), (1, 0), (0, 1)]
        );
        s.ack(MAX_SECONDS as u64 * S, 1);
        assert_eq!(
            (s.len(), s.beyond),
            (3, 1),
            "past a day: counted apart, no growth"
        );
    }

    #[test]
    fn percentiles_are_of_each_second_alone() {
        let mut s = Seconds::new();
        for us in 1..=100 {
            s.ack(S / 2, us * 1_000); // second 0: 1 .. 100 ms
        }
        s.ack(S + 1, 900_000); // second 1: one slow ack
        let series = Series::build(&s, &[], 2 * S, 0..2 * S);
        let [first, second] = series.rows.as_slice() else {
            panic!("{:?}", series.rows)
        };
        // 2 significant digits: within 1 %.
        let near = |v: Option<u64>, want: u64| v.is_some_and(|v| v.abs_diff(want) * 100 <= want);
        assert!(near(first.ack_p50_us, 50_000), "{first:?}");
        assert!(near(first.ack_p99_us, 99_000), "{first:?}");
        assert!(near(second.ack_p99_us, 900_000), "{second:?}");
        assert_eq!(second.deliver_p99_us, None, "no deliveries: not measured");
        assert_eq!((first.acked_per_sec, second.acked_per_sec), (100.0, 1.0));
    }

    #[test]
    fn threads_merge_into_one_record() {
        let mut a = Seconds::new();
        a.ack(10, 5);
        let mut b = Seconds::new();
        b.ack(20, 500);
        b.delivery(3 * S, 9);
        a.merge(&b);
        assert_eq!(a.len(), 4);
        let series = Series::build(&a, &[], 4 * S, 0..4 * S);
        assert_eq!(series.rows.first().map(|r| r.acked_per_sec), Some(2.0));
        assert_eq!(series.rows.get(3).map(|r| r.delivered_per_sec), Some(1.0));
        assert!(
            series
                .rows
                .first()
                .and_then(|r| r.ack_p99_us)
                .is_some_and(|v| v >= 495)
        );
    }

    #[test]
    fn partial_seconds_and_seconds_outside_the_measured_phase_are_not_counted() {
        // Warm-up 0.5 s, measured 0.5 s .. 4.5 s, run ends at 5.2 s.
        let mut s = Seconds::new();
        let rates = [1, 50, 10, 30, 20, 2];
        let latencies_us = [9_000, 200, 300, 250, 8_000, 7_000];
        for (k, (&n, &us)) in rates.iter().zip(&latencies_us).enumerate() {
            for i in 0..n {
                s.ack(k as u64 * S + i, us);
            }
        }
        let series = Series::build(&s, &[], 5 * S + S / 5, S / 2..4 * S + S / 2);
        assert_eq!(series.rows.len(), 6);
        let counted: Vec<u64> = series.rows.iter().filter(|r| r.counted).map(|r| r.t_s).collect();
        assert_eq!(counted, [1, 2, 3], "0 and 4 are partly outside, 5 is the drain");
        let last = series.rows.last().unwrap();
        assert!((last.span_s - 0.2).abs() < 1e-9, "{last:?}");
        assert!((last.acked_per_sec - 10.0).abs() < 1e-9, "2 acks in 0.2 s");
        let stats = series.stats().unwrap();
        assert_eq!(stats.seconds, 3);
        assert_eq!(stats.min_second_msgs_per_sec, 10.0);
        assert_eq!(stats.median_second_msgs_per_sec, 30.0);
        let worst = stats.worst_second_ack_p99_us.unwrap();
        assert!(
            (300..=303).contains(&worst),
            "second 2's 300 µs, not 0's or 4's: {worst}"
        );
        assert_eq!(stats.worst_second_deliver_p99_us, None);
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        let mut s = Seconds::new();
        for (k, n) in [4u64, 1, 3, 2].into_iter().enumerate() {
            for i in 0..n {
                s.ack(k as u64 * S + i, 1);
            }
        }
        let stats = Series::build(&s, &[], 4 * S, 0..4 * S).stats().unwrap();
        assert_eq!(stats.median_second_msgs_per_sec, 2.5);
        assert_eq!(stats.min_second_msgs_per_sec, 1.0);
        assert_eq!(
            Series::build(&s, &[], 4 * S, S / 2..S + S / 3).stats(),
            None,
            "no whole second measured"
        );
    }

    #[test]
    fn server_columns_come_from_the_samples_around_each_second() {
        let mut s = Seconds::new();
        s.ack(S / 2, 1);
        s.ack(S + S / 2, 1);
        // Boundary 1 sampled 10 ms late; boundary 2 missed (watcher late).
        let samples = [
            sample(0, 100.0, 1_000.0),
            sample(S + S / 100, 300.0, 11_000.0),
            None,
        ];
        let series = Series::build(&s, &samples, 2 * S, 0..2 * S);
        let first = &series.rows[0];
        assert!(
            (first.commits_per_sec.unwrap() - 200.0 / 1.01).abs() < 1e-6,
            "{first:?}"
        );
        assert_eq!(first.records_per_commit, Some(50.0));
        assert_eq!(
            (first.in_flight, first.server_rss_bytes),
            (Some(7), Some(1 << 20))
        );
        let second = &series.rows[1];
        assert_eq!((second.commits_per_sec, second.in_flight), (None, None));
        // No commits in a second: a rate of 0, no records per commit.
        assert_eq!(
            store_rates(sample(0, 5.0, 9.0), sample(S, 5.0, 9.0)),
            (Some(0.0), None)
        );
    }

    #[test]
    fn the_probe_files_samples_by_boundary() {
        let target = Target::unreachable_for_tests();
        let mut probe = ServerProbe::new(&target);
        assert!(probe.due(0));
        probe.sample(3_000_000, Some(4));
        assert!(!probe.due(S - 1) && probe.due(S));
        probe.sample(2 * S + 1, None); // boundary 1 missed
        probe.finish(2 * S + S / 2, Some(0));
        let samples = probe.into_samples();
        let at: Vec<Option<u64>> = samples.iter().map(|s| s.map(|s| s.at_ns)).collect();
        assert_eq!(at, [Some(3_000_000), None, Some(2 * S + 1), Some(2 * S + S / 2)]);
        assert_eq!(samples[0].and_then(|s| s.in_flight), Some(4));
        assert_eq!(samples[0].and_then(|s| s.commits), None, "no /metrics");
    }

    #[test]
    fn csv_has_the_header_and_one_line_per_second() {
        let mut s = Seconds::new();
        s.ack(1, 1_500);
        s.delivery(2, 2_500);
        let samples = [sample(0, 0.0, 0.0), sample(S, 10.0, 25.0)];
        let csv = Series::build(&s, &samples, S + S / 2, 0..S).to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3, "{csv}");
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines[0].split(',').count(), 12);
        let first: Vec<&str> = lines[1].split(',').collect();
        assert_eq!(first[0], "0");
        assert_eq!(first[1], "1.0");
        assert_eq!(&first[7..], ["7", "1048576", "10.0", "2.50", "1"]);
        let p50: u64 = first[3].parse().unwrap();
        assert!(p50.abs_diff(1_500) <= 15, "{p50}");
        // The drain's half second: nothing measured, empty fields, not counted.
        assert_eq!(lines[2], "1,0.0,0.0,,,,,,,,,0");
    }

    #[test]
    fn the_svg_is_a_chart_with_both_panels() {
        let mut s = Seconds::new();
        for k in 0..5u64 {
            for i in 0..(100 + 10 * k) {
                s.ack(k * S + i, 1_000 + 100 * i);
                s.delivery(k * S + i, 2_000 + 100 * i);
            }
        }
        let series = Series::build(&s, &[], 5 * S, S..4 * S);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.svg");
        series.write_svg(&path, "one2one test").unwrap();
        let svg = fs::read_to_string(&path).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{svg:.200}"
        );
        for text in [
            "one2one test",
            "acked / s",
            "delivered / s",
            "ack p99",
            "delivery p99",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        assert!(svg.matches("<polyline").count() >= 4, "two lines per panel");
        // An empty series still draws (axes only) instead of failing.
        assert!(Series::default().to_svg("empty").is_ok());
    }

    #[test]
    fn segments_break_at_seconds_without_values() {
        let row = |t_s, v| Row {
            t_s,
            span_s: 1.0,
            ack_p99_us: v,
            ..Row::default()
        };
        let rows = [
            row(0, Some(1_000)),
            row(1, None),
            row(2, Some(2_000)),
            row(3, Some(4_000)),
        ];
        let parts = segments(&rows, |r| r.ack_p99_us);
        assert_eq!(parts, [vec![(0.5, 1.0)], vec![(2.5, 2.0), (3.5, 4.0)]]);
    }
}
