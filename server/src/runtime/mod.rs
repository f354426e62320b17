//! The per-core mio event loops and the queue mesh between them.

mod mesh;

pub use mesh::{Mesh, QUEUE_CAPACITY};

use crate::ids::{DeviceId, UserId};

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
    pub fn start(config: &Config, store: Arc<Store>, metrics: Arc<Metrics>) -> io::Result<Self> {
        let (listeners, tcp_addr) =
            tcp::bind_listeners(SocketAddr::new(config.bind, config.tcp_port), config.cores)?;
        let mut polls = Vec::with_capacity(config.cores);
        let mut handles = Vec::with_capacity(config.cores);
        let mut receivers = Vec::with_capacity(config.cores);
        for _ in 0..config.cores {
            let poll = mio::Poll::new()?;
            let waker = Arc::new(mio::Waker::new(poll.registry(), worker::WAKER)?);
            let (tx, rx) = Mesh::queue();
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
                limits: natter_wire::Limits::with_max_frame(config.max_frame),
                max_connections: config.max_connections_per_core,
            };
            let worker = worker::Worker::new(
                core_config,
                poll,
                listener,
                queue,
                mesh.clone(),
                store.clone(),
                metrics.clone(),
            )?;
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
