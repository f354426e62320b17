//! End-to-end: the per-core runtime against a real natterd — per-pair FIFO
//! between cores under full queues (natterd started with a tiny core queue),
//! frames pipelined behind Hello handled right after the Welcome on both the
//! home-core and the migration path, the pre-authentication input cap, and
//! the graceful close that delivers the closing Error before EOF.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use natter_client::{Connection, Login};
use natter_server::core::MAX_PRE_AUTH_INPUT;
use natter_wire::{
    Body, Cursor, ErrorCode, Frame, Hello, Limits, Message, PROTOCOL_VERSION, Ping, Send, Sync,
};
use support::{TestServer, start, start_with};

/// How long a test waits for an answer that should come at once. Generous for
/// a debug build on a busy 2-core machine, far below the heartbeat (180 s by
/// default), which is how long a stalled pipelined frame used to wait.
const PROMPT: Duration = Duration::from_secs(10);

fn connect(server: &TestServer, login: &Login) -> Connection {
    Connection::connect(server.tcp, &login.token, "test").unwrap().0
}

fn hello_frame(token: &str, request_id: u64) -> Vec<u8> {
    Frame::new(
        request_id,
        Body::Hello(Hello {
            token: token.into(),
            device: "pipelined".into(),
            protocol_version: PROTOCOL_VERSION,
            sync_first: false,
            conversation: false,
        }),
    )
    .encode()
    .to_vec()
}

/// Reads frames from `stream` until `n` arrived, EOF, an error, or `deadline`.
fn read_frames(stream: &mut TcpStream, n: usize, deadline: Duration) -> (Vec<Frame>, Option<std::io::Error>) {
    let start = Instant::now();
    let limits = Limits::default();
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        while let Ok(Some(total)) = limits.frame_len(&buf) {
            if buf.len() < total {
                break;
            }
            let rest = buf.split_off(total);
            frames.push(Frame::decode(&buf, &limits).unwrap());
            buf = rest;
        }
        if frames.len() >= n {
            return (frames, None);
        }
        let left = deadline.saturating_sub(start.elapsed());
        if left.is_zero() {
            return (frames, Some(std::io::Error::from(ErrorKind::TimedOut)));
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => return (frames, None),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (frames, Some(e)),
        }
    }
}

#[test]
fn frames_pipelined_behind_hello_in_one_write_are_answered_at_once_on_every_path() {
    pipelined_hellos(8, 40);
}

#[test]
fn a_storm_of_pipelined_hellos_past_the_per_turn_lookup_budget_is_answered_in_full() {
    // 300 Hellos at once: more token lookups than one turn takes on either
    // core (AUTHS_PER_TURN, 32), so most wait for later turns; each must still
    // be welcomed and its pipelined frames answered without another byte.
    pipelined_hellos(30, 300);
}

fn pipelined_hellos(users: usize, connections: usize) {
    let server = start();
    let logins: Vec<Login> = (0..users)
        .map(|i| server.user(&format!("pipeliner{i}")))
        .collect();
    // All connections first, each with Hello + Ping + Sync in one write, then
    // nothing more: the kernel spreads them over both cores, so some land on
    // their user's home core and the others migrate.
    let mut streams: Vec<(TcpStream, u64)> = (0..connections)
        .map(|i| {
            let mut stream = TcpStream::connect(server.tcp).unwrap();
            stream.set_nodelay(true).unwrap();
            let nonce = 1000 + i as u64;
            let mut bytes = hello_frame(&logins[i % users].token, 1);
            bytes.extend_from_slice(&Frame::new(2, Body::Ping(Ping { nonce })).encode());
            bytes.extend_from_slice(&Frame::new(3, Body::Sync(Sync { cursors: Vec::new() })).encode());
            stream.write_all(&bytes).unwrap();
            (stream, nonce)
        })
        .collect();
    for (i, (stream, nonce)) in streams.iter_mut().enumerate() {
        // Welcome, Pong, then the Sync's answer (a new user's sync is just SyncDone).
        let (frames, err) = read_frames(stream, 3, PROMPT);
        assert!(
            frames.len() >= 3,
            "connection {i}: only {frames:?} within {PROMPT:?} ({err:?}): a pipelined frame stalled"
        );
        assert!(
            matches!(frames[0].body, Body::Welcome(_)),
            "connection {i}: {frames:?}"
        );
        assert!(
            matches!(frames[1].body, Body::Pong(ref p) if p.nonce == *nonce),
            "connection {i}: {frames:?}"
        );
        assert!(
            matches!(frames[2].body, Body::SyncDone(_)),
            "connection {i}: {frames:?}"
        );
    }
}

