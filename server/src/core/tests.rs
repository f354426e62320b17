//! Tests of the sans-IO core under a simulated clock: no sockets, no sleeping.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use natter_wire::{Body, ErrorCode, Frame, Hello, Limits, Ping};

use super::*;
use crate::store::Store;

const TIMEOUT: Duration = Duration::from_secs(3);

thread_local! {
    /// Data directories of this test thread's stores, removed when the thread ends.
    static DIRS: std::cell::RefCell<Vec<tempfile::TempDir>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A real store in a temporary directory.
fn store() -> Arc<Store> {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    DIRS.with(|d| d.borrow_mut().push(dir));
    store
}

fn config(id: usize, cores: usize) -> CoreConfig {
    CoreConfig {
        core: CoreId(id),
        cores,
        heartbeat_timeout: TIMEOUT,
        presence_grace: Duration::from_secs(1),
        limits: Limits::default(),
        max_connections: 4,
        send_rate: 10,
        max_sessions_per_user: DEFAULT_MAX_SESSIONS_PER_USER,
        edit_window: DEFAULT_EDIT_WINDOW,
        delete_window: DEFAULT_DELETE_WINDOW,
    }
}

fn core(id: usize, cores: usize, now: Instant) -> Core {
    Core::new(config(id, cores), store(), now, 1_700_000_000_000)
}

fn core_on(store: &Arc<Store>, id: usize, cores: usize, now: Instant) -> Core {
    Core::new(config(id, cores), store.clone(), now, 1_700_000_000_000)
}

fn hello(token: &str) -> BytesMut {
    let frame = Frame::new(
        7,
        Body::Hello(Hello {
            token: token.into(),
            device: "test".into(),
            protocol_version: PROTOCOL_VERSION,
            sync_first: false,
            conversation: false,
        }),
    );
    BytesMut::from(&frame.encode()[..])
}

fn ping(nonce: u64) -> BytesMut {
    BytesMut::from(&Frame::new(nonce, Body::Ping(Ping { nonce })).encode()[..])
}

fn drain(core: &mut Core) -> Vec<Action> {
    std::iter::from_fn(|| core.poll_action()).collect()
}

fn decode(frame: &[u8]) -> Frame {
    Frame::decode(frame, &Limits::default()).unwrap()
}

/// The error frames sent to `conn` in `actions`, and whether it was closed.
fn errors_and_close(actions: &[Action], conn: ConnId) -> (Vec<u16>, bool) {
    let mut codes = Vec::new();
    let mut closed = false;
    for a in actions {
        match a {
            Action::Transmit { conn: c, frame } if *c == conn => {
                if let Body::Error(e) = decode(frame).body {
                    codes.push(e.code);
                }
            }
            Action::Close { conn: c } if *c == conn => closed = true,
            _ => {}
        }
    }
    (codes, closed)
}

/// A user whose home core (of `cores`) is `core`.
fn user_homed_on(core: usize, cores: usize) -> UserId {
    (1..)
        .map(UserId)
        .find(|u| u.home_core(cores) == CoreId(core))
        .unwrap()
}

/// Accepts a connection and authenticates it as `user`, returning its id.
fn authenticate(c: &mut Core, user: UserId, device: u64, now: Instant) -> ConnId {
    let conn = c.handle_accept(now).unwrap();
    let mut buf = hello("tok");
    assert_eq!(c.handle_input(conn, &mut buf, now), InputStatus::Paused);
    let actions = drain(c);
    assert_eq!(
        actions,
        vec![Action::Authenticate {
            conn,
            token: "tok".into()
        }]
    );
    c.handle_auth(conn, AuthResult::Valid(user, DeviceId(device)), now);
    let actions = drain(c);
    // The Welcome, then (for users with friends) presence: the snapshot and
    // pushes to friends on this core (core/presence/tests.rs covers those).
    let Some((Action::Transmit { frame, .. }, presence)) = actions.split_first() else {
        panic!("expected a Welcome, got {actions:?}");
    };
    assert!(
        presence.iter().all(|a| matches!(a, Action::Transmit { frame, .. }
            if matches!(decode(frame).body, Body::Presence(_)))),
        "{presence:?}"
    );
    let welcome = decode(frame);
    assert_eq!(welcome.request_id, 7);
    let Body::Welcome(w) = welcome.body else {
        panic!("{welcome:?}")
    };
    assert_eq!((w.user_id, w.device_id), (user.0, device));
    assert_eq!(w.heartbeat_interval_ms, 1000);
    assert_eq!(
        w.server_time_ms,
        1_700_000_000_000 + (now - c.anchor.0).as_millis() as u64
    );
    conn
}

#[test]
fn hello_with_a_valid_token_is_welcomed_and_pings_are_answered() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    let conn = authenticate(&mut c, UserId(1), 9, t0);
    assert_eq!(c.stats().sessions, 1);
    let mut buf = ping(42);
    assert_eq!(c.handle_input(conn, &mut buf, t0), InputStatus::Drained);
    let actions = drain(&mut c);
    let [Action::Transmit { frame, .. }] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(
        decode(frame),
        Frame::new(42, Body::Pong(natter_wire::Pong { nonce: 42 }))
    );
}

#[test]
fn a_first_frame_other_than_hello_is_refused_and_closed() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    let conn = c.handle_accept(t0).unwrap();
    let mut buf = ping(1);
    c.handle_input(conn, &mut buf, t0);
    let (codes, closed) = errors_and_close(&drain(&mut c), conn);
    assert_eq!(codes, vec![ErrorCode::NotAuthenticated.as_u16()]);
    assert!(closed);
    c.handle_closed(conn);
    assert_eq!(c.stats().connections, 0);
}

#[test]
fn invalid_tokens_and_unavailable_stores_are_refused() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    for (result, code) in [
        (AuthResult::Invalid, ErrorCode::InvalidToken),
        (AuthResult::StoreUnavailable, ErrorCode::Unavailable),
    ] {
        let conn = c.handle_accept(t0).unwrap();
        c.handle_input(conn, &mut hello("bad"), t0);
        drain(&mut c);
        c.handle_auth(conn, result, t0);
        let (codes, closed) = errors_and_close(&drain(&mut c), conn);
        assert_eq!(codes, vec![code.as_u16()]);
        assert!(closed);
        c.handle_closed(conn);
    }
}

#[test]
fn wrong_protocol_version_and_garbage_and_oversize_frames_close_with_specific_codes() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    let old = Frame::new(
        1,
        Body::Hello(Hello {
            token: "t".into(),
            device: "d".into(),
            protocol_version: 99,
            sync_first: false,
            conversation: false,
        }),
    );
    let garbage = BytesMut::from(&[12u8, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8][..]);
    let huge = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1][..]);
    for (mut buf, code) in [
        (BytesMut::from(&old.encode()[..]), ErrorCode::UnsupportedVersion),
        (garbage, ErrorCode::BadFrame),
        (huge, ErrorCode::FrameTooLarge),
    ] {
        let conn = c.handle_accept(t0).unwrap();
        c.handle_input(conn, &mut buf, t0);
        let (codes, closed) = errors_and_close(&drain(&mut c), conn);
        assert_eq!(codes, vec![code.as_u16()], "for {code:?}");
        assert!(closed);
        c.handle_closed(conn);
    }
    assert_eq!(c.stats().protocol_errors, 2);
}

