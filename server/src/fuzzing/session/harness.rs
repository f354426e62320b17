//! The `session` target's driver: two [`Core`]s, their command queues, a storage writer and a
//! model of every client connection, checked against each other after every event. See the
//! module documentation of [`crate::fuzzing::session`] for the invariants.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crossbeam_channel::Receiver;
use natter_wire::{
    Body, Delete, Edit, ErrorCode, Frame, FrameDecoder, HistoryPage, Limits, Message, PROTOCOL_VERSION, Send,
    SyncDone,
};

use super::input::{AuthChoice, Input, Op};
use super::store::{CHAT_IDS, MemoryStore, StoredChat, initial_chats};
use super::{CORES, DEVICES, HEARTBEAT_TIMEOUT, MAX_BUFFERED, MAX_CONNECTIONS, MAX_FRAME, SEND_RATE, USERS};
use crate::core::fuzz_hooks::Phase;
use crate::core::{
    Action, AuthResult, ConnId, Core, CoreConfig, CoreMsg, Detached, FRAMES_PER_SESSION_PER_TURN,
    HELLO_TIMEOUT, HISTORY_MAX_MESSAGES, InputStatus, NEW_DEVICE_BACKLOG, REPLY_BYTES_PER_CALL,
};
use crate::core::{MembershipChange, MembershipError, ReadAnswer, ReadRequest, ReadTicket, ReplyTicket};
use crate::ids::{ChatId, ClientMsgId, CoreId, DeviceId, Seq, UserId};
use crate::store::writer::{Completion, WriteOp};
use crate::store::{ChatKind, StoredMessage};

/// The wall clock the cores start at (ms since the Unix epoch).
const UNIX_MS_AT_START: u64 = 1_700_000_000_000;

/// The cores' presence grace period: shorter than the heartbeat timeout, so
/// flaps within it and offline pushes after it both happen within a run.
const PRESENCE_GRACE: Duration = Duration::from_secs(1);

/// Rounds of "commit everything, deliver everything" after which the cores must be idle.
const QUIESCE_ROUNDS: usize = 1000;

fn user_id(user: u8) -> UserId {
    UserId(u64::from(user) % USERS + 1)
}

/// Device `device % DEVICES + 1` of `user`, as a store-wide id (device ids are unique across
/// users, so a device's stored cursors are its own).
fn device_id(user: UserId, device: u8) -> DeviceId {
    DeviceId((user.0 - 1) * DEVICES + u64::from(device) % DEVICES + 1)
}

fn auth_result(choice: AuthChoice) -> AuthResult {
    match choice {
        AuthChoice::Valid { user, device } => {
            AuthResult::Valid(user_id(user), device_id(user_id(user), device))
        }
        AuthChoice::Invalid => AuthResult::Invalid,
        AuthChoice::StoreUnavailable => AuthResult::StoreUnavailable,
    }
}

/// Where a client connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// On core `.0` as `.1`.
    On(usize, ConnId),
    /// Detached, travelling to its home core.
    InFlight,
    /// Closed (`handle_closed` was called).
    Gone,
}

/// The model of one client connection, across migrations.
#[derive(Debug)]
struct Client {
    place: Place,
    /// Bytes received and not yet taken by the core (they travel with the socket).
    buf: BytesMut,
    /// The rest of the last partial frame.
    tail: Vec<u8>,
    /// The answer to the latest token lookup, if `Valid`.
    valid: Option<(UserId, DeviceId)>,
    welcomed: bool,
    close_emitted: bool,
    accepted_at: Instant,
    /// When a frame from it was last taken (or it was welcomed).
    last_heard: Instant,
    /// Every well-formed Send, Edit and Delete the core took from it while welcomed: (request id,
    /// chat, client id); each is answered with SendOk or Error.
    sends: Vec<(u64, ChatId, ClientMsgId)>,
    /// Request ids of those Sends not answered yet (SendOk or Error).
    unanswered: Vec<u64>,
    /// The last `seq` pushed to it, per chat (since its last Sync).
    pushed: HashMap<ChatId, Seq>,
    /// The latest Hello the core took from it said `sync_first`.
    hello_sync_first: bool,
    /// The latest Hello the core took from it said `conversation`: only then may it get
    /// `Receipt`, `Typing` and `ChatStates` (docs/PROTOCOL.md, Hello).
    hello_conversation: bool,
    /// No `Message` may reach it now: welcomed after `Hello{sync_first}`, or sent `Resync`, and
    /// no Sync taken since.
    held: bool,
    /// Request ids of every Sync the core took from it while welcomed.
    syncs: HashSet<u64>,
    /// The check of its latest Sync's stream.
    seam: Seam,
}

/// The seam check of one client (docs/PROTOCOL.md, "The seam" and "Sync, history and cursors").
#[derive(Debug, Default)]
enum Seam {
    /// Nothing to check: no Sync yet, or the last one was answered by an `Error` or followed by
    /// `Resync`.
    #[default]
    Off,
    /// The call being drained took Syncs, the last one with this request id: what comes before
    /// its first answer (`Message`, `SyncDone` or `Error` with its id) belongs to the earlier
    /// ones and is not checked; from that answer on, `next` applies.
    Armed {
        request_id: u64,
        next: HashMap<ChatId, u64>,
    },
    /// The call being drained took two Syncs with the same request id: nothing of it is checked.
    Blind,
    /// Since the latest Sync's first answer: per chat of the sync's plan, the seq the next
    /// `Message` of that chat must carry (no duplicate, no gap); `done` once its `SyncDone` came.
    On {
        request_id: u64,
        next: HashMap<ChatId, u64>,
        done: bool,
    },
}

/// Most loop turns one op lets a core take while it has work left (a sync
/// past its per-turn read budget): enough to finish the syncs a fuzz input
/// can start, bounded so an input's cost stays bounded.
const TURNS_PER_OP: usize = 64;

/// A command waiting in a core's queue (`runtime::Command` without the sockets).
/// A read asked for, as the simulated reader thread holds it.
#[derive(Debug)]
enum PendingRead {
    /// Read when asked; the answer is on its way.
    Answered(ReadAnswer),
    /// Read when delivered.
    Asked(ReadRequest),
}

#[derive(Debug)]
enum Command {
    Adopt(Detached, usize),
    Core(Vec<CoreMsg>),
    Committed(Vec<Completion>),
    /// A change and the ticket its reply comes back under (an index into `reply_to`).
    Membership(MembershipChange, ReplyTicket),
}

/// Which call produced the actions being drained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    /// `handle_input` or `handle_outbound_overflow` for this client.
    Client(usize),
    /// `handle_drained` for this client.
    Drained(usize),
    /// `handle_auth` for this client.
    Auth(usize),
    /// `handle_adopt` of this client.
    Adopt(usize),
    /// `handle_timeout`.
    Timeout,
    /// `handle_close_device` on the user's home core.
    CloseDevice(UserId, DeviceId),
    /// `handle_shutdown`.
    Shutdown,
    /// `handle_core_msgs` or `handle_committed`.
    Mesh,
    /// `handle_membership`.
    Membership,
    /// `handle_end_of_turn`.
    EndOfTurn,
    /// `handle_read` of a read this client's session asked for.
    Read(usize),
    /// A call that must produce no action (`handle_accept`, `handle_closed`, `handle_close_device`
    /// on another core).
    Quiet,
}

/// The owner cores' decisions, as the harness saw them go to the writer.
#[derive(Debug)]
struct ChatModel {
    chat: StoredChat,
    /// The seq the next message write must carry.
    next_seq: u64,
}

/// How often the sync and history checks ran in one input (so tests can tell that seeds reach
/// them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Reached {
    /// Messages checked against a Sync's expected next seq.
    pub(super) seam_messages: u64,
    /// SyncDones whose heads were checked.
    pub(super) sync_dones: u64,
    /// Sessions welcomed with `sync_first`.
    pub(super) held_sessions: u64,
    /// Resyncs sent.
    pub(super) resyncs: u64,
    /// Messages in HistoryPages.
    pub(super) history_messages: u64,
    /// Receipt, Typing and ChatStates frames checked (conversation sessions only).
    pub(super) conversation_frames: u64,
    /// Edits and deletes committed.
    pub(super) amends: u64,
    /// Sync pages written after a `handle_drained` (by the answer of the read it led to).
    pub(super) drained_pages: u64,
}

