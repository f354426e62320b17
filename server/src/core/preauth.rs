//! The limit on input before authentication. Until its Hello is handled a
//! connection is anonymous, and whatever it has buffered is memory an attacker
//! holds for free until the hello deadline: at 200,000 connections per core a
//! partial frame of `--max-frame` each would be ~100 GiB. Hello is small, so
//! the first frame may declare at most [`MAX_PRE_AUTH_INPUT`] bytes; a larger
//! prefix is refused at once (`frame_too_large`, then close), without waiting
//! for its body.
//!
//! The number of anonymous connections is bounded too ([`PreAuthLimits`]):
//! with only the file limit in the way, 1,300 silent connections made every
//! honest Hello time out until the hello deadline freed descriptors. A core
//! holds at most `per_address` connections that have not sent a complete
//! Hello from one address (IPv6: one /64) — more from that address are
//! refused at once — and at most `total` in all: when full, the oldest is
//! closed to make room, so a flood from many addresses cannot keep out an
//! honest client, whose Hello follows its connect within one round trip (the
//! runtime reads a new connection at once, so a Hello already in the socket
//! buffer is handled before the next accept). A connection leaves the table
//! with its Hello (the token lookup that follows ends by itself), or when it
//! closes or migrates.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use bytes::{Bytes, BytesMut};
use natter_wire::ErrorCode;

use super::{ConnId, Core, MAX_DEVICE_DESCRIPTION, State};

/// The caps on connections awaiting authentication, per core (`--preauth-*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreAuthLimits {
    /// Most from one address (IPv6: one /64); more are refused.
    pub per_address: usize,
    /// Most in all; a new one then closes the oldest.
    pub total: usize,
}

impl Default for PreAuthLimits {
    /// 256 per address, 4,096 in all (per core): more than the honest clients
    /// behind one NAT connect within one round trip, while one address holds
    /// at most 1/16 of the table; `runtime` lowers `total` so that all cores
    /// together stay under a quarter of the open-files limit.
    fn default() -> Self {
        Self {
            per_address: 256,
            total: 4096,
        }
    }
}

/// Why [`Core::handle_accept_from`] refused a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptRefusal {
    /// The core is at `max_connections`: write [`Core::refusal`], linger, close.
    Full,
    /// Too many anonymous connections from this address: write this frame
    /// if it fits at once (raw TCP) and close the socket now (an abuser's
    /// refusals must not hold descriptors while they linger).
    PerAddress(Bytes),
}

/// Connections of this core awaiting authentication.
#[derive(Debug, Default)]
pub(super) struct PreAuthTable {
    limits: PreAuthLimits,
    /// Anonymous connections by address group.
    by_address: HashMap<IpAddr, usize>,
    /// Every anonymous connection: `(generation, address group)` by session key.
    conns: HashMap<usize, (u32, IpAddr)>,
    /// Acceptance order, oldest first; may hold released entries (skipped).
    order: VecDeque<(usize, u32)>,
}

impl PreAuthTable {
    pub(super) fn release(&mut self, key: usize) {
        if let Some((_, addr)) = self.conns.remove(&key)
            && let Some(n) = self.by_address.get_mut(&addr)
        {
            *n -= 1;
            if *n == 0 {
                self.by_address.remove(&addr);
            }
        }
        // Released entries stay in `order` until they reach its front or it is compacted.
        if self.order.len() > 2 * self.conns.len() + 64 {
            let conns = &self.conns;
            self.order
                .retain(|(k, g)| conns.get(k).is_some_and(|(gen_, _)| gen_ == g));
        }
    }

    /// The oldest anonymous connection still tracked.
    fn oldest(&mut self) -> Option<usize> {
        while let Some(&(key, generation)) = self.order.front() {
            if self.conns.get(&key).is_some_and(|(g, _)| *g == generation) {
                return Some(key);
            }
            self.order.pop_front();
        }
        None
    }
}

