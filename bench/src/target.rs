//! [`Target`]: the natterd under test — spawned or remote — with its endpoints and
//! a way to read its resident memory.
//!
//! A spawned natterd's RSS comes from `/proc/<pid>/status` (`VmRSS`); a remote one's
//! from `process_resident_memory_bytes` in its `/metrics`.

use std::fs;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use natter_client::HttpClient;

use crate::error::BenchError;
use crate::spawn::SpawnedServer;
use crate::transport::{Dial, Kind};

/// Where natterd's resident memory is read from.
#[derive(Clone, Debug)]
enum RssSource {
    /// `/proc/<pid>/status` of a process on this machine.
    Proc(u32),
    /// The `process_resident_memory_bytes` gauge of `/metrics`.
    Metrics,
}

/// The server a scenario runs against.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// The HTTP side-port client.
    pub(crate) http: HttpClient,
    /// The raw TCP frame port.
    pub(crate) tcp: SocketAddr,
    /// Every transport natterd serves, as URLs (`GET /v1/endpoints`).
    pub(crate) urls: Vec<String>,
    /// The TLS certificate's SHA-256, pinned by TLS connections.
    pub(crate) cert_sha256: Option<String>,
    /// How the scenario's clients connect (`--transport`; raw TCP unless changed).
    pub(crate) dial: Dial,
    rss: RssSource,
}

impl Target {
    /// The natterd the benchmark spawned.
    ///
    /// # Errors
    /// [`BenchError::Client`] if its side-port does not answer `/healthz`.
    pub(crate) fn spawned(server: &SpawnedServer) -> Result<Target, BenchError> {
        let http = HttpClient::from_addr(server.http);
        http.healthz()?;
        let endpoints = http.endpoints()?;
        Ok(Target {
            http,
            tcp: server.tcp,
            urls: endpoints.urls,
            cert_sha256: endpoints.cert_sha256,
            dial: Dial::tcp(server.tcp),
            rss: RssSource::Proc(server.pid()),
        })
    }

    /// A running natterd whose side-port is at `url`; the TCP port comes from
    /// `GET /v1/endpoints`.
    ///
    /// # Errors
    /// [`BenchError::Setup`] if the side-port does not answer.
    pub(crate) fn remote(url: &str) -> Result<Target, BenchError> {
        let http = HttpClient::new(url);
        let endpoints = http.endpoints().map_err(|e| {
            BenchError::Setup(format!(
                "cannot use natterd's side-port at {}: {e}",
                http.base_url()
            ))
        })?;
        Ok(Target {
            http,
            tcp: endpoints.tcp,
            dial: Dial::tcp(endpoints.tcp),
            urls: endpoints.urls,
            cert_sha256: endpoints.cert_sha256,
            rss: RssSource::Metrics,
        })
    }

    /// Opens and authenticates a blocking connection over the target's transport.
    ///
    /// # Errors
    /// As [`natter_client::Connection::connect_url`].
    pub(crate) fn connect(
        &self,
        token: &str,
        device: &str,
    ) -> Result<(natter_client::Connection, natter_wire::Welcome), natter_client::ClientError> {
        let trust = self.cert_sha256.clone().map(natter_client::Trust::Fingerprint);
        natter_client::Connection::connect_url(&self.dial.url(), trust.as_ref(), token, device)
    }

    /// This target with its clients connecting over `kind`.
    ///
    /// # Errors
    /// [`BenchError::Setup`] when natterd does not serve that transport.
    pub(crate) fn with_transport(self, kind: Kind) -> Result<Target, BenchError> {
        let dial = Dial::new(&self, kind)?;
        Ok(Target { dial, ..self })
    }

    /// This target with natterd's RSS read from `/proc/<pid>/status` (`--pid`: a
    /// natterd on this machine that the benchmark did not spawn).
    pub(crate) fn with_pid(self, pid: u32) -> Target {
        Target {
            rss: RssSource::Proc(pid),
            ..self
        }
    }

