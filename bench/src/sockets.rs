//! Client sockets towards natterd: explicit source addresses spread over
//! 127.0.0.2–127.0.0.250 ([`Sources`]) and non-blocking connects from them
//! ([`open_socket`], [`connect_from`]).
//!
//! On these machines `bind(ip, 0)` managed only ~830 connects/s, explicit source ports
//! tens of thousands; spreading over many source hosts keeps clear of the ephemeral
//! port range. Every scenario that opens many connections takes its sockets from here.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use mio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

/// Source hosts 127.0.0.FIRST ..= 127.0.0.LAST (127.0.0.1 is left to natterd and the
/// HTTP client; the top of the range to anything else on the machine).
const FIRST_SOURCE_HOST: u8 = 2;
/// See [`FIRST_SOURCE_HOST`].
const LAST_SOURCE_HOST: u8 = 250;
/// Source ports come from FIRST_SOURCE_PORT .. FIRST_SOURCE_PORT + SOURCE_PORT_SPAN.
const FIRST_SOURCE_PORT: u16 = 20_000;
/// See [`FIRST_SOURCE_PORT`].
const SOURCE_PORT_SPAN: u16 = 40_000;
/// Busy source addresses skipped in a row before a connection is given up: far more
/// than a healthy machine ever needs, few enough to stop quickly when none is free.
const MAX_SOURCE_SKIPS: u32 = 10_000;

/// Hands out source addresses for new connections.
#[derive(Debug)]
pub(crate) enum Sources {
    /// 127.0.0.x:port pairs, hosts varying fastest (the server is on loopback).
    Loopback {
        /// Index of the next pair.
        next: u64,
    },
    /// The kernel chooses (the server is not on IPv4 loopback).
    Kernel,
}

impl Sources {
    /// Source addresses for connections to `server`. The start of the port range
    /// moves with the process id, so back-to-back runs rarely reuse a 4-tuple that is
    /// still in TIME_WAIT.
    pub(crate) fn for_server(server: SocketAddr) -> Sources {
        match server.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => {
                let hosts = u64::from(LAST_SOURCE_HOST - FIRST_SOURCE_HOST + 1);
                let port_offset = u64::from(std::process::id() % 400) * 100;
                Sources::Loopback {
                    next: port_offset * hosts,
                }
            }
            _ => Sources::Kernel,
        }
    }

    /// Share `part` of `parts` disjoint shares of these source addresses, one per
    /// thread that opens connections (`part` < `parts`).
    pub(crate) fn share(&self, part: usize, parts: usize) -> Sources {
        match self {
            Sources::Kernel => Sources::Kernel,
            Sources::Loopback { next } => {
                let hosts = u64::from(LAST_SOURCE_HOST - FIRST_SOURCE_HOST + 1);
                let pairs = hosts * u64::from(SOURCE_PORT_SPAN);
                let stride = pairs / parts.max(1) as u64;
                Sources::Loopback {
                    next: (next + part as u64 * stride) % pairs,
                }
            }
        }
    }

    /// The next source address, `None` to let the kernel choose.
    pub(crate) fn next(&mut self) -> Option<SocketAddrV4> {
        match self {
            Sources::Kernel => None,
            Sources::Loopback { next } => {
                let hosts = u64::from(LAST_SOURCE_HOST - FIRST_SOURCE_HOST + 1);
                let pairs = hosts * u64::from(SOURCE_PORT_SPAN);
                let k = *next % pairs;
                *next = (k + 1) % pairs;
                // Both casts are bounded by the modulo above.
                let host = FIRST_SOURCE_HOST + (k % hosts) as u8;
                let port = FIRST_SOURCE_PORT + (k / hosts) as u16;
                Some(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, host), port))
            }
        }
    }
}

/// Why a socket could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The source address is taken; try the next one.
    SourceBusy,
    /// Anything else: the connection fails.
    Failed(io::Error),
}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable => OpenError::SourceBusy,
            _ => OpenError::Failed(e),
        }
    }
}

