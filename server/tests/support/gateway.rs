//! A push gateway stub for end-to-end tests: a small HTTP/1.1 server on a std
//! `TcpListener` (loopback, port 0) that records every `POST` it receives
//! (with its arrival time and JSON body) and answers according to a script:
//! 200 `{"rejected":[]}`, a status (e.g. 500), 200 with the request's
//! pushkeys in `rejected`, or no answer at all (hang, until the stub drops).
//! [`Gateway::start_https`] serves the same over TLS (rustls, ring) with a
//! certificate for `127.0.0.1` / `localhost` signed by a CA of its own (rcgen),
//! whose PEM file natterd is given with `--push-gateway-ca`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
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
    /// For an https stub: the directory holding `ca.pem`.
    tls_dir: Option<tempfile::TempDir>,
}

impl Gateway {
    /// Starts the stub on 127.0.0.1 (plain HTTP), answering [`Answer::Ok`] by default.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts an https stub on 127.0.0.1: TLS with a certificate for
    /// `127.0.0.1` and `localhost` signed by a fresh CA ([`Gateway::ca_file`]).
    pub fn start_https() -> Self {
        let dir = tempfile::tempdir().expect("stub CA dir");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "natter test gateway CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write ca.pem");
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("leaf params");
        let cert = params.signed_by(&key, &ca).expect("leaf certificate");
        let chain = vec![cert.der().clone()];
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("stub TLS config");
        let mut gateway = Self::start_with(Some(Arc::new(config)));
        gateway.tls_dir = Some(dir);
        gateway
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
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
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    // A failed handshake (an untrusting client) ends in a read error.
                    Some(config) => {
                        if let Ok(conn) = rustls::ServerConnection::new(config) {
                            serve(rustls::StreamOwned::new(conn, stream), &shared);
                        }
                    }
                    None => serve(stream, &shared),
                });
            }
        });
        Self {
            addr,
            shared,
            tls_dir: None,
        }
    }

    /// The notify URL natterd should post to (`https://` for an https stub).
    pub fn url(&self) -> String {
        let scheme = if self.tls_dir.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/_matrix/push/v1/notify", self.addr)
    }

    /// The PEM file of the CA that signed an https stub's certificate.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls_dir.as_ref().map(|d| d.path().join("ca.pem"))
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

fn serve(stream: impl Read + Write, shared: &Arc<(Mutex<State>, Condvar)>) {
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
        let writer = reader.get_mut();
        if writer
            .write_all(reply.as_bytes())
            .and_then(|()| writer.flush())
            .is_err()
        {
            return;
        }
    }
}
