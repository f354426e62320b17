//! End-to-end: message search (issue 16) against a real natterd — results
//! equal a brute-force scan of the caller's chats, membership is read at
//! query time (a non-member never sees a hit, a removed member loses them at
//! once), CJK and accented text, a 100,000-character message, edits and
//! deletes, bad queries and the rate limit, kill -9 in the middle of indexing
//! and `natterd reindex` converge to exactly the stored messages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use natter_client::{Connection, Login, SearchOptions};
use natter_wire::{Body, Delete, Edit, Frame, Send};
use support::{TestServer, start_with, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);

fn server() -> TestServer {
    start_with(&["--send-rate-limit", "1000000", "--quic-port", "off"])
}

fn befriend(server: &TestServer, a: &Login, b: &Login, b_name: &str) {
    let http = server.client();
    http.friend_request(&a.token, b_name).unwrap();
    http.accept_friend(&b.token, a.user_id).unwrap();
}

/// A conversation session (edits and deletes need one).
fn connect(server: &TestServer, login: &Login) -> Connection {
    let mut conn = Connection::open(server.tcp).unwrap();
    conn.hello_conversation(&login.token, "test", false).unwrap();
    conn
}

/// Waits for the answer to request `rid`, skipping pushes.
fn answer(conn: &mut Connection, rid: u64) -> Frame {
    let start = Instant::now();
    loop {
        let left = DEADLINE.saturating_sub(start.elapsed());
        let frame = conn
            .recv_timeout(left)
            .unwrap()
            .unwrap_or_else(|| panic!("no answer to request {rid} within {DEADLINE:?}"));
        if frame.request_id == rid {
            return frame;
        }
    }
}

/// Sends `texts` to `chat`, pipelined in windows of 64; returns their seqs in order.
fn send_all(conn: &mut Connection, chat: u64, cmid_base: u64, texts: &[String]) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(texts.len());
    for (w, window) in texts.chunks(64).enumerate() {
        let rids: Vec<u64> = window
            .iter()
            .enumerate()
            .map(|(i, text)| {
                conn.send_body(Body::Send(Send {
                    chat_id: chat,
                    client_msg_id: cmid_base + (w * 64 + i) as u64,
                    text: text.clone(),
                }))
                .unwrap()
            })
            .collect();
        for rid in rids {
            match answer(conn, rid).body {
                Body::SendOk(ok) => seqs.push(ok.seq),
                other => panic!("expected SendOk, got {other:?}"),
            }
        }
    }
    seqs
}

fn send(conn: &mut Connection, chat: u64, cmid: u64, text: &str) -> u64 {
    send_all(conn, chat, cmid, &[text.to_owned()])[0]
}

fn edit(conn: &mut Connection, chat: u64, target: u64, cmid: u64, text: &str) {
    let rid = conn
        .send_body(Body::Edit(Edit {
            chat_id: chat,
            target_seq: target,
            client_msg_id: cmid,
            text: text.into(),
        }))
        .unwrap();
    assert!(matches!(answer(conn, rid).body, Body::SendOk(_)), "edit refused");
}

fn delete(conn: &mut Connection, chat: u64, target: u64, cmid: u64) {
    let rid = conn
        .send_body(Body::Delete(Delete {
            chat_id: chat,
            target_seq: target,
            client_msg_id: cmid,
        }))
        .unwrap();
    assert!(
        matches!(answer(conn, rid).body, Body::SendOk(_)),
        "delete refused"
    );
}

/// Waits until every committed message record is searchable: the lag is 0
/// and at least `records` were handed to the indexer since this natterd started.
fn wait_indexed(server: &TestServer, records: u64) {
    let ok = wait_until(DEADLINE, || {
        server.metric("natter_search_lag_messages") == Some(0.0)
            && server.metric("natter_search_observed_total").unwrap_or(0.0) >= records as f64
    });
    assert!(ok, "the index did not catch up within {DEADLINE:?}");
}

/// Waits until the index holds exactly `docs` documents.
fn wait_docs(server: &TestServer, docs: u64) {
    let ok = wait_until(DEADLINE, || {
        server.metric("natter_search_docs") == Some(docs as f64)
            && server.metric("natter_search_lag_messages") == Some(0.0)
    });
    assert!(
        ok,
        "the index holds {:?} documents, not {docs}",
        server.metric("natter_search_docs")
    );
}