#[test]
fn a_session_of_a_user_homed_elsewhere_migrates_and_is_rechecked_on_arrival() {
    let t0 = Instant::now();
    let mut a = core(0, 2, t0);
    let mut b = core(1, 2, t0);
    let user = user_homed_on(1, 2);
    let conn = a.handle_accept(t0).unwrap();
    let mut buf = hello("tok");
    buf.extend_from_slice(&ping(5)); // pipelined behind the Hello
    assert_eq!(a.handle_input(conn, &mut buf, t0), InputStatus::Paused);
    drain(&mut a);
    a.handle_auth(conn, AuthResult::Valid(user, DeviceId(3)), t0);
    assert_eq!(drain(&mut a), vec![Action::Migrate { conn, to: CoreId(1) }]);
    let detached = a.detach(conn).unwrap();
    assert_eq!(a.stats().connections, 0);

    let conn_b = b.handle_adopt(detached, t0);
    assert_eq!(
        drain(&mut b),
        vec![Action::Authenticate {
            conn: conn_b,
            token: "tok".into()
        }]
    );
    b.handle_auth(conn_b, AuthResult::Valid(user, DeviceId(3)), t0);
    let actions = drain(&mut b);
    assert!(matches!(&actions[..], [Action::Transmit { .. }]));
    assert_eq!(b.stats().sessions, 1);
    // The pipelined Ping is served by the home core.
    assert_eq!(b.handle_input(conn_b, &mut buf, t0), InputStatus::Drained);
    let actions = drain(&mut b);
    let [Action::Transmit { frame, .. }] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert!(matches!(decode(frame).body, Body::Pong(_)));
}

#[test]
fn a_token_revoked_while_migrating_is_refused_at_the_home_core() {
    let t0 = Instant::now();
    let mut a = core(0, 2, t0);
    let mut b = core(1, 2, t0);
    let user = user_homed_on(1, 2);
    let conn = a.handle_accept(t0).unwrap();
    a.handle_input(conn, &mut hello("tok"), t0);
    drain(&mut a);
    a.handle_auth(conn, AuthResult::Valid(user, DeviceId(3)), t0);
    drain(&mut a);
    let conn_b = b.handle_adopt(a.detach(conn).unwrap(), t0);
    drain(&mut b);
    b.handle_auth(conn_b, AuthResult::Invalid, t0);
    let (codes, closed) = errors_and_close(&drain(&mut b), conn_b);
    assert_eq!(codes, vec![ErrorCode::InvalidToken.as_u16()]);
    assert!(closed);
}

#[test]
fn a_connection_without_hello_is_closed_at_the_hello_deadline() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    let conn = c.handle_accept(t0).unwrap();
    let deadline = t0 + HELLO_TIMEOUT.min(TIMEOUT);
    c.handle_timeout(deadline - Duration::from_millis(1));
    assert!(drain(&mut c).is_empty());
    let at = c.poll_timeout().unwrap();
    assert!(
        at >= deadline && at <= deadline + Duration::from_millis(400),
        "{at:?}"
    );
    c.handle_timeout(at);
    let (codes, closed) = errors_and_close(&drain(&mut c), conn);
    assert_eq!(codes, vec![ErrorCode::NotAuthenticated.as_u16()]);
    assert!(closed);
}

#[test]
fn heartbeats_keep_a_session_alive_and_silence_closes_it() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    let conn = authenticate(&mut c, UserId(1), 1, t0);
    // A ping every 2 s keeps the 3 s timeout from firing, for a long time.
    let mut now = t0;
    for i in 0..20 {
        now += Duration::from_secs(2);
        c.handle_timeout(now);
        c.handle_input(conn, &mut ping(i), now);
        let actions = drain(&mut c);
        assert!(
            errors_and_close(&actions, conn).0.is_empty(),
            "closed at {i}: {actions:?}"
        );
    }
    // Then silence: not closed before the timeout, closed after it.
    c.handle_timeout(now + TIMEOUT - Duration::from_millis(1));
    assert!(drain(&mut c).is_empty());
    let mut at = now + TIMEOUT;
    while let Some(next) = c.poll_timeout() {
        at = at.max(next);
        c.handle_timeout(at);
        if !c.actions.is_empty() {
            break;
        }
    }
    assert!(at <= now + TIMEOUT + Duration::from_millis(400));
    let (codes, closed) = errors_and_close(&drain(&mut c), conn);
    assert_eq!(codes, vec![ErrorCode::HeartbeatTimeout.as_u16()]);
    assert!(closed);
    c.handle_closed(conn);
    assert_eq!(c.stats().sessions, 0);
    // What is left is the user's presence grace period; after it, no timer.
    let grace_end = c.poll_timeout().unwrap();
    c.handle_timeout(grace_end);
    assert!(matches!(
        &drain(&mut c)[..],
        [Action::Write(WriteOp::LastSeen { .. })]
    ));
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn logout_closes_only_that_devices_sessions() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    let phone = authenticate(&mut c, UserId(1), 1, t0);
    let laptop = authenticate(&mut c, UserId(1), 2, t0);
    c.handle_close_device(UserId(1), DeviceId(1));
    let actions = drain(&mut c);
    let (codes, closed) = errors_and_close(&actions, phone);
    assert_eq!(codes, vec![ErrorCode::TokenRevoked.as_u16()]);
    assert!(closed);
    assert_eq!(errors_and_close(&actions, laptop), (vec![], false));
}

/// The push thread's question (`Core::devices_heard_within`): a device is live
/// while it has an authenticated session heard from within the threshold.
#[test]
fn push_liveness_is_a_recently_heard_session_of_that_device() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    let phone = authenticate(&mut c, UserId(1), 1, t0);
    let asked = [
        (UserId(1), DeviceId(1)),
        (UserId(1), DeviceId(2)),
        (UserId(2), DeviceId(3)),
    ];
    let within = Duration::from_millis(500);
    assert_eq!(
        c.devices_heard_within(&asked, within, t0),
        vec![true, false, false]
    );
    // Silent past the threshold: offline for push, though not yet closed.
    let later = t0 + Duration::from_millis(600);
    assert_eq!(
        c.devices_heard_within(&asked, within, later),
        vec![false, false, false]
    );
    c.handle_input(phone, &mut ping(1), later);
    drain(&mut c);
    assert_eq!(
        c.devices_heard_within(&asked, within, later),
        vec![true, false, false]
    );
    c.handle_close_device(UserId(1), DeviceId(1));
    drain(&mut c);
    c.handle_closed(phone);
    assert_eq!(
        c.devices_heard_within(&asked, within, later),
        vec![false, false, false]
    );
}

#[test]
fn a_flood_of_frames_is_served_within_the_per_turn_budget() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    let conn = authenticate(&mut c, UserId(1), 1, t0);
    let mut buf = BytesMut::new();
    for i in 0..100 {
        buf.extend_from_slice(&ping(i));
    }
    assert_eq!(c.handle_input(conn, &mut buf, t0), InputStatus::Budget);
    assert_eq!(drain(&mut c).len(), FRAMES_PER_SESSION_PER_TURN);
    assert_eq!(c.handle_input(conn, &mut buf, t0), InputStatus::Drained);
    assert_eq!(drain(&mut c).len(), 100 - FRAMES_PER_SESSION_PER_TURN);
}

#[test]
fn the_connection_limit_refuses_with_a_clear_error() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    for _ in 0..4 {
        assert!(c.handle_accept(t0).is_some());
    }
    assert_eq!(c.handle_accept(t0), None);
    let refusal = decode(&c.refusal());
    let Body::Error(e) = refusal.body else { panic!() };
    assert_eq!(e.code, ErrorCode::TooManyConnections.as_u16());
}

