//! Presence under a simulated clock: two (or more) cores over one real store in
//! a temporary directory, driven the way the runtime drives them (actions
//! carried out in order, `ToCore` batches delivered, `Close` followed by
//! `handle_closed`), with time moved by hand. No sockets, no sleeping.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use natter_wire::{Body, Frame, Hello, Limits, PROTOCOL_VERSION, Ping, Presence};

use crate::core::{Action, AuthResult, ConnId, Core, CoreConfig, CoreMsg, InputStatus};
use crate::ids::{CoreId, DeviceId, UserId};
use crate::store::Store;
use crate::store::writer::WriteOp;

use std::sync::Arc;

const HEARTBEAT: Duration = Duration::from_secs(9);
const GRACE: Duration = Duration::from_secs(2);
const UNIX_AT_T0: u64 = 1_700_000_000_000;
const PHC: &str = "$argon2id$not-used-here";

/// One session as the simulation's client sees it.
type Session = (usize, ConnId);

struct Sim {
    t0: Instant,
    now: Instant,
    store: Arc<Store>,
    cores: Vec<Core>,
    /// Frames each session received, in order (taken by [`Sim::take`]).
    inbox: HashMap<Session, Vec<Frame>>,
    /// Every `CoreMsg::Presence` that crossed between cores: (from, to, update).
    crossed: Vec<(usize, usize, crate::core::PresenceUpdate)>,
    /// Every `WriteOp::LastSeen` the cores handed to the writer.
    last_seen_writes: Vec<(UserId, u64)>,
    next_user: u32,
    _dir: Option<tempfile::TempDir>,
}

impl Sim {
    fn new(cores: usize, grace: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut sim = Self::on(store, cores, grace, Instant::now());
        sim._dir = Some(dir);
        sim
    }

    /// Fresh cores over `store` (what a restart of natterd looks like to presence).
    fn on(store: Arc<Store>, cores: usize, grace: Duration, t0: Instant) -> Self {
        let cores = (0..cores)
            .map(|i| {
                let config = CoreConfig {
                    core: CoreId(i),
                    cores,
                    heartbeat_timeout: HEARTBEAT,
                    presence_grace: grace,
                    limits: Limits::default(),
                    max_connections: 64,
                    send_rate: 10,
                    max_sessions_per_user: crate::core::DEFAULT_MAX_SESSIONS_PER_USER,
                    edit_window: crate::core::DEFAULT_EDIT_WINDOW,
                    delete_window: crate::core::DEFAULT_DELETE_WINDOW,
                };
                Core::new(config, store.clone(), t0, UNIX_AT_T0)
            })
            .collect();
        Self {
            t0,
            now: t0,
            store,
            cores,
            inbox: HashMap::new(),
            crossed: Vec::new(),
            last_seen_writes: Vec::new(),
            next_user: 0,
            _dir: None,
        }
    }

    fn unix_ms(&self, at: Instant) -> u64 {
        UNIX_AT_T0 + at.duration_since(self.t0).as_millis() as u64
    }

    /// A new user whose home core is `core`.
    fn user_on(&mut self, core: usize) -> UserId {
        loop {
            self.next_user += 1;
            let user = self
                .store
                .create_user(&format!("user_{}", self.next_user), PHC)
                .unwrap();
            if user.home_core(self.cores.len()) == CoreId(core) {
                return user;
            }
        }
    }

    /// Makes `a` and `b` friends in the store and tells their home cores, as the side-port does.
    fn befriend(&mut self, a: UserId, b: UserId) {
        self.store.request_friend(a, b).unwrap();
        self.store.accept_friend(b, a).unwrap();
        self.friends_changed(a, b);
    }

    fn unfriend(&mut self, a: UserId, b: UserId) {
        assert!(self.store.remove_friend(a, b).unwrap());
        self.friends_changed(a, b);
    }

