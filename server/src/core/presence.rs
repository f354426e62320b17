//! Presence on each user's home core: who is online, the grace period that
//! keeps a shaky connection from flapping, `last_seen`, and pushing each change
//! to the user's online friends through their home cores.
//!
//! # State (per core)
//!
//! * **Tracked users**: the users homed here that have a session, or whose
//!   last session ended less than `presence_grace` ago. Each holds its friend
//!   list, loaded from the store on its first session and kept up to date by
//!   [`Core::handle_friends_changed`], grouped by home core and sorted (so one
//!   change is one [`CoreMsg::Presence`] per core, and "is X a friend" is a
//!   binary search). A user is **online** while tracked: from its first session
//!   until its grace period runs out with no session back.
//! * **Known users**: what this core was told about users it does not track —
//!   other cores' users (from their presence updates) and last-seen times read
//!   from the store — so a session's snapshot after `Welcome` costs no queue
//!   round trip and, once warm, no store read. Offline entries are a cache
//!   (dropped when the map is full); online entries are what makes snapshots of
//!   friends homed elsewhere correct.
//!
//! # Why every core holding a friend is told, online or not
//!
//! A user's home core sends each change to every core holding any of its
//! friends, not only to cores where a friend is online: that core's *known*
//! entry must be current when one of those friends connects later and asks for
//! a snapshot. With N cores that is at most N messages per change, batched
//! with everything else for that core into one queue operation per loop turn,
//! whatever the number of friends.
//!
//! # Friendship changes
//!
//! The HTTP side-port commits a friendship change, then sends
//! [`Core::handle_friends_changed`] to both users' home cores. Each re-reads the
//! friendship from the store (so the order in which commands and updates arrive
//! never matters: the last one to run sees the final state), updates the
//! tracked user's list, and — if the two are friends now — sends its user's
//! current presence to the other's home core as an update flagged `recheck`,
//! whose receiver re-reads the friendship before pushing. A push only ever
//! reaches a session whose home core lists the subject as a friend.
//!
//! # Time
//!
//! A session ending is reported without a clock ([`Core::handle_closed`] has no
//! `now`), so it only marks the user; the grace period starts at the next
//! [`Core::handle_timeout`] (in natterd: the same loop turn), which
//! [`Core::poll_timeout`] asks for at once. Grace deadlines live in a second
//! timing wheel, like the session timers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_wire::Body;
use slab::Slab;

use super::WriteOp;
use super::timer::{Mark, TimerWheel};
use super::{Action, ConnId, Core, CoreMsg};
use crate::ids::{CoreId, UserId};

/// Known-user entries a core keeps before it drops the offline ones (which
/// reload from the store on demand). ~32 bytes each: at most ~32 MiB per core.
pub const MAX_KNOWN_USERS: usize = 1 << 20;

/// A user's presence, sent by its home core to a core holding some of its friends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceUpdate {
    /// The user whose presence this is.
    pub user: UserId,
    /// Whether the user is online.
    pub online: bool,
    /// Online: the server time of the update; offline: when the user was last
    /// heard from (ms since the Unix epoch, 0 when never).
    pub last_seen_ms: u64,
    /// The user's friends homed on the receiving core (sorted).
    pub to: Arc<[UserId]>,
    /// The friendship between `user` and `to` just changed: the receiver
    /// re-reads it from the store before pushing.
    pub recheck: bool,
}

/// A user's presence as [`Core::presence_of`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserPresence {
    /// The user.
    pub user: UserId,
    /// Whether at least one of its devices is connected (or reconnected
    /// within the grace period).
    pub online: bool,
    /// Online: the server's current time; offline: when the user was last
    /// heard from (ms since the Unix epoch, 0 when never).
    pub last_seen_ms: u64,
}

/// Where a tracked user stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// At least one session is active.
    Online,
    /// No session; offline at `deadline` unless one comes back. `None` until
    /// the next `handle_timeout` starts the period.
    Grace { deadline: Option<Instant> },
}