fn hits(server: &TestServer, login: &Login, q: &str, options: &SearchOptions) -> BTreeSet<(u64, u64)> {
    let answer = server
        .client()
        .search(&login.token, q, options)
        .unwrap_or_else(|e| panic!("search {q:?}: {e}"));
    assert!(!answer.partial, "{q:?} hit the time budget");
    answer.hits.iter().map(|h| (h.chat_id, h.seq)).collect()
}

fn all(limit: u32) -> SearchOptions {
    SearchOptions {
        limit: Some(limit),
        ..SearchOptions::default()
    }
}

fn status(server: &TestServer, login: &Login, path: &str) -> (u16, serde_json::Value) {
    let r = server
        .client()
        .raw_request("GET", path, Some(&login.token), None)
        .unwrap();
    (r.status, r.json().unwrap_or_default())
}

/// A small deterministic generator (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

const WORDS: [&str; 8] = [
    "apple", "Banana", "cherry", "DATE", "elder", "fig", "grape", "honeydew",
];

#[test]
fn results_equal_a_brute_force_scan_of_the_callers_chats() {
    let server = server();
    let alice = server.user("alice");
    let bob = server.user("bob");
    let carol = server.user("carol");
    befriend(&server, &alice, &bob, "bob");
    befriend(&server, &bob, &carol, "carol");
    befriend(&server, &alice, &carol, "carol");
    let http = server.client();
    let ab = http.direct_chat(&alice.token, bob.user_id).unwrap();
    let bc = http.direct_chat(&bob.token, carol.user_id).unwrap();
    let group = http
        .create_group(&alice.token, "fruit", &[bob.user_id, carol.user_id])
        .unwrap();
    let members: HashMap<u64, Vec<u64>> = HashMap::from([
        (ab, vec![alice.user_id, bob.user_id]),
        (bc, vec![bob.user_id, carol.user_id]),
        (group, vec![alice.user_id, bob.user_id, carol.user_id]),
    ]);
    let mut bob_conn = connect(&server, &bob);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // (chat, seq) → the words of the text
    let mut stored: Vec<(u64, u64, Vec<String>)> = Vec::new();
    for (i, chat) in [ab, bc, group].into_iter().enumerate() {
        let texts: Vec<String> = (0..30)
            .map(|_| {
                let n = 1 + rng.next(4);
                (0..n)
                    .map(|_| WORDS[rng.next(WORDS.len())])
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .collect();
        let seqs = send_all(&mut bob_conn, chat, 1000 * (i as u64 + 1), &texts);
        for (seq, text) in seqs.into_iter().zip(texts) {
            let words = text.split(", ").map(str::to_lowercase).collect();
            stored.push((chat, seq, words));
        }
    }
    wait_indexed(&server, stored.len() as u64);
    let queries: Vec<Vec<&str>> = WORDS
        .iter()
        .map(|w| vec![*w])
        .chain([
            vec!["apple", "fig"],
            vec!["CHERRY", "date"],
            vec!["grape", "honeydew", "elder"],
        ])
        .collect();
    for login in [&alice, &bob, &carol] {
        for words in &queries {
            let expected: BTreeSet<(u64, u64)> = stored
                .iter()
                .filter(|(chat, _, text)| {
                    members[chat].contains(&login.user_id)
                        && words.iter().all(|w| text.contains(&w.to_lowercase()))
                })
                .map(|(chat, seq, _)| (*chat, *seq))
                .collect();
            let q = words.join(" ");
            assert_eq!(
                hits(&server, login, &q, &all(100)),
                expected,
                "user {} query {q:?}",
                login.user_id
            );
            // Restricted to one chat: the same hits, of that chat only.
            let one = SearchOptions {
                chat_id: Some(group),
                limit: Some(100),
                ..SearchOptions::default()
            };
            let in_group: BTreeSet<_> = expected.iter().copied().filter(|(c, _)| *c == group).collect();
            assert_eq!(
                hits(&server, login, &q, &one),
                in_group,
                "query {q:?} in the group"
            );
        }
    }
    // Newest first, limit honoured, before_seq pages backwards within a chat.
    let answer = http.search(&bob.token, "apple", &all(3)).unwrap();
    assert!(answer.hits.len() <= 3);
    assert!(
        answer
            .hits
            .windows(2)
            .all(|w| w[0].server_ts_ms >= w[1].server_ts_ms)
    );
    let page = SearchOptions {
        chat_id: Some(group),
        before_seq: Some(10),
        limit: Some(100),
        ..SearchOptions::default()
    };
    let expected: BTreeSet<_> = stored
        .iter()
        .filter(|(c, s, t)| *c == group && *s < 10 && t.contains(&"apple".to_owned()))
        .map(|(c, s, _)| (*c, *s))
        .collect();
    assert_eq!(hits(&server, &bob, "apple", &page), expected);
}

#[test]
fn membership_is_read_at_query_time() {
    let server = server();
    let alice = server.user("alice");
    let bob = server.user("bob");
    let carol = server.user("carol");
    let dave = server.user("dave");
    befriend(&server, &alice, &bob, "bob");
    befriend(&server, &alice, &carol, "carol");
    let http = server.client();
    let group = http
        .create_group(&alice.token, "club", &[bob.user_id, carol.user_id])
        .unwrap();
    let mut conn = connect(&server, &alice);
    let seq = send(&mut conn, group, 1, "the secret pineapple recipe");
    wait_indexed(&server, 1);
    for who in [&alice, &bob, &carol] {
        assert_eq!(
            hits(&server, who, "pineapple", &all(10)),
            BTreeSet::from([(group, seq)])
        );
    }
    // A non-member: no hit, and an explicit chat_id is an unknown chat.
    assert!(hits(&server, &dave, "pineapple", &all(10)).is_empty());
    let path = format!("/v1/search?q=pineapple&chat_id={group}");
    let (code, body) = status(&server, &dave, &path);
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (404, Some("unknown_chat"))
    );
    // Carol removed: her very next query finds nothing, with or without chat_id.
    http.remove_member(&alice.token, group, carol.user_id).unwrap();
    assert!(hits(&server, &carol, "pineapple", &all(10)).is_empty());
    let (code, _) = status(&server, &carol, &path);
    assert_eq!(code, 404);
    assert_eq!(
        hits(&server, &bob, "pineapple", &all(10)),
        BTreeSet::from([(group, seq)])
    );
}

#[test]
fn cjk_accents_and_a_100000_character_message_are_found() {
    let server = server();
    let alice = server.user("alice");
    let bob = server.user("bob");
    befriend(&server, &alice, &bob, "bob");
    let chat = server.client().direct_chat(&alice.token, bob.user_id).unwrap();
    let mut conn = connect(&server, &alice);
    let tokyo = send(&mut conn, chat, 1, "明日は東京タワーに行きます");
    let cafe = send(&mut conn, chat, 2, "Rendez-vous au Café Crème à 9h");
    let hangul = send(&mut conn, chat, 3, "서울역에서 만나요");
    // The longest legal text: 100,000 characters, the needle at the very end.
    let filler = "lorem ipsum dolor sit amet ";
    let mut long = filler.repeat(natter_wire::MAX_TEXT_CHARS / filler.len() + 1);
    long.truncate(natter_wire::MAX_TEXT_CHARS - " zebrafish".len());
    long.push_str(" zebrafish");
    assert_eq!(long.chars().count(), natter_wire::MAX_TEXT_CHARS);
    let long_seq = send(&mut conn, chat, 4, &long);
    wait_indexed(&server, 4);
    let one = |seq| BTreeSet::from([(chat, seq)]);
    assert_eq!(hits(&server, &bob, "東京", &all(10)), one(tokyo));
    assert_eq!(hits(&server, &bob, "東京タワー", &all(10)), one(tokyo));
    assert_eq!(hits(&server, &bob, "タワー", &all(10)), one(tokyo));
    assert!(hits(&server, &bob, "大阪", &all(10)).is_empty());
    assert_eq!(hits(&server, &bob, "cafe", &all(10)), one(cafe));
    assert_eq!(hits(&server, &bob, "CAFÉ creme", &all(10)), one(cafe));
    assert_eq!(hits(&server, &bob, "서울", &all(10)), one(hangul));
    assert_eq!(hits(&server, &bob, "zebrafish", &all(10)), one(long_seq));
    assert_eq!(
        hits(&server, &bob, "\"dolor sit amet\" zebrafish", &all(10)),
        one(long_seq)
    );
    // The snippet is the text around the match, with the match highlighted.
    let answer = server.client().search(&bob.token, "zebrafish", &all(10)).unwrap();
    let hit = &answer.hits[0];
    assert!(hit.snippet.chars().count() <= 200, "{}", hit.snippet.len());
    let (a, b) = hit.highlights[0];
    assert_eq!(&hit.snippet[a..b], "zebrafish");
    let answer = server.client().search(&bob.token, "cafe", &all(10)).unwrap();
    let (a, b) = answer.hits[0].highlights[0];
    assert_eq!(&answer.hits[0].snippet[a..b], "Café");
}

#[test]
fn an_edited_message_is_found_by_its_new_text_only_and_a_deleted_one_not_at_all() {
    let server = server();
    let alice = server.user("alice");
    let bob = server.user("bob");
    befriend(&server, &alice, &bob, "bob");
    let chat = server.client().direct_chat(&alice.token, bob.user_id).unwrap();
    let mut conn = connect(&server, &alice);
    let walrus = send(&mut conn, chat, 1, "meet the walrus at noon");
    let doomed = send(&mut conn, chat, 2, "the platypus password is hunter2");
    wait_indexed(&server, 2);
    assert_eq!(
        hits(&server, &bob, "walrus", &all(10)),
        BTreeSet::from([(chat, walrus)])
    );
    edit(&mut conn, chat, walrus, 3, "meet the narwhal at noon");
    delete(&mut conn, chat, doomed, 4);
    wait_indexed(&server, 4);
    assert!(hits(&server, &bob, "walrus", &all(10)).is_empty());
    assert_eq!(
        hits(&server, &bob, "narwhal", &all(10)),
        BTreeSet::from([(chat, walrus)])
    );
    assert!(hits(&server, &bob, "platypus", &all(10)).is_empty());
    assert!(hits(&server, &bob, "hunter2", &all(10)).is_empty());
    assert_eq!(
        hits(&server, &bob, "noon", &all(10)),
        BTreeSet::from([(chat, walrus)])
    );
    wait_docs(&server, 1);
}

#[test]
fn bad_queries_get_400_with_the_reason_and_searches_are_rate_limited() {
    let server = server();
    let alice = server.user("alice");
    let long = "a".repeat(513);
    let many: Vec<String> = (0..17).map(|i| format!("w{i}")).collect();
    let many = many.join("+");
    for (path, reason) in [
        ("/v1/search", "empty"),
        ("/v1/search?q=", "empty"),
        ("/v1/search?q=+++", "empty"),
        ("/v1/search?q=%3F%21", "no searchable words"),
        ("/v1/search?q=%22open", "unclosed quote"),
        (&format!("/v1/search?q={long}") as &str, "longer than 512"),
        (&format!("/v1/search?q={many}"), "more than 16 terms"),
        ("/v1/search?q=%zz", "percent-encoded"),
        ("/v1/search?q=%FF", "percent-encoded"),
        ("/v1/search?q=hi&limit=0", "limit"),
        ("/v1/search?q=hi&limit=101", "limit"),
        ("/v1/search?q=hi&order=oldest", "order"),
        ("/v1/search?q=hi&before_seq=5", "needs chat_id"),
    ] {
        let (code, body) = status(&server, &alice, path);
        assert_eq!(code, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query", "{path}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{path}: {message}");
    }
    let (code, body) = status(&server, &alice, "/v1/search?q=hi&chat_id=abc");
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("invalid_chat_id"))
    );
    let r = server
        .client()
        .raw_request("GET", "/v1/search?q=hi", None, None)
        .unwrap();
    assert_eq!(r.status, 401);
    // 60 searches a minute per user (13 spent above), then 429 with Retry-After.
    let mut refused = None;
    for i in 0..60 {
        let (code, _) = status(&server, &alice, "/v1/search?q=hi");
        if code != 200 {
            refused = Some((i, code));
            break;
        }
    }
    let (i, code) = refused.expect("the 61st search in a minute was answered");
    assert_eq!(code, 429);
    assert!(i >= 60 - 14, "refused after only {i}");
    // Another user is not limited by alice's searches.
    let bob = server.user("bob");
    assert_eq!(status(&server, &bob, "/v1/search?q=hi").0, 200);
}

