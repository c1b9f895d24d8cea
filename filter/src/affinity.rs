//! Sticky sessions: an HMAC-SHA256 signed cookie `v1.<kid>.<stack>.<epoch>.<expiry>.<sig>`.
//! Decides whether a cookie is genuine and current; never trusts anything unsigned. Keys
//! come from the VM environment (`SWITCHYARD_AFFINITY_KEYS`), never from plugin
//! configuration, which Envoy shows in `/config_dump`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Environment variable holding the keys: `kid=secret[,kid=secret…]`, current key first.
pub const KEYS_ENV: &str = "SWITCHYARD_AFFINITY_KEYS";
/// Bytes of the HMAC kept in the cookie (128 bits).
const SIG_LEN: usize = 16;
const VERSION: &str = "v1";

/// Signing keys: the first signs, all verify (rotation keeps the previous key).
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<(String, HmacSha256)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        let kids: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Keyring").field("kids", &kids).finish()
    }
}

/// Why a key specification was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no keys given")]
    Empty,
    #[error("entry {0}: expected kid=secret")]
    Shape(usize),
    #[error("entry {0}: key id must be 1-16 characters of [A-Za-z0-9_-]")]
    Kid(usize),
    #[error("entry {0}: secret must be at least 16 bytes")]
    Short(usize),
    #[error("entry {0}: duplicate key id")]
    Duplicate(usize),
}

impl Keyring {
    /// Parse `kid=secret[,kid=secret…]`.
    pub fn parse(spec: &str) -> Result<Self, KeyError> {
        let mut keys: Vec<(String, HmacSha256)> = Vec::new();
        for (i, entry) in spec
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let (kid, secret) = entry.split_once('=').ok_or(KeyError::Shape(i))?;
            if kid.is_empty()
                || kid.len() > 16
                || !kid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(KeyError::Kid(i));
            }
            if secret.len() < 16 {
                return Err(KeyError::Short(i));
            }
            if keys.iter().any(|(k, _)| k == kid) {
                return Err(KeyError::Duplicate(i));
            }
            let mac =
                HmacSha256::new_from_slice(secret.as_bytes()).map_err(|_| KeyError::Short(i))?;
            keys.push((kid.to_string(), mac));
        }
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Self { keys })
    }

    /// Id of the signing key.
    pub fn current_kid(&self) -> &str {
        self.keys.first().map(|(k, _)| k.as_str()).unwrap_or("")
    }

    fn mac(&self, kid: &str) -> Option<&HmacSha256> {
        self.keys.iter().find(|(k, _)| k == kid).map(|(_, m)| m)
    }

    /// Cookie value assigning `stack` until `expiry_s` (unix seconds).
    pub fn sign(&self, stack: &str, epoch: u32, expiry_s: u64) -> String {
        let Some((kid, mac)) = self.keys.first() else {
            return String::new();
        };
        // Built as bytes by hand: `format!` and per-char `String::push` are most of the
        // cost of signing otherwise (the HMAC itself is two SHA-256 blocks).
        let mut out: Vec<u8> = Vec::with_capacity(VERSION.len() + kid.len() + stack.len() + 60);
        for part in [VERSION, ".", kid, ".", stack, "."] {
            out.extend_from_slice(part.as_bytes());
        }
        push_decimal(&mut out, u64::from(epoch));
        out.push(b'.');
        push_decimal(&mut out, expiry_s);
        let mut m = mac.clone();
        m.update(&out);
        let tag = m.finalize().into_bytes();
        out.push(b'.');
        b64url_encode(&tag[..SIG_LEN], &mut out);
        // Every byte pushed is ASCII or comes from a `&str`: this never fails.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Check a cookie value. Never fails loudly: every problem is a [`Verdict`].
    pub fn verify<'a>(&self, value: &'a [u8], epoch: u32, now_s: u64) -> Verdict<'a> {
        let Ok(value) = std::str::from_utf8(value) else {
            return Verdict::Forged;
        };
        if value.len() > 200 {
            return Verdict::Forged;
        }
        let Some((payload, sig)) = value.rsplit_once('.') else {
            return Verdict::Forged;
        };
        let mut parts = payload.split('.');
        let (Some(ver), Some(kid), Some(stack), Some(ep), Some(exp), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Verdict::Forged;
        };
        if ver != VERSION {
            return Verdict::Forged;
        }
        let Some(mac) = self.mac(kid) else {
            return Verdict::UnknownKey;
        };
        let mut tag = [0u8; SIG_LEN];
        if !b64url_decode(sig, &mut tag) {
            return Verdict::Forged;
        }
        let mut m = mac.clone();
        m.update(payload.as_bytes());
        if m.verify_truncated_left(&tag).is_err() {
            return Verdict::Forged;
        }
        // Authentic from here on.
        let (Ok(ep), Ok(exp)) = (ep.parse::<u32>(), exp.parse::<u64>()) else {
            return Verdict::Forged;
        };
        if exp <= now_s {
            return Verdict::Expired;
        }
        if ep != epoch {
            return Verdict::Stale;
        }
        Verdict::Valid {
            stack,
            expiry_s: exp,
        }
    }
}

/// Outcome of checking an affinity cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'a> {
    Valid {
        stack: &'a str,
        expiry_s: u64,
    },
    /// Bad signature or malformed.
    Forged,
    /// Signed with a key id we do not hold.
    UnknownKey,
    Expired,
    /// Authentic but from another affinity epoch.
    Stale,
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64url_encode(bytes: &[u8], out: &mut Vec<u8>) {
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(B64[((n >> (18 - 6 * i)) & 63) as usize]);
        }
    }
}

