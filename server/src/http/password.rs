//! Password hashing (argon2id, PHC strings) behind a counting semaphore, so at
//! most `cores` hashes run at once and a login flood cannot take every CPU.

use std::sync::{Condvar, Mutex, OnceLock, PoisonError};

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};

use crate::config::PasswordCost;

/// Hashes and verifies passwords; shared by all HTTP workers.
#[derive(Debug)]
pub(crate) struct Passwords {
    params: Params,
    permits: Semaphore,
    /// A hash of a random password with the configured cost, verified against
    /// when the username does not exist so that the answer takes as long as for
    /// a wrong password (made on first use).
    dummy: OnceLock<Option<String>>,
}

impl Passwords {
    /// Hashing with `cost` (parallelism 1), at most `concurrency` at once.
    /// A cost below argon2's minimum (8 KiB, 1 iteration; `Config` refuses such
    /// values already) is raised to it.
    pub(crate) fn new(cost: PasswordCost, concurrency: usize) -> Self {
        let memory = cost.memory_kib.max(Params::MIN_M_COST);
        let iterations = cost.iterations.max(Params::MIN_T_COST);
        Self {
            params: Params::new(memory, iterations, 1, None).unwrap_or(Params::DEFAULT),
            permits: Semaphore::new(concurrency.max(1)),
            dummy: OnceLock::new(),
        }
    }

    /// Hashes `password` with a fresh random salt into a PHC string.
    ///
    /// # Errors
    /// argon2 or the random source failed (internal).
    pub(crate) fn hash(&self, password: &str) -> Result<String, argon2::password_hash::Error> {
        let _permit = self.permits.acquire();
        self.hasher()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
    }

    /// True when `password` matches `phc` (cost parameters come from `phc`).
    /// A malformed `phc` never matches.
    pub(crate) fn verify(&self, password: &str, phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else {
            tracing::error!("stored password hash does not parse; login refused");
            return false;
        };
        let _permit = self.permits.acquire();
        self.hasher()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    }

    /// True when `phc` was hashed at a lower cost (memory or iterations) than
    /// the configured one, so a successful login should re-hash the password.
    /// A hash that does not parse is not re-hashed here (it never verifies).
    pub(crate) fn needs_rehash(&self, phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else {
            return false;
        };
        let Ok(stored) = Params::try_from(&parsed) else {
            return false;
        };
        parsed.algorithm != Algorithm::Argon2id.ident()
            || stored.m_cost() < self.params.m_cost()
            || stored.t_cost() < self.params.t_cost()
    }

    /// Spends the time of one verification without a user (unknown username).
    pub(crate) fn verify_dummy(&self, password: &str) {
        let dummy = self.dummy.get_or_init(|| {
            let mut random = [0u8; 16];
            let _ = getrandom::fill(&mut random);
            self.hash(&format!("{random:?}")).ok()
        });
        if let Some(phc) = dummy {
            let _ = self.verify(password, phc);
        }
    }

    fn hasher(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }
}

/// A counting semaphore (Mutex + Condvar): hashing is CPU-bound and blocking,
/// and only HTTP worker threads wait on it, never an event loop.
#[derive(Debug)]
struct Semaphore {
    available: Mutex<usize>,
    released: Condvar,
}

/// Returns its permit on drop.
struct Permit<'a>(&'a Semaphore);

impl Semaphore {
    fn new(permits: usize) -> Self {
        Self {
            available: Mutex::new(permits),
            released: Condvar::new(),
        }
    }

    fn acquire(&self) -> Permit<'_> {
        let mut available = self.available.lock().unwrap_or_else(PoisonError::into_inner);
        while *available == 0 {
            available = self
                .released
                .wait(available)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *available -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.available.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.0.released.notify_one();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const LOW: PasswordCost = PasswordCost {
        memory_kib: 64,
        iterations: 1,
    };

    #[test]
    fn hashes_verify_with_their_own_parameters() {
        let p = Passwords::new(LOW, 1);
        let phc = p.hash("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(p.verify("correct horse", &phc));
        assert!(!p.verify("wrong horse", &phc));
        assert!(!p.verify("correct horse", "not a phc string"));
        // A verifier configured differently still checks with the hash's parameters.
        let other = Passwords::new(
            PasswordCost {
                memory_kib: 128,
                iterations: 2,
            },
            1,
        );
        assert!(other.verify("correct horse", &phc));
        assert_ne!(p.hash("correct horse").unwrap(), phc, "salts are random");
        p.verify_dummy("anything");
        assert!(!p.needs_rehash(&phc), "hashed at the current cost");
        assert!(
            other.needs_rehash(&phc),
            "a cheaper hash than the configured cost"
        );
        assert!(!p.needs_rehash("not a phc string"));
    }

    #[test]
    fn raises_impossible_costs_to_the_minimum() {
        let p = Passwords::new(
            PasswordCost {
                memory_kib: 1,
                iterations: 0,
            },
            1,
        );
        assert!(
            p.hash("password")
                .unwrap()
                .starts_with("$argon2id$v=19$m=8,t=1,p=1$")
        );
    }

    #[test]
    fn semaphore_bounds_concurrency() {
        let sem = Arc::new(Semaphore::new(2));
        let inside = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (sem, inside, peak) = (sem.clone(), inside.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let _permit = sem.acquire();
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 2);
        assert_eq!(*sem.available.lock().unwrap(), 2);
    }
}