/// The key an address is counted under: IPv4 as is (IPv4-mapped IPv6 too),
/// IPv6 by its /64.
fn address_group(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// Most bytes a connection may buffer before it is authenticated: its first
/// frame (the Hello) including the 4-byte length prefix. A Hello carries a
/// token of 43–64 characters, a device description of at most
/// [`MAX_DEVICE_DESCRIPTION`] bytes and a few integers: well under 1 KiB
/// encoded, so 4 KiB leaves room for any honest client while bounding an
/// anonymous connection's memory to one small buffer.
pub const MAX_PRE_AUTH_INPUT: usize = 4096;

const _: () = assert!(MAX_DEVICE_DESCRIPTION + 64 + 256 < MAX_PRE_AUTH_INPUT);

impl Core {
    /// Sets the caps on connections awaiting authentication (the defaults
    /// until called). Applies to connections accepted from now on.
    pub fn set_preauth_limits(&mut self, limits: PreAuthLimits) {
        self.preauth.limits = PreAuthLimits {
            per_address: limits.per_address.max(1),
            total: limits.total.max(1),
        };
    }

    /// A connection from `peer` was accepted: [`Core::handle_accept`] under
    /// the [`PreAuthLimits`]. When the core already holds `total` anonymous
    /// connections the oldest is closed (an Error, then [`super::Action::Close`])
    /// to make room.
    ///
    /// # Errors
    /// The core is full, or `peer` has `per_address` anonymous connections.
    pub fn handle_accept_from(
        &mut self,
        peer: IpAddr,
        now: std::time::Instant,
    ) -> Result<ConnId, AcceptRefusal> {
        let group = address_group(peer);
        if self.preauth.by_address.get(&group).copied().unwrap_or(0) >= self.preauth.limits.per_address {
            self.stats.preauth_refused += 1;
            let message = format!(
                "too many connections from your address awaiting authentication (at most {} per core)",
                self.preauth.limits.per_address
            );
            let frame = self.encoder.error(ErrorCode::TooManyConnections, &message, 0);
            return Err(AcceptRefusal::PerAddress(frame));
        }
        if self.preauth.conns.len() >= self.preauth.limits.total
            && let Some(oldest) = self.preauth.oldest()
        {
            self.preauth.release(oldest);
            self.stats.preauth_evicted += 1;
            self.fail(
                ConnId(oldest),
                ErrorCode::TooManyConnections,
                "closed to make room: too many connections are awaiting authentication; send Hello \
                 at once after connecting",
                0,
            );
        }
        let conn = self.handle_accept(now).ok_or(AcceptRefusal::Full)?;
        let generation = self.sessions.get(conn.0).map_or(0, |s| s.generation);
        self.preauth.conns.insert(conn.0, (generation, group));
        *self.preauth.by_address.entry(group).or_insert(0) += 1;
        self.preauth.order.push_back((conn.0, generation));
        Ok(conn)
    }

    /// `conn` is authenticated or gone: it no longer counts as anonymous.
    pub(super) fn preauth_release(&mut self, conn: ConnId) {
        self.preauth.release(conn.0);
    }

    /// Connections of this core awaiting authentication now.
    pub fn preauth_count(&self) -> usize {
        self.preauth.conns.len()
    }

    /// Refuses a connection still awaiting its Hello whose first frame
    /// declares more than [`MAX_PRE_AUTH_INPUT`] bytes. Returns true when it
    /// was refused (an Error is queued, then Close; `buf` is cleared).
    pub(super) fn refuse_oversized_pre_auth(&mut self, conn: ConnId, buf: &mut BytesMut) -> bool {
        let awaiting = self
            .sessions
            .get(conn.0)
            .is_some_and(|s| matches!(s.state, State::AwaitingHello { .. }));
        if !awaiting {
            return false;
        }
        let declared = match buf.get(..4) {
            Some(&[a, b, c, d]) => (u32::from_le_bytes([a, b, c, d]) as usize).saturating_add(4),
            _ => return false,
        };
        if declared <= MAX_PRE_AUTH_INPUT {
            return false;
        }
        buf.clear();
        let message = format!(
            "pre-authentication input is limited to {MAX_PRE_AUTH_INPUT} bytes: the first frame, \
             Hello, declared {declared}"
        );
        self.fail(conn, ErrorCode::FrameTooLarge, &message, 0);
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use natter_wire::{Body, Frame, Hello, Limits};

    use super::*;
    use crate::core::{Action, AuthResult, CoreConfig, DEFAULT_MAX_SESSIONS_PER_USER, PROTOCOL_VERSION};
    use crate::ids::{CoreId, DeviceId, UserId};
    use crate::store::Store;

    fn core(dir: &tempfile::TempDir, limits: PreAuthLimits, now: Instant) -> Core {
        let config = CoreConfig {
            core: CoreId(0),
            cores: 1,
            heartbeat_timeout: Duration::from_secs(30),
            presence_grace: Duration::from_secs(1),
            limits: Limits::default(),
            max_connections: 1000,
            send_rate: 10,
            max_sessions_per_user: DEFAULT_MAX_SESSIONS_PER_USER,
            edit_window: crate::core::DEFAULT_EDIT_WINDOW,
            delete_window: crate::core::DEFAULT_DELETE_WINDOW,
        };
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut core = Core::new(config, store, now, 1_700_000_000_000);
        core.set_preauth_limits(limits);
        core
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn closed(core: &mut Core) -> Vec<ConnId> {
        std::iter::from_fn(|| core.poll_action())
            .filter_map(|a| match a {
                Action::Close { conn } => Some(conn),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn one_address_is_capped_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let limits = PreAuthLimits {
            per_address: 3,
            total: 100,
        };
        let mut core = core(&dir, limits, now);
        for _ in 0..3 {
            core.handle_accept_from(ip("10.0.0.1"), now).unwrap();
        }
        let refused = core.handle_accept_from(ip("10.0.0.1"), now).unwrap_err();
        let AcceptRefusal::PerAddress(frame) = refused else {
            panic!("{refused:?}")
        };
        let Body::Error(e) = Frame::decode(&frame, &Limits::default()).unwrap().body else {
            panic!("not an Error")
        };
        assert_eq!(e.code, ErrorCode::TooManyConnections.as_u16());
        assert!(e.message.contains("awaiting authentication"), "{}", e.message);
        // IPv6 addresses of one /64 are one address; another /64 is not.
        for _ in 0..3 {
            core.handle_accept_from(ip("2001:db8::1"), now).unwrap();
        }
        assert!(core.handle_accept_from(ip("2001:db8::ffff"), now).is_err());
        assert!(core.handle_accept_from(ip("2001:db8:0:1::1"), now).is_ok());
        assert!(core.handle_accept_from(ip("10.0.0.2"), now).is_ok());
        assert_eq!(core.stats().preauth_refused, 2);
    }

    #[test]
    fn a_full_table_closes_the_oldest_and_authenticated_sessions_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let limits = PreAuthLimits {
            per_address: 10,
            total: 4,
        };
        let mut core = core(&dir, limits, now);
        // One connection authenticates: it stops counting.
        let honest = core.handle_accept_from(ip("10.0.0.9"), now).unwrap();
        let hello = Frame::new(
            1,
            Body::Hello(Hello {
                token: "t".repeat(43),
                device: "test".into(),
                protocol_version: PROTOCOL_VERSION,
                sync_first: false,
                conversation: false,
            }),
        );
        let mut buf = BytesMut::from(&hello.encode()[..]);
        core.handle_input(honest, &mut buf, now);
        core.handle_auth(honest, AuthResult::Valid(UserId(1), DeviceId(1)), now);
        assert_eq!(core.preauth_count(), 0);
        let _ = closed(&mut core);

        let flood: Vec<ConnId> = (1..=4)
            .map(|i| core.handle_accept_from(ip(&format!("10.0.1.{i}")), now).unwrap())
            .collect();
        assert!(closed(&mut core).is_empty());
        // A fifth anonymous connection is taken; the oldest anonymous one goes.
        let newcomer = core.handle_accept_from(ip("10.0.2.1"), now).unwrap();
        assert_eq!(closed(&mut core), vec![flood[0]]);
        assert_eq!(core.preauth_count(), 4);
        core.handle_closed(flood[0]);
        // Closing one frees its place without evicting anyone.
        core.handle_closed(flood[1]);
        core.handle_accept_from(ip("10.0.2.2"), now).unwrap();
        assert!(closed(&mut core).is_empty());
        assert!(!closed(&mut core).contains(&honest));
        assert_ne!(newcomer, honest);
        assert_eq!(core.stats().preauth_evicted, 1);
    }
}