#[test]
fn shutdown_closes_every_connection() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    let a = authenticate(&mut c, UserId(1), 1, t0);
    let b = c.handle_accept(t0).unwrap();
    c.handle_shutdown();
    let actions = drain(&mut c);
    for conn in [a, b] {
        let (codes, closed) = errors_and_close(&actions, conn);
        assert_eq!(codes, vec![ErrorCode::ShuttingDown.as_u16()]);
        assert!(closed);
    }
}

// ----- messaging -------------------------------------------------------------

/// Two cores and the store they share, driven like the runtime drives them:
/// cross-core batches delivered in order, writes collected for a simulated
/// writer that "commits" when the test says so.
struct Mesh2 {
    store: Arc<Store>,
    cores: Vec<Core>,
    writes: Vec<WriteOp>,
    /// Everything else the cores asked their drivers to do: (core, action).
    out: Vec<(usize, Action)>,
    now: Instant,
    /// Membership reply channels by ticket (the driver's map).
    waiters: HashMap<ReplyTicket, MembershipReplyTo>,
    next_ticket: u64,
}

impl Mesh2 {
    fn new() -> Self {
        let store = store();
        let now = Instant::now();
        let cores = vec![core_on(&store, 0, 2, now), core_on(&store, 1, 2, now)];
        Self {
            store,
            cores,
            writes: Vec::new(),
            out: Vec::new(),
            now,
            waiters: HashMap::new(),
            next_ticket: 0,
        }
    }

    /// Runs every core until no work is left between them.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.cores.len() {
                self.cores[i].handle_end_of_turn();
                while let Some(action) = self.cores[i].poll_action() {
                    moved = true;
                    match action {
                        Action::ToCore { core, msgs } => {
                            let now = self.now;
                            self.cores[core.0].handle_core_msgs(msgs, now);
                        }
                        Action::Write(op) => self.writes.push(op),
                        other => self.out.push((i, other)),
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Makes every collected write durable (through the real store) and
    /// reports the completions to their cores, as the writer does.
    fn commit(&mut self) {
        let writes = std::mem::take(&mut self.writes);
        let mut per_core: Vec<Vec<Completion>> = vec![Vec::new(), Vec::new()];
        for op in writes {
            let (origin, completion) = crate::store::writer::apply_for_test(&self.store, op);
            per_core[origin.0].extend(completion);
        }
        for (i, completions) in per_core.into_iter().enumerate() {
            if !completions.is_empty() {
                let now = self.now;
                self.cores[i].handle_committed(completions, now);
            }
        }
        self.pump();
    }

    fn user(&self, name: &str) -> UserId {
        self.store.create_user(name, "$argon2id$not-used-here").unwrap()
    }

    fn befriend(&self, a: UserId, b: UserId) {
        self.store.request_friend(a, b).unwrap();
        self.store.accept_friend(b, a).unwrap();
    }

    /// Authenticates a session of `user` on its home core.
    fn connect(&mut self, user: UserId, device: u64) -> (usize, ConnId) {
        let home = user.home_core(2).0;
        let now = self.now;
        let conn = authenticate(&mut self.cores[home], user, device, now);
        (home, conn)
    }

    fn send(&mut self, (core, conn): (usize, ConnId), chat: ChatId, cmid: u64, text: &str, rid: u64) {
        let frame = Frame::new(
            rid,
            Body::Send(natter_wire::Send {
                chat_id: chat.0,
                client_msg_id: cmid,
                text: text.into(),
            }),
        );
        let now = self.now;
        let mut buf = BytesMut::from(&frame.encode()[..]);
        self.cores[core].handle_input(conn, &mut buf, now);
        self.pump();
    }

    /// Frames transmitted to `conn` on `core` since the last call.
    fn received(&mut self, (core, conn): (usize, ConnId)) -> Vec<Frame> {
        let mut frames = Vec::new();
        self.out.retain(|(i, a)| match a {
            Action::Transmit { conn: c, frame } if *i == core && *c == conn => {
                // Presence frames are core/presence/tests.rs's business.
                let frame = decode(frame);
                if !matches!(frame.body, Body::Presence(_)) {
                    frames.push(frame);
                }
                false
            }
            _ => true,
        });
        frames
    }
}

fn error_code(frames: &[Frame]) -> Vec<u16> {
    frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::Error(e) => Some(e.code),
            _ => None,
        })
        .collect()
}

#[test]
fn a_send_is_acknowledged_only_after_commit_and_pushed_to_every_other_device_of_every_member() {
    let mut m = Mesh2::new();
    let (ann, bob) = (m.user("ann"), m.user("bob"));
    m.befriend(ann, bob);
    let chat = m.store.create_group(ann, "pair", &[bob]).unwrap();
    let ann_phone = m.connect(ann, 1);
    let ann_laptop = m.connect(ann, 2);
    let bob_phone = m.connect(bob, 3);

    m.send(ann_phone, chat, 77, "hello", 5);
    assert_eq!(m.writes.len(), 1, "one durable write");
    assert!(m.received(ann_phone).is_empty(), "no SendOk before the commit");
    assert!(m.received(bob_phone).is_empty(), "no push before the commit");

    m.commit();
    let ok = m.received(ann_phone);
    let [
        Frame {
            request_id: 5,
            body: Body::SendOk(ok),
        },
    ] = &ok[..]
    else {
        panic!("{ok:?}")
    };
    assert_eq!((ok.chat_id, ok.seq, ok.client_msg_id), (chat.0, 1, 77));
    for device in [ann_laptop, bob_phone] {
        let got = m.received(device);
        let [
            Frame {
                request_id: 0,
                body: Body::Message(msg),
            },
        ] = &got[..]
        else {
            panic!("{got:?}")
        };
        assert_eq!(
            (msg.chat_id, msg.seq, msg.sender, msg.text.as_str()),
            (chat.0, 1, ann.0, "hello")
        );
        assert_eq!(msg.server_ts_ms, ok.server_ts_ms);
    }

    m.send(bob_phone, chat, 1, "hi ann", 6);
    m.commit();
    let got = m.received(ann_phone);
    assert!(matches!(&got[..], [Frame { body: Body::Message(msg), .. }] if msg.seq == 2));
}

#[test]
fn a_session_that_reuses_a_closed_senders_connection_slot_gets_the_push() {
    // The Send's origin names the sender's connection; the sender closes
    // before the commit and a new session takes the freed slot on the same
    // core. It is not the sender: it must get the push (found by the session
    // fuzz target: the skip compared the slot, not the session).
    let mut m = Mesh2::new();
    let (ann, bob) = (m.user("ann"), m.user("bob"));
    m.befriend(ann, bob);
    let chat = m.store.create_group(ann, "pair", &[bob]).unwrap();
    let ann_phone = m.connect(ann, 1);
    m.send(ann_phone, chat, 77, "hello", 5);
    let (core, conn) = ann_phone;
    m.cores[core].handle_closed(conn);
    m.pump();
    let ann_laptop = m.connect(ann, 2);
    assert_eq!(ann_laptop, ann_phone, "the test needs the slot reused");
    m.received(ann_laptop);
    m.commit();
    let got = m.received(ann_laptop);
    assert!(
        matches!(&got[..], [Frame { request_id: 0, body: Body::Message(msg) }]
            if (msg.chat_id, msg.seq, msg.text.as_str()) == (chat.0, 1, "hello")),
        "{got:?}"
    );
}

