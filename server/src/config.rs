//! natterd's configuration: command-line flags, an optional TOML file with the
//! same keys (`--config`), and validation into a [`Config`].
//!
//! Precedence: a flag given on the command line beats the file, which beats the
//! built-in default.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The `--config` file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file named by `--config`.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The `--config` file is not valid TOML or has unknown keys or wrong types.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file named by `--config`.
        path: PathBuf,
        /// What the TOML parser said.
        message: String,
    },
    /// A value is out of its allowed range.
    #[error("invalid value for {key}: {message}")]
    Invalid {
        /// The flag / key name.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// The command line of natterd. Every flag can also be a key in the `--config` file
/// (with `-` replaced by `_`).
#[derive(Debug, Parser, Default)]
#[command(
    name = "natterd",
    version,
    about = "natter chat server",
    args_override_self = true
)]
pub struct Flags {
    /// TOML file with the same keys as the flags (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory of the embedded store [default: ./natter-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address every listener binds [default: 127.0.0.1].
    #[arg(long)]
    pub bind: Option<IpAddr>,
    /// HTTP side-port (signup, login, friends, metrics); 0 = any free port [default: 7180].
    #[arg(long)]
    pub http_port: Option<u16>,
    /// Raw TCP port for clients; 0 = any free port [default: 7100].
    #[arg(long)]
    pub tcp_port: Option<u16>,
    /// TLS 1.3 port (same frames as TCP, inside TLS); 0 = any free port, "off" =
    /// no TLS listener [default: 7101].
    #[arg(long, value_name = "PORT|off")]
    pub tls_port: Option<String>,
    /// PEM certificate chain for TLS (and `--ws-tls`); without it natterd
    /// creates a self-signed one in the data dir on first start and reuses it.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// WebSocket port (one frame per binary message); 0 = any free port, "off"
    /// = no WebSocket listener [default: 7102].
    #[arg(long, value_name = "PORT|off")]
    pub ws_port: Option<String>,
    /// QUIC port (UDP; ALPN `natter/1`, the TLS certificate, one bidirectional
    /// stream of the same frames as TCP); 0 = any free port, "off" = no QUIC
    /// [default: 7101].
    #[arg(long, value_name = "PORT|off")]
    pub quic_port: Option<String>,
    /// Serve WebSocket over TLS (`wss://`) with the TLS certificate.
    #[arg(long)]
    pub ws_tls: bool,
    /// Message search: "on" (an index under --data-dir/search, fed after each
    /// commit, and GET /v1/search) or "off" (no indexer thread, no index
    /// writes; GET /v1/search answers 503; turned on again, the index catches
    /// up from the store) [default: on].
    #[arg(long, value_name = "on|off")]
    pub search: Option<String>,
    /// Browser origins allowed to open a WebSocket, comma-separated (e.g.
    /// "https://chat.example"); a request without Origin is always allowed
    /// [default: any origin].
    #[arg(long, value_delimiter = ',')]
    pub ws_origin: Option<Vec<String>>,
    /// Event-loop threads [default: available parallelism].
    #[arg(long)]
    pub cores: Option<usize>,
    /// Close a session silent for this long, e.g. "180s", "500ms" [default: 180s].
    /// Clients ping every third of it: one radio wake-up a minute on an idle phone.
    #[arg(long)]
    pub heartbeat_timeout: Option<String>,
    /// A user whose last session ended goes offline only if none comes back within
    /// this, e.g. "30s", "200ms", "0s" [default: 30s]. Covers a network handover.
    #[arg(long)]
    pub presence_grace: Option<String>,
    /// How long after a message its sender may edit it, e.g. "15m", "1s" [default: 15m].
    #[arg(long)]
    pub edit_window: Option<String>,
    /// How long after a message its sender may delete it, e.g. "48h" [default: 48h]. A group's
    /// owner may delete any message of the group at any time.
    #[arg(long)]
    pub delete_window: Option<String>,
    /// Largest frame accepted from a client, in bytes [default: 524288].
    #[arg(long)]
    pub max_frame: Option<usize>,
    /// argon2id memory cost in KiB [default: 19456, OWASP]. Lower only for tests and benchmarks.
    #[arg(long)]
    pub argon2_memory_kib: Option<u32>,
    /// argon2id iterations [default: 2, OWASP].
    #[arg(long)]
    pub argon2_iterations: Option<u32>,
    /// Signups plus logins allowed per source address per minute [default: 30].
    #[arg(long)]
    pub auth_rate_limit: Option<u32>,
    /// Most simultaneous client connections per core [default: 200000].
    #[arg(long)]
    pub max_connections_per_core: Option<usize>,
    /// Sends per second one connection may make (bursts of the same size) [default: 1000].
    #[arg(long)]
    pub send_rate_limit: Option<u32>,
    /// Most live sessions of one user; a new session closes the oldest [default: 16].
    #[arg(long)]
    pub max_sessions_per_user: Option<usize>,
    /// Internal: commands each core's queue holds [default: 65536]. Command line
    /// only and hidden from `--help`: tests shrink it to exercise full queues.
    #[arg(long, hide = true)]
    pub core_queue_capacity: Option<usize>,
    /// Internal: ops the storage writer's queue holds [default: 65536]. Command
    /// line only and hidden from `--help`: tests shrink it to fill the queue.
    #[arg(long, hide = true)]
    pub writer_queue_capacity: Option<usize>,
    /// HTTP writes other than signup, login and logout (friend requests, groups,
    /// DMs, read markers, membership changes) one user may make per minute,
    /// bursts of as many [default: 600].
    #[arg(long)]
    pub user_write_rate_limit: Option<u32>,
    /// Free space to keep on the data directory's file system, e.g. "256MiB",
    /// "1GiB", "0" (off) [default: 256MiB]. Below it natterd refuses new
    /// messages and account writes with `storage_full` (retryable) instead of
    /// running out of disk mid-commit; reads and logins keep working.
    #[arg(long)]
    pub disk_reserve: Option<String>,
    /// Block cache of the store, e.g. "64MiB", "1GiB" (at least 1MiB)
    /// [default: 64MiB]. natterd's memory is this plus the memtables (bounded
    /// by --journal-limit) plus a fixed part plus per-connection state.
    #[arg(long)]
    pub cache_size: Option<String>,
    /// Journal growth after which natterd flushes every memtable, e.g.
    /// "16MiB" (at least 1MiB; "0" = off, fjall's own rotation only)
    /// [default: 16MiB]. Bounds what a restart after a crash replays.
    #[arg(long)]
    pub journal_limit: Option<String>,
    /// Push gateway notify URL used for pushers that name none, e.g.
    /// "https://sygnal.internal:5000/_matrix/push/v1/notify" (https or http) [default: none].
    #[arg(long)]
    pub push_gateway: Option<String>,
    /// PEM file of the CA certificates https push gateways must chain to,
    /// instead of the built-in Mozilla roots (a private CA, tests) [default: built-in roots].
    #[arg(long)]
    pub push_gateway_ca: Option<PathBuf>,
    /// Comma-separated hosts (`host` or `host:port`) a pusher's own gateway_url
    /// may name; the --push-gateway host is always allowed [default: none].
    #[arg(long)]
    pub push_gateway_allow: Option<String>,
    /// At most one notification per device per chat per this window [default: 5s].
    #[arg(long)]
    pub push_coalesce: Option<String>,
    /// A session silent for longer than this counts as offline for push
    /// [default: half the heartbeat timeout].
    #[arg(long)]
    pub push_silent_after: Option<String>,
    /// Time limit of one push gateway exchange (connect + answer) [default: 10s].
    #[arg(long)]
    pub push_timeout: Option<String>,
    /// Characters of message text in a `with_text` notification [default: 200].
    #[arg(long)]
    pub push_text_max: Option<usize>,
    /// Notifications per user per minute, bursts of as many [default: 60].
    #[arg(long)]
    pub push_rate_limit: Option<u32>,
    /// Internal: how long a first owed message waits before its notification
    /// [default: 200ms]. Command line only and hidden: tests lengthen it.
    #[arg(long, hide = true)]
    pub push_settle: Option<String>,
    /// Most side-port connections from one address (IPv6: one /64) [default: 64].
    #[arg(long)]
    pub http_connections_per_address: Option<usize>,
    /// Idle and header timeout of side-port connections once 3/4 of its slots
    /// are taken, e.g. "2s" [default: 2s].
    #[arg(long)]
    pub http_pressure_timeout: Option<String>,
    /// First wait after 5 consecutive failed logins at one account, doubling
    /// with each further failure, e.g. "1s" [default: 1s].
    #[arg(long)]
    pub login_backoff_base: Option<String>,
    /// Longest wait between two login attempts at one account [default: 15m].
    #[arg(long)]
    pub login_backoff_max: Option<String>,
    /// How long an account takes no password after 100 consecutive failures [default: 1h].
    #[arg(long)]
    pub login_lockout: Option<String>,
    /// Friend requests per user per minute, bursts of as many [default: 30].
    #[arg(long)]
    pub friend_request_rate_limit: Option<u32>,
    /// Most connections from one address still awaiting their Hello, per core [default: 256].
    #[arg(long)]
    pub preauth_per_address: Option<usize>,
    /// Most connections awaiting their Hello, per core; lowered at start so that
    /// all cores together hold at most a quarter of the open-files limit [default: 4096].
    #[arg(long)]
    pub preauth_total: Option<usize>,
    /// Internal: most addresses the signup/login limiter tracks [default:
    /// 100000]. Command line only and hidden: tests shrink it to attack it.
    #[arg(long, hide = true)]
    pub auth_rate_limit_table: Option<usize>,
}