pub(super) struct Harness {
    /// What the checks saw.
    pub(super) reached: Reached,
    /// Bytes the last [`Harness::drain`] transmitted to the client its cause names.
    drained_bytes: usize,
    /// Sync pages (Transmits of Messages only) the last [`Harness::drain`] carried out.
    drained_pages: usize,
    t0: Instant,
    now: Instant,
    cores: Vec<Core>,
    store: Arc<MemoryStore>,
    clients: Vec<Client>,
    /// Per core: which client each live `ConnId` is.
    conns: Vec<HashMap<ConnId, usize>>,
    /// Outstanding `Authenticate` actions: (core, conn, client).
    pending: Vec<(usize, ConnId, usize)>,
    /// Per core: its command queue.
    queues: Vec<VecDeque<Command>>,
    /// Per core: the reads it asked for, oldest first, with the client whose
    /// session asked. Plans and even tickets are read when asked (the answer
    /// waits), other odd ones when delivered: both ends of a reader thread's
    /// latitude.
    reads: Vec<VecDeque<(ReadTicket, usize, PendingRead)>>,

    /// The storage writer's queue, in order.
    writes: VecDeque<WriteOp>,
    /// Clients whose input a read's answer resumed (during the last drain).
    resumed: Vec<usize>,
    /// Clients whose sync was told their outbound drained and whose next
    /// page waits for a read (counted in [`Reached::drained_pages`] when it comes).
    after_drain: HashSet<usize>,
    chats: HashMap<ChatId, ChatModel>,
    /// The members of the chat when each message's seq was assigned.
    members_at: HashMap<(ChatId, Seq), BTreeSet<UserId>>,
    /// Every message written, and whether it is committed.
    messages: HashMap<(ChatId, Seq), (StoredMessage, bool)>,
    /// The versions of a Text that committed edits and deletes rewrote it to
    /// (its current state, which sync and history pages carry), oldest first.
    rewritten: HashMap<(ChatId, Seq), Vec<StoredMessage>>,
    /// Dedupe keys written so far.
    keys: HashMap<(ChatId, UserId, ClientMsgId), Seq>,
    /// One receiver per membership change asked for.
    replies: Vec<Receiver<Result<(), MembershipError>>>,
    /// The sending side of each, by ticket (the driver's map; ticket = index).
    reply_to: Vec<crossbeam_channel::Sender<Result<(), MembershipError>>>,
    decoder: FrameDecoder,
}

impl Seam {
    /// A frame with `request_id` reached the client: if it answers the Sync this check is armed
    /// for, the check starts here.
    fn answered(&mut self, request_id: u64) {
        if let Seam::Armed { request_id: r, next } = self
            && *r == request_id
        {
            *self = Seam::On {
                request_id,
                next: std::mem::take(next),
                done: false,
            };
        }
    }
}

impl Harness {
    /// The live clients whose core has a sync in progress for them.
    fn syncing(&self) -> Vec<usize> {
        self.live()
            .into_iter()
            .filter(|&k| {
                self.place(k)
                    .is_some_and(|(core, conn)| self.cores.get(core).is_some_and(|c| c.is_syncing(conn)))
            })
            .collect()
    }

    pub(super) fn new() -> Self {
        let t0 = Instant::now();
        let store = Arc::new(MemoryStore::new());
        let cores = (0..CORES)
            .map(|i| {
                let config = CoreConfig {
                    core: CoreId(i),
                    cores: CORES,
                    heartbeat_timeout: HEARTBEAT_TIMEOUT,
                    presence_grace: PRESENCE_GRACE,
                    limits: Limits::with_max_frame(MAX_FRAME),
                    max_connections: MAX_CONNECTIONS,
                    send_rate: SEND_RATE,
                    max_sessions_per_user: crate::core::DEFAULT_MAX_SESSIONS_PER_USER,
                    edit_window: crate::core::DEFAULT_EDIT_WINDOW,
                    delete_window: crate::core::DEFAULT_DELETE_WINDOW,
                };
                Core::new(config, store.clone(), t0, UNIX_MS_AT_START)
            })
            .collect();
        let chats = initial_chats()
            .into_iter()
            .map(|(id, chat)| (id, ChatModel { chat, next_seq: 1 }))
            .collect();
        Self {
            reached: Reached::default(),
            drained_bytes: 0,
            drained_pages: 0,
            t0,
            now: t0,
            cores,
            store,
            clients: Vec::new(),
            conns: (0..CORES).map(|_| HashMap::new()).collect(),
            pending: Vec::new(),
            queues: (0..CORES).map(|_| VecDeque::new()).collect(),
            reads: (0..CORES).map(|_| VecDeque::new()).collect(),
            resumed: Vec::new(),
            after_drain: HashSet::new(),
            writes: VecDeque::new(),
            chats,
            members_at: HashMap::new(),
            messages: HashMap::new(),
            rewritten: HashMap::new(),
            keys: HashMap::new(),
            replies: Vec::new(),
            reply_to: Vec::new(),
            decoder: FrameDecoder::new(Limits::with_max_frame(MAX_FRAME)),
        }
    }

    fn core_mut(&mut self, core: usize) -> &mut Core {
        match self.cores.get_mut(core) {
            Some(c) => c,
            None => panic!("no core {core}"),
        }
    }

    fn client(&self, k: usize) -> &Client {
        match self.clients.get(k) {
            Some(c) => c,
            None => panic!("no client {k}"),
        }
    }

    fn client_mut(&mut self, k: usize) -> &mut Client {
        match self.clients.get_mut(k) {
            Some(c) => c,
            None => panic!("no client {k}"),
        }
    }

    /// The clients currently on a core, in the order they were created.
    fn live(&self) -> Vec<usize> {
        (0..self.clients.len())
            .filter(|&k| {
                self.clients
                    .get(k)
                    .is_some_and(|c| matches!(c.place, Place::On(..)))
            })
            .collect()
    }

    fn pick(&self, conn: u8) -> Option<usize> {
        let live = self.live();
        live.get(usize::from(conn) % live.len().max(1)).copied()
    }

    fn place(&self, k: usize) -> Option<(usize, ConnId)> {
        match self.clients.get(k)?.place {
            Place::On(core, conn) => Some((core, conn)),
            _ => None,
        }
    }

    /// Applies one operation, then ends the loop turn of both cores (as the runtime does after
    /// every turn).
    pub(super) fn apply(&mut self, op: &Op) {
        match op {
            Op::Accept { core } => self.accept(usize::from(*core) % CORES),
            Op::Input { conn, input } => {
                if let Some(k) = self.pick(*conn) {
                    self.arrive(k, input);
                    self.feed(k);
                }
            }
            Op::Arrive { conn, input } => {
                if let Some(k) = self.pick(*conn) {
                    self.arrive(k, input);
                }
            }
            Op::Resume { conn } => {
                if let Some(k) = self.pick(*conn) {
                    self.feed(k);
                }
            }
            Op::Auth { pending, result } => {
                if !self.pending.is_empty() {
                    let (core, conn, k) = self.pending.remove(usize::from(*pending) % self.pending.len());
                    let result = auth_result(*result);
                    if let AuthResult::Valid(user, device) = result {
                        self.client_mut(k).valid = Some((user, device));
                    }
                    let now = self.now;
                    self.core_mut(core).handle_auth(conn, result, now);
                    self.drain(core, Cause::Auth(k));
                }
            }
            Op::Advance { ms } => {
                self.now += Duration::from_millis(u64::from(*ms));
                self.timeouts();
            }
            Op::PeerClosed { conn } => {
                if let Some(k) = self.pick(*conn) {
                    self.closed(k);
                }
            }
            Op::Reap => {
                for k in self.live() {
                    if self.client(k).close_emitted {
                        self.closed(k);
                    }
                }
            }
            Op::Deliver { core } => {
                // `core % CORES` first; odd `core / CORES`: its reads before its queue.
                let first = usize::from(*core) % CORES;
                let reads_first = (usize::from(*core) / CORES) % 2 == 1;
                if let Some(core) = (0..CORES)
                    .map(|i| (first + i) % CORES)
                    .find(|&c| !self.queues[c].is_empty() || !self.reads[c].is_empty())
                {
                    if self.queues[core].is_empty() || (reads_first && !self.reads[core].is_empty()) {
                        self.deliver_read(core);
                    } else {
                        self.deliver(core);
                    }
                }
            }
            Op::CloseDevice { user, device } => {
                self.close_device(user_id(*user), device_id(user_id(*user), *device))
            }
            Op::Shutdown { core } => {
                let core = usize::from(*core) % CORES;
                self.core_mut(core).handle_shutdown();
                self.drain(core, Cause::Shutdown);
                for k in self.live() {
                    let c = self.client(k);
                    if matches!(c.place, Place::On(on, _) if on == core) {
                        assert!(c.close_emitted, "shutdown left client {k} open");
                    }
                }
            }
            Op::Commit { count } => {
                let n = match self.writes.len() {
                    0 => 0,
                    len if *count == u8::MAX => len,
                    len => usize::from(*count) % len + 1,
                };
                self.commit(n);
            }
            Op::Membership {
                chat,
                actor,
                user,
                add,
            } => {
                let chat = ChatId(u64::from(*chat) % CHAT_IDS + 1);
                let (reply, receiver) = crossbeam_channel::bounded(1);
                self.replies.push(receiver);
                let ticket = ReplyTicket(self.reply_to.len() as u64);
                self.reply_to.push(reply);
                let change = MembershipChange {
                    chat,
                    actor: user_id(*actor),
                    user: user_id(*user),
                    add: *add,
                };
                self.queues[chat.owner_core(CORES).0].push_back(Command::Membership(change, ticket));
            }
            Op::StoreFault { on } => self.store.set_failing(*on),
            Op::Overflow { conn } => {
                if let Some(k) = self.pick(*conn)
                    && let Some((core, conn)) = self.place(k)
                {
                    self.core_mut(core).handle_outbound_overflow(conn);
                    self.drain(core, Cause::Client(k));
                }
            }
            Op::Drained { conn } => {
                if let Some(k) = self.pick(*conn) {
                    self.drained(k);
                }
            }
        }
        self.end_turn();
    }