#[test]
fn a_retry_in_flight_or_after_commit_gets_the_original_seq_and_is_written_once() {
    let mut m = Mesh2::new();
    let (ann, bob) = (m.user("ann"), m.user("bob"));
    m.befriend(ann, bob);
    let (chat, _) = m.store.create_dm(ann, bob).unwrap();
    let phone = m.connect(ann, 1);
    m.send(phone, chat, 9, "once", 1);
    m.send(phone, chat, 9, "once", 2);
    assert_eq!(m.writes.len(), 1);
    m.commit();
    let oks = m.received(phone);
    let seqs: Vec<(u64, u64)> = oks
        .iter()
        .filter_map(|f| match &f.body {
            Body::SendOk(ok) => Some((f.request_id, ok.seq)),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, vec![(1, 1), (2, 1)]);

    // After the commit the dedupe record in the store answers.
    m.send(phone, chat, 9, "once", 3);
    assert!(m.writes.is_empty());
    let again = m.received(phone);
    assert!(matches!(&again[..], [Frame { request_id: 3, body: Body::SendOk(ok) }] if ok.seq == 1));
    // A new id gets the next seq.
    m.send(phone, chat, 10, "twice", 4);
    m.commit();
    assert!(matches!(&m.received(phone)[..], [Frame { body: Body::SendOk(ok), .. }] if ok.seq == 2));
}

#[test]
fn refusals_have_specific_codes_and_keep_the_session_open() {
    let mut m = Mesh2::new();
    let (ann, bob, eve) = (m.user("ann"), m.user("bob"), m.user("eve"));
    m.befriend(ann, bob);
    let (chat, _) = m.store.create_dm(ann, bob).unwrap();
    let ann_phone = m.connect(ann, 1);
    let eve_phone = m.connect(eve, 2);

    // A chat one is not a member of and a chat that does not exist answer
    // alike, code and message: chat ids reveal nothing.
    m.send(eve_phone, chat, 1, "let me in", 1);
    let not_member = m.received(eve_phone);
    m.send(eve_phone, ChatId(999), 1, "anyone?", 1);
    let missing = m.received(eve_phone);
    assert_eq!(error_code(&not_member), vec![ErrorCode::UnknownChat.as_u16()]);
    assert_eq!(not_member, missing);
    m.send(ann_phone, ChatId(999), 1, "anyone?", 1);
    assert_eq!(
        error_code(&m.received(ann_phone)),
        vec![ErrorCode::UnknownChat.as_u16()]
    );
    m.send(ann_phone, chat, 2, "", 1);
    assert_eq!(
        error_code(&m.received(ann_phone)),
        vec![ErrorCode::EmptyText.as_u16()]
    );
    m.send(ann_phone, chat, 3, &"é".repeat(MAX_TEXT_CHARS + 1), 1);
    assert_eq!(
        error_code(&m.received(ann_phone)),
        vec![ErrorCode::TextTooLong.as_u16()]
    );
    m.send(ann_phone, chat, 4, &"é".repeat(MAX_TEXT_CHARS), 1);
    assert_eq!(m.writes.len(), 1, "100,000 characters are accepted");
    m.commit();
    assert!(
        m.out.iter().all(|(_, a)| !matches!(a, Action::Close { .. })),
        "{:?}",
        m.out
    );
}

#[test]
fn sends_over_the_rate_limit_are_refused_until_tokens_refill() {
    let mut m = Mesh2::new();
    let (ann, bob) = (m.user("ann"), m.user("bob"));
    m.befriend(ann, bob);
    let (chat, _) = m.store.create_dm(ann, bob).unwrap();
    let phone = m.connect(ann, 1);
    for i in 1..12 {
        m.send(phone, chat, i, "x", i);
    }
    assert_eq!(
        error_code(&m.received(phone)),
        vec![ErrorCode::RateLimited.as_u16()]
    );
    assert_eq!(m.writes.len(), 10);
    m.now += Duration::from_millis(200); // 2 tokens at 10/s
    m.send(phone, chat, 100, "x", 100);
    m.send(phone, chat, 101, "x", 101);
    m.send(phone, chat, 102, "x", 102);
    assert_eq!(m.writes.len(), 12);
    assert_eq!(
        error_code(&m.received(phone)),
        vec![ErrorCode::RateLimited.as_u16()]
    );
}

#[test]
fn a_removed_member_gets_nothing_sent_after_the_removal_and_cannot_send() {
    let mut m = Mesh2::new();
    let (ann, bob, cat) = (m.user("ann"), m.user("bob"), m.user("cat"));
    m.befriend(ann, bob);
    m.befriend(ann, cat);
    let chat = m.store.create_group(ann, "trio", &[bob, cat]).unwrap();
    let ann_phone = m.connect(ann, 1);
    let bob_phone = m.connect(bob, 2);
    let cat_phone = m.connect(cat, 3);

    let owner = chat.owner_core(2).0;
    let change = |actor, user, add| {
        let (reply, rx) = crossbeam_channel::bounded(1);
        (
            (
                MembershipChange {
                    chat,
                    actor,
                    user,
                    add,
                },
                reply,
            ),
            rx,
        )
    };
    // Only the owner removes others.
    let (c, rx) = change(bob, cat, false);
    m.membership(owner, c);
    m.pump();
    m.drain_membership_replies();
    assert_eq!(rx.try_recv(), Ok(Err(MembershipError::NotOwner)));

    let (c, rx) = change(ann, bob, false);
    m.membership(owner, c);
    m.pump();
    m.send(ann_phone, chat, 1, "bob is gone", 1);
    m.commit();
    m.drain_membership_replies();
    assert_eq!(rx.try_recv(), Ok(Ok(())));
    assert!(m.received(bob_phone).is_empty());
    assert!(matches!(
        &m.received(cat_phone)[..],
        [Frame {
            body: Body::Message(_),
            ..
        }]
    ));
    m.send(bob_phone, chat, 2, "hello?", 9);
    assert_eq!(
        error_code(&m.received(bob_phone)),
        vec![ErrorCode::UnknownChat.as_u16()]
    );
    assert_eq!(
        m.store.chat(chat).unwrap().unwrap().members.len(),
        2,
        "the removal is durable"
    );

    // Adding back needs friendship with the owner; bob is a friend.
    let (c, rx) = change(ann, bob, true);
    m.membership(owner, c);
    m.pump();
    m.commit();
    m.drain_membership_replies();
    assert_eq!(rx.try_recv(), Ok(Ok(())));
    let stranger = m.user("zed");
    let (c, rx) = change(ann, stranger, true);
    m.membership(owner, c);
    m.pump();
    m.drain_membership_replies();
    assert_eq!(rx.try_recv(), Ok(Err(MembershipError::NotFriends)));
}

/// Where a membership change's outcome goes (the HTTP worker's side).
type MembershipReplyTo = crossbeam_channel::Sender<Result<(), MembershipError>>;

impl Mesh2 {
    /// Hands a membership change to `core` under a fresh ticket, keeping its
    /// reply channel as the driver does.
    fn membership(&mut self, core: usize, (change, reply): (MembershipChange, MembershipReplyTo)) {
        self.next_ticket += 1;
        let ticket = ReplyTicket(self.next_ticket);
        self.waiters.insert(ticket, reply);
        let now = self.now;
        self.cores[core].handle_membership(change, ticket, now);
    }

    /// Carries out the MembershipReply actions (the driver's job).
    fn drain_membership_replies(&mut self) {
        let waiters = &mut self.waiters;
        self.out.retain(|(_, a)| match a {
            Action::MembershipReply { reply, result } => {
                if let Some(to) = waiters.remove(reply) {
                    let _ = to.send(result.clone());
                }
                false
            }
            _ => true,
        });
    }
}

#[test]
fn an_oversized_prefix_right_after_a_full_budget_of_frames_is_refused_on_the_next_turn() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    let conn = authenticate(&mut c, UserId(1), 1, t0);
    let mut buf = BytesMut::new();
    for i in 0..FRAMES_PER_SESSION_PER_TURN as u64 {
        buf.extend_from_slice(&ping(i));
    }
    buf.extend_from_slice(&[0xff, 0xff, 0xff, 0x7f]);
    // The budget ran out with a refusable prefix waiting: come back, don't wait for bytes.
    assert_eq!(c.handle_input(conn, &mut buf, t0), InputStatus::Budget);
    drain(&mut c);
    c.handle_input(conn, &mut buf, t0);
    let (codes, closed) = errors_and_close(&drain(&mut c), conn);
    assert_eq!(codes, vec![ErrorCode::FrameTooLarge.as_u16()]);
    assert!(closed);
}

