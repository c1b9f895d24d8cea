//! Certificates made offline (rcgen, ring): the demo CA of `make run`
//! (`switchyard-control certs demo`) and the tests' certificates, from the same code.
//!
//! Decides: what a demo installation's certificates look like — an ECDSA P-256 CA, a
//! server certificate for 127.0.0.1, ::1 and localhost, and client certificates whose
//! common name is the identity (`CN=envoy`, `CN=admin`) — and the file-based SDS secrets
//! that hand Envoy its client certificate and the CA.
//!
//! Never: overwrites an existing file, or leaves a private key readable by others.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From yesterday (clocks differ a little) for `days`.
    pub fn days(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(days),
        }
    }

    /// Expired yesterday (tests).
    pub fn expired() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::days(30),
            not_after: now - Duration::days(1),
        }
    }
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// A self-signed client certificate `CN=<common_name>` (no CA vouches for it: tests).
    pub fn self_signed(common_name: &str, validity: Validity) -> Result<Issued, String> {
        let key = KeyPair::generate().map_err(err)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = validity.not_before;
        p.not_after = validity.not_after;
        let cert = p.self_signed(&key).map_err(err)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A certificate authority that signs server and client certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

fn err(e: rcgen::Error) -> String {
    format!("generating a certificate: {e}")
}

impl Ca {
    /// A new CA (self-signed, valid for `validity`) whose common name is `name`.
    pub fn new(name: &str, validity: Validity) -> Result<Ca, String> {
        let key = KeyPair::generate().map_err(err)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = validity.not_before;
        p.not_after = validity.not_after;
        let cert = p.self_signed(&key).map_err(err)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(p, key),
        })
    }

    /// The CA certificate (what clients and servers trust), PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for these names (IP addresses become IP SANs, the rest DNS).
    pub fn server(&self, names: &[&str], validity: Validity) -> Result<Issued, String> {
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        p.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        for n in names {
            p.subject_alt_names.push(match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().map_err(err)?),
            });
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(p, validity)
    }

    /// A client certificate whose subject is `CN=<common_name>`.
    pub fn client(&self, common_name: &str, validity: Validity) -> Result<Issued, String> {
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(p, validity)
    }

    fn sign(&self, mut p: CertificateParams, validity: Validity) -> Result<Issued, String> {
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = validity.not_before;
        p.not_after = validity.not_after;
        let key = KeyPair::generate().map_err(err)?;
        let cert = p.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The names the demo server certificate is valid for.
pub const DEMO_SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Envoy's SDS secret names for the control cluster (envoy/envoy.yaml).
pub const SDS_CLIENT_CERT: &str = "switchyard_control_client_cert";
pub const SDS_CA: &str = "switchyard_control_ca";

/// A file-based SDS secret holding a client certificate and its key (inline PEM, so
/// replacing this one file rotates both at once).
pub fn sds_client_cert(issued: &Issued) -> String {
    format!(
        "resources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  \
         name: {SDS_CLIENT_CERT}\n  tls_certificate:\n    certificate_chain:\n      inline_string: |\n{}    \
         private_key:\n      inline_string: |\n{}",
        indent(&issued.cert_pem, 8),
        indent(&issued.key_pem, 8)
    )
}

/// A file-based SDS validation context: trust `ca_pem`, and require the server
/// certificate to carry the DNS name `server_name`.
pub fn sds_ca(ca_pem: &str, server_name: &str) -> String {
    format!(
        "resources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  \
         name: {SDS_CA}\n  validation_context:\n    trusted_ca:\n      inline_string: |\n{}    \
         match_typed_subject_alt_names:\n    - san_type: DNS\n      matcher: {{ exact: \"{server_name}\" }}\n",
        indent(ca_pem, 8)
    )
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// What `certs demo` writes, by file name.
pub const DEMO_FILES: [&str; 9] = [
    "ca.pem",
    "server.pem",
    "server.key",
    "envoy.pem",
    "envoy.key",
    "admin.pem",
    "admin.key",
    "envoy-sds-cert.yaml",
    "envoy-sds-ca.yaml",
];

/// Generate the demo CA and certificates into `dir` (created if missing): the CA
/// (`ca.pem`; its key is not kept), the server's (`server.pem`/`.key`, for 127.0.0.1,
/// ::1 and localhost), Envoy's client certificate (`envoy.pem`/`.key`, `CN=envoy`), an
/// admin client certificate (`admin.pem`/`.key`, `CN=admin`), and Envoy's two SDS files.
/// Valid for a year. Refuses to overwrite any file. Returns the paths written.
pub fn write_demo(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let existing: Vec<String> = DEMO_FILES
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        return Err(format!(
            "{} already exist(s): remove them (or choose another --out) to make new ones",
            existing.join(", ")
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let year = Validity::days(365);
    let ca = Ca::new("Switchyard demo CA", year)?;
    let server = ca.server(&DEMO_SERVER_NAMES, year)?;
    let envoy = ca.client("envoy", year)?;
    let admin = ca.client("admin", year)?;
    let files: [(&str, String, bool); 9] = [
        ("ca.pem", ca.cert_pem().to_string(), false),
        ("server.pem", server.cert_pem.clone(), false),
        ("server.key", server.key_pem.clone(), true),
        ("envoy.pem", envoy.cert_pem.clone(), false),
        ("envoy.key", envoy.key_pem.clone(), true),
        ("admin.pem", admin.cert_pem.clone(), false),
        ("admin.key", admin.key_pem.clone(), true),
        ("envoy-sds-cert.yaml", sds_client_cert(&envoy), true),
        (
            "envoy-sds-ca.yaml",
            sds_ca(ca.cert_pem(), "localhost"),
            false,
        ),
    ];
    let mut written = Vec::new();
    for (name, text, secret) in files {
        let path = dir.join(name);
        write_new(&path, &text, secret).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Write a new file (never an existing one); `secret` ones only their owner can read.
pub fn write_new(path: &Path, text: &str, secret: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::certs::{subjects_of, Subject};

    #[test]
    fn demo_files_are_written_once_with_private_keys_private() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("tls");
        let written = write_demo(&out).unwrap();
        assert_eq!(written.len(), DEMO_FILES.len());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode =
                |f: &str| std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode("server.key"), 0o600);
            assert_eq!(mode("envoy-sds-cert.yaml"), 0o600);
            assert_eq!(mode("ca.pem"), 0o644);
        }
        let err = write_demo(&out).unwrap_err();
        assert!(err.contains("already exist"), "{err}");
        let envoy = rustls_pki_types::CertificateDer::from_pem_file(out.join("envoy.pem"));
        use rustls_pki_types::pem::PemObject;
        let subjects = subjects_of(&envoy.unwrap()).unwrap();
        assert_eq!(subjects, [Subject::Cn("envoy".into())]);
        let sds = std::fs::read_to_string(out.join("envoy-sds-cert.yaml")).unwrap();
        assert!(
            sds.contains("name: switchyard_control_client_cert"),
            "{sds}"
        );
        assert!(sds.contains("        -----BEGIN PRIVATE KEY-----"), "{sds}");
    }
}