#[test]
fn kill9_during_indexing_then_restart_and_reindex_converge_to_the_stored_messages() {
    let mut server = server();
    let alice = server.user("alice");
    let bob = server.user("bob");
    befriend(&server, &alice, &bob, "bob");
    let chat = server.client().direct_chat(&alice.token, bob.user_id).unwrap();
    let mut conn = connect(&server, &alice);
    let texts: Vec<String> = (0..3000)
        .map(|i| format!("bulk message number m{i} of the load"))
        .collect();
    let seqs = send_all(&mut conn, chat, 1, &texts[..1500]);
    wait_indexed(&server, 1500);
    // Edits and deletes of already indexed messages, then more texts, and kill -9
    // at once (the last commits of the index are most likely not made yet).
    edit(
        &mut conn,
        chat,
        seqs[10],
        10_000,
        "bulk message number m10 rewritten as quokka",
    );
    delete(&mut conn, chat, seqs[20], 10_001);
    let more = send_all(&mut conn, chat, 5000, &texts[1500..]);
    drop(conn);
    server.kill9();
    server.start_again();
    // 3,000 texts, one deleted: 2,999 documents, no duplicate of any replayed one.
    wait_docs(&server, 2999);
    let one = |seq: u64| BTreeSet::from([(chat, seq)]);
    assert_eq!(hits(&server, &bob, "quokka", &all(10)), one(seqs[10]));
    assert_eq!(hits(&server, &bob, "m10", &all(10)), one(seqs[10]));
    assert!(hits(&server, &bob, "m20", &all(10)).is_empty());
    for i in [0usize, 1499, 1500, 2222, 2999] {
        let seq = if i < 1500 { seqs[i] } else { more[i - 1500] };
        assert_eq!(hits(&server, &bob, &format!("m{i}"), &all(10)), one(seq), "m{i}");
    }
    // The operator's rebuild: natterd stopped, `natterd reindex`, started again.
    let status = server.stop();
    assert!(status.success(), "natterd exited with {status}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_natterd"))
        .arg("reindex")
        .arg("--data-dir")
        .arg(server.data_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reindex: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("2999 messages indexed"));
    server.start_again();
    wait_docs(&server, 2999);
    assert_eq!(hits(&server, &bob, "quokka", &all(10)), one(seqs[10]));
    assert_eq!(hits(&server, &bob, "m2999", &all(10)), one(more[1499]));
    // A natterd that is running holds the store: reindex refuses to run beside it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_natterd"))
        .arg("reindex")
        .arg("--data-dir")
        .arg(server.data_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Newest-first queries walk time windows from the newest back
/// (`search::query`): a common word whose newest hits are spread over more
/// than one window still returns exactly the newest `limit` of the caller's
/// chats, in order, and `before_seq` pages across window boundaries neither
/// repeat nor skip a hit. The newest matches of all are in a chat the caller
/// is not in, so the per-match membership check of the window plan is
/// attacked too.
#[test]
fn newest_first_hits_spanning_time_windows_are_exactly_the_newest() {
    let server = server();
    let alice = server.user("alice");
    let bob = server.user("bob");
    let carol = server.user("carol");
    befriend(&server, &alice, &bob, "bob");
    befriend(&server, &alice, &carol, "carol");
    let http = server.client();
    let group = http.create_group(&alice.token, "zoo", &[bob.user_id]).unwrap();
    let foreign = http
        .create_group(&alice.token, "not bob's", &[carol.user_id])
        .unwrap();
    let mut conn = connect(&server, &alice);
    // Oldest: 4,200 matches. Then 10,000 texts without the word, 5 matches
    // among their last 2,000. Newest: 500 matches in a chat bob is not in.
    // More matches (4,705) than a first window's 4,096 documents, so the
    // window plan is the cheaper one; the first window (about the newest
    // 4,096 documents) holds only the 5 recent matches of bob's.
    let old: Vec<String> = (0..4200).map(|i| format!("walrus old {i}")).collect();
    let mut seqs = send_all(&mut conn, group, 1, &old);
    // Windows are whole seconds of the server's timestamps (this machine's
    // clock): two seconds between the old matches and the rest, so however
    // fast the sends, the newest window cannot reach the old matches.
    let old_done = Instant::now();
    assert!(wait_until(DEADLINE, || old_done.elapsed() >= Duration::from_millis(2100)));
    let filler: Vec<String> = (0..10_000)
        .map(|i| {
            if i >= 8000 && i % 400 == 0 {
                format!("walrus recent {i}")
            } else {
                format!("plankton {i}")
            }
        })
        .collect();
    let filler_seqs = send_all(&mut conn, group, 100_000, &filler);
    seqs.extend(
        filler_seqs
            .iter()
            .zip(&filler)
            .filter(|(_, t)| t.starts_with("walrus"))
            .map(|(s, _)| *s),
    );
    assert_eq!(seqs.len(), 4205);
    let foreign_texts: Vec<String> = (0..500).map(|i| format!("walrus foreign {i}")).collect();
    send_all(&mut conn, foreign, 200_000, &foreign_texts);
    wait_indexed(&server, 14_700);
    // Bob's matches, newest first (one chat: seq order is time order).
    let expected: Vec<(u64, u64)> = seqs.iter().rev().map(|s| (group, *s)).collect();

    let windows_before = server.metric("natter_search_query_windows_total").unwrap();
    let whole_before = server.metric("natter_search_query_whole_index_total").unwrap();
    let answer = http.search(&bob.token, "walrus", &all(20)).unwrap();
    assert!(!answer.partial);
    let got: Vec<(u64, u64)> = answer.hits.iter().map(|h| (h.chat_id, h.seq)).collect();
    assert_eq!(
        got,
        expected[..20],
        "not the newest 20 of bob's matches, in order"
    );
    assert!(
        answer
            .hits
            .windows(2)
            .all(|w| w[0].server_ts_ms >= w[1].server_ts_ms)
    );
    let windows = server.metric("natter_search_query_windows_total").unwrap() - windows_before;
    assert!(
        windows >= 2.0,
        "the hits came from {windows} time window(s), not several"
    );
    assert_eq!(
        server.metric("natter_search_query_whole_index_total").unwrap(),
        whole_before,
        "the query did not take the window plan"
    );

    // Pages of 100 within the chat, each below the last seq of the one before:
    // together exactly every match of the chat, newest first.
    let mut paged: Vec<(u64, u64)> = Vec::new();
    let mut before = None;
    loop {
        let options = SearchOptions {
            chat_id: Some(group),
            before_seq: before,
            limit: Some(100),
            ..SearchOptions::default()
        };
        let page = http.search(&bob.token, "walrus", &options).unwrap();
        assert!(!page.partial);
        paged.extend(page.hits.iter().map(|h| (h.chat_id, h.seq)));
        if page.hits.len() < 100 {
            break;
        }
        before = page.hits.last().map(|h| h.seq);
    }
    assert_eq!(paged.len(), expected.len());
    assert!(
        paged == expected,
        "paging across windows repeated, skipped or reordered hits"
    );
    assert_eq!(
        server.metric("natter_search_query_whole_index_total").unwrap(),
        whole_before,
        "a page did not take the window plan"
    );
}

/// `--search off` (an operator who does not want search): no indexer and no
/// index writes, so nothing is observed and /v1/search answers 503
/// `unavailable`; messages keep flowing. Turned on again, the index catches up
/// from the store and finds what was sent while it was off.
#[test]
fn search_off_has_no_indexer_and_on_again_catches_up() {
    let mut server = start_with(&[
        "--send-rate-limit",
        "1000000",
        "--quic-port",
        "off",
        "--search",
        "off",
    ]);
    let alice = server.user("alice");
    let bob = server.user("bob");
    befriend(&server, &alice, &bob, "bob");
    let chat = server.client().direct_chat(&alice.token, bob.user_id).unwrap();
    let mut conn = connect(&server, &alice);
    let texts: Vec<String> = (0..200)
        .map(|i| format!("while search was off, capybara {i}"))
        .collect();
    let seqs = send_all(&mut conn, chat, 1, &texts);
    let (code, body) = status(&server, &bob, "/v1/search?q=capybara");
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert_eq!(server.metric("natter_search_observed_total"), Some(0.0));
    assert_eq!(server.metric("natter_search_docs"), Some(0.0));
    assert!(
        !server.data_dir().join(natter_server::search::INDEX_DIR).exists(),
        "--search off created an index"
    );
    drop(conn);

    server.set_args(&["--send-rate-limit", "1000000", "--quic-port", "off"]);
    server.restart();
    wait_docs(&server, 200);
    // The newest 100 (the most one query returns) of the 200 sent while off.
    let expected: BTreeSet<(u64, u64)> = seqs[100..].iter().map(|s| (chat, *s)).collect();
    assert_eq!(hits(&server, &bob, "capybara", &all(100)), expected);
    assert_eq!(
        hits(&server, &bob, "\"capybara 7\"", &all(10)),
        BTreeSet::from([(chat, seqs[7])])
    );

    // A value that is neither on nor off is refused at start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_natterd"))
        .args(["--data-dir"])
        .arg(server.data_dir().join("other"))
        .args([
            "--search",
            "maybe",
            "--http-port",
            "0",
            "--tcp-port",
            "0",
            "--tls-port",
            "off",
        ])
        .args(["--ws-port", "off", "--quic-port", "off"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("search"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
