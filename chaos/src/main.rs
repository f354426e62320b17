//! `natter-chaos`: runs natter's fault scenarios against natterd children it
//! starts itself (the natterd beside this binary, or `$NATTERD`) and prints,
//! per scenario, one `N passed, N failed` line and its figures. Exits 1 when
//! any check failed, 2 when a scenario could not run.
//!
//! ```text
//! natter-chaos [--full] [--seed N] [SCENARIO…]   # default: every scenario
//! ```
//!
//! `--full` runs the long versions (minutes each); the default short mode is
//! what `scripts/test.sh` runs through `scripts/chaos.sh`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use natter_chaos::scenarios::{self, Outcome, diskfull, fiu, flap, kill9, memcap};

/// Every scenario, in the order `natter-chaos` runs them.
const ALL: [&str; 5] = ["kill9", "flap", "fiu", "diskfull", "memcap"];

#[derive(Parser, Debug)]
#[command(
    about = "natter's fault suite: a history checker under kill -9, injected I/O errors, a full disk, a memory cap and a fault proxy"
)]
struct Args {
    /// The long versions (minutes per scenario) instead of the short ones.
    #[arg(long)]
    full: bool,
    /// Seed of every random choice (kill instants, proxy faults, hold times).
    #[arg(long, default_value_t = 13)]
    seed: u64,
    /// kill9 and flap: load duration in seconds (overrides the mode's).
    #[arg(long)]
    duration_s: Option<u64>,
    /// kill9 and flap: new messages per second in all (overrides the mode's).
    #[arg(long)]
    rate: Option<f64>,
    /// kill9: kills per run (default 20).
    #[arg(long)]
    kills: Option<usize>,
    /// Scenarios to run (kill9, flap, fiu, diskfull, memcap); default: all.
    scenarios: Vec<String>,
}

fn run(name: &str, args: &Args) -> Result<Outcome, scenarios::Error> {
    let (full, seed) = (args.full, args.seed);
    let secs = |short: u64, long: u64| {
        Duration::from_secs(args.duration_s.unwrap_or(if full { long } else { short }))
    };
    let rate = |short: f64, long: f64| args.rate.unwrap_or(if full { long } else { short });
    match name {
        "kill9" => kill9::run(&kill9::Params {
            seed,
            duration: secs(40, 300),
            kills: args.kills.unwrap_or(20),
            rate: rate(400.0, 1_000.0),
            pairs: 4,
        }),
        "flap" => flap::run(&flap::Params {
            seed,
            duration: secs(40, 300),
            rate: rate(200.0, 400.0),
            pairs: 3,
        }),
        "fiu" => fiu::run(&fiu::Params { seed, full }),
        "diskfull" => diskfull::run(&diskfull::Params { seed, full }),
        "memcap" => memcap::run(&memcap::Params { seed, full }),
        other => Err(format!("unknown scenario {other:?} (known: {ALL:?})").into()),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let names: Vec<String> = if args.scenarios.is_empty() {
        ALL.iter().map(|s| s.to_string()).collect()
    } else {
        args.scenarios.clone()
    };
    let mode = if args.full { "full" } else { "short" };
    println!(
        "natter-chaos: {mode} mode, seed {}, scenarios {names:?}",
        args.seed
    );
    let mut failed = false;
    let mut broken = false;
    for name in &names {
        let started = Instant::now();
        match run(name, &args) {
            Ok(mut outcome) => {
                outcome.figure("scenario_s", format!("{:.1}", started.elapsed().as_secs_f64()));
                outcome.print();
                failed |= !outcome.verdict.ok();
            }
            Err(e) => {
                println!("[{name}] 0 passed, 1 failed");
                println!("[{name}]   FAILED could not run: {e}");
                broken = true;
            }
        }
    }
    if broken {
        ExitCode::from(2)
    } else if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
