//! End-to-end: natter's web page (`clients/web`, served by natterd at `/`) in a real headless
//! browser. `scripts/browser-env.sh` installs Debian's `chromium` and the pinned `playwright-core`
//! (once per machine; it fails with a clear message, never skips, when it cannot), then
//! `clients/web/browser-test/two-friends.mjs` starts this build's natterd on free ports with a
//! temporary data dir and drives two pages as two friends: log in through the form, presence,
//! a DM opened by clicking the friend, unread counts, messages in the same order on both pages,
//! natterd killed (both pages show an error) and restarted on the same ports (both reconnect
//! and sync, a message written while it was down arrives once), a reload with history paging
//! back to the first message, and presence going offline when one page closes. Screenshots of
//! both pages go to `target/browser-artifacts/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The scenario's own budget is 150 s; past this the test kills it and fails.
const DEADLINE: Duration = Duration::from_secs(240);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn two_friends_chat_in_two_browser_pages_across_a_natterd_restart() {
    let root = repo_root();
    let setup = Command::new(root.join("scripts/browser-env.sh"))
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .expect("run scripts/browser-env.sh");
    assert!(
        setup.success(),
        "scripts/browser-env.sh failed ({setup}): it says above what is missing"
    );
    let artifacts = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("browser-artifacts");
    let mut child = Command::new("node")
        .arg("two-friends.mjs")
        .current_dir(root.join("clients/web/browser-test"))
        .env("NATTERD", env!("CARGO_BIN_EXE_natterd"))
        .env("ARTIFACTS", &artifacts)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node (Node.js 18 or newer)");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the browser test did not finish within {DEADLINE:?}");
        }
        std::thread::park_timeout(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "the browser scenario failed ({status}); its output is above, screenshots in {}",
        artifacts.display()
    );
    for name in [
        "2-alice-chat",
        "2-bob-chat",
        "3-alice-natterd-down",
        "5-alice-bob-offline",
    ] {
        let shot = artifacts.join(format!("{name}.png"));
        assert!(shot.is_file(), "screenshot {} was not saved", shot.display());
    }
}
