//! The history checker: a [`Recorder`] that every client thread of a scenario
//! writes what it did and saw into, and [`History::check`], which tests the
//! promises natterd makes about messages against that record.
//!
//! What is recorded:
//!
//! * every send attempt `(sender, chat, client_msg_id, text)` ([`Recorder::sent`]),
//! * every `SendOk` `(sender, chat, client_msg_id, seq)` ([`Recorder::acked`]),
//! * every `Message` a device received, live or in a sync ([`Recorder::delivered`]),
//! * every message read back after recovery with `History` ([`Recorder::read_back`]),
//! * who is a member of which chat ([`Recorder::member`]) and what a
//!   non-member tried and whether natterd let it ([`Recorder::probe`]).
//!
//! What is checked (each item is one check, counted passed or failed):
//!
//! * **I1** every acknowledged message is in the read-back at its acknowledged
//!   `seq`, with its exact text; every read-back message was sent by its sender
//!   with that text (nothing invented, nothing altered).
//! * **I2** a `client_msg_id` maps to exactly one `seq`: every `SendOk` for it
//!   names the same `seq`, and the read-back holds it at most once; each device
//!   receives it at most once.
//! * **I3** each chat's read-back `seq`s are exactly `1..=N`; every device
//!   receives each chat's messages in strictly increasing `seq` order with the
//!   content the read-back has at that `seq` (a `seq` is never shown for one
//!   message and later stored for another); a device marked complete
//!   ([`Recorder::complete`]) holds every `seq` `1..=N` of each of its chats.
//! * **I5** nobody receives, reads back or is acknowledged a message of a chat
//!   they are not a member of, and every probe by a non-member was refused.
//!
//! The checker is deliberately independent of natterd's code: it knows only the
//! wire protocol's promises (docs/PROTOCOL.md).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Failures listed in a [`Verdict`] (the counts are always complete).
const MAX_LISTED_FAILURES: usize = 20;

/// A device, as the checker names it: its user and a name unique per user.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Device {
    /// The device's user.
    pub user: u64,
    /// The device's name (unique for this user within a scenario).
    pub name: String,
}

/// One message as a device or a read-back saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The chat.
    pub chat: u64,
    /// Its `seq` in the chat.
    pub seq: u64,
    /// The sending user.
    pub sender: u64,
    /// The sender's `client_msg_id`.
    pub client_msg_id: u64,
    /// The text.
    pub text: String,
}

impl From<&natter_wire::Message> for Seen {
    fn from(m: &natter_wire::Message) -> Self {
        Seen {
            chat: m.chat_id,
            seq: m.seq,
            sender: m.sender,
            client_msg_id: m.client_msg_id,
            text: m.text.clone(),
        }
    }
}

/// What a sender did with one `(chat, sender, client_msg_id)`.
#[derive(Clone, Debug, Default)]
struct SendRecord {
    /// Texts it was sent with (a correct client always repeats the same one).
    texts: BTreeSet<String>,
    /// Attempts (first send plus retries).
    attempts: u64,
    /// `seq`s of every `SendOk` received for it.
    acks: Vec<u64>,
}

/// An operation a non-member tried on a chat, and whether natterd allowed it.
#[derive(Clone, Debug)]
struct Probe {
    user: u64,
    chat: u64,
    what: String,
    allowed: bool,
}

/// Everything recorded in one scenario run.
#[derive(Debug, Default)]
pub struct History {
    sends: HashMap<(u64, u64, u64), SendRecord>,
    deliveries: BTreeMap<Device, Vec<Seen>>,
    complete: BTreeSet<Device>,
    read_back: BTreeMap<u64, Vec<Seen>>,
    readers: Vec<(u64, u64)>,
    members: HashMap<u64, BTreeSet<u64>>,
    probes: Vec<Probe>,
}

/// A cheap, clonable handle that client threads record through.
#[derive(Clone, Debug, Default)]
pub struct Recorder(Arc<Mutex<History>>);

