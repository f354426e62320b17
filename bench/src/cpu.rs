//! CPU time over a phase of a run — the whole machine's (`/proc/stat`), this
//! process's and natterd's (`/proc/<pid>/stat`) — so that a figure measured on a
//! machine shared with other work says how much of the CPU the run actually had.
//!
//! Everything is in ticks and compared as ratios of the machine's total ticks, so
//! the clock-tick rate never matters: `share × cores × 100` is "% of one core".

use std::fmt::Write as _;
use std::fs;

/// CPU ticks counted up to one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CpuSample {
    /// All CPUs, every state.
    total: u64,
    /// All CPUs, not idle and not waiting for I/O.
    busy: u64,
    /// All CPUs, in hard and soft interrupts (loopback TCP delivery runs there). With
    /// tick-based accounting this time is *also* charged to whichever task was
    /// interrupted, so it is shown beside the per-process shares, not subtracted.
    interrupts: u64,
    /// Online CPUs (`cpuN` lines).
    cores: u64,
    /// This process (user + system).
    own: u64,
    /// natterd (user + system), when it runs on this machine.
    server: Option<u64>,
}

impl CpuSample {
    /// The counters now; `None` where `/proc` cannot be read (not Linux).
    pub(crate) fn now(server_pid: Option<u32>) -> Option<CpuSample> {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        let MachineTicks {
            total,
            busy,
            interrupts,
            cores,
        } = machine_ticks(&stat)?;
        let own = process_ticks(&fs::read_to_string("/proc/self/stat").ok()?)?;
        let server = server_pid
            .and_then(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .and_then(|text| process_ticks(&text));
        Some(CpuSample {
            total,
            busy,
            interrupts,
            cores,
            own,
            server,
        })
    }

    /// One line on how the CPU was used from `self` to `later`, in % of one core:
    /// `"2 cores: 187% busy (interrupts 20%) — natterd 101%, natter-bench 52%, other
    /// processes 34%"`.
    pub(crate) fn describe_until(&self, later: &CpuSample) -> String {
        let total = later.total.saturating_sub(self.total).max(1) as f64;
        let pct = |ticks: u64| ticks as f64 / total * later.cores as f64 * 100.0;
        let busy = later.busy.saturating_sub(self.busy);
        let own = later.own.saturating_sub(self.own);
        let interrupts = later.interrupts.saturating_sub(self.interrupts);
        let mut text = format!(
            "{} cores: {:.0}% busy (interrupts {:.0}%) — ",
            later.cores,
            pct(busy),
            pct(interrupts)
        );
        let mut others = busy.saturating_sub(own);
        if let (Some(a), Some(b)) = (self.server, later.server) {
            let server = b.saturating_sub(a);
            others = others.saturating_sub(server);
            let _ = write!(text, "natterd {:.0}%, ", pct(server));
        }
        let _ = write!(
            text,
            "natter-bench {:.0}%, other processes {:.0}% (100% = one core)",
            pct(own),
            pct(others)
        );
        text
    }
}

/// The machine-wide counters of `/proc/stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MachineTicks {
    total: u64,
    busy: u64,
    interrupts: u64,
    cores: u64,
}

/// The machine-wide counters from the text of `/proc/stat`.
fn machine_ticks(stat: &str) -> Option<MachineTicks> {
    let mut lines = stat.lines();
    let first = lines.next()?;
    let mut fields = first.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.map_while(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    // already inside user, so only the first eight add up to the total.
    let total: u64 = values.iter().take(8).sum();
    let field = |i: usize| values.get(i).copied().unwrap_or(0);
    let idle = field(3) + field(4);
    let cores = lines
        .filter(|line| line.starts_with("cpu") && line.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count() as u64;
    Some(MachineTicks {
        total,
        busy: total.saturating_sub(idle),
        interrupts: field(5) + field(6),
        cores: cores.max(1),
    })
}

/// utime + stime from the text of `/proc/<pid>/stat`.
fn process_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces: count from its closing paren.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time of each of a process's threads, grouped by thread name without its
/// trailing number (`natter-core-0` and `natter-core-1` are `natter-core`), in
/// nanoseconds of run time from `/proc/<pid>/task/<tid>/schedstat` (exact, unlike
/// the tick counts of `stat`). A sample holds each thread by id, so a span
/// ([`ThreadCpu::until`]) counts each thread's own growth: a thread that ended
/// within it loses only its time after the first sample, one that started
/// counts from 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ThreadCpu {
    /// Nanoseconds per thread group.
    pub(crate) by_group: std::collections::BTreeMap<String, u64>,
    /// `(group, nanoseconds)` per thread id.
    by_thread: std::collections::BTreeMap<u64, (String, u64)>,
}

impl ThreadCpu {
    /// The threads of `pid` now; `None` where `/proc/<pid>/task` cannot be read.
    pub(crate) fn now(pid: u32) -> Option<ThreadCpu> {
        let mut by_thread = std::collections::BTreeMap::new();
        for entry in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
            let dir = entry.path();
            let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse::<u64>().ok()) else {
                continue;
            };
            let (Ok(comm), Ok(sched)) = (
                fs::read_to_string(dir.join("comm")),
                fs::read_to_string(dir.join("schedstat")),
            ) else {
                continue;
            };
            let Some(ns) = sched
                .split_whitespace()
                .next()
                .and_then(|f| f.parse::<u64>().ok())
            else {
                continue;
            };
            by_thread.insert(tid, (thread_group(comm.trim()).to_owned(), ns));
        }
        Some(ThreadCpu::from_threads(by_thread))
    }

    fn from_threads(by_thread: std::collections::BTreeMap<u64, (String, u64)>) -> ThreadCpu {
        let mut by_group = std::collections::BTreeMap::new();
        for (group, ns) in by_thread.values() {
            *by_group.entry(group.clone()).or_insert(0) += ns;
        }
        ThreadCpu { by_group, by_thread }
    }

    /// All threads' nanoseconds.
    pub(crate) fn total(&self) -> u64 {
        self.by_group.values().sum()
    }

    /// Each thread's nanoseconds from `self` to `later`, grouped (a thread
    /// only in `later` counts from 0).
    pub(crate) fn until(&self, later: &ThreadCpu) -> ThreadCpu {
        let by_thread = later
            .by_thread
            .iter()
            .map(|(tid, (group, ns))| {
                let before = self.by_thread.get(tid).map_or(0, |(_, ns)| *ns);
                (*tid, (group.clone(), ns.saturating_sub(before)))
            })
            .collect();
        ThreadCpu::from_threads(by_thread)
    }
}

