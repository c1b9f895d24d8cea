//! Bearer tokens: 256 random bits from the OS, shown once when created; the store keeps
//! only their SHA-256 (`auth/token/<sha256 hex>` → a JSON [`TokenRecord`]), so a copy of
//! the store (a backup, an etcd snapshot) holds no usable credential.
//!
//! A token's public id is the first 16 hex digits of its hash: what `tokens list` shows
//! and `tokens revoke` takes. Revoking keeps the record (marked revoked) so the list and
//! the audit log still name it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AuthError, Credential, Identity, Role};
use crate::store::{Batch, Store, StoreError};

/// Key prefix of token records.
pub const PREFIX: &str = "auth/token/";
/// What every token starts with, so a leaked one is easy to recognise (secret scanners).
pub const TOKEN_PREFIX: &str = "syt_";
/// Hex digits of the hash that make a token's public id.
const ID_LEN: usize = 16;

/// A token as stored: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    pub id: String,
    /// The identity: recorded as the actor of every change made with the token.
    pub name: String,
    pub role: Role,
    pub created_ms: u64,
    pub created_by: String,
    #[serde(default)]
    pub revoked_ms: Option<u64>,
    /// SHA-256 of the token, hex.
    pub sha256: String,
}

/// Errors of token management.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Invalid(String),
    #[error("no token with id {0}")]
    NotFound(String),
    #[error("token id {0} is ambiguous: give more digits")]
    Ambiguous(String),
    #[error("cannot read random bytes from the OS: {0}")]
    Random(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("corrupt token record {key}: {message}")]
    Corrupt { key: String, message: String },
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// SHA-256 of a token, hex.
/// Revocations made by this process: the authenticators' token caches drop what they
/// hold when it changes, so a token revoked here is refused here at once (other replicas
/// within `auth::layer::TOKEN_CACHE_FRESH`).
pub static REVOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// The token store over any [`Store`] backend. Blocking, like the store.
pub struct Tokens<'a> {
    store: &'a dyn Store,
}

impl<'a> Tokens<'a> {
    pub fn new(store: &'a dyn Store) -> Self {
        Self { store }
    }

    /// Create a token for `name` with `role`. Returns the secret (shown once, never
    /// stored) and the record.
    pub fn create(
        &self,
        name: &str,
        role: Role,
        created_by: &str,
        now_ms: u64,
    ) -> Result<(String, TokenRecord), TokenError> {
        super::check_name(name).map_err(TokenError::Invalid)?;
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| TokenError::Random(e.to_string()))?;
        let token = format!("{TOKEN_PREFIX}{}", hex(&secret));
        let sha256 = hash(&token);
        let record = TokenRecord {
            id: sha256[..ID_LEN].to_string(),
            name: name.to_string(),
            role,
            created_ms: now_ms,
            created_by: created_by.to_string(),
            revoked_ms: None,
            sha256: sha256.clone(),
        };
        let key = format!("{PREFIX}{sha256}");
        let json = serde_json::to_vec(&record).map_err(|e| TokenError::Corrupt {
            key: key.clone(),
            message: e.to_string(),
        })?;
        self.store
            .commit(&Batch::new().absent(key.clone()).put(key, json))?;
        Ok((token, record))
    }

    /// Install a token generated elsewhere (a secrets manager, a deployment tool that
    /// hands the same secret to Envoy): `syt_` and 64 hex digits, 256 random bits.
    /// Importing the same token again with the same name and role changes nothing.
    pub fn import(
        &self,
        token: &str,
        name: &str,
        role: Role,
        created_by: &str,
        now_ms: u64,
    ) -> Result<TokenRecord, TokenError> {
        super::check_name(name).map_err(TokenError::Invalid)?;
        let secret = token.strip_prefix(TOKEN_PREFIX).unwrap_or_default();
        if secret.len() != 64 || !secret.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(TokenError::Invalid(format!(
                "a token is {TOKEN_PREFIX} and 64 hex digits (256 random bits)"
            )));
        }
        let sha256 = hash(token);
        let key = format!("{PREFIX}{sha256}");
        if let Some(v) = self.store.read(&key)? {
            let existing = parse(&key, &v)?;
            if existing.name == name && existing.role == role && existing.revoked_ms.is_none() {
                return Ok(existing);
            }
            return Err(TokenError::Invalid(format!(
                "this token is already installed as {} (role {}{})",
                existing.name,
                existing.role,
                if existing.revoked_ms.is_some() {
                    ", revoked"
                } else {
                    ""
                }
            )));
        }
        let record = TokenRecord {
            id: sha256[..ID_LEN].to_string(),
            name: name.to_string(),
            role,
            created_ms: now_ms,
            created_by: created_by.to_string(),
            revoked_ms: None,
            sha256,
        };
        let json = serde_json::to_vec(&record).map_err(|e| TokenError::Corrupt {
            key: key.clone(),
            message: e.to_string(),
        })?;
        self.store
            .commit(&Batch::new().absent(key.clone()).put(key, json))?;
        Ok(record)
    }

    /// The identity a presented token stands for.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        // Only the format is checked before hashing: the lookup key is a hash of the
        // secret, so how long it takes says nothing about stored tokens.
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 256 {
            return Err(AuthError::Unknown);
        }
        let presented = hash(token);
        let key = format!("{PREFIX}{presented}");
        let value = self
            .store
            .read(&key)
            .map_err(|e| AuthError::Store(e.to_string()))?
            .ok_or(AuthError::Unknown)?;
        let record: TokenRecord =
            serde_json::from_slice(&value).map_err(|e| AuthError::Store(e.to_string()))?;
        if !bool::from(record.sha256.as_bytes().ct_eq(presented.as_bytes())) {
            return Err(AuthError::Unknown);
        }
        if record.revoked_ms.is_some() {
            return Err(AuthError::Revoked(record.id));
        }
        Ok(Identity {
            name: record.name,
            role: record.role,
            credential: Credential::Token { id: record.id },
        })
    }

    /// Every token, revoked ones included, in id order.
    pub fn list(&self) -> Result<Vec<TokenRecord>, TokenError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.scan(PREFIX, after.as_deref(), 256)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, value) in page {
                out.push(parse(&key, &value)?);
            }
        }
        Ok(out)
    }

    /// Revoke the token whose id starts with `id` (at least 8 digits). Revoking a
    /// revoked token changes nothing and returns it.
    pub fn revoke(&self, id: &str, now_ms: u64) -> Result<TokenRecord, TokenError> {
        let id = id.trim().to_ascii_lowercase();
        if id.len() < 8 || id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(TokenError::Invalid(format!(
                "token id {id:?}: 8 to 64 hex digits (as `tokens list` shows)"
            )));
        }
        let found = self.store.scan(&format!("{PREFIX}{id}"), None, 2)?;
        let (key, value) = match found.as_slice() {
            [] => return Err(TokenError::NotFound(id)),
            [one] => one.clone(),
            _ => return Err(TokenError::Ambiguous(id)),
        };
        let mut record = parse(&key, &value)?;
        if record.revoked_ms.is_some() {
            return Ok(record);
        }
        record.revoked_ms = Some(now_ms);
        let json = serde_json::to_vec(&record).map_err(|e| TokenError::Corrupt {
            key: key.clone(),
            message: e.to_string(),
        })?;
        self.store
            .commit(&Batch::new().equals(key.clone(), value).put(key, json))?;
        REVOCATIONS.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(record)
    }
}

