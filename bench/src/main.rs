//! natter-bench: the command line shared by every load scenario, and the dispatch to
//! them.
//!
//! `natter-bench SCENARIO [--spawn | --server URL] [--cores N] [--transport tcp|tls|quic|ws]
//! [--duration 10s] [--rate N] [--json FILE] [--series FILE.csv] [--plot FILE.svg]` plus
//! scenario flags. The run prints a human summary on stdout and, with `--json FILE`,
//! writes the figures under the names fixed for all scenarios (see [`report`]); the
//! scenarios that record a per-second series ([`series`]) print it as a table and
//! write it as CSV and as an SVG chart. With `--spawn` the data directory's disk use
//! is reported at the end ([`disk`]).
//!
//! Exit status: 0 when the run completed without errors, 1 when it failed or counted
//! errors or lost, duplicated or reordered messages, 2 for a usage error or a scenario / transport that is not implemented yet,
//! 130 when stopped by Ctrl-C or SIGTERM.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod accounts;
mod cpu;
mod disk;
mod error;
mod interrupt;
mod progress;
mod report;
mod scenarios;
mod series;
mod sockets;
mod spawn;
mod target;
mod transport;

use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::error::BenchError;
use crate::report::Report;
use crate::scenarios::connect::{self, ConnectArgs};
use crate::scenarios::flood::{self, FloodArgs};
use crate::scenarios::group::{self, GroupArgs};
use crate::scenarios::messaging::MessagingArgs;
use crate::scenarios::one2one::{self, OneToOneArgs};
use crate::scenarios::presence::{self, PresenceArgs};
use crate::scenarios::push::{self as push_scenario, PushArgs};
use crate::scenarios::seam::{self, SeamArgs};
use crate::scenarios::search::{self as search_scenario, SearchArgs};
use crate::scenarios::sync::{self as sync_scenario, SyncArgs};
use crate::scenarios::syncstorm::{self, SyncstormArgs};
use crate::spawn::SpawnedServer;
use crate::target::Target;

/// The side-port natterd listens on by default, used when neither `--spawn` nor
/// `--server` is given.
const DEFAULT_SERVER: &str = "http://127.0.0.1:7180";

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "natter-bench", version, about = "Load scenarios against natterd")]
struct Cli {
    /// The scenario to run.
    #[arg(value_enum)]
    scenario: ScenarioName,
    /// Start the natterd built beside this binary, on free ports with a temporary data
    /// directory, and stop it at the end.
    #[arg(long, conflicts_with = "server")]
    spawn: bool,
    /// The HTTP side-port of a running natterd [default: http://127.0.0.1:7180].
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// Event-loop threads of the spawned natterd [default: natterd's own default].
    #[arg(long, requires = "spawn")]
    cores: Option<usize>,
    /// The transport clients use.
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    transport: Transport,
    /// How long the measured phase lasts, e.g. "10s", "500ms", "2m" (connect: how long
    /// the connections are held idle; presence: the churn after the storm).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Open-loop rate instead of full speed (connect: new connections per second;
    /// presence: presence changes per second, default 100; seam: messages per second
    /// in total, default 2000).
    #[arg(long, value_name = "N")]
    rate: Option<u64>,
    /// Bytes of text per message (one2one / group: at least the 160-byte stamp,
    /// default 160; sync: default 32).
    #[arg(long, value_name = "N")]
    text_bytes: Option<usize>,
    /// Also write the figures as one JSON object to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the per-second series (one row per second since the first send) as CSV
    /// to FILE (one2one, group).
    #[arg(long, value_name = "FILE")]
    series: Option<PathBuf>,
    /// Draw acks / deliveries per second and each second's p99 as an SVG chart to
    /// FILE (one2one, group).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    one2one: OneToOneArgs,
    #[command(flatten)]
    group: GroupArgs,
    #[command(flatten)]
    messaging: MessagingArgs,
    #[command(flatten)]
    presence: PresenceArgs,
    #[command(flatten)]
    sync: SyncArgs,
    #[command(flatten)]
    search: SearchArgs,
    #[command(flatten)]
    flood: FloodArgs,
    #[command(flatten)]
    seam: SeamArgs,
    #[command(flatten)]
    syncstorm: SyncstormArgs,
    #[command(flatten)]
    push: PushArgs,
    /// With --server: natterd's process id on this machine, so its RSS is read from
    /// /proc/PID/status (sampled every 20 ms) instead of /metrics.
    #[arg(long, conflicts_with = "spawn")]
    pid: Option<u32>,
    /// Whether `--connections` was given on the command line (set after parsing:
    /// scenarios whose default differs from connect's use it).
    #[arg(skip)]
    connections_given: bool,
}

