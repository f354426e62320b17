//! End-to-end tests of the `natter` binary: real natterd processes, several CLIs with
//! their own profiles talking through them, `tail` and `chat` under pseudo-terminals, a
//! natterd restart under a running `tail`, and bad input at the edges.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt;

use support::{PASSWORD, User, one_line_failure};

/// The `N unread` column of `natter chats` for the chat named `name`.
fn unread(chats: &str, name: &str) -> u64 {
    let line = chats
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some(name))
        .unwrap_or_else(|| panic!("no chat {name} in {chats:?}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.last(), Some(&"unread"), "{line}");
    words[words.len() - 2].parse().unwrap()
}

/// `a` (called `a_name`) and `b` (`b_name`) become friends through the CLI: request,
/// list, accept.
fn befriend(a: &User, a_name: &str, b: &User, b_name: &str) {
    let asked = a.ok(&["friends", "add", b_name]);
    assert!(
        asked.contains(&format!("friend request sent to {b_name}")),
        "{asked}"
    );
    let listed = b.ok(&["friends"]);
    assert!(
        listed.contains(a_name) && listed.contains("asked to be your friend"),
        "{listed}"
    );
    let accepted = b.ok(&["friends", "accept", a_name]);
    assert!(
        accepted.contains(&format!("you and {a_name} are friends")),
        "{accepted}"
    );
}

#[test]
fn two_clis_befriend_send_read_history_and_count_unread() {
    let server = support::start();
    let (alice, bob, carol) = (User::new(), User::new(), User::new());
    alice.signup(&server, "alice");
    bob.signup(&server, "bob");
    carol.signup(&server, "carol");
    befriend(&alice, "alice", &bob, "bob");
    let listed = alice.ok(&["friends"]);
    assert!(
        listed.contains("bob") && listed.contains("offline, never seen"),
        "{listed}"
    );

    // A friend's name opens the direct chat; several words are one text; `-` reads stdin.
    assert!(
        alice
            .ok(&["send", "bob", "hello", "bob"])
            .contains("sent #1 to bob")
    );
    let out = alice.run_with_stdin(&["send", "bob", "-"], "second line\nand more\n".as_bytes());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("sent #2 to bob"));

    // Bob has two unread, alice none (her own messages are read by her).
    let bob_chats = bob.ok(&["chats"]);
    assert_eq!(unread(&bob_chats, "alice"), 2, "{bob_chats}");
    assert_eq!(unread(&alice.ok(&["chats"]), "bob"), 0);

    // History: oldest first, continuation lines indented; reading marks the chat read.
    let history = bob.ok(&["history", "alice"]);
    let first = history.find("alice: hello bob").expect(&history);
    let second = history.find("alice: second line\n    and more").expect(&history);
    assert!(first < second, "{history}");
    assert_eq!(unread(&bob.ok(&["chats"]), "alice"), 0);

    // `dm` names the chat id; `#ID` addresses the same chat.
    let dm = bob.ok(&["dm", "alice"]);
    let id = dm.split_whitespace().next().unwrap().to_owned();
    assert!(id.starts_with('#'), "{dm}");
    assert!(bob.ok(&["send", &id, "by id"]).contains("sent #3 to alice"));
    assert!(
        alice
            .ok(&["history", "bob", "--limit", "1"])
            .contains("bob: by id")
    );
    assert!(
        !alice
            .ok(&["history", "bob", "--limit", "1"])
            .contains("hello bob")
    );

    // Groups: create with a friend, add and remove a member, send by the group's name.
    befriend(&alice, "alice", &carol, "carol");
    assert!(
        alice
            .ok(&["group", "create", "the-crew", "bob"])
            .contains("group the-crew created")
    );
    assert!(
        alice
            .ok(&["group", "add", "the-crew", "carol"])
            .contains("added carol to the-crew")
    );
    assert!(
        alice
            .ok(&["send", "the-crew", "hi crew"])
            .contains("sent #1 to the-crew")
    );
    assert!(carol.ok(&["history", "the-crew"]).contains("alice: hi crew"));
    assert!(
        bob.ok(&["send", "the-crew", "hi from bob"])
            .contains("sent #2 to the-crew")
    );
    assert_eq!(unread(&carol.ok(&["chats"]), "the-crew"), 1);
    assert!(
        alice
            .ok(&["group", "remove", "the-crew", "carol"])
            .contains("removed carol")
    );
    let gone = one_line_failure(&carol.run(&["history", "the-crew"]));
    assert!(gone.contains("unknown chat"), "{gone}");
    let history = alice.ok(&["history", "the-crew"]);
    assert!(history.contains("bob: hi from bob"), "{history}");

    // Unfriending: carol is gone from alice's list.
    assert!(
        alice
            .ok(&["friends", "remove", "carol"])
            .contains("removed carol")
    );
    assert!(!alice.ok(&["friends"]).contains("carol"));
}