    /// Ends the turn on every core, and keeps turning a core while it has
    /// work left for the next turn (the driver polls with a zero timeout then),
    /// up to [`TURNS_PER_OP`] turns.
    fn end_turn(&mut self) {
        for core in 0..CORES {
            for _ in 0..TURNS_PER_OP {
                self.core_mut(core).handle_end_of_turn();
                self.drain(core, Cause::EndOfTurn);
                if !self.core_mut(core).work_left() {
                    break;
                }
            }
        }
    }

    fn accept(&mut self, core: usize) {
        let now = self.now;
        match self.core_mut(core).handle_accept(now) {
            Some(conn) => {
                let k = self.clients.len();
                let previous = self.conns[core].insert(conn, k);
                assert_eq!(
                    previous, None,
                    "core {core} accepted {conn:?}, the id of live client {previous:?}"
                );
                self.clients.push(Client {
                    place: Place::On(core, conn),
                    buf: BytesMut::new(),
                    tail: Vec::new(),
                    valid: None,
                    welcomed: false,
                    close_emitted: false,
                    accepted_at: now,
                    last_heard: now,
                    sends: Vec::new(),
                    unanswered: Vec::new(),
                    pushed: HashMap::new(),
                    hello_sync_first: false,
                    hello_conversation: false,
                    held: false,
                    syncs: HashSet::new(),
                    seam: Seam::Off,
                });
                self.drain(core, Cause::Quiet);
            }
            None => {
                let held = self.conns[core].len();
                assert!(
                    held >= MAX_CONNECTIONS,
                    "core {core} refused a connection while holding {held}"
                );
                let refusal = self.core_mut(core).refusal();
                match Frame::decode(&refusal, &Limits::default()).map(|f| f.body) {
                    Ok(Body::Error(e)) => assert_eq!(e.code, ErrorCode::TooManyConnections.as_u16()),
                    other => panic!("the refusal is not a TooManyConnections error: {other:?}"),
                }
            }
        }
    }

    fn arrive(&mut self, k: usize, input: &Input) {
        let client = self.client_mut(k);
        let bytes = input.bytes(&mut client.tail);
        if client.buf.len() + bytes.len() <= MAX_BUFFERED {
            client.buf.extend_from_slice(&bytes);
        }
    }

    /// `handle_input` for client `k` with what its buffer holds.
    fn feed(&mut self, k: usize) {
        let Some((core, conn)) = self.place(k) else {
            return;
        };
        let now = self.now;
        let mut buf = std::mem::take(&mut self.client_mut(k).buf);
        let before = buf.clone();
        let was_welcomed = self.client(k).welcomed && !self.client(k).close_emitted;
        let frames_before = self.cores[core].stats().frames_in;
        let status = self.core_mut(core).handle_input(conn, &mut buf, now);
        let taken = self.cores[core].stats().frames_in - frames_before;
        assert!(
            taken <= FRAMES_PER_SESSION_PER_TURN as u64,
            "handle_input took {taken} frames, the budget is {FRAMES_PER_SESSION_PER_TURN}"
        );
        if taken > 0 {
            self.client_mut(k).last_heard = now;
        }
        self.record_frames(k, &before, taken, was_welcomed);
        let sent = self.drain(core, Cause::Client(k));
        // A Sync that was taken but never answered checks nothing once its session has no
        // sync in progress (it closed first); one still in progress is answered in a
        // later turn (core/sync.rs reads within a per-turn budget).
        let in_progress = self
            .place(k)
            .is_some_and(|(core, conn)| self.core_mut(core).is_syncing(conn));
        let c = self.client_mut(k);
        if matches!(c.seam, Seam::Armed { .. } | Seam::Blind) && !in_progress {
            c.seam = Seam::Off;
            c.pushed.clear();
        }
        assert!(
            sent <= FRAMES_PER_SESSION_PER_TURN,
            "handle_input queued {sent} frames, the budget is {FRAMES_PER_SESSION_PER_TURN}"
        );
        assert!(
            self.drained_pages as u64 <= taken,
            "handle_input wrote {} sync pages for {taken} frames (one page per Sync and call)",
            self.drained_pages
        );
        let takes_frames = matches!(
            self.cores[core].phase(conn),
            Some(Phase::AwaitingHello | Phase::Active { .. })
        ) && !self.cores[core].is_reading(conn);
        let actionable = !matches!(self.decoder.split(&mut buf.clone()), Ok(None));
        match status {
            InputStatus::Budget => {
                // Either budget: the frames, or the bytes of answers one call may queue.
                assert!(
                    taken == FRAMES_PER_SESSION_PER_TURN as u64 || self.drained_bytes >= REPLY_BYTES_PER_CALL,
                    "Budget before a budget was spent: {taken} frames taken, {} bytes answered",
                    self.drained_bytes
                );
                assert!(actionable, "Budget with no complete frame left");
            }
            InputStatus::Paused => assert!(!takes_frames, "Paused while the session takes frames"),
            InputStatus::Drained => assert!(
                !(takes_frames && actionable),
                "Drained, but the buffer starts with a frame the decoder acts on at once: {:?}",
                buf.get(..buf.len().min(8))
            ),
        }
        self.client_mut(k).buf = buf;
    }

    /// Records what the first `taken` frames of `bytes` ask for: a Hello's `sync_first` (before
    /// the Welcome); the well-formed Sends, and the Syncs, which arm the seam check (after it).
    fn record_frames(&mut self, k: usize, bytes: &BytesMut, taken: u64, welcomed: bool) {
        let limits = Limits::with_max_frame(MAX_FRAME);
        let mut rest = bytes.clone();
        let mut syncs: Vec<(u64, Vec<natter_wire::Cursor>)> = Vec::new();
        for _ in 0..taken {
            let Ok(Some(frame)) = self.decoder.split(&mut rest) else {
                break;
            };
            let Ok(Frame { request_id, body }) = Frame::decode(&frame, &limits) else {
                continue;
            };
            let client = self.client_mut(k);
            match body {
                Body::Hello(hello) if !welcomed => {
                    client.hello_sync_first = hello.sync_first;
                    client.hello_conversation = hello.conversation;
                }
                Body::Send(Send {
                    chat_id,
                    client_msg_id,
                    ..
                })
                | Body::Edit(Edit {
                    chat_id,
                    client_msg_id,
                    ..
                })
                | Body::Delete(Delete {
                    chat_id,
                    client_msg_id,
                    ..
                }) if welcomed => {
                    client
                        .sends
                        .push((request_id, ChatId(chat_id), ClientMsgId(client_msg_id)));
                    client.unanswered.push(request_id);
                }
                Body::Sync(sync) if welcomed => syncs.push((request_id, sync.cursors)),
                _ => {}
            }
        }
        let Some((request_id, cursors)) = syncs.pop() else {
            return;
        };
        let ambiguous = syncs.iter().any(|(r, _)| *r == request_id);
        let next = self.sync_plan(k, &cursors);
        let client = self.client_mut(k);
        client.held = false;
        client.syncs.insert(request_id);
        client.syncs.extend(syncs.iter().map(|(r, _)| *r));
        client.pushed.clear();
        client.seam = if ambiguous {
            Seam::Blind
        } else {
            Seam::Armed { request_id, next }
        };
    }

