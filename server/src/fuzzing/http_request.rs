//! Target `http_request`: requests to the HTTP side-port — method, path, `Authorization` header,
//! source address and JSON body — through [`Api::handle`], the side-port's pure request handler,
//! over a real [`Store`] (fjall) in a temporary directory, with the real event loops and storage
//! writer behind it (as `natterd` wires them, minus the HTTP transport).
//!
//! # Input
//!
//! Text, so that seeds are plain requests and libFuzzer's dictionary (`fuzz/dict/http.dict`)
//! works on it. Requests are separated by lines reading `%%` (at most [`MAX_REQUESTS`]). Each
//! request is a line `METHOD PATH`, header lines `name: value` up to an empty line
//! (`authorization` and `x-remote` — the client's IP address — are used, others ignored), then
//! the body (at most [`MAX_BODY`] bytes, as the transport enforces). Before a request is handled,
//! placeholders in its path, authorization and body are replaced:
//!
//! * `$N` — a number unique to this execution, so usernames like `alice$N` are fresh every time
//!   although the store outlives the input;
//! * `$T0`…`$T9` — the token of the (i mod n)-th successful login of this input (empty if none);
//! * `$U0`…`$U9` — the user id of the (i mod n)-th successful answer naming one (signup, login…;
//!   `0` if none);
//! * `$C0`…`$C9` — the chat id of the (i mod n)-th successful answer naming one (`0` if none).
//!
//! ```text
//! POST /v1/signup
//!
//! {"username":"alice$N","password":"correct horse"}
//! %%
//! POST /v1/login
//!
//! {"username":"alice$N","password":"correct horse","device_name":"phone"}
//! %%
//! GET /v1/friends
//! authorization: Bearer $T0
//! ```
//!
//! # Invariants
//!
//! * nothing panics;
//! * never a 5xx, for any input (the store and the cores are healthy, so every failure is the
//!   client's);
//! * every `/v1/...` and `/healthz` answer is JSON that parses (or an empty 204), and so is any
//!   answer labelled JSON; `/metrics` answers Prometheus text;
//! * every error answer is `{"error":{"code":"…","message":"…"}}`, and a 405 names the allowed
//!   method.
//!
//! # The store
//!
//! It lives in `/dev/shm` when that exists (fsync on tmpfs is cheap, so signups and logins do
//! not bound the executions per second), else in the system's temp directory, in
//! `natter-fuzz-http-<pid>-<n>`, and is replaced by an empty one every [`RENEW_EVERY`] inputs. A
//! process cannot remove the last one at exit (libFuzzer ends with `exit`), so each new store first
//! removes the directories of processes that are gone.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::config::{Config, PasswordCost};
use crate::http::{Api, Endpoints, MAX_BODY, Request, Response};
use crate::metrics::Metrics;
use crate::runtime::{Command, Cores, Mesh};
use crate::store::Store;
use crate::store::writer::Writer;

/// Most requests handled per input.
pub const MAX_REQUESTS: usize = 32;

/// Event loops behind the API (membership changes and presence queries are answered by the
/// chat's owner core and the user's home core).
pub const CORES: usize = 2;

/// Inputs served by one store before it is replaced by a fresh one. The store keeps every account
/// the inputs create (about 1 KB of memory per input); renewing it bounds the process's memory for
/// campaigns of any length. Inputs never depend on an earlier input's accounts (`$N`), so renewal
/// changes no outcome.
pub const RENEW_EVERY: u64 = 50_000;

/// Prefix of the per-process store directories.
const DIR_PREFIX: &str = "natter-fuzz-http-";

/// Numbers for `$N`, unique within the process.
static EXECUTION: AtomicU64 = AtomicU64::new(0);

/// Feeds one input; panics when an invariant breaks.
pub fn run(data: &[u8]) {
    let mut instance = INSTANCE.lock().unwrap_or_else(PoisonError::into_inner);
    if instance.as_ref().is_none_or(|i| i.executions >= RENEW_EVERY) {
        if let Some(old) = instance.take() {
            old.close();
        }
        *instance = Some(Instance::open());
    }
    let Some(instance) = instance.as_mut() else {
        return;
    };
    instance.executions += 1;
    let execution = EXECUTION.fetch_add(1, Ordering::Relaxed);
    let mut seen = Seen::default();
    for raw in split(data).take(MAX_REQUESTS) {
        let parsed = Parsed::parse(raw);
        let path = seen.substitute(parsed.path.as_bytes(), execution);
        let path = String::from_utf8_lossy(&path);
        let authorization = parsed
            .authorization
            .map(|a| String::from_utf8_lossy(&seen.substitute(a.as_bytes(), execution)).into_owned());
        let mut body = seen.substitute(parsed.body, execution);
        body.truncate(MAX_BODY);
        let request = Request {
            method: &parsed.method,
            path: &path,
            authorization: authorization.as_deref(),
            body: &body,
            remote: parsed.remote,
        };
        let response = instance.api.handle(&request);
        check(&request, &response);
        seen.record(&response);
    }
}