#[test]
fn login_keeps_a_private_token_and_logout_forgets_it() {
    let server = support::start();
    let alice = User::new();
    alice.signup(&server, "alice");
    let session = alice.profile.join("session.json");
    let mode = std::fs::metadata(&session).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the token file is private");
    let device = std::fs::read_to_string(alice.profile.join("device-id")).unwrap();

    // The password from the environment; the same device id after a new login.
    let out = alice
        .command(&["--server", &server.url(), "login", "alice"])
        .env("NATTER_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(alice.profile.join("device-id")).unwrap(),
        device
    );

    assert!(alice.ok(&["logout"]).contains("logged out alice"));
    assert!(!session.exists());
    let line = one_line_failure(&alice.run(&["chats"]));
    assert!(line.contains("not logged in"), "{line}");

    // A token revoked behind the profile's back: one line telling to log in again.
    alice.ok(&[
        "--server",
        &server.url(),
        "login",
        "alice",
        "--password",
        PASSWORD,
    ]);
    let token: serde_json::Value = serde_json::from_slice(&std::fs::read(&session).unwrap()).unwrap();
    let stale = std::fs::read(&session).unwrap();
    alice.ok(&["logout"]);
    std::fs::write(&session, stale).unwrap();
    assert!(token["token"].is_string());
    let line = one_line_failure(&alice.run(&["chats"]));
    assert!(
        line.contains("no longer valid") && line.contains("natter login alice"),
        "{line}"
    );
}

#[test]
fn bad_input_is_refused_with_one_line_and_a_nonzero_exit() {
    let mut server = support::start();
    let (alice, bob) = (User::new(), User::new());
    alice.signup(&server, "alice");
    bob.signup(&server, "bob");
    befriend(&alice, "alice", &bob, "bob");

    // Empty and blank messages, as an argument and on stdin.
    for out in [
        alice.run(&["send", "bob", ""]),
        alice.run(&["send", "bob", "  "]),
        alice.run_with_stdin(&["send", "bob", "-"], b"\n"),
    ] {
        let line = one_line_failure(&out);
        assert!(line.contains("empty message"), "{line}");
    }
    // Over-long: 100,001 characters (the limit is 100,000), as an argument and on stdin.
    let long = "x".repeat(100_001);
    for out in [
        alice.run(&["send", "bob", &long]),
        alice.run_with_stdin(&["send", "bob", "-"], "é".repeat(100_001).as_bytes()),
    ] {
        let line = one_line_failure(&out);
        assert!(line.contains("too long") && line.contains("100001"), "{line}");
    }
    // Far more than any legal text on stdin: refused without reading it all.
    let line = one_line_failure(&alice.run_with_stdin(&["send", "bob", "-"], &vec![b'x'; 1 << 20]));
    assert!(line.contains("too long"), "{line}");
    // Nothing reached the server: bob has no chat with alice yet (no DM was even opened).
    assert!(bob.ok(&["chats"]).contains("no chats yet"));
    // The longest legal text goes through.
    let longest = "y".repeat(100_000);
    assert!(alice.ok(&["send", "bob", &longest]).contains("sent #1 to bob"));

    // Unknown chat, bad #ID, a stranger, a missing subcommand.
    for (args, expect) in [
        (vec!["send", "nobody", "hi"], "unknown chat"),
        (vec!["send", "#999", "hi"], "unknown chat #999"),
        (vec!["send", "#x1", "hi"], "not a chat id"),
        (vec!["history", "nobody"], "unknown chat"),
        (
            vec!["friends", "accept", "nobody"],
            "no friend request from nobody",
        ),
        (vec!["friends", "add", "nobody"], "user_not_found"),
        (vec!["group", "create", "g", "nobody"], "not your friend"),
        (vec!["frobnicate"], "unrecognized subcommand"),
        (
            vec!["send", "bob"],
            "required arguments were not provided: <TEXT>",
        ),
    ] {
        let line = one_line_failure(&alice.run(&args));
        assert!(line.contains(expect), "{args:?}: {line}");
    }

    // Signup refusals come with the server's code.
    let taken = one_line_failure(&User::new().run(&[
        "--server",
        &server.url(),
        "signup",
        "alice",
        "--password",
        PASSWORD,
    ]));
    assert!(taken.contains("(username_taken)"), "{taken}");
    let invalid = one_line_failure(&User::new().run(&[
        "--server",
        &server.url(),
        "signup",
        "A!",
        "--password",
        PASSWORD,
    ]));
    assert!(invalid.contains("(invalid_username)"), "{invalid}");
    let short = one_line_failure(&User::new().run(&[
        "--server",
        &server.url(),
        "signup",
        "dave",
        "--password",
        "short",
    ]));
    assert!(short.contains("(invalid_password)"), "{short}");

    // Wrong password: refused, and the profile keeps its working session.
    let line = one_line_failure(&alice.run(&["login", "alice", "--password", "wrong password"]));
    assert!(line.contains("wrong username or password"), "{line}");
    alice.ok(&["chats"]);

    // natterd down: the side-port does not answer.
    server.kill9();
    let line = one_line_failure(&alice.run(&["chats"]));
    assert!(line.contains("cannot reach natterd"), "{line}");
    let line = one_line_failure(&User::new().run(&[
        "--server",
        &server.url(),
        "login",
        "x",
        "--password",
        PASSWORD,
    ]));
    assert!(line.contains("cannot reach natterd"), "{line}");
}

