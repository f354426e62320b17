//! Where a password comes from: `--password`, else `NATTER_PASSWORD` (both handled by
//! clap), else a prompt on the controlling terminal (`/dev/tty`) with echo turned off
//! through termios and restored afterwards, even when reading fails.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};

use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};

use crate::error::CliError;

/// Longest password line read from the terminal (the server takes at most 1,024 bytes).
const MAX_PASSWORD_BYTES: u64 = 4096;

/// The password given, or one typed at a prompt without echo.
///
/// # Errors
/// [`CliError::Input`] when none was given and there is no terminal to ask on.
pub(crate) fn obtain(given: Option<String>, prompt: &str) -> Result<String, CliError> {
    if let Some(password) = given {
        return Ok(password);
    }
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| {
            CliError::Input(
                "no password: give --password PW, set NATTER_PASSWORD, or run in a terminal".into(),
            )
        })?;
    let saved =
        tcgetattr(&tty).map_err(|e| CliError::Input(format!("cannot read the terminal's mode: {e}")))?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(&tty, OptionalActions::Flush, &quiet)
        .map_err(|e| CliError::Input(format!("cannot turn off echo: {e}")))?;
    let mut writer = &tty;
    let mut line = String::new();
    let read = write!(writer, "{prompt}")
        .and_then(|()| writer.flush())
        .and_then(|()| {
            use std::io::Read;
            BufReader::new((&tty).take(MAX_PASSWORD_BYTES)).read_line(&mut line)
        });
    // Restore echo before anything else can fail.
    let restored = tcsetattr(&tty, OptionalActions::Now, &saved);
    read.map_err(|e| CliError::Input(format!("cannot read the password: {e}")))?;
    restored.map_err(|e| CliError::Input(format!("cannot restore the terminal: {e}")))?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        return Err(CliError::Input("no password typed".into()));
    }
    Ok(password)
}