/// The API over one store, with the event loops and the storage writer it talks to, and how many
/// inputs it has served.
struct Instance {
    api: Api,
    cores: Cores,
    writer: Writer,
    dir: PathBuf,
    executions: u64,
}

/// The process's current instance; renewed every [`RENEW_EVERY`] inputs.
static INSTANCE: Mutex<Option<Instance>> = Mutex::new(None);

impl Instance {
    /// An API over a new, empty store, wired as `Server::start` wires it: membership changes,
    /// presence queries and logouts go to [`CORES`] real event loops (listening on a free
    /// loopback port that nobody connects to), whose writes go through a real storage writer.
    fn open() -> Self {
        let dir = store_dir();
        let store = match Store::open(&dir) {
            Ok(store) => Arc::new(store),
            Err(err) => panic!("cannot open the fuzzing store in {}: {err}", dir.display()),
        };
        let config = Config {
            data_dir: dir.clone(),
            tcp_port: 0,
            tls_port: None,
            ws_port: None,
            quic_port: None,
            http_port: 0,
            cores: CORES,
            // The cheapest argon2 natterd allows: hashing is not what this target tests.
            password_cost: PasswordCost {
                memory_kib: 8,
                iterations: 1,
            },
            // Never rate-limited, so the outcome of an input does not depend on earlier ones.
            auth_rate_limit: u32::MAX,
            user_write_rate_limit: u32::MAX,
            limits: crate::config::AbuseLimits {
                friend_request_rate_limit: u32::MAX,
                // No failure ever waits: every login is evaluated.
                login_backoff: crate::http::LoginBackoff {
                    free: u32::MAX,
                    max_failures: u32::MAX,
                    ..crate::http::LoginBackoff::DEFAULT
                },
                ..crate::config::AbuseLimits::default()
            },
            ..Config::default()
        };
        let metrics = Arc::new(Metrics::new(config.cores));
        let mesh_slot: Arc<OnceLock<Mesh>> = Arc::default();
        let deliver_mesh = mesh_slot.clone();
        let deliver = Box::new(move |core, completions| {
            if let Some(mesh) = deliver_mesh.get() {
                let _ = mesh.send_blocking(core, Command::Committed(completions));
            }
        });
        let (writer, writer_tx) = match Writer::start(store.clone(), metrics.clone(), deliver) {
            Ok(started) => started,
            Err(err) => panic!("cannot start the storage writer: {err}"),
        };
        let acceptor = Arc::new(crate::transport::Acceptor {
            tls: None,
            ws: Arc::new(crate::transport::ws::WsSettings {
                max_frame: config.max_frame,
                origins: None,
            }),
            ws_tls: false,
        });
        let cores = match Cores::start(&config, acceptor, None, store.clone(), writer_tx, metrics.clone()) {
            Ok(cores) => cores,
            Err(err) => panic!("cannot start the event loops: {err}"),
        };
        let _ = mesh_slot.set(cores.mesh().clone());
        let endpoints = Endpoints::new(
            SocketAddr::from(([127, 0, 0, 1], 7180)),
            cores
                .addr(crate::transport::Kind::Tcp)
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
            None,
            None,
            false,
            None,
        );
        let api = Api::new(&config, store, cores.mesh().clone(), metrics, endpoints);
        Self {
            api,
            cores,
            writer,
            dir,
            executions: 0,
        }
    }

    /// Stops the event loops and the writer, closes the store and removes its directory.
    fn close(self) {
        drop(self.api);
        let _ = self.cores.shutdown();
        let _ = self.writer.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh directory for a store; first removes those of processes that are gone.
fn store_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let proc = Path::new("/proc");
    if proc.is_dir()
        && let Ok(entries) = std::fs::read_dir(&base)
    {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(DIR_PREFIX))
                .and_then(|n| n.split('-').next())
            else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !proc.join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = base.join(format!("{DIR_PREFIX}{}-{n}", std::process::id()));
    // A directory of an earlier process with the same id: start afresh.
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The requests of an input: the pieces between `%%` lines.
fn split(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let data = rest?;
        let mut at = 0;
        loop {
            let Some(line_end) = data.get(at..)?.iter().position(|&b| b == b'\n').map(|i| at + i) else {
                rest = None;
                return Some(data);
            };
            let next = line_end + 1;
            let line = data.get(next..).unwrap_or_default();
            let sep = line
                .strip_prefix(b"%%")
                .filter(|l| l.is_empty() || l.starts_with(b"\n") || l.starts_with(b"\r\n"));
            if let Some(after) = sep {
                let after = after.strip_prefix(b"\r").unwrap_or(after);
                rest = Some(after.strip_prefix(b"\n").unwrap_or(after));
                return data.get(..line_end);
            }
            at = next;
        }
    })
}

/// One request's parts, before placeholders are replaced.
struct Parsed<'a> {
    method: String,
    path: String,
    authorization: Option<String>,
    remote: IpAddr,
    body: &'a [u8],
}

