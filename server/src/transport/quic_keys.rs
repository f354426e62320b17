//! QUIC's cipher suites with keys that are expanded on first use: what keeps
//! an idle QUIC connection's crypto state small.
//!
//! ring's AEAD key (the AES key schedule plus the GHASH table, or the ChaCha
//! key, in one inline enum) takes ~580 bytes of heap per key. A QUIC
//! connection holds six of them after its handshake, but uses only two:
//!
//! * quinn-proto derives the *next* 1-RTT packet keys (for a key update) as
//!   soon as the handshake completes; a key update may never come.
//! * rustls installs its TLS-record encrypter and decrypter for the traffic
//!   secrets although QUIC never encrypts a TLS record (it carries TLS
//!   messages in CRYPTO frames under its own packet keys).
//!
//! [`provider`] wraps ring's TLS 1.3 suites so that every packet key and
//! record key rustls hands out keeps only its secret (32 + 12 bytes) and
//! builds ring's key the first time it encrypts or decrypts. The keys in use
//! cost ~100 bytes more each; the unused four save ~480 bytes each (≈ 1.9 KB
//! per connection). The cryptography is ring's, unchanged: nothing here
//! encrypts, it only defers ring's constructor. Header-protection keys are
//! used from the first packet and stay eager.

use std::sync::{Mutex, OnceLock, PoisonError};

use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv, MessageDecrypter, MessageEncrypter,
    OutboundOpaqueMessage, OutboundPlainMessage, Tls13AeadAlgorithm, UnsupportedOperationError,
};
use rustls::crypto::{CryptoProvider, tls13::Hkdf};
use rustls::quic::{Algorithm, HeaderProtectionKey, PacketKey, Tag};
use rustls::{CipherSuiteCommon, ConnectionTrafficSecrets, Error, SupportedCipherSuite, Tls13CipherSuite};

/// Bytes a TLS 1.3 record gains in encryption with every AEAD ring offers:
/// the inner content type (1) and the 16-byte tag.
const TLS13_RECORD_OVERHEAD: usize = 1 + 16;

/// ring's provider with its TLS 1.3 suites' keys made lazy (TLS 1.2 suites
/// are left out: QUIC is TLS 1.3 only). The suites are built once per process
/// (they must be `'static` for rustls) and shared by every caller.
pub fn provider() -> CryptoProvider {
    static SUITES: OnceLock<Vec<SupportedCipherSuite>> = OnceLock::new();
    let base = rustls::crypto::ring::default_provider();
    let suites = SUITES.get_or_init(|| {
        base.cipher_suites
            .iter()
            .filter_map(|suite| match suite {
                SupportedCipherSuite::Tls13(inner) => Some(SupportedCipherSuite::Tls13(lazy_suite(inner))),
                _ => None,
            })
            .collect()
    });
    CryptoProvider {
        cipher_suites: suites.clone(),
        ..base
    }
}

