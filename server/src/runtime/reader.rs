//! The store reader of one core: a thread that runs the reads its core asks
//! for ([`Action::Read`](crate::core::Action::Read)) and its token lookups
//! ([`Action::Authenticate`](crate::core::Action::Authenticate)) so a cold
//! read stalls it, not the event loop. Jobs go in over one channel and answers
//! come back over another, in the order asked; the reader wakes its core after
//! each answer. Both channels are unbounded, but what is in flight is bounded
//! elsewhere (one read per session and `MAX_SYNC_READS_IN_FLIGHT` sync reads
//! per core, by the core; one lookup per connection waiting for one), so
//! neither grows past that.
//!
//! The thread ends when its core's loop drops the request side. A panic in it
//! fail-stops natterd through the process-wide hook (`supervise.rs`), like a
//! panic in any other thread of ours.

use std::io;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::core::{
    AuthResult, ChatStore, ConnId, ReadAnswer, ReadError, ReadRequest, ReadTicket, SessionSeed,
};
use crate::ids::{CoreId, UserId};
use crate::runtime::Mesh;
use crate::store::Store;

/// What the reader does for its core.
#[derive(Debug)]
enum Job {
    Read(ReadTicket, ReadRequest),
    /// A token lookup, and the session seed when the user is homed on this
    /// core (`epoch`: the core's friends epoch when it asked).
    Authenticate(ConnId, String, u64),
}

/// What comes back.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The answer to an `Action::Read`, for `Core::handle_read`.
    Read(ReadTicket, ReadAnswer),
    /// A token lookup for `conn`, for `Core::handle_auth` if the connection
    /// still waits for this token.
    Auth {
        /// The connection whose Hello carried the token.
        conn: ConnId,
        /// The token looked up.
        token: String,
        /// What the store said.
        result: AuthResult,
        /// The session's start, read for a user homed on this core (`None`
        /// elsewhere, or when a read failed: the core then reads on the loop).
        seed: Option<SessionSeed>,
    },
}

/// The core's side of its reader.
#[derive(Debug)]
pub(crate) struct Reader {
    jobs: Sender<Job>,
    answers: Receiver<Answer>,
}

impl Reader {
    /// Starts the reader thread of `core`, reading from `store`.
    ///
    /// # Errors
    /// When the thread cannot be created.
    pub(crate) fn start(core: CoreId, cores: usize, store: Arc<Store>, mesh: Mesh) -> io::Result<Self> {
        let (jobs, inbox) = crossbeam_channel::unbounded::<Job>();
        let (outbox, answers) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name(format!("natter-reader-{}", core.0))
            .spawn(move || {
                for job in inbox {
                    let answer = match job {
                        Job::Read(ticket, request) => Answer::Read(ticket, request.run(&*store)),
                        Job::Authenticate(conn, token, epoch) => {
                            let result = lookup(&store, core, &token);
                            let seed = match result {
                                AuthResult::Valid(user, _) if user.home_core(cores) == core => {
                                    seed(&store, user, epoch)
                                }
                                _ => None,
                            };
                            Answer::Auth {
                                conn,
                                token,
                                result,
                                seed,
                            }
                        }
                    };
                    if outbox.send(answer).is_err() {
                        return;
                    }
                    mesh.wake(core);
                }
            })?;
        Ok(Self { jobs, answers })
    }

    /// Hands `request` to the thread. When the thread is gone (it can only
    /// have panicked, which stops natterd), the answer is a failure, at once.
    pub(crate) fn read(&self, ticket: ReadTicket, request: ReadRequest) -> Option<Answer> {
        match self.jobs.send(Job::Read(ticket, request)) {
            Ok(()) => None,
            Err(crossbeam_channel::SendError(job)) => Some(failed(job)),
        }
    }

    /// Hands a token lookup for `conn` to the thread (a failure at once when
    /// the thread is gone); `epoch` is the core's friends epoch now.
    pub(crate) fn authenticate(&self, conn: ConnId, token: String, epoch: u64) -> Option<Answer> {
        match self.jobs.send(Job::Authenticate(conn, token, epoch)) {
            Ok(()) => None,
            Err(crossbeam_channel::SendError(job)) => Some(failed(job)),
        }
    }

    /// The next answer that has arrived, if any.
    pub(crate) fn answer(&self) -> Option<Answer> {
        // Empty, or disconnected (the thread is gone; its death stops natterd).
        self.answers.try_recv().ok()
    }
}

/// The answer for a job the thread never got.
fn failed(job: Job) -> Answer {
    match job {
        Job::Read(ticket, request) => {
            let error = ReadError::Unavailable("the store reader has stopped".to_owned());
            Answer::Read(ticket, request.failed(error))
        }
        Job::Authenticate(conn, token, _) => Answer::Auth {
            conn,
            token,
            result: AuthResult::StoreUnavailable,
            seed: None,
        },
    }
}

/// Looks a token up (a failure is logged and answered `StoreUnavailable`).
fn lookup(store: &Store, core: CoreId, token: &str) -> AuthResult {
    match store.authenticate(token) {
        Ok(Some((user, device))) => AuthResult::Valid(user, device),
        Ok(None) => AuthResult::Invalid,
        Err(e) => {
            tracing::error!(core = core.0, error = %e, "token lookup failed");
            AuthResult::StoreUnavailable
        }
    }
}

/// The friends of `user` and their stored last-seen times (`None` if a read
/// fails: the core reads them itself then).
fn seed(store: &Store, user: UserId, epoch: u64) -> Option<SessionSeed> {
    let friends = ChatStore::friend_ids(store, user).ok()?;
    let mut last_seen = Vec::with_capacity(friends.len());
    for &friend in &friends {
        last_seen.push((friend, ChatStore::last_seen(store, friend).ok()?.unwrap_or(0)));
    }
    Some(SessionSeed {
        epoch,
        friends,
        last_seen,
    })
}