/// A user homed here with a session or in its grace period.
#[derive(Debug)]
struct Tracked {
    user: UserId,
    generation: u32,
    status: Status,
    /// Friends grouped by home core (index = core), each sorted.
    friends: Box<[Arc<[UserId]>]>,
    /// False when the store failed to list the friends: retried on the next session.
    friends_loaded: bool,
    /// Latest `last_heard` of its ended sessions (ms since the Unix epoch).
    last_seen_ms: u64,
}

impl Tracked {
    fn is_friend(&self, other: UserId, cores: usize) -> bool {
        self.friends
            .get(other.home_core(cores).0)
            .is_some_and(|list| list.binary_search(&other).is_ok())
    }

    /// Adds or removes `other`; returns whether anything changed.
    fn set_friend(&mut self, other: UserId, friends: bool, cores: usize) -> bool {
        let Some(list) = self.friends.get_mut(other.home_core(cores).0) else {
            return false;
        };
        match (list.binary_search(&other), friends) {
            (Err(at), true) => {
                let mut new = list.to_vec();
                new.insert(at, other);
                *list = Arc::from(new);
                true
            }
            (Ok(at), false) => {
                let mut new = list.to_vec();
                new.remove(at);
                *list = Arc::from(new);
                true
            }
            _ => false,
        }
    }
}

/// What a core knows of a user it does not track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    online: bool,
    last_seen_ms: u64,
}

/// The presence state of one core (see the module docs).
#[derive(Debug)]
pub(crate) struct Presence {
    grace: Duration,
    tracked: Slab<Tracked>,
    index: HashMap<UserId, usize>,
    wheel: TimerWheel,
    expired: Vec<Mark>,
    next_generation: u32,
    /// Users whose last session ended since the last `handle_timeout`.
    pending_down: Vec<UserId>,
    known: HashMap<UserId, Known>,
    /// Offline users not cached while `known` is full (see `remember`) before
    /// the next scan for offline entries to drop.
    known_skip: usize,
    /// The latest `now` this state was given (what `poll_timeout` answers
    /// while a grace period waits to be started).
    clock: Instant,
    /// Bumped by every `handle_friends_changed`: a [`SessionSeed`] read
    /// before a change this core has since applied is not used.
    friends_epoch: u64,
}

/// What the driver reads off the loop, with a token lookup, for the start of
/// a session on its user's home core ([`Core::handle_auth_seeded`]): the
/// user's friends and their stored last-seen times, which the presence
/// snapshot would otherwise read on the loop, one read per friend.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionSeed {
    /// [`Core::friends_epoch`] when the driver asked for the lookup: the
    /// friend list is used only if no friendship change was applied since.
    pub epoch: u64,
    /// The user's friends, as stored when read (after `epoch` was taken).
    pub friends: Vec<UserId>,
    /// Each friend's stored last-seen time, ms since the Unix epoch (0: never).
    pub last_seen: Vec<(UserId, u64)>,
}

impl Presence {
    /// Presence state with this grace period; `now` is the core's start.
    pub(crate) fn new(grace: Duration, now: Instant) -> Self {
        // An offline push comes at most one tick after the grace period ends
        // (~470 ms at the default 30 s); a grace period spans at most 64 of the
        // wheel's 512 slots.
        let tick = (grace / 64).clamp(Duration::from_millis(5), Duration::from_secs(1));
        Self {
            grace,
            tracked: Slab::new(),
            index: HashMap::new(),
            wheel: TimerWheel::new(tick, now),
            expired: Vec::new(),
            next_generation: 0,
            pending_down: Vec::new(),
            known: HashMap::new(),
            known_skip: 0,
            clock: now,
            friends_epoch: 0,
        }
    }