/// The `--config` file: the same keys as [`Flags`].
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    bind: Option<IpAddr>,
    http_port: Option<u16>,
    tcp_port: Option<u16>,
    tls_port: Option<PortSetting>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    ws_port: Option<PortSetting>,
    quic_port: Option<PortSetting>,
    ws_tls: Option<bool>,
    search: Option<String>,
    ws_origin: Option<Vec<String>>,
    cores: Option<usize>,
    heartbeat_timeout: Option<String>,
    presence_grace: Option<String>,
    edit_window: Option<String>,
    delete_window: Option<String>,
    max_frame: Option<usize>,
    argon2_memory_kib: Option<u32>,
    argon2_iterations: Option<u32>,
    auth_rate_limit: Option<u32>,
    max_connections_per_core: Option<usize>,
    send_rate_limit: Option<u32>,
    max_sessions_per_user: Option<usize>,
    user_write_rate_limit: Option<u32>,
    disk_reserve: Option<String>,
    cache_size: Option<String>,
    journal_limit: Option<String>,
    push_gateway: Option<String>,
    push_gateway_allow: Option<String>,
    push_gateway_ca: Option<PathBuf>,
    push_coalesce: Option<String>,
    push_silent_after: Option<String>,
    push_timeout: Option<String>,
    push_text_max: Option<usize>,
    push_rate_limit: Option<u32>,
    http_connections_per_address: Option<usize>,
    http_pressure_timeout: Option<String>,
    login_backoff_base: Option<String>,
    login_backoff_max: Option<String>,
    login_lockout: Option<String>,
    friend_request_rate_limit: Option<u32>,
    preauth_per_address: Option<usize>,
    preauth_total: Option<usize>,
}

