//! Client certificates as credentials: which identity a verified certificate names.
//!
//! Decides: what a certificate's subjects are (its subject's common names, its subject
//! alternative names of type DNS and URI) and which configured `[[tls.identity]]` maps one
//! of them to a name and a role. The mapping is explicit on purpose: a role is never read
//! out of the certificate (an OU, say), so a CA that signs certificates for other uses
//! cannot mint an admin by accident.
//!
//! Never: verifies a chain (rustls did, at the handshake, against `tls.client_ca`; only
//! certificates it accepted reach here) or grants a role to an unmapped certificate.

use std::fmt;

use x509_cert::der::{Decode, Tag, Tagged};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;

use super::{check_name, Credential, Identity, Role};

/// Object identifier of the X.520 commonName attribute (2.5.4.3).
const COMMON_NAME: x509_cert::der::oid::ObjectIdentifier =
    x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");

/// One name a certificate is known by: `CN=…`, `DNS:…` or `URI:…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A common name in the certificate's subject.
    Cn(String),
    /// A DNS name in the subject alternative names (compared in lower case).
    Dns(String),
    /// A URI in the subject alternative names, e.g. a SPIFFE id (compared exactly).
    Uri(String),
}

impl Subject {
    /// `CN=envoy`, `DNS:envoy.internal` or `URI:spiffe://example.org/envoy`.
    pub fn parse(s: &str) -> Result<Subject, String> {
        let s = s.trim();
        let (subject, value) = if let Some(v) = s.strip_prefix("CN=") {
            (Subject::Cn(v.to_string()), v)
        } else if let Some(v) = s.strip_prefix("DNS:") {
            (Subject::Dns(v.to_ascii_lowercase()), v)
        } else if let Some(v) = s.strip_prefix("URI:") {
            (Subject::Uri(v.to_string()), v)
        } else {
            return Err(format!(
                "{s:?}: expected CN=<common name>, DNS:<name> or URI:<uri>"
            ));
        };
        if value.is_empty() {
            return Err(format!("{s:?}: nothing after the prefix"));
        }
        Ok(subject)
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Cn(v) => write!(f, "CN={v}"),
            Subject::Dns(v) => write!(f, "DNS:{v}"),
            Subject::Uri(v) => write!(f, "URI:{v}"),
        }
    }
}

/// Every subject of a DER certificate: common names first, then DNS and URI SANs.
pub fn subjects_of(der: &[u8]) -> Result<Vec<Subject>, String> {
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|e| format!("unreadable client certificate: {e}"))?;
    let mut out = Vec::new();
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter() {
            let text = matches!(
                atv.value.tag(),
                Tag::Utf8String | Tag::PrintableString | Tag::Ia5String
            );
            if atv.oid == COMMON_NAME && text {
                if let Ok(v) = std::str::from_utf8(atv.value.value()) {
                    out.push(Subject::Cn(v.to_string()));
                }
            }
        }
    }
    if let Ok(Some((_, san))) = cert.tbs_certificate.get::<SubjectAltName>() {
        for name in san.0 {
            match name {
                GeneralName::DnsName(d) => out.push(Subject::Dns(d.to_string().to_lowercase())),
                GeneralName::UniformResourceIdentifier(u) => out.push(Subject::Uri(u.to_string())),
                _ => {}
            }
        }
    }
    Ok(out)
}

/// `[[tls.identity]]`: a certificate subject, the identity it is, and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    pub subject: Subject,
    pub name: String,
    pub role: Role,
}

impl CertIdentity {
    /// Parse a `--tls-identity` value: `SUBJECT=NAME:ROLE`, e.g. `CN=envoy=envoy:dataplane`
    /// or `URI:spiffe://example.org/ci=ci-bot:operator` (split at the last `=`: names and
    /// roles never hold one).
    pub fn parse_flag(s: &str) -> Result<CertIdentity, String> {
        let usage = || format!("{s:?}: expected SUBJECT=NAME:ROLE, e.g. CN=envoy=envoy:dataplane");
        let (subject, who) = s.rsplit_once('=').ok_or_else(usage)?;
        let (name, role) = who.split_once(':').ok_or_else(usage)?;
        Self::new(subject, name, role)
    }