    /// When `Core::handle_timeout` must run for presence: at once while a
    /// grace period waits to be started, else the next grace deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        if self.pending_down.is_empty() {
            self.wheel.next_deadline()
        } else {
            Some(self.clock)
        }
    }

    /// Users tracked (online or in their grace period).
    pub(crate) fn tracked_len(&self) -> usize {
        self.tracked.len()
    }

    fn tracked(&self, user: UserId) -> Option<&Tracked> {
        self.tracked.get(*self.index.get(&user)?)
    }

    /// Records what is known of `user`. The cap is soft for online users (the
    /// snapshot needs every online friend; they are bounded by the users online)
    /// and hard for offline ones, which are only a cache of the store's
    /// last_seen. Amortised O(1): when the map is full, one scan drops every
    /// offline entry; if that freed less than an eighth of the cap, the next
    /// `MAX_KNOWN_USERS / 8` offline users are simply not cached before the next
    /// scan, so a scan of n entries is paid for by at least n / 8 insertions.
    fn remember(&mut self, user: UserId, known: Known) {
        if self.known.len() >= MAX_KNOWN_USERS && !self.known.contains_key(&user) {
            if self.known_skip > 0 {
                self.known_skip -= 1;
            } else {
                self.known.retain(|_, k| k.online);
                if self.known.len() > MAX_KNOWN_USERS - MAX_KNOWN_USERS / 8 {
                    self.known_skip = MAX_KNOWN_USERS / 8;
                }
            }
            if !known.online && self.known.len() >= MAX_KNOWN_USERS {
                return;
            }
        }
        self.known.insert(user, known);
    }
}

impl Core {
    /// Changes whenever this core applies a friendship change
    /// ([`Core::handle_friends_changed`]); a driver stamps a [`SessionSeed`]
    /// with it before reading the seed.
    pub fn friends_epoch(&self) -> u64 {
        self.presence.friends_epoch
    }

    /// A session of `user` became active on this, its home core, and got its
    /// `Welcome`: sends the session a snapshot of its friends' presence, and
    /// tells the friends if the user just came online (not when it came back
    /// within its grace period).
    pub(super) fn presence_session_up(
        &mut self,
        user: UserId,
        conn: ConnId,
        now: Instant,
        seed: Option<SessionSeed>,
    ) {
        self.presence.clock = now;
        let seed = seed.filter(|s| s.epoch == self.presence.friends_epoch);
        if let Some(seed) = &seed {
            // What the snapshot would read: offline friends' stored last seen.
            for &(friend, last_seen_ms) in &seed.last_seen {
                if !self.presence.index.contains_key(&friend) && !self.presence.known.contains_key(&friend) {
                    let known = Known {
                        online: false,
                        last_seen_ms,
                    };
                    self.presence.remember(friend, known);
                }
            }
        }
        let seeded = seed.map(|s| s.friends);
        let came_online = match self.presence.index.get(&user).copied() {
            Some(key) => {
                if let Some(t) = self.presence.tracked.get_mut(key) {
                    t.status = Status::Online;
                }
                if self.presence.tracked.get(key).is_some_and(|t| !t.friends_loaded) {
                    let (friends, loaded) = self.load_friends(user, seeded);
                    if let Some(t) = self.presence.tracked.get_mut(key) {
                        t.friends = friends;
                        t.friends_loaded = loaded;
                    }
                }
                false
            }
            None => {
                let (friends, friends_loaded) = self.load_friends(user, seeded);
                self.presence.next_generation = self.presence.next_generation.wrapping_add(1);
                let key = self.presence.tracked.insert(Tracked {
                    user,
                    generation: self.presence.next_generation,
                    status: Status::Online,
                    friends,
                    friends_loaded,
                    last_seen_ms: 0,
                });
                self.presence.index.insert(user, key);
                self.presence.known.remove(&user);
                true
            }
        };
        self.send_snapshot(user, conn, now);
        if came_online {
            let now_ms = self.unix_ms(now);
            self.broadcast_presence(user, true, now_ms, now);
        }
    }