    /// What a Sync with `cursors` from client `k` must stream, from the committed state (the
    /// core plans it from the store within the same call): per chat of the user, the seq it
    /// starts at — one past the cursor sent (the last one sent for a chat wins), else past the
    /// device's stored cursor, else past the head minus [`NEW_DEVICE_BACKLOG`]; never past the
    /// head + 1. Chats whose membership of the user has a change written but not committed are
    /// left out (when the change lands is not the seam's business).
    fn sync_plan(&self, k: usize, cursors: &[natter_wire::Cursor]) -> HashMap<ChatId, u64> {
        let Some((user, device)) = self.client(k).valid else {
            return HashMap::new();
        };
        let mut given = HashMap::new();
        for c in cursors {
            given.insert(ChatId(c.chat_id), c.seq);
        }
        let mut next = HashMap::new();
        for chat in self.store.chats_of(user) {
            let settled = self
                .chats
                .get(&chat)
                .is_some_and(|m| m.chat.members.contains(&user));
            if !settled {
                continue;
            }
            let head = self.store.head(chat).0;
            let after = match given.get(&chat) {
                Some(&seq) => seq,
                None => match self.store.cursor(device, chat) {
                    Some(seq) => seq.0,
                    None => head.saturating_sub(NEW_DEVICE_BACKLOG),
                },
            };
            next.insert(chat, after.min(head) + 1);
        }
        next
    }

    /// The driver reports that client `k`'s outbound buffer drained.
    fn drained(&mut self, k: usize) {
        let Some((core, conn)) = self.place(k) else {
            return;
        };
        let now = self.now;
        self.core_mut(core).handle_drained(conn, now);
        self.drain(core, Cause::Drained(k));
        let mut paged = self.drained_bytes > 0;
        // The page itself goes out at the end of the turn, within the sync's
        // read budget (core/sync.rs), as the driver ends every turn.
        self.core_mut(core).handle_end_of_turn();
        self.drain(core, Cause::EndOfTurn);
        paged |= self.drained_pages > 0;
        if paged {
            self.reached.drained_pages += 1;
        } else if self.core_mut(core).is_syncing(conn) {
            // The page is read off the loop: it goes out with the answer.
            self.after_drain.insert(k);
        }
    }

    /// A membership change of `user` in `chat` was written or committed: the seam check of the
    /// user's sessions leaves that chat alone from now on (pushes stop or start at a point the
    /// seam does not define).
    fn forget_chat(&mut self, chat: ChatId, user: UserId) {
        for c in &mut self.clients {
            if c.valid.is_some_and(|(u, _)| u == user)
                && let Seam::Armed { next, .. } | Seam::On { next, .. } = &mut c.seam
            {
                next.remove(&chat);
            }
        }
    }

    fn timeouts(&mut self) {
        let now = self.now;
        for core in 0..CORES {
            self.core_mut(core).handle_timeout(now);
            self.drain(core, Cause::Timeout);
        }
    }

    /// The driver calls `handle_closed` for client `k`.
    fn closed(&mut self, k: usize) {
        let Some((core, conn)) = self.place(k) else {
            return;
        };
        self.core_mut(core).handle_closed(conn);
        self.conns[core].remove(&conn);
        self.pending.retain(|&(c, id, _)| !(c == core && id == conn));
        self.client_mut(k).place = Place::Gone;
        self.drain(core, Cause::Quiet);
    }

    fn close_device(&mut self, user: UserId, device: DeviceId) {
        let home = user.home_core(CORES).0;
        self.core_mut(home).handle_close_device(user, device);
        self.drain(home, Cause::CloseDevice(user, device));
        for k in self.live() {
            let c = self.client(k);
            if matches!(c.place, Place::On(core, _) if core == home)
                && c.welcomed
                && c.valid == Some((user, device))
            {
                assert!(
                    c.close_emitted,
                    "close_device left client {k} ({user}/{device}) open"
                );
            }
        }
        for other in (0..CORES).filter(|&c| c != home) {
            self.core_mut(other).handle_close_device(user, device);
            self.drain(other, Cause::Quiet);
        }
    }

    /// Core `core` takes the oldest command of its queue.
    fn deliver(&mut self, core: usize) {
        let Some(command) = self.queues[core].pop_front() else {
            return;
        };
        let now = self.now;
        match command {
            Command::Adopt(detached, k) => {
                let conn = self.core_mut(core).handle_adopt(detached, now);
                let previous = self.conns[core].insert(conn, k);
                assert_eq!(
                    previous, None,
                    "core {core} adopted as {conn:?}, the id of live client {previous:?}"
                );
                self.client_mut(k).place = Place::On(core, conn);
                self.drain(core, Cause::Adopt(k));
            }
            Command::Core(msgs) => {
                self.core_mut(core).handle_core_msgs(msgs, now);
                self.drain(core, Cause::Mesh);
            }
            Command::Committed(completions) => {
                self.core_mut(core).handle_committed(completions, now);
                self.drain(core, Cause::Mesh);
            }
            Command::Membership(change, ticket) => {
                self.core_mut(core).handle_membership(change, ticket, now);
                self.drain(core, Cause::Membership);
            }
        }
    }

    /// Core `core` gets the answer of its oldest read; a session that waited
    /// for it takes its buffered frames again (as the driver does on `ResumeInput`).
    fn deliver_read(&mut self, core: usize) {
        let Some((ticket, k, pending)) = self.reads[core].pop_front() else {
            return;
        };
        let answer = match pending {
            PendingRead::Answered(answer) => answer,
            PendingRead::Asked(request) => request.run(&*self.store),
        };
        let now = self.now;
        self.core_mut(core).handle_read(ticket, answer, now);
        self.resumed.clear();
        self.drain(core, Cause::Read(k));
        if self.drained_pages > 0 && self.after_drain.remove(&k) {
            self.reached.drained_pages += 1;
        }
        for k in std::mem::take(&mut self.resumed) {
            self.feed(k);
        }
    }

    /// The storage writer commits its oldest `n` writes and queues the completions, in order,
    /// one command per origin core.
    fn commit(&mut self, n: usize) {
        let mut completions: Vec<Vec<Completion>> = (0..CORES).map(|_| Vec::new()).collect();
        for _ in 0..n {
            let Some(write) = self.writes.pop_front() else {
                break;
            };
            let origin = write.origin().0;
            let completion = match write {
                WriteOp::LastSeen {
                    user, last_seen_ms, ..
                } => {
                    self.store.commit_last_seen(user, last_seen_ms);
                    continue;
                }
                WriteOp::Cursor {
                    device, chat, seq, ..
                } => {
                    self.store.commit_cursor(device, chat, seq);
                    continue;
                }
                // Receipts are not modelled: they ride the commit, nothing waits for them.
                WriteOp::Receipt { .. } => continue,
                WriteOp::Amend { msg, rewrites, .. } => {
                    self.reached.amends += 1;
                    for rewritten in &rewrites {
                        self.store.commit_message(rewritten);
                        self.rewritten
                            .entry((rewritten.chat, rewritten.seq))
                            .or_default()
                            .push(rewritten.clone());
                    }
                    self.store.commit_message(&msg);
                    let key = (msg.chat, msg.seq);
                    if let Some(entry) = self.messages.get_mut(&key) {
                        entry.1 = true;
                    }
                    Completion::Message {
                        chat: msg.chat,
                        seq: msg.seq,
                    }
                }
                WriteOp::Message { msg, .. } => {
                    self.store.commit_message(&msg);
                    let key = (msg.chat, msg.seq);
                    if let Some(entry) = self.messages.get_mut(&key) {
                        entry.1 = true;
                    }
                    Completion::Message {
                        chat: msg.chat,
                        seq: msg.seq,
                    }
                }
                WriteOp::Membership {
                    chat,
                    user,
                    add,
                    ticket,
                    new_owner,
                    ..
                } => {
                    self.store.commit_membership(chat, user, add, new_owner);
                    self.forget_chat(chat, user);
                    Completion::Membership { ticket }
                }
            };
            if let Some(list) = completions.get_mut(origin) {
                list.push(completion);
            }
        }
        for (core, list) in completions.into_iter().enumerate() {
            if !list.is_empty() {
                self.queues[core].push_back(Command::Committed(list));
            }
        }
    }

