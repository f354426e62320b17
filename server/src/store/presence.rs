//! What presence reads from the store: a user's friend ids (one prefix scan of
//! `friends`, no usernames) and a user's durable last-seen time (`last_seen`).
//!
//! `last_seen` rows are *written* only by the group-commit writer
//! (`WriteOp::LastSeen`, see `writer.rs`), when a user's home core decides the
//! user went offline; this file only reads them.

use super::keys::{self, FriendState};
use super::{Store, StoreError, corrupt};
use crate::ids::UserId;

impl Store {
    /// The ids of `user`'s accepted friends, ascending (pending requests are
    /// left out). One prefix scan; cheaper than [`Store::friends`], which also
    /// reads every friend's username.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn friend_ids(&self, user: UserId) -> Result<Vec<UserId>, StoreError> {
        let mut ids = Vec::new();
        for guard in self.friends.prefix(keys::id(user.0)) {
            let (key, value) = guard.into_inner()?;
            let (_, other) = keys::decode_pair(&key).ok_or_else(|| corrupt(format!("friends[{user}/..]")))?;
            match FriendState::decode(&value) {
                Some(FriendState::Friend) => ids.push(UserId(other)),
                Some(FriendState::Incoming | FriendState::Outgoing) => {}
                None => return Err(corrupt(format!("friends[{user}/{other}]"))),
            }
        }
        Ok(ids)
    }

    /// When `user` was last seen online (ms since the Unix epoch), as last
    /// committed by the writer; `None` when never recorded.
    ///
    /// # Errors
    /// A store failure, or [`StoreError::Corrupt`].
    pub fn last_seen(&self, user: UserId) -> Result<Option<u64>, StoreError> {
        match self.last_seen.get(keys::id(user.0))? {
            None => Ok(None),
            Some(value) => keys::decode_id(&value)
                .map(Some)
                .ok_or_else(|| corrupt(format!("last_seen[{user}]"))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use crate::ids::CoreId;
    use crate::store::Store;
    use crate::store::writer::WriteOp;

    const PHC: &str = "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA";

    #[test]
    fn friend_ids_leave_out_pending_requests() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.create_user("a_user", PHC).unwrap();
        let b = store.create_user("b_user", PHC).unwrap();
        let c = store.create_user("c_user", PHC).unwrap();
        let d = store.create_user("d_user", PHC).unwrap();
        store.request_friend(a, b).unwrap();
        store.accept_friend(b, a).unwrap();
        store.request_friend(a, c).unwrap();
        store.request_friend(d, a).unwrap();
        assert_eq!(store.friend_ids(a).unwrap(), vec![b]);
        assert_eq!(store.friend_ids(b).unwrap(), vec![a]);
        assert!(store.friend_ids(c).unwrap().is_empty());
        store.remove_friend(b, a).unwrap();
        assert!(store.friend_ids(a).unwrap().is_empty());
    }

    #[test]
    fn last_seen_is_written_by_the_writer_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.create_user("a_user", PHC).unwrap();
        assert_eq!(store.last_seen(a).unwrap(), None);
        let op = |ms| WriteOp::LastSeen {
            origin: CoreId(0),
            user: a,
            last_seen_ms: ms,
        };
        store.commit_writes(&[op(1_700_000_000_000), op(1_700_000_000_500)]);
        assert_eq!(store.last_seen(a).unwrap(), Some(1_700_000_000_500));
        store.close().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.last_seen(a).unwrap(), Some(1_700_000_000_500));
    }
}
