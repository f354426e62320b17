//! How `natter` prints things: UTC timestamps, message lines and presence lines. One
//! place, so `history`, `tail` and `chat` look alike and tests can rely on the shapes:
//!
//! * a message: `2026-12-02 14:30:01 [bob] alice: hello` (`[chat]` left out in `chat`);
//!   the lines of a multi-line text after the first are indented by four spaces;
//! * presence: `2026-12-02 14:30:05 * bob is online` / `* bob is offline (last seen …)`.

use std::io::Write;

use natter_wire::Message;

use crate::error::CliError;

/// `println!` for the verbs: writes one line to stdout and returns
/// [`CliError::OutputClosed`] from the enclosing function when stdout is gone (`natter
/// tail | head -1`), instead of panicking as `println!` does.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::format::say(&format!($($arg)*))?
    };
}
pub(crate) use out;

/// Writes `line` and a newline to stdout (line-buffered, so a pipe sees each at once).
///
/// # Errors
/// [`CliError::OutputClosed`] when stdout is closed; [`CliError::Input`] for other write errors.
pub(crate) fn say(line: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").map_err(|e| match e.kind() {
        std::io::ErrorKind::BrokenPipe => CliError::OutputClosed,
        _ => CliError::Input(format!("cannot write to stdout: {e}")),
    })
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
pub(crate) fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of `days` since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// One message as a line (or several, for a multi-line text). `chat` is the chat's
/// label, or `None` when the view shows one chat only.
pub(crate) fn message_line(message: &Message, chat: Option<&str>, sender: &str) -> String {
    let text = message.text.replace('\n', "\n    ");
    match chat {
        Some(chat) => format!("{} [{chat}] {sender}: {text}", utc(message.server_ts_ms)),
        None => format!("{} {sender}: {text}", utc(message.server_ts_ms)),
    }
}

/// A friend's presence as a line; `now_ms` stamps it (presence frames carry no time of
/// their own for `online`).
pub(crate) fn presence_line(name: &str, online: bool, last_seen_ms: u64, now_ms: u64) -> String {
    if online {
        format!("{} * {name} is online", utc(now_ms))
    } else {
        format!(
            "{} * {name} is offline ({})",
            utc(now_ms),
            last_seen(last_seen_ms)
        )
    }
}

/// `last seen 2026-…` or `never seen`.
pub(crate) fn last_seen(last_seen_ms: u64) -> String {
    if last_seen_ms == 0 {
        "never seen".into()
    } else {
        format!("last seen {}", utc(last_seen_ms))
    }
}

/// The wall clock in milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        // 2000-02-29 12:34:56 UTC, a leap day.
        assert_eq!(utc(951_827_696_000), "2000-02-29 12:34:56");
        // 2026-12-02 14:30:01 UTC.
        assert_eq!(utc(1_796_221_801_000), "2026-12-02 14:30:01");
    }

    #[test]
    fn message_lines_indent_continuations() {
        let m = Message {
            chat_id: 5,
            seq: 1,
            sender: 1,
            server_ts_ms: 0,
            client_msg_id: 9,
            text: "one\ntwo".into(),
            ..Message::default()
        };
        assert_eq!(
            message_line(&m, Some("bob"), "alice"),
            "1970-01-01 00:00:00 [bob] alice: one\n    two"
        );
        assert_eq!(
            message_line(&m, None, "alice"),
            "1970-01-01 00:00:00 alice: one\n    two"
        );
    }

    #[test]
    fn presence_lines() {
        assert!(presence_line("bob", true, 0, 0).ends_with("* bob is online"));
        assert!(presence_line("bob", false, 0, 0).ends_with("* bob is offline (never seen)"));
    }
}
