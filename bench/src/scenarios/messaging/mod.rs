//! The machinery the messaging scenarios (`one2one`, `group`) share: a scenario
//! prepares its accounts, friendships and chats over HTTP into a [`Plan`] (who is in
//! which chat, who sends), and [`run`] does the rest.
//!
//! 1. **Connect.** `--threads` driver threads ([`driver`]) each open and authenticate
//!    a share of the users' connections (one per user), then all meet at a barrier.
//! 2. **Send.** From a common start the senders send for `--warmup` (not counted)
//!    plus `--duration` (measured). Closed loop (no `--rate`): each sender keeps
//!    `--window` sends in flight, sending the next as soon as one is acknowledged.
//!    Open loop (`--rate N`): N messages per second in total on a fixed
//!    [`schedule`], whatever the server does; latency counts from each message's
//!    *intended* send instant, so stalls show instead of hiding (no coordinated
//!    omission). Every text is a [`stamp`]: its intended send instant, sender and
//!    counter, so a recipient measures send → deliver without shared state.
//! 3. **Drain.** Sending stops; the threads wait (at most `--drain-timeout`) until
//!    every send is answered and every expected delivery arrived.
//! 4. **Account.** A message is *measured* when its intended send instant lies in the
//!    measured phase: `sent`, `acked`, `delivered` and the latency histograms count
//!    only those (acks and deliveries that arrive during the drain included).
//!    Correctness counts everything: `duplicated` and `reordered` from each device's
//!    view of its chat ([`accounting`]), `lost` = acknowledged `(chat, seq)`s that a
//!    member connected from before the first send to the end never received (one per
//!    message and member), `errors` = failed setup steps, failed handshakes, lost
//!    connections, `Error` frames and unexpected answers.

mod accounting;
mod driver;
mod schedule;
pub(crate) mod setup;
mod stamp;

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Barrier, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use hdrhistogram::Histogram;

use self::accounting::SeqSet;
use self::driver::{Driver, DriverResult, DriverSpec, Tally};
use self::schedule::Schedule;
use crate::cpu::CpuSample;
use crate::error::BenchError;
use crate::interrupt;
use crate::report::Report;
use crate::scenarios::Options;
use crate::series::{Series, ServerProbe};
use crate::sockets::Sources;
use crate::target::{RssSampler, Target, metric_sum};

/// Files the benchmark needs besides its connections: standard streams, epoll
/// instances, the HTTP connection pool, natterd's pipes and log.
const FD_MARGIN: u64 = 100;
/// Most driver threads.
const MAX_THREADS: usize = 64;
/// Between the barrier and the first send, so every thread is back in its loop.
const START_DELAY: Duration = Duration::from_millis(20);
/// How often the coordinator prints the run's progress.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// How often the coordinator checks the clock for the phase boundaries at which
/// it reads the CPU counters.
const CPU_SAMPLE_INTERVAL: Duration = Duration::from_millis(10);
/// Failure reasons shown after the run.
const REASONS_SHOWN: usize = 8;
/// Longest `--text-bytes`: 100,000 characters of at most 4 bytes each would be
/// 400,000 bytes, but the stamp and filler are ASCII, so 100,000 bytes is the most a
/// server accepts (the protocol's limit is in characters).
const MAX_TEXT_BYTES: usize = 100_000;

/// The flags the messaging scenarios share.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "one2one / group options")]
pub(crate) struct MessagingArgs {
    /// Closed loop (no --rate): sends in flight per sending user.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub(crate) window: usize,
    /// Event-loop threads that hold the connections (the machine's cores are shared
    /// with a spawned natterd).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) threads: usize,
    /// Sending before the measured phase; its messages are not counted.
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration)]
    pub(crate) warmup: Duration,
    /// Longest wait after the measured phase for outstanding acks and deliveries.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub(crate) drain_timeout: Duration,
    /// Conversation features on (issue 15): every device says Hello{conversation} and acks what
    /// it received once a second, every sender sends Typing once a second; reports the Receipt
    /// and Typing frames received (`receipt_frames`, `receipt_frames_per_message`, `typing_frames`).
    #[arg(long)]
    pub(crate) conversation: bool,
}

