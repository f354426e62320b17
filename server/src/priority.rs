//! CPU priority of natterd's background threads.
//!
//! Every acknowledgement waits on two kinds of thread: the event loops
//! (`natter-core-N`) and the storage writer (`natter-store-writer`), one
//! serial stage that every message passes through. Indexing for search is
//! background work that may lag without anyone waiting for it: the indexer
//! thread (`natter-search`) and the push threads lower their own priority when
//! they start ([`crate::search::INDEXER_NICE`], [`crate::push::PUSH_NICE`]), but
//! tantivy's indexing and merge threads, which do most of the indexing work,
//! are made by the thread that opens the index, at normal priority; they are
//! reniced here to the indexer's value.
//!
//! fjall's flush and compaction workers are deliberately left at normal
//! priority: their work is not optional (left behind, it comes back as
//! fjall's write throttle on the writer), and a 10-minute run with them at
//! nice 5 was no better than one without (`docs/PERFORMANCE.md`, issue 12).
//!
//! Linux keeps nice values per thread (`setpriority(PRIO_PROCESS, tid)`), and a
//! new thread starts with its creator's; raising a nice value needs no
//! privilege. Elsewhere, or when `/proc` is not mounted, nothing changes.

use std::io;

/// Thread-name prefixes (as `/proc/self/task/*/comm` shows them, at most 15
/// bytes) of the background threads, with their nice values.
pub const BACKGROUND: &[(&str, i32)] = &[
    ("thrd-tantivy", crate::search::INDEXER_NICE),
    ("merge_thread_", crate::search::INDEXER_NICE),
    ("segment_update", crate::search::INDEXER_NICE),
    ("docstore-compr", crate::search::INDEXER_NICE),
];

/// Raises the nice value of every thread of this process whose name starts
/// with one of `rules`' prefixes to that rule's value (never lowers one).
/// Returns how many threads it changed.
///
/// # Errors
/// `/proc/self/task` cannot be read. A thread that exits meanwhile is skipped.
pub fn lower_threads(rules: &[(&str, i32)]) -> io::Result<usize> {
    let mut changed = 0;
    for entry in std::fs::read_dir("/proc/self/task")? {
        let Ok(entry) = entry else { continue };
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        let name = comm.trim_end();
        let Some(&(_, nice)) = rules.iter().find(|(prefix, _)| name.starts_with(prefix)) else {
            continue;
        };
        if set_thread_nice(tid, nice)? {
            changed += 1;
        }
    }
    Ok(changed)
}

/// Raises thread `tid`'s nice value to `nice` unless it is that high already.
/// Returns whether it changed it; a thread that has exited is `Ok(false)`.
#[cfg(target_os = "linux")]
fn set_thread_nice(tid: i32, nice: i32) -> io::Result<bool> {
    use rustix::process::{Pid, getpriority_process, setpriority_process};
    let Some(pid) = Pid::from_raw(tid) else {
        return Ok(false);
    };
    match getpriority_process(Some(pid)) {
        Ok(current) if current >= nice => Ok(false),
        Ok(_) => match setpriority_process(Some(pid), nice) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::SRCH) => Ok(false),
            Err(e) => Err(e.into()),
        },
        Err(rustix::io::Errno::SRCH) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Elsewhere nice values are per process: nothing is changed.
#[cfg(not(target_os = "linux"))]
fn set_thread_nice(_tid: i32, _nice: i32) -> io::Result<bool> {
    Ok(false)
}

/// The nice value of thread `tid` of this process (tests and diagnostics).
///
/// # Errors
/// The thread does not exist.
#[cfg(target_os = "linux")]
pub fn thread_nice(tid: i32) -> io::Result<i32> {
    let pid = rustix::process::Pid::from_raw(tid)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "thread id 0"))?;
    Ok(rustix::process::getpriority_process(Some(pid))?)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn only_threads_with_a_matching_name_are_reniced_and_never_lowered() {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let done_rx = std::sync::Arc::new(std::sync::Mutex::new(done_rx));
        let spawn = |name: &str| {
            let tid_tx = tid_tx.clone();
            let done_rx = done_rx.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    tid_tx.send(rustix::thread::gettid().as_raw_nonzero().get()).ok();
                    // Parked until the test has read every nice value.
                    let _ = done_rx.lock().map(|rx| rx.recv());
                })
                .ok()
        };
        let background = spawn("nicetest-bg-a");
        let foreground = spawn("nicetest-fg");
        let (a, b) = (tid_rx.recv().ok(), tid_rx.recv().ok());
        let (Some(a), Some(b)) = (a, b) else {
            panic!("test threads did not start");
        };
        let (bg, fg) = {
            let name_of = |tid: i32| std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"));
            if name_of(a).is_ok_and(|n| n.starts_with("nicetest-bg")) {
                (a, b)
            } else {
                (b, a)
            }
        };
        let before_fg = thread_nice(fg).ok();
        assert_eq!(lower_threads(&[("nicetest-bg", 7)]).ok(), Some(1));
        assert_eq!(thread_nice(bg).ok(), Some(7));
        assert_eq!(
            thread_nice(fg).ok(),
            before_fg,
            "a thread of another name is left alone"
        );
        // A lower value than the current one does not lower it (and needs no privilege).
        assert_eq!(lower_threads(&[("nicetest-bg", 3)]).ok(), Some(0));
        assert_eq!(thread_nice(bg).ok(), Some(7));
        drop(done_tx);
        for handle in [background, foreground].into_iter().flatten() {
            let _ = handle.join();
        }
    }
}
