//! A spare file descriptor kept open so that `accept` never fails for lack of
//! one ([`FdReserve`]), the classic trick (libev's docs, nginx, HAProxy): when
//! `accept` reports EMFILE or ENFILE the pending connection stays in the
//! kernel's backlog, the listener stays readable, and a level-triggered loop
//! spins while honest clients wait for a descriptor that never comes. Closing
//! the spare frees one, the connection is accepted and at once closed (the
//! client sees a clean close instead of hanging), and the spare is opened again.
//!
//! The caps on connections (pre-authentication per address and in total, the
//! side-port's per-address cap) keep the process well below its open-files
//! limit; the reserve is what makes a limit hit anyway (many authenticated
//! sessions, a lowered `ulimit -n`) degrade to refused connections rather than
//! a stuck listener.

use std::fs::File;
use std::io;

/// `EMFILE`: the process is out of file descriptors (Linux errno 24).
const EMFILE: i32 = 24;
/// `ENFILE`: the system is out of file descriptors (Linux errno 23).
const ENFILE: i32 = 23;

/// One spare descriptor (`/dev/null` opened for reading).
#[derive(Debug)]
pub struct FdReserve {
    spare: Option<File>,
    /// Connections accepted and dropped for lack of a descriptor, ever.
    dropped: u64,
}

impl FdReserve {
    /// Opens the spare descriptor. Without one (already out of descriptors)
    /// the reserve starts empty and tries again at the next shortage.
    pub fn new() -> Self {
        Self {
            spare: File::open("/dev/null").ok(),
            dropped: 0,
        }
    }

    /// Whether `e` is the process or the system running out of descriptors.
    pub fn is_out_of_fds(e: &io::Error) -> bool {
        matches!(e.raw_os_error(), Some(EMFILE | ENFILE))
    }

    /// After `accept` failed with [`FdReserve::is_out_of_fds`]: closes the
    /// spare, accepts one connection with `accept` and closes it at once,
    /// then re-opens the spare. Returns true when a connection was dropped
    /// this way (the caller may try again: more may be waiting).
    pub fn shed<T>(&mut self, accept: impl FnOnce() -> io::Result<T>) -> bool {
        let had_spare = self.spare.take().is_some();
        let shed = accept().is_ok();
        self.spare = File::open("/dev/null").ok();
        if shed {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped,
                    had_spare,
                    "out of file descriptors: accepted and closed a connection with the reserve"
                );
            }
        }
        shed
    }

    /// Connections accepted and closed for lack of a descriptor so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl Default for FdReserve {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn sheds_a_pending_connection_when_out_of_descriptors() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let mut reserve = FdReserve::new();
        assert!(reserve.spare.is_some());
        assert!(reserve.shed(|| listener.accept()));
        assert_eq!(reserve.dropped(), 1);
        assert!(reserve.spare.is_some(), "the spare is open again");
        // The client sees a clean close, not a hang.
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(io::Read::read(&mut client, &mut buf).unwrap_or(0), 0);
        assert!(FdReserve::is_out_of_fds(&io::Error::from_raw_os_error(24)));
        assert!(!FdReserve::is_out_of_fds(&io::Error::from(
            io::ErrorKind::WouldBlock
        )));
    }
}