/// A thread name without its trailing instance number: `natter-core-1` →
/// `natter-core`, `natter-push-sen` (the kernel keeps 15 bytes) stays.
fn thread_group(name: &str) -> &str {
    let cut = name.trim_end_matches(|c: char| c.is_ascii_digit());
    if cut.len() < name.len() {
        cut.trim_end_matches(['-', '_', ':'])
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ticks_add_up_the_states() {
        let stat = "cpu  100 0 40 800 50 2 8 0 0 0\ncpu0 50 0 20 400 25 1 4 0 0 0\n\
                    cpu1 50 0 20 400 25 1 4 0 0 0\nintr 1 2 3\n";
        assert_eq!(
            machine_ticks(stat),
            Some(MachineTicks {
                total: 1_000,
                busy: 150,
                interrupts: 10,
                cores: 2
            })
        );
        assert_eq!(machine_ticks("intr 1\n"), None);
    }

    #[test]
    fn process_ticks_survive_odd_command_names() {
        let stat = "1234 (natter (x) y) S 1 2 3 4 5 6 7 8 9 10 70 30 0 0 20 0 5";
        assert_eq!(process_ticks(stat), Some(100));
        assert_eq!(process_ticks("garbage"), None);
    }

    #[test]
    fn usage_is_described_in_percent_of_one_core() {
        let a = CpuSample {
            total: 0,
            busy: 0,
            interrupts: 0,
            cores: 2,
            own: 0,
            server: Some(0),
        };
        let b = CpuSample {
            total: 1_000,
            busy: 900,
            interrupts: 100,
            cores: 2,
            own: 250,
            server: Some(500),
        };
        assert_eq!(
            a.describe_until(&b),
            "2 cores: 180% busy (interrupts 20%) — natterd 100%, natter-bench 50%, other processes 30% \
             (100% = one core)"
        );
    }

    #[test]
    fn this_machine_can_be_sampled() {
        let sample = CpuSample::now(Some(std::process::id())).unwrap();
        assert!(sample.total >= sample.busy);
        assert!(sample.server.is_some());
    }

    #[test]
    fn thread_groups_drop_the_instance_number() {
        assert_eq!(thread_group("natter-core-0"), "natter-core");
        assert_eq!(thread_group("natter-core-12"), "natter-core");
        assert_eq!(thread_group("natter-push"), "natter-push");
        assert_eq!(thread_group("natter-push-sen"), "natter-push-sen");
        assert_eq!(thread_group("fjall:worker"), "fjall:worker");
        assert_eq!(thread_group("natterd"), "natterd");
    }

    #[test]
    fn this_process_threads_are_read() {
        let before = ThreadCpu::now(std::process::id()).unwrap();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = ThreadCpu::now(std::process::id()).unwrap();
        assert!(before.until(&after).total() > 0);
    }

    #[test]
    fn a_span_counts_each_threads_own_growth() {
        let sample = |threads: &[(u64, &str, u64)]| {
            ThreadCpu::from_threads(
                threads
                    .iter()
                    .map(|&(tid, group, ns)| (tid, (group.to_owned(), ns)))
                    .collect(),
            )
        };
        // Thread 2 ended and thread 3 started within the span.
        let before = sample(&[(1, "gw", 100), (2, "gw", 5_000)]);
        let after = sample(&[(1, "gw", 150), (3, "gw", 30)]);
        let span = before.until(&after);
        assert_eq!(span.by_group.get("gw"), Some(&80));
        assert_eq!(span.total(), 80);
    }
}