#[test]
fn tail_under_a_pty_shows_messages_and_presence_until_ctrl_c() {
    let server = support::start();
    let (alice, bob) = (User::new(), User::new());
    alice.signup(&server, "alice");
    bob.signup(&server, "bob");
    befriend(&alice, "alice", &bob, "bob");
    alice.ok(&["send", "bob", "before tail"]);

    let tail = bob.spawn_pty(&["tail"]);
    // Sync first: what was sent before tail started.
    tail.expect("[alice] alice: before tail");
    // Over the best transport the endpoints offer: TLS, the certificate pinned.
    tail.expect(&format!("synced over tls://127.0.0.1:{}", server.tls_port));
    alice.ok(&["send", "bob", "while tailing"]);
    tail.expect("[alice] alice: while tailing");

    // Presence: alice's `chat` session brings her online, its end takes her offline.
    let mut chat = alice.spawn_pty(&["chat", "bob"]);
    tail.expect("* alice is online");
    chat.expect("bob is online");
    chat.type_text("\x04");
    assert!(chat.wait().success(), "{}", chat.screen());
    tail.expect("* alice is offline (last seen");

    // Ctrl-C on the terminal ends tail (status 130, as for any command a shell interrupts).
    let mut tail = tail;
    tail.type_text("\x03");
    let status = tail.wait();
    assert_eq!(status.code(), Some(130), "tail ends on Ctrl-C: {status:?}");
    let screen = tail.screen();
    assert_eq!(screen.matches("alice: before tail").count(), 1, "{screen}");
    assert_eq!(screen.matches("alice: while tailing").count(), 1, "{screen}");

    // The next tail of the profile resumes after what the last one printed.
    alice.ok(&["send", "bob", "between tails"]);
    let mut again = bob.spawn_pty(&["tail"]);
    again.expect("synced");
    again.expect("alice: between tails");
    again.interrupt();
    assert_eq!(again.wait().code(), Some(130));
    let screen = again.screen();
    assert!(
        !screen.contains("before tail") && !screen.contains("while tailing"),
        "{screen}"
    );
}