/// Creates a non-blocking socket bound to `source` (if any) and starts connecting to
/// `server`.
pub(crate) fn open_socket(source: Option<SocketAddrV4>, server: SocketAddr) -> Result<TcpStream, OpenError> {
    let socket = Socket::new(
        Domain::for_address(server),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )
    .map_err(OpenError::Failed)?;
    socket.set_tcp_nodelay(true).map_err(OpenError::Failed)?;
    if let Some(source) = source {
        socket.set_reuse_address(true).map_err(OpenError::Failed)?;
        socket.bind(&SocketAddr::V4(source).into())?;
    }
    match socket.connect(&server.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error()) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// Opens a socket from the next free source address of `sources` and starts
/// connecting it to `server`, skipping busy source addresses.
///
/// # Errors
/// A description of the failure: no free source address after [`MAX_SOURCE_SKIPS`]
/// tries, or the OS refused the socket.
pub(crate) fn connect_from(sources: &mut Sources, server: SocketAddr) -> Result<TcpStream, String> {
    let mut skips = 0;
    loop {
        match open_socket(sources.next(), server) {
            Ok(stream) => return Ok(stream),
            Err(OpenError::SourceBusy) if skips < MAX_SOURCE_SKIPS => skips += 1,
            Err(OpenError::SourceBusy) => {
                return Err(format!("no free source address after {MAX_SOURCE_SKIPS} tries"));
            }
            Err(OpenError::Failed(e)) => return Err(format!("connect: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_sources_spread_over_hosts_then_ports() {
        let mut sources = Sources::Loopback { next: 0 };
        let first = sources.next().unwrap();
        assert_eq!(
            first,
            SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, FIRST_SOURCE_HOST), FIRST_SOURCE_PORT)
        );
        let hosts = usize::from(LAST_SOURCE_HOST - FIRST_SOURCE_HOST + 1);
        let mut last = first;
        for _ in 1..hosts {
            last = sources.next().unwrap();
            assert_eq!(last.port(), FIRST_SOURCE_PORT);
        }
        assert_eq!(*last.ip(), Ipv4Addr::new(127, 0, 0, LAST_SOURCE_HOST));
        let wrapped = sources.next().unwrap();
        assert_eq!(
            wrapped,
            SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, FIRST_SOURCE_HOST), FIRST_SOURCE_PORT + 1)
        );
    }

    #[test]
    fn loopback_sources_wrap_around_at_the_end_of_the_port_range() {
        let hosts = u64::from(LAST_SOURCE_HOST - FIRST_SOURCE_HOST + 1);
        let pairs = hosts * u64::from(SOURCE_PORT_SPAN);
        let mut sources = Sources::Loopback { next: pairs - 1 };
        let last = sources.next().unwrap();
        assert_eq!(last.port(), FIRST_SOURCE_PORT + SOURCE_PORT_SPAN - 1);
        assert_eq!(sources.next().unwrap().port(), FIRST_SOURCE_PORT);
    }

    #[test]
    fn sources_for_non_loopback_servers_are_left_to_the_kernel() {
        let mut sources = Sources::for_server("192.0.2.1:7100".parse().unwrap());
        assert_eq!(sources.next(), None);
        assert!(matches!(
            Sources::for_server("127.0.0.1:7100".parse().unwrap()),
            Sources::Loopback { .. }
        ));
    }

    #[test]
    fn shares_are_disjoint() {
        let sources = Sources::Loopback { next: 0 };
        let mut a = sources.share(0, 2);
        let mut b = sources.share(1, 2);
        let a_first = a.next().unwrap();
        let b_first = b.next().unwrap();
        assert_ne!(a_first, b_first);
        assert_eq!(a_first.port(), FIRST_SOURCE_PORT);
        assert_eq!(b_first.port(), FIRST_SOURCE_PORT + SOURCE_PORT_SPAN / 2);
        assert!(matches!(Sources::Kernel.share(1, 2), Sources::Kernel));
    }

    #[test]
    fn a_socket_binds_an_explicit_loopback_source() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let mut sources = Sources::for_server(server);
        let mut opened = None;
        for _ in 0..100 {
            let source = sources.next();
            match open_socket(source, server) {
                Ok(stream) => {
                    opened = Some((stream, source.unwrap()));
                    break;
                }
                Err(OpenError::SourceBusy) => continue,
                Err(OpenError::Failed(e)) => panic!("{e}"),
            }
        }
        let (_stream, source) = opened.expect("a free source address");
        let (_accepted, peer) = listener.accept().unwrap();
        assert_eq!(peer, SocketAddr::V4(source));
    }
}