    fn client_of(&self, core: usize, conn: ConnId, action: &str) -> usize {
        match self.conns.get(core).and_then(|m| m.get(&conn)) {
            Some(&k) => k,
            None => panic!("core {core} emitted {action} for {conn:?}, which it does not hold"),
        }
    }

    /// Whether `cause` may produce a Transmit or Close for client `k`.
    fn concerns(&self, cause: Cause, k: usize) -> bool {
        match cause {
            Cause::Client(c) | Cause::Drained(c) | Cause::Auth(c) | Cause::Adopt(c) | Cause::Read(c) => {
                c == k
            }
            Cause::Timeout | Cause::Shutdown | Cause::Mesh => true,
            Cause::CloseDevice(user, device) => self
                .clients
                .get(k)
                .is_some_and(|c| c.welcomed && c.valid == Some((user, device))),
            Cause::Membership | Cause::EndOfTurn | Cause::Quiet => false,
        }
    }

    /// Drains core `core`'s actions, carrying them out and checking each; returns how many
    /// Transmits there were, sync pages (which go with a SyncDone or Error) not counted.
    fn drain(&mut self, core: usize, cause: Cause) -> usize {
        let mut must_close: Vec<usize> = Vec::new();
        let mut sent = 0;
        self.drained_bytes = 0;
        self.drained_pages = 0;
        while let Some(action) = self.core_mut(core).poll_action() {
            match action {
                Action::Transmit { conn, frame: bytes } => {
                    let k = self.client_of(core, conn, "Transmit");
                    if matches!(cause, Cause::Client(c) | Cause::Drained(c) if c == k) {
                        self.drained_bytes += bytes.len();
                    }
                    // A sync page (Messages only) is part of the answer to a Sync, which also
                    // gets its SyncDone or Error: it does not count as a frame's answer.
                    let mut page = true;
                    // One Transmit may hold several frames (a sync page): split it as a client would.
                    let mut rest = BytesMut::from(&bytes[..]);
                    let splitter = FrameDecoder::new(Limits::default());
                    loop {
                        let raw = match splitter.split(&mut rest) {
                            Ok(Some(raw)) => raw,
                            Ok(None) => break,
                            Err(err) => panic!(
                                "core {core} sent client {k} bytes that do not split into frames: {err}"
                            ),
                        };
                        let frame = match Frame::decode(&raw, &Limits::default()) {
                            Ok(frame) => frame,
                            Err(err) => {
                                panic!("core {core} sent client {k} a frame that does not decode: {err}")
                            }
                        };
                        page &= matches!(frame.body, Body::Message(_));
                        if matches!(frame.body, Body::HistoryPage(_)) {
                            assert!(
                                raw.len() <= MAX_FRAME,
                                "a HistoryPage of {} bytes, over the frame limit {MAX_FRAME}",
                                raw.len()
                            );
                        }
                        // A presence change reaches the friends' sessions whatever event caused
                        // it; so do a member's Typing and a Receipt (an Ack) when the chat's owner
                        // core is the core the sender is on: they need no commit, so they go out
                        // in the call that caused them.
                        let presence =
                            matches!(frame.body, Body::Presence(_) | Body::Typing(_) | Body::Receipt(_))
                                && !matches!(cause, Cause::Quiet | Cause::EndOfTurn | Cause::Membership);
                        // Sync work runs at the end of a turn within its read budget
                        // (core/sync.rs): pages (the Sync's request id), SyncDone and
                        // an Error answering a failed sync may go out then.
                        let sync_answer = cause == Cause::EndOfTurn
                            && matches!(frame.body, Body::Message(_) | Body::SyncDone(_) | Body::Error(_));
                        assert!(
                            presence || sync_answer || self.concerns(cause, k),
                            "{cause:?} produced a Transmit of {} for client {k}",
                            frame.body.name()
                        );
                        self.transmitted(core, k, frame, cause, &mut must_close);
                    }
                    assert!(rest.is_empty(), "core {core} sent client {k} a partial frame");
                    sent += usize::from(!page);
                    self.drained_pages += usize::from(page);
                }
                Action::Authenticate { conn, token: _ } => {
                    let k = self.client_of(core, conn, "Authenticate");
                    assert!(
                        matches!(cause, Cause::Client(c) | Cause::Adopt(c) if c == k),
                        "{cause:?} produced an Authenticate for client {k}"
                    );
                    let pending = self.pending.iter().any(|&(c, id, _)| c == core && id == conn);
                    assert!(
                        !pending,
                        "a second Authenticate for client {k} before the first was answered"
                    );
                    let c = self.client_mut(k);
                    assert!(!c.close_emitted, "Authenticate for client {k} after its Close");
                    assert!(
                        !c.welcomed,
                        "Authenticate for client {k}, which was already welcomed"
                    );
                    c.valid = None;
                    self.pending.push((core, conn, k));
                }
                Action::Migrate { conn, to } => {
                    let k = self.client_of(core, conn, "Migrate");
                    assert_eq!(
                        cause,
                        Cause::Auth(k),
                        "{cause:?} produced a Migrate for client {k}"
                    );
                    let c = self.client(k);
                    let Some((user, _)) = c.valid else {
                        panic!("Migrate of client {k} without a Valid auth result");
                    };
                    assert!(
                        !c.close_emitted && !c.welcomed,
                        "Migrate of a closed or welcomed client {k}"
                    );
                    assert_eq!(
                        user.home_core(CORES),
                        to,
                        "client {k} migrates away from its user's home core"
                    );
                    assert_ne!(to, CoreId(core), "client {k} migrates to the core it is on");
                    let Some(detached) = self.core_mut(core).detach(conn) else {
                        panic!("Migrate of {conn:?}, which detach does not know");
                    };
                    self.conns[core].remove(&conn);
                    self.client_mut(k).place = Place::InFlight;
                    self.queues[to.0].push_back(Command::Adopt(detached, k));
                }
                Action::Close { conn } => {
                    let k = self.client_of(core, conn, "Close");
                    assert!(
                        self.concerns(cause, k),
                        "{cause:?} produced a Close for client {k}"
                    );
                    let c = self.client_mut(k);
                    assert!(!c.close_emitted, "a second Close for client {k}");
                    c.close_emitted = true;
                    must_close.retain(|&x| x != k);
                }
                Action::ToCore { core: to, msgs } => {
                    assert_eq!(cause, Cause::EndOfTurn, "{cause:?} produced a ToCore");
                    assert_ne!(to, CoreId(core), "core {core} queued work for itself");
                    assert!(!msgs.is_empty(), "an empty ToCore");
                    match self.queues.get_mut(to.0) {
                        Some(queue) => queue.push_back(Command::Core(msgs)),
                        None => panic!("ToCore for core {to}, which does not exist"),
                    }
                }
                Action::Write(write) => {
                    if let WriteOp::Cursor { device, chat, .. } = &write {
                        let Cause::Client(k) = cause else {
                            panic!("{cause:?} stored a cursor");
                        };
                        let Some((user, dev)) = self.client(k).valid else {
                            panic!("client {k} stored a cursor before it authenticated");
                        };
                        assert_eq!(*device, dev, "client {k} stored the cursor of another device");
                        assert!(
                            self.store.is_member(*chat, user),
                            "client {k} (user {user}) stored a cursor of chat {chat}, not a member"
                        );
                    }
                    let last_seen = matches!(write, WriteOp::LastSeen { .. })
                        && matches!(cause, Cause::Timeout | Cause::Shutdown);
                    assert!(
                        last_seen || matches!(cause, Cause::Client(_) | Cause::Mesh | Cause::Membership),
                        "{cause:?} produced a Write"
                    );
                    self.written(core, write);
                }
                Action::Read {
                    ticket,
                    conn,
                    request,
                } => {
                    let k = self.client_of(core, conn, "Read");
                    // A sync's plan is read when asked (at the end of the turn that took the
                    // Sync): the seam check's model of the plan is taken from the committed state
                    // when the Sync is taken, and nothing commits between the two. Pages and
                    // History pages are read when asked (even tickets) or when delivered (odd),
                    // so commits land on both sides of their reads.
                    let plan = matches!(request, ReadRequest::SyncPlan { .. });
                    let pending = if plan || ticket.0 % 2 == 0 {
                        PendingRead::Answered(request.run(&*self.store))
                    } else {
                        PendingRead::Asked(request)
                    };
                    self.reads[core].push_back((ticket, k, pending));
                }
                Action::ResumeInput { conn } => {
                    let k = self.client_of(core, conn, "ResumeInput");
                    assert!(
                        matches!(cause, Cause::Read(c) if c == k),
                        "{cause:?} resumed client {k}'s input"
                    );
                    self.resumed.push(k);
                }
                Action::MembershipReply { reply, result } => {
                    match &result {
                        Ok(()) => assert_eq!(
                            cause,
                            Cause::Mesh,
                            "a membership change succeeded before its commit"
                        ),
                        Err(_) => assert_eq!(cause, Cause::Membership, "a refusal outside handle_membership"),
                    }
                    let to = usize::try_from(reply.0).ok().and_then(|i| self.reply_to.get(i));
                    assert!(
                        to.is_some_and(|to| to.try_send(result).is_ok()),
                        "a second reply to one membership change"
                    );
                }
            }
        }
        assert!(
            must_close.is_empty(),
            "Errors that close the connection without a Close: clients {must_close:?}"
        );
        sent
    }

