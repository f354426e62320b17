//! Fail-stop supervision: if a thread natterd cannot run without dies, the
//! process exits non-zero at once instead of limping on (the other cores
//! polling, sends queued and never acknowledged). Clients see their
//! connections close and resend; nothing acknowledged is lost, since every
//! acknowledgement followed an `fdatasync`.
//!
//! Two ways a thread dies, two watchers:
//! * **A panic** on an essential thread (a core, the storage writer, the HTTP
//!   side-port's I/O loop, fjall's or any other thread we did not name): the
//!   panic hook ([`install_panic_hook`]) writes the panic message (ignoring
//!   write errors) and exits from the panicking thread, before any unwinding.
//!   The exit code is [`POISON_EXIT_CODE`] when the store is poisoned — so the
//!   storage failure path exits 70 even if logging the failure is what
//!   panicked — or when the dying thread is the storage writer (whatever
//!   killed it, what it held is neither committed nor acknowledged: a storage
//!   failure), and [`THREAD_DIED_EXIT_CODE`] otherwise. The HTTP handler
//!   threads (`natter-http-N`) are the exception: the side-port catches a
//!   handler's panic by design and answers 500, so a panic there is fatal
//!   only when the store is poisoned.
//! * **A return** without a panic (a core's loop failing on an I/O error, the
//!   writer thread ending before shutdown): the main thread checks the thread
//!   handles every [`SUPERVISE_INTERVAL`] (`Server::check_threads`) and calls
//!   [`fail_stop`].
//!
//! Nothing here depends on logging working: messages go straight to stderr
//! with errors ignored.

use std::sync::Weak;
use std::time::Duration;

use crate::logging;
use crate::store::writer::WRITER_THREAD;
use crate::store::{POISON_EXIT_CODE, Store};

/// Exit code when an essential thread died and the store is not poisoned
/// ("any other failure" in `docs/DURABILITY.md`).
pub const THREAD_DIED_EXIT_CODE: i32 = 1;

/// How often the main thread checks that every essential thread still runs:
/// a thread that returns early is noticed within this, well inside the
/// one-second fail-stop promise, at the cost of ten cheap checks a second.
pub const SUPERVISE_INTERVAL: Duration = Duration::from_millis(100);

/// Prefix of the HTTP handler threads' names, whose panics the side-port
/// catches (and answers with 500) by design.
const HTTP_HANDLER_PREFIX: &str = "natter-http-";
/// The HTTP side-port's I/O thread: essential, unlike the handlers.
const HTTP_IO_THREAD: &str = "natter-http-io";

/// Installs the process-wide panic hook described in the module docs. `store`
/// tells whether the store is poisoned when a panic happens (a dangling weak
/// reference counts as not poisoned). The previous hook (std's, which prints
/// the message and ignores write errors) runs first.
pub fn install_panic_hook(store: Weak<Store>) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let poisoned = store.upgrade().is_some_and(|s| s.is_poisoned());
        let handler = name.starts_with(HTTP_HANDLER_PREFIX) && name != HTTP_IO_THREAD;
        if handler && !poisoned {
            return;
        }
        let code = if poisoned || name == WRITER_THREAD {
            POISON_EXIT_CODE
        } else {
            THREAD_DIED_EXIT_CODE
        };
        fail_stop(code, &format!("thread {name} panicked"));
    }));
}

/// Writes `natterd: <why>; exiting with code <code>` to stderr (ignoring any
/// write error) and exits the process with `code`, from the calling thread.
pub fn fail_stop(code: i32, why: &str) -> ! {
    logging::stderr_line(&format!("natterd: {why}; exiting with code {code}"));
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::time::Instant;

    use super::*;

    const CHILD_ENV: &str = "NATTER_SUPERVISE_CHILD";

    /// A core thread that panics ends the process within a second, with
    /// [`THREAD_DIED_EXIT_CODE`], while the test's main thread would otherwise
    /// wait forever (run in a child process, as the hook exits it).
    #[test]
    fn a_panicking_core_thread_ends_the_process_at_once() {
        let started = Instant::now();
        let output = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "runtime::supervise::tests::panic_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(THREAD_DIED_EXIT_CODE), "{stderr}");
        assert!(stderr.contains("thread natter-core-7 panicked"), "{stderr}");
        // Process start-up included; the exit itself is immediate.
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    /// A handler thread's panic is caught by the side-port: not fatal.
    #[test]
    fn an_http_handler_panic_is_not_fatal() {
        let output = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "runtime::supervise::tests::handler_panic_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The storage writer's death is a storage failure: code 70.
    #[test]
    fn a_panicking_writer_thread_exits_70() {
        let output = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "runtime::supervise::tests::panic_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, WRITER_THREAD)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(POISON_EXIT_CODE), "{stderr}");
        assert!(stderr.contains("thread natter-store-writer panicked"), "{stderr}");
    }

    #[test]
    #[ignore = "run by a_panicking_core_thread_ends_the_process_at_once in a child process"]
    fn panic_child() {
        let Some(name) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let name = match name.to_str() {
            Some("1") | None => "natter-core-7".to_owned(),
            Some(other) => other.to_owned(),
        };
        install_panic_hook(Weak::new());
        let core = std::thread::Builder::new()
            .name(name)
            .spawn(|| panic!("injected"))
            .unwrap();
        let _ = core.join();
        // Reached only if the hook did not exit: a code the parent does not accept.
        std::process::exit(3);
    }

    #[test]
    #[ignore = "run by an_http_handler_panic_is_not_fatal in a child process"]
    fn handler_panic_child() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        install_panic_hook(Weak::new());
        let handler = std::thread::Builder::new()
            .name("natter-http-3".into())
            .spawn(|| std::panic::catch_unwind(|| panic!("a handler bug")).is_err())
            .unwrap();
        assert!(handler.join().unwrap());
    }
}
