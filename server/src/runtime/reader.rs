//! The store reader of one core: a thread that runs the reads its core asks
//! for ([`Action::Read`](crate::core::Action::Read)) so a cold read stalls it,
//! not the event loop. Requests go in over one channel and answers come back
//! over another, in the order asked; the reader wakes its core after each
//! answer. Both channels are unbounded, but the core bounds what it has in
//! flight (one read per session, at most `MAX_SYNC_READS_IN_FLIGHT` for syncs
//! per core), so neither grows past that.
//!
//! The thread ends when its core's loop drops the request side. A panic in it
//! fail-stops natterd through the process-wide hook (`supervise.rs`), like a
//! panic in any other thread of ours.

use std::io;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::core::{ReadAnswer, ReadError, ReadRequest, ReadTicket};
use crate::ids::CoreId;
use crate::runtime::Mesh;
use crate::store::Store;

/// The core's side of its reader.
#[derive(Debug)]
pub(crate) struct Reader {
    requests: Sender<(ReadTicket, ReadRequest)>,
    answers: Receiver<(ReadTicket, ReadAnswer)>,
}

impl Reader {
    /// Starts the reader thread of `core`, reading from `store`.
    ///
    /// # Errors
    /// When the thread cannot be created.
    pub(crate) fn start(core: CoreId, store: Arc<Store>, mesh: Mesh) -> io::Result<Self> {
        let (requests, inbox) = crossbeam_channel::unbounded::<(ReadTicket, ReadRequest)>();
        let (outbox, answers) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name(format!("natter-reader-{}", core.0))
            .spawn(move || {
                for (ticket, request) in inbox {
                    let answer = request.run(&*store);
                    if outbox.send((ticket, answer)).is_err() {
                        return;
                    }
                    mesh.wake(core);
                }
            })?;
        Ok(Self { requests, answers })
    }

    /// Hands `request` to the thread. When the thread is gone (it can only
    /// have panicked, which stops natterd), the answer is a failure, at once.
    pub(crate) fn ask(&self, ticket: ReadTicket, request: ReadRequest) -> Option<(ReadTicket, ReadAnswer)> {
        match self.requests.send((ticket, request)) {
            Ok(()) => None,
            Err(crossbeam_channel::SendError((ticket, request))) => {
                let error = ReadError::Unavailable("the store reader has stopped".to_owned());
                Some((ticket, request.failed(error)))
            }
        }
    }

    /// The next answer that has arrived, if any.
    pub(crate) fn answer(&self) -> Option<(ReadTicket, ReadAnswer)> {
        // Empty, or disconnected (the thread is gone; its death stops natterd).
        self.answers.try_recv().ok()
    }
}
