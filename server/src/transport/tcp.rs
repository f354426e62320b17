//! Raw TCP listeners: one `SO_REUSEPORT` listener per core on the same port,
//! so the kernel spreads accepted connections over the cores; and the
//! vectored frame write that TCP and TLS share.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;

use bytes::{Buf, Bytes};
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

/// Frames handed to one vectored write: a presence snapshot (one frame per
/// friend) or a burst of pushes leaves in one syscall instead of one per frame.
pub const WRITE_SLICES: usize = 64;

/// One vectored write of up to [`WRITE_SLICES`] frames from the front of
/// `frames` into `out` (a socket, or TLS's plaintext side); what was written
/// is removed (the front frame may be left partly written). Returns the bytes
/// taken.
///
/// # Errors
/// `WouldBlock` when `out` took nothing; a write of 0 bytes is reported as
/// `WriteZero` (the peer is gone).
pub fn write_frames(out: &mut impl io::Write, frames: &mut VecDeque<Bytes>) -> io::Result<usize> {
    let written = {
        let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
        let n = slices
            .iter_mut()
            .zip(frames.iter())
            .map(|(slice, frame)| *slice = IoSlice::new(frame))
            .count();
        out.write_vectored(slices.get(..n).unwrap_or_default())?
    };
    if written == 0 && frames.iter().any(|f| !f.is_empty()) {
        return Err(io::ErrorKind::WriteZero.into());
    }
    let mut left = written;
    while let Some(front) = frames.front_mut() {
        if front.len() > left {
            front.advance(left);
            break;
        }
        left -= front.len();
        frames.pop_front();
    }
    Ok(written)
}