    /// Checks a write the owner core hands to the writer against the model, then queues it.
    fn written(&mut self, core: usize, write: WriteOp) {
        assert_eq!(
            write.origin(),
            CoreId(core),
            "a write whose completion goes to another core"
        );
        match &write {
            WriteOp::Cursor { chat, .. } => {
                assert!(
                    self.chats.contains_key(chat),
                    "a cursor of chat {chat}, which does not exist"
                );
            }
            WriteOp::LastSeen {
                user, last_seen_ms, ..
            } => {
                assert_eq!(
                    user.home_core(CORES),
                    CoreId(core),
                    "core {core} recorded the last-seen time of user {user}, homed elsewhere"
                );
                let now_ms = UNIX_MS_AT_START + self.now.duration_since(self.t0).as_millis() as u64;
                assert!(
                    (UNIX_MS_AT_START..=now_ms).contains(last_seen_ms),
                    "user {user} last seen at {last_seen_ms}, outside the run"
                );
            }
            WriteOp::Receipt { chat, .. } => {
                assert_eq!(
                    chat.owner_core(CORES),
                    CoreId(core),
                    "core {core} wrote a receipt of chat {chat} it does not own"
                );
            }
            WriteOp::Amend { msg, rewrites, .. } => {
                assert_eq!(
                    msg.chat.owner_core(CORES),
                    CoreId(core),
                    "core {core} amended chat {} it does not own",
                    msg.chat
                );
                let Some(chat) = self.chats.get_mut(&msg.chat) else {
                    panic!(
                        "an edit or delete written to chat {}, which does not exist",
                        msg.chat
                    );
                };
                assert_eq!(
                    msg.seq,
                    Seq(chat.next_seq),
                    "chat {}: amend seq is not the next one",
                    msg.chat
                );
                chat.next_seq += 1;
                assert!(
                    chat.chat.members.contains(&msg.sender),
                    "chat {}: user {} is not a member but its edit or delete was written",
                    msg.chat,
                    msg.sender
                );
                assert!(
                    rewrites.iter().all(|r| r.chat == msg.chat && r.seq < msg.seq),
                    "an amend rewrote a record of another chat or a later seq"
                );
                let key = (msg.chat, msg.sender, msg.client_msg_id);
                let previous = self.keys.insert(key, msg.seq);
                assert_eq!(previous, None, "{key:?} written twice (dedupe failed)");
                self.members_at
                    .insert((msg.chat, msg.seq), chat.chat.members.clone());
                self.messages.insert((msg.chat, msg.seq), (msg.clone(), false));
            }
            WriteOp::Message { msg, .. } => {
                assert_eq!(
                    msg.chat.owner_core(CORES),
                    CoreId(core),
                    "core {core} wrote to chat {} it does not own",
                    msg.chat
                );
                let Some(chat) = self.chats.get_mut(&msg.chat) else {
                    panic!("a message written to chat {}, which does not exist", msg.chat);
                };
                assert_eq!(
                    msg.seq,
                    Seq(chat.next_seq),
                    "chat {}: seq {} is not the next one",
                    msg.chat,
                    msg.seq
                );
                chat.next_seq += 1;
                assert!(
                    chat.chat.members.contains(&msg.sender),
                    "chat {}: user {} is not a member but its message was written",
                    msg.chat,
                    msg.sender
                );
                assert!(!msg.text.is_empty(), "an empty message was written");
                let key = (msg.chat, msg.sender, msg.client_msg_id);
                let previous = self.keys.insert(key, msg.seq);
                assert_eq!(previous, None, "{key:?} written twice (dedupe failed)");
                self.members_at
                    .insert((msg.chat, msg.seq), chat.chat.members.clone());
                self.messages.insert((msg.chat, msg.seq), (msg.clone(), false));
            }
            WriteOp::Membership {
                chat,
                user,
                add,
                new_owner,
                ..
            } => {
                assert_eq!(
                    chat.owner_core(CORES),
                    CoreId(core),
                    "core {core} changed chat {chat} it does not own"
                );
                self.forget_chat(*chat, *user);
                let Some(model) = self.chats.get_mut(chat) else {
                    panic!("a membership change of chat {chat}, which does not exist");
                };
                assert_eq!(
                    model.chat.kind,
                    ChatKind::Group,
                    "chat {chat} is direct; its members never change"
                );
                if *add {
                    assert!(
                        model.chat.members.insert(*user),
                        "user {user} added to chat {chat} twice"
                    );
                    assert!(
                        super::store::friends(model.chat.owner, *user),
                        "user {user} is not the owner's friend"
                    );
                } else {
                    assert!(
                        model.chat.members.remove(user),
                        "user {user} removed from chat {chat}, not a member"
                    );
                    // An owner who leaves hands the group to a remaining member
                    // (the last one leaving leaves it ownerless); nobody else does.
                    if *user == model.chat.owner {
                        match new_owner {
                            Some(next) => {
                                assert!(
                                    model.chat.members.contains(next),
                                    "chat {chat} handed to {next}, not a member"
                                );
                                model.chat.owner = *next;
                            }
                            None => assert!(
                                model.chat.members.is_empty(),
                                "chat {chat}'s owner left without handing it on"
                            ),
                        }
                    } else {
                        assert_eq!(
                            *new_owner, None,
                            "chat {chat} changed owner without its owner leaving"
                        );
                    }
                }
            }
        }
        self.writes.push_back(write);
    }

