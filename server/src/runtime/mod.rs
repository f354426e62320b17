//! The per-core mio event loops and the queue mesh between them.

mod mesh;
mod outbox;
mod reader;
pub mod supervise;

pub use mesh::{Mesh, QUEUE_CAPACITY, Refused};
pub use outbox::{OUTBOX_PAUSE_MARK, OUTBOX_RESUME_MARK};

use crate::core::{CoreMsg, ReadError, UserPresence};
pub use crate::core::{MembershipChange, MembershipError};
use crate::ids::{DeviceId, UserId};
use crate::store::writer::Completion;

/// Commands drained per queue per loop turn: enough to amortise the wake-up,
/// small enough that a flood from other cores cannot starve this core's sockets.
pub const COMMANDS_PER_TURN: usize = 1024;

/// What one core asks of another (or the HTTP side-port of a core).
#[derive(Debug)]
#[non_exhaustive]
pub enum Command {
    /// Close every session of this device: its token was revoked (logout).
    CloseDevice {
        /// The device's user; the command goes to this user's home core.
        user: UserId,
        /// The device whose sessions end.
        device: DeviceId,
    },
    /// Adopt an authenticated session whose user's home core this is.
    Adopt(Box<Adopted>),
    /// Work from another core, batched per loop turn: sends for chats this core
    /// owns, answers for sessions it holds, pushes for users it is home to.
    Core(Vec<CoreMsg>),
    /// The storage writer durably committed these writes of this core, in order.
    Committed(Vec<Completion>),
    /// Add or remove a group member (from the HTTP side-port), in order with the chat's messages.
    Membership {
        /// The change.
        change: MembershipChange,
        /// Where the outcome goes, once the change is durable (or refused).
        reply: crossbeam_channel::Sender<Result<(), MembershipError>>,
    },
    /// The friendship between `a` and `b` changed (committed by the HTTP
    /// side-port): sent to both users' home cores, which re-read it and start
    /// or stop pushing presence between them.
    FriendsChanged {
        /// One of the two users.
        a: UserId,
        /// The other.
        b: UserId,
    },
    /// `GET /v1/presence`: the presence of `user`, homed on the receiving core.
    PresenceQuery {
        /// The user asked about.
        user: UserId,
        /// Where the answer goes.
        reply: crossbeam_channel::Sender<Result<UserPresence, ReadError>>,
    },
    /// The push thread asks which of these devices (all homed on the receiving
    /// core) have a session heard from within `silent_after`
    /// ([`crate::core::Core::devices_heard_within`]).
    PushLiveness {
        /// The devices, with their users.
        devices: Vec<(UserId, DeviceId)>,
        /// How long a session may have been silent and still count as live.
        silent_after: std::time::Duration,
        /// Where the answer goes, one bool per device in order.
        reply: crossbeam_channel::Sender<Vec<bool>>,
    },
    /// QUIC traffic between cores: a datagram for the core owning its
    /// connection ID, or an event between a connection and its endpoint.
    Quic(Box<quic::QuicCommand>),
    /// Stop accepting, close every session and leave the loop.
    Shutdown,
}

mod worker;

pub use worker::Adopted;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::config::Config;
use crate::core::{CoreConfig, PreAuthLimits};
use crate::ids::CoreId;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::writer::WriterSender;
use crate::transport::quic::{self, QuicDriver, QuicSetup};
use crate::transport::{Acceptor, Kind, tcp};

/// The running event loops.
#[derive(Debug)]
pub struct Cores {
    mesh: Mesh,
    threads: Vec<JoinHandle<io::Result<()>>>,
    addrs: Vec<(Kind, SocketAddr)>,
}