/// The scenarios the design names; only those with a module under `scenarios/` run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ScenarioName {
    /// Open N authenticated connections and hold them idle.
    Connect,
    /// Pairs of friends sending each other messages.
    #[value(name = "one2one")]
    OneToOne,
    /// Group chats of up to 100 members.
    Group,
    /// Devices catching up on history after being away.
    Sync,
    /// Presence changes pushed to friends.
    Presence,
    /// Clients that make natterd produce or hold data and never read (issue 9).
    Flood,
    /// Exactly-once delivery across the live/sync seam under reconnects and kill -9.
    Seam,
    /// Bystanders' ping latency while 1,000 devices sync from a cold cache.
    Syncstorm,
    /// Push notifications to 10,000 offline devices in 100-member groups (issue 14).
    Push,
    /// Message search: fill, wait for the index, then one- and three-word queries (issue 16).
    Search,
}

impl ScenarioName {
    /// The name as typed on the command line and written in the report.
    fn as_str(self) -> &'static str {
        match self {
            ScenarioName::Connect => "connect",
            ScenarioName::OneToOne => "one2one",
            ScenarioName::Group => "group",
            ScenarioName::Sync => "sync",
            ScenarioName::Presence => "presence",
            ScenarioName::Flood => "flood",
            ScenarioName::Seam => "seam",
            ScenarioName::Syncstorm => "syncstorm",
            ScenarioName::Push => "push",
            ScenarioName::Search => "search",
        }
    }
}

/// The client transports the design names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Transport {
    /// Raw TCP frames.
    Tcp,
    /// TLS 1.3 over TCP.
    Tls,
    /// QUIC.
    Quic,
    /// WebSocket.
    Ws,
}

