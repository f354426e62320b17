//! The embedded store: fjall in `--data-dir`, holding accounts, device tokens,
//! friendships (bounded per user: [`MAX_FRIENDS`], [`MAX_INCOMING_REQUESTS`],
//! [`MAX_OUTGOING_REQUESTS`]), chats, memberships, messages and send dedupe
//! records, last-seen times, device cursors and read markers.
//!
//! * `keys.rs` — keyspace names and key encodings (the on-disk layout table).
//! * `records.rs` — record value encodings.
//! * `chats.rs` — chats, members, message reads, dedupe lookups.
//! * `presence.rs` — what presence reads: friend ids, last-seen times.
//! * `writer.rs` — the group-commit writer thread: messages and membership
//!   changes from every core, one durable batch per round.
//! * `engine.rs` — fjall's settings (`--cache-size`, `--journal-limit`) and the
//!   journal bound that keeps a restart after `kill -9` short.
//!
//! # Durability
//!
//! The database is opened with `manual_journal_persist(true)`, so nothing is
//! synced implicitly. Every account write (signup, login, logout, friend change)
//! and every chat creation is **one** fjall batch across keyspaces, committed
//! with [`PersistMode::SyncData`]: when a method returns `Ok`, the change is in
//! the journal and `fdatasync`ed, and only then does the HTTP side-port answer.
//! Messages and membership changes go through [`writer::Writer`], which commits
//! many of them per `fdatasync` and reports completion only after it returned.
//! A batch is atomic: after a crash either all of its rows exist or none do.
//! `docs/DURABILITY.md` has the whole contract.
//!
//! # Failure: the poison rule
//!
//! A fjall error on a read is reported as [`StoreError::Io`]. A failed durable
//! write (journal write or `fdatasync`, on any path: account writes, chat
//! creation, group commits) is never retried and never acknowledged: the store
//! is marked poisoned ([`Store::is_poisoned`]), the failure is logged at error
//! level, and the process exits with [`POISON_EXIT_CODE`] at once, to recover
//! from the journal on restart. After a failed `fdatasync` the kernel may have
//! dropped the dirty pages and cleared the error, so a retry that "succeeds"
//! proves nothing; carrying on would also leave in-memory state (ids, `seq`s)
//! ahead of what is on disk. `docs/DURABILITY.md` has the reasoning.
//!
//! # Concurrency
//!
//! `Store` is `Send + Sync` and shared as `Arc<Store>`. Reads (token lookups on
//! the event loops, profile and friend reads) take no lock of ours. Account
//! writes are serialised by one mutex inside the store so that username
//! uniqueness checks, id allocation and friend state transitions are race-free;
//! that path is low-volume (bounded by argon2, the per-address rate limit of
//! signup and login, and the per-user rate limit of every other HTTP write).

mod chats;
mod conversation;
pub use conversation::{Settings, UNREAD_SCAN_LIMIT};
mod core_reads;
pub use core_reads::take_reads_on_this_thread;
mod cursors;
pub mod engine;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz_hooks;
mod keys;
mod presence;
mod push;
mod records;
mod search;
pub mod space;
pub mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use sha2::{Digest, Sha256};

pub use crate::core::MAX_GROUP_MEMBERS;
use crate::ids::{DeviceId, UserId};
pub use chats::ChatInfo;
use keys::FriendState;
pub use push::{OwedAtStart, PushFormat, Pusher};
pub use records::{ChatKind, DeviceRecord, StoredMessage, UserRecord};

/// Most accepted friends a user has. A user's friend list is loaded whole by
/// its home core on its first session (8 bytes per friend) and every presence
/// change fans out to it, so it must be bounded; 5,000 is Facebook's long-standing
/// cap, far above what a person keeps in a chat app.
pub const MAX_FRIENDS: usize = 5_000;

/// Most friend requests waiting for one user's answer. Bounds what a crowd of
/// strangers can pile onto one account (each is a `friends` row and a line in
/// `GET /v1/friends`); a real user clears them long before 1,000.
pub const MAX_INCOMING_REQUESTS: usize = 1_000;

/// Most friend requests one user has waiting for others' answers. Bounds the
/// spam one account can send out (each pending request occupies a slot in the
/// recipient's [`MAX_INCOMING_REQUESTS`]); a user withdraws old ones to send more.
pub const MAX_OUTGOING_REQUESTS: usize = 1_000;

/// The process exit code after a failed durable write (`EX_SOFTWARE`): the
/// store is poisoned and natterd must restart to recover from the journal.
pub const POISON_EXIT_CODE: i32 = 70;

/// Length of a device token in characters: 32 random bytes as lowercase hex.
pub const TOKEN_LEN: usize = 64;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Caller error: the (lowercased) username already belongs to an account.
    #[error("username is taken")]
    UsernameTaken,
    /// Caller error: the operation names a user that does not exist.
    #[error("no user with id {0}")]
    UnknownUser(UserId),
    /// Caller error: a user cannot befriend themselves.
    #[error("a user cannot befriend themselves")]
    SelfFriendship,
    /// Caller error: a direct chat needs two different users.
    #[error("a direct chat needs two different users")]
    SelfChat,
    /// Limit hit: becoming friends would give `user` more than [`MAX_FRIENDS`] friends.
    #[error("user {user} already has {MAX_FRIENDS} friends")]
    TooManyFriends {
        /// Whose list is full (the caller or the other user).
        user: UserId,
    },
    /// Limit hit: the asking user already has [`MAX_OUTGOING_REQUESTS`] pending requests.
    #[error("{MAX_OUTGOING_REQUESTS} friend requests are already waiting for an answer")]
    TooManyOutgoingRequests,
    /// Limit hit: the asked user already has [`MAX_INCOMING_REQUESTS`] pending requests.
    #[error("the user asked already has {MAX_INCOMING_REQUESTS} requests waiting")]
    TooManyIncomingRequests,
    /// Limit hit: a group would have more than [`MAX_GROUP_MEMBERS`] members.
    #[error("a group has at most {MAX_GROUP_MEMBERS} members, not {count}")]
    TooManyMembers {
        /// How many distinct members (owner included) were asked for.
        count: usize,
    },
    /// Internal: a stored key or record does not decode. Data on disk is damaged
    /// or was written by an incompatible version; the operation is refused.
    #[error("corrupt record in the store: {what}")]
    Corrupt {
        /// Which record, for the log.
        what: String,
    },
    /// Store unavailable: fjall failed (I/O error, poisoned after a failed sync,
    /// locked by another process). Nothing was acknowledged; after a failed write
    /// the process must restart and recover.
    #[error("store unavailable: {0}")]
    Io(#[from] fjall::Error),
    /// Internal: the group-commit writer thread panicked (a bug in a completion
    /// callback); what it had committed stays committed.
    #[error("the store writer thread panicked")]
    WriterPanicked,
    /// Internal: the system's random number generator failed (no token was made).
    #[error("random number generator failed: {0}")]
    Random(getrandom::Error),
    /// Limit hit, nobody at fault: the disk is below the free-space reserve
    /// (`space.rs`); nothing was written. Retry once space is freed.
    #[error("the disk is below natterd's free-space reserve")]
    StorageFull,
}