    fn friends_changed(&mut self, a: UserId, b: UserId) {
        let n = self.cores.len();
        let mut homes = vec![a.home_core(n).0, b.home_core(n).0];
        homes.dedup();
        for home in homes {
            let now = self.now;
            self.cores[home].handle_friends_changed(a, b, now);
            self.pump();
        }
    }

    /// Connects a device of `user` on its home core; returns the session after its Welcome.
    fn connect(&mut self, user: UserId, device: u64) -> Session {
        let home = user.home_core(self.cores.len()).0;
        let now = self.now;
        let core = &mut self.cores[home];
        let conn = core.handle_accept(now).unwrap();
        // Frames left for an earlier session with the same (reused) id are not this one's.
        self.inbox.remove(&(home, conn));
        let core = &mut self.cores[home];
        let hello = Frame::new(
            1,
            Body::Hello(Hello {
                token: "tok".into(),
                device: "sim".into(),
                protocol_version: PROTOCOL_VERSION,
                sync_first: false,
                conversation: false,
            }),
        );
        let mut buf = BytesMut::from(&hello.encode()[..]);
        assert_eq!(core.handle_input(conn, &mut buf, now), InputStatus::Paused);
        assert!(matches!(core.poll_action(), Some(Action::Authenticate { .. })));
        core.handle_auth(conn, AuthResult::Valid(user, DeviceId(device)), now);
        self.pump();
        let session = (home, conn);
        let first = self.inbox.get(&session).and_then(|f| f.first()).cloned();
        assert!(
            matches!(
                first,
                Some(Frame {
                    body: Body::Welcome(_),
                    ..
                })
            ),
            "{first:?}"
        );
        self.inbox.get_mut(&session).unwrap().remove(0);
        session
    }

    /// The client sends a Ping (a heartbeat).
    fn ping(&mut self, (core, conn): Session) {
        let now = self.now;
        let mut buf = BytesMut::from(&Frame::new(9, Body::Ping(Ping { nonce: 9 })).encode()[..]);
        self.cores[core].handle_input(conn, &mut buf, now);
        self.pump();
    }

    /// The peer closed the connection.
    fn disconnect(&mut self, (core, conn): Session) {
        self.cores[core].handle_closed(conn);
        assert!(
            self.cores[core].poll_action().is_none(),
            "handle_closed must emit nothing"
        );
        self.pump();
    }

    /// Moves the clock by `by` in steps no longer than a wheel tick, firing timers.
    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while self.now < end {
            self.now = (self.now + Duration::from_millis(50)).min(end);
            for i in 0..self.cores.len() {
                let now = self.now;
                self.cores[i].handle_timeout(now);
            }
            self.pump();
        }
    }

    /// Carries out every action of every core until none is left.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.cores.len() {
                self.cores[i].handle_end_of_turn();
                while let Some(action) = self.cores[i].poll_action() {
                    moved = true;
                    match action {
                        Action::Transmit { conn, frame } => {
                            let frame = Frame::decode(&frame, &Limits::default()).unwrap();
                            self.inbox.entry((i, conn)).or_default().push(frame);
                        }
                        Action::Close { conn } => self.cores[i].handle_closed(conn),
                        Action::ToCore { core, msgs } => {
                            for msg in &msgs {
                                if let CoreMsg::Presence(update) = msg {
                                    self.crossed.push((i, core.0, update.clone()));
                                }
                            }
                            let now = self.now;
                            self.cores[core.0].handle_core_msgs(msgs, now);
                        }
                        Action::Write(op) => {
                            if let WriteOp::LastSeen {
                                user, last_seen_ms, ..
                            } = op
                            {
                                self.last_seen_writes.push((user, last_seen_ms));
                            }
                            self.store.commit_writes(&[op]);
                        }
                        other => panic!("unexpected action {other:?}"),
                    }
                }
            }
            if !moved {
                for (i, core) in self.cores.iter().enumerate() {
                    if let Err(e) = core.check_invariants() {
                        panic!("core {i}: {e}");
                    }
                }
                return;
            }
        }
    }

    /// The Presence frames `session` received since the last call (other frames are dropped).
    fn take(&mut self, session: Session) -> Vec<Presence> {
        self.inbox
            .remove(&session)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|f| match f.body {
                Body::Presence(p) => {
                    assert_eq!(f.request_id, 0, "pushes carry request id 0");
                    Some(p)
                }
                _ => None,
            })
            .collect()
    }
}