fn b64url_decode(s: &str, out: &mut [u8]) -> bool {
    // Exact length for `out.len()` bytes without padding.
    let want = (out.len() * 8).div_ceil(6);
    if s.len() != want {
        return false;
    }
    let mut acc: u32 = 0;
    let mut bits = 0;
    let mut pos = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return false,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            if pos < out.len() {
                out[pos] = (acc >> bits) as u8;
                pos += 1;
            }
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be zero, so each tag has exactly one encoding.
    pos == out.len() && acc == 0
}

/// Append `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `Set-Cookie` value for an assignment.
pub fn set_cookie_header(name: &str, value: &str, max_age_s: u64, secure: bool) -> String {
    let mut s: Vec<u8> = Vec::with_capacity(name.len() + value.len() + 64);
    for part in [name, "=", value, "; Max-Age="] {
        s.extend_from_slice(part.as_bytes());
    }
    push_decimal(&mut s, max_age_s);
    s.extend_from_slice(b"; Path=/; HttpOnly; SameSite=Lax");
    if secure {
        s.extend_from_slice(b"; Secure");
    }
    String::from_utf8(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(spec: &str) -> Keyring {
        Keyring::parse(spec).unwrap()
    }

    #[test]
    fn round_trip() {
        let k = ring("k2=0123456789abcdef0123");
        let c = k.sign("blue", 1, 2_000);
        assert!(c.starts_with("v1.k2.blue.1.2000."));
        assert_eq!(
            k.verify(c.as_bytes(), 1, 1_000),
            Verdict::Valid {
                stack: "blue",
                expiry_s: 2_000
            }
        );
    }

    #[test]
    fn decimals_and_set_cookie_are_exact() {
        for n in [0u64, 7, 10, 99, 1_795_000_000, u64::MAX] {
            let mut s = b"x".to_vec();
            push_decimal(&mut s, n);
            assert_eq!(s, format!("x{n}").into_bytes());
        }
        assert_eq!(
            set_cookie_header("sy_aff", "v1.a", 3600, false),
            "sy_aff=v1.a; Max-Age=3600; Path=/; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            set_cookie_header("c", "v", 0, true),
            "c=v; Max-Age=0; Path=/; HttpOnly; SameSite=Lax; Secure"
        );
    }

    #[test]
    fn rotation_keeps_previous_key() {
        let old = ring("k1=old-secret-old-secret");
        let c = old.sign("green", 1, 5_000);
        let rotated = ring("k2=new-secret-new-secret,k1=old-secret-old-secret");
        assert_eq!(
            rotated.verify(c.as_bytes(), 1, 1),
            Verdict::Valid {
                stack: "green",
                expiry_s: 5_000
            }
        );
        assert!(rotated.sign("green", 1, 5_000).starts_with("v1.k2."));
        let dropped = ring("k3=another-secret-value");
        assert_eq!(dropped.verify(c.as_bytes(), 1, 1), Verdict::UnknownKey);
    }

    #[test]
    fn forgery_is_rejected() {
        let k = ring("k=0123456789abcdef0123");
        let c = k.sign("blue", 1, 2_000);
        let tampered = c.replace(".blue.", ".green");
        assert_eq!(k.verify(tampered.as_bytes(), 1, 1), Verdict::Forged);
        let other = ring("k=fedcba9876543210fedc").sign("green", 1, 2_000);
        assert_eq!(k.verify(other.as_bytes(), 1, 1), Verdict::Forged);
        for junk in [
            "",
            ".",
            "v1.k.blue.1.2000",
            "v1.k.blue.1.2000.",
            "v2.k.blue.1.2000.AAAAAAAAAAAAAAAAAAAAAA",
            "\u{0}\u{1}",
        ] {
            assert!(
                matches!(
                    k.verify(junk.as_bytes(), 1, 1),
                    Verdict::Forged | Verdict::UnknownKey
                ),
                "{junk:?}"
            );
        }
        assert_eq!(k.verify(&[0xff, 0xfe, b'.'], 1, 1), Verdict::Forged);
    }

    #[test]
    fn expiry_and_epoch() {
        let k = ring("k=0123456789abcdef0123");
        let c = k.sign("blue", 3, 100);
        assert_eq!(k.verify(c.as_bytes(), 3, 100), Verdict::Expired);
        assert_eq!(k.verify(c.as_bytes(), 4, 50), Verdict::Stale);
    }

    #[test]
    fn key_specs() {
        assert_eq!(Keyring::parse("").unwrap_err(), KeyError::Empty);
        assert_eq!(Keyring::parse("k=short").unwrap_err(), KeyError::Short(0));
        assert_eq!(Keyring::parse("nokid").unwrap_err(), KeyError::Shape(0));
        assert_eq!(
            Keyring::parse("k=0123456789abcdef,k=0123456789abcdef").unwrap_err(),
            KeyError::Duplicate(1)
        );
        assert_eq!(
            Keyring::parse("bad kid=0123456789abcdef").unwrap_err(),
            KeyError::Kid(0)
        );
        assert!(!format!("{:?}", ring("k=0123456789abcdef0123")).contains("0123"));
    }

    #[test]
    fn base64_round_trip() {
        for len in 0..20 {
            let data: Vec<u8> = (0..len as u8).map(|x| x.wrapping_mul(37)).collect();
            let mut s = Vec::new();
            b64url_encode(&data, &mut s);
            let s = String::from_utf8(s).unwrap();
            let mut back = vec![0u8; len];
            assert!(b64url_decode(&s, &mut back), "len {len}");
            assert_eq!(back, data);
        }
    }
}