    fn transmitted(
        &mut self,
        core: usize,
        k: usize,
        frame: Frame,
        cause: Cause,
        must_close: &mut Vec<usize>,
    ) {
        let (now, t0) = (self.now, self.t0);
        let hello_deadline = HELLO_TIMEOUT.min(HEARTBEAT_TIMEOUT);
        let name = frame.body.name();
        let request_id = frame.request_id;
        {
            let c = self.client(k);
            assert!(!c.close_emitted, "{name} sent to client {k} after its Close");
            if !matches!(frame.body, Body::Error(_) | Body::Welcome(_)) {
                assert!(c.welcomed, "{name} sent to client {k} before its Welcome");
            }
        }
        match frame.body {
            Body::Welcome(w) => {
                let c = self.client_mut(k);
                assert!(!c.welcomed, "a second Welcome for client {k}");
                let Some((user, device)) = c.valid else {
                    panic!("Welcome for client {k} without a Valid auth result");
                };
                assert_eq!(
                    (w.user_id, w.device_id),
                    (user.0, device.0),
                    "Welcome names another user/device"
                );
                assert_eq!(
                    user.home_core(CORES),
                    CoreId(core),
                    "Welcome from a core that is not the user's home"
                );
                assert_eq!(w.protocol_version, PROTOCOL_VERSION);
                assert_eq!(
                    u128::from(w.heartbeat_interval_ms),
                    HEARTBEAT_TIMEOUT.as_millis() / 3
                );
                let elapsed = now.duration_since(t0).as_millis() as u64;
                assert_eq!(
                    w.server_time_ms,
                    UNIX_MS_AT_START + elapsed,
                    "Welcome's server time is off"
                );
                c.welcomed = true;
                c.last_heard = now;
                c.held = c.hello_sync_first;
                let held = u64::from(c.held);
                self.reached.held_sessions += held;
            }
            Body::Error(e) => {
                let Some(code) = ErrorCode::from_u16(e.code) else {
                    panic!("client {k} was sent an unknown error code {}", e.code);
                };
                let c = self.client_mut(k);
                if !c.welcomed || code.closes_connection() {
                    must_close.push(k);
                }
                if let Some(i) = c.unanswered.iter().position(|&r| r == request_id) {
                    c.unanswered.remove(i);
                }
                // An Error with the latest Sync's id ends its check (until the next Sync).
                if let Seam::Armed { request_id: r, .. } | Seam::On { request_id: r, .. } = c.seam
                    && r == request_id
                {
                    c.seam = Seam::Off;
                }
                if cause == Cause::Timeout {
                    match code {
                        ErrorCode::NotAuthenticated => {
                            assert!(
                                now >= c.accepted_at + hello_deadline,
                                "client {k} closed before its hello deadline"
                            )
                        }
                        ErrorCode::HeartbeatTimeout => assert!(
                            now >= c.last_heard + HEARTBEAT_TIMEOUT,
                            "client {k} timed out after {:?} of silence",
                            now.duration_since(c.last_heard)
                        ),
                        other => panic!("handle_timeout sent client {k} {other:?}"),
                    }
                }
            }
            Body::SendOk(ok) => {
                let (chat, seq, cmid) = (ChatId(ok.chat_id), Seq(ok.seq), ClientMsgId(ok.client_msg_id));
                let c = self.client_mut(k);
                assert!(
                    c.sends.contains(&(request_id, chat, cmid)),
                    "SendOk for chat {chat} / {cmid} / request {request_id}, which client {k} never sent"
                );
                if let Some(i) = c.unanswered.iter().position(|&r| r == request_id) {
                    c.unanswered.remove(i);
                }
                let user = c.valid.map(|(u, _)| u);
                match self.messages.get(&(chat, seq)) {
                    Some((msg, true)) => {
                        assert_eq!(Some(msg.sender), user, "SendOk for another user's message");
                        assert_eq!(msg.client_msg_id, cmid, "SendOk for another send's seq");
                        assert_eq!(msg.server_ts_ms, ok.server_ts_ms, "SendOk with another timestamp");
                    }
                    Some((_, false)) => panic!("SendOk for chat {chat} seq {seq} before it was committed"),
                    None => panic!("SendOk for chat {chat} seq {seq}, which was never written"),
                }
            }
            Body::Message(m) => {
                let (chat, seq) = (ChatId(m.chat_id), Seq(m.seq));
                let user = self.client(k).valid.map(|(u, _)| u);
                match self.messages.get(&(chat, seq)) {
                    Some((msg, true)) => {
                        assert!(
                            self.is_a_committed_version(msg, &m),
                            "the pushed message differs from the one written: {m:?}, written {msg:?}"
                        );
                    }
                    Some((_, false)) => panic!("chat {chat} seq {seq} pushed before it was committed"),
                    None => panic!("chat {chat} seq {seq} pushed, but never written"),
                }
                let members = self.members_at.get(&(chat, seq));
                let member_then = user.is_some_and(|u| members.is_some_and(|m| m.contains(&u)));
                // A sync page (the only Messages a client's own call produces) is read from the
                // store like History: a member gets the chat's backlog, also from before it
                // joined (docs/PROTOCOL.md: the last 50 for a new device). A live push goes only
                // to those who were members when its seq was assigned.
                // Pages carry their Sync's request id (pushes 0, and so do the
                // pages of a Sync sent with request id 0); they go out when the
                // Sync is handled or at the end of a turn (core/sync.rs budget),
                // pushes only when another core's commit arrives (Mesh).
                let page = request_id != 0
                    || matches!(cause, Cause::Client(_) | Cause::Drained(_) | Cause::EndOfTurn);
                let member_now = page && user.is_some_and(|u| self.store.is_member(chat, u));
                assert!(
                    member_then || member_now,
                    "chat {chat} seq {seq} {} client {k} (user {user:?}), not a member then ({members:?}){}",
                    if page { "paged by a sync to" } else { "pushed to" },
                    if page { " nor now" } else { "" }
                );
                let c = self.client_mut(k);
                assert!(
                    !c.held,
                    "chat {chat} seq {seq} (request {request_id}) reached client {k} before its Sync \
                     (it said sync_first, or was sent Resync)"
                );
                c.seam.answered(request_id);
                // A live push while the latest Sync is armed comes after its plan was applied
                // (until then the core drops or holds every push): the seam starts there too.
                if request_id == 0
                    && let Seam::Armed { request_id: r, .. } = c.seam
                {
                    c.seam.answered(r);
                }
                // A page of an earlier Sync of this call (Armed, Blind) is superseded: not checked.
                if !matches!(c.seam, Seam::Armed { .. } | Seam::Blind) {
                    let last = c.pushed.insert(chat, seq);
                    assert!(
                        last.is_none_or(|l| l < seq),
                        "chat {chat}: seq {seq} pushed to client {k} after {last:?}"
                    );
                }
                let Seam::On {
                    request_id: r, next, ..
                } = &c.seam
                else {
                    return;
                };
                let r = *r;
                assert!(
                    request_id == 0 || request_id == r,
                    "client {k} got a Message with request id {request_id}: neither a push nor a page \
                     of its latest Sync ({r})"
                );
                let Some(n) = next.get(&chat).copied() else {
                    return;
                };
                // The session's own sends come back as SendOk, not as pushes: only those may be
                // skipped.
                assert!(
                    seq.0 >= n && (n..seq.0).all(|s| self.own(k, chat, s)),
                    "chat {chat}: client {k} got seq {seq} after its Sync {r}, expected {n} \
                     (a duplicate or a gap at the seam)"
                );
                if let Seam::On { next, .. } = &mut self.client_mut(k).seam {
                    next.insert(chat, seq.0 + 1);
                }
                self.reached.seam_messages += 1;
            }
            Body::SyncDone(done) => self.sync_done(k, request_id, &done),
            Body::Resync => {
                self.reached.resyncs += 1;
                let c = self.client_mut(k);
                c.seam = Seam::Off;
                c.held = true;
            }
            Body::HistoryPage(page) => self.history_page(k, &page),
            Body::Presence(p) => {
                let viewer = self.client(k).valid.map(|(u, _)| u);
                assert!(
                    viewer.is_some_and(|v| super::store::friends(v, UserId(p.user_id))),
                    "the presence of user {} was sent to client {k} (user {viewer:?}), not a friend",
                    p.user_id
                );
            }
            Body::Typing(t) => {
                self.conversation_only(k, name);
                let viewer = self.client(k).valid.map(|(u, _)| u.0);
                assert_ne!(
                    viewer,
                    Some(t.user_id),
                    "client {k} was shown its own user typing in chat {}",
                    t.chat_id
                );
            }
            Body::Receipt(_) | Body::ChatStates(_) => self.conversation_only(k, name),
            Body::Hello(_)
            | Body::Send(_)
            | Body::Sync(_)
            | Body::History(_)
            | Body::Ack(_)
            | Body::Edit(_)
            | Body::Delete(_) => {
                panic!("the server sent client {k} a client-to-server {name}")
            }
            _ => {}
        }
    }

    /// A conversation frame (`name`) reached client `k`: only a session that said
    /// `Hello{conversation}` may get one.
    fn conversation_only(&mut self, k: usize, name: &str) {
        assert!(
            self.client(k).hello_conversation,
            "client {k} was sent {name} but its Hello did not say conversation"
        );
        self.reached.conversation_frames += 1;
    }

    /// Whether `m` is `written` as it was written or as a committed edit or
    /// delete rewrote it (a Text carries its current state: PROTOCOL.md,
    /// "Edits and deletes"). A version whose amend is not committed yet is
    /// not one: an edit is never shown before it is durable.
    fn is_a_committed_version(&self, written: &StoredMessage, m: &Message) -> bool {
        let same = |v: &StoredMessage| {
            (v.sender.0, v.server_ts_ms, v.client_msg_id.0, v.text.as_str())
                == (m.sender, m.server_ts_ms, m.client_msg_id, m.text.as_str())
        };
        same(written)
            || self
                .rewritten
                .get(&(written.chat, written.seq))
                .is_some_and(|versions| versions.iter().any(same))
    }