fn online(user: UserId, at_ms: u64) -> Presence {
    Presence {
        user_id: user.0,
        online: true,
        last_seen_ms: at_ms,
    }
}

fn offline(user: UserId, last_seen_ms: u64) -> Presence {
    Presence {
        user_id: user.0,
        online: false,
        last_seen_ms,
    }
}

#[test]
fn a_friend_sees_online_then_offline_after_the_grace_period_with_last_seen() {
    let mut sim = Sim::new(2, GRACE);
    let alice = sim.user_on(0);
    let bob = sim.user_on(1);
    sim.befriend(alice, bob);
    let b = sim.connect(bob, 1);
    assert_eq!(sim.take(b), vec![offline(alice, 0)], "never seen: last_seen 0");

    sim.advance(Duration::from_secs(1));
    let a = sim.connect(alice, 1);
    assert_eq!(sim.take(a), vec![online(bob, sim.unix_ms(sim.now))]);
    assert_eq!(sim.take(b), vec![online(alice, sim.unix_ms(sim.now))]);

    sim.advance(Duration::from_secs(3));
    sim.ping(a);
    let last_heard = sim.unix_ms(sim.now);
    sim.advance(Duration::from_secs(1));
    sim.disconnect(a);
    // Within the grace period nothing is pushed.
    sim.advance(GRACE - Duration::from_millis(100));
    assert_eq!(sim.take(b), vec![]);
    sim.advance(Duration::from_millis(1100));
    assert_eq!(sim.take(b), vec![offline(alice, last_heard)]);
    assert_eq!(sim.last_seen_writes, vec![(alice, last_heard)]);
    assert_eq!(sim.store.last_seen(alice).unwrap(), Some(last_heard));
    assert_eq!(sim.cores[0].stats().online_users, 0);
}

#[test]
fn a_silent_session_times_out_and_its_user_goes_offline_after_the_grace_period() {
    let mut sim = Sim::new(2, GRACE);
    let alice = sim.user_on(1);
    let bob = sim.user_on(0);
    sim.befriend(alice, bob);
    let b = sim.connect(bob, 1);
    let a = sim.connect(alice, 1);
    let connected = sim.unix_ms(sim.now);
    sim.take(b);
    // Bob keeps pinging; Alice falls silent.
    for _ in 0..4 {
        sim.advance(Duration::from_secs(3));
        sim.ping(b);
    }
    // 12 s: Alice's session closed at 9 s (heartbeat), offline at 11 s (grace).
    let frames = sim.inbox.remove(&a).unwrap_or_default();
    assert!(
        frames.iter().any(|f| matches!(&f.body, Body::Error(e)
            if e.code == natter_wire::ErrorCode::HeartbeatTimeout.as_u16())),
        "{frames:?}"
    );
    assert_eq!(sim.take(b), vec![offline(alice, connected)]);
    assert_eq!(sim.store.last_seen(alice).unwrap(), Some(connected));
}