    /// A target at a port nobody listens on (the discard port), RSS from this test
    /// process: for unit tests of code that samples a target.
    #[cfg(test)]
    pub(crate) fn unreachable_for_tests() -> Target {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        Target {
            http: HttpClient::from_addr(addr),
            tcp: addr,
            urls: Vec::new(),
            cert_sha256: None,
            dial: Dial::tcp(addr),
            rss: RssSource::Proc(std::process::id()),
        }
    }

    /// The side-port's base URL without the scheme, for messages.
    pub(crate) fn http_addr_text(&self) -> &str {
        self.http.base_url().trim_start_matches("http://")
    }

    /// natterd's process id, when it runs on this machine and the benchmark knows it
    /// (spawned).
    pub(crate) fn server_pid(&self) -> Option<u32> {
        match self.rss {
            RssSource::Proc(pid) => Some(pid),
            RssSource::Metrics => None,
        }
    }

    /// natterd's resident memory in bytes, `None` (with a warning on stderr) if it
    /// cannot be read.
    pub(crate) fn server_rss(&self) -> Option<u64> {
        let result = match &self.rss {
            RssSource::Proc(pid) => fs::read_to_string(format!("/proc/{pid}/status"))
                .map_err(|e| e.to_string())
                .and_then(|status| vm_rss(&status).ok_or_else(|| "no VmRSS line".to_owned())),
            RssSource::Metrics => self.http.metrics().map_err(|e| e.to_string()).and_then(|text| {
                metric_value(&text, "process_resident_memory_bytes")
                    .ok_or_else(|| "no process_resident_memory_bytes in /metrics".to_owned())
            }),
        };
        match result {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                eprintln!("warning: cannot read natterd's resident memory: {e}");
                None
            }
        }
    }
    /// natterd's `natter_store_write_buffer_bytes` gauge (bytes in the store's
    /// memtables not yet flushed, as of the storage writer's last measurement, at
    /// most 100 ms old while it writes), `None` (with a warning on stderr) if
    /// `/metrics` cannot be read or lacks it (an older natterd).
    pub(crate) fn server_write_buffer(&self) -> Option<u64> {
        let result = self.http.metrics().map_err(|e| e.to_string()).and_then(|text| {
            metric_value(&text, "natter_store_write_buffer_bytes")
                .ok_or_else(|| "no natter_store_write_buffer_bytes in /metrics".to_owned())
        });
        match result {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                eprintln!("warning: cannot read natterd's store write buffer: {e}");
                None
            }
        }
    }
}

/// How often [`RssSampler`] reads natterd's resident memory: often enough to catch a
/// peak that lasts a few tens of milliseconds, rarely enough to cost nothing (one
/// small `/proc` read).
pub(crate) const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(20);

/// Samples natterd's resident memory on its own thread every
/// [`RSS_SAMPLE_INTERVAL`] from [`RssSampler::start`] until [`RssSampler::stop`],
/// keeping the first value and the peak.
#[derive(Debug)]
pub(crate) struct RssSampler {
    before: Option<u64>,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What an [`RssSampler`] saw, bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RssFigures {
    /// natterd's RSS when sampling started.
    pub(crate) before: u64,
    /// The highest RSS seen (at least `before`).
    pub(crate) peak: u64,
}

impl RssFigures {
    /// `peak - before`.
    pub(crate) fn growth(self) -> u64 {
        self.peak.saturating_sub(self.before)
    }
}

impl RssSampler {
    /// Reads natterd's RSS now and keeps sampling it until [`RssSampler::stop`].
    pub(crate) fn start(target: &Target) -> RssSampler {
        let before = target.server_rss();
        let peak = Arc::new(AtomicU64::new(before.unwrap_or(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, stop, target) = (peak.clone(), stop.clone(), target.clone());
            thread::Builder::new()
                .name("bench-rss".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(rss) = target.server_rss() {
                            peak.fetch_max(rss, Ordering::Relaxed);
                        }
                        thread::sleep(RSS_SAMPLE_INTERVAL);
                    }
                })
                .ok()
        };
        RssSampler {
            before,
            peak,
            stop,
            thread,
        }
    }

