//! The free-space reserve (`--disk-reserve`): natterd refuses writes that grow
//! the store at a user's request — new messages, signups, friend requests and
//! acceptances, new chats and members, pushers — while the file system that
//! holds the data directory has less free space than the reserve, so that it
//! never runs into `ENOSPC` mid-commit (which would poison the store and stop
//! the process) and never acknowledges what it could not keep. Like etcd's
//! space quota, the refusal is an error the client retries
//! (`storage_full`), and it lifts by itself once space is freed, without a
//! restart.
//!
//! What keeps working below the reserve, because it must and is small: login
//! (a device and token row), logout, last-seen times, `Ack` cursors, read
//! markers, the journal replay at start, and every read (sync, history,
//! presence). Writes already queued when the reserve is crossed are committed:
//! the reserve is what they use.
//!
//! The storage writer thread calls [`SpaceGuard::check`] at most every
//! [`CHECK_INTERVAL`] (one `statvfs`, a microsecond); everyone else reads the
//! result, one atomic load.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often the writer re-reads the free space. Between two checks at most
/// this much writing can happen unseen: at the ~400 k records/s the writer
/// commits, ~100 ms of short messages is a few MiB — well inside any sane
/// reserve — and a freed disk is noticed within this too.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// The default `--disk-reserve`, in bytes: 256 MiB leaves fjall room for the
/// journal rotation, memtable flushes and compactions it does on its own, and
/// is a rounding error on any server disk.
pub const DEFAULT_DISK_RESERVE: u64 = 256 << 20;

/// Free space of the data directory's file system against the reserve.
#[derive(Debug)]
pub struct SpaceGuard {
    dir: PathBuf,
    /// Bytes that must stay free (0: no reserve).
    reserve: AtomicU64,
    /// Free bytes at the last check.
    free: AtomicU64,
    /// True while the last check found less free space than the reserve.
    low: AtomicBool,
}

impl SpaceGuard {
    /// A guard for the file system holding `dir`, with no reserve until
    /// [`SpaceGuard::set_reserve`].
    pub fn new(dir: PathBuf) -> Self {
        SpaceGuard {
            dir,
            reserve: AtomicU64::new(0),
            free: AtomicU64::new(u64::MAX),
            low: AtomicBool::new(false),
        }
    }

    /// Sets the reserve (bytes; 0 turns it off) and checks at once.
    pub fn set_reserve(&self, bytes: u64) {
        self.reserve.store(bytes, Ordering::Relaxed);
        self.check();
    }

    /// The reserve in bytes.
    pub fn reserve(&self) -> u64 {
        self.reserve.load(Ordering::Relaxed)
    }

    /// Free bytes (available to unprivileged writers) at the last check.
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Whether the last check found the disk below the reserve.
    pub fn is_low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
    }

    /// Re-reads the free space (`statvfs`) and updates [`SpaceGuard::is_low`];
    /// logs once when the disk falls below the reserve and once when it is back.
    /// If `statvfs` fails the last state is kept (a transient failure must not
    /// lock writes out, nor let them in).
    pub fn check(&self) -> bool {
        let reserve = self.reserve();
        if reserve == 0 {
            self.low.store(false, Ordering::Relaxed);
            return false;
        }
        let free = match rustix::fs::statvfs(&self.dir) {
            Ok(st) => st.f_bavail.saturating_mul(st.f_frsize),
            Err(error) => {
                tracing::warn!(dir = %self.dir.display(), %error, "cannot read the free space of the data directory");
                return self.is_low();
            }
        };
        self.free.store(free, Ordering::Relaxed);
        let low = free < reserve;
        let was = self.low.swap(low, Ordering::Relaxed);
        if low && !was {
            tracing::error!(
                free_bytes = free,
                reserve_bytes = reserve,
                dir = %self.dir.display(),
                "disk below the free-space reserve: refusing new messages and account writes (storage_full) until space is freed"
            );
        } else if was && !low {
            tracing::warn!(
                free_bytes = free,
                reserve_bytes = reserve,
                "disk space back above the reserve: writes accepted again"
            );
        }
        low
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_larger_than_the_disk_is_low_and_zero_is_never_low() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let guard = SpaceGuard::new(dir.path().to_owned());
        assert!(!guard.is_low());
        guard.set_reserve(u64::MAX);
        assert!(guard.is_low());
        assert!(guard.free() < u64::MAX);
        guard.set_reserve(1);
        assert!(!guard.is_low());
        guard.set_reserve(0);
        assert!(!guard.is_low());
    }
}