#[test]
fn client_msg_id_zero_and_a_reused_id_with_another_text_are_refused() {
    let mut m = Mesh2::new();
    let (ann, bob) = (m.user("ann"), m.user("bob"));
    m.befriend(ann, bob);
    let (chat, _) = m.store.create_dm(ann, bob).unwrap();
    let phone = m.connect(ann, 1);
    m.send(phone, chat, 0, "unset id", 1);
    assert_eq!(
        error_code(&m.received(phone)),
        vec![ErrorCode::MissingClientMsgId.as_u16()]
    );
    m.send(phone, chat, 5, "the text", 2);
    // In flight: a retry with another text is refused, one with the same text joins.
    m.send(phone, chat, 5, "another text", 3);
    assert_eq!(
        error_code(&m.received(phone)),
        vec![ErrorCode::ClientMsgIdReused.as_u16()]
    );
    m.send(phone, chat, 5, "the text", 4);
    m.commit();
    let oks: Vec<(u64, u64)> = m
        .received(phone)
        .iter()
        .filter_map(|f| match &f.body {
            Body::SendOk(ok) => Some((f.request_id, ok.seq)),
            _ => None,
        })
        .collect();
    assert_eq!(oks, vec![(2, 1), (4, 1)]);
    // Committed: the same again, answered from the store.
    m.now += Duration::from_secs(1);
    m.send(phone, chat, 5, "yet another text", 5);
    assert_eq!(
        error_code(&m.received(phone)),
        vec![ErrorCode::ClientMsgIdReused.as_u16()]
    );
    m.send(phone, chat, 5, "the text", 6);
    let frames = m.received(phone);
    assert!(
        matches!(frames.as_slice(), [Frame { request_id: 6, body: Body::SendOk(ok) }] if ok.seq == 1),
        "{frames:?}"
    );
    assert_eq!(m.writes.len(), 0, "stored once");
}

#[test]
fn below_the_disk_reserve_new_sends_are_refused_as_storage_full_and_stored_ones_still_acked() {
    let mut m = Mesh2::new();
    let (ann, bob) = (m.user("ann"), m.user("bob"));
    m.befriend(ann, bob);
    let (chat, _) = m.store.create_dm(ann, bob).unwrap();
    let phone = m.connect(ann, 1);
    m.send(phone, chat, 1, "stored before the disk filled", 1);
    m.commit();
    let _ = m.received(phone);
    // A reserve no disk can meet: the disk is "below" it.
    m.store.space().set_reserve(u64::MAX);
    m.now += Duration::from_secs(1);
    m.send(phone, chat, 2, "new while full", 2);
    assert_eq!(
        error_code(&m.received(phone)),
        vec![ErrorCode::StorageFull.as_u16()]
    );
    assert_eq!(m.writes.len(), 0, "nothing queued for the disk");
    // A retry of a message already stored is answered from its dedupe record.
    m.send(phone, chat, 1, "stored before the disk filled", 3);
    let frames = m.received(phone);
    assert!(
        matches!(frames.as_slice(), [Frame { request_id: 3, body: Body::SendOk(ok) }] if ok.seq == 1),
        "{frames:?}"
    );
    // Space freed: the refused send goes through under its id, with the next seq.
    m.store.space().set_reserve(0);
    m.send(phone, chat, 2, "new while full", 4);
    assert_eq!(m.writes.len(), 1);
    m.commit();
    let frames = m.received(phone);
    assert!(
        matches!(frames.as_slice(), [Frame { request_id: 4, body: Body::SendOk(ok) }] if ok.seq == 2),
        "{frames:?}"
    );
}

#[test]
fn sends_past_the_in_flight_cap_are_refused_as_overloaded_until_the_writer_catches_up() {
    let mut m = Mesh2::new();
    let (ann, bob) = (m.user("ann"), m.user("bob"));
    m.befriend(ann, bob);
    let (chat, _) = m.store.create_dm(ann, bob).unwrap();
    let phone = m.connect(ann, 1);
    let text = "é".repeat(100_000); // 200,000 bytes
    let fit = MAX_IN_FLIGHT_BYTES / text.len();
    for i in 1..=fit as u64 + 3 {
        m.now += Duration::from_millis(100);
        m.send(phone, chat, i, &text, i);
    }
    assert_eq!(m.writes.len(), fit, "the writer holds the cap's worth");
    let codes = error_code(&m.received(phone));
    assert_eq!(codes, vec![ErrorCode::Overloaded.as_u16(); 3]);
    // Once committed, the same sends (same ids) go through.
    m.commit();
    let _ = m.received(phone);
    m.now += Duration::from_secs(1);
    m.send(phone, chat, fit as u64 + 1, &text, 1000);
    assert_eq!(m.writes.len(), 1);
    assert!(error_code(&m.received(phone)).is_empty());
}

#[test]
fn a_users_session_past_the_cap_closes_the_oldest() {
    let now = Instant::now();
    let mut config = config(0, 1);
    config.max_connections = 64;
    config.max_sessions_per_user = 3;
    let mut c = Core::new(config, store(), now, 1_700_000_000_000);
    let user = UserId(1);
    let first = authenticate(&mut c, user, 1, now);
    let _second = authenticate(&mut c, user, 2, now);
    let _third = authenticate(&mut c, user, 3, now);
    let conn = c.handle_accept(now).unwrap();
    let mut buf = hello("tok");
    c.handle_input(conn, &mut buf, now);
    drain(&mut c);
    c.handle_auth(conn, AuthResult::Valid(user, DeviceId(4)), now);
    let actions = drain(&mut c);
    let to_first: Vec<&Action> = actions
        .iter()
        .filter(|a| matches!(a, Action::Transmit { conn, .. } | Action::Close { conn } if *conn == first))
        .collect();
    assert!(
        matches!(to_first.as_slice(), [Action::Transmit { frame, .. }, Action::Close { .. }]
            if matches!(&decode(frame).body, Body::Error(e) if e.code == ErrorCode::TooManySessions.as_u16())),
        "{actions:?}"
    );
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Transmit { conn: c, frame } if *c == conn
            && matches!(decode(frame).body, Body::Welcome(_)))),
        "the new session is welcomed"
    );
    assert_eq!(c.stats().sessions, 3);
}