    /// An active session of `user` ended (closed, failed or timed out);
    /// `last_heard` is when it last sent a frame. When it was the user's last
    /// session, the grace period starts at the next `handle_timeout`. Emits no
    /// action.
    pub(super) fn presence_session_ended(&mut self, user: UserId, last_heard: Instant) {
        let seen_ms = self.unix_ms(last_heard);
        let no_session_left = !self.devices.contains_key(&user);
        let Some(&key) = self.presence.index.get(&user) else {
            return;
        };
        let Some(t) = self.presence.tracked.get_mut(key) else {
            return;
        };
        t.last_seen_ms = t.last_seen_ms.max(seen_ms);
        if no_session_left && t.status == Status::Online {
            t.status = Status::Grace { deadline: None };
            self.presence.pending_down.push(user);
        }
    }

    /// Time passed: starts the grace periods of users whose last session ended
    /// since the last call, and takes offline those whose grace period ran out.
    pub(super) fn presence_handle_timeout(&mut self, now: Instant) {
        self.presence.clock = now;
        let grace = self.presence.grace;
        for user in std::mem::take(&mut self.presence.pending_down) {
            let Some(&key) = self.presence.index.get(&user) else {
                continue;
            };
            let Some(t) = self.presence.tracked.get_mut(key) else {
                continue;
            };
            if t.status != (Status::Grace { deadline: None }) {
                continue;
            }
            let deadline = now + grace;
            t.status = Status::Grace {
                deadline: Some(deadline),
            };
            // A new generation per grace period: marks of earlier periods
            // (the user came back meanwhile) are ignored when they fire.
            self.presence.next_generation = self.presence.next_generation.wrapping_add(1);
            t.generation = self.presence.next_generation;
            let mark = Mark {
                key,
                generation: t.generation,
            };
            if deadline <= now {
                self.go_offline(key, now);
            } else {
                self.presence.wheel.schedule(deadline, mark);
            }
        }
        let mut expired = std::mem::take(&mut self.presence.expired);
        self.presence.wheel.expire(now, &mut expired);
        for mark in expired.drain(..) {
            let Some(t) = self.presence.tracked.get(mark.key) else {
                continue;
            };
            let Status::Grace {
                deadline: Some(deadline),
            } = t.status
            else {
                continue;
            };
            if t.generation != mark.generation {
                continue;
            }
            if deadline > now {
                self.presence.wheel.schedule(deadline, mark);
            } else {
                self.go_offline(mark.key, now);
            }
        }
        self.presence.expired = expired;
    }

    /// The grace period of tracked user `key` ran out: it is offline now.
    fn go_offline(&mut self, key: usize, now: Instant) {
        let Some(t) = self.presence.tracked.try_remove(key) else {
            return;
        };
        self.presence.index.remove(&t.user);
        let known = Known {
            online: false,
            last_seen_ms: t.last_seen_ms,
        };
        self.presence.remember(t.user, known);
        self.actions.push_back(Action::Write(WriteOp::LastSeen {
            origin: self.config.core,
            user: t.user,
            last_seen_ms: t.last_seen_ms,
        }));
        self.send_to_friends(t.user, &t.friends, false, t.last_seen_ms, now);
    }

    /// natterd is stopping and every session was closed: records the
    /// last-seen time of every user still tracked (through the writer, which
    /// commits what it holds before natterd exits).
    pub(super) fn presence_shutdown(&mut self) {
        for (_, t) in self.presence.tracked.iter() {
            self.actions.push_back(Action::Write(WriteOp::LastSeen {
                origin: self.config.core,
                user: t.user,
                last_seen_ms: t.last_seen_ms,
            }));
        }
    }

    /// Friends of `user` (`seeded`, else read from the store), grouped by
    /// home core and sorted, and whether the load succeeded (an empty list
    /// otherwise).
    fn load_friends(&mut self, user: UserId, seeded: Option<Vec<UserId>>) -> (Box<[Arc<[UserId]>]>, bool) {
        let cores = self.config.cores;
        let mut by_core: Vec<Vec<UserId>> = vec![Vec::new(); cores];
        let read = match seeded {
            Some(friends) => Ok(friends),
            None => self.store.friend_ids(user),
        };
        let loaded = match read {
            Ok(mut ids) => {
                ids.sort_unstable();
                ids.dedup();
                for id in ids {
                    if let Some(list) = by_core.get_mut(id.home_core(cores).0) {
                        list.push(id);
                    }
                }
                true
            }
            Err(_) => false,
        };
        (by_core.into_iter().map(Arc::from).collect(), loaded)
    }