/// `suite` with lazy record and packet keys, leaked once (see [`provider`]).
fn lazy_suite(suite: &'static Tls13CipherSuite) -> &'static Tls13CipherSuite {
    let aead: &'static LazyAead = Box::leak(Box::new(LazyAead(suite.aead_alg)));
    let quic = suite
        .quic
        .map(|q| -> &'static dyn Algorithm { Box::leak(Box::new(LazyQuic(q))) });
    let hkdf: &'static dyn Hkdf = suite.hkdf_provider;
    Box::leak(Box::new(Tls13CipherSuite {
        common: CipherSuiteCommon {
            suite: suite.common.suite,
            hash_provider: suite.common.hash_provider,
            confidentiality_limit: suite.common.confidentiality_limit,
        },
        hkdf_provider: hkdf,
        aead_alg: aead,
        quic,
    }))
}

/// A secret waiting to become a key, taken exactly once.
struct Secret(Mutex<Option<(AeadKey, Iv)>>);

impl Secret {
    fn new(key: AeadKey, iv: Iv) -> Self {
        Self(Mutex::new(Some((key, iv))))
    }

    fn take(&self) -> Option<(AeadKey, Iv)> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// ring's QUIC algorithm, handing out lazy packet keys.
struct LazyQuic(&'static dyn Algorithm);

impl Algorithm for LazyQuic {
    fn packet_key(&self, key: AeadKey, iv: Iv) -> Box<dyn PacketKey> {
        Box::new(LazyPacketKey {
            alg: self.0,
            secret: Secret::new(key, iv),
            key: OnceLock::new(),
        })
    }

    fn header_protection_key(&self, key: AeadKey) -> Box<dyn HeaderProtectionKey> {
        self.0.header_protection_key(key)
    }

    fn aead_key_len(&self) -> usize {
        self.0.aead_key_len()
    }

    fn fips(&self) -> bool {
        self.0.fips()
    }
}

/// A QUIC packet key built by ring on its first use.
struct LazyPacketKey {
    alg: &'static dyn Algorithm,
    secret: Secret,
    key: OnceLock<Box<dyn PacketKey>>,
}

impl LazyPacketKey {
    fn key(&self) -> &dyn PacketKey {
        self.key
            .get_or_init(|| match self.secret.take() {
                Some((key, iv)) => self.alg.packet_key(key, iv),
                // `get_or_init` runs its closure once, so the secret is there.
                None => Box::new(NoKey),
            })
            .as_ref()
    }
}

impl PacketKey for LazyPacketKey {
    fn encrypt_in_place(&self, packet_number: u64, header: &[u8], payload: &mut [u8]) -> Result<Tag, Error> {
        self.key().encrypt_in_place(packet_number, header, payload)
    }

    fn decrypt_in_place<'a>(
        &self,
        packet_number: u64,
        header: &[u8],
        payload: &'a mut [u8],
    ) -> Result<&'a [u8], Error> {
        self.key().decrypt_in_place(packet_number, header, payload)
    }

    fn tag_len(&self) -> usize {
        // Asked for every packet built: answered without expanding the key
        // (every TLS 1.3 AEAD's tag is 16 bytes).
        match self.key.get() {
            Some(key) => key.tag_len(),
            None => TLS13_RECORD_OVERHEAD - 1,
        }
    }

    fn confidentiality_limit(&self) -> u64 {
        self.key().confidentiality_limit()
    }

    fn integrity_limit(&self) -> u64 {
        self.key().integrity_limit()
    }
}

/// The key of a lazy key whose secret went missing (unreachable: see
/// [`LazyPacketKey::key`]): every operation fails, nothing is sent in clear.
struct NoKey;

impl PacketKey for NoKey {
    fn encrypt_in_place(&self, _: u64, _: &[u8], _: &mut [u8]) -> Result<Tag, Error> {
        Err(Error::EncryptError)
    }

    fn decrypt_in_place<'a>(&self, _: u64, _: &[u8], _: &'a mut [u8]) -> Result<&'a [u8], Error> {
        Err(Error::DecryptError)
    }

    fn tag_len(&self) -> usize {
        TLS13_RECORD_OVERHEAD - 1
    }

    fn confidentiality_limit(&self) -> u64 {
        0
    }

    fn integrity_limit(&self) -> u64 {
        0
    }
}

/// ring's TLS 1.3 record AEAD, handing out lazy record keys.
struct LazyAead(&'static dyn Tls13AeadAlgorithm);

impl Tls13AeadAlgorithm for LazyAead {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        Box::new(LazyRecord::Pending(self.0, Some((key, iv))))
    }

    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        Box::new(LazyRecord::Pending(self.0, Some((key, iv))))
    }

    fn key_len(&self) -> usize {
        self.0.key_len()
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        self.0.extract_keys(key, iv)
    }

    fn fips(&self) -> bool {
        self.0.fips()
    }
}

/// A TLS record encrypter or decrypter built by ring on its first use
/// (`&mut self` there, so no lock is needed).
enum LazyRecord<T: ?Sized> {
    /// The algorithm and the secret (taken when the key is built).
    Pending(&'static dyn Tls13AeadAlgorithm, Option<(AeadKey, Iv)>),
    /// ring's key.
    Ready(Box<T>),
}

impl LazyRecord<dyn MessageEncrypter> {
    fn key(&mut self) -> Result<&mut dyn MessageEncrypter, Error> {
        if let LazyRecord::Pending(alg, secret) = self {
            let (key, iv) = secret.take().ok_or(Error::EncryptError)?;
            *self = LazyRecord::Ready(alg.encrypter(key, iv));
        }
        match self {
            LazyRecord::Ready(key) => Ok(key.as_mut()),
            LazyRecord::Pending(..) => Err(Error::EncryptError),
        }
    }
}

impl LazyRecord<dyn MessageDecrypter> {
    fn key(&mut self) -> Result<&mut dyn MessageDecrypter, Error> {
        if let LazyRecord::Pending(alg, secret) = self {
            let (key, iv) = secret.take().ok_or(Error::DecryptError)?;
            *self = LazyRecord::Ready(alg.decrypter(key, iv));
        }
        match self {
            LazyRecord::Ready(key) => Ok(key.as_mut()),
            LazyRecord::Pending(..) => Err(Error::DecryptError),
        }
    }
}

impl MessageEncrypter for LazyRecord<dyn MessageEncrypter> {
    fn encrypt(&mut self, msg: OutboundPlainMessage<'_>, seq: u64) -> Result<OutboundOpaqueMessage, Error> {
        self.key()?.encrypt(msg, seq)
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        match self {
            LazyRecord::Ready(key) => key.encrypted_payload_len(payload_len),
            LazyRecord::Pending(..) => payload_len + TLS13_RECORD_OVERHEAD,
        }
    }
}

impl MessageDecrypter for LazyRecord<dyn MessageDecrypter> {
    fn decrypt<'a>(
        &mut self,
        msg: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        self.key()?.decrypt(msg, seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suites() -> Vec<(&'static Tls13CipherSuite, &'static Tls13CipherSuite)> {
        let ring = rustls::crypto::ring::default_provider();
        let lazy = provider();
        ring.cipher_suites
            .iter()
            .filter_map(|s| match s {
                SupportedCipherSuite::Tls13(r) => Some(*r),
                _ => None,
            })
            .zip(lazy.cipher_suites.iter().filter_map(|s| match s {
                SupportedCipherSuite::Tls13(l) => Some(*l),
                _ => None,
            }))
            .collect()
    }

    /// A 32-byte record secret (the key length of the suites it is used with).
    fn secret() -> (AeadKey, Iv) {
        let mut key = [0u8; 32];
        for (i, b) in key.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(7).wrapping_add(1);
        }
        (AeadKey::from(key), Iv::from([3u8; 12]))
    }