/// Who is in which chat and who sends, prepared over HTTP by a scenario.
#[derive(Clone, Debug, Default)]
pub(crate) struct Plan {
    /// The chats messages go to.
    pub(crate) chats: Vec<ChatPlan>,
    /// One connection each.
    pub(crate) users: Vec<UserPlan>,
    /// Setup steps that failed (accounts, friendships, chats); counted in `errors`.
    pub(crate) setup_errors: u64,
}

/// One chat of a [`Plan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChatPlan {
    /// The chat.
    pub(crate) chat_id: u64,
    /// Its last `seq` before the run (0 for a new chat).
    pub(crate) baseline: u64,
}

/// One user of a [`Plan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UserPlan {
    /// The user.
    pub(crate) user_id: u64,
    /// The device token of its login.
    pub(crate) token: String,
    /// Index of its chat in [`Plan::chats`].
    pub(crate) chat: usize,
    /// Whether it sends (everyone receives).
    pub(crate) sends: bool,
}

/// The phases of the run, in nanoseconds since [`Shared::origin`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Timeline {
    /// The first send.
    pub(crate) send_start: u64,
    /// End of the warm-up, start of the measured phase.
    pub(crate) measure_start: u64,
    /// End of the measured phase: no send is due from here on.
    pub(crate) send_end: u64,
    /// The drain gives up here.
    pub(crate) drain_deadline: u64,
}

impl Timeline {
    /// The phases starting at `send_start`.
    fn new(send_start: u64, warmup: Duration, duration: Duration, drain: Duration) -> Timeline {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let measure_start = send_start.saturating_add(ns(warmup));
        let send_end = measure_start.saturating_add(ns(duration));
        Timeline {
            send_start,
            measure_start,
            send_end,
            drain_deadline: send_end.saturating_add(ns(drain)),
        }
    }

    /// Whether a message meant to be sent at `sent_ns` is measured.
    pub(crate) fn counts(&self, sent_ns: u64) -> bool {
        (self.measure_start..self.send_end).contains(&sent_ns)
    }
}

/// What the driver threads and the coordinator share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The clock origin of every `*_ns` value (and of the stamps).
    pub(crate) origin: Instant,
    /// Driver threads.
    pub(crate) threads: usize,
    /// Every thread (and the coordinator) has finished connecting.
    pub(crate) connected: Barrier,
    /// The coordinator has set the timeline.
    pub(crate) go: Barrier,
    /// The phases, set between the barriers.
    pub(crate) timeline: OnceLock<Timeline>,
    /// Authenticated connections per plan chat.
    pub(crate) online: Vec<AtomicU64>,
    /// Sends not answered yet (net of all threads' published changes).
    pub(crate) in_flight: AtomicI64,
    /// Deliveries the acknowledged sends owe the connected members.
    pub(crate) expected: AtomicU64,
    /// Deliveries received (first time each).
    pub(crate) received: AtomicU64,
    /// Sends acknowledged.
    pub(crate) acked: AtomicU64,
    /// Threads that stopped sending and published their last sends.
    pub(crate) stopped: AtomicUsize,
}

/// Checks the shared flags and the file limit for `connections` connections.
///
/// # Errors
/// [`BenchError::Usage`] when a flag is out of range or the connections do not fit
/// in this process's open-file limit.
pub(crate) fn check_args(
    args: &MessagingArgs,
    options: &Options,
    connections: usize,
    open_files: u64,
) -> Result<(), BenchError> {
    if args.window == 0 {
        return Err(BenchError::Usage("--window must be at least 1".into()));
    }
    if !(1..=MAX_THREADS).contains(&args.threads) {
        return Err(BenchError::Usage(format!("--threads must be 1 to {MAX_THREADS}")));
    }
    if options.rate == Some(0) {
        return Err(BenchError::Usage(
            "--rate must be at least 1 message per second".into(),
        ));
    }
    if options.duration.is_zero() {
        return Err(BenchError::Usage("--duration must be longer than 0".into()));
    }
    if let Some(bytes) = options.text_bytes
        && !(stamp::TEXT_LEN..=MAX_TEXT_BYTES).contains(&bytes)
    {
        return Err(BenchError::Usage(format!(
            "--text-bytes must be {} to {MAX_TEXT_BYTES} for one2one and group (every text starts \
             with the {}-byte stamp)",
            stamp::TEXT_LEN,
            stamp::TEXT_LEN
        )));
    }
    let needed = (connections as u64).saturating_add(FD_MARGIN);
    if needed > open_files {
        return Err(BenchError::Usage(format!(
            "{connections} connections need about {needed} open files, but this process may open at \
             most {open_files} (RLIMIT_NOFILE hard limit); use fewer users"
        )));
    }
    Ok(())
}