/// A port key in the `--config` file: a number, or `"off"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortSetting {
    Port(u16),
    Text(String),
}

impl PortSetting {
    fn into_text(self) -> String {
        match self {
            PortSetting::Port(p) => p.to_string(),
            PortSetting::Text(t) => t,
        }
    }
}

/// Default `--tls-port`.
pub const DEFAULT_TLS_PORT: u16 = 7101;
/// Default `--ws-port`.
pub const DEFAULT_WS_PORT: u16 = 7102;
/// Default `--quic-port` (UDP: the same number as the TLS port, which is TCP).
pub const DEFAULT_QUIC_PORT: u16 = 7101;

/// Parses a port flag: a number (0 = any free port) or `off` (`None`).
fn parse_port(key: &'static str, text: &str) -> Result<Option<u16>, ConfigError> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| ConfigError::Invalid {
        key,
        message: format!("{text:?} is neither a port number nor \"off\""),
    })
}

/// Default `--user-write-rate-limit`: HTTP writes per user per minute, bursts of
/// as many. A person befriending, creating groups and marking chats read makes a
/// few a minute; a client marking every chat read on start-up makes one per chat.
/// 600 (10 a second sustained) leaves both far inside it, while one account can
/// cost the store at most 10 synced batches a second.
pub const DEFAULT_USER_WRITE_RATE_LIMIT: u32 = 600;

/// Default `--heartbeat-timeout`. Clients ping every third of it (60 s): an idle
/// phone wakes its radio once a minute — each wake-up keeps a cellular radio in
/// its high-power state for seconds, so pinging every 15–30 s would cost several
/// times the battery — while staying well inside the few minutes of idle time
/// after which carrier NATs and firewalls drop a silent TCP flow. A phone that
/// vanishes without closing its socket is shown offline after this plus the grace.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(180);

/// Default `--presence-grace`: long enough for a Wi-Fi ↔ cellular handover, a
/// short tunnel or an app restart to reconnect (with backoff, usually a few
/// seconds) without friends seeing offline → online flicker; short enough that a
/// user who closed the app is shown offline within half a minute.
pub const DEFAULT_PRESENCE_GRACE: Duration = Duration::from_secs(30);

/// argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordCost {
    /// Memory in KiB (OWASP: 19456).
    pub memory_kib: u32,
    /// Iterations (OWASP: 2).
    pub iterations: u32,
}

impl PasswordCost {
    /// The OWASP-recommended argon2id parameters (m=19 MiB, t=2, p=1).
    pub const OWASP: Self = Self {
        memory_kib: 19_456,
        iterations: 2,
    };

    /// True when the cost is below the OWASP recommendation.
    pub fn is_lowered(&self) -> bool {
        self.memory_kib < Self::OWASP.memory_kib || self.iterations < Self::OWASP.iterations
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// Address every listener binds.
    pub bind: IpAddr,
    /// HTTP side-port (0 = any).
    pub http_port: u16,
    /// Raw TCP port (0 = any).
    pub tcp_port: u16,
    /// TLS port (0 = any, `None` = off).
    pub tls_port: Option<u16>,
    /// TLS certificate chain and key (PEM); `None` = self-signed in the data dir.
    pub tls_cert: Option<PathBuf>,
    /// The key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// WebSocket port (0 = any, `None` = off).
    pub ws_port: Option<u16>,
    /// QUIC port, UDP (0 = any, `None` = off).
    pub quic_port: Option<u16>,
    /// WebSocket over TLS (`wss://`).
    pub ws_tls: bool,
    /// Message search on (`--search`; off: no indexer, /v1/search is 503).
    pub search: bool,
    /// Allowed browser origins for WebSocket (`None` = any).
    pub ws_origins: Option<Vec<String>>,
    /// Event-loop threads.
    pub cores: usize,
    /// A session silent this long is closed.
    pub heartbeat_timeout: Duration,
    /// A user whose last session ended goes offline only if none comes back within this.
    pub presence_grace: Duration,
    /// How long after a message its sender may edit it.
    pub edit_window: Duration,
    /// How long after a message its sender may delete it (a group's owner: always).
    pub delete_window: Duration,
    /// Largest accepted frame, in bytes (length prefix included).
    pub max_frame: usize,
    /// argon2id cost.
    pub password_cost: PasswordCost,
    /// Signups plus logins per source address per minute.
    pub auth_rate_limit: u32,
    /// Most simultaneous connections per core.
    pub max_connections_per_core: usize,
    /// Sends per second per connection.
    pub send_rate_limit: u32,
    /// Most live sessions per user (the oldest is closed to make room).
    pub max_sessions_per_user: usize,
    /// Commands each core's queue holds (internal; tests make it tiny).
    pub core_queue_capacity: usize,
    /// Ops the storage writer's queue holds (internal; tests make it tiny).
    pub writer_queue_capacity: usize,
    /// HTTP writes other than signup, login and logout per user per minute
    /// (bursts of as many).
    pub user_write_rate_limit: u32,
    /// Bytes to keep free on the data directory's file system (0: no reserve);
    /// see `store/space.rs`.
    pub disk_reserve: u64,
    /// The storage engine's settings (`--cache-size`, `--journal-limit`;
    /// `store/engine.rs`).
    pub store: crate::store::engine::Settings,
    /// Push notifications (`--push-*`).
    pub push: crate::push::PushConfig,
    /// Limits against abuse (`docs/SECURITY.md`).
    pub limits: AbuseLimits,
}

/// Limits against abuse; `docs/SECURITY.md` lists each with its default and
/// the attack it answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbuseLimits {
    /// Most side-port connections from one address (IPv6: its /64).
    pub http_connections_per_address: usize,
    /// Idle and header timeout of side-port connections once 3/4 of
    /// [`crate::http::MAX_CONNECTIONS`] are open (otherwise 30 s and 10 s).
    pub http_pressure_timeout: Duration,
    /// Per-account backoff of failed logins.
    pub login_backoff: crate::http::LoginBackoff,
    /// Friend requests per user per minute.
    pub friend_request_rate_limit: u32,
    /// Most connections awaiting their Hello from one address, per core.
    pub preauth_per_address: usize,
    /// Most connections awaiting their Hello, per core (before the open-files
    /// cap that `runtime` applies at start).
    pub preauth_total: usize,
    /// Most addresses the signup/login limiter tracks (LRU-evicted past it).
    pub auth_rate_limit_table: usize,
}