    #[test]
    fn the_lazy_suites_are_rings_tls13_suites_in_the_same_order() {
        let pairs = suites();
        assert_eq!(pairs.len(), 3);
        for (ring, lazy) in pairs {
            assert_eq!(ring.common.suite, lazy.common.suite);
            assert!(lazy.quic.is_some());
        }
    }

    #[test]
    fn lazy_packet_keys_seal_and_open_exactly_like_rings() {
        use rustls::Side;
        use rustls::quic::{Keys, Version};
        let cid = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];
        for (ring, lazy) in suites() {
            let (Some(rq), Some(lq)) = (ring.quic, lazy.quic) else {
                panic!("QUIC suite without QUIC keys");
            };
            let eager = Keys::initial(Version::V1, ring, rq, &cid, Side::Client);
            let deferred = Keys::initial(Version::V1, lazy, lq, &cid, Side::Client);
            let server = Keys::initial(Version::V1, lazy, lq, &cid, Side::Server);
            let (eager, deferred) = (&eager.local.packet, &deferred.local.packet);
            assert_eq!(deferred.tag_len(), eager.tag_len(), "tag length before first use");
            let header = b"header";
            let mut a = b"a QUIC payload".to_vec();
            let mut b = a.clone();
            let ta = eager.encrypt_in_place(7, header, &mut a).unwrap();
            let tb = deferred.encrypt_in_place(7, header, &mut b).unwrap();
            assert_eq!(a, b);
            assert_eq!(ta.as_ref(), tb.as_ref());
            assert_ne!(&a[..], b"a QUIC payload", "sealed, not copied");
            assert_eq!(deferred.tag_len(), eager.tag_len());
            assert_eq!(deferred.confidentiality_limit(), eager.confidentiality_limit());
            assert_eq!(deferred.integrity_limit(), eager.integrity_limit());
            // The peer's (lazy) key opens it and refuses a tampered copy.
            let mut sealed = a.clone();
            sealed.extend_from_slice(tb.as_ref());
            let mut tampered = sealed.clone();
            let opened = server
                .remote
                .packet
                .decrypt_in_place(7, header, &mut sealed)
                .unwrap();
            assert_eq!(opened, b"a QUIC payload");
            if let Some(first) = tampered.first_mut() {
                *first ^= 1;
            }
            assert!(
                server
                    .remote
                    .packet
                    .decrypt_in_place(7, header, &mut tampered)
                    .is_err()
            );
        }
    }

    #[test]
    fn lazy_record_keys_match_rings_sizes_and_ciphertext() {
        use rustls::ContentType;
        use rustls::ProtocolVersion;
        use rustls::crypto::cipher::OutboundChunks;
        let mut checked = 0;
        // Suites with 32-byte keys (AES-256-GCM, ChaCha20-Poly1305): a test
        // cannot shorten an `AeadKey` for AES-128 (rustls does it inside).
        for (ring, lazy) in suites().into_iter().filter(|(r, _)| r.aead_alg.key_len() == 32) {
            checked += 1;
            let (k1, iv1) = secret();
            let (k2, iv2) = secret();
            let mut eager = ring.aead_alg.encrypter(k1, iv1);
            let mut deferred = lazy.aead_alg.encrypter(k2, iv2);
            for n in [0, 1, 100, 16_384] {
                assert_eq!(deferred.encrypted_payload_len(n), eager.encrypted_payload_len(n));
            }
            let msg = || OutboundPlainMessage {
                typ: ContentType::ApplicationData,
                version: ProtocolVersion::TLSv1_2,
                payload: OutboundChunks::Single(b"a record"),
            };
            let a = eager.encrypt(msg(), 3).unwrap();
            let b = deferred.encrypt(msg(), 3).unwrap();
            assert_eq!(a.encode(), b.encode());
        }
        assert_eq!(checked, 2);
    }
}