impl Recorder {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, History> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `user` is a member of `chat` (for the whole run).
    pub fn member(&self, chat: u64, user: u64) {
        self.lock().members.entry(chat).or_default().insert(user);
    }

    /// A send attempt (first or retry) of `text` under `client_msg_id`.
    pub fn sent(&self, sender: u64, chat: u64, client_msg_id: u64, text: &str) {
        let mut h = self.lock();
        let record = h.sends.entry((chat, sender, client_msg_id)).or_default();
        record.attempts += 1;
        if !record.texts.contains(text) {
            record.texts.insert(text.to_owned());
        }
    }

    /// A `SendOk` for `(chat, sender, client_msg_id)` naming `seq`.
    pub fn acked(&self, sender: u64, chat: u64, client_msg_id: u64, seq: u64) {
        self.lock()
            .sends
            .entry((chat, sender, client_msg_id))
            .or_default()
            .acks
            .push(seq);
    }

    /// `device` received `seen` (a live push or a sync page).
    pub fn delivered(&self, device: &Device, seen: Seen) {
        let mut h = self.lock();
        if let Some(list) = h.deliveries.get_mut(device) {
            list.push(seen);
        } else {
            h.deliveries.insert(device.clone(), vec![seen]);
        }
    }

    /// `device` has finished a sync after recovery: it must hold every message
    /// of each of its chats.
    pub fn complete(&self, device: &Device) {
        let mut h = self.lock();
        h.complete.insert(device.clone());
        h.deliveries.entry(device.clone()).or_default();
    }

    /// `reader` read `messages` of `chat` back (History after recovery). Call
    /// once per chat with the whole chat, in any order.
    pub fn read_back(&self, reader: u64, chat: u64, messages: Vec<Seen>) {
        let mut h = self.lock();
        h.readers.push((reader, chat));
        h.read_back.entry(chat).or_default().extend(messages);
    }

    /// Non-member `user` tried `what` on `chat`; `allowed` says whether natterd
    /// let it (sent it a message, acknowledged its send, returned history).
    pub fn probe(&self, user: u64, chat: u64, what: &str, allowed: bool) {
        self.lock().probes.push(Probe {
            user,
            chat,
            what: what.to_owned(),
            allowed,
        });
    }

    /// Messages acknowledged so far (distinct `(chat, sender, client_msg_id)`).
    pub fn acked_count(&self) -> u64 {
        self.lock().sends.values().filter(|s| !s.acks.is_empty()).count() as u64
    }

    /// Runs [`History::check`] over what was recorded.
    pub fn check(&self) -> Verdict {
        self.lock().check()
    }
}

/// The outcome of a check: counts per invariant and the first failures.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    /// Checks that held.
    pub passed: u64,
    /// Checks that did not.
    pub failed: u64,
    /// Failed checks per invariant (`"I1"`, `"I2"`, `"I3"`, `"I5"`).
    pub failed_by: BTreeMap<&'static str, u64>,
    /// The first [`MAX_LISTED_FAILURES`] failures, described.
    pub failures: Vec<String>,
    /// Distinct messages acknowledged.
    pub acked: u64,
    /// Acknowledged messages found intact in the read-back.
    pub verified: u64,
    /// Acknowledged messages missing from the read-back (or with another text).
    pub lost: u64,
    /// A `client_msg_id` stored twice, acked with two `seq`s, or received twice by one device.
    pub duplicated: u64,
    /// Deliveries out of `seq` order, gaps in a chat, holes in a complete device.
    pub reordered: u64,
    /// Messages read back.
    pub stored: u64,
    /// Messages delivered to devices (pushes and sync pages).
    pub delivered: u64,
}

impl Verdict {
    fn pass(&mut self) {
        self.passed += 1;
    }