    /// Tells every core holding friends of tracked `user` its new presence.
    fn broadcast_presence(&mut self, user: UserId, online: bool, last_seen_ms: u64, now: Instant) {
        let Some(friends) = self.presence.tracked(user).map(|t| t.friends.clone()) else {
            return;
        };
        self.send_to_friends(user, &friends, online, last_seen_ms, now);
    }

    /// One [`CoreMsg::Presence`] per core holding some of `friends`.
    fn send_to_friends(
        &mut self,
        user: UserId,
        friends: &[Arc<[UserId]>],
        online: bool,
        last_seen_ms: u64,
        now: Instant,
    ) {
        for (core, to) in friends.iter().enumerate() {
            if !to.is_empty() {
                let update = PresenceUpdate {
                    user,
                    online,
                    last_seen_ms,
                    to: to.clone(),
                    recheck: false,
                };
                self.route(CoreId(core), CoreMsg::Presence(update), now);
            }
        }
    }

    /// The presence of `user` as this core knows it: tracked here, told by its
    /// home core, or (offline) read from the store and remembered.
    fn presence_seen_from_here(
        &mut self,
        user: UserId,
        now: Instant,
    ) -> Result<UserPresence, super::ReadError> {
        if self.presence.index.contains_key(&user) {
            return Ok(UserPresence {
                user,
                online: true,
                last_seen_ms: self.unix_ms(now),
            });
        }
        let known = match self.presence.known.get(&user) {
            Some(known) => *known,
            None => {
                let known = Known {
                    online: false,
                    last_seen_ms: self.store.last_seen(user)?.unwrap_or(0),
                };
                self.presence.remember(user, known);
                known
            }
        };
        Ok(UserPresence {
            user,
            online: known.online,
            last_seen_ms: if known.online {
                self.unix_ms(now)
            } else {
                known.last_seen_ms
            },
        })
    }

    /// Sends `conn` (a new session of tracked `user`) one Presence per friend.
    fn send_snapshot(&mut self, user: UserId, conn: ConnId, now: Instant) {
        let Some(friends) = self.presence.tracked(user).map(|t| t.friends.clone()) else {
            return;
        };
        for friend in friends.iter().flat_map(|list| list.iter().copied()) {
            // A friend whose last-seen time cannot be read is left out of the
            // snapshot; its next change is pushed as usual.
            if let Ok(p) = self.presence_seen_from_here(friend, now) {
                let frame = self.presence_frame(p.user, p.online, p.last_seen_ms);
                self.stats.presence_pushes += 1;
                self.transmit(conn, frame);
            }
        }
    }

    fn presence_frame(&mut self, user: UserId, online: bool, last_seen_ms: u64) -> bytes::Bytes {
        let presence = natter_wire::Presence {
            user_id: user.0,
            online,
            last_seen_ms,
        };
        self.encoder
            .encode(&natter_wire::Frame::new(0, Body::Presence(presence)))
    }

    /// A presence update from `update.user`'s home core (or this one): record
    /// it and push it to every device of the recipients that are online here
    /// and list the user as a friend.
    pub(super) fn handle_presence_update(&mut self, update: PresenceUpdate, now: Instant) {
        let cores = self.config.cores;
        let PresenceUpdate {
            user,
            online,
            last_seen_ms,
            to,
            recheck,
        } = update;
        if user.home_core(cores) != self.config.core {
            self.presence.remember(user, Known { online, last_seen_ms });
        }
        let mut targets: Vec<ConnId> = Vec::new();
        for &viewer in to.iter() {
            let Some(&key) = self.presence.index.get(&viewer) else {
                continue;
            };
            if recheck {
                let Ok(friends) = self.store.are_friends(viewer, user) else {
                    continue;
                };
                if let Some(t) = self.presence.tracked.get_mut(key) {
                    t.set_friend(user, friends, cores);
                }
            }
            if !self
                .presence
                .tracked
                .get(key)
                .is_some_and(|t| t.is_friend(user, cores))
            {
                continue;
            }
            if let Some(devices) = self.devices.get(&viewer) {
                targets.extend(devices.iter().map(|(_, conn)| *conn));
            }
        }
        if targets.is_empty() {
            return;
        }
        let last_seen_ms = if online { self.unix_ms(now) } else { last_seen_ms };
        let frame = self.presence_frame(user, online, last_seen_ms);
        self.stats.presence_pushes += targets.len() as u64;
        for conn in targets {
            self.transmit(conn, frame.clone());
        }
    }

