//! Benchmark accounts: signs up and logs in N users named `{prefix}{i}` with a few
//! HTTP threads, reusing accounts that already exist (a 409 on signup just means
//! "log in").

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use indicatif::ProgressBar;
use natter_client::{ClientError, HttpClient, Login};

use crate::error::BenchError;
use crate::interrupt;

/// The password of every benchmark account.
pub(crate) const PASSWORD: &str = "natter-bench-password";

/// The device name every benchmark login registers.
pub(crate) const DEVICE: &str = "natter-bench";

/// HTTP threads for signups and logins: enough to keep natterd's per-core password
/// hashing busy, few enough not to compete with it for the machine's cores.
const HTTP_THREADS: usize = 8;

/// The outcome of preparing the accounts.
#[derive(Debug)]
pub(crate) struct Accounts {
    /// One entry per user index: the login, or `None` if signup or login failed.
    pub(crate) logins: Vec<Option<Login>>,
    /// How many users could not be signed up or logged in.
    pub(crate) errors: u64,
    /// The first failure, to show the user.
    pub(crate) first_error: Option<String>,
}

/// Signs up (or reuses) and logs in `count` users named `{prefix}{i}`.
///
/// # Errors
/// [`BenchError::Interrupted`] after Ctrl-C; [`BenchError::Setup`] if natterd rate-limits the signups or logins (429): the
/// run cannot be meaningful then, and the message says how to lift the limit.
pub(crate) fn prepare(
    http: &HttpClient,
    prefix: &str,
    count: usize,
    progress: &ProgressBar,
) -> Result<Accounts, BenchError> {
    let rate_limited = AtomicBool::new(false);
    let threads = HTTP_THREADS.min(count.max(1));
    let mut logins: Vec<Option<Login>> = vec![None; count];
    let mut errors = 0;
    let mut first_error = None;
    thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let rate_limited = &rate_limited;
                scope.spawn(move || {
                    let mut done = Vec::new();
                    for i in (t..count).step_by(threads) {
                        if rate_limited.load(Ordering::Relaxed) || interrupt::requested() {
                            break;
                        }
                        let result = sign_up_and_log_in(http, &format!("{prefix}{i}"));
                        if matches!(&result, Err(e) if e.http_status() == Some(429)) {
                            rate_limited.store(true, Ordering::Relaxed);
                        }
                        progress.inc(1);
                        done.push((i, result));
                    }
                    done
                })
            })
            .collect();
        for worker in workers {
            // A worker only panics on a bug; its users then count as failed below.
            let Ok(done) = worker.join() else { continue };
            for (i, result) in done {
                match result {
                    Ok(login) => {
                        if let Some(slot) = logins.get_mut(i) {
                            *slot = Some(login);
                        }
                    }
                    Err(e) => {
                        first_error.get_or_insert_with(|| format!("{prefix}{i}: {e}"));
                    }
                }
            }
        }
    });
    progress.finish_and_clear();
    interrupt::check()?;
    if rate_limited.load(Ordering::Relaxed) {
        return Err(BenchError::Setup(
            "natterd rate-limited the benchmark's signups/logins (HTTP 429); start it with \
             `--auth-rate-limit 100000000` (and, for a quick setup, `--argon2-memory-kib 8 \
             --argon2-iterations 1`), or use --spawn"
                .into(),
        ));
    }
    for login in &logins {
        if login.is_none() {
            errors += 1;
        }
    }
    Ok(Accounts {
        logins,
        errors,
        first_error,
    })
}

/// Signs `username` up (a 409 means it exists: fine) and logs it in.
fn sign_up_and_log_in(http: &HttpClient, username: &str) -> Result<Login, ClientError> {
    match http.signup(username, PASSWORD) {
        Ok(_) => {}
        Err(e) if e.http_status() == Some(409) => {}
        Err(e) => return Err(e),
    }
    http.login(username, PASSWORD, DEVICE)
}