/// What [`Store::request_friend`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FriendOutcome {
    /// A request is now pending (it was new, or already pending).
    Requested,
    /// The other user had already asked: the two are now friends.
    BecameFriends,
    /// Nothing changed: they were friends already.
    AlreadyFriends,
}

/// A user's relations, each as `(id, username)`, ordered by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FriendList {
    /// Accepted friends.
    pub friends: Vec<(UserId, String)>,
    /// Users who asked this user and wait for an answer.
    pub incoming: Vec<(UserId, String)>,
    /// Users this user asked, not answered yet.
    pub outgoing: Vec<(UserId, String)>,
}

/// Users whose relation counts the store keeps in memory. Counting a full
/// list is one prefix scan of up to ~7,000 rows (milliseconds, under the write
/// lock that every account write shares), so the counts of users who write are
/// cached; ~40 bytes each, ~4 MB at most. When full the cache is emptied and
/// refills from the store on demand: it is a cache, never the truth.
const MAX_CACHED_RELATION_COUNTS: usize = 100_000;

/// How many relations of each kind one user has (one prefix scan of `friends`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct RelationCounts {
    friends: usize,
    incoming: usize,
    outgoing: usize,
}

impl RelationCounts {
    fn of(&mut self, state: FriendState) -> &mut usize {
        match state {
            FriendState::Friend => &mut self.friends,
            FriendState::Incoming => &mut self.incoming,
            FriendState::Outgoing => &mut self.outgoing,
        }
    }
}

/// What the write mutex guards: the id counters (loaded at open, advanced only
/// after the batch that persists the new value has committed) and the cached
/// relation counts (changed only after the batch that changes the relation has
/// committed; friend writes all hold the mutex, so the cache cannot go stale).
#[derive(Debug)]
struct Counters {
    next_user: u64,
    next_device: u64,
    next_chat: u64,
    /// At most [`MAX_CACHED_RELATION_COUNTS`] users.
    relations: HashMap<UserId, RelationCounts>,
}

/// What fjall's LSM trees of the two keyspaces that grow with every message
/// (`messages`, `dedupe`) look like at one moment: the inputs of fjall's write
/// throttle and halt, exposed so that a stall can be told apart from outside.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LsmState {
    /// Level-0 tables (fjall throttles past 20 level-0 runs, halts at 30).
    pub l0_tables: u64,
    /// Sealed memtables waiting for their flush (a keyspace halts at 4).
    pub sealed_memtables: u64,
    /// Memtable flushes queued or running, all keyspaces.
    pub flushes_pending: u64,
    /// Compactions running, all keyspaces.
    pub compactions_running: u64,
}

