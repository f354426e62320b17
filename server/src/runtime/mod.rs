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
use crate::core::CoreConfig;
use crate::ids::CoreId;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::writer::WriterSender;
use crate::transport::tcp;

/// The running event loops.
#[derive(Debug)]
pub struct Cores {
    mesh: Mesh,
    threads: Vec<JoinHandle<io::Result<()>>>,
    tcp_addr: SocketAddr,
}

impl Cores {
    /// Binds the TCP listeners and starts one event-loop thread per core.
    ///
    /// # Errors
    /// When a listener cannot be bound or a poll/waker/thread cannot be created.
    pub fn start(
        config: &Config,
        store: Arc<Store>,
        writer: WriterSender,
        metrics: Arc<Metrics>,
    ) -> io::Result<Self> {
        let (listeners, tcp_addr) =
            tcp::bind_listeners(SocketAddr::new(config.bind, config.tcp_port), config.cores)?;
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
        let mut threads = Vec::with_capacity(config.cores);
        for (i, ((poll, listener), queue)) in polls.into_iter().zip(listeners).zip(receivers).enumerate() {
            let core_config = CoreConfig {
                core: CoreId(i),
                cores: config.cores,
                heartbeat_timeout: config.heartbeat_timeout,
                presence_grace: config.presence_grace,
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
            };
            let worker = worker::Worker::new(core_config, poll, listener, queue, shared)?;
            let thread = std::thread::Builder::new()
                .name(format!("natter-core-{i}"))
                .spawn(move || worker.run())?;
            threads.push(thread);
        }
        Ok(Self {
            mesh,
            threads,
            tcp_addr,
        })
    }

    /// The address the TCP listeners are bound to.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
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