#[test]
fn a_large_length_prefix_before_hello_is_refused_at_once_and_an_honest_hello_still_works() {
    let server = start();
    let mut stream = TcpStream::connect(server.tcp).unwrap();
    // 100 KiB declared (well under --max-frame's 512 KiB), 1 KiB of it sent.
    let mut bytes = (100u32 * 1024).to_le_bytes().to_vec();
    bytes.extend_from_slice(&[7u8; 1024]);
    stream.write_all(&bytes).unwrap();
    let started = Instant::now();
    let (frames, err) = read_frames(&mut stream, 2, PROMPT);
    assert!(err.is_none(), "{err:?} after {frames:?}");
    assert_eq!(frames.len(), 1, "{frames:?}");
    let Body::Error(ref e) = frames[0].body else {
        panic!("{frames:?}")
    };
    assert_eq!(e.code, ErrorCode::FrameTooLarge.as_u16());
    assert!(
        e.message.contains("pre-authentication input is limited"),
        "{}",
        e.message
    );
    // Refused on sight, not at the 10 s hello deadline.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // A Hello of the largest honest size is welcomed.
    let login = server.user("honest");
    let device = "d".repeat(natter_server::core::MAX_DEVICE_DESCRIPTION);
    assert!(hello_frame(&login.token, u64::MAX).len() + device.len() < MAX_PRE_AUTH_INPUT);
    let (mut conn, welcome) = Connection::connect(server.tcp, &login.token, &device).unwrap();
    assert_eq!(welcome.user_id, login.user_id);
    conn.ping().unwrap();
}

#[test]
fn the_closing_error_arrives_before_eof_even_with_unread_input() {
    const ROUNDS: usize = 20;
    let server = start();
    // A frame that is not a Hello: 12 bytes of junk behind a valid prefix.
    let mut garbage = vec![12u8, 0, 0, 0];
    garbage.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8]);
    // Plenty more behind it, so natterd closes with input still unread.
    let trailer = vec![0x55u8; 256 * 1024];
    for round in 0..ROUNDS {
        let mut stream = TcpStream::connect(server.tcp).unwrap();
        let mut bytes = garbage.clone();
        bytes.extend_from_slice(&trailer);
        // natterd may close before taking all of it; that is its right.
        let _ = stream.write_all(&bytes);
        let (frames, err) = read_frames(&mut stream, 2, PROMPT);
        assert!(
            err.is_none(),
            "round {round}: {err:?} (a reset destroyed the close) after {frames:?}"
        );
        assert_eq!(frames.len(), 1, "round {round}: {frames:?}");
        assert!(
            matches!(frames[0].body, Body::Error(ref e) if e.code == ErrorCode::BadFrame.as_u16()),
            "round {round}: {frames:?}"
        );
        let _ = stream.shutdown(Shutdown::Both);
    }
}