fn parse(key: &str, value: &[u8]) -> Result<TokenRecord, TokenError> {
    serde_json::from_slice(value).map_err(|e| TokenError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn a_token_is_shown_once_and_only_its_hash_is_stored() {
        let store = MemoryStore::new();
        let tokens = Tokens::new(&store);
        let (secret, rec) = tokens.create("alice", Role::Operator, "test", 5).unwrap();
        assert!(secret.starts_with(TOKEN_PREFIX));
        assert_eq!(secret.len(), TOKEN_PREFIX.len() + 64, "256 bits, hex");
        assert_eq!(rec.sha256, hash(&secret));
        assert_eq!(rec.id, &rec.sha256[..16]);
        let stored = store.scan("auth/", None, 10).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].0, format!("auth/token/{}", rec.sha256));
        let text = String::from_utf8(stored[0].1.clone()).unwrap();
        assert!(!text.contains(&secret[TOKEN_PREFIX.len()..]), "{text}");

        let who = tokens.verify(&secret).unwrap();
        assert_eq!((who.name.as_str(), who.role), ("alice", Role::Operator));
        let (other, _) = tokens.create("alice", Role::Operator, "test", 6).unwrap();
        assert_ne!(other, secret, "random, not derived from the name");
    }

    #[test]
    fn unknown_malformed_and_revoked_tokens_are_refused() {
        let store = MemoryStore::new();
        let tokens = Tokens::new(&store);
        let (secret, rec) = tokens.create("bob", Role::Admin, "test", 5).unwrap();
        let mut wrong = secret.clone();
        wrong.pop();
        wrong.push(if secret.ends_with('0') { '1' } else { '0' });
        assert_eq!(tokens.verify(&wrong), Err(AuthError::Unknown));
        assert_eq!(tokens.verify("Bearer"), Err(AuthError::Unknown));
        assert_eq!(tokens.verify(""), Err(AuthError::Unknown));

        assert!(matches!(
            tokens.revoke("abc", 9),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            tokens.revoke("0000000000000000", 9),
            Err(TokenError::NotFound(_))
        ));
        let revoked = tokens.revoke(&rec.id[..8], 9).unwrap();
        assert_eq!(revoked.revoked_ms, Some(9));
        assert_eq!(
            tokens.verify(&secret),
            Err(AuthError::Revoked(rec.id.clone()))
        );
        // Idempotent; still listed.
        assert_eq!(tokens.revoke(&rec.id, 10).unwrap().revoked_ms, Some(9));
        let all = tokens.list().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].revoked_ms, Some(9));
    }

    #[test]
    fn an_imported_token_works_and_importing_it_again_is_harmless() {
        let store = MemoryStore::new();
        let tokens = Tokens::new(&store);
        let token = format!("{TOKEN_PREFIX}{}", "5a".repeat(32));
        let rec = tokens
            .import(&token, "envoy", Role::Dataplane, "t", 1)
            .unwrap();
        assert_eq!(rec.sha256, hash(&token));
        assert_eq!(tokens.verify(&token).unwrap().role, Role::Dataplane);
        assert_eq!(
            tokens
                .import(&token, "envoy", Role::Dataplane, "t", 2)
                .unwrap(),
            rec
        );
        assert!(matches!(
            tokens.import(&token, "envoy", Role::Admin, "t", 2),
            Err(TokenError::Invalid(_))
        ));
        for bad in ["syt_short", "5a5a", &format!("syt_{}", "zz".repeat(32))] {
            assert!(matches!(
                tokens.import(bad, "x", Role::Viewer, "t", 1),
                Err(TokenError::Invalid(_))
            ));
        }
        assert_eq!(tokens.list().unwrap().len(), 1);
    }

    #[test]
    fn names_are_validated() {
        let store = MemoryStore::new();
        let tokens = Tokens::new(&store);
        assert!(matches!(
            tokens.create("brain", Role::Admin, "test", 1),
            Err(TokenError::Invalid(_))
        ));
        assert!(tokens.list().unwrap().is_empty());
    }
}