    fn fail(&mut self, invariant: &'static str, what: String) {
        self.failed += 1;
        *self.failed_by.entry(invariant).or_default() += 1;
        if self.failures.len() < MAX_LISTED_FAILURES {
            self.failures.push(format!("{invariant}: {what}"));
        }
    }

    fn check(&mut self, ok: bool, invariant: &'static str, what: impl FnOnce() -> String) -> bool {
        if ok {
            self.pass();
        } else {
            self.fail(invariant, what());
        }
        ok
    }

    /// True when every check held.
    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} passed, {} failed", self.passed, self.failed)
    }
}

impl History {
    /// Checks I1, I2, I3 and I5 (module docs) over the whole record.
    pub fn check(&self) -> Verdict {
        let mut v = Verdict::default();
        // The read-back per chat, by seq (several entries at one seq = a duplicate seq).
        let mut by_seq: HashMap<u64, BTreeMap<u64, Vec<&Seen>>> = HashMap::new();
        let mut by_key: HashMap<(u64, u64, u64), Vec<u64>> = HashMap::new();
        for (chat, list) in &self.read_back {
            for s in list {
                v.stored += 1;
                by_seq.entry(*chat).or_default().entry(s.seq).or_default().push(s);
                by_key
                    .entry((s.chat, s.sender, s.client_msg_id))
                    .or_default()
                    .push(s.seq);
            }
        }
        let read_chats: BTreeSet<u64> = self.read_back.keys().copied().collect();

        // I1 and I2 from the senders' side.
        let mut keys: Vec<_> = self.sends.keys().copied().collect();
        keys.sort_unstable();
        for key in keys {
            let Some(record) = self.sends.get(&key) else {
                continue;
            };
            let (chat, sender, cmid) = key;
            let Some(&first) = record.acks.first() else {
                continue;
            };
            v.acked += 1;
            let one_seq = record.acks.iter().all(|&s| s == first);
            if !v.check(one_seq, "I2", || {
                format!(
                    "chat {chat} sender {sender} client_msg_id {cmid} acked with seqs {:?}",
                    record.acks
                )
            }) {
                v.duplicated += 1;
            }
            if !read_chats.contains(&chat) {
                continue;
            }
            let at = by_seq.get(&chat).and_then(|m| m.get(&first));
            let intact = at.is_some_and(|list| {
                list.iter()
                    .any(|s| s.sender == sender && s.client_msg_id == cmid && record.texts.contains(&s.text))
            });
            if v.check(intact, "I1", || {
                format!("chat {chat} seq {first} (sender {sender} client_msg_id {cmid}) was acked but is missing or altered after recovery: {at:?}")
            }) {
                v.verified += 1;
            } else {
                v.lost += 1;
            }
        }
        // I1: nothing in the read-back that was not sent so; I2: once per client_msg_id.
        for (chat, list) in &self.read_back {
            for s in list {
                let sent = self.sends.get(&(*chat, s.sender, s.client_msg_id));
                v.check(sent.is_some_and(|r| r.texts.contains(&s.text)), "I1", || {
                    format!(
                        "chat {chat} seq {} holds a message its sender never sent with that text",
                        s.seq
                    )
                });
            }
        }
        let mut stored_keys: Vec<_> = by_key.iter().collect();
        stored_keys.sort_unstable();
        for ((chat, sender, cmid), seqs) in stored_keys {
            if !v.check(seqs.len() == 1, "I2", || {
                format!("chat {chat} sender {sender} client_msg_id {cmid} stored at seqs {seqs:?}")
            }) {
                v.duplicated += 1;
            }
        }
        // I3: each chat is exactly 1..=N.
        let mut heads: HashMap<u64, u64> = HashMap::new();
        for chat in &read_chats {
            let seqs = by_seq.get(chat);
            let n = seqs.map_or(0, BTreeMap::len) as u64;
            heads.insert(*chat, n);
            let exact = seqs.is_none_or(|m| m.keys().copied().eq(1..=n) && m.values().all(|l| l.len() == 1));
            if !v.check(exact, "I3", || {
                let got: Vec<_> = seqs.map(|m| m.keys().copied().collect()).unwrap_or_default();
                format!(
                    "chat {chat} read back seqs are not exactly 1..={n}: {}",
                    summarize(&got)
                )
            }) {
                v.reordered += 1;
            }
        }
        // I2, I3, I5 from each device's side.
        for (device, list) in &self.deliveries {
            let mut last: HashMap<u64, u64> = HashMap::new();
            let mut held: HashMap<u64, BTreeSet<u64>> = HashMap::new();
            let mut keys_seen: BTreeSet<(u64, u64, u64)> = BTreeSet::new();
            for s in list {
                v.delivered += 1;
                let member = self
                    .members
                    .get(&s.chat)
                    .is_some_and(|m| m.contains(&device.user));
                v.check(member, "I5", || {
                    format!(
                        "device {device:?} received chat {} seq {} but is not a member",
                        s.chat, s.seq
                    )
                });
                let fresh = keys_seen.insert((s.chat, s.sender, s.client_msg_id));
                let newer = last.get(&s.chat).is_none_or(|&l| s.seq > l);
                if !v.check(fresh, "I2", || {
                    format!(
                        "device {device:?} received chat {} seq {} (client_msg_id {}) twice",
                        s.chat, s.seq, s.client_msg_id
                    )
                }) {
                    v.duplicated += 1;
                } else if !v.check(newer, "I3", || {
                    format!(
                        "device {device:?} received chat {} seq {} after seq {}",
                        s.chat,
                        s.seq,
                        last.get(&s.chat).copied().unwrap_or(0)
                    )
                }) {
                    v.reordered += 1;
                }
                last.insert(s.chat, s.seq.max(last.get(&s.chat).copied().unwrap_or(0)));
                held.entry(s.chat).or_default().insert(s.seq);
                if let Some(stored) = by_seq.get(&s.chat) {
                    let same = stored.get(&s.seq).is_some_and(|l| {
                        l.iter().any(|x| {
                            x.sender == s.sender && x.client_msg_id == s.client_msg_id && x.text == s.text
                        })
                    });
                    v.check(same, "I3", || {
                        format!("device {device:?} was shown chat {} seq {} as client_msg_id {} of sender {}, but the store holds {:?} there", s.chat, s.seq, s.client_msg_id, s.sender, stored.get(&s.seq))
                    });
                }
            }
            if self.complete.contains(device) {
                for chat in &read_chats {
                    let member = self.members.get(chat).is_some_and(|m| m.contains(&device.user));
                    if !member {
                        continue;
                    }
                    let n = heads.get(chat).copied().unwrap_or(0);
                    let got = held.get(chat);
                    let all = got.map_or(0, BTreeSet::len) as u64 == n
                        && got.is_none_or(|g| g.iter().copied().eq(1..=n));
                    if !v.check(all, "I3", || {
                        let got: Vec<u64> = got.map(|g| g.iter().copied().collect()).unwrap_or_default();
                        format!("device {device:?} finished its sync holding chat {chat} seqs {} instead of 1..={n}", summarize(&got))
                    }) {
                        v.reordered += 1;
                    }
                }
            }
        }
        // I5: acks and reads only for members; probes refused.
        for ((chat, sender, cmid), record) in &self.sends {
            if record.acks.is_empty() {
                continue;
            }
            let member = self.members.get(chat).is_some_and(|m| m.contains(sender));
            v.check(member, "I5", || {
                format!("user {sender} was acknowledged client_msg_id {cmid} in chat {chat} without being a member")
            });
        }
        for (reader, chat) in &self.readers {
            let member = self.members.get(chat).is_some_and(|m| m.contains(reader));
            v.check(member, "I5", || {
                format!("user {reader} read chat {chat} back without being a member")
            });
        }
        for p in &self.probes {
            let member = self.members.get(&p.chat).is_some_and(|m| m.contains(&p.user));
            v.check(member || !p.allowed, "I5", || {
                format!(
                    "non-member {} was allowed to {} in chat {}",
                    p.user, p.what, p.chat
                )
            });
        }
        v
    }
}