impl Default for AbuseLimits {
    fn default() -> Self {
        Self {
            http_connections_per_address: 64,
            http_pressure_timeout: Duration::from_secs(2),
            login_backoff: crate::http::LoginBackoff::DEFAULT,
            friend_request_rate_limit: 30,
            preauth_per_address: 256,
            preauth_total: 4096,
            auth_rate_limit_table: crate::http::MAX_TRACKED_ADDRESSES,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./natter-data"),
            bind: IpAddr::from([127, 0, 0, 1]),
            http_port: 7180,
            tcp_port: 7100,
            tls_port: Some(DEFAULT_TLS_PORT),
            tls_cert: None,
            tls_key: None,
            ws_port: Some(DEFAULT_WS_PORT),
            quic_port: Some(DEFAULT_QUIC_PORT),
            ws_tls: false,
            search: true,
            ws_origins: None,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            presence_grace: DEFAULT_PRESENCE_GRACE,
            edit_window: crate::core::DEFAULT_EDIT_WINDOW,
            delete_window: crate::core::DEFAULT_DELETE_WINDOW,
            max_frame: natter_wire::DEFAULT_MAX_FRAME,
            password_cost: PasswordCost::OWASP,
            auth_rate_limit: 30,
            max_connections_per_core: 200_000,
            send_rate_limit: 1000,
            max_sessions_per_user: crate::core::DEFAULT_MAX_SESSIONS_PER_USER,
            core_queue_capacity: crate::runtime::QUEUE_CAPACITY,
            writer_queue_capacity: crate::store::writer::CHANNEL_CAPACITY,
            user_write_rate_limit: DEFAULT_USER_WRITE_RATE_LIMIT,
            disk_reserve: crate::store::space::DEFAULT_DISK_RESERVE,
            store: crate::store::engine::Settings::default(),
            push: crate::push::PushConfig {
                silent_after: DEFAULT_HEARTBEAT_TIMEOUT / 2,
                ..crate::push::PushConfig::default()
            },
            limits: AbuseLimits::default(),
        }
    }
}

impl Config {
    /// The port of the listeners of `kind`, `None` when it is off (raw TCP is
    /// always on).
    pub fn port(&self, kind: crate::transport::Kind) -> Option<u16> {
        match kind {
            crate::transport::Kind::Tcp => Some(self.tcp_port),
            crate::transport::Kind::Tls => self.tls_port,
            crate::transport::Kind::Ws => self.ws_port,
            crate::transport::Kind::Quic => self.quic_port,
        }
    }

    /// Whether the TLS certificate is needed (a TLS listener, or `--ws-tls`).
    pub fn needs_tls(&self) -> bool {
        self.tls_port.is_some() || (self.ws_tls && self.ws_port.is_some()) || self.quic_port.is_some()
    }

