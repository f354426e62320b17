//! The live verbs on a [`Live`] connection: `natter tail` (every chat, until
//! interrupted) and `natter chat CHAT` (one chat, interactive, until end of input).
//! Messages go to stdout in the shapes of `format.rs`; connection notices to stderr.

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use crate::commands::{check_text, device_name};
use crate::error::CliError;
use crate::format::{self, out};
use crate::live::{Cursors, Event, Live};
use crate::profile::Profile;
use crate::resolve::{Account, FriendKind, Names};

/// How long one [`Live::poll`] waits for frames before looking at the keyboard again:
/// the longest a typed line waits before it is sent.
const POLL: Duration = Duration::from_millis(50);

/// After end of input, how long `chat` waits for the `SendOk`s of lines still in flight.
const DRAIN_DEADLINE: Duration = Duration::from_secs(15);

/// How often `chat` moves the read marker while messages arrive (an HTTP write each).
const READ_MARK_INTERVAL: Duration = Duration::from_secs(2);

/// A flag set by the first Ctrl-C (SIGINT) or SIGTERM; a second one ends the process
/// at once with status 130.
///
/// # Errors
/// [`CliError::Input`] if the handlers cannot be installed.
fn interrupt_flag() -> Result<Arc<AtomicBool>, CliError> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&flag))
            .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&flag)))
            .map_err(|e| CliError::Input(format!("cannot handle Ctrl-C: {e}")))?;
    }
    Ok(flag)
}

/// `natter tail`: sync (from the cursors natterd keeps for this profile's device), then
/// print messages and presence as they come, across reconnects, until interrupted.
pub(crate) fn tail(account: &Account, profile: &Profile) -> Result<(), CliError> {
    let device = device_name(profile)?;
    let mut names = Names::new(&account.session);
    names.refresh(account);
    let mut presence: HashMap<u64, bool> = HashMap::new();
    let mut live = Live::new(account.clone(), device, Cursors::default(), None);
    let mut synced_once = false;
    let mut disconnected = false;
    let interrupted = interrupt_flag()?;
    loop {
        if interrupted.load(Ordering::Relaxed) {
            // The next tail of this profile resumes after what was printed.
            live.flush_acks();
            return Err(CliError::Interrupted);
        }
        for event in live.poll(POLL)? {
            match event {
                Event::Message(m) => {
                    names.lookup(account, m.sender, Some(m.chat_id));
                    let chat = names.chat(m.chat_id);
                    out!("{}", format::message_line(&m, Some(&chat), &names.user(m.sender)));
                }
                Event::Presence(p) => {
                    if presence.insert(p.user_id, p.online) != Some(p.online) {
                        names.lookup(account, p.user_id, None);
                        let line = format::presence_line(
                            &names.user(p.user_id),
                            p.online,
                            p.last_seen_ms,
                            format::now_ms(),
                        );
                        out!("{line}");
                    }
                }
                Event::Synced if !synced_once => {
                    synced_once = true;
                    eprintln!(
                        "natter: synced over {}; waiting for messages (Ctrl-C to stop)",
                        live.transport().unwrap_or("?")
                    );
                }
                Event::Disconnected { reason, retry_in } => {
                    if !disconnected {
                        eprintln!(
                            "natter: {reason}; reconnecting (first try in {:.1} s)",
                            retry_in.as_secs_f64()
                        );
                    }
                    disconnected = true;
                }
                Event::Reconnected => {
                    disconnected = false;
                    eprintln!("natter: reconnected");
                }
                Event::Synced | Event::SendRefused { .. } => {}
            }
        }
    }
}

/// What the keyboard thread hands over.
enum Input {
    /// One line, without its newline.
    Line(String),
    /// Reading failed (the terminal went away).
    Failed(String),
}

/// Reads stdin line by line on its own thread; the channel closes at end of input.
fn keyboard() -> Receiver<Input> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut lock = stdin.lock();
        loop {
            let mut line = String::new();
            match lock.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) => {
                    let line = line.trim_end_matches(['\n', '\r']).to_owned();
                    if tx.send(Input::Line(line)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Input::Failed(e.to_string()));
                    return;
                }
            }
        }
    });
    rx
}