    /// Whether message `(chat, seq)` is one client `k` sent (its user's, with a client message id
    /// it sent in that chat): the sending session gets SendOk instead of the push.
    fn own(&self, k: usize, chat: ChatId, seq: u64) -> bool {
        let c = self.client(k);
        self.messages.get(&(chat, Seq(seq))).is_some_and(|(msg, _)| {
            c.valid.is_some_and(|(u, _)| u == msg.sender)
                && c.sends
                    .iter()
                    .any(|&(_, ch, cmid)| ch == chat && cmid == msg.client_msg_id)
        })
    }

    /// A `SyncDone` for client `k`: it answers a Sync the client sent, the latest one once that
    /// one's stream began, once; its heads are what the stream delivered.
    fn sync_done(&mut self, k: usize, request_id: u64, done: &SyncDone) {
        let c = self.client_mut(k);
        assert!(
            c.syncs.contains(&request_id),
            "SyncDone {request_id} for client {k}, which sent no Sync with that id"
        );
        c.seam.answered(request_id);
        let mut checked = false;
        if let Seam::On {
            request_id: r,
            next,
            done: finished,
        } = &mut c.seam
        {
            assert_eq!(request_id, *r, "SyncDone {request_id} after Sync {r} replaced it");
            assert!(!*finished, "a second SyncDone {request_id} for client {k}");
            *finished = true;
            checked = true;
            for (chat, n) in next.iter() {
                let Some(head) = done.heads.iter().find(|h| h.chat_id == chat.0) else {
                    panic!("SyncDone {request_id} for client {k} leaves out chat {chat}");
                };
                assert_eq!(
                    head.seq + 1,
                    *n,
                    "SyncDone {request_id}: client {k} holds chat {chat} up to {}, the head says {}",
                    n - 1,
                    head.seq
                );
            }
        }
        self.reached.sync_dones += u64::from(checked);
    }

    /// A `HistoryPage` for client `k`: only a member's is non-empty; newest first and contiguous,
    /// the committed messages, at most [`HISTORY_MAX_MESSAGES`], and `has_more` exactly when older
    /// ones exist (a chat's committed messages are seqs 1 to its head).
    fn history_page(&mut self, k: usize, page: &HistoryPage) {
        let chat = ChatId(page.chat_id);
        self.reached.history_messages += page.messages.len() as u64;
        let user = self.client(k).valid.map(|(u, _)| u);
        let Some(oldest) = page.messages.last() else {
            assert!(
                !page.has_more,
                "an empty HistoryPage of chat {chat} says has_more"
            );
            return;
        };
        assert!(
            user.is_some_and(|u| self.store.is_member(chat, u)),
            "a HistoryPage of chat {chat} for client {k} (user {user:?}), not a member"
        );
        assert!(
            page.messages.len() <= HISTORY_MAX_MESSAGES,
            "a HistoryPage of {} messages",
            page.messages.len()
        );
        for (i, m) in page.messages.iter().enumerate() {
            assert_eq!(
                m.chat_id, chat.0,
                "a HistoryPage of chat {chat} holds chat {}",
                m.chat_id
            );
            if let Some(newer) = i.checked_sub(1).and_then(|j| page.messages.get(j)) {
                assert_eq!(
                    m.seq + 1,
                    newer.seq,
                    "HistoryPage of chat {chat}: seq {} after {} (newest first, no gap)",
                    m.seq,
                    newer.seq
                );
            }
            match self.messages.get(&(chat, Seq(m.seq))) {
                Some((msg, true)) => assert!(
                    self.is_a_committed_version(msg, m),
                    "the history differs from the message written: {m:?}, written {msg:?}"
                ),
                Some((_, false)) => panic!("chat {chat} seq {} in history before its commit", m.seq),
                None => panic!("chat {chat} seq {} in history, but never written", m.seq),
            }
        }
        assert_eq!(
            page.has_more,
            oldest.seq > 1,
            "HistoryPage of chat {chat} ends at seq {} with has_more = {}",
            oldest.seq,
            page.has_more
        );
    }

    /// Checks every core against the model.
    pub(super) fn check_all(&self) {
        for (i, core) in self.cores.iter().enumerate() {
            if let Err(err) = core.check_invariants() {
                panic!("core {i}: {err}");
            }
            let on: Vec<(ConnId, &Client)> = self
                .conns
                .get(i)
                .into_iter()
                .flatten()
                .filter_map(|(&conn, &k)| self.clients.get(k).map(|c| (conn, c)))
                .collect();
            let stats = core.stats();
            assert_eq!(
                stats.connections,
                on.len() as u64,
                "core {i} counts its connections wrong"
            );
            let sessions = on.iter().filter(|(_, c)| c.welcomed && !c.close_emitted).count();
            assert_eq!(
                stats.sessions, sessions as u64,
                "core {i} counts its sessions wrong"
            );
            for (conn, c) in on {
                let phase = core.phase(conn);
                let ok = match phase {
                    Some(Phase::Closing) => c.close_emitted,
                    Some(Phase::Active { user, device }) => {
                        c.welcomed && !c.close_emitted && c.valid == Some((user, device))
                    }
                    Some(Phase::AwaitingHello | Phase::Authenticating | Phase::Migrating) => {
                        !c.welcomed && !c.close_emitted
                    }
                    None => false,
                };
                assert!(ok, "core {i}: {conn:?} is {phase:?}, the model says {c:?}");
            }
        }
    }

    /// Commits every write and delivers every command until nothing is left; then checks that
    /// every request was answered, and lets time run until every connection must have timed out.
    pub(super) fn finish(&mut self) {
        self.store.set_failing(false);
        let mut idle = false;
        for _ in 0..QUIESCE_ROUNDS {
            let syncing = self.syncing();
            if self.writes.is_empty()
                && self.queues.iter().all(VecDeque::is_empty)
                && self.reads.iter().all(VecDeque::is_empty)
                && syncing.is_empty()
            {
                idle = true;
                break;
            }
            // The client reads everything at once, so every sync page drains.
            for k in syncing {
                self.drained(k);
            }
            self.commit(self.writes.len());
            for core in 0..CORES {
                while !self.queues[core].is_empty() {
                    self.deliver(core);
                }
                while !self.reads[core].is_empty() {
                    self.deliver_read(core);
                }
            }
            self.end_turn();
            self.check_all();
        }
        assert!(idle, "the cores never stop producing work");
        for k in self.live() {
            let c = self.client(k);
            if c.welcomed && !c.close_emitted {
                assert!(
                    c.unanswered.is_empty(),
                    "client {k}'s Sends {:?} were never answered",
                    c.unanswered
                );
            }
        }
        // A session that synced and got its SyncDone, and was sent no Resync or Error for it since,
        // holds every committed message of every chat of its sync (docs/PROTOCOL.md, "While
        // connected"): nothing was lost at the seam.
        for k in self.live() {
            let c = self.client(k);
            if !c.welcomed || c.close_emitted {
                continue;
            }
            if let Seam::On {
                request_id,
                next,
                done: true,
            } = &c.seam
            {
                for (chat, n) in next {
                    let head = self.store.head(*chat).0;
                    assert!(
                        *n <= head + 1 && (*n..=head).all(|s| self.own(k, *chat, s)),
                        "client {k} (Sync {request_id}) holds chat {chat} up to {}, its head is {head}",
                        n - 1
                    );
                }
            }
        }
        for (i, reply) in self.replies.iter().enumerate() {
            assert_eq!(
                reply.len(),
                1,
                "membership change {i} got {} replies",
                reply.len()
            );
        }
        // Hello deadline or heartbeat timeout, plus the timer wheel's rounding, several times over.
        for _ in 0..8 {
            self.now += HEARTBEAT_TIMEOUT;
            self.timeouts();
            self.end_turn();
        }
        self.check_all();
        for k in self.live() {
            let c = self.client(k);
            assert!(c.close_emitted, "client {k} never timed out: {c:?}");
            self.closed(k);
        }
        for (i, core) in self.cores.iter().enumerate() {
            let stats = core.stats();
            assert_eq!(
                (stats.connections, stats.sessions),
                (0, 0),
                "core {i} holds connections at the end"
            );
            assert_eq!(
                stats.online_users, 0,
                "core {i} still shows users online long after their grace period"
            );
        }
        self.check_all();
    }
}