/// The embedded store. See the module docs for durability and concurrency.
pub struct Store {
    db: Database,
    meta: Keyspace,
    users: Keyspace,
    usernames: Keyspace,
    tokens: Keyspace,
    devices: Keyspace,
    friends: Keyspace,
    chats: Keyspace,
    members: Keyspace,
    user_chats: Keyspace,
    dms: Keyspace,
    messages: Keyspace,
    dedupe: Keyspace,
    last_seen: Keyspace,
    cursors: Keyspace,
    read_markers: Keyspace,
    /// Delivered seqs and user settings (`conversation.rs`).
    receipts: Keyspace,
    settings: Keyspace,
    /// Pushers and push watermarks (`push.rs`).
    pushers: Keyspace,
    push_marks: Keyspace,
    /// Serialises account writes and chat creation (never taken by reads, nor
    /// by the group-commit writer).
    writer: Mutex<Counters>,
    /// Set once any commit or sync failed.
    poisoned: AtomicBool,
    /// Free space against `--disk-reserve` (refuses growing writes when low).
    space: space::SpaceGuard,
    /// The data directory and the engine settings it was opened with.
    dir: std::path::PathBuf,
    engine: engine::Settings,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("poisoned", &self.is_poisoned())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` with the default
    /// [`engine::Settings`], recovering from the journal.
    ///
    /// # Errors
    /// As [`Store::open_with`].
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, &engine::Settings::default())
    }

    /// Opens (or creates) the store in `dir`, recovering from the journal, with
    /// a block cache of `settings.cache_size` bytes; the storage writer keeps
    /// the journal within `settings.journal_limit` (`engine.rs`).
    ///
    /// # Errors
    /// [`StoreError::Io`] when fjall cannot open the directory (including when
    /// another process holds it), [`StoreError::Corrupt`] when a counter does not
    /// decode.
    pub fn open_with(dir: &Path, settings: &engine::Settings) -> Result<Self, StoreError> {
        let db = Database::builder(dir)
            .manual_journal_persist(true)
            .cache_size(settings.cache_size)
            .journal_rotation_size(engine::JOURNAL_ROTATION_SIZE)
            .worker_threads(engine::STORE_WORKERS)
            .open()?;
        let ks = |name| db.keyspace(name, KeyspaceCreateOptions::default);
        let store = Self {
            meta: ks(keys::META)?,
            users: ks(keys::USERS)?,
            usernames: ks(keys::USERNAMES)?,
            tokens: ks(keys::TOKENS)?,
            devices: ks(keys::DEVICES)?,
            friends: ks(keys::FRIENDS)?,
            chats: ks(keys::CHATS)?,
            members: ks(keys::MEMBERS)?,
            user_chats: ks(keys::USER_CHATS)?,
            dms: ks(keys::DMS)?,
            messages: db.keyspace(keys::MESSAGES, || {
                engine::large_keyspace().with_kv_separation(Some(
                    fjall::KvSeparationOptions::default()
                        .separation_threshold(engine::KV_SEPARATION_THRESHOLD),
                ))
            })?,
            dedupe: db.keyspace(keys::DEDUPE, engine::large_keyspace)?,
            last_seen: ks(keys::LAST_SEEN)?,
            cursors: ks(keys::CURSORS)?,
            read_markers: ks(keys::READ_MARKERS)?,
            receipts: ks(conversation::RECEIPTS)?,
            settings: ks(conversation::SETTINGS)?,
            pushers: ks(push::PUSHERS)?,
            push_marks: ks(push::PUSH_MARKS)?,
            db,
            writer: Mutex::new(Counters {
                next_user: 1,
                next_device: 1,
                next_chat: 1,
                relations: HashMap::new(),
            }),
            poisoned: AtomicBool::new(false),
            space: space::SpaceGuard::new(dir.to_owned()),
            dir: dir.to_owned(),
            engine: *settings,
        };
        let counters = Counters {
            next_user: store.counter(keys::NEXT_USER_ID)?,
            next_device: store.counter(keys::NEXT_DEVICE_ID)?,
            next_chat: store.counter(keys::NEXT_CHAT_ID)?,
            relations: HashMap::new(),
        };
        *store.lock() = counters;
        Ok(store)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes in the memtables of every keyspace (active and sealed) that are
    /// not yet flushed to tables, as fjall counts them.
    pub fn write_buffer_bytes(&self) -> u64 {
        self.db.write_buffer_size()
    }

    /// The LSM trees' state now (cheap atomic and lock reads; the storage
    /// writer samples it with the journal, `natter_store_l0_tables` and the
    /// other `/metrics` gauges).
    pub fn lsm_state(&self) -> LsmState {
        let big = [&self.messages, &self.dedupe];
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        LsmState {
            l0_tables: count(big.iter().map(|k| k.l0_table_count()).sum()),
            sealed_memtables: count(big.iter().map(|k| k.sealed_memtable_count()).sum()),
            flushes_pending: count(self.db.outstanding_flushes()),
            compactions_running: count(self.db.active_compactions()),
        }
    }

    /// The engine settings the store was opened with.
    pub fn engine_settings(&self) -> &engine::Settings {
        &self.engine
    }

    /// The free-space guard of the data directory (`--disk-reserve`).
    pub fn space(&self) -> &space::SpaceGuard {
        &self.space
    }

    /// [`StoreError::StorageFull`] while the disk is below the free-space
    /// reserve: account writes that grow the store call it first.
    fn refuse_if_full(&self) -> Result<(), StoreError> {
        if self.space.is_low() {
            Err(StoreError::StorageFull)
        } else {
            Ok(())
        }
    }

    /// True once a write or sync failed: the store accepts no more writes and
    /// the process should exit to recover.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Relaxed)
    }

    /// Creates an account. `username` must already be validated and lowercased;
    /// `password_phc` is the argon2id PHC string.
    ///
    /// # Errors
    /// [`StoreError::UsernameTaken`], [`StoreError::StorageFull`] below the
    /// free-space reserve, or a store failure.
    pub fn create_user(&self, username: &str, password_phc: &str) -> Result<UserId, StoreError> {
        self.refuse_if_full()?;
        let mut counters = self.lock();
        if self.usernames.get(username)?.is_some() {
            return Err(StoreError::UsernameTaken);
        }
        let id = UserId(counters.next_user);
        let record = UserRecord {
            id,
            username: username.to_owned(),
            password_phc: password_phc.to_owned(),
            created_ms: now_ms(),
        };
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&self.users, keys::id(id.0), record.encode());
        batch.insert(&self.usernames, username, keys::id(id.0));
        batch.insert(&self.meta, keys::NEXT_USER_ID, keys::id(id.0 + 1));
        self.commit(batch, "signup");
        counters.next_user = id.0 + 1;
        Ok(id)
    }

    /// Replaces `user`'s password hash with `password_phc` (a re-hash at the
    /// current cost after a successful login), durably: returns once synced.
    /// Returns false when the account does not exist.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn set_password(&self, user: UserId, password_phc: &str) -> Result<bool, StoreError> {
        let _counters = self.lock();
        let Some(mut record) = self.user(user)? else {
            return Ok(false);
        };
        record.password_phc = password_phc.to_owned();
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&self.users, keys::id(user.0), record.encode());
        self.commit(batch, "password re-hash");
        Ok(true)
    }

    /// Looks an account up by its (already lowercased) username.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let Some(value) = self.usernames.get(username)? else {
            return Ok(None);
        };
        let id = keys::decode_id(&value).ok_or_else(|| corrupt(format!("usernames[{username:?}]")))?;
        match self.user(UserId(id))? {
            Some(user) => Ok(Some(user)),
            None => Err(corrupt(format!(
                "usernames[{username:?}] points to missing user {id}"
            ))),
        }
    }

    /// Looks an account up by id.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn user(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        let Some(value) = self.users.get(keys::id(id.0))? else {
            return Ok(None);
        };
        UserRecord::decode(id, &value)
            .map(Some)
            .ok_or_else(|| corrupt(format!("users[{id}]")))
    }

    /// The username of `id` (decodes less than [`Store::user`]).
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn username(&self, id: UserId) -> Result<Option<String>, StoreError> {
        let Some(value) = self.users.get(keys::id(id.0))? else {
            return Ok(None);
        };
        UserRecord::decode_username(&value)
            .map(Some)
            .ok_or_else(|| corrupt(format!("users[{id}]")))
    }

    /// Registers a new device of `user` and returns its id and token (64 hex
    /// characters of 32 random bytes). Only the token's sha256 is stored.
    ///
    /// # Errors
    /// [`StoreError::UnknownUser`], [`StoreError::Random`], or a store failure.
    pub fn create_device(&self, user: UserId, device_name: &str) -> Result<(DeviceId, String), StoreError> {
        let mut raw = [0u8; TOKEN_LEN / 2];
        getrandom::fill(&mut raw).map_err(StoreError::Random)?;
        let token = hex_encode(&raw);
        let token_hash = sha256(&raw);

        let mut counters = self.lock();
        if self.users.get(keys::id(user.0))?.is_none() {
            return Err(StoreError::UnknownUser(user));
        }
        let device = DeviceId(counters.next_device);
        let record = DeviceRecord {
            name: device_name.to_owned(),
            created_ms: now_ms(),
            token_hash,
        };
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&self.tokens, token_hash, keys::pair(user.0, device.0));
        batch.insert(&self.devices, keys::pair(user.0, device.0), record.encode());
        batch.insert(&self.meta, keys::NEXT_DEVICE_ID, keys::id(device.0 + 1));
        self.commit(batch, "login");
        counters.next_device = device.0 + 1;
        Ok((device, token))
    }

    /// The device record of `user`'s `device`, if it is logged in.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn device(&self, user: UserId, device: DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        let Some(value) = self.devices.get(keys::pair(user.0, device.0))? else {
            return Ok(None);
        };
        DeviceRecord::decode(&value)
            .map(Some)
            .ok_or_else(|| corrupt(format!("devices[{user}/{device}]")))
    }

    /// Resolves a device token to its user and device. Called by the event loops
    /// for every `Hello`: one point read, no lock, no heap allocation of ours.
    /// A token of the wrong shape is simply unknown (`Ok(None)`).
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn authenticate(&self, token: &str) -> Result<Option<(UserId, DeviceId)>, StoreError> {
        let Some(raw) = hex_decode_token(token) else {
            return Ok(None);
        };
        let Some(value) = self.tokens.get(sha256(&raw))? else {
            return Ok(None);
        };
        let (user, device) = keys::decode_pair(&value).ok_or_else(|| corrupt("tokens[..]".into()))?;
        Ok(Some((UserId(user), DeviceId(device))))
    }

    /// Revokes a token: deletes it and its device row in one durable batch.
    /// Returns whose token it was, or `None` if it was unknown (or malformed).
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn revoke(&self, token: &str) -> Result<Option<(UserId, DeviceId)>, StoreError> {
        let Some(raw) = hex_decode_token(token) else {
            return Ok(None);
        };
        let hash = sha256(&raw);
        let _guard = self.lock();
        let Some(value) = self.tokens.get(hash)? else {
            return Ok(None);
        };
        let (user, device) = keys::decode_pair(&value).ok_or_else(|| corrupt("tokens[..]".into()))?;
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.remove(&self.tokens, hash);
        batch.remove(&self.devices, keys::pair(user, device));
        // A logged-out device gets no more notifications (push.rs).
        batch.remove(&self.pushers, keys::pair(user, device));
        self.commit(batch, "logout");
        Ok(Some((UserId(user), DeviceId(device))))
    }

    /// `from` asks `to` to be friends. If `to` had already asked `from`, they
    /// become friends at once; asking again while pending changes nothing.
    /// A new request needs room on both sides ([`MAX_OUTGOING_REQUESTS`] for
    /// `from`, [`MAX_INCOMING_REQUESTS`] for `to`) and `from` below
    /// [`MAX_FRIENDS`]; a friendship needs both below [`MAX_FRIENDS`]. The
    /// counts are read under the write lock, so concurrent requests cannot
    /// overshoot them.
    ///
    /// # Errors
    /// [`StoreError::SelfFriendship`], [`StoreError::UnknownUser`],
    /// [`StoreError::TooManyFriends`], [`StoreError::TooManyOutgoingRequests`],
    /// [`StoreError::TooManyIncomingRequests`], [`StoreError::StorageFull`]
    /// (only when it would write), or a store failure.
    pub fn request_friend(&self, from: UserId, to: UserId) -> Result<FriendOutcome, StoreError> {
        if from == to {
            return Err(StoreError::SelfFriendship);
        }
        let mut counters = self.lock();
        for user in [from, to] {
            if self.users.get(keys::id(user.0))?.is_none() {
                return Err(StoreError::UnknownUser(user));
            }
        }
        match self.friend_state(from, to)? {
            Some(FriendState::Friend) => Ok(FriendOutcome::AlreadyFriends),
            Some(FriendState::Outgoing) => Ok(FriendOutcome::Requested),
            Some(FriendState::Incoming) => {
                self.require_friend_room(&mut counters, from, to)?;
                self.refuse_if_full()?;
                let old = Some(FriendState::Incoming);
                self.set_relation(&mut counters, from, to, old, FriendState::Friend);
                Ok(FriendOutcome::BecameFriends)
            }
            None => {
                self.refuse_if_full()?;
                let mine = self.relation_counts(&mut counters, from)?;
                if mine.friends >= MAX_FRIENDS {
                    return Err(StoreError::TooManyFriends { user: from });
                }
                if mine.outgoing >= MAX_OUTGOING_REQUESTS {
                    return Err(StoreError::TooManyOutgoingRequests);
                }
                if self.relation_counts(&mut counters, to)?.incoming >= MAX_INCOMING_REQUESTS {
                    return Err(StoreError::TooManyIncomingRequests);
                }
                self.set_relation(&mut counters, from, to, None, FriendState::Outgoing);
                Ok(FriendOutcome::Requested)
            }
        }
    }

    /// `user` accepts `from`'s request. Returns `true` when the two are friends
    /// afterwards (the request was accepted, or they already were friends, so a
    /// retried accept succeeds), `false` when `from` never asked.
    ///
    /// # Errors
    /// [`StoreError::TooManyFriends`] when either already has [`MAX_FRIENDS`]
    /// (the request stays pending), [`StoreError::StorageFull`] below the
    /// free-space reserve, a store failure, or [`StoreError::Corrupt`].
    pub fn accept_friend(&self, user: UserId, from: UserId) -> Result<bool, StoreError> {
        let mut counters = self.lock();
        match self.friend_state(user, from)? {
            Some(FriendState::Incoming) => {
                self.require_friend_room(&mut counters, user, from)?;
                self.refuse_if_full()?;
                let old = Some(FriendState::Incoming);
                self.set_relation(&mut counters, user, from, old, FriendState::Friend);
                Ok(true)
            }
            Some(FriendState::Friend) => Ok(true),
            Some(FriendState::Outgoing) | None => Ok(false),
        }
    }

    /// Ends any relation between `user` and `other`: unfriends, declines an
    /// incoming request or withdraws an outgoing one (both rows). Returns
    /// `false` if there was none.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn remove_friend(&self, user: UserId, other: UserId) -> Result<bool, StoreError> {
        let mut counters = self.lock();
        let Some(old) = self.friend_state(user, other)? else {
            return Ok(false);
        };
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.remove(&self.friends, keys::pair(user.0, other.0));
        batch.remove(&self.friends, keys::pair(other.0, user.0));
        self.commit(batch, "friend removal");
        note_relation_change(&mut counters, user, other, Some(old), None);
        Ok(true)
    }

    /// `user`'s friends and pending requests, with usernames (a prefix scan).
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn friends(&self, user: UserId) -> Result<FriendList, StoreError> {
        let mut list = FriendList::default();
        for guard in self.friends.prefix(keys::id(user.0)) {
            let (key, value) = guard.into_inner()?;
            let (_, other) = keys::decode_pair(&key).ok_or_else(|| corrupt(format!("friends[{user}/..]")))?;
            let other = UserId(other);
            let state =
                FriendState::decode(&value).ok_or_else(|| corrupt(format!("friends[{user}/{other}]")))?;
            let name = self
                .username(other)?
                .ok_or_else(|| corrupt(format!("friends[{user}/{other}] names a missing user")))?;
            match state {
                FriendState::Friend => list.friends.push((other, name)),
                FriendState::Incoming => list.incoming.push((other, name)),
                FriendState::Outgoing => list.outgoing.push((other, name)),
            }
        }
        Ok(list)
    }

    /// True when `a` and `b` are (accepted) friends.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn are_friends(&self, a: UserId, b: UserId) -> Result<bool, StoreError> {
        Ok(self.friend_state(a, b)? == Some(FriendState::Friend))
    }

    /// Syncs the journal and everything before it to disk (`fsync`).
    ///
    /// # Errors
    /// A store failure (which also poisons the store).
    pub fn persist(&self) -> Result<(), StoreError> {
        self.db
            .persist(PersistMode::SyncAll)
            .inspect_err(|_| self.poison())?;
        Ok(())
    }

    /// Seals every keyspace's memtable and waits (up to `deadline`) until
    /// fjall has flushed them all to tables: after a clean stop the next start
    /// then inserts nothing of the journal again, it only skips it (about
    /// three times faster, `docs/PERFORMANCE.md` "Restart and memory").
    /// Returns whether everything was flushed in time; what was not stays in
    /// the journal, durable either way.
    ///
    /// # Errors
    /// fjall could not seal a memtable (its journal is poisoned).
    pub fn flush_memtables(&self, deadline: Duration) -> Result<bool, StoreError> {
        let started = Instant::now();
        for name in self.db.list_keyspace_names() {
            let keyspace = self.db.keyspace(&name, KeyspaceCreateOptions::default)?;
            keyspace.rotate_memtable()?;
        }
        while self.db.outstanding_flushes() > 0 || self.db.write_buffer_size() > 0 {
            if started.elapsed() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(true)
    }

    /// Clean shutdown: syncs, then closes the database (stopping fjall's
    /// background threads and releasing the directory lock).
    ///
    /// # Errors
    /// The final sync failed; the journal is still recovered at the next open.
    pub fn close(self) -> Result<(), StoreError> {
        let result = self.persist();
        drop(self);
        result
    }

    fn lock(&self) -> MutexGuard<'_, Counters> {
        // The guarded counters stay consistent even if a holder panicked: they
        // only advance after a successful commit.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the store poisoned (a commit or sync failed); logs once.
    fn poison(&self) {
        if !self.poisoned.swap(true, Ordering::Relaxed) {
            tracing::error!("store write failed: the store is poisoned and accepts no more writes");
        }
    }

    /// Commits `batch` (durable when it was built with `SyncData`); on failure
    /// applies the poison rule and does not return. `what` names the write for the log.
    fn commit(&self, batch: fjall::OwnedWriteBatch, what: &str) {
        if let Err(error) = batch.commit() {
            self.fail_stop(what, &error);
        }
    }

    /// The poison rule (module docs): mark the store poisoned, log what failed,
    /// exit with [`POISON_EXIT_CODE`]. Nothing of the failed write was
    /// acknowledged, and nothing after it will be.
    fn fail_stop(&self, what: &str, error: &fjall::Error) -> ! {
        self.poisoned.store(true, Ordering::Relaxed);
        tracing::error!(
            %error,
            what,
            "durable write failed (journal write or fdatasync): the store is poisoned and nothing \
             of this write was acknowledged; exiting with code {POISON_EXIT_CODE} to recover from \
             the journal on restart"
        );
        std::process::exit(POISON_EXIT_CODE)
    }

    fn counter(&self, key: &[u8]) -> Result<u64, StoreError> {
        match self.meta.get(key)? {
            None => Ok(1),
            Some(value) => keys::decode_id(&value)
                .ok_or_else(|| corrupt(format!("meta[{}]", String::from_utf8_lossy(key)))),
        }
    }

    fn friend_state(&self, user: UserId, other: UserId) -> Result<Option<FriendState>, StoreError> {
        let Some(value) = self.friends.get(keys::pair(user.0, other.0))? else {
            return Ok(None);
        };
        FriendState::decode(&value)
            .map(Some)
            .ok_or_else(|| corrupt(format!("friends[{user}/{other}]")))
    }

    /// `user`'s friends and pending requests: from the cache, else one prefix
    /// scan of at most `MAX_FRIENDS + MAX_INCOMING_REQUESTS +
    /// MAX_OUTGOING_REQUESTS` one-byte values, then cached. Callers hold the
    /// write lock (`counters`), so the counts stay true until they write.
    fn relation_counts(&self, counters: &mut Counters, user: UserId) -> Result<RelationCounts, StoreError> {
        if let Some(counts) = counters.relations.get(&user) {
            return Ok(*counts);
        }
        let counts = self.count_relations(user)?;
        if counters.relations.len() >= MAX_CACHED_RELATION_COUNTS {
            counters.relations.clear();
        }
        counters.relations.insert(user, counts);
        Ok(counts)
    }