#[test]
fn reconnects_within_the_grace_period_push_nothing() {
    let mut sim = Sim::new(2, GRACE);
    let alice = sim.user_on(0);
    let bob = sim.user_on(1);
    let carol = sim.user_on(0);
    sim.befriend(alice, bob);
    sim.befriend(alice, carol);
    let b = sim.connect(bob, 1);
    let c = sim.connect(carol, 1);
    let mut a = sim.connect(alice, 1);
    sim.take(b);
    sim.take(c);
    // A train in and out of tunnels: ten drops, each back within the grace period.
    for _ in 0..10 {
        sim.disconnect(a);
        sim.advance(GRACE / 2);
        a = sim.connect(alice, 1);
        // The new session gets its snapshot as usual.
        assert_eq!(sim.take(a).len(), 2);
        sim.advance(Duration::from_millis(300));
        sim.ping(b);
        sim.ping(c);
    }
    sim.advance(GRACE * 3);
    assert_eq!(sim.take(b), vec![], "no offline/online flapping for bob");
    assert_eq!(sim.take(c), vec![], "nor for carol on alice's own core");
    assert!(sim.last_seen_writes.is_empty());
    assert_eq!(sim.cores[0].stats().online_users, 2);
}

#[test]
fn several_devices_keep_a_user_online_until_the_last_one_ends() {
    let mut sim = Sim::new(2, GRACE);
    let alice = sim.user_on(0);
    let bob = sim.user_on(1);
    sim.befriend(alice, bob);
    let b = sim.connect(bob, 1);
    let phone = sim.connect(alice, 1);
    let laptop = sim.connect(alice, 2);
    let laptop_heard = sim.unix_ms(sim.now);
    assert_eq!(sim.take(b).len(), 2, "offline snapshot, then one online push");
    assert_eq!(sim.take(laptop).len(), 1, "the second device gets a snapshot too");
    sim.advance(Duration::from_secs(2));
    sim.ping(phone);
    let phone_heard = sim.unix_ms(sim.now);
    sim.ping(b);
    // The phone ends first; the laptop (heard from earlier) keeps alice online.
    sim.disconnect(phone);
    sim.advance(GRACE * 2);
    assert_eq!(sim.take(b), vec![]);
    sim.ping(b);
    sim.disconnect(laptop);
    sim.advance(GRACE + Duration::from_millis(200));
    // Last seen is the latest frame from any device, not the last device's.
    assert!(phone_heard > laptop_heard);
    assert_eq!(sim.take(b), vec![offline(alice, phone_heard)]);
}

#[test]
fn the_snapshot_after_welcome_lists_every_friend_and_nobody_else() {
    let mut sim = Sim::new(2, GRACE);
    let alice = sim.user_on(0);
    let bob = sim.user_on(1); // online, other core
    let dave = sim.user_on(0); // online, same core
    let carol = sim.user_on(1); // offline, seen before
    let erin = sim.user_on(0); // offline, never seen
    let eve = sim.user_on(1); // online, not a friend
    // Carol's last session ended before this natterd started.
    sim.store.commit_writes(&[WriteOp::LastSeen {
        origin: CoreId(1),
        user: carol,
        last_seen_ms: 1_600_000_000_000,
    }]);
    for friend in [bob, dave, carol, erin] {
        sim.befriend(alice, friend);
    }
    sim.connect(bob, 1);
    sim.connect(dave, 1);
    sim.connect(eve, 1);
    sim.advance(Duration::from_secs(1));
    let a = sim.connect(alice, 7);
    let now = sim.unix_ms(sim.now);
    let mut snapshot = sim.take(a);
    snapshot.sort_by_key(|p| p.user_id);
    let mut expected = vec![
        online(bob, now),
        online(dave, now),
        offline(carol, 1_600_000_000_000),
        offline(erin, 0),
    ];
    expected.sort_by_key(|p| p.user_id);
    assert_eq!(snapshot, expected);
}