#[test]
fn a_pipeline_of_history_requests_is_executed_one_read_at_a_time() {
    let now = Instant::now();
    let store = store();
    let (ann, bob) = (
        store.create_user("ann", "$argon2id$x").unwrap(),
        store.create_user("bob", "$argon2id$x").unwrap(),
    );
    store.request_friend(ann, bob).unwrap();
    store.accept_friend(bob, ann).unwrap();
    let (chat, _) = store.create_dm(ann, bob).unwrap();
    let ops: Vec<WriteOp> = (1..=3)
        .map(|seq| WriteOp::Message {
            origin: CoreId(0),
            msg: StoredMessage {
                chat,
                seq: Seq(seq),
                sender: ann,
                server_ts_ms: seq,
                client_msg_id: ClientMsgId(seq),
                text: "😀".repeat(100_000),
                meta: Default::default(),
            },
        })
        .collect();
    store.commit_writes(&ops);
    let mut config = config(0, 1);
    config.max_connections = 64;
    let mut c = Core::new(config, store.clone(), now, 1_700_000_000_000);
    let conn = authenticate(&mut c, ann, 1, now);
    let mut buf = BytesMut::new();
    for rid in 1..=40 {
        let frame = Frame::new(
            rid,
            Body::History(natter_wire::History {
                chat_id: chat.0,
                before_seq: 0,
                limit: 200,
            }),
        );
        buf.extend_from_slice(&frame.encode());
    }
    let frame_len = buf.len() / 40;
    let store_reads: Arc<dyn ChatStore> = store.clone();
    let mut pages = 0;
    for round in 1..=40u64 {
        let before = buf.len();
        // Each call takes one History and stops: its read is off the loop and
        // the frames behind it wait for the answer (pipelined requests cannot
        // pile pages up in natterd).
        assert_eq!(c.handle_input(conn, &mut buf, now), InputStatus::Paused);
        assert_eq!(before - buf.len(), frame_len, "round {round}");
        assert_eq!(
            c.handle_input(conn, &mut buf, now),
            InputStatus::Paused,
            "nothing more until the answer"
        );
        assert_eq!(before - buf.len(), frame_len);
        let actions = drain(&mut c);
        let [Action::Read { ticket, request, .. }] = &actions[..] else {
            panic!("round {round}: {actions:?}");
        };
        c.handle_read(*ticket, request.run(&*store_reads), now);
        let actions = drain(&mut c);
        let mut resumed = false;
        for a in &actions {
            match a {
                Action::Transmit { frame, .. } => {
                    let Body::HistoryPage(page) = decode(frame).body else {
                        panic!("{a:?}");
                    };
                    assert!(!page.messages.is_empty());
                    assert_eq!(decode(frame).request_id, round);
                    pages += 1;
                }
                Action::ResumeInput { conn: c } => resumed = *c == conn,
                other => panic!("{other:?}"),
            }
        }
        assert!(resumed, "the answer resumes the session's input");
    }
    assert_eq!(pages, 40);
    assert!(buf.is_empty());
}

#[test]
fn output_progress_keeps_a_silent_reader_alive_and_a_session_without_it_times_out() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    let reader = authenticate(&mut c, UserId(1), 1, t0);
    let silent = authenticate(&mut c, UserId(2), 2, t0);
    // Neither sends a frame for 20 s (the timeout is 3 s); the reader's socket
    // takes bytes every second, the other's takes none.
    let mut now = t0;
    let mut closed = Vec::new();
    for _ in 0..20 {
        now += Duration::from_secs(1);
        c.handle_output_progress(reader, now);
        assert!(drain(&mut c).is_empty());
        c.handle_timeout(now);
        let actions = drain(&mut c);
        for conn in [reader, silent] {
            let (codes, was_closed) = errors_and_close(&actions, conn);
            if was_closed {
                assert_eq!(codes, vec![ErrorCode::HeartbeatTimeout.as_u16()]);
                c.handle_closed(conn);
                closed.push((conn, now));
            }
        }
    }
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0].0, silent);
    assert!(closed[0].1 <= t0 + TIMEOUT + Duration::from_secs(1));
    assert_eq!(c.stats().sessions, 1);
    // Progress reported for a connection that is gone, or not yet
    // authenticated, changes nothing.
    c.handle_output_progress(silent, now);
    let pending = c.handle_accept(now).unwrap();
    c.handle_output_progress(pending, now);
    assert!(drain(&mut c).is_empty());
}

#[test]
fn pre_authentication_input_is_capped_and_an_honest_hello_fits() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    // A 100 KiB length prefix and part of its body, before any Hello: refused
    // at once, without waiting for the rest (max_frame is 512 KiB).
    let conn = c.handle_accept(t0).unwrap();
    let mut buf = BytesMut::from(&(100u32 * 1024).to_le_bytes()[..]);
    buf.extend_from_slice(&[0u8; 1000]);
    assert_eq!(c.handle_input(conn, &mut buf, t0), InputStatus::Paused);
    let actions = drain(&mut c);
    let (codes, closed) = errors_and_close(&actions, conn);
    assert_eq!(codes, vec![ErrorCode::FrameTooLarge.as_u16()]);
    assert!(closed);
    let message = actions
        .iter()
        .find_map(|a| match a {
            Action::Transmit { frame, .. } => match decode(frame).body {
                Body::Error(e) => Some(e.message),
                _ => None,
            },
            _ => None,
        })
        .unwrap();
    assert!(
        message.contains("pre-authentication input is limited"),
        "{message}"
    );
    assert!(buf.is_empty());
    c.handle_closed(conn);
    // The largest honest Hello (64-character token, 128-byte device) fits.
    let conn = c.handle_accept(t0).unwrap();
    let frame = Frame::new(
        u64::MAX,
        Body::Hello(Hello {
            token: "t".repeat(64),
            device: "d".repeat(MAX_DEVICE_DESCRIPTION),
            protocol_version: PROTOCOL_VERSION,
            sync_first: false,
            conversation: false,
        }),
    );
    let mut buf = BytesMut::from(&frame.encode()[..]);
    assert!(buf.len() <= MAX_PRE_AUTH_INPUT);
    assert_eq!(c.handle_input(conn, &mut buf, t0), InputStatus::Paused);
    assert!(matches!(&drain(&mut c)[..], [Action::Authenticate { .. }]));
    // Once authenticated, frames up to max_frame are fine again.
    c.handle_auth(conn, AuthResult::Valid(UserId(1), DeviceId(1)), t0);
    drain(&mut c);
    let mut big = BytesMut::from(&(100u32 * 1024).to_le_bytes()[..]);
    big.extend_from_slice(&[0u8; 1000]);
    assert_eq!(c.handle_input(conn, &mut big, t0), InputStatus::Drained);
    assert!(drain(&mut c).is_empty());
    assert_eq!(big.len(), 1004);
}

