//! Assembles a running natterd: the store, the per-core event loops and the
//! HTTP side-port; and takes them down again in order on shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::config::Config;
use crate::http::{self, Api, Endpoints, HttpServer};
use crate::metrics::Metrics;
use crate::push::{self, PushHandle, PushService};
use crate::runtime::{Command, Cores, Mesh, Refused, supervise};
use crate::search::{self, SearchError, SearchHandle, SearchService};
use crate::store::writer::{Completion, CompletionSink, Offered, WriteOp, Writer};
use crate::store::{Store, StoreError};
use crate::transport::tls::{TlsError, TlsSetup};
use crate::transport::ws::WsSettings;
use crate::transport::{Acceptor, Kind};

/// HTTP worker threads: enough to overlap a few slow password hashes with
/// quick requests (hashes themselves are capped at one per core).
fn http_workers(cores: usize) -> usize {
    (cores * 2).clamp(4, 16)
}

/// Longest a clean stop waits for fjall to flush every memtable (a full
/// `--journal-limit` of them takes well under a second on an idle disk).
const SHUTDOWN_FLUSH_DEADLINE: Duration = Duration::from_secs(10);

/// Why natterd could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The store could not be opened or closed cleanly.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A durable write failed at shutdown (the final sync): the store is
    /// poisoned, natterd exits with [`crate::store::POISON_EXIT_CODE`] like
    /// on every other storage failure, and recovers from the journal on restart.
    #[error("store failed at shutdown: {0}")]
    Poisoned(StoreError),
    /// The TLS certificate or key could not be loaded or created.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The search index could not be opened or its thread started.
    #[error("search: {0}")]
    Search(#[from] SearchError),
    /// The TLS configuration could not be turned into QUIC's.
    #[error("QUIC: {0}")]
    Quic(#[from] crate::transport::quic::QuicError),
    /// A listener, thread or poll could not be set up, or a core died.
    #[error("{what}: {source}")]
    Io {
        /// What natterd was doing.
        what: &'static str,
        /// What the OS said.
        source: io::Error,
    },
}

impl ServerError {
    /// True when this is a storage failure that must end natterd with
    /// [`crate::store::POISON_EXIT_CODE`] (a failed durable write).
    pub fn is_storage_failure(&self) -> bool {
        matches!(self, Self::Poisoned(_))
    }
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> ServerError {
    move |source| ServerError::Io { what, source }
}

/// Hands the writer's completions to the origin cores' queues without ever
/// blocking the writer (`Mesh::offer`): a full queue gives them back and the
/// writer offers them again, in order, later. One writer thread offers, so
/// each core receives its completions in commit order (FIFO per pair).
struct CoreSink {
    /// Set once the cores exist; nothing is committed before that.
    mesh: Arc<OnceLock<Mesh>>,
}

impl CompletionSink for CoreSink {
    fn offer(&mut self, core: crate::ids::CoreId, completions: Vec<Completion>) -> Offered {
        let Some(mesh) = self.mesh.get() else {
            return Offered::Full(completions);
        };
        match mesh.offer(core, Command::Committed(completions)) {
            Ok(()) => Offered::Taken,
            Err(Refused::Full(Command::Committed(completions))) => Offered::Full(completions),
            Err(Refused::Full(_) | Refused::Stopped) => Offered::Gone,
        }
    }
}

/// A running natterd.
#[derive(Debug)]
pub struct Server {
    cores: Cores,
    http: HttpServer,
    push: PushService,
    search: Option<SearchService>,
    writer: Writer,
    store: Arc<Store>,
    endpoints: Endpoints,
}

impl Server {
    /// Opens the store, binds every listener and starts the threads.
    ///
    /// # Errors
    /// When the store cannot be opened or an address cannot be bound.
    pub fn start(config: Config) -> Result<Self, ServerError> {
        raise_open_files_limit();
        let store = Arc::new(Store::open_with(&config.data_dir, &config.store)?);
        // Checked once now (a start on a full disk refuses writes from the first one,
        // instead of crash-looping on ENOSPC), then by the storage writer.
        store.space().set_reserve(config.disk_reserve);
        let metrics = Arc::new(Metrics::new(config.cores));
        let http_listener = std::net::TcpListener::bind(SocketAddr::new(config.bind, config.http_port))
            .map_err(io_err("binding the HTTP side-port"))?;
        let http_addr = http_listener
            .local_addr()
            .map_err(io_err("reading the HTTP address"))?;
        // The writer reports commits to the cores through the mesh, which exists
        // once the cores do; nothing is written before that.
        let mesh_slot: Arc<OnceLock<Mesh>> = Arc::default();
        // The push thread learns of commits from the writer (after each fsync)
        // and asks the cores about live sessions; it starts once the cores exist.
        let push_slot: Arc<OnceLock<PushHandle>> = Arc::default();
        let observer_slot = push_slot.clone();
        // The search indexer learns of commits the same way (after each fsync,
        // a non-blocking hand-over); it catches up from the store at start.
        // `--search off`: no indexer, nothing observed, /v1/search answers 503.
        let (search, search_observer, search_index): (Option<SearchService>, Option<SearchHandle>, _) =
            if config.search {
                let (service, handle, index) =
                    search::start(&config.data_dir, store.clone(), metrics.search.clone())?;
                (Some(service), Some(handle), Some(index))
            } else {
                (None, None, None)
            };
        let (writer, writer_tx) = Writer::start_observed(
            store.clone(),
            metrics.clone(),
            Box::new(CoreSink {
                mesh: mesh_slot.clone(),
            }),
            config.writer_queue_capacity,
            Some(Box::new(move |ops: &[WriteOp]| {
                if let Some(push) = observer_slot.get() {
                    push.committed(ops);
                }
                if let Some(search) = &search_observer {
                    search.committed(ops);
                }
            })),
        )
        .map_err(io_err("starting the storage writer"))?;
        let tls = if config.needs_tls() {
            let setup = TlsSetup::load(
                config.tls_cert.as_deref(),
                config.tls_key.as_deref(),
                &config.data_dir,
                config.bind,
            )?;
            tracing::info!(cert = %setup.cert_path.display(), sha256 = %setup.fingerprint,
                "TLS certificate (pin this SHA-256 fingerprint in clients)");
            Some(setup)
        } else {
            None
        };
        let acceptor = Arc::new(Acceptor {
            tls: tls.as_ref().map(|t| t.config.clone()),
            ws: Arc::new(WsSettings {
                max_frame: config.max_frame,
                origins: config.ws_origins.clone(),
            }),
            ws_tls: config.ws_tls,
        });
        let quic = match (&tls, config.quic_port) {
            (Some(tls), Some(_)) => Some(crate::transport::quic::QuicSetup::new(
                &tls.config,
                config.cores,
                config.heartbeat_timeout.saturating_mul(2),
            )?),
            _ => None,
        };
        let cores = Cores::start(
            &config,
            acceptor,
            quic.as_ref(),
            store.clone(),
            writer_tx,
            metrics.clone(),
        )
        .map_err(io_err("starting the event loops"))?;
        let _ = mesh_slot.set(cores.mesh().clone());
        let (push, push_handle) = push::start(
            config.push.clone(),
            store.clone(),
            cores.mesh().clone(),
            metrics.clone(),
        )
        .map_err(io_err("starting the push thread"))?;
        let _ = push_slot.set(push_handle.clone());
        let endpoints = Endpoints::new(
            http_addr,
            cores.addr(Kind::Tcp).unwrap_or(http_addr),
            cores.addr(Kind::Tls),
            cores.addr(Kind::Ws),
            config.ws_tls,
            tls.as_ref().map(|t| t.fingerprint.clone()),
        )
        .with_quic(cores.addr(Kind::Quic), tls.map(|t| t.fingerprint));
        let api = Api::new(
            &config,
            store.clone(),
            cores.mesh().clone(),
            metrics,
            endpoints.clone(),
        )
        .with_push(push_handle);
        let api = Arc::new(match search_index {
            Some(index) => api.with_search(index),
            None => api,
        });
        let side_port_limits = http::SidePortLimits {
            per_address: config.limits.http_connections_per_address,
            pressure_timeout: config.limits.http_pressure_timeout,
        };
        let http = http::start_limited(http_listener, api, http_workers(config.cores), side_port_limits)
            .map_err(io_err("starting the HTTP side-port"))?;
        if config.password_cost.is_lowered() {
            tracing::warn!(
                memory_kib = config.password_cost.memory_kib,
                iterations = config.password_cost.iterations,
                "password hashing cost is LOWERED below OWASP: for tests and benchmarks only"
            );
        }
        // Every background thread exists by now (tantivy's later ones are made by
        // these and start with their nice value): the message path first.
        match crate::priority::lower_threads(crate::priority::BACKGROUND) {
            Ok(threads) => tracing::debug!(threads, "background threads reniced"),
            Err(error) => tracing::warn!(%error, "cannot lower the background threads' CPU priority"),
        }
        tracing::info!(http = %endpoints.http, urls = ?endpoints.urls, cores = config.cores,
            data_dir = %config.data_dir.display(), "natterd listening");
        Ok(Self {
            cores,
            http,
            push,
            search,
            writer,
            store,
            endpoints,
        })
    }

    /// The bound addresses (port 0 resolved).
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Stops accepting, closes every session, commits what the writer still
    /// holds, then flushes and closes the store.
    ///
    /// # Errors
    /// A core that died of an I/O error, or a store that failed to persist.
    pub fn shutdown(self) -> Result<(), ServerError> {
        self.http.shutdown();
        // What the push thread had not sent yet stays owed in the store.
        self.push.shutdown();
        let cores = self.cores.shutdown().map_err(io_err("stopping the event loops"));
        // The cores handed the writer their last writes (the `last_seen` of
        // users still online) before they stopped; this commits them.
        self.writer.shutdown()?;
        // After the writer: every commit has been handed over; the indexer
        // commits what it applied (the rest is caught up at the next start).
        if let Some(search) = self.search {
            search.shutdown();
        }
        self.store.persist().map_err(ServerError::Poisoned)?;
        // Not needed for durability (the journal holds everything): it makes
        // the next start skip the journal instead of inserting it again.
        match self.store.flush_memtables(SHUTDOWN_FLUSH_DEADLINE) {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                deadline_s = SHUTDOWN_FLUSH_DEADLINE.as_secs(),
                "memtables not all flushed by the deadline; the next start replays them from the journal"
            ),
            Err(error) => tracing::warn!(%error, "cannot flush the memtables at shutdown"),
        }
        cores
    }

    /// Fail-stop check, called by the main thread every
    /// [`supervise::SUPERVISE_INTERVAL`]: exits the process if an event loop
    /// or the storage writer has ended without being asked to (see
    /// [`crate::runtime::supervise`]; panics end it from the panic hook).
    fn check_threads(&mut self) {
        let writer_died = self.writer.is_finished();
        let dead = if writer_died {
            Some("the storage writer thread ended".to_owned())
        } else {
            self.cores.first_dead()
        };
        if let Some(why) = dead {
            // The writer's death is a storage failure, whatever killed it.
            let code = if writer_died || self.store.is_poisoned() {
                crate::store::POISON_EXIT_CODE
            } else {
                supervise::THREAD_DIED_EXIT_CODE
            };
            supervise::fail_stop(code, &why);
        }
    }
}

/// Runs natterd until SIGINT or SIGTERM. Prints one `NATTERD_READY {json}`
/// line on stdout once every listener is bound (for scripts and tests).
/// Supervises the threads meanwhile: if one dies, the process exits
/// non-zero within a second ([`crate::runtime::supervise`]).
///
/// # Errors
/// Anything that stops natterd from starting or stopping cleanly.
pub fn run(config: Config) -> Result<(), ServerError> {
    let signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(io_err("installing signal handlers"))?;
    let mut server = Server::start(config)?;
    // A thread that panics before this is still found by `check_threads`.
    supervise::install_panic_hook(Arc::downgrade(&server.store));
    let ready = serde_json::to_string(server.endpoints()).unwrap_or_default();
    {
        use std::io::Write as _;
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "NATTERD_READY {ready}");
        let _ = out.flush();
    }
    let signal = wait_for_signal(signals, &mut server)?;
    tracing::info!(signal, "shutting down");
    server.shutdown()?;
    tracing::info!("natterd stopped");
    Ok(())
}

/// Blocks until SIGINT or SIGTERM, checking the threads every
/// [`supervise::SUPERVISE_INTERVAL`] meanwhile.
fn wait_for_signal(
    mut signals: signal_hook::iterator::Signals,
    server: &mut Server,
) -> Result<i32, ServerError> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("natter-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let _ = tx.send(signal);
            }
        })
        .map_err(io_err("starting the signal thread"))?;
    loop {
        match rx.recv_timeout(supervise::SUPERVISE_INTERVAL) {
            Ok(signal) => return Ok(signal),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => server.check_threads(),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                return Err(ServerError::Io {
                    what: "waiting for signals",
                    source: io::Error::other("the signal thread ended"),
                });
            }
        }
    }
}

/// Lifts the soft open-files limit to the hard one: every connection is a file.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
}