    /// A checked mapping: the subject's form, the name's characters, a known role.
    pub fn new(subject: &str, name: &str, role: &str) -> Result<CertIdentity, String> {
        let subject = Subject::parse(subject).map_err(|e| format!("subject {e}"))?;
        check_name(name)?;
        let role = Role::parse(role).ok_or_else(|| {
            format!("role {role:?}: one of viewer, operator, approver, admin, dataplane")
        })?;
        Ok(CertIdentity {
            subject,
            name: name.to_string(),
            role,
        })
    }
}

/// The configured mappings, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertIdentities(Vec<CertIdentity>);

impl CertIdentities {
    /// The mappings, or every subject that is mapped twice.
    pub fn new(all: Vec<CertIdentity>) -> Result<CertIdentities, Vec<String>> {
        let mut problems = Vec::new();
        for (i, a) in all.iter().enumerate() {
            if all[..i].iter().any(|b| b.subject == a.subject) {
                problems.push(format!("subject {} is mapped more than once", a.subject));
            }
        }
        if problems.is_empty() {
            Ok(CertIdentities(all))
        } else {
            Err(problems)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &CertIdentity> {
        self.0.iter()
    }

    /// The identity of a verified end-entity certificate (DER): the first mapping, in
    /// configuration order, whose subject the certificate has. `Err` says why there is
    /// none (the caller answers PERMISSION_DENIED: the certificate is genuine, it just
    /// grants nothing).
    pub fn identify(&self, der: &[u8]) -> Result<Identity, String> {
        let subjects = subjects_of(der)?;
        for m in &self.0 {
            if subjects.contains(&m.subject) {
                return Ok(Identity {
                    name: m.name.clone(),
                    role: m.role,
                    credential: Credential::Certificate {
                        subject: m.subject.to_string(),
                    },
                });
            }
        }
        let shown = match subjects.first() {
            Some(s) => s.to_string(),
            None => "without a CN, DNS or URI name".to_string(),
        };
        Err(format!(
            "client certificate {shown} is valid but maps to no identity: \
             add a [[tls.identity]] for it, or send a token"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_flags_parse_or_say_which_forms_work() {
        assert_eq!(Subject::parse("CN=envoy"), Ok(Subject::Cn("envoy".into())));
        assert_eq!(
            Subject::parse("DNS:Envoy.Internal"),
            Ok(Subject::Dns("envoy.internal".into()))
        );
        assert_eq!(
            Subject::parse("URI:spiffe://x/y").unwrap().to_string(),
            "URI:spiffe://x/y"
        );
        for bad in ["envoy", "cn=envoy", "CN=", "OU=admins"] {
            assert!(Subject::parse(bad).is_err(), "{bad}");
        }
        let m = CertIdentity::parse_flag("CN=envoy=envoy-eu:dataplane").unwrap();
        assert_eq!(m.subject, Subject::Cn("envoy".into()));
        assert_eq!((m.name.as_str(), m.role), ("envoy-eu", Role::Dataplane));
        let m = CertIdentity::parse_flag("URI:spiffe://example.org/ci=ci-bot:operator").unwrap();
        assert_eq!(m.subject, Subject::Uri("spiffe://example.org/ci".into()));
        for bad in [
            "CN=envoy",
            "CN=envoy=envoy",
            "CN=envoy=brain:admin",
            "CN=envoy=envoy:root",
        ] {
            assert!(CertIdentity::parse_flag(bad).is_err(), "{bad}");
        }
        let twice = vec![
            CertIdentity::parse_flag("CN=a=a:viewer").unwrap(),
            CertIdentity::parse_flag("CN=a=b:admin").unwrap(),
        ];
        assert!(CertIdentities::new(twice).is_err());
    }
}