    /// Counts `user`'s relations in the store (one prefix scan).
    fn count_relations(&self, user: UserId) -> Result<RelationCounts, StoreError> {
        let mut counts = RelationCounts::default();
        for guard in self.friends.prefix(keys::id(user.0)) {
            let value = guard.value()?;
            match FriendState::decode(&value) {
                Some(FriendState::Friend) => counts.friends += 1,
                Some(FriendState::Incoming) => counts.incoming += 1,
                Some(FriendState::Outgoing) => counts.outgoing += 1,
                None => return Err(corrupt(format!("friends[{user}/..]"))),
            }
        }
        Ok(counts)
    }

    /// Checks that `a` and `b` may become friends: both below [`MAX_FRIENDS`].
    fn require_friend_room(&self, counters: &mut Counters, a: UserId, b: UserId) -> Result<(), StoreError> {
        for user in [a, b] {
            if self.relation_counts(counters, user)?.friends >= MAX_FRIENDS {
                return Err(StoreError::TooManyFriends { user });
            }
        }
        Ok(())
    }

    /// Writes `state` for `user → other` (which was `old`) and its mirror for
    /// `other → user` in one durable batch, then updates the cached counts.
    fn set_relation(
        &self,
        counters: &mut Counters,
        user: UserId,
        other: UserId,
        old: Option<FriendState>,
        state: FriendState,
    ) {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&self.friends, keys::pair(user.0, other.0), [state.to_byte()]);
        batch.insert(
            &self.friends,
            keys::pair(other.0, user.0),
            [state.mirror().to_byte()],
        );
        self.commit(batch, "friend change");
        note_relation_change(counters, user, other, old, Some(state));
    }
}

