//! The profile directory: where `natter` keeps who is logged in (`session.json`, the
//! bearer token, mode 0600) and this profile's device id (`device-id`), and how the
//! default directory is found (`$XDG_CONFIG_HOME/natter`, else `~/.config/natter`).
//!
//! Files are written to a temporary name and renamed, so a crash never leaves half a
//! token behind; the directory is created with mode 0700.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::CliError;

/// The file holding the session (token included).
const SESSION_FILE: &str = "session.json";

/// The file holding this profile's device id (16 hex digits).
const DEVICE_FILE: &str = "device-id";

/// Largest profile file read (a session is ~300 bytes); anything bigger is not ours.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// What a login leaves in the profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    /// The side-port URL the login went to; later commands use it unless `--server` says otherwise.
    pub(crate) server: String,
    /// Who is logged in (lowercase, as the server stores it).
    pub(crate) username: String,
    /// Their user id.
    pub(crate) user_id: u64,
    /// The device the server created for this login.
    pub(crate) device_id: u64,
    /// The bearer token (secret: the file is mode 0600).
    pub(crate) token: String,
}

/// One profile directory.
#[derive(Clone, Debug)]
pub(crate) struct Profile {
    dir: PathBuf,
}

impl Profile {
    /// The profile at `dir`, or the per-user default when `None`.
    ///
    /// # Errors
    /// [`CliError::Profile`] when no default can be found (neither `XDG_CONFIG_HOME`
    /// nor `HOME` is set).
    pub(crate) fn open(dir: Option<PathBuf>) -> Result<Profile, CliError> {
        let dir = match dir {
            Some(dir) => dir,
            None => default_dir().ok_or_else(|| CliError::Profile {
                path: "(default)".into(),
                detail: "neither XDG_CONFIG_HOME nor HOME is set: pass --profile DIR".into(),
            })?,
        };
        Ok(Profile { dir })
    }

    /// The directory, for messages.
    pub(crate) fn display(&self) -> String {
        self.dir.display().to_string()
    }

    /// The stored session, `None` when logged out.
    ///
    /// # Errors
    /// [`CliError::Profile`] when the file exists but cannot be read or parsed.
    pub(crate) fn session(&self) -> Result<Option<Session>, CliError> {
        let path = self.dir.join(SESSION_FILE);
        let Some(bytes) = self.read(&path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CliError::Profile {
                path: path.display().to_string(),
                detail: format!("not a natter session ({e}); run `natter logout` and log in again"),
            })
    }

    /// Stores `session` (mode 0600).
    ///
    /// # Errors
    /// [`CliError::Profile`] when the directory or file cannot be written.
    pub(crate) fn save_session(&self, session: &Session) -> Result<(), CliError> {
        let json = serde_json::to_vec_pretty(session).map_err(|e| CliError::Profile {
            path: self.display(),
            detail: e.to_string(),
        })?;
        self.write(SESSION_FILE, &json)
    }

    /// Removes the session; succeeds when there was none.
    ///
    /// # Errors
    /// [`CliError::Profile`] when the file exists and cannot be removed.
    pub(crate) fn clear_session(&self) -> Result<(), CliError> {
        let path = self.dir.join(SESSION_FILE);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(profile_error(&path, &e)),
        }
    }

    /// This profile's device id: 16 hex digits made once from the OS's random source and
    /// kept in `device-id`, so every login from this profile names the same device.
    ///
    /// # Errors
    /// [`CliError::Profile`] when the file cannot be read or written.
    pub(crate) fn device_id(&self) -> Result<String, CliError> {
        let path = self.dir.join(DEVICE_FILE);
        if let Some(bytes) = self.read(&path)? {
            let id = String::from_utf8_lossy(&bytes).trim().to_owned();
            if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(id);
            }
        }
        let random = getrandom::u64().map_err(|e| CliError::Profile {
            path: path.display().to_string(),
            detail: format!("no random source for a device id: {e}"),
        })?;
        let id = format!("{random:016x}");
        self.write(DEVICE_FILE, format!("{id}\n").as_bytes())?;
        Ok(id)
    }

    /// Reads a small file; `None` when it does not exist.
    fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, CliError> {
        use std::io::Read;
        let file = match fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(profile_error(path, &e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| profile_error(path, &e))?;
        Ok(Some(bytes))
    }

    /// Writes `name` in the directory atomically with mode 0600 (the directory 0700).
    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), CliError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| profile_error(&self.dir, &e))?;
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let written = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut file| {
                file.write_all(bytes)?;
                file.sync_all()
            });
        written.map_err(|e| profile_error(&tmp, &e))?;
        fs::rename(&tmp, &path).map_err(|e| profile_error(&path, &e))
    }
}

/// `$XDG_CONFIG_HOME/natter`, else `$HOME/.config/natter` (empty variables count as unset,
/// as the XDG spec says).
fn default_dir() -> Option<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(xdg) = non_empty("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(xdg).join("natter"));
    }
    non_empty("HOME").map(|home| PathBuf::from(home).join(".config").join("natter"))
}

fn profile_error(path: &Path, error: &std::io::Error) -> CliError {
    CliError::Profile {
        path: path.display().to_string(),
        detail: error.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn session() -> Session {
        Session {
            server: "http://127.0.0.1:7180".into(),
            username: "alice".into(),
            user_id: 1,
            device_id: 2,
            token: "ab".repeat(32),
        }
    }

    #[test]
    fn session_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let profile = Profile::open(Some(dir.path().join("p"))).unwrap();
        assert_eq!(profile.session().unwrap(), None);
        profile.save_session(&session()).unwrap();
        assert_eq!(profile.session().unwrap(), Some(session()));
        let file = dir.path().join("p").join(SESSION_FILE);
        let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(dir.path().join("p")).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        profile.clear_session().unwrap();
        assert_eq!(profile.session().unwrap(), None);
        profile.clear_session().unwrap();
    }

    #[test]
    fn device_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let profile = Profile::open(Some(dir.path().to_path_buf())).unwrap();
        let id = profile.device_id().unwrap();
        assert_eq!(id.len(), 16);
        assert_eq!(profile.device_id().unwrap(), id);
    }

    #[test]
    fn a_corrupt_session_is_a_profile_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SESSION_FILE), b"{not json").unwrap();
        let profile = Profile::open(Some(dir.path().to_path_buf())).unwrap();
        let err = profile.session().unwrap_err();
        assert!(err.to_string().contains("not a natter session"), "{err}");
    }
}
