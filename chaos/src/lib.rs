//! natter-chaos: natter's fault suite (issue 13, items 1 and 2).
//!
//! * [`backoff`] — jittered exponential backoff for the clients' reconnects.
//! * [`history`] — the history checker: what clients sent, were acknowledged,
//!   received and read back, checked against I1 (acknowledged ⇒ kept, exact
//!   text), I2 (one `client_msg_id`, one `seq`, once per device), I3 (each chat
//!   is `1..=N`, seen in order) and I5 (members only).
//! * [`load`] — clients on `natter-client` that retry unacknowledged sends
//!   with the same `client_msg_id` and devices that reconnect and sync.
//! * [`proxy`] — a TCP fault proxy: delay and jitter, cuts after N bytes or
//!   right after a `SendOk`, blackholes.
//! * [`spawn`] — the natterd child a scenario starts, kills and restarts.
//! * [`scenarios`] — the fault scenarios `natter-chaos` runs: `kill9`, `fiu`,
//!   `diskfull`, `memcap`, `flap`. Each is bounded in time, talks to loopback
//!   only, ends only the processes it started, and prints one
//!   `N passed, N failed` line with its figures.

pub mod backoff;
pub mod history;
pub mod load;
pub mod proxy;
pub mod rng;
pub mod scenarios;
pub mod spawn;