#[test]
fn an_owner_who_leaves_hands_the_group_to_the_longest_standing_committed_member() {
    let mut m = Mesh2::new();
    let (ann, bob, cat, dan) = (m.user("ann"), m.user("bob"), m.user("cat"), m.user("dan"));
    for friend in [bob, cat, dan] {
        m.befriend(ann, friend);
    }
    m.befriend(cat, dan);
    // cat (3) is a member from the start; bob (2, a lower id) is being added
    // when ann leaves: an add that is not committed yet counts as the newest.
    let chat = m.store.create_group(ann, "crew", &[cat]).unwrap();
    type Reply = crossbeam_channel::Receiver<Result<(), MembershipError>>;
    fn change(m: &mut Mesh2, chat: ChatId, actor: UserId, user: UserId, add: bool) -> Reply {
        let (reply, rx) = crossbeam_channel::bounded(1);
        m.membership(
            chat.owner_core(2).0,
            (
                MembershipChange {
                    chat,
                    actor,
                    user,
                    add,
                },
                reply,
            ),
        );
        m.pump();
        rx
    }
    let added = change(&mut m, chat, ann, bob, true);
    let left = change(&mut m, chat, ann, ann, false);
    let written: Vec<Option<UserId>> = m
        .writes
        .iter()
        .filter_map(|op| match op {
            WriteOp::Membership { new_owner, .. } => Some(*new_owner),
            _ => None,
        })
        .collect();
    assert_eq!(written, [None, Some(cat)], "the hand-over rides with the removal");
    m.commit();
    m.drain_membership_replies();
    assert_eq!((added.try_recv(), left.try_recv()), (Ok(Ok(())), Ok(Ok(()))));
    let info = m.store.chat(chat).unwrap().unwrap();
    assert_eq!((info.owner, info.members), (cat, vec![bob, cat]));

    // The core decides with the new owner at once: cat adds her friend and
    // removes others; bob and ann cannot.
    let by_bob = change(&mut m, chat, bob, cat, false);
    m.drain_membership_replies();
    assert_eq!(by_bob.try_recv(), Ok(Err(MembershipError::NotOwner)));
    let by_ann = change(&mut m, chat, ann, dan, true);
    m.drain_membership_replies();
    assert_eq!(by_ann.try_recv(), Ok(Err(MembershipError::UnknownChat)));
    let by_cat = change(&mut m, chat, cat, dan, true);
    m.commit();
    m.drain_membership_replies();
    assert_eq!(by_cat.try_recv(), Ok(Ok(())));

    // Everyone leaves; the last one leaves nobody to hand the group to.
    for user in [cat, bob, dan] {
        let rx = change(&mut m, chat, user, user, false);
        m.commit();
        m.drain_membership_replies();
        assert_eq!(rx.try_recv(), Ok(Ok(())));
    }
    let info = m.store.chat(chat).unwrap().unwrap();
    assert!(info.members.is_empty());
    assert_eq!(
        info.owner, dan,
        "bob joined before dan, so dan was the last owner"
    );
}

#[test]
fn a_deferred_token_lookup_is_only_reported_for_the_connection_and_token_it_was_made_for() {
    let now = Instant::now();
    let mut c = core(0, 1, now);
    let conn = c.handle_accept(now).unwrap();
    assert!(!c.is_authenticating(conn, "tok"), "no Hello yet");
    let mut buf = hello("tok");
    c.handle_input(conn, &mut buf, now);
    drain(&mut c);
    assert!(c.is_authenticating(conn, "tok"));
    assert!(!c.is_authenticating(conn, "another token"));
    // The connection goes; its id is reused by one waiting for another token.
    c.handle_closed(conn);
    let again = c.handle_accept(now).unwrap();
    assert_eq!(again, conn, "slab ids are reused");
    let mut buf = hello("other");
    c.handle_input(again, &mut buf, now);
    drain(&mut c);
    assert!(
        !c.is_authenticating(again, "tok"),
        "the stale lookup must be dropped"
    );
    assert!(c.is_authenticating(again, "other"));
}