/// A relation for [`Store::seed_relations_for_test`].
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub(crate) enum TestRelation {
    /// Accepted friends.
    Friend,
    /// A request from the other user, waiting for this one.
    Incoming,
    /// A request from this user, waiting for the other.
    Outgoing,
}

#[cfg(test)]
impl Store {
    /// Gives `user` `n` relations of kind `relation` with made-up user ids from
    /// `base` on (and their mirror rows), in one unsynced batch: a fast fixture
    /// for the friend limits, which would otherwise need thousands of accounts.
    #[allow(clippy::unwrap_used)]
    pub(crate) fn seed_relations_for_test(&self, user: UserId, base: u64, n: usize, relation: TestRelation) {
        let state = match relation {
            TestRelation::Friend => FriendState::Friend,
            TestRelation::Incoming => FriendState::Incoming,
            TestRelation::Outgoing => FriendState::Outgoing,
        };
        let mut counters = self.lock();
        let mut batch = self.db.batch();
        for other in (base..).take(n) {
            batch.insert(&self.friends, keys::pair(user.0, other), [state.to_byte()]);
            batch.insert(
                &self.friends,
                keys::pair(other, user.0),
                [state.mirror().to_byte()],
            );
        }
        batch.commit().unwrap();
        // Written behind the cache's back: forget it.
        counters.relations.clear();
    }
}