impl<'a> Parsed<'a> {
    fn parse(raw: &'a [u8]) -> Self {
        let (head, body) = match find(raw, b"\n\n") {
            Some(i) => (
                raw.get(..i).unwrap_or_default(),
                raw.get(i + 2..).unwrap_or_default(),
            ),
            None => (raw, &[][..]),
        };
        let mut lines = head
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let first = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
        let (method, path) = match first.split_once(' ') {
            Some((m, p)) => (m.to_owned(), p.to_owned()),
            None => (first, String::new()),
        };
        let mut parsed = Parsed {
            method,
            path,
            authorization: None,
            remote: IpAddr::V4(Ipv4Addr::LOCALHOST),
            body,
        };
        for line in lines {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let (name, value) = (
                line.get(..colon).unwrap_or_default(),
                line.get(colon + 1..).unwrap_or_default(),
            );
            let value = String::from_utf8_lossy(value).trim().to_owned();
            if name.eq_ignore_ascii_case(b"authorization") {
                parsed.authorization.get_or_insert(value);
            } else if name.eq_ignore_ascii_case(b"x-remote")
                && let Ok(ip) = value.parse()
            {
                parsed.remote = ip;
            }
        }
        parsed
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Tokens, user ids and chat ids the API handed out during this input.
#[derive(Default)]
struct Seen {
    tokens: Vec<String>,
    users: Vec<u64>,
    chats: Vec<u64>,
}

impl Seen {
    /// Replaces `$N`, `$Tn`, `$Un` and `$Cn` in `text`.
    fn substitute(&self, text: &[u8], execution: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        let mut i = 0;
        while let Some(&b) = text.get(i) {
            let next = text.get(i + 1).copied();
            let digit = text
                .get(i + 2)
                .filter(|d| d.is_ascii_digit())
                .map(|d| usize::from(d - b'0'));
            match (b, next, digit) {
                (b'$', Some(b'N'), _) => {
                    out.extend_from_slice(execution.to_string().as_bytes());
                    i += 2;
                }
                (b'$', Some(b'T'), Some(n)) => {
                    if let Some(t) = self.tokens.get(n % self.tokens.len().max(1)) {
                        out.extend_from_slice(t.as_bytes());
                    }
                    i += 3;
                }
                (b'$', Some(b'U'), Some(n)) => {
                    let user = self.users.get(n % self.users.len().max(1)).copied().unwrap_or(0);
                    out.extend_from_slice(user.to_string().as_bytes());
                    i += 3;
                }
                (b'$', Some(b'C'), Some(n)) => {
                    let chat = self.chats.get(n % self.chats.len().max(1)).copied().unwrap_or(0);
                    out.extend_from_slice(chat.to_string().as_bytes());
                    i += 3;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    fn record(&mut self, response: &Response) {
        if !(200..300).contains(&response.status) {
            return;
        }
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&response.body) else {
            return;
        };
        if let Some(token) = json.get("token").and_then(|t| t.as_str()) {
            self.tokens.push(token.to_owned());
        }
        if let Some(user) = json.get("user_id").and_then(|u| u.as_u64()) {
            self.users.push(user);
        }
        if let Some(chat) = json.get("chat_id").and_then(|c| c.as_u64()) {
            self.chats.push(chat);
        }
    }
}

/// The invariants of one answer.
fn check(request: &Request<'_>, response: &Response) {
    let route = request.path.split_once('?').map_or(request.path, |(p, _)| p);
    assert!(
        (200..500).contains(&response.status),
        "{} {:?} answered {} {}",
        request.method,
        request.path,
        response.status,
        response.body
    );
    let is_json_route = route == "/v1" || route.starts_with("/v1/") || route == "/healthz";
    if is_json_route {
        assert_eq!(
            response.content_type, "application/json",
            "{} {route:?} is not JSON",
            request.method
        );
    }
    if route == "/metrics" && request.method == "GET" {
        assert!(
            response.content_type.starts_with("text/plain"),
            "/metrics is not Prometheus text"
        );
    }
    if response.content_type == "application/json" {
        if response.status == 204 {
            assert!(response.body.is_empty(), "a 204 with a body");
        } else {
            let json: serde_json::Value = match serde_json::from_str(&response.body) {
                Ok(json) => json,
                Err(err) => panic!(
                    "{} {route:?}: the body is not JSON ({err}): {}",
                    request.method, response.body
                ),
            };
            if response.status >= 400 {
                let error = json.get("error");
                let code = error.and_then(|e| e.get("code")).and_then(|c| c.as_str());
                let message = error.and_then(|e| e.get("message")).and_then(|m| m.as_str());
                assert!(
                    code.is_some_and(|c| !c.is_empty()) && message.is_some(),
                    "an error answer without error.code/message: {}",
                    response.body
                );
            }
        }
    }
    if response.status == 405 {
        assert!(response.allow.is_some(), "a 405 without an Allow header");
    }
}
