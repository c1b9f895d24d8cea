//! The server certificate, picked up again when its files change: cert-manager (or an
//! operator) rewriting `tls.cert` and `tls.key` takes effect for the next connection,
//! without a restart.
//!
//! Decides: which certificate and key each new handshake presents. On every handshake
//! both files are read (a few KB, next to a handshake's public-key work) and compared
//! with the bytes the current pair came from; only a change is parsed again. Bytes, not
//! modification times: two writes within one timestamp tick (coarse on most file
//! systems) with equal sizes — two P-256 keys — would look unchanged.
//!
//! Never: presents a pair that does not belong together or cannot be read. A rotation
//! caught half-way (the certificate written, the key not yet) or a broken file keeps the
//! last good pair serving, logged once per change, and is tried again as soon as either
//! file changes again. Connections already open keep the certificate they were made with
//! (TLS never re-presents it). The start still fails on files it cannot load
//! ([`ServerCert::load`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Both files' contents.
type Stamp = (Vec<u8>, Vec<u8>);

struct State {
    /// The files' bytes `current` was made from.
    loaded: Stamp,
    current: Arc<CertifiedKey>,
    /// The files' bytes when they last failed to load (logged once per change).
    refused: Option<Stamp>,
}

/// The server's certificate chain and key, from `tls.cert` and `tls.key`, reloaded when
/// they change. Shared by the gRPC and HTTP listeners' configurations.
pub struct ServerCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
}

impl fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ServerCert {
    /// Read both files now; an error names the field and the file (the start fails).
    pub fn load(
        cert: &Path,
        key: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<ServerCert, String> {
        let stamp = stamp(cert, key).ok_or_else(|| {
            format!(
                "tls.cert {} / tls.key {}: cannot read the files",
                cert.display(),
                key.display()
            )
        })?;
        let current = parse_pair(cert, key, &stamp, &provider)?;
        Ok(ServerCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            state: Mutex::new(State {
                loaded: stamp,
                current: Arc::new(current),
                refused: None,
            }),
        })
    }

    /// The pair to present now: the files again if they changed and load, else the last
    /// good pair.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(now) = stamp(&self.cert, &self.key) else {
            return st.current.clone();
        };
        if now == st.loaded || st.refused.as_ref() == Some(&now) {
            return st.current.clone();
        }
        match parse_pair(&self.cert, &self.key, &now, &self.provider) {
            Ok(pair) => {
                tracing::info!(cert = %self.cert.display(), key = %self.key.display(),
                    "server certificate reloaded: new connections present it");
                st.current = Arc::new(pair);
                st.loaded = now;
                st.refused = None;
            }
            Err(e) => {
                tracing::warn!(error = %e,
                    "server certificate changed but cannot be loaded (a rotation half-way?): \
                     still presenting the previous one");
                st.refused = Some(now);
            }
        }
        st.current.clone()
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// `None` when either file cannot be read now (being replaced): keep what we have.
fn stamp(cert: &Path, key: &Path) -> Option<Stamp> {
    Some((std::fs::read(cert).ok()?, std::fs::read(key).ok()?))
}

/// The chain and its key from the files' bytes (parsed from exactly the bytes compared,
/// so a write between the read and the parse cannot mix two versions), checked to belong
/// together. Errors name the field and the file.
fn parse_pair(
    cert: &Path,
    key: &Path,
    (cert_pem, key_pem): &Stamp,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "tls.cert {}: no CERTIFICATE in the file",
            cert.display()
        ));
    }
    let der = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("tls.key {}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, der, provider).map_err(|e| {
        format!(
            "tls.cert {} / tls.key {}: {e}",
            cert.display(),
            key.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::pki::{Ca, Validity};

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn der_of(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn a_rewritten_pair_is_presented_and_a_half_written_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("s.pem"), dir.path().join("s.key"));
        let ca = Ca::new("reload CA", Validity::days(3)).unwrap();
        let first = ca.server(&["localhost"], Validity::days(3)).unwrap();
        std::fs::write(&cert, &first.cert_pem).unwrap();
        std::fs::write(&key, &first.key_pem).unwrap();
        let sc = ServerCert::load(&cert, &key, provider()).unwrap();
        assert_eq!(sc.current().cert[0].as_ref(), der_of(&first.cert_pem));

        // Half-way: the new certificate with the old key. Refused, the old pair serves.
        let second = ca.server(&["127.0.0.1"], Validity::days(3)).unwrap();
        std::fs::write(&cert, &second.cert_pem).unwrap();
        assert_eq!(sc.current().cert[0].as_ref(), der_of(&first.cert_pem));
        // Then the key: the new pair.
        std::fs::write(&key, &second.key_pem).unwrap();
        assert_eq!(sc.current().cert[0].as_ref(), der_of(&second.cert_pem));

        // Garbage, then a file that is gone: the last good pair keeps serving.
        std::fs::write(&key, "not a key").unwrap();
        assert_eq!(sc.current().cert[0].as_ref(), der_of(&second.cert_pem));
        std::fs::remove_file(&key).unwrap();
        assert_eq!(sc.current().cert[0].as_ref(), der_of(&second.cert_pem));
    }

    #[test]
    fn the_start_fails_on_files_it_cannot_load_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("s.pem"), dir.path().join("s.key"));
        let e = ServerCert::load(&cert, &key, provider()).unwrap_err();
        assert!(e.contains("tls.cert") && e.contains("s.pem"), "{e}");
        let ca = Ca::new("reload CA", Validity::days(3)).unwrap();
        let a = ca.server(&["localhost"], Validity::days(3)).unwrap();
        let b = ca.server(&["localhost"], Validity::days(3)).unwrap();
        std::fs::write(&cert, &a.cert_pem).unwrap();
        std::fs::write(&key, &b.key_pem).unwrap();
        let e = ServerCert::load(&cert, &key, provider()).unwrap_err();
        assert!(e.contains("tls.cert") && e.contains("tls.key"), "{e}");
    }
}