    /// Builds a configuration from parsed flags (reading `--config` if given).
    ///
    /// # Errors
    /// A missing or malformed file, unknown keys, or values out of range.
    pub fn from_flags(flags: Flags) -> Result<Self, ConfigError> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let d = Config::default();
        let push_flags = flags_push(&flags, &file);
        let limits = abuse_limits(&flags, &file, &d.limits)?;
        let heartbeat = flags.heartbeat_timeout.or(file.heartbeat_timeout);
        let grace = flags.presence_grace.or(file.presence_grace);
        let config = Config {
            data_dir: flags.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
            bind: flags.bind.or(file.bind).unwrap_or(d.bind),
            http_port: flags.http_port.or(file.http_port).unwrap_or(d.http_port),
            tcp_port: flags.tcp_port.or(file.tcp_port).unwrap_or(d.tcp_port),
            tls_port: match flags.tls_port.or(file.tls_port.map(PortSetting::into_text)) {
                Some(text) => parse_port("tls-port", &text)?,
                None => d.tls_port,
            },
            tls_cert: flags.tls_cert.or(file.tls_cert),
            tls_key: flags.tls_key.or(file.tls_key),
            ws_port: match flags.ws_port.or(file.ws_port.map(PortSetting::into_text)) {
                Some(text) => parse_port("ws-port", &text)?,
                None => d.ws_port,
            },
            quic_port: match flags.quic_port.or(file.quic_port.map(PortSetting::into_text)) {
                Some(text) => parse_port("quic-port", &text)?,
                None => d.quic_port,
            },
            ws_tls: flags.ws_tls || file.ws_tls.unwrap_or(false),
            search: match flags.search.as_deref().or(file.search.as_deref()).map(str::trim) {
                None => d.search,
                Some(t) if t.eq_ignore_ascii_case("on") => true,
                Some(t) if t.eq_ignore_ascii_case("off") => false,
                Some(t) => {
                    return Err(ConfigError::Invalid {
                        key: "search",
                        message: format!("{t:?} is neither \"on\" nor \"off\""),
                    });
                }
            },
            ws_origins: flags.ws_origin.or(file.ws_origin),
            cores: flags.cores.or(file.cores).unwrap_or(d.cores),
            heartbeat_timeout: match heartbeat {
                Some(text) => parse_duration(&text).map_err(|message| ConfigError::Invalid {
                    key: "heartbeat-timeout",
                    message,
                })?,
                None => d.heartbeat_timeout,
            },
            presence_grace: match grace {
                Some(text) => parse_duration(&text).map_err(|message| ConfigError::Invalid {
                    key: "presence-grace",
                    message,
                })?,
                None => d.presence_grace,
            },
            edit_window: match flags.edit_window.or(file.edit_window) {
                Some(text) => parse_duration(&text).map_err(|message| ConfigError::Invalid {
                    key: "edit-window",
                    message,
                })?,
                None => d.edit_window,
            },
            delete_window: match flags.delete_window.or(file.delete_window) {
                Some(text) => parse_duration(&text).map_err(|message| ConfigError::Invalid {
                    key: "delete-window",
                    message,
                })?,
                None => d.delete_window,
            },
            max_frame: flags.max_frame.or(file.max_frame).unwrap_or(d.max_frame),
            password_cost: PasswordCost {
                memory_kib: flags
                    .argon2_memory_kib
                    .or(file.argon2_memory_kib)
                    .unwrap_or(d.password_cost.memory_kib),
                iterations: flags
                    .argon2_iterations
                    .or(file.argon2_iterations)
                    .unwrap_or(d.password_cost.iterations),
            },
            auth_rate_limit: flags
                .auth_rate_limit
                .or(file.auth_rate_limit)
                .unwrap_or(d.auth_rate_limit),
            max_connections_per_core: flags
                .max_connections_per_core
                .or(file.max_connections_per_core)
                .unwrap_or(d.max_connections_per_core),
            send_rate_limit: flags
                .send_rate_limit
                .or(file.send_rate_limit)
                .unwrap_or(d.send_rate_limit),
            max_sessions_per_user: flags
                .max_sessions_per_user
                .or(file.max_sessions_per_user)
                .unwrap_or(d.max_sessions_per_user),
            core_queue_capacity: flags.core_queue_capacity.unwrap_or(d.core_queue_capacity),
            writer_queue_capacity: flags.writer_queue_capacity.unwrap_or(d.writer_queue_capacity),
            user_write_rate_limit: flags
                .user_write_rate_limit
                .or(file.user_write_rate_limit)
                .unwrap_or(d.user_write_rate_limit),
            disk_reserve: match flags.disk_reserve.clone().or(file.disk_reserve.clone()) {
                Some(text) => parse_size(&text).map_err(|message| ConfigError::Invalid {
                    key: "disk-reserve",
                    message,
                })?,
                None => d.disk_reserve,
            },
            store: crate::store::engine::Settings {
                cache_size: match flags.cache_size.clone().or(file.cache_size.clone()) {
                    Some(text) => parse_size(&text).map_err(|message| ConfigError::Invalid {
                        key: "cache-size",
                        message,
                    })?,
                    None => d.store.cache_size,
                },
                journal_limit: match flags.journal_limit.clone().or(file.journal_limit.clone()) {
                    Some(text) => parse_size(&text).map_err(|message| ConfigError::Invalid {
                        key: "journal-limit",
                        message,
                    })?,
                    None => d.store.journal_limit,
                },
            },
            push: d.push.clone(),
            limits,
        };
        let mut config = config;
        config.push = push_config(&push_flags, config.heartbeat_timeout)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_owned(),
            })
        };
        if self.cores == 0 || self.cores > 1024 {
            return invalid("cores", "must be between 1 and 1024");
        }
        if self.max_frame < 1024 || self.max_frame > 16 << 20 {
            return invalid("max-frame", "must be between 1024 and 16777216 bytes");
        }
        if self.heartbeat_timeout < Duration::from_millis(10) {
            return invalid("heartbeat-timeout", "must be at least 10ms");
        }
        if self.heartbeat_timeout > Duration::from_secs(24 * 3600) {
            return invalid("heartbeat-timeout", "must be at most 24h");
        }
        if self.presence_grace > Duration::from_secs(24 * 3600) {
            return invalid("presence-grace", "must be at most 24h");
        }
        if self.password_cost.memory_kib < 8 || self.password_cost.iterations < 1 {
            return invalid(
                "argon2-memory-kib/argon2-iterations",
                "memory must be >= 8 KiB and iterations >= 1",
            );
        }
        if self.auth_rate_limit == 0 {
            return invalid("auth-rate-limit", "must be at least 1 per minute");
        }
        if self.user_write_rate_limit == 0 {
            return invalid("user-write-rate-limit", "must be at least 1 per minute");
        }
        if self.send_rate_limit == 0 {
            return invalid("send-rate-limit", "must be at least 1 per second");
        }
        if self.max_sessions_per_user == 0 || self.max_sessions_per_user > 10_000 {
            return invalid("max-sessions-per-user", "must be between 1 and 10000");
        }
        if self.core_queue_capacity == 0 {
            return invalid("core-queue-capacity", "must be at least 1");
        }
        if self.writer_queue_capacity == 0 {
            return invalid("writer-queue-capacity", "must be at least 1");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid("tls-cert/tls-key", "must be given together");
        }
        if let Some(origins) = &self.ws_origins
            && origins.iter().any(|o| o.trim().is_empty())
        {
            return invalid("ws-origin", "origins must not be empty");
        }
        let l = &self.limits;
        if l.http_connections_per_address == 0 {
            return invalid("http-connections-per-address", "must be at least 1");
        }
        if l.http_pressure_timeout < Duration::from_millis(100) {
            return invalid("http-pressure-timeout", "must be at least 100ms");
        }
        let b = &l.login_backoff;
        if b.base.is_zero() || b.max_delay < b.base || b.lockout < b.max_delay {
            return invalid(
                "login-backoff-base/login-backoff-max/login-lockout",
                "need 0 < base <= max <= lockout",
            );
        }
        if l.auth_rate_limit_table == 0 {
            return invalid("auth-rate-limit-table", "must be at least 1");
        }
        if l.friend_request_rate_limit == 0 {
            return invalid("friend-request-rate-limit", "must be at least 1 per minute");
        }
        if l.preauth_per_address == 0 || l.preauth_total < l.preauth_per_address {
            return invalid(
                "preauth-per-address/preauth-total",
                "need 1 <= preauth-per-address <= preauth-total",
            );
        }
        if self.max_connections_per_core == 0 {
            return invalid("max-connections-per-core", "must be at least 1");
        }
        use crate::store::engine::{MIN_CACHE_SIZE, MIN_JOURNAL_LIMIT};
        if self.store.cache_size < MIN_CACHE_SIZE {
            return invalid("cache-size", "must be at least 1MiB");
        }
        if self.store.journal_limit != 0 && self.store.journal_limit < MIN_JOURNAL_LIMIT {
            return invalid("journal-limit", "must be 0 (off) or at least 1MiB");
        }
        Ok(())
    }
}