    /// The friendship between `a` and `b` was changed over HTTP (and is
    /// committed). For each of the two homed on this core: re-read it, update
    /// the user's friend list if tracked, and if they are friends now send the
    /// user's presence to the other's home core (flagged `recheck`).
    pub fn handle_friends_changed(&mut self, a: UserId, b: UserId, now: Instant) {
        self.presence.friends_epoch += 1;
        let cores = self.config.cores;
        for (me, other) in [(a, b), (b, a)] {
            if me == other || me.home_core(cores) != self.config.core {
                continue;
            }
            let Ok(friends) = self.store.are_friends(me, other) else {
                continue;
            };
            if let Some(&key) = self.presence.index.get(&me)
                && let Some(t) = self.presence.tracked.get_mut(key)
            {
                t.set_friend(other, friends, cores);
            }
            if !friends {
                continue;
            }
            let Ok(p) = self.presence_seen_from_here(me, now) else {
                continue;
            };
            let update = PresenceUpdate {
                user: me,
                online: p.online,
                last_seen_ms: p.last_seen_ms,
                to: Arc::from([other]),
                recheck: true,
            };
            self.route(other.home_core(cores), CoreMsg::Presence(update), now);
        }
    }

    /// The presence of `user`, homed on this core (for `GET /v1/presence`).
    ///
    /// # Errors
    /// The store failed to read the user's last-seen time.
    pub fn presence_of(&mut self, user: UserId, now: Instant) -> Result<UserPresence, super::ReadError> {
        self.presence_seen_from_here(user, now)
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl Core {
    /// The presence half of [`Core::check_invariants`]: every user with an
    /// active session is tracked and online; a user in its grace period has no
    /// session; tracked users are homed here and indexed exactly once; each
    /// friend list is sorted, without duplicates, on the list of its home core.
    pub(super) fn check_presence(&self) -> Result<(), String> {
        let cores = self.config.cores;
        for user in self.devices.keys() {
            match self.presence.tracked(*user).map(|t| t.status) {
                Some(Status::Online) => {}
                other => return Err(format!("user {user} has sessions but presence says {other:?}")),
            }
        }
        if self.presence.index.len() != self.presence.tracked.len() {
            return Err(format!(
                "presence indexes {} users but tracks {}",
                self.presence.index.len(),
                self.presence.tracked.len()
            ));
        }
        for (key, t) in self.presence.tracked.iter() {
            if self.presence.index.get(&t.user) != Some(&key) {
                return Err(format!("tracked user {} is not indexed at {key}", t.user));
            }
            if t.user.home_core(cores) != self.config.core {
                return Err(format!(
                    "user {} is tracked on a core that is not its home",
                    t.user
                ));
            }
            if matches!(t.status, Status::Grace { .. }) && self.devices.contains_key(&t.user) {
                return Err(format!("user {} is in its grace period with a session", t.user));
            }
            for (core, list) in t.friends.iter().enumerate() {
                if !list.windows(2).all(|w| matches!(w, [a, b] if a < b)) {
                    return Err(format!(
                        "friends of {} on core {core} are not sorted and unique",
                        t.user
                    ));
                }
                if let Some(f) = list.iter().find(|f| f.home_core(cores) != CoreId(core)) {
                    return Err(format!("friend {f} of {} is listed under core {core}", t.user));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