/// The presence frames (user, online, last seen) among `actions`.
fn presence_frames(actions: &[Action]) -> Vec<(u64, bool, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Transmit { frame, .. } => match decode(frame).body {
                Body::Presence(p) => Some((p.user_id, p.online, p.last_seen_ms)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[test]
fn a_session_seed_read_off_the_loop_replaces_the_store_reads_unless_friendships_changed_since() {
    let now = Instant::now();
    let store = store();
    let (ann, bob, cid) = (
        store.create_user("ann", "$argon2id$x").unwrap(),
        store.create_user("bob", "$argon2id$x").unwrap(),
        store.create_user("cid", "$argon2id$x").unwrap(),
    );
    store.request_friend(ann, bob).unwrap();
    store.accept_friend(bob, ann).unwrap();
    store.commit_writes(&[WriteOp::LastSeen {
        origin: CoreId(0),
        user: bob,
        last_seen_ms: 1234,
    }]);
    // The seed says what the reader read: here deliberately not what is
    // stored (a friend cid, bob last seen at 999), so the frames tell which
    // one the core used.
    for stale in [false, true] {
        let mut c = Core::new(config(0, 1), store.clone(), now, 1_700_000_000_000);
        let epoch = c.friends_epoch();
        if stale {
            // A friendship change applied after the seed's epoch was taken.
            c.handle_friends_changed(ann, cid, now);
            drain(&mut c);
        }
        let conn = c.handle_accept(now).unwrap();
        let mut buf = hello("tok");
        c.handle_input(conn, &mut buf, now);
        drain(&mut c);
        let seed = SessionSeed {
            epoch,
            friends: vec![bob, cid],
            last_seen: vec![(bob, 999), (cid, 5)],
        };
        c.handle_auth_seeded(conn, AuthResult::Valid(ann, DeviceId(1)), Some(seed), now);
        let mut got = presence_frames(&drain(&mut c));
        got.sort_unstable();
        if stale {
            assert_eq!(got, vec![(bob.0, false, 1234)], "the store's friends and times");
        } else {
            assert_eq!(got, vec![(bob.0, false, 999), (cid.0, false, 5)], "the seed's");
        }
    }
}

// ---- conversation features (issue 15, `conversation.rs`) under the simulated clock ----------

impl Mesh2 {
    /// Authenticates a session that asked for conversation frames (Hello{conversation}).
    fn connect_conversation(&mut self, user: UserId, device: u64) -> (usize, ConnId) {
        let (core, conn) = self.connect(user, device);
        if let Some(session) = self.cores[core].sessions.get_mut(conn.0) {
            session.conversation = true;
        }
        (core, conn)
    }

    /// Hands `body` to the session's core as a client frame, then runs the cores.
    fn frame(&mut self, (core, conn): (usize, ConnId), rid: u64, body: Body) {
        let now = self.now;
        let mut buf = BytesMut::from(&Frame::new(rid, body).encode()[..]);
        self.cores[core].handle_input(conn, &mut buf, now);
        self.pump();
    }

    /// Moves the clock to `at` without running timers (no heartbeat timeout closes the
    /// sessions of a test that jumps minutes ahead; typing and edit windows need no timer).
    fn set_clock(&mut self, at: Instant) {
        self.now = at;
    }

    /// Moves the clock to `at` and lets every core handle its timers.
    fn advance_to(&mut self, at: Instant) {
        self.now = at;
        for core in &mut self.cores {
            core.handle_timeout(at);
        }
        self.pump();
    }
}

fn typing_frames(frames: &[Frame]) -> Vec<(u64, bool)> {
    frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::Typing(t) => Some((t.user_id, t.active)),
            _ => None,
        })
        .collect()
}

fn typing(chat: ChatId, active: bool) -> Body {
    Body::Typing(natter_wire::Typing {
        chat_id: chat.0,
        active,
        user_id: 0,
    })
}

#[test]
fn typing_is_passed_on_at_most_once_per_two_seconds_and_expires_after_six() {
    let mut m = Mesh2::new();
    let (ann, bob, dan) = (m.user("ann"), m.user("bob"), m.user("dan"));
    m.befriend(ann, bob);
    m.befriend(ann, dan);
    let chat = m.store.create_group(ann, "two", &[bob]).unwrap();
    let a = m.connect_conversation(ann, 1);
    let b = m.connect_conversation(bob, 2);
    let d = m.connect_conversation(dan, 3);
    let t0 = m.now;
    m.frame(a, 1, typing(chat, true));
    assert_eq!(typing_frames(&m.received(b)), [(ann.0, true)]);
    assert!(typing_frames(&m.received(a)).is_empty(), "not to the typist");
    // Within 2 s of the last one passed on, refreshes and stops are dropped.
    m.set_clock(t0 + Duration::from_millis(1500));
    m.frame(a, 2, typing(chat, true));
    m.frame(a, 3, typing(chat, false));
    assert!(typing_frames(&m.received(b)).is_empty());
    m.set_clock(t0 + TYPING_THROTTLE + Duration::from_millis(1));
    let t1 = m.now;
    m.frame(a, 4, typing(chat, true));
    assert_eq!(typing_frames(&m.received(b)), [(ann.0, true)]);
    // A non-member's indicator goes nowhere, and it gets none.
    m.frame(d, 5, typing(chat, true));
    assert!(typing_frames(&m.received(b)).is_empty());
    assert!(typing_frames(&m.received(d)).is_empty());
    // Past the expiry the indicator is gone by itself: a Send ends nothing.
    m.set_clock(t1 + TYPING_EXPIRY + Duration::from_millis(1));
    m.send(a, chat, 1, "hi", 6);
    assert!(typing_frames(&m.received(b)).is_empty());
    // Shown again, a Send ends it (at once, before its commit).
    m.frame(a, 7, typing(chat, true));
    assert_eq!(typing_frames(&m.received(b)), [(ann.0, true)]);
    m.send(a, chat, 2, "there", 8);
    assert_eq!(typing_frames(&m.received(b)), [(ann.0, false)]);
}

#[test]
fn receipts_are_coalesced_into_one_cumulative_frame_per_member_per_interval() {
    let mut m = Mesh2::new();
    let (ann, bob, cat) = (m.user("ann"), m.user("bob"), m.user("cat"));
    m.befriend(ann, bob);
    m.befriend(ann, cat);
    let chat = m.store.create_group(ann, "trio", &[bob, cat]).unwrap();
    let a = m.connect_conversation(ann, 1);
    let b = m.connect_conversation(bob, 2);
    let c = m.connect_conversation(cat, 3);
    for i in 1..=5 {
        m.send(a, chat, i, "m", i);
    }
    m.commit();
    for conn in [a, b, c] {
        m.received(conn);
    }
    let t0 = m.now;
    // Bob acks each of the five, cat only the last: six acks, all within one interval.
    for seq in 1..=5 {
        m.frame(b, 0, Body::Ack(natter_wire::Ack { chat_id: chat.0, seq }));
    }
    m.frame(
        c,
        0,
        Body::Ack(natter_wire::Ack {
            chat_id: chat.0,
            seq: 5,
        }),
    );
    let receipts = |frames: Vec<Frame>| -> Vec<(u64, u64, u64)> {
        frames
            .into_iter()
            .filter_map(|f| match f.body {
                Body::Receipt(r) => Some((r.user_id, r.delivered_seq, r.read_seq)),
                _ => None,
            })
            .collect()
    };
    assert!(
        receipts(m.received(a)).is_empty(),
        "nothing before the interval ends"
    );
    m.advance_to(t0 + RECEIPT_INTERVAL - Duration::from_millis(1));
    assert!(receipts(m.received(a)).is_empty());
    m.advance_to(t0 + RECEIPT_INTERVAL);
    let mut got = receipts(m.received(a));
    got.sort_unstable();
    assert_eq!(
        got,
        [(bob.0, 5, 0), (cat.0, 5, 0)],
        "one cumulative receipt per member"
    );
    assert_eq!(
        receipts(m.received(b)),
        [(cat.0, 5, 0)],
        "the other members get it too"
    );
    assert_eq!(receipts(m.received(c)), [(bob.0, 5, 0)]);
    // A read marker (from the side-port) is coalesced the same way; an old or repeated value
    // changes nothing and sends nothing.
    let owner = chat.owner_core(2).0;
    let now = m.now;
    let read = |seq| CoreMsg::ReadMarker {
        chat,
        user: bob,
        seq: Seq(seq),
    };
    m.cores[owner].handle_core_msgs(vec![read(3), read(4), read(2)], now);
    m.pump();
    m.advance_to(now + RECEIPT_INTERVAL);
    assert_eq!(receipts(m.received(a)), [(bob.0, 5, 4)]);
    m.cores[owner].handle_core_msgs(vec![read(4)], now);
    m.advance_to(now + RECEIPT_INTERVAL * 3);
    assert!(receipts(m.received(a)).is_empty());
    // With read receipts off, bob's read marker shows as 0, and bob sees none of the others'.
    m.cores[owner].handle_core_msgs(
        vec![CoreMsg::Settings {
            user: bob,
            read_receipts: false,
        }],
        m.now,
    );
    m.cores[owner].handle_core_msgs(
        vec![CoreMsg::ReadMarker {
            chat,
            user: cat,
            seq: Seq(5),
        }],
        m.now,
    );
    let later = m.now + RECEIPT_INTERVAL;
    m.advance_to(later);
    let mut got = receipts(m.received(a));
    got.sort_unstable();
    assert_eq!(got, [(bob.0, 5, 0), (cat.0, 5, 5)]);
    assert_eq!(receipts(m.received(b)), [(cat.0, 5, 0)]);
}

#[test]
fn edits_and_deletes_keep_to_their_windows_under_the_simulated_clock() {
    let mut m = Mesh2::new();
    let (ann, bob) = (m.user("ann"), m.user("bob"));
    m.befriend(ann, bob);
    let (chat, _) = m.store.create_dm(ann, bob).unwrap();
    let a = m.connect(ann, 1);
    m.send(a, chat, 1, "first", 1);
    m.send(a, chat, 2, "second", 2);
    m.commit();
    m.received(a);
    let t0 = m.now;
    let edit = |cmid: u64, target: u64| {
        Body::Edit(natter_wire::Edit {
            chat_id: chat.0,
            target_seq: target,
            client_msg_id: cmid,
            text: format!("edit {cmid}"),
        })
    };
    // Just inside the 15-minute window: accepted, acknowledged after its commit only.
    m.set_clock(t0 + DEFAULT_EDIT_WINDOW - Duration::from_secs(1));
    m.frame(a, 10, edit(10, 1));
    assert!(m.received(a).is_empty(), "no SendOk before the commit");
    m.commit();
    let got = m.received(a);
    assert!(
        matches!(&got[..], [Frame { body: Body::SendOk(ok), .. }] if ok.seq == 3),
        "{got:?}"
    );
    // Past it: refused with its own code, nothing written.
    m.set_clock(t0 + DEFAULT_EDIT_WINDOW + Duration::from_secs(1));
    m.frame(a, 11, edit(11, 2));
    assert_eq!(error_code(&m.received(a)), [ErrorCode::WindowClosed.as_u16()]);
    assert!(m.writes.is_empty());
    // Deleting is allowed for 48 hours.
    m.frame(
        a,
        12,
        Body::Delete(natter_wire::Delete {
            chat_id: chat.0,
            target_seq: 2,
            client_msg_id: 12,
        }),
    );
    m.commit();
    let got = m.received(a);
    assert!(
        matches!(&got[..], [Frame { body: Body::SendOk(ok), .. }] if ok.seq == 4),
        "{got:?}"
    );
    m.set_clock(t0 + DEFAULT_DELETE_WINDOW + Duration::from_secs(1));
    m.frame(
        a,
        13,
        Body::Delete(natter_wire::Delete {
            chat_id: chat.0,
            target_seq: 1,
            client_msg_id: 13,
        }),
    );
    assert_eq!(error_code(&m.received(a)), [ErrorCode::WindowClosed.as_u16()]);
    // The committed records: the first message edited, the second deleted (text gone).
    let first = m.store.message(chat, Seq(1)).unwrap().unwrap();
    assert_eq!(
        (first.text.as_str(), first.meta.edited, first.meta.edits.clone()),
        ("edit 10", Seq(3), vec![Seq(3)])
    );
    let second = m.store.message(chat, Seq(2)).unwrap().unwrap();
    assert_eq!((second.text.as_str(), second.meta.deleted), ("", Seq(4)));
}