#[test]
fn with_a_one_command_core_queue_every_member_sees_every_chat_in_seq_order() {
    const MEMBERS: usize = 12;
    const SENDERS: usize = 8;
    const PER_SENDER: usize = 300;
    // Every cross-core command finds the target's queue full most of the time.
    let server = start_with(&["--core-queue-capacity", "1"]);
    let logins: Vec<Login> = (0..MEMBERS).map(|i| server.user(&format!("fifo{i}"))).collect();
    let http = server.client();
    for (i, login) in logins.iter().enumerate().skip(1) {
        http.friend_request(&logins[0].token, &format!("fifo{i}"))
            .unwrap();
        http.accept_friend(&login.token, logins[0].user_id).unwrap();
    }
    let others: Vec<u64> = logins.iter().skip(1).map(|l| l.user_id).collect();
    // Two groups, so sends, acks and pushes of both cross the cores both ways.
    let chats: Vec<u64> = (0..2)
        .map(|g| {
            http.create_group(&logins[0].token, &format!("fifo{g}"), &others)
                .unwrap()
        })
        .collect();
    let mut readers: Vec<Connection> = logins.iter().skip(SENDERS).map(|l| connect(&server, l)).collect();
    let senders: Vec<Connection> = logins.iter().take(SENDERS).map(|l| connect(&server, l)).collect();
    let threads: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(s, mut conn)| {
            let chats = chats.clone();
            std::thread::spawn(move || {
                // Pipelined: a window of sends in flight, acks read as they come.
                let mut acks = Vec::new();
                let mut sent = 0;
                while acks.len() < PER_SENDER {
                    while sent < PER_SENDER && sent - acks.len() < 32 {
                        let chat = chats[sent % 2];
                        conn.send_body(Body::Send(Send {
                            chat_id: chat,
                            client_msg_id: sent as u64 + 1,
                            text: format!("sender {s} message {sent}"),
                        }))
                        .unwrap();
                        sent += 1;
                    }
                    match conn.recv_timeout(PROMPT * 3).unwrap() {
                        Some(Frame {
                            body: Body::SendOk(ok),
                            ..
                        }) => acks.push((ok.chat_id, ok.seq)),
                        Some(Frame {
                            body: Body::Error(e), ..
                        }) => panic!("sender {s}: {e:?}"),
                        Some(_) => {}
                        None => panic!("sender {s}: {} of {PER_SENDER} acked", acks.len()),
                    }
                }
                acks
            })
        })
        .collect();
    let total_per_chat = SENDERS * PER_SENDER / 2;
    for (r, reader) in readers.iter_mut().enumerate() {
        let mut seen: Vec<Vec<u64>> = vec![Vec::new(); 2];
        let start = Instant::now();
        while seen.iter().map(Vec::len).sum::<usize>() < 2 * total_per_chat {
            let left = (PROMPT * 6).saturating_sub(start.elapsed());
            match reader.recv_timeout(left).unwrap() {
                Some(Frame {
                    body: Body::Message(Message { chat_id, seq, .. }),
                    ..
                }) => {
                    let g = chats.iter().position(|c| *c == chat_id).unwrap();
                    seen[g].push(seq);
                }
                Some(_) => {}
                None => panic!(
                    "reader {r}: only {:?} messages arrived",
                    seen.iter().map(Vec::len).collect::<Vec<_>>()
                ),
            }
        }
        for (g, seqs) in seen.iter().enumerate() {
            assert_eq!(
                *seqs,
                (1..=total_per_chat as u64).collect::<Vec<_>>(),
                "reader {r}, chat {g}: pushes out of order or missing"
            );
        }
    }
    for t in threads {
        let acks = t.join().unwrap();
        for chat in &chats {
            let seqs: Vec<u64> = acks.iter().filter(|(c, _)| c == chat).map(|(_, s)| *s).collect();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "acks out of order: {seqs:?}"
            );
        }
    }
    // A sync afterwards agrees with what was pushed.
    let mut late = connect(&server, &logins[MEMBERS - 1]);
    late.send_body(Body::Sync(Sync {
        cursors: chats.iter().map(|&chat_id| Cursor { chat_id, seq: 0 }).collect(),
    }))
    .unwrap();
    let mut synced = 0;
    loop {
        match late.recv_timeout(PROMPT).unwrap() {
            Some(Frame {
                body: Body::Message(_),
                ..
            }) => synced += 1,
            Some(Frame {
                body: Body::SyncDone(done),
                ..
            }) => {
                assert!(
                    done.heads.iter().all(|h| h.seq == total_per_chat as u64),
                    "{done:?}"
                );
                break;
            }
            Some(_) => {}
            None => panic!("no SyncDone"),
        }
    }
    assert_eq!(synced, 2 * total_per_chat);
}

/// Protocol errors natterd counted, over both cores.
fn protocol_errors(server: &TestServer) -> f64 {
    (0..2)
        .filter_map(|core| server.metric(&format!("natter_protocol_errors_total{{core=\"{core}\"}}")))
        .sum()
}

#[test]
fn the_closing_error_queued_behind_unread_answers_still_arrives_before_eof() {
    const PINGS: u64 = 10_000;
    const ROUNDS: usize = 3;
    let server = start();
    let login = server.user("pipeliner");
    for round in 0..ROUNDS {
        // A tiny receive buffer, so natterd's answers back up in its own
        // outbound queue while the client does not read.
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&server.tcp.into()).unwrap();
        let mut stream: TcpStream = socket.into();
        stream.write_all(&hello_frame(&login.token, 1)).unwrap();
        let (welcome, err) = read_frames(&mut stream, 1, PROMPT);
        assert!(
            matches!(welcome.first().map(|f| &f.body), Some(Body::Welcome(_))),
            "{welcome:?} {err:?}"
        );
        // Thousands of pings, then a frame that is not one (natterd closes the
        // session), then more bytes it will never read as frames.
        let mut bytes = Vec::new();
        for nonce in 0..PINGS {
            bytes.extend_from_slice(&Frame::new(nonce + 2, Body::Ping(Ping { nonce })).encode());
        }
        bytes.extend_from_slice(&[12u8, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8]);
        bytes.extend_from_slice(&[0x55u8; 64 * 1024]);
        let errors_before = protocol_errors(&server);
        let mut writer = stream.try_clone().unwrap();
        let write = std::thread::spawn(move || {
            // natterd may close before taking all of it.
            let _ = writer.write_all(&bytes);
        });
        // Not reading until natterd has closed the session: its Pongs and the
        // Error are queued behind a full socket at that moment.
        assert!(
            support::wait_until(PROMPT, || protocol_errors(&server) > errors_before),
            "round {round}: natterd did not refuse the bad frame"
        );
        let (frames, err) = read_frames(&mut stream, PINGS as usize + 2, PROMPT);
        assert!(
            err.is_none(),
            "round {round}: {err:?} (the close lost data) after {} frames",
            frames.len()
        );
        let pongs = frames.iter().filter(|f| matches!(f.body, Body::Pong(_))).count();
        assert_eq!(pongs as u64, PINGS, "round {round}");
        assert!(
            matches!(frames.last().map(|f| &f.body), Some(Body::Error(e)) if e.code == ErrorCode::BadFrame.as_u16()),
            "round {round}: the last frame before EOF is not the Error: {:?}",
            frames.last()
        );
        write.join().unwrap();
    }
}