#[test]
fn non_friends_see_nothing() {
    let mut sim = Sim::new(2, GRACE);
    let alice = sim.user_on(0);
    let bob = sim.user_on(1);
    let eve = sim.user_on(1);
    let mallory = sim.user_on(0);
    sim.befriend(alice, bob);
    sim.befriend(eve, mallory);
    let e = sim.connect(eve, 1);
    let m = sim.connect(mallory, 1);
    let a = sim.connect(alice, 1);
    sim.disconnect(a);
    sim.advance(GRACE * 2);
    let a = sim.connect(alice, 1);
    assert_eq!(sim.take(a), vec![offline(bob, 0)]);
    let from_alice = |ps: Vec<Presence>| ps.into_iter().filter(|p| p.user_id == alice.0).count();
    assert_eq!(from_alice(sim.take(e)), 0);
    assert_eq!(from_alice(sim.take(m)), 0);
}

#[test]
fn becoming_and_ceasing_to_be_friends_starts_and_stops_the_flow() {
    let mut sim = Sim::new(2, GRACE);
    let alice = sim.user_on(0);
    let bob = sim.user_on(1);
    let mut a = sim.connect(alice, 1);
    let b = sim.connect(bob, 1);
    assert_eq!(sim.take(a), vec![]);
    assert_eq!(sim.take(b), vec![]);

    sim.befriend(alice, bob);
    let now = sim.unix_ms(sim.now);
    assert_eq!(sim.take(a), vec![online(bob, now)]);
    assert_eq!(sim.take(b), vec![online(alice, now)]);
    sim.disconnect(a);
    sim.advance(GRACE + Duration::from_millis(200));
    let [p] = &sim.take(b)[..] else { panic!() };
    assert!(!p.online);
    a = sim.connect(alice, 1);
    assert_eq!(sim.take(b), vec![online(alice, sim.unix_ms(sim.now))]);
    sim.take(a);

    sim.unfriend(bob, alice);
    assert_eq!(sim.take(a), vec![]);
    assert_eq!(sim.take(b), vec![]);
    sim.disconnect(a);
    sim.advance(GRACE * 2);
    a = sim.connect(alice, 1);
    assert_eq!(sim.take(b), vec![], "no pushes after unfriending");
    assert_eq!(sim.take(a), vec![], "and no snapshot entry");
}

#[test]
fn friendship_commands_and_updates_in_any_order_end_in_the_stored_state() {
    for order in 0..4 {
        let mut sim = Sim::new(2, GRACE);
        let alice = sim.user_on(0);
        let bob = sim.user_on(1);
        let a = sim.connect(alice, 1);
        let b = sim.connect(bob, 1);
        // Befriend and unfriend both commit before either home core hears of it.
        sim.store.request_friend(alice, bob).unwrap();
        sim.store.accept_friend(bob, alice).unwrap();
        if order % 2 == 1 {
            sim.store.remove_friend(alice, bob).unwrap();
        }
        let homes: Vec<usize> = if order < 2 {
            vec![0, 1, 0, 1]
        } else {
            vec![1, 0, 1, 0]
        };
        for home in homes {
            let now = sim.now;
            sim.cores[home].handle_friends_changed(alice, bob, now);
            sim.pump();
        }
        let friends = order % 2 == 0;
        let pushed_to_a = sim.take(a);
        let pushed_to_b = sim.take(b);
        assert_eq!(!pushed_to_a.is_empty(), friends, "order {order}: {pushed_to_a:?}");
        assert_eq!(!pushed_to_b.is_empty(), friends, "order {order}: {pushed_to_b:?}");
        sim.disconnect(a);
        sim.advance(GRACE * 2);
        assert_eq!(sim.take(b).len(), usize::from(friends), "order {order}");
    }
}

#[test]
fn last_seen_survives_a_restart() {
    let mut sim = Sim::new(2, GRACE);
    let alice = sim.user_on(0);
    let bob = sim.user_on(1);
    sim.befriend(alice, bob);
    let a = sim.connect(alice, 1);
    sim.advance(Duration::from_secs(1));
    sim.ping(a);
    let last = sim.unix_ms(sim.now);
    sim.disconnect(a);
    sim.advance(GRACE * 2);
    assert_eq!(sim.last_seen_writes, vec![(alice, last)]);

    // New cores over the same store: natterd restarted.
    let store = sim.store.clone();
    let dir = sim._dir.take();
    let mut after = Sim::on(store, 2, GRACE, Instant::now());
    after.next_user = 1000;
    let b = after.connect(bob, 1);
    assert_eq!(after.take(b), vec![offline(alice, last)]);
    drop(dir);
}