/// The abuse limits, flag over file over default.
fn abuse_limits(flags: &Flags, file: &FileConfig, d: &AbuseLimits) -> Result<AbuseLimits, ConfigError> {
    let duration = |key, flag: &Option<String>, file: &Option<String>, default: Duration| match flag
        .as_ref()
        .or(file.as_ref())
    {
        Some(text) => parse_duration(text).map_err(|message| ConfigError::Invalid { key, message }),
        None => Ok(default),
    };
    let b = d.login_backoff;
    Ok(AbuseLimits {
        http_connections_per_address: flags
            .http_connections_per_address
            .or(file.http_connections_per_address)
            .unwrap_or(d.http_connections_per_address),
        http_pressure_timeout: duration(
            "http-pressure-timeout",
            &flags.http_pressure_timeout,
            &file.http_pressure_timeout,
            d.http_pressure_timeout,
        )?,
        login_backoff: crate::http::LoginBackoff {
            base: duration(
                "login-backoff-base",
                &flags.login_backoff_base,
                &file.login_backoff_base,
                b.base,
            )?,
            max_delay: duration(
                "login-backoff-max",
                &flags.login_backoff_max,
                &file.login_backoff_max,
                b.max_delay,
            )?,
            lockout: duration(
                "login-lockout",
                &flags.login_lockout,
                &file.login_lockout,
                b.lockout,
            )?,
            ..b
        },
        friend_request_rate_limit: flags
            .friend_request_rate_limit
            .or(file.friend_request_rate_limit)
            .unwrap_or(d.friend_request_rate_limit),
        preauth_per_address: flags
            .preauth_per_address
            .or(file.preauth_per_address)
            .unwrap_or(d.preauth_per_address),
        preauth_total: flags
            .preauth_total
            .or(file.preauth_total)
            .unwrap_or(d.preauth_total),
        auth_rate_limit_table: flags.auth_rate_limit_table.unwrap_or(d.auth_rate_limit_table),
    })
}

/// The `--push-*` values, flag over file.
struct PushFlags {
    gateway: Option<String>,
    allow: Option<String>,
    ca: Option<PathBuf>,
    coalesce: Option<String>,
    silent_after: Option<String>,
    timeout: Option<String>,
    text_max: Option<usize>,
    rate_limit: Option<u32>,
    settle: Option<String>,
}

fn flags_push(flags: &Flags, file: &FileConfig) -> PushFlags {
    PushFlags {
        gateway: flags.push_gateway.clone().or(file.push_gateway.clone()),
        allow: flags
            .push_gateway_allow
            .clone()
            .or(file.push_gateway_allow.clone()),
        ca: flags.push_gateway_ca.clone().or(file.push_gateway_ca.clone()),
        coalesce: flags.push_coalesce.clone().or(file.push_coalesce.clone()),
        silent_after: flags.push_silent_after.clone().or(file.push_silent_after.clone()),
        timeout: flags.push_timeout.clone().or(file.push_timeout.clone()),
        text_max: flags.push_text_max.or(file.push_text_max),
        rate_limit: flags.push_rate_limit.or(file.push_rate_limit),
        settle: flags.push_settle.clone(),
    }
}

/// The certificates (DER) of a PEM file; at least one, or an error saying why.
fn load_ca(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c.der().to_vec()),
            Ok(_) => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// Validates the push settings; the silent threshold defaults to half the heartbeat timeout
