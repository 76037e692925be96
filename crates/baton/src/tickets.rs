//! TLS session tickets that survive a restart: the keys are made once per service (by
//! the first generation that serves HTTPS), kept in memory only, passed to the next
//! generation over the generation channel (never written anywhere), and rotated on a
//! schedule. A client that resumes its session after a restart skips the full
//! handshake (no certificate, no key exchange signature), as it would have without the
//! restart.
//!
//! A ticket is `key id (16) | nonce (12) | ChaCha20-Poly1305(session state)`; the key id
//! tells which key sealed it. Two keys are kept: the current one seals, the previous
//! one still opens what it sealed until it is rotated out.

use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use tokio_rustls::rustls::server::ProducesTickets;

/// A new key seals tickets this often; a ticket opens for up to twice as long.
const ROTATE: Duration = Duration::from_secs(3600);
const ID_LEN: usize = 16;
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
/// The size of an exported key set: current id and key, age, previous id and key.
const EXPORT_LEN: usize = 2 * (ID_LEN + KEY_LEN) + 8 + 1;

struct Key {
    id: [u8; ID_LEN],
    bytes: [u8; KEY_LEN],
    aead: LessSafeKey,
}

impl Key {
    fn new(id: [u8; ID_LEN], bytes: [u8; KEY_LEN]) -> Option<Key> {
        let aead = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &bytes).ok()?);
        Some(Key { id, bytes, aead })
    }

    fn random(rng: &SystemRandom) -> Option<Key> {
        let (mut id, mut bytes) = ([0u8; ID_LEN], [0u8; KEY_LEN]);
        rng.fill(&mut id).ok()?;
        rng.fill(&mut bytes).ok()?;
        Key::new(id, bytes)
    }
}

struct Keys {
    current: Key,
    previous: Option<Key>,
    /// When `current` started sealing.
    since: Instant,
}

static KEYS: OnceLock<RwLock<Option<Keys>>> = OnceLock::new();

fn slot() -> &'static RwLock<Option<Keys>> {
    KEYS.get_or_init(|| RwLock::new(None))
}

fn rng() -> &'static SystemRandom {
    static RNG: OnceLock<SystemRandom> = OnceLock::new();
    RNG.get_or_init(SystemRandom::new)
}

/// The service's ticket keys, for rustls (`ServerConfig::ticketer`).
#[derive(Debug)]
pub(crate) struct Ticketer;

impl Ticketer {
    /// Makes the keys if this process has none yet (neither made nor received).
    pub(crate) fn ensure_keys() {
        let mut slot = slot()
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() {
            *slot = Key::random(rng()).map(|current| Keys {
                current,
                previous: None,
                since: Instant::now(),
            });
        }
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        ROTATE.as_secs() as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        rotate_if_due();
        let slot = slot()
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = &slot.as_ref()?.current;
        let mut nonce = [0u8; NONCE_LEN];
        rng().fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(ID_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut sealed,
            )
            .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < ID_LEN + NONCE_LEN {
            return None;
        }
        let (id, rest) = cipher.split_at(ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let slot = slot()
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let keys = slot.as_ref()?;
        let key = std::iter::once(&keys.current)
            .chain(keys.previous.as_ref())
            .find(|k| k.id == id)?;
        let mut buf = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).ok()?,
                Aad::empty(),
                &mut buf,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}

fn rotate_if_due() {
    {
        let slot = slot()
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.as_ref().is_none_or(|k| k.since.elapsed() < ROTATE) {
            return;
        }
    }
    let mut slot = slot()
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(keys) = slot.as_mut()
        && keys.since.elapsed() >= ROTATE
        && let Some(fresh) = Key::random(rng())
    {
        keys.previous = Some(std::mem::replace(&mut keys.current, fresh));
        keys.since = Instant::now();
    }
}

/// The keys, to pass to the next generation; `None` when this process has none (it
/// serves no HTTPS).
pub(crate) fn export() -> Option<Vec<u8>> {
    let slot = slot()
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let keys = slot.as_ref()?;
    let mut out = Vec::with_capacity(EXPORT_LEN);
    out.extend_from_slice(&keys.current.id);
    out.extend_from_slice(&keys.current.bytes);
    out.extend_from_slice(&keys.since.elapsed().as_secs().to_le_bytes());
    match &keys.previous {
        Some(p) => {
            out.push(1);
            out.extend_from_slice(&p.id);
            out.extend_from_slice(&p.bytes);
        }
        None => {
            out.push(0);
            out.extend_from_slice(&[0u8; ID_LEN + KEY_LEN]);
        }
    }
    Some(out)
}

/// Takes the keys of the previous generation (with their age, so that the schedule
/// goes on); `false` if `bytes` are not a key set.
pub(crate) fn import(bytes: &[u8]) -> bool {
    let Some(keys) = parse(bytes) else {
        return false;
    };
    *slot()
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(keys);
    true
}

fn parse(bytes: &[u8]) -> Option<Keys> {
    if bytes.len() != EXPORT_LEN {
        return None;
    }
    let key_at = |at: usize| -> Option<Key> {
        Key::new(
            bytes[at..at + ID_LEN].try_into().ok()?,
            bytes[at + ID_LEN..at + ID_LEN + KEY_LEN].try_into().ok()?,
        )
    };
    let current = key_at(0)?;
    let age_at = ID_LEN + KEY_LEN;
    let age = u64::from_le_bytes(bytes[age_at..age_at + 8].try_into().ok()?);
    let previous = match bytes[age_at + 8] {
        0 => None,
        _ => Some(key_at(age_at + 9)?),
    };
    let since = Instant::now()
        .checked_sub(Duration::from_secs(age).min(ROTATE))
        .unwrap_or_else(Instant::now);
    Some(Keys {
        current,
        previous,
        since,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_opens_with_its_key_and_not_when_altered_or_with_another() {
        let rng = SystemRandom::new();
        let keys = Keys {
            current: Key::random(&rng).unwrap(),
            previous: Some(Key::random(&rng).unwrap()),
            since: Instant::now(),
        };
        let exported = {
            *slot().write().unwrap() = Some(keys);
            export().unwrap()
        };
        let t = Ticketer;
        let ticket = t.encrypt(b"session state").unwrap();
        assert_eq!(t.decrypt(&ticket).unwrap(), b"session state");
        let mut altered = ticket.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(t.decrypt(&altered).is_none(), "the tag is checked");
        assert!(t.decrypt(&ticket[..10]).is_none());
        // What the next generation imports opens the same ticket.
        assert!(import(&exported));
        assert_eq!(t.decrypt(&ticket).unwrap(), b"session state");
        // Another key set does not.
        let other = Keys {
            current: Key::random(&rng).unwrap(),
            previous: None,
            since: Instant::now(),
        };
        *slot().write().unwrap() = Some(other);
        assert!(t.decrypt(&ticket).is_none());
        assert!(!import(&exported[1..]), "not a key set");
    }
}