impl Transport {
    /// The name as typed on the command line and written in the report.
    fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Quic => "quic",
            Transport::Ws => "ws",
        }
    }
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    cli.connections_given = matches.value_source("connections") == Some(ValueSource::CommandLine);
    match run(&cli) {
        Ok(report) if report.failures() == 0 => ExitCode::SUCCESS,
        Ok(report) => {
            eprintln!(
                "natter-bench: the run counted {} errors, {} lost, {} duplicated, {} reordered",
                report.errors.unwrap_or(0),
                report.lost.unwrap_or(0),
                report.duplicated.unwrap_or(0),
                report.reordered.unwrap_or(0)
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("natter-bench: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Checks the command line, sets up the server under test and runs the scenario.
fn run(cli: &Cli) -> Result<Report, BenchError> {
    // The scenarios that drive TLS and WebSocket; the others speak raw TCP only.
    let transport = match cli.transport {
        Transport::Tcp => transport::Kind::Tcp,
        Transport::Tls => transport::Kind::Tls,
        Transport::Ws => transport::Kind::Ws,
        Transport::Quic => transport::Kind::Quic,
    };
    let any_transport = matches!(
        cli.scenario,
        ScenarioName::OneToOne
            | ScenarioName::Group
            | ScenarioName::Sync
            | ScenarioName::Connect
            | ScenarioName::Syncstorm
            | ScenarioName::Presence
            | ScenarioName::Seam
            | ScenarioName::Flood
    );
    if transport != transport::Kind::Tcp && !any_transport {
        return Err(BenchError::NotImplemented(format!(
            "transport {:?} for {} (one2one, group, sync, connect, presence, seam, syncstorm and flood have it)",
            cli.transport.as_str(),
            cli.scenario.as_str()
        )));
    }
    if (cli.series.is_some() || cli.plot.is_some()) && !records_series(cli.scenario) {
        return Err(BenchError::NotImplemented(format!(
            "--series / --plot for {} (one2one and group record a per-second series)",
            cli.scenario.as_str()
        )));
    }
    interrupt::install()?;
    // Before natterd is spawned, so that it inherits the raised limit too.
    let open_files = raise_open_file_limit()?;
    let options = scenarios::Options {
        duration: cli.duration,
        rate: cli.rate,
        text_bytes: cli.text_bytes,
    };
    let mut flood_plan = None;
    match cli.scenario {
        ScenarioName::Flood => {
            let connections = cli.connections_given.then_some(cli.connect.connections);
            flood_plan = Some(flood::check_args(&cli.flood, connections, open_files)?);
        }
        ScenarioName::Seam => {
            seam::check_args(&cli.seam, &options, cli.spawn, transport == transport::Kind::Tcp)?
        }
        ScenarioName::Syncstorm => syncstorm::check_args(&cli.syncstorm, &options, open_files)?,
        ScenarioName::Connect => {
            connect::check_args(&cli.connect, open_files, transport == transport::Kind::Quic)?
        }
        ScenarioName::OneToOne => one2one::check_args(&cli.one2one, &cli.messaging, &options, open_files)?,
        ScenarioName::Group => group::check_args(&cli.group, &cli.messaging, &options, open_files)?,
        ScenarioName::Presence => presence::check_args(
            &cli.presence,
            cli.one2one.users,
            cli.connect.in_flight,
            open_files,
        )?,
        ScenarioName::Sync => sync_scenario::check_args(&cli.sync, sync_text_bytes(cli))?,
        ScenarioName::Search => search_scenario::check_args(&cli.search)?,
        ScenarioName::Push => push_scenario::check_args(&cli.push, open_files)?,
    }

    let mut spawned = if cli.spawn {
        let extra = match cli.scenario {
            ScenarioName::Presence => presence::natterd_flags(&cli.presence),
            ScenarioName::Flood => flood::natterd_flags()?,
            ScenarioName::Push => push_scenario::natterd_flags(&cli.push),
            _ => Vec::new(),
        };
        Some(SpawnedServer::start(cli.cores, &extra)?)
    } else {
        None
    };
    let mut target = match &spawned {
        Some(server) => Target::spawned(server)?,
        None => Target::remote(cli.server.as_deref().unwrap_or(DEFAULT_SERVER))?,
    };
    if let Some(pid) = cli.pid {
        target = target.with_pid(pid);
    }
    if transport != transport::Kind::Tcp {
        target = target.with_transport(transport)?;
    }
    println!(
        "server: http {} · tcp {} · clients on {}",
        target.http_addr_text(),
        target.tcp,
        target.dial.url()
    );

    let mut report = match cli.scenario {
        ScenarioName::OneToOne => one2one::run(&target, &options, &cli.one2one, &cli.messaging)?,
        ScenarioName::Group => group::run(&target, &options, &cli.group, &cli.messaging)?,
        ScenarioName::Presence => presence::run(
            &target,
            &options,
            &cli.presence,
            cli.one2one.users,
            cli.connect.in_flight,
        )?,
        ScenarioName::Sync => sync_scenario::run(&target, &cli.sync, sync_text_bytes(cli))?,
        ScenarioName::Search => search_scenario::run(&target, &cli.search)?,
        ScenarioName::Seam => seam::run(&target, spawned.as_mut(), &options, &cli.seam)?,
        ScenarioName::Push => push_scenario::run(&target, &options, &cli.push)?,
        ScenarioName::Syncstorm => {
            // The spawned natterd's cores: --cores, else natterd's default (the
            // available parallelism); unknown for --server.
            let cores = cli.spawn.then(|| {
                cli.cores
                    .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()))
            });
            syncstorm::run(&target, spawned.as_mut(), cores, &options, &cli.syncstorm)?
        }
        ScenarioName::Flood => match flood_plan {
            Some(plan) => flood::run(&target, &options, plan)?,
            None => return Err(BenchError::Usage("flood: no plan".into())),
        },
        _ => connect::run(&target, &options, &cli.connect)?,
    };
    report.scenario = cli.scenario.as_str().to_owned();
    report.transport = cli.transport.as_str().to_owned();

    if let Some(server) = spawned {
        measure_disk(&mut report, &target, server, cli.scenario)?;
    }
    if let Some(series) = &report.series {
        print!(
            "\nper second (* = counted in the *_second_* figures: whole seconds of the measured phase)\n{}",
            series.table()
        );
        if let Some(path) = &cli.series {
            series.write_csv(path)?;
            println!("series written to {}", path.display());
        }
        if let Some(path) = &cli.plot {
            series.write_svg(path, &plot_title(cli, &report))?;
            println!("chart written to {}", path.display());
        }
    }
    print!("{}", report.summary());
    if let Some(path) = &cli.json {
        report.write_json(path)?;
        println!("figures written to {}", path.display());
    }
    Ok(report)
}

/// Whether `scenario` records a per-second series (`--series`, `--plot`).
fn records_series(scenario: ScenarioName) -> bool {
    matches!(scenario, ScenarioName::OneToOne | ScenarioName::Group)
}

/// Stops the spawned natterd and fills in the disk figures: the data directory's
/// size while natterd still runs and after its clean stop (the one reported as
/// `disk_bytes`), and per message stored.
///
/// # Errors
/// As [`SpawnedServer::stop_with_disk_usage`].
fn measure_disk(
    report: &mut Report,
    target: &Target,
    server: SpawnedServer,
    scenario: ScenarioName,
) -> Result<(), BenchError> {
    // seam and syncstorm restart natterd, which starts its counters again.
    let restarted = matches!(scenario, ScenarioName::Seam | ScenarioName::Syncstorm);
    let stored = if restarted {
        None
    } else {
        target
            .http
            .metrics()
            .ok()
            .and_then(|text| target::metric_sum(&text, "natter_messages_total"))
            .map(|v| v.round() as u64)
    };
    report.disk_bytes_running = disk::usage(&server.data_dir()).ok();
    let disk = server.stop_with_disk_usage()?;
    report.disk_bytes = Some(disk);
    if let Some(stored) = stored.filter(|&n| n > 0) {
        report.messages_stored = Some(stored);
        report.disk_bytes_per_message = Some(disk as f64 / stored as f64);
        report.raw_text_bytes = report.text_bytes.map(|b| b.saturating_mul(stored));
    }
    Ok(())
}

/// The chart's title: what ran, how.
fn plot_title(cli: &Cli, report: &Report) -> String {
    let load = cli
        .rate
        .map_or_else(|| "closed loop".to_owned(), |r| format!("open loop {r} msg/s"));
    let cores = cli
        .cores
        .map_or_else(String::new, |c| format!(", natterd --cores {c}"));
    let text = report
        .text_bytes
        .map_or_else(String::new, |b| format!(", {b}-byte texts"));
    format!(
        "natter-bench {} over {} ({load}{cores}{text}): per second",
        report.scenario, report.transport
    )
}

/// The sync scenario's text size: `--text-bytes` or its default.
fn sync_text_bytes(cli: &Cli) -> usize {
    cli.text_bytes.unwrap_or(sync_scenario::DEFAULT_TEXT_BYTES)
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit and returns the new
/// soft limit (every connection is one file).
///
/// # Errors
/// [`BenchError::Io`] if the limit cannot be read or set.
fn raise_open_file_limit() -> Result<u64, BenchError> {
    let limit = rlimit::increase_nofile_limit(u64::MAX)?;
    Ok(limit)
}

/// Parses a duration such as `10s`, `500ms`, `2m`, `1h` or a bare number of seconds.
///
/// # Errors
/// A message naming the accepted forms.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 10s, 500ms, 2m, 1h"))?;
    let millis_per_unit = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {text:?}: use ms, s, m or h"
            ));
        }
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("ten seconds").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("99999999999999999h").is_err());
    }

    #[test]
    fn command_line_parses_the_common_flags() {
        let cli = Cli::try_parse_from([
            "natter-bench",
            "connect",
            "--spawn",
            "--cores",
            "2",
            "--duration",
            "3s",
            "--json",
            "out.json",
            "--connections",
            "10",
        ])
        .unwrap();
        assert_eq!(cli.scenario, ScenarioName::Connect);
        assert!(cli.spawn);
        assert_eq!(cli.cores, Some(2));
        assert_eq!(cli.transport, Transport::Tcp);
        assert_eq!(cli.duration, Duration::from_secs(3));
        assert_eq!(cli.connect.connections, 10);
        assert_eq!(cli.json, Some(PathBuf::from("out.json")));
    }

    #[test]
    fn command_line_parses_the_messaging_flags() {
        let cli = Cli::try_parse_from([
            "natter-bench",
            "group",
            "--spawn",
            "--rate",
            "50000",
            "--groups",
            "3",
            "--members",
            "50",
            "--senders",
            "5",
            "--window",
            "4",
            "--threads",
            "2",
            "--warmup",
            "500ms",
            "--drain-timeout",
            "2s",
        ])
        .unwrap();
        assert_eq!(cli.scenario, ScenarioName::Group);
        assert_eq!(cli.rate, Some(50_000));
        assert_eq!(
            (cli.group.groups, cli.group.members, cli.group.senders),
            (3, 50, 5)
        );
        assert_eq!((cli.messaging.window, cli.messaging.threads), (4, 2));
        assert_eq!(cli.messaging.warmup, Duration::from_millis(500));
        assert_eq!(cli.messaging.drain_timeout, Duration::from_secs(2));

        let cli = Cli::try_parse_from(["natter-bench", "one2one"]).unwrap();
        assert_eq!(cli.scenario, ScenarioName::OneToOne);
        assert_eq!(cli.one2one.users, 1000);
        assert_eq!(cli.messaging.window, 16);
        assert_eq!(cli.group.groups, 10);
    }

    #[test]
    fn command_line_parses_the_issue_9_scenarios() {
        let cli = Cli::try_parse_from([
            "natter-bench",
            "flood",
            "--spawn",
            "--kind",
            "prehello",
            "--connections",
            "5000",
            "--duration",
            "15s",
            "--max-server-rss-mib",
            "2048",
        ])
        .unwrap();
        assert_eq!(cli.scenario, ScenarioName::Flood);
        assert_eq!(cli.flood.kind, flood::FloodKind::Prehello);
        assert_eq!(cli.flood.max_server_rss_mib, 2048);
        let cli =
            Cli::try_parse_from(["natter-bench", "flood", "--kind", "sync", "--requests", "9"]).unwrap();
        assert_eq!((cli.flood.kind, cli.flood.requests), (flood::FloodKind::Sync, 9));

        let cli = Cli::try_parse_from([
            "natter-bench",
            "seam",
            "--spawn",
            "--kill-restarts",
            "10",
            "--devices",
            "40",
            "--seed",
            "7",
            "--after-welcome",
            "--hold",
            "500ms",
            "--rate",
            "2000",
        ])
        .unwrap();
        assert_eq!(cli.scenario, ScenarioName::Seam);
        assert_eq!(
            (cli.seam.kill_restarts, cli.seam.devices, cli.seam.seed),
            (10, 40, 7)
        );
        assert!(cli.seam.after_welcome && !cli.seam.pipelined);
        assert_eq!(cli.seam.hold, Duration::from_millis(500));
        assert!(Cli::try_parse_from(["natter-bench", "seam", "--pipelined", "--after-welcome"]).is_err());

        let cli = Cli::try_parse_from([
            "natter-bench",
            "syncstorm",
            "--spawn",
            "--cores",
            "2",
            "--storm-devices",
            "1000",
            "--chats-per-user",
            "20",
            "--bystanders",
            "50",
            "--ping-interval",
            "10ms",
            "--storm-behind",
            "5",
            "--baseline",
            "3s",
            "--text-bytes",
            "300",
        ])
        .unwrap();
        assert_eq!(cli.scenario, ScenarioName::Syncstorm);
        assert_eq!(
            (
                cli.syncstorm.storm_devices,
                cli.syncstorm.chats_per_user,
                cli.syncstorm.bystanders
            ),
            (1000, 20, 50)
        );
        assert_eq!(cli.syncstorm.storm_behind, 5);
        assert_eq!(cli.text_bytes, Some(300));

        let cli = Cli::try_parse_from([
            "natter-bench",
            "one2one",
            "--rate",
            "200000",
            "--text-bytes",
            "10000",
        ])
        .unwrap();
        assert_eq!((cli.rate, cli.text_bytes), (Some(200_000), Some(10_000)));
        assert!(Cli::try_parse_from(["natter-bench", "flood", "--spawn", "--pid", "5"]).is_err());
    }

    #[test]
    fn spawn_and_server_exclude_each_other() {
        let result = Cli::try_parse_from([
            "natter-bench",
            "connect",
            "--spawn",
            "--server",
            "http://127.0.0.1:1",
        ]);
        assert!(result.is_err());
    }

    #[test]
    fn cores_needs_spawn() {
        assert!(Cli::try_parse_from(["natter-bench", "connect", "--cores", "2"]).is_err());
    }

    #[test]
    fn a_series_for_a_scenario_that_records_none_is_refused_with_exit_code_2() {
        for flag in ["--series", "--plot"] {
            let cli = Cli::try_parse_from(["natter-bench", "presence", flag, "/tmp/never-written"]).unwrap();
            let err = run(&cli).unwrap_err();
            assert!(matches!(err, BenchError::NotImplemented(_)), "{flag}: {err:?}");
            assert_eq!(err.exit_code(), 2);
        }
    }

    #[test]
    fn unimplemented_transports_are_refused_with_exit_code_2() {
        let cli = Cli::try_parse_from(["natter-bench", "push", "--transport", "quic"]).unwrap();
        let err = run(&cli).unwrap_err();
        assert!(matches!(err, BenchError::NotImplemented(_)), "{err:?}");
        assert_eq!(err.exit_code(), 2);
    }
}