/// (a healthy client pings every third of it, so a live session is never that silent).
fn push_config(f: &PushFlags, heartbeat: Duration) -> Result<crate::push::PushConfig, ConfigError> {
    let invalid = |key, message: String| ConfigError::Invalid { key, message };
    let duration = |key, text: &Option<String>, default: Duration| match text {
        Some(t) => parse_duration(t).map_err(|m| invalid(key, m)),
        None => Ok(default),
    };
    let d = crate::push::PushConfig::default();
    let config = crate::push::PushConfig {
        gateway: f.gateway.clone(),
        allow: f
            .allow
            .as_deref()
            .map(|a| {
                a.split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        coalesce: duration("push-coalesce", &f.coalesce, d.coalesce)?,
        silent_after: duration("push-silent-after", &f.silent_after, heartbeat / 2)?,
        timeout: duration("push-timeout", &f.timeout, d.timeout)?,
        text_max: f.text_max.unwrap_or(d.text_max),
        rate_per_minute: f.rate_limit.unwrap_or(d.rate_per_minute),
        settle: duration("push-settle", &f.settle, d.settle)?,
        gateway_ca: match &f.ca {
            Some(path) => load_ca(path).map_err(|m| invalid("push-gateway-ca", m))?.into(),
            None => d.gateway_ca.clone(),
        },
        ..d
    };
    if let Some(url) = &config.gateway {
        crate::push::check_gateway_url(&config, Some(url))
            .map_err(|e| invalid("push-gateway", format!("{url:?}: {e}")))?;
    }
    if config.coalesce > Duration::from_secs(3600) {
        return Err(invalid("push-coalesce", "must be at most 1h".into()));
    }
    if config.timeout < Duration::from_millis(10) || config.timeout > Duration::from_secs(300) {
        return Err(invalid("push-timeout", "must be between 10ms and 5m".into()));
    }
    if config.rate_per_minute == 0 {
        return Err(invalid("push-rate-limit", "must be at least 1 per minute".into()));
    }
    if config.text_max == 0 || config.text_max > 4096 {
        return Err(invalid("push-text-max", "must be between 1 and 4096".into()));
    }
    Ok(config)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Parses a size in bytes: "1048576", "512KiB", "64MiB", "2GiB" (also "KB",
/// "MB", "GB" as powers of 1,000).
///
/// # Errors
/// Anything else, with a message saying what is accepted.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (use e.g. 256MiB, 1GiB, 0)"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KiB, MiB, GiB, KB, MB or GB)"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses "90s", "500ms", "2m" or a bare number of seconds.
///
/// # Errors
/// Anything else, with a message saying what is accepted.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (use e.g. 90s, 500ms, 2m)"))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
        other => Err(format!("unknown duration unit {other:?} (use ms, s, m or h)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 days").is_err());
    }

    #[test]
    fn file_values_apply_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("natter.toml");
        std::fs::write(&path, "tcp_port = 9000\nhttp_port = 9001\ncores = 3\n").unwrap();
        let flags = Flags {
            config: Some(path),
            http_port: Some(0),
            ..Flags::default()
        };
        let c = Config::from_flags(flags).unwrap();
        assert_eq!((c.tcp_port, c.http_port, c.cores), (9000, 0, 3));
        assert_eq!(c.heartbeat_timeout, DEFAULT_HEARTBEAT_TIMEOUT);
        assert_eq!(c.presence_grace, DEFAULT_PRESENCE_GRACE);
    }

    #[test]
    fn presence_grace_comes_from_the_file_or_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("natter.toml");
        std::fs::write(&path, "presence_grace = \"5s\"\nheartbeat_timeout = \"2m\"\n").unwrap();
        let from_file = Config::from_flags(Flags {
            config: Some(path.clone()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(from_file.presence_grace, Duration::from_secs(5));
        assert_eq!(from_file.heartbeat_timeout, Duration::from_secs(120));
        let flag = Config::from_flags(Flags {
            config: Some(path),
            presence_grace: Some("0s".into()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(flag.presence_grace, Duration::ZERO);
        let err = Config::from_flags(Flags {
            presence_grace: Some("soon".into()),
            ..Flags::default()
        })
        .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    key: "presence-grace",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn sizes_and_the_disk_reserve() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("5KB"), Ok(5_000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3 parsecs").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
        assert_eq!(
            Config::default().disk_reserve,
            crate::store::space::DEFAULT_DISK_RESERVE
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("natter.toml");
        std::fs::write(&path, "disk_reserve = \"8MiB\"\n").unwrap();
        let from_file = Config::from_flags(Flags {
            config: Some(path.clone()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(from_file.disk_reserve, 8 << 20);
        let flag = Config::from_flags(Flags {
            config: Some(path),
            disk_reserve: Some("0".into()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(flag.disk_reserve, 0);
        let err = Config::from_flags(Flags {
            disk_reserve: Some("much".into()),
            ..Flags::default()
        })
        .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    key: "disk-reserve",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn store_settings_come_from_the_file_or_the_flag_and_bad_ones_are_refused_by_name() {
        use crate::store::engine::{DEFAULT_CACHE_SIZE, DEFAULT_JOURNAL_LIMIT};
        let d = Config::default();
        assert_eq!(d.store.cache_size, DEFAULT_CACHE_SIZE);
        assert_eq!(d.store.journal_limit, DEFAULT_JOURNAL_LIMIT);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("natter.toml");
        std::fs::write(&path, "cache_size = \"256MiB\"\njournal_limit = \"32MiB\"\n").unwrap();
        let from_file = Config::from_flags(Flags {
            config: Some(path.clone()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(from_file.store.cache_size, 256 << 20);
        assert_eq!(from_file.store.journal_limit, 32 << 20);
        let flag = Config::from_flags(Flags {
            config: Some(path),
            cache_size: Some("1GiB".into()),
            journal_limit: Some("0".into()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(flag.store.cache_size, 1 << 30);
        assert_eq!(flag.store.journal_limit, 0, "0 turns the journal limit off");
        for (cache, journal, key) in [
            ("plenty", "16MiB", "cache-size"),
            ("0", "16MiB", "cache-size"),
            ("1048575", "16MiB", "cache-size"),
            ("64MiB", "often", "journal-limit"),
            ("64MiB", "4KiB", "journal-limit"),
            ("64MiB", "1048575", "journal-limit"),
        ] {
            let err = Config::from_flags(Flags {
                cache_size: Some(cache.into()),
                journal_limit: Some(journal.into()),
                ..Flags::default()
            })
            .unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { key: k, .. } if *k == key),
                "{cache}/{journal}: {err}"
            );
        }
        // The smallest accepted values are accepted.
        let smallest = Config::from_flags(Flags {
            cache_size: Some("1MiB".into()),
            journal_limit: Some("1MiB".into()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(smallest.store.cache_size, 1 << 20);
        assert_eq!(smallest.store.journal_limit, 1 << 20);
    }

    #[test]
    fn user_write_rate_limit_comes_from_the_file_or_the_flag_and_is_positive() {
        assert_eq!(
            Config::default().user_write_rate_limit,
            DEFAULT_USER_WRITE_RATE_LIMIT
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("natter.toml");
        std::fs::write(&path, "user_write_rate_limit = 42\n").unwrap();
        let from_file = Config::from_flags(Flags {
            config: Some(path.clone()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(from_file.user_write_rate_limit, 42);
        let flag = Config::from_flags(Flags {
            config: Some(path),
            user_write_rate_limit: Some(7),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(flag.user_write_rate_limit, 7);
        let err = Config::from_flags(Flags {
            user_write_rate_limit: Some(0),
            ..Flags::default()
        })
        .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    key: "user-write-rate-limit",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn abuse_limits_come_from_the_file_or_the_flag_and_are_checked() {
        let d = Config::from_flags(Flags::default()).unwrap().limits;
        assert_eq!(d, AbuseLimits::default());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("natter.toml");
        std::fs::write(
            &path,
            "http_connections_per_address = 8\nlogin_backoff_base = \"2s\"\npreauth_total = 100\npreauth_per_address = 50\n",
        )
        .unwrap();
        let l = Config::from_flags(Flags {
            config: Some(path.clone()),
            login_backoff_base: Some("500ms".into()),
            friend_request_rate_limit: Some(5),
            ..Flags::default()
        })
        .unwrap()
        .limits;
        assert_eq!(l.http_connections_per_address, 8);
        assert_eq!(l.login_backoff.base, Duration::from_millis(500), "the flag wins");
        assert_eq!((l.preauth_total, l.preauth_per_address), (100, 50));
        assert_eq!(l.friend_request_rate_limit, 5);
        assert_eq!(l.login_backoff.max_failures, 100, "NIST SP 800-63B");
        for bad in [
            Flags {
                http_connections_per_address: Some(0),
                ..Flags::default()
            },
            Flags {
                login_backoff_base: Some("20m".into()),
                ..Flags::default()
            },
            Flags {
                preauth_per_address: Some(10),
                preauth_total: Some(5),
                ..Flags::default()
            },
            Flags {
                friend_request_rate_limit: Some(0),
                ..Flags::default()
            },
        ] {
            assert!(matches!(
                Config::from_flags(bad),
                Err(ConfigError::Invalid { .. })
            ));
        }
    }

    #[test]
    fn transport_ports_default_on_and_can_be_turned_off() {
        let d = Config::from_flags(Flags::default()).unwrap();
        assert_eq!((d.tls_port, d.ws_port, d.ws_tls), (Some(7101), Some(7102), false));
        let off = Config::from_flags(Flags {
            tls_port: Some("off".into()),
            ws_port: Some("0".into()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!((off.tls_port, off.ws_port), (None, Some(0)));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("natter.toml");
        std::fs::write(
            &path,
            "tls_port = 9101\nws_port = \"off\"\nws_origin = [\"https://a.example\"]\n",
        )
        .unwrap();
        let file = Config::from_flags(Flags {
            config: Some(path),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!((file.tls_port, file.ws_port), (Some(9101), None));
        assert_eq!(file.ws_origins, Some(vec!["https://a.example".to_owned()]));
        let err = Config::from_flags(Flags {
            tls_port: Some("soon".into()),
            ..Flags::default()
        })
        .unwrap_err();
        assert!(
            matches!(err, ConfigError::Invalid { key: "tls-port", .. }),
            "{err}"
        );
        let err = Config::from_flags(Flags {
            tls_cert: Some("cert.pem".into()),
            ..Flags::default()
        })
        .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    key: "tls-cert/tls-key",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn bad_files_and_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "tcp_prot = 9000\n").unwrap();
        let err = Config::from_flags(Flags {
            config: Some(path),
            ..Flags::default()
        })
        .unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        let err = Config::from_flags(Flags {
            cores: Some(0),
            ..Flags::default()
        })
        .unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { key: "cores", .. }), "{err}");
        let missing = Flags {
            config: Some(dir.path().join("nope.toml")),
            ..Flags::default()
        };
        assert!(matches!(
            Config::from_flags(missing),
            Err(ConfigError::Read { .. })
        ));
    }
}