impl Cores {
    /// Binds the listeners of every enabled transport (one per core each) and
    /// starts one event-loop thread per core.
    ///
    /// # Errors
    /// When a listener cannot be bound or a poll/waker/thread cannot be created.
    pub fn start(
        config: &Config,
        acceptor: Arc<Acceptor>,
        quic: Option<&QuicSetup>,
        store: Arc<Store>,
        writer: WriterSender,
        metrics: Arc<Metrics>,
    ) -> io::Result<Self> {
        let mut per_core: Vec<Vec<(Kind, mio::net::TcpListener)>> =
            (0..config.cores).map(|_| Vec::new()).collect();
        let mut addrs = Vec::new();
        for kind in Kind::ALL {
            let Some(port) = config.port(kind) else {
                continue;
            };
            let (listeners, addr) = tcp::bind_listeners(SocketAddr::new(config.bind, port), config.cores)
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("binding the {} port {port}: {e}", kind.as_str()),
                    )
                })?;
            addrs.push((kind, addr));
            for (core, listener) in per_core.iter_mut().zip(listeners) {
                core.push((kind, listener));
            }
        }
        let mut drivers: Vec<Option<QuicDriver>> = (0..config.cores).map(|_| None).collect();
        if let (Some(setup), Some(port)) = (quic, config.port(Kind::Quic)) {
            let (sockets, addr) = quic::bind_sockets(SocketAddr::new(config.bind, port), config.cores)
                .map_err(|e| io::Error::new(e.kind(), format!("binding the quic port {port} (UDP): {e}")))?;
            addrs.push((Kind::Quic, addr));
            for (i, (slot, socket)) in drivers.iter_mut().zip(sockets).enumerate() {
                *slot = Some(QuicDriver::new(CoreId(i), socket, setup)?);
            }
        }
        let mut polls = Vec::with_capacity(config.cores);
        let mut handles = Vec::with_capacity(config.cores);
        let mut receivers = Vec::with_capacity(config.cores);
        for _ in 0..config.cores {
            let poll = mio::Poll::new()?;
            let waker = Arc::new(mio::Waker::new(poll.registry(), worker::WAKER)?);
            let (tx, rx) = Mesh::queue_with_capacity(config.core_queue_capacity);
            polls.push(poll);
            handles.push((tx, waker));
            receivers.push(rx);
        }
        let mesh = Mesh::new(handles);
        let preauth = preauth_limits(config);
        let mut threads = Vec::with_capacity(config.cores);
        for (i, (((poll, listeners), queue), quic)) in polls
            .into_iter()
            .zip(per_core)
            .zip(receivers)
            .zip(drivers)
            .enumerate()
        {
            let core_config = CoreConfig {
                core: CoreId(i),
                cores: config.cores,
                heartbeat_timeout: config.heartbeat_timeout,
                presence_grace: config.presence_grace,
                edit_window: config.edit_window,
                delete_window: config.delete_window,
                limits: natter_wire::Limits::with_max_frame(config.max_frame),
                max_connections: config.max_connections_per_core,
                send_rate: config.send_rate_limit,
                max_sessions_per_user: config.max_sessions_per_user,
            };
            let shared = worker::Shared {
                mesh: mesh.clone(),
                store: store.clone(),
                writer: writer.clone(),
                metrics: metrics.clone(),
                preauth,
            };
            let worker = worker::Worker::new(
                core_config,
                poll,
                listeners,
                quic,
                acceptor.clone(),
                queue,
                shared,
            )?;
            let thread = std::thread::Builder::new()
                .name(format!("natter-core-{i}"))
                .spawn(move || worker.run())?;
            threads.push(thread);
        }
        Ok(Self { mesh, threads, addrs })
    }

    /// The address the listeners of `kind` are bound to, if it is enabled.
    pub fn addr(&self, kind: Kind) -> Option<SocketAddr> {
        self.addrs.iter().find(|(k, _)| *k == kind).map(|(_, a)| *a)
    }

    /// Handles to the cores' queues.
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// The first core thread that has ended (returned or panicked) although
    /// nobody asked it to stop, and why: natterd must not run on without it.
    pub fn first_dead(&mut self) -> Option<String> {
        let i = self.threads.iter().position(JoinHandle::is_finished)?;
        let thread = self.threads.remove(i);
        let why = match thread.join() {
            Ok(Ok(())) => "stopped".to_owned(),
            Ok(Err(e)) => format!("failed: {e}"),
            Err(_) => "panicked".to_owned(),
        };
        Some(format!("event loop thread {i} {why}"))
    }

    /// Asks every core to close its sessions and stop, and waits for them.
    ///
    /// # Errors
    /// The first I/O error a core's loop died of, if any.
    pub fn shutdown(self) -> io::Result<()> {
        for core in 0..self.mesh.len() {
            let _ = self.mesh.send_blocking(CoreId(core), Command::Shutdown);
        }
        let mut result = Ok(());
        for thread in self.threads {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = result.and(Err(e)),
                Err(_) => result = result.and(Err(io::Error::other("a core thread panicked"))),
            }
        }
        result
    }
}

/// The per-core caps on connections awaiting authentication: the configured
/// ones, with `total` lowered so that all cores together hold at most a quarter
/// of the open-files limit (the rest stays for authenticated sessions, the
/// store, the side-port and the descriptors `accept` needs).
fn preauth_limits(config: &Config) -> PreAuthLimits {
    let nofile = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(u64::MAX, |(soft, _)| soft);
    let share = usize::try_from(nofile / 4 / config.cores.max(1) as u64).unwrap_or(usize::MAX);
    let total = config.limits.preauth_total.min(share).max(1);
    let per_address = config.limits.preauth_per_address.min(total);
    if total < config.limits.preauth_total {
        tracing::info!(
            nofile,
            total,
            "connections awaiting authentication per core capped at a quarter of the open-files limit"
        );
    }
    PreAuthLimits { per_address, total }
}