#[test]
fn shutdown_commits_the_last_seen_of_every_online_user_even_past_a_full_writer_queue() {
    const USERS: usize = 24;
    // A one-op writer queue: the shutdown's last_seen writes back up in the cores.
    let mut server = start_with(&["--writer-queue-capacity", "1"]);
    let logins: Vec<Login> = (0..USERS).map(|i| server.user(&format!("online{i}"))).collect();
    let conns: Vec<Connection> = logins.iter().map(|l| connect(&server, l)).collect();
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let status = server.stop();
    assert!(status.success(), "{status}");
    drop(conns);
    let store = natter_server::store::Store::open(&server.data_dir()).unwrap();
    for login in &logins {
        let seen = store
            .last_seen(natter_server::ids::UserId(login.user_id))
            .unwrap();
        assert!(
            seen.is_some_and(|ms| ms + 1000 >= before_ms),
            "user {}: last_seen {seen:?} not written at shutdown",
            login.user_id
        );
    }
}

#[test]
fn a_client_reading_a_large_backlog_slowly_is_not_closed_as_silent() {
    const PINGS: u64 = 100_000;
    /// How long the client reads slowly: three heartbeat timeouts.
    const SLOW_FOR: Duration = Duration::from_secs(3);
    // The flood is encoded before the Hello: encoding 100,000 frames can take longer than the
    // 1 s heartbeat timeout in a debug build on a busy machine, and a client silent that long
    // after its Welcome is rightly closed (a CI flake: the Error was the only frame received).
    let mut bytes = Vec::new();
    for nonce in 0..PINGS {
        bytes.extend_from_slice(&Frame::new(nonce + 2, Body::Ping(Ping { nonce })).encode());
    }
    let server = start_with(&["--heartbeat-timeout", "1s"]);
    let login = server.user("slowreader");
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.tcp.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.write_all(&hello_frame(&login.token, 1)).unwrap();
    let (welcome, err) = read_frames(&mut stream, 1, PROMPT);
    assert!(
        matches!(welcome.first().map(|f| &f.body), Some(Body::Welcome(_))),
        "{welcome:?} {err:?}"
    );
    // A flood of pings: natterd answers until over a MiB of Pongs is queued
    // for this client, then stops reading it (the rest waits in the kernel),
    // so it hears nothing from the client while the backlog drains.
    let mut writer = stream.try_clone().unwrap();
    let write = std::thread::spawn(move || writer.write_all(&bytes).is_ok());
    // Read slowly, paced by a ticker: ~4 KiB every 20 ms, far slower than
    // natterd writes, for several heartbeat timeouts.
    let pace = crossbeam_channel::tick(Duration::from_millis(20));
    let started = Instant::now();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    while started.elapsed() < SLOW_FOR {
        pace.recv().unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => panic!("natterd closed the slow reader after {:?}", started.elapsed()),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("{e} after {:?}", started.elapsed()),
        }
    }
    // Then at full speed: every Pong, and no Error (heartbeat_timeout) among them.
    let limits = Limits::default();
    let mut pongs = 0u64;
    let mut offset = 0;
    let deadline = Instant::now() + PROMPT * 3;
    while pongs < PINGS {
        while let Ok(Some(total)) = limits.frame_len(&received[offset..]) {
            if received.len() - offset < total {
                break;
            }
            let frame = Frame::decode(&received[offset..offset + total], &limits).unwrap();
            offset += total;
            match frame.body {
                Body::Pong(_) => pongs += 1,
                other => panic!("after {pongs} Pongs: {other:?}"),
            }
        }
        if pongs == PINGS {
            break;
        }
        assert!(Instant::now() < deadline, "only {pongs} of {PINGS} Pongs");
        let mut big = [0u8; 64 * 1024];
        match stream.read(&mut big) {
            Ok(0) => panic!("EOF after {pongs} Pongs"),
            Ok(n) => received.extend_from_slice(&big[..n]),
            Err(e) => panic!("{e} after {pongs} Pongs"),
        }
    }
    assert!(write.join().unwrap());
}
