//! A push gateway stub for end-to-end tests: a small HTTP/1.1 server on a std
//! `TcpListener` (loopback, port 0) that records every `POST` it receives
//! (with its arrival time and JSON body) and answers according to a script:
//! 200 `{"rejected":[]}`, a status (e.g. 500), 200 with the request's
//! pushkeys in `rejected`, or no answer at all (hang, until the stub drops).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How the stub answers one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 200 `{"rejected":[]}`.
    Ok,
    /// This status with an empty JSON object.
    Status(u16),
    /// 200 with every pushkey of the request listed in `rejected`.
    Reject,
    /// No answer: the connection is held open until the stub is dropped.
    Hang,
}

/// One request the stub received.
#[derive(Clone, Debug)]
pub struct Received {
    /// When its body was complete.
    pub at: Instant,
    /// The request path.
    pub path: String,
    /// The JSON body.
    pub body: serde_json::Value,
}

impl Received {
    /// The first device's pushkey.
    pub fn pushkey(&self) -> &str {
        self.body["notification"]["devices"][0]["pushkey"]
            .as_str()
            .unwrap_or("")
    }

    /// `devices[0].data.seq`.
    pub fn seq(&self) -> u64 {
        self.body["notification"]["devices"][0]["data"]["seq"]
            .as_u64()
            .unwrap_or(0)
    }
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    /// Answers for the next requests, in order; then `default`.
    script: VecDeque<Answer>,
    default: Option<Answer>,
    stopped: bool,
}

/// The running stub; stops (and releases hanging connections) when dropped.
pub struct Gateway {
    addr: SocketAddr,
    shared: Arc<(Mutex<State>, Condvar)>,
}

impl Gateway {
    /// Starts the stub on 127.0.0.1, answering [`Answer::Ok`] by default.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind gateway stub");
        let addr = listener.local_addr().expect("stub address");
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let accept_shared = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if accept_shared.0.lock().unwrap().stopped {
                    return;
                }
                let shared = accept_shared.clone();
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        Self { addr, shared }
    }

    /// The notify URL natterd should post to.
    pub fn url(&self) -> String {
        format!("http://{}/_matrix/push/v1/notify", self.addr)
    }

    /// `host:port` (for `--push-gateway-allow`).
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// Answers the next requests with `answers`, in order (then the default).
    pub fn script(&self, answers: &[Answer]) {
        self.shared
            .0
            .lock()
            .unwrap()
            .script
            .extend(answers.iter().copied());
    }

    /// Answers every request not covered by a script with `answer`.
    pub fn set_default(&self, answer: Answer) {
        self.shared.0.lock().unwrap().default = Some(answer);
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.0.lock().unwrap().received.clone()
    }

    /// How many requests were received.
    pub fn count(&self) -> usize {
        self.shared.0.lock().unwrap().received.len()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shared.0.lock().unwrap().stopped = true;
        self.shared.1.notify_all();
        // Wake the accept loop so it sees `stopped`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn serve(stream: TcpStream, shared: &Arc<(Mutex<State>, Condvar)>) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        let answer = {
            let mut state = shared.0.lock().unwrap();
            state.received.push(Received {
                at: Instant::now(),
                path,
                body: body.clone(),
            });
            let default = state.default.unwrap_or(Answer::Ok);
            state.script.pop_front().unwrap_or(default)
        };
        let (status, text) = match answer {
            Answer::Ok => (200, r#"{"rejected":[]}"#.to_owned()),
            Answer::Status(s) => (s, "{}".to_owned()),
            Answer::Reject => {
                let keys: Vec<&serde_json::Value> = body["notification"]["devices"]
                    .as_array()
                    .map(|d| d.iter().map(|x| &x["pushkey"]).collect())
                    .unwrap_or_default();
                (200, serde_json::json!({ "rejected": keys }).to_string())
            }
            Answer::Hang => {
                let mut state = shared.0.lock().unwrap();
                while !state.stopped {
                    state = shared.1.wait(state).unwrap();
                }
                return;
            }
        };
        let reply = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