/// natterd's store counters, from `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct StoreCounters {
    commits: f64,
    records: f64,
    commit_seconds_sum: f64,
}

impl StoreCounters {
    /// The counters now, `None` (with a warning) if `/metrics` cannot be read.
    fn read(target: &Target) -> Option<StoreCounters> {
        match target.http.metrics() {
            Ok(text) => Some(StoreCounters {
                commits: metric_sum(&text, "natter_store_commits_total")?,
                records: metric_sum(&text, "natter_store_records_total")?,
                commit_seconds_sum: metric_sum(&text, "natter_store_commit_seconds_sum").unwrap_or(0.0),
            }),
            Err(e) => {
                eprintln!("warning: cannot read natterd's /metrics: {e}");
                None
            }
        }
    }
}

/// Runs the plan against `target` and reports the figures of scenario `name`.
///
/// # Errors
/// [`BenchError::Setup`] if nobody can send; [`BenchError::Interrupted`] after
/// Ctrl-C; [`BenchError::Io`] if an event loop fails.
pub(crate) fn run(
    target: &Target,
    options: &Options,
    args: &MessagingArgs,
    plan: &Plan,
    name: &str,
) -> Result<Report, BenchError> {
    let sender_index = sender_indexes(plan);
    let senders = sender_index.iter().flatten().count() as u64;
    if senders == 0 {
        return Err(BenchError::Setup("no sending user could be prepared".into()));
    }
    let threads = args.threads.clamp(1, plan.users.len().max(1));
    let schedule = match options.rate {
        Some(rate) => Some(
            Schedule::new(rate, senders)
                .ok_or_else(|| BenchError::Usage("--rate must be at least 1".into()))?,
        ),
        None => None,
    };
    let shared = Shared {
        origin: Instant::now(),
        threads,
        connected: Barrier::new(threads + 1),
        go: Barrier::new(threads + 1),
        timeline: OnceLock::new(),
        online: plan.chats.iter().map(|_| AtomicU64::new(0)).collect(),
        in_flight: AtomicI64::new(0),
        expected: AtomicU64::new(0),
        received: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        stopped: AtomicUsize::new(0),
    };
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_secs() & 0xffff_ffff);
    let sources = Sources::for_server(target.dial.addr);
    let load = match options.rate {
        Some(rate) => format!("open loop, {rate} messages/s in total"),
        None => format!("closed loop, {} sends in flight per sender", args.window),
    };
    println!(
        "{name}: {} users in {} chats, {senders} sending ({load}); connecting with {threads} thread{}",
        plan.users.len(),
        plan.chats.len(),
        if threads == 1 { "" } else { "s" }
    );

    let mut before = None;
    let mut rss = None;
    let mut timeline = None;
    let mut cpu = (None, None);
    let mut probe = ServerProbe::new(target);
    let mut end_ns = 0;
    let results: Vec<DriverResult> = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let spec = DriverSpec {
                    id: t,
                    server: target.dial.clone(),
                    sources: sources.share(t, threads),
                    plan,
                    users: (t..plan.users.len()).step_by(threads).collect(),
                    sender_index: &sender_index,
                    window: args.window,
                    schedule: schedule.map(|s| {
                        s.cursor(
                            (t..plan.users.len())
                                .step_by(threads)
                                .filter_map(|u| sender_index.get(u).copied().flatten())
                                .collect(),
                        )
                    }),
                    run_id,
                    conversation: args.conversation,
                    shared: &shared,
                    padding: options
                        .text_bytes
                        .map_or(0, |b| b.saturating_sub(stamp::TEXT_LEN)),
                };
                let shared = &shared;
                scope.spawn(move || match Driver::new(spec) {
                    Ok(driver) => driver.run(),
                    Err(e) => {
                        shared.connected.wait();
                        shared.go.wait();
                        DriverResult::failed(format!("cannot create a poll instance: {e}"), plan.chats.len())
                    }
                })
            })
            .collect();

        shared.connected.wait();
        let connected: u64 = shared.online.iter().map(|n| n.load(Ordering::Acquire)).sum();
        println!(
            "{name}: {connected} of {} connections established; warm-up {:?}, measuring {:?}",
            plan.users.len(),
            args.warmup,
            options.duration
        );
        before = StoreCounters::read(target);
        rss = Some(RssSampler::start(target));
        let start = nanos(shared.origin.elapsed() + START_DELAY);
        let phases = Timeline::new(start, args.warmup, options.duration, args.drain_timeout);
        timeline = Some(phases);
        let _ = shared.timeline.set(phases);
        shared.go.wait();

        cpu = watch(&shared, &handles, phases, name, target.server_pid(), &mut probe);
        let results = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    DriverResult::failed("a driver thread panicked".into(), plan.chats.len())
                })
            })
            .collect();
        end_ns = nanos(shared.origin.elapsed()).saturating_sub(phases.send_start);
        probe.finish(end_ns, Some(shared.in_flight.load(Ordering::Acquire)));
        results
    });
    let after = StoreCounters::read(target);
    let server_rss = target.server_rss();
    let rss = rss.and_then(RssSampler::stop);

    if results.iter().any(|r| r.interrupted) {
        return Err(BenchError::Interrupted);
    }
    interrupt::check()?;
    if let Some(fatal) = results.iter().find_map(|r| r.fatal.clone()) {
        return Err(BenchError::Io(std::io::Error::other(fatal)));
    }
    let mut tally = Tally::new();
    let mut acked: Vec<SeqSet> = vec![SeqSet::default(); plan.chats.len()];
    let mut survivors = Vec::new();
    let mut connected = 0;
    for result in results {
        tally.merge(result.tally);
        for (all, mine) in acked.iter_mut().zip(&result.acked) {
            all.union_with(mine);
        }
        survivors.extend(result.survivors);
        connected += result.connected;
    }
    let lost: u64 = survivors
        .iter()
        .map(|(chat, tracker)| acked.get(*chat).map_or(0, |a| tracker.missing(a)))
        .sum();
    let acked_total: u64 = acked.iter().map(SeqSet::len).sum();

    let duration = options.duration.as_secs_f64();
    let mut report = Report::new(name, "tcp");
    report.duration_s = Some(duration);
    report.connections = Some(connected);
    report.sent = Some(tally.sent);
    report.acked = Some(tally.acked);
    report.delivered = Some(tally.delivered);
    report.msgs_per_sec = Some(per_sec(tally.acked, duration));
    report.deliveries_per_sec = Some(per_sec(tally.delivered, duration));
    [report.ack_p50_us, report.ack_p99_us, report.ack_p999_us] = percentiles(&tally.ack);
    [
        report.deliver_p50_us,
        report.deliver_p99_us,
        report.deliver_p999_us,
    ] = percentiles(&tally.deliver);
    report.lost = Some(lost);
    report.duplicated = Some(tally.duplicated);
    report.reordered = Some(tally.reordered);
    report.errors = Some(tally.errors + plan.setup_errors);
    report.server_rss_bytes = server_rss;
    if let Some(rss) = rss {
        report.server_rss_before_bytes = Some(rss.before);
        report.server_peak_rss_bytes = Some(rss.peak);
        report.server_rss_growth_bytes = Some(rss.growth());
    }
    report.errors_by_code = Some(tally.codes.clone());
    report.sends_skipped = Some(tally.skipped);
    report.text_bytes = Some(options.text_bytes.unwrap_or(stamp::TEXT_LEN) as u64);
    if let Some(t) = timeline {
        let measured = t.measure_start - t.send_start..t.send_end - t.send_start;
        report.set_series(Series::build(
            &tally.seconds,
            &probe.into_samples(),
            end_ns,
            measured,
        ));
    }
    if args.conversation {
        report.receipt_frames = Some(tally.receipts);
        report.typing_frames = Some(tally.typings);
        report.receipt_frames_per_message = Some(tally.receipts as f64 / tally.acked.max(1) as f64);
        println!(
            "{name}: {} Receipt and {} Typing frames received for {} acknowledged messages \
             ({:.3} receipts per message)",
            tally.receipts,
            tally.typings,
            tally.acked,
            tally.receipts as f64 / tally.acked.max(1) as f64
        );
    }
    if let (Some(before), Some(after)) = (before, after) {
        let commits = after.commits - before.commits;
        let records = after.records - before.records;
        if commits > 0.0 {
            report.records_per_commit = Some(records / commits);
            let phase = timeline.map_or(duration, |t| {
                (t.drain_deadline.min(nanos(shared.origin.elapsed())) - t.send_start) as f64 / 1e9
            });
            println!(
                "{name}: natterd made {commits:.0} commits of {:.1} records on average ({:.0} commits/s, \
                 {:.0} µs per commit on average) for {acked_total} acknowledged messages",
                records / commits,
                commits / phase.max(1e-9),
                (after.commit_seconds_sum - before.commit_seconds_sum) / commits * 1e6,
            );
        }
    }
    if let (Some(start), Some(end)) = cpu {
        println!(
            "{name}: CPU during the measured phase: {}",
            start.describe_until(&end)
        );
    }
    print_reasons(&tally, plan.setup_errors, name);
    Ok(report)
}