/// `1..=N` lists shortened for a failure message: the first and last few.
fn summarize(seqs: &[u64]) -> String {
    if seqs.len() <= 12 {
        return format!("{seqs:?}");
    }
    let (head, tail) = (&seqs[..6], &seqs[seqs.len() - 6..]);
    format!("{head:?} … {tail:?} ({} in all)", seqs.len())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn seen(chat: u64, seq: u64, sender: u64, cmid: u64) -> Seen {
        Seen {
            chat,
            seq,
            sender,
            client_msg_id: cmid,
            text: format!("text {sender}/{cmid}"),
        }
    }

    fn dev(user: u64) -> Device {
        Device {
            user,
            name: "phone".into(),
        }
    }

    /// A healthy history: chat 1 with members 10 and 20; 10 sends three
    /// messages, all acked, stored 1..=3, delivered to 20 in order.
    fn healthy() -> Recorder {
        let r = Recorder::new();
        r.member(1, 10);
        r.member(1, 20);
        for cmid in 1..=3 {
            r.sent(10, 1, cmid, &format!("text 10/{cmid}"));
            r.acked(10, 1, cmid, cmid);
            r.delivered(&dev(20), seen(1, cmid, 10, cmid));
        }
        r.complete(&dev(20));
        r
    }

    fn read_all(r: &Recorder, list: &[Seen]) {
        r.read_back(20, 1, list.to_vec());
    }

    #[test]
    fn a_healthy_history_passes_every_check() {
        let r = healthy();
        read_all(&r, &[seen(1, 1, 10, 1), seen(1, 2, 10, 2), seen(1, 3, 10, 3)]);
        let v = r.check();
        assert!(v.ok(), "{v:?}");
        assert_eq!(
            (v.acked, v.verified, v.lost, v.duplicated, v.reordered),
            (3, 3, 0, 0, 0)
        );
        assert!(v.passed > 10, "{v:?}");
        assert_eq!(v.to_string(), format!("{} passed, 0 failed", v.passed));
    }

    #[test]
    fn a_lost_ack_fails_i1() {
        let r = healthy();
        // seq 3 was acknowledged, but recovery does not have it.
        read_all(&r, &[seen(1, 1, 10, 1), seen(1, 2, 10, 2)]);
        let v = r.check();
        assert!(!v.ok());
        assert_eq!(v.lost, 1);
        assert!(v.failed_by.contains_key("I1"), "{v:?}");
    }

    #[test]
    fn an_altered_text_fails_i1() {
        let r = healthy();
        let mut bad = seen(1, 2, 10, 2);
        bad.text = "not what was sent".into();
        read_all(&r, &[seen(1, 1, 10, 1), bad, seen(1, 3, 10, 3)]);
        let v = r.check();
        assert_eq!(v.lost, 1, "{v:?}");
        assert!(v.failed_by["I1"] >= 2, "{v:?}");
    }

    #[test]
    fn a_duplicate_fails_i2() {
        let r = healthy();
        // client_msg_id 3 stored twice (a retry stored again instead of deduplicated).
        r.sent(10, 1, 3, "text 10/3");
        r.acked(10, 1, 3, 4);
        read_all(
            &r,
            &[
                seen(1, 1, 10, 1),
                seen(1, 2, 10, 2),
                seen(1, 3, 10, 3),
                seen(1, 4, 10, 3),
            ],
        );
        let v = r.check();
        assert!(v.duplicated >= 2, "{v:?}");
        assert!(v.failed_by.contains_key("I2"), "{v:?}");
    }

    #[test]
    fn a_device_receiving_a_message_twice_fails_i2() {
        let r = healthy();
        r.delivered(&dev(20), seen(1, 3, 10, 3));
        read_all(&r, &[seen(1, 1, 10, 1), seen(1, 2, 10, 2), seen(1, 3, 10, 3)]);
        let v = r.check();
        assert_eq!(v.failed_by.get("I2"), Some(&1), "{v:?}");
    }

    #[test]
    fn a_gap_fails_i3() {
        let r = Recorder::new();
        r.member(1, 10);
        r.sent(10, 1, 1, "text 10/1");
        r.sent(10, 1, 2, "text 10/2");
        r.acked(10, 1, 1, 1);
        r.acked(10, 1, 2, 3);
        // seq 2 was skipped.
        r.read_back(10, 1, vec![seen(1, 1, 10, 1), seen(1, 3, 10, 2)]);
        let v = r.check();
        assert_eq!(v.failed_by.get("I3"), Some(&1), "{v:?}");
        assert_eq!(v.lost, 0);
    }

    #[test]
    fn a_reorder_fails_i3() {
        let r = Recorder::new();
        r.member(1, 10);
        r.member(1, 20);
        for cmid in 1..=3 {
            r.sent(10, 1, cmid, &format!("text 10/{cmid}"));
            r.acked(10, 1, cmid, cmid);
        }
        r.delivered(&dev(20), seen(1, 1, 10, 1));
        r.delivered(&dev(20), seen(1, 3, 10, 3));
        r.delivered(&dev(20), seen(1, 2, 10, 2));
        read_all(&r, &[seen(1, 1, 10, 1), seen(1, 2, 10, 2), seen(1, 3, 10, 3)]);
        let v = r.check();
        assert_eq!(v.reordered, 1, "{v:?}");
        assert!(v.failed_by.contains_key("I3"));
    }

    #[test]
    fn a_complete_device_missing_a_message_fails_i3() {
        let r = Recorder::new();
        r.member(1, 10);
        r.member(1, 20);
        for cmid in 1..=3 {
            r.sent(10, 1, cmid, &format!("text 10/{cmid}"));
            r.acked(10, 1, cmid, cmid);
        }
        r.delivered(&dev(20), seen(1, 1, 10, 1));
        r.delivered(&dev(20), seen(1, 3, 10, 3));
        r.complete(&dev(20));
        read_all(&r, &[seen(1, 1, 10, 1), seen(1, 2, 10, 2), seen(1, 3, 10, 3)]);
        let v = r.check();
        assert_eq!(v.failed_by.get("I3"), Some(&1), "{v:?}");
    }

    #[test]
    fn a_seq_shown_for_one_message_and_stored_for_another_fails_i3() {
        let r = healthy();
        // Before a crash device 20 was pushed seq 4 = client_msg_id 4, which was never stored;
        // after the restart seq 4 went to client_msg_id 5.
        r.sent(10, 1, 4, "text 10/4");
        r.sent(10, 1, 5, "text 10/5");
        r.acked(10, 1, 5, 4);
        r.delivered(&dev(20), seen(1, 4, 10, 4));
        read_all(
            &r,
            &[
                seen(1, 1, 10, 1),
                seen(1, 2, 10, 2),
                seen(1, 3, 10, 3),
                seen(1, 4, 10, 5),
            ],
        );
        let v = r.check();
        assert!(v.failed_by.contains_key("I3"), "{v:?}");
    }

    #[test]
    fn a_non_member_receiving_or_being_allowed_fails_i5() {
        let r = healthy();
        r.delivered(&dev(30), seen(1, 1, 10, 1));
        r.probe(31, 1, "send", true);
        r.probe(32, 1, "read history", false);
        read_all(&r, &[seen(1, 1, 10, 1), seen(1, 2, 10, 2), seen(1, 3, 10, 3)]);
        let v = r.check();
        assert_eq!(v.failed_by.get("I5"), Some(&2), "{v:?}");
    }
}