#[test]
fn chat_under_ptys_is_a_live_conversation_and_ctrl_d_leaves() {
    let server = support::start();
    let (alice, bob) = (User::new(), User::new());
    alice.signup(&server, "alice");
    bob.signup(&server, "bob");
    befriend(&alice, "alice", &bob, "bob");
    alice.ok(&["send", "bob", "earlier"]);

    let mut a = alice.spawn_pty(&["chat", "bob"]);
    let mut b = bob.spawn_pty(&["chat", "alice"]);
    // Each shows the earlier message, then the other coming online.
    a.expect("alice: earlier");
    b.expect("alice: earlier");
    a.expect("* bob is online");

    a.type_text("hi bob\n");
    b.expect("alice: hi bob");
    a.expect("alice: hi bob");
    b.type_text("hi alice\n");
    a.expect("bob: hi alice");
    // An empty line is not sent (an over-long one is tested through a pipe below: a
    // terminal's line editor takes at most 4,096 bytes per line).
    b.type_text("\n");
    for i in 0..5 {
        a.type_text(&format!("burst {i}\n"));
    }
    b.expect("alice: burst 4");

    a.type_text("\x04");
    assert!(a.wait().success(), "{}", a.screen());
    b.expect("* alice is offline");
    b.type_text("\x04");
    assert!(b.wait().success(), "{}", b.screen());

    // Both saw the conversation once each, in the same order.
    let order = [
        "earlier", "hi bob", "hi alice", "burst 0", "burst 1", "burst 2", "burst 3", "burst 4",
    ];
    for screen in [a.screen(), b.screen()] {
        let mut at = 0;
        for text in order {
            let needle = format!(": {text}\n");
            assert_eq!(screen.matches(&needle).count(), 1, "{text:?} once in:\n{screen}");
            let pos = screen.find(&needle).unwrap();
            assert!(pos >= at, "{text:?} out of order in:\n{screen}");
            at = pos;
        }
    }
    // `chat` with its input from a pipe: the over-long line is refused with one line on
    // stderr, the good one is sent, end of input ends it.
    let input = format!("{}\nafter the long one\n", "z".repeat(100_001));
    let out = bob.run_with_stdin(&["chat", "alice"], input.as_bytes());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("message too long").count(), 1, "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("bob: after the long one"));
    // Reading in `chat` marks the chat read.
    assert_eq!(unread(&bob.ok(&["chats"]), "alice"), 0);
    let history = bob.ok(&["history", "alice"]);
    assert_eq!(history.matches("burst").count(), 5, "{history}");
}

#[test]
fn tail_survives_a_natterd_restart_without_duplicates_or_gaps() {
    let mut server = support::start();
    let (alice, bob) = (User::new(), User::new());
    alice.signup(&server, "alice");
    bob.signup(&server, "bob");
    befriend(&alice, "alice", &bob, "bob");

    let mut tail = bob.spawn_pty(&["tail"]);
    tail.expect("synced over tls://");
    for i in 1..=3 {
        alice.ok(&["send", "bob", &format!("before restart {i}")]);
    }
    tail.expect("alice: before restart 3");

    // kill -9: tail notices, keeps trying; sends fail with one line meanwhile.
    server.kill9();
    tail.expect("reconnecting");
    let line = one_line_failure(&alice.run(&["send", "bob", "while down"]));
    assert!(line.contains("cannot reach natterd"), "{line}");

    server.start_again();
    // Sent before tail is back (it is still in its backoff, most likely): comes by sync.
    alice.ok(&["send", "bob", "after restart 1"]);
    tail.expect("reconnected");
    // Sent after: comes as live pushes.
    for i in 2..=3 {
        alice.ok(&["send", "bob", &format!("after restart {i}")]);
    }
    tail.expect("alice: after restart 3");

    tail.interrupt();
    tail.wait();
    let screen = tail.screen();
    let lines: Vec<&str> = screen.lines().filter(|l| l.contains("[alice] alice: ")).collect();
    let texts: Vec<&str> = lines.iter().map(|l| l.split("alice: ").nth(1).unwrap()).collect();
    assert_eq!(
        texts,
        [
            "before restart 1",
            "before restart 2",
            "before restart 3",
            "after restart 1",
            "after restart 2",
            "after restart 3"
        ],
        "each message once, in order:\n{screen}"
    );
}

#[test]
fn without_tls_the_cli_falls_back_to_tcp() {
    let server = support::start_with(&["--tls-port", "off"]);
    let (alice, bob) = (User::new(), User::new());
    alice.signup(&server, "alice");
    bob.signup(&server, "bob");
    befriend(&alice, "alice", &bob, "bob");
    alice.ok(&["send", "bob", "over tcp"]);
    let mut tail = bob.spawn_pty(&["tail"]);
    tail.expect(&format!("synced over tcp://{}", server.tcp));
    tail.expect("alice: over tcp");
    tail.interrupt();
    assert_eq!(tail.wait().code(), Some(130));
}