/// Each plan user's index among the senders (in plan order), `None` for receivers.
fn sender_indexes(plan: &Plan) -> Vec<Option<u64>> {
    let mut next = 0;
    plan.users
        .iter()
        .map(|user| {
            user.sends.then(|| {
                next += 1;
                next - 1
            })
        })
        .collect()
}

/// Prints the run's progress once per [`PROGRESS_INTERVAL`] and samples natterd for
/// the per-second series at each second since the first send, until every driver
/// thread has finished; returns the CPU counters at the start and the end of the
/// measured phase.
fn watch<T>(
    shared: &Shared,
    handles: &[thread::ScopedJoinHandle<'_, T>],
    timeline: Timeline,
    name: &str,
    server_pid: Option<u32>,
    probe: &mut ServerProbe<'_>,
) -> (Option<CpuSample>, Option<CpuSample>) {
    let mut last_acked = 0;
    let mut last_received = 0;
    let mut last = Instant::now();
    let mut next = last + PROGRESS_INTERVAL;
    let (mut cpu_start, mut cpu_end) = (None, None);
    while !handles.iter().all(|h| h.is_finished()) {
        thread::sleep(CPU_SAMPLE_INTERVAL.min(next.saturating_duration_since(Instant::now())));
        let at = nanos(shared.origin.elapsed());
        if cpu_start.is_none() && at >= timeline.measure_start {
            cpu_start = CpuSample::now(server_pid);
        }
        if cpu_end.is_none() && at >= timeline.send_end {
            cpu_end = CpuSample::now(server_pid);
        }
        if let Some(since) = at.checked_sub(timeline.send_start)
            && probe.due(since)
        {
            probe.sample(since, Some(shared.in_flight.load(Ordering::Acquire)));
        }
        let now = Instant::now();
        if now < next {
            continue;
        }
        // The phase of the middle of the interval the line reports on.
        let secs = now.duration_since(last).as_secs_f64();
        let mid = at.saturating_sub(nanos(now.duration_since(last) / 2));
        let phase = if mid < timeline.measure_start {
            "warm-up"
        } else if mid < timeline.send_end {
            "measuring"
        } else {
            "draining"
        };
        let acked = shared.acked.load(Ordering::Acquire);
        let received = shared.received.load(Ordering::Acquire);
        println!(
            "{name}: {:>6.1}s {phase:<9} acked {:>9.0}/s  delivered {:>10.0}/s  in flight {}",
            at.saturating_sub(timeline.send_start) as f64 / 1e9,
            (acked - last_acked) as f64 / secs,
            (received - last_received) as f64 / secs,
            shared.in_flight.load(Ordering::Acquire)
        );
        last_acked = acked;
        last_received = received;
        last = now;
        next = now + PROGRESS_INTERVAL;
    }
    (cpu_start, cpu_end)
}

/// Prints the most frequent failure reasons to stderr.
fn print_reasons(tally: &Tally, setup_errors: u64, name: &str) {
    if tally.reasons.is_empty() && setup_errors == 0 {
        return;
    }
    eprintln!("{name}: failures by reason:");
    if setup_errors > 0 {
        eprintln!("  {setup_errors:>8}  setup (accounts, friendships, chats)");
    }
    let mut reasons: Vec<(&String, &u64)> = tally.reasons.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1));
    for (reason, count) in reasons.into_iter().take(REASONS_SHOWN) {
        eprintln!("  {count:>8}  {reason}");
    }
    if tally.reasons.keys().any(|r| r.contains("rate_limited")) {
        eprintln!(
            "{name}: natterd rate-limits sends per connection; start it with `--send-rate-limit 10000000` \
             (or use --spawn)"
        );
    }
}

