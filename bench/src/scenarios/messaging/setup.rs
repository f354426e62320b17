//! HTTP setup steps the messaging scenarios share: running many side-port calls on
//! a few threads ([`in_parallel`]) and making two users friends ([`befriend`]) —
//! both safe to repeat, since accounts, friendships and chats are reused across runs.

use std::thread;

use indicatif::ProgressBar;
use natter_client::{ClientError, FriendStatus, HttpClient, Login};

use crate::error::BenchError;
use crate::interrupt;

/// HTTP threads for setup calls: each call waits for one fsync on the server, so a
/// few in parallel share its group commits; more would only compete for the cores.
const SETUP_THREADS: usize = 8;

/// Runs `work` on every item with a few threads and returns the results in item
/// order, advancing `bar` once per item.
///
/// # Errors
/// [`BenchError::Interrupted`] after Ctrl-C (the remaining items are skipped).
pub(crate) fn in_parallel<T, R, F>(items: &[T], bar: &ProgressBar, work: F) -> Result<Vec<R>, BenchError>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    let threads = SETUP_THREADS.min(items.len()).max(1);
    let mut done: Vec<(usize, R)> = thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let work = &work;
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for (i, item) in items.iter().enumerate().skip(t).step_by(threads) {
                        if interrupt::requested() {
                            break;
                        }
                        out.push((i, work(item)));
                        bar.inc(1);
                    }
                    out
                })
            })
            .collect();
        // A worker only panics on a bug; its items are then missing and reported below.
        workers
            .into_iter()
            .filter_map(|w| w.join().ok())
            .flatten()
            .collect()
    });
    bar.finish_and_clear();
    interrupt::check()?;
    if done.len() != items.len() {
        return Err(BenchError::Setup("a setup thread failed".into()));
    }
    done.sort_unstable_by_key(|(i, _)| *i);
    Ok(done.into_iter().map(|(_, r)| r).collect())
}

/// Makes `a` and `b` (username `b_name`) friends: `a` asks, `b` accepts unless the
/// two already are friends (asking again is harmless).
///
/// # Errors
/// The first call that failed.
pub(crate) fn befriend(http: &HttpClient, a: &Login, b: &Login, b_name: &str) -> Result<(), ClientError> {
    match http.friend_request(&a.token, b_name)? {
        FriendStatus::Friends => Ok(()),
        _ => http.accept_friend(&b.token, a.user_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_item_order() {
        let items: Vec<u64> = (0..100).collect();
        let squares = in_parallel(&items, &ProgressBar::hidden(), |x| x * x).unwrap();
        assert_eq!(squares, items.iter().map(|x| x * x).collect::<Vec<_>>());
        let none: Vec<u64> = in_parallel(&[] as &[u64], &ProgressBar::hidden(), |x| *x).unwrap();
        assert!(none.is_empty());
    }
}
