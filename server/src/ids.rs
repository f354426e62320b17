//! Newtypes for every identifier natterd hands around, and the ownership hash
//! that maps users and chats to cores.

use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $inner:ty) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// A user account, assigned at signup (1, 2, 3, …; never reused).
    UserId,
    u64
);
id_type!(
    /// One logged-in device of a user, assigned at login (unique per server).
    DeviceId,
    u64
);
id_type!(
    /// A chat (a DM or a group).
    ChatId,
    u64
);
id_type!(
    /// A message's position in its chat: gapless, strictly increasing from 1.
    Seq,
    u64
);
id_type!(
    /// A client-chosen id for a send, used to dedupe retries.
    ClientMsgId,
    u64
);
id_type!(
    /// One event-loop thread, `0..cores`.
    CoreId,
    usize
);

/// Spreads ids over cores: a 64-bit finaliser (from SplitMix64), so that
/// sequential ids land evenly and the mapping is stable across restarts.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl UserId {
    /// The core that owns this user's sessions, presence and friend list.
    pub fn home_core(self, cores: usize) -> CoreId {
        CoreId((mix(self.0) % cores.max(1) as u64) as usize)
    }
}

impl ChatId {
    /// The core that owns this chat's members, next seq and dedupe window.
    pub fn owner_core(self, cores: usize) -> CoreId {
        CoreId((mix(self.0 ^ 0x5555_5555_5555_5555) % cores.max(1) as u64) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_cores_spread_and_are_stable() {
        let mut counts = [0usize; 2];
        for id in 1..=1000 {
            let core = UserId(id).home_core(2);
            assert_eq!(core, UserId(id).home_core(2));
            counts[core.0] += 1;
        }
        assert!(counts[0] > 400 && counts[1] > 400, "{counts:?}");
        assert_eq!(UserId(7).home_core(1), CoreId(0));
    }
}