/// p50, p99 and p99.9 in µs, `None` for an empty histogram.
fn percentiles(histogram: &Histogram<u64>) -> [Option<u64>; 3] {
    if histogram.is_empty() {
        return [None; 3];
    }
    [0.5, 0.99, 0.999].map(|q| Some(histogram.value_at_quantile(q)))
}

/// `count / secs`, 0 for an empty interval.
fn per_sec(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// `d` in nanoseconds, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_messages_meant_for_the_measured_phase_count() {
        let t = Timeline::new(
            1_000,
            Duration::from_nanos(100),
            Duration::from_nanos(50),
            Duration::from_nanos(7),
        );
        assert_eq!(
            t,
            Timeline {
                send_start: 1_000,
                measure_start: 1_100,
                send_end: 1_150,
                drain_deadline: 1_157
            }
        );
        assert!(!t.counts(1_099), "warm-up");
        assert!(t.counts(1_100));
        assert!(t.counts(1_149));
        assert!(!t.counts(1_150), "after the measured phase");
    }

    #[test]
    fn senders_are_numbered_in_plan_order() {
        let user = |sends| UserPlan {
            user_id: 1,
            token: String::new(),
            chat: 0,
            sends,
        };
        let plan = Plan {
            users: vec![user(true), user(false), user(true), user(true)],
            ..Plan::default()
        };
        assert_eq!(sender_indexes(&plan), [Some(0), None, Some(1), Some(2)]);
    }

    #[test]
    fn percentiles_of_an_empty_histogram_are_not_measured() {
        let empty = Histogram::<u64>::new(3).unwrap();
        assert_eq!(percentiles(&empty), [None; 3]);
        let mut h = Histogram::<u64>::new(3).unwrap();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let [p50, p99, p999] = percentiles(&h);
        assert_eq!((p50, p99, p999), (Some(500), Some(990), Some(999)));
    }

    #[test]
    fn arguments_are_checked() {
        let args = MessagingArgs {
            window: 16,
            threads: 1,
            warmup: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(5),
            conversation: false,
        };
        let options = Options {
            duration: Duration::from_secs(10),
            rate: None,
            text_bytes: None,
        };
        assert!(check_args(&args, &options, 1_000, 20_000).is_ok());
        assert!(check_args(&args, &options, 19_950, 20_000).is_err());
        let zero_window = MessagingArgs {
            window: 0,
            ..args.clone()
        };
        assert!(check_args(&zero_window, &options, 1_000, 20_000).is_err());
        let zero_rate = Options {
            rate: Some(0),
            ..options
        };
        assert_eq!(
            check_args(&args, &zero_rate, 1_000, 20_000)
                .unwrap_err()
                .exit_code(),
            2
        );
        for (bytes, ok) in [
            (160, true),
            (10_000, true),
            (100_000, true),
            (159, false),
            (100_001, false),
        ] {
            let sized = Options {
                text_bytes: Some(bytes),
                ..options
            };
            assert_eq!(check_args(&args, &sized, 1_000, 20_000).is_ok(), ok, "{bytes}");
        }
    }
}