/// The sum over cores of a `/metrics` counter, e.g. `natter_accepted_total`.
fn metric_sum(server: &support::Server, name: &str) -> f64 {
    let text = natter_client::HttpClient::new(&server.url()).metrics().unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn tail_pings_a_server_with_a_short_heartbeat_and_stays_connected() {
    // Sessions silent for 600 ms are closed; Welcome asks for a frame every 200 ms.
    let server = support::start_with(&["--heartbeat-timeout", "600ms"]);
    let bob = User::new();
    bob.signup(&server, "bob");
    let tail = bob.spawn_pty(&["tail"]);
    tail.expect("synced");
    // About four seconds of heartbeats (Hello, Sync, then a Ping every 200 ms).
    assert!(support::wait_until(|| metric_sum(
        &server,
        "natter_frames_in_total"
    ) >= 20.0));
    assert_eq!(
        metric_sum(&server, "natter_accepted_total"),
        1.0,
        "tail never reconnected"
    );
    assert!(!tail.screen().contains("reconnecting"), "{}", tail.screen());
}

#[test]
fn login_prompts_for_the_password_without_echo() {
    let server = support::start();
    let alice = User::new();
    alice.signup(&server, "alice");
    alice.ok(&["logout"]);
    let mut login = alice.spawn_pty(&["--server", &server.url(), "login", "alice"]);
    login.expect("password for alice: ");
    login.type_text(&format!("{PASSWORD}\n"));
    let status = login.wait();
    assert!(status.success(), "{status:?}: {}", login.screen());
    let screen = login.screen();
    assert!(screen.contains("logged in as alice"), "{screen}");
    assert!(!screen.contains(PASSWORD), "the password was echoed: {screen}");
    alice.ok(&["chats"]);
}

#[test]
fn chat_sends_lines_typed_while_natterd_is_down_once_and_in_order() {
    let mut server = support::start();
    let (alice, bob) = (User::new(), User::new());
    alice.signup(&server, "alice");
    bob.signup(&server, "bob");
    befriend(&alice, "alice", &bob, "bob");
    let mut chat = alice.spawn_pty(&["chat", "bob"]);
    chat.expect("Ctrl-D leaves");
    chat.type_text("one\n");
    chat.expect("alice: one");

    server.kill9();
    chat.expect("reconnecting");
    for text in ["two", "three", "four"] {
        chat.type_text(&format!("{text}\n"));
    }
    server.start_again();
    chat.expect("reconnected");
    chat.expect("alice: four");
    chat.type_text("\x04");
    assert!(chat.wait().success(), "{}", chat.screen());

    let history = bob.ok(&["history", "alice"]);
    let texts: Vec<&str> = history
        .lines()
        .map(|l| l.split("alice: ").nth(1).unwrap())
        .collect();
    assert_eq!(texts, ["one", "two", "three", "four"], "{history}");
}

#[test]
fn tail_into_a_closed_pipe_exits_quietly() {
    use std::io::BufRead;
    let server = support::start();
    let (alice, bob) = (User::new(), User::new());
    alice.signup(&server, "alice");
    bob.signup(&server, "bob");
    befriend(&alice, "alice", &bob, "bob");
    alice.ok(&["send", "bob", "first"]);
    // `natter tail | head -1`
    let mut tail = bob
        .command(&["tail"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(tail.stdout.take().unwrap()).lines();
    let first = lines
        .find(|l| l.as_ref().unwrap().contains("alice: "))
        .unwrap()
        .unwrap();
    assert!(first.ends_with("alice: first"), "{first}");
    drop(lines);
    // The next line tail writes finds the pipe closed.
    let mut n = 0;
    let exited = support::wait_until(|| {
        n += 1;
        alice.ok(&["send", "bob", &format!("more {n}")]);
        tail.try_wait().unwrap().is_some()
    });
    assert!(exited, "tail kept running with nobody reading");
    let out = tail.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn search_finds_a_message_by_a_folded_word_and_marks_the_match() {
    let server = support::start();
    let (alice, bob, carol) = (User::new(), User::new(), User::new());
    alice.signup(&server, "alice");
    bob.signup(&server, "bob");
    carol.signup(&server, "carol");
    befriend(&alice, "alice", &bob, "bob");
    alice.ok(&["send", "bob", "meet", "at", "the", "Café", "Crème"]);
    // The index follows the store within about a second: poll with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let found = loop {
        let out = bob.ok(&["search", "cafe"]);
        if out.contains("*Café*") || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::park_timeout(std::time::Duration::from_millis(100));
    };
    assert!(
        found.contains("[alice] alice #1: meet at the *Café* Crème"),
        "{found}"
    );
    assert!(
        bob.ok(&["search", "crème", "--chat", "alice"])
            .contains("*Crème*")
    );
    assert!(carol.ok(&["search", "cafe"]).contains("no messages match"));
    let refused = one_line_failure(&bob.run(&["search", "\"unclosed"]));
    assert!(refused.contains("unclosed quote"), "{refused}");
}