    /// The peak so far, bytes.
    pub(crate) fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Stops sampling; `None` if natterd's RSS could not be read at the start.
    pub(crate) fn stop(mut self) -> Option<RssFigures> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        Some(RssFigures {
            before: self.before?,
            peak: self.peak().max(self.before?),
        })
    }
}

/// `VmRSS` from the text of `/proc/<pid>/status`, in bytes.
fn vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut fields = line.split_whitespace().skip(1);
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => value.checked_mul(1024),
        _ => None,
    }
}

/// The value of the first sample of `name` (with or without labels) in Prometheus
/// text format, rounded to whole units.
fn metric_value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            let rest = if rest.starts_with('{') {
                rest.get(rest.find('}')? + 1..)?
            } else {
                rest
            };
            if !rest.starts_with([' ', '\t']) {
                return None; // a longer metric name that starts with `name`
            }
            let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
            (value.is_finite() && value >= 0.0).then(|| value.round() as u64)
        })
}

/// The sum of every sample of `name` (with any labels) in Prometheus text format —
/// a per-core counter summed over the cores — or `None` if there is none.
pub(crate) fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let rest = if rest.starts_with('{') {
            let Some(end) = rest.find('}') else { continue };
            rest.get(end + 1..).unwrap_or_default()
        } else {
            rest
        };
        if !rest.starts_with([' ', '\t']) {
            continue; // a longer metric name that starts with `name`
        }
        let value = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok());
        if let Some(value) = value.filter(|v| v.is_finite()) {
            found = true;
            sum += value;
        }
    }
    found.then_some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tnatterd\nVmPeak:\t  900 kB\nVmRSS:\t   12345 kB\nThreads:\t5\n";
        assert_eq!(vm_rss(status), Some(12_345 * 1024));
        assert_eq!(vm_rss("Name:\tx\n"), None);
        assert_eq!(vm_rss("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn metric_value_finds_plain_and_labelled_samples() {
        let text = "# HELP process_resident_memory_bytes Resident memory.\n\
                    # TYPE process_resident_memory_bytes gauge\n\
                    process_resident_memory_bytes_total 1\n\
                    natter_connections{core=\"0\"} 5\n\
                    process_resident_memory_bytes 1.2345e7\n";
        assert_eq!(
            metric_value(text, "process_resident_memory_bytes"),
            Some(12_345_000)
        );
        assert_eq!(metric_value(text, "natter_connections"), Some(5));
        assert_eq!(metric_value(text, "missing"), None);
        assert_eq!(metric_value("x NaN\n", "x"), None);
    }

    #[test]
    fn metric_sum_adds_the_samples_of_every_core() {
        let text = "# TYPE natter_messages_total counter\n\
                    natter_messages_total{core=\"0\"} 10\n\
                    natter_messages_total{core=\"1\"} 32\n\
                    natter_messages_total_other 5\n\
                    natter_store_commits_total 7\n";
        assert_eq!(metric_sum(text, "natter_messages_total"), Some(42.0));
        assert_eq!(metric_sum(text, "natter_store_commits_total"), Some(7.0));
        assert_eq!(metric_sum(text, "natter_deliveries_total"), None);
    }

    #[test]
    fn own_rss_is_readable() {
        let target = Target {
            http: HttpClient::new("127.0.0.1:9"),
            tcp: SocketAddr::from(([127, 0, 0, 1], 9)),
            urls: Vec::new(),
            cert_sha256: None,
            dial: Dial::tcp(SocketAddr::from(([127, 0, 0, 1], 9))),
            rss: RssSource::Proc(std::process::id()),
        };
        assert!(target.server_rss().unwrap() > 0);
    }
}