/// `natter chat CHAT`: show the last `last` messages, then the conversation live; each
/// line typed is sent (empty lines are skipped, over-long ones refused with a line on
/// stderr); end of input (Ctrl-D) waits for what is still in flight, then exits.
pub(crate) fn chat(account: &Account, profile: &Profile, chat: &str, last: u64) -> Result<(), CliError> {
    let target = account.resolve_chat(chat)?;
    let device = device_name(profile)?;
    let mut start: Vec<(u64, u64)> = account
        .chats()?
        .iter()
        .map(|c| {
            let seq = if c.chat_id == target.chat_id {
                c.last_seq.saturating_sub(last)
            } else {
                c.last_seq
            };
            (c.chat_id, seq)
        })
        .collect();
    if !start.iter().any(|(id, _)| *id == target.chat_id) {
        start.push((target.chat_id, 0));
    }
    let members = chat_members(account, &target)?;
    let mut names = Names::new(&account.session);
    names.refresh(account);
    let mut live = Live::new(
        account.clone(),
        device,
        Cursors::with(start),
        Some(target.chat_id),
    );
    eprintln!(
        "natter: chat with {}: type a line and press Enter to send it; Ctrl-D leaves",
        target.label
    );
    let keys = keyboard();
    let mut ended: Option<Instant> = None;
    let mut read_marked = target.read_seq;
    let mut last_mark = Instant::now();
    let mut disconnected = false;
    let mut presence: HashMap<u64, bool> = HashMap::new();
    let interrupted = interrupt_flag()?;
    loop {
        if interrupted.load(Ordering::Relaxed) {
            live.flush_acks();
            if let Some(position) = live.position(target.chat_id).filter(|p| *p > read_marked) {
                let _ = account
                    .http
                    .mark_read(&account.session.token, target.chat_id, position);
            }
            return Err(CliError::Interrupted);
        }
        for event in live.poll(POLL)? {
            match event {
                Event::Message(m) if m.chat_id == target.chat_id => {
                    names.lookup(account, m.sender, None);
                    out!("{}", format::message_line(&m, None, &names.user(m.sender)));
                }
                Event::Presence(p)
                    if members.contains(&p.user_id)
                        && presence.insert(p.user_id, p.online) != Some(p.online) =>
                {
                    let line = format::presence_line(
                        &names.user(p.user_id),
                        p.online,
                        p.last_seen_ms,
                        format::now_ms(),
                    );
                    out!("{line}");
                }
                Event::SendRefused { text, reason } => {
                    let preview: String = text.chars().take(40).collect();
                    eprintln!("natter: not sent ({reason}): {preview}");
                }
                Event::Disconnected { reason, retry_in } => {
                    if !disconnected {
                        eprintln!(
                            "natter: {reason}; reconnecting (first try in {:.1} s); lines typed meanwhile are sent then",
                            retry_in.as_secs_f64()
                        );
                    }
                    disconnected = true;
                }
                Event::Reconnected => {
                    disconnected = false;
                    eprintln!("natter: reconnected");
                }
                _ => {}
            }
        }
        while ended.is_none() {
            match keys.try_recv() {
                Ok(Input::Line(line)) => {
                    if line.trim().is_empty() {
                        continue;
                    }
                    match check_text(&line) {
                        Ok(()) => live.send(target.chat_id, line)?,
                        Err(e) => eprintln!("natter: {e}"),
                    }
                }
                Ok(Input::Failed(e)) => {
                    eprintln!("natter: cannot read the terminal: {e}");
                    ended = Some(Instant::now());
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => ended = Some(Instant::now()),
            }
        }
        let position = live.position(target.chat_id).unwrap_or(0);
        if position > read_marked && (last_mark.elapsed() >= READ_MARK_INTERVAL || ended.is_some()) {
            last_mark = Instant::now();
            if account
                .http
                .mark_read(&account.session.token, target.chat_id, position)
                .is_ok()
            {
                read_marked = position;
            }
        }
        if let Some(at) = ended {
            if !live.sending() {
                break;
            }
            if at.elapsed() > DRAIN_DEADLINE {
                live.flush_acks();
                return Err(CliError::Connection(
                    "some lines were not confirmed by natterd before leaving; they may not have been sent"
                        .into(),
                ));
            }
        }
    }
    live.flush_acks();
    Ok(())
}

/// The other members of a chat, whose presence `chat` shows.
fn chat_members(account: &Account, target: &crate::resolve::ChatRef) -> Result<HashSet<u64>, CliError> {
    let mut members = HashSet::new();
    if target.group {
        let group = account
            .http
            .group(&account.session.token, target.chat_id)
            .map_err(|e| account.fail(e))?;
        members.extend(group.members.iter().map(|m| m.user_id));
    } else if let Ok(id) = account.friend_id(&target.label, FriendKind::Friend) {
        members.insert(id);
    }
    members.remove(&account.session.user_id);
    Ok(members)
}
