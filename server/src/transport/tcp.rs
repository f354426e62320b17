//! Raw TCP listeners: one `SO_REUSEPORT` listener per core on the same port,
//! so the kernel spreads accepted connections over the cores.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Accept backlog of each listener: deep enough for a reconnect storm of tens
/// of thousands of clients to queue in the kernel rather than be refused.
const BACKLOG: i32 = 65_535;

/// Binds `cores` listeners on `addr` with `SO_REUSEPORT`. With port 0 the
/// first listener picks a free port and the others join it.
///
/// # Errors
/// When the address cannot be bound (in use, not local, no permission).
pub fn bind_listeners(
    addr: SocketAddr,
    cores: usize,
) -> io::Result<(Vec<mio::net::TcpListener>, SocketAddr)> {
    let mut listeners = Vec::with_capacity(cores);
    let mut bound = addr;
    for _ in 0..cores.max(1) {
        let socket = Socket::new(Domain::for_address(bound), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&bound.into())?;
        socket.listen(BACKLOG)?;
        let std_listener: std::net::TcpListener = socket.into();
        bound = std_listener.local_addr()?;
        listeners.push(mio::net::TcpListener::from_std(std_listener));
    }
    Ok((listeners, bound))
}

/// Prepares an accepted client socket: no Nagle delay (frames are small and
/// latency matters more than packet count).
pub fn configure_stream(stream: &mio::net::TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)
}