#[test]
fn one_change_is_one_message_per_core_holding_friends() {
    let mut sim = Sim::new(3, GRACE);
    let alice = sim.user_on(0);
    let mut friends = Vec::new();
    for core in [1, 1, 1, 2, 2, 0] {
        for _ in 0..5 {
            let f = sim.user_on(core);
            sim.befriend(alice, f);
            friends.push(f);
        }
    }
    let sessions: Vec<Session> = friends.iter().map(|&f| sim.connect(f, 1)).collect();
    for &s in &sessions {
        sim.take(s);
    }
    sim.crossed.clear();
    sim.connect(alice, 1);
    let from_alice: Vec<_> = sim
        .crossed
        .iter()
        .filter(|(_, _, u)| u.user == alice)
        .map(|(from, to, u)| (*from, *to, u.to.len(), u.online))
        .collect();
    // 15 friends on core 1, 10 on core 2: one update each; core 0's 5 are served in place.
    assert_eq!(from_alice, vec![(0, 1, 15, true), (0, 2, 10, true)]);
    for &s in &sessions {
        assert_eq!(sim.take(s).len(), 1, "every friend's session got the push");
    }
}

#[test]
fn presence_of_reports_online_and_last_seen() {
    let mut sim = Sim::new(2, GRACE);
    let alice = sim.user_on(1);
    let now = sim.now;
    let p = sim.cores[1].presence_of(alice, now).unwrap();
    assert_eq!((p.online, p.last_seen_ms), (false, 0));
    let a = sim.connect(alice, 1);
    let now = sim.now;
    let p = sim.cores[1].presence_of(alice, now).unwrap();
    assert_eq!((p.online, p.last_seen_ms), (true, sim.unix_ms(now)));
    let heard = sim.unix_ms(sim.now);
    sim.advance(Duration::from_secs(1));
    sim.disconnect(a);
    let now = sim.now;
    assert!(
        sim.cores[1].presence_of(alice, now).unwrap().online,
        "online during the grace period"
    );
    sim.advance(GRACE * 2);
    let now = sim.now;
    let p = sim.cores[1].presence_of(alice, now).unwrap();
    assert_eq!((p.online, p.last_seen_ms), (false, heard));
}

#[test]
fn shutdown_records_the_last_seen_time_of_everyone_online() {
    let mut sim = Sim::new(2, GRACE);
    let alice = sim.user_on(0);
    sim.connect(alice, 1);
    sim.advance(Duration::from_secs(1));
    let at = sim.unix_ms(sim.t0);
    sim.cores[0].handle_shutdown();
    sim.pump();
    assert_eq!(sim.last_seen_writes, vec![(alice, at)]);
    assert_eq!(sim.store.last_seen(alice).unwrap(), Some(at));
}

#[test]
fn a_zero_grace_period_goes_offline_at_the_next_timeout() {
    let mut sim = Sim::new(2, Duration::ZERO);
    let alice = sim.user_on(0);
    let bob = sim.user_on(1);
    sim.befriend(alice, bob);
    let b = sim.connect(bob, 1);
    let a = sim.connect(alice, 1);
    sim.take(b);
    sim.disconnect(a);
    assert!(sim.cores[0].poll_timeout().is_some_and(|at| at <= sim.now));
    let now = sim.now;
    sim.cores[0].handle_timeout(now);
    sim.pump();
    assert_eq!(sim.take(b), vec![offline(alice, sim.unix_ms(sim.t0))]);
}