/// Updates the cached counts of both users after `user → other` went from
/// `old` to `new` (committed already). Users not cached are counted afresh
/// from the store when next asked.
fn note_relation_change(
    counters: &mut Counters,
    user: UserId,
    other: UserId,
    old: Option<FriendState>,
    new: Option<FriendState>,
) {
    let sides = [
        (user, old, new),
        (other, old.map(FriendState::mirror), new.map(FriendState::mirror)),
    ];
    for (who, old, new) in sides {
        if let Some(counts) = counters.relations.get_mut(&who) {
            if let Some(old) = old {
                let n = counts.of(old);
                *n = n.saturating_sub(1);
            }
            if let Some(new) = new {
                *counts.of(new) += 1;
            }
        }
    }
}

fn corrupt(what: String) -> StoreError {
    StoreError::Corrupt { what }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Decodes a 64-character hex token (either case) into its 32 bytes, on the stack.
fn hex_decode_token(token: &str) -> Option<[u8; TOKEN_LEN / 2]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if token.len() != TOKEN_LEN {
        return None;
    }
    let mut out = [0u8; TOKEN_LEN / 2];
    for (byte, pair) in out.iter_mut().zip(token.as_bytes().chunks_exact(2)) {
        let [hi, lo] = pair else { return None };
        *byte = (nibble(*hi)? << 4) | nibble(*lo)?;
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    const PHC: &str = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

    #[test]
    fn accounts_get_sequential_ids_and_unique_names() {
        let (_dir, store) = open();
        let alice = store.create_user("alice", PHC).unwrap();
        let bob = store.create_user("bob", PHC).unwrap();
        assert_eq!((alice, bob), (UserId(1), UserId(2)));
        assert!(matches!(
            store.create_user("alice", PHC),
            Err(StoreError::UsernameTaken)
        ));
        let record = store.user_by_name("alice").unwrap().unwrap();
        assert_eq!(
            (record.id, record.username.as_str(), record.password_phc.as_str()),
            (alice, "alice", PHC)
        );
        assert!(record.created_ms > 0);
        assert_eq!(store.user(bob).unwrap().unwrap().username, "bob");
        assert_eq!(store.username(bob).unwrap().as_deref(), Some("bob"));
        assert_eq!(store.user(UserId(99)).unwrap(), None);
        assert_eq!(store.user_by_name("carol").unwrap(), None);
        // The failed duplicate did not use up an id.
        assert_eq!(store.create_user("carol", PHC).unwrap(), UserId(3));
    }

    #[test]
    fn concurrent_signups_of_one_name_give_exactly_one_account() {
        let (_dir, store) = open();
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| store.create_user("dup", PHC)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        assert!(
            results
                .iter()
                .filter(|r| matches!(r, Err(StoreError::UsernameTaken)))
                .count()
                == 7,
            "{results:?}"
        );
    }

    #[test]
    fn tokens_authenticate_until_revoked() {
        let (_dir, store) = open();
        let alice = store.create_user("alice", PHC).unwrap();
        let (d1, t1) = store.create_device(alice, "phone").unwrap();
        let (d2, t2) = store.create_device(alice, "laptop").unwrap();
        assert_ne!(d1, d2);
        assert_ne!(t1, t2);
        assert_eq!(t1.len(), TOKEN_LEN);
        assert!(
            t1.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(store.authenticate(&t1).unwrap(), Some((alice, d1)));
        assert_eq!(store.authenticate(&t1.to_uppercase()).unwrap(), Some((alice, d1)));
        assert_eq!(store.authenticate(&t2).unwrap(), Some((alice, d2)));
        let dev = store.device(alice, d1).unwrap().unwrap();
        assert_eq!(dev.name, "phone");
        assert_eq!(dev.token_hash, sha256(&hex_decode_token(&t1).unwrap()));

        // Malformed tokens are just unknown.
        for bad in [
            "",
            "abc",
            &"g".repeat(64),
            &"0".repeat(63),
            &"0".repeat(65),
            &"é".repeat(32),
        ] {
            assert_eq!(store.authenticate(bad).unwrap(), None, "{bad:?}");
            assert_eq!(store.revoke(bad).unwrap(), None);
        }
        assert_eq!(store.authenticate(&"0".repeat(64)).unwrap(), None);

        assert_eq!(store.revoke(&t1).unwrap(), Some((alice, d1)));
        assert_eq!(store.authenticate(&t1).unwrap(), None);
        assert_eq!(store.device(alice, d1).unwrap(), None);
        assert_eq!(store.revoke(&t1).unwrap(), None);
        assert_eq!(store.authenticate(&t2).unwrap(), Some((alice, d2)));
        assert!(matches!(
            store.create_device(UserId(77), "x"),
            Err(StoreError::UnknownUser(UserId(77)))
        ));
    }

    #[test]
    fn friend_state_machine() {
        let (_dir, store) = open();
        let a = store.create_user("a_user", PHC).unwrap();
        let b = store.create_user("b_user", PHC).unwrap();
        let c = store.create_user("c_user", PHC).unwrap();
        let names = |pairs: &[(UserId, String)]| pairs.iter().map(|(id, _)| *id).collect::<Vec<_>>();

        assert!(matches!(
            store.request_friend(a, a),
            Err(StoreError::SelfFriendship)
        ));
        assert!(matches!(
            store.request_friend(a, UserId(42)),
            Err(StoreError::UnknownUser(UserId(42)))
        ));

        assert_eq!(store.request_friend(a, b).unwrap(), FriendOutcome::Requested);
        assert_eq!(store.request_friend(a, b).unwrap(), FriendOutcome::Requested);
        let la = store.friends(a).unwrap();
        let lb = store.friends(b).unwrap();
        assert_eq!((names(&la.outgoing), names(&lb.incoming)), (vec![b], vec![a]));
        assert_eq!(lb.incoming[0].1, "a_user");
        assert!(la.friends.is_empty() && la.incoming.is_empty() && lb.outgoing.is_empty());
        assert!(!store.are_friends(a, b).unwrap());

        // Only the asked side can accept.
        assert!(!store.accept_friend(a, b).unwrap());
        assert!(store.accept_friend(b, a).unwrap());
        assert!(store.accept_friend(b, a).unwrap(), "a retried accept succeeds");
        assert!(store.are_friends(a, b).unwrap() && store.are_friends(b, a).unwrap());
        assert_eq!(store.request_friend(b, a).unwrap(), FriendOutcome::AlreadyFriends);
        assert_eq!(names(&store.friends(a).unwrap().friends), vec![b]);

        // Crossing requests become a friendship at once.
        assert_eq!(store.request_friend(c, a).unwrap(), FriendOutcome::Requested);
        assert_eq!(store.request_friend(a, c).unwrap(), FriendOutcome::BecameFriends);
        assert_eq!(names(&store.friends(a).unwrap().friends), vec![b, c]);

        // Removal works from either side, for friends and for pending requests.
        assert!(store.remove_friend(b, a).unwrap());
        assert!(!store.remove_friend(b, a).unwrap());
        assert!(!store.are_friends(a, b).unwrap());
        assert_eq!(store.request_friend(b, c).unwrap(), FriendOutcome::Requested);
        assert!(
            store.remove_friend(c, b).unwrap(),
            "declining an incoming request"
        );
        assert_eq!(store.friends(b).unwrap(), FriendList::default());
        assert!(!store.accept_friend(c, b).unwrap());
        assert_eq!(names(&store.friends(c).unwrap().friends), vec![a]);
    }

    fn seed_relations(store: &Store, user: UserId, base: u64, n: usize, state: FriendState) {
        let relation = match state {
            FriendState::Friend => TestRelation::Friend,
            FriendState::Incoming => TestRelation::Incoming,
            FriendState::Outgoing => TestRelation::Outgoing,
        };
        store.seed_relations_for_test(user, base, n, relation);
    }

    #[test]
    fn friend_requests_are_bounded_per_user_on_both_sides() {
        let (_dir, store) = open();
        let a = store.create_user("a_user", PHC).unwrap();
        let b = store.create_user("b_user", PHC).unwrap();
        let c = store.create_user("c_user", PHC).unwrap();

        // a has one request fewer than the limit out: the last one fits, one more does not.
        seed_relations(
            &store,
            a,
            1_000_000,
            MAX_OUTGOING_REQUESTS - 1,
            FriendState::Outgoing,
        );
        assert_eq!(store.request_friend(a, b).unwrap(), FriendOutcome::Requested);
        assert!(matches!(
            store.request_friend(a, c),
            Err(StoreError::TooManyOutgoingRequests)
        ));
        assert_eq!(
            store.request_friend(a, b).unwrap(),
            FriendOutcome::Requested,
            "repeating a pending request is not a new one"
        );
        assert!(store.remove_friend(a, UserId(1_000_000)).unwrap(), "withdraw one");
        assert_eq!(store.request_friend(a, c).unwrap(), FriendOutcome::Requested);
        assert_eq!(store.friends(c).unwrap().incoming.len(), 1);

        // c has a full inbox: nobody else may ask.
        let (_dir2, store) = open();
        let a = store.create_user("a_user", PHC).unwrap();
        let b = store.create_user("b_user", PHC).unwrap();
        let c = store.create_user("c_user", PHC).unwrap();
        seed_relations(
            &store,
            c,
            2_000_000,
            MAX_INCOMING_REQUESTS - 1,
            FriendState::Incoming,
        );
        assert_eq!(store.request_friend(a, c).unwrap(), FriendOutcome::Requested);
        assert!(matches!(
            store.request_friend(b, c),
            Err(StoreError::TooManyIncomingRequests)
        ));
        // c can still act: accepting empties a slot, and c's own requests are not incoming.
        assert!(store.accept_friend(c, a).unwrap());
        assert_eq!(store.request_friend(b, c).unwrap(), FriendOutcome::Requested);
    }

    #[test]
    fn friendships_are_bounded_per_user() {
        let (_dir, store) = open();
        let a = store.create_user("a_user", PHC).unwrap();
        let b = store.create_user("b_user", PHC).unwrap();
        let c = store.create_user("c_user", PHC).unwrap();
        let d = store.create_user("d_user", PHC).unwrap();
        seed_relations(&store, a, 1_000_000, MAX_FRIENDS - 1, FriendState::Friend);

        // The 5,000th friend is accepted.
        assert_eq!(store.request_friend(b, a).unwrap(), FriendOutcome::Requested);
        assert!(store.accept_friend(a, b).unwrap());
        assert_eq!(store.friends(b).unwrap().friends.len(), 1);

        // The 5,001st is refused on every path, and nothing is written.
        assert!(matches!(
            store.request_friend(a, c),
            Err(StoreError::TooManyFriends { user }) if user == a
        ));
        assert_eq!(store.request_friend(c, a).unwrap(), FriendOutcome::Requested);
        assert!(matches!(
            store.accept_friend(a, c),
            Err(StoreError::TooManyFriends { user }) if user == a
        ));
        assert!(!store.are_friends(a, c).unwrap());
        assert_eq!(
            store.friends(c).unwrap().outgoing.len(),
            1,
            "the request stays pending"
        );
        assert!(
            matches!(
                store.request_friend(a, c),
                Err(StoreError::TooManyFriends { user }) if user == a
            ),
            "a crossing request would befriend: refused too"
        );
        // The other side's list counts as well.
        seed_relations(&store, d, 3_000_000, MAX_FRIENDS, FriendState::Friend);
        assert_eq!(store.request_friend(c, d).unwrap(), FriendOutcome::Requested);
        assert!(matches!(
            store.accept_friend(d, c),
            Err(StoreError::TooManyFriends { user }) if user == d
        ));
        // Room again after an unfriending.
        assert!(store.remove_friend(a, b).unwrap());
        assert!(store.accept_friend(a, c).unwrap());
        assert!(store.are_friends(a, c).unwrap());
    }

    #[test]
    fn cached_relation_counts_always_match_the_store() {
        let (_dir, store) = open();
        let users: Vec<UserId> = (0..5)
            .map(|i| store.create_user(&format!("user{i}"), PHC).unwrap())
            .collect();
        // A fixed pseudo-random walk over requests, accepts and removals.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for step in 0..300 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let a = users[(x % 5) as usize];
            let b = users[((x >> 8) % 5) as usize];
            if a == b {
                continue;
            }
            match (x >> 16) % 3 {
                0 => drop(store.request_friend(a, b).unwrap()),
                1 => drop(store.accept_friend(a, b).unwrap()),
                _ => drop(store.remove_friend(a, b).unwrap()),
            }
            if step % 50 == 0 {
                store.lock().relations.clear();
            }
            let mut counters = store.lock();
            for user in &users {
                let cached = store.relation_counts(&mut counters, *user).unwrap();
                assert_eq!(
                    cached,
                    store.count_relations(*user).unwrap(),
                    "step {step}, {user}"
                );
            }
        }
    }

    #[test]
    fn data_and_counters_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (alice, bob, token, device) = {
            let store = Store::open(dir.path()).unwrap();
            let alice = store.create_user("alice", PHC).unwrap();
            let bob = store.create_user("bob", PHC).unwrap();
            let (device, token) = store.create_device(alice, "phone").unwrap();
            store.request_friend(alice, bob).unwrap();
            store.accept_friend(bob, alice).unwrap();
            store.close().unwrap();
            (alice, bob, token, device)
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.user_by_name("bob").unwrap().unwrap().id, bob);
        assert_eq!(store.authenticate(&token).unwrap(), Some((alice, device)));
        assert!(store.are_friends(alice, bob).unwrap());
        assert!(matches!(
            store.create_user("alice", PHC),
            Err(StoreError::UsernameTaken)
        ));
        assert_eq!(store.create_user("carol", PHC).unwrap(), UserId(3));
        assert_eq!(
            store.create_device(bob, "tablet").unwrap().0,
            DeviceId(device.0 + 1)
        );
    }

    #[test]
    fn data_survives_drop_without_close() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.create_user("alice", PHC).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(store.user_by_name("alice").unwrap().is_some());
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let (dir, _store) = open();
        assert!(matches!(Store::open(dir.path()), Err(StoreError::Io(_))));
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let (_dir, store) = open();
        let alice = store.create_user("alice", PHC).unwrap();
        let bob = store.create_user("bob", PHC).unwrap();
        let (_, token) = store.create_device(alice, "phone").unwrap();
        store.request_friend(alice, bob).unwrap();

        store.users.insert(keys::id(alice.0), [1u8, 0, 200]).unwrap();
        assert!(matches!(store.user(alice), Err(StoreError::Corrupt { .. })));
        assert!(matches!(
            store.user_by_name("alice"),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(store.friends(bob), Err(StoreError::Corrupt { .. })));

        store
            .tokens
            .insert(sha256(&hex_decode_token(&token).unwrap()), [1u8; 3])
            .unwrap();
        assert!(matches!(
            store.authenticate(&token),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(store.revoke(&token), Err(StoreError::Corrupt { .. })));

        store.friends.insert(keys::pair(bob.0, alice.0), [9u8]).unwrap();
        assert!(matches!(
            store.are_friends(bob, alice),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            store.accept_friend(bob, alice),
            Err(StoreError::Corrupt { .. })
        ));
        store.friends.insert([0u8; 3], [1u8]).unwrap();
        store.usernames.insert("ghost", [1u8; 8]).unwrap();
        assert!(matches!(
            store.user_by_name("ghost"),
            Err(StoreError::Corrupt { .. })
        ));
        store.usernames.insert("short", [1u8; 2]).unwrap();
        assert!(matches!(
            store.user_by_name("short"),
            Err(StoreError::Corrupt { .. })
        ));
        store.meta.insert(keys::NEXT_USER_ID, [1u8; 2]).unwrap();
        assert!(matches!(
            store.counter(keys::NEXT_USER_ID),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn store_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Store>();
    }

    #[test]
    fn hex_round_trip() {
        let raw: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(hex_decode_token(&hex_encode(&raw)), Some(raw));
    }
}
