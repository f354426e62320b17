//! [`Stamp`]: what the benchmark writes into every message text so that a recipient
//! can tell, without any shared state, when the message was (meant to be) sent, by
//! whom, and which of the sender's messages it is.
//!
//! The text is exactly [`TEXT_LEN`] ASCII bytes:
//! `natter-bench t=<20 digits> s=<20 digits> n=<20 digits> ` followed by filler dots —
//! `t` the intended send instant in nanoseconds since the benchmark's clock origin,
//! `s` the sender's user id, `n` the sender's message counter. Fixed offsets keep the
//! parse cheap: a recipient handles up to millions of messages per second.

/// Length of every benchmark message text, in bytes (ASCII, so also in characters).
pub(crate) const TEXT_LEN: usize = 160;

/// The text's fixed prefix.
const PREFIX: &str = "natter-bench t=";
/// Width of each number field.
const DIGITS: usize = 20;
/// Offset of the `t` digits.
const T_AT: usize = PREFIX.len();
/// Offset of the `s` digits (after `" s="`).
const S_AT: usize = T_AT + DIGITS + 3;
/// Offset of the `n` digits (after `" n="`).
const N_AT: usize = S_AT + DIGITS + 3;
/// The byte that pads the text to [`TEXT_LEN`].
const FILLER: u8 = b'.';

/// The facts a benchmark message carries in its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// Intended send instant, nanoseconds since the benchmark's clock origin.
    pub(crate) sent_ns: u64,
    /// The sender's user id.
    pub(crate) sender: u64,
    /// The sender's message counter (1, 2, …).
    pub(crate) counter: u64,
}

impl Stamp {
    /// Replaces the contents of `text` with this stamp, padded to [`TEXT_LEN`] bytes.
    pub(crate) fn write_to(&self, text: &mut String) {
        let mut bytes = [FILLER; TEXT_LEN];
        bytes[..T_AT].copy_from_slice(PREFIX.as_bytes());
        write_digits(&mut bytes[T_AT..T_AT + DIGITS], self.sent_ns);
        bytes[S_AT - 3..S_AT].copy_from_slice(b" s=");
        write_digits(&mut bytes[S_AT..S_AT + DIGITS], self.sender);
        bytes[N_AT - 3..N_AT].copy_from_slice(b" n=");
        write_digits(&mut bytes[N_AT..N_AT + DIGITS], self.counter);
        bytes[N_AT + DIGITS] = b' ';
        text.clear();
        // Only ASCII was written above, so this is always valid UTF-8.
        text.push_str(std::str::from_utf8(&bytes).unwrap_or_default());
    }

    /// `len` filler bytes, appended after a stamp to make longer texts
    /// (`--text-bytes`).
    pub(crate) fn padding(len: usize) -> String {
        char::from(FILLER).to_string().repeat(len)
    }

    /// The stamp in a text of [`TEXT_LEN`] + `padding` bytes whose tail is
    /// `padding` filler bytes (see [`Stamp::padding`]), `None` if the text is not one
    /// the benchmark wrote.
    pub(crate) fn parse_padded(text: &str, padding: usize) -> Option<Stamp> {
        if text.len() != TEXT_LEN.checked_add(padding)? {
            return None;
        }
        let tail = text.get(TEXT_LEN..)?;
        if !tail.bytes().all(|b| b == FILLER) {
            return None;
        }
        Stamp::parse(text.get(..TEXT_LEN)?)
    }

    /// The stamp in a message text, `None` if the text is not one the benchmark wrote.
    pub(crate) fn parse(text: &str) -> Option<Stamp> {
        if text.len() != TEXT_LEN || !text.starts_with(PREFIX) {
            return None;
        }
        let field = |at: usize| -> Option<u64> { text.get(at..at + DIGITS)?.parse().ok() };
        if text.get(S_AT - 3..S_AT) != Some(" s=") || text.get(N_AT - 3..N_AT) != Some(" n=") {
            return None;
        }
        Some(Stamp {
            sent_ns: field(T_AT)?,
            sender: field(S_AT)?,
            counter: field(N_AT)?,
        })
    }
}

/// Writes `value` in decimal, zero-padded to the width of `out` (20 digits hold any
/// `u64`).
fn write_digits(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_round_trips_through_a_fixed_length_text() {
        let stamp = Stamp {
            sent_ns: 12_345_678_901,
            sender: 42,
            counter: u64::MAX,
        };
        let mut text = String::from("left over from the previous message");
        stamp.write_to(&mut text);
        assert_eq!(text.len(), TEXT_LEN);
        assert!(text.is_ascii());
        assert!(text.starts_with(
            "natter-bench t=00000000012345678901 s=00000000000000000042 n=18446744073709551615 ."
        ));
        assert!(text.ends_with("..."));
        assert_eq!(Stamp::parse(&text), Some(stamp));
    }

    #[test]
    fn foreign_texts_are_not_stamps() {
        assert_eq!(Stamp::parse("hello"), None);
        let mut text = String::new();
        Stamp {
            sent_ns: 1,
            sender: 2,
            counter: 3,
        }
        .write_to(&mut text);
        let damaged = text.replacen(" s=", " x=", 1);
        assert_eq!(Stamp::parse(&damaged), None);
        let not_digits = text.replacen("00000000000000000001", "0000000000000000000a", 1);
        assert_eq!(Stamp::parse(&not_digits), None);
        let longer = format!("{text}.");
        assert_eq!(Stamp::parse(&longer), None);
    }

    #[test]
    fn padded_stamps_parse_only_with_their_exact_padding() {
        let stamp = Stamp {
            sent_ns: 5,
            sender: 6,
            counter: 7,
        };
        let mut text = String::new();
        stamp.write_to(&mut text);
        assert_eq!(Stamp::parse_padded(&text, 0), Some(stamp));
        text.push_str(&Stamp::padding(9_840));
        assert_eq!(text.len(), 10_000);
        assert_eq!(Stamp::parse_padded(&text, 9_840), Some(stamp));
        assert_eq!(Stamp::parse_padded(&text, 9_839), None);
        assert_eq!(Stamp::parse(&text), None);
        let damaged = format!("{}x", &text[..text.len() - 1]);
        assert_eq!(Stamp::parse_padded(&damaged, 9_840), None);
    }
}
