//! The error-collecting context of validation and the checks shared by several sections
//! (names, header names, cookie names). Decides whether a name is acceptable and records
//! every problem with the path of its field; it never stops at the first problem and
//! never drops or repairs an invalid value.

use std::fmt;

use switchyard_policy_doc::KeyDoc;

/// One problem with a field of the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldIssue {
    /// Path of the field, e.g. `rules[2].route.targets[0].stack`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every reason a policy was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid policy: {}", .errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct Invalid {
    pub errors: Vec<FieldIssue>,
}

impl Invalid {
    /// A rejection for one reason.
    pub(in crate::policy) fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            errors: vec![FieldIssue {
                path: path.into(),
                message: message.into(),
            }],
        }
    }
}

/// Collects errors (the policy is rejected) and warnings (it is accepted) in one pass.
#[derive(Debug, Default)]
pub(in crate::policy) struct Ctx {
    pub errors: Vec<FieldIssue>,
    pub warnings: Vec<FieldIssue>,
}

impl Ctx {
    pub fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldIssue {
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(FieldIssue {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// A stack, channel or rule name: 1-48 characters of `[A-Za-z0-9_-]`.
pub(in crate::policy) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 48
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An HTTP header name in any case (header names are case-insensitive; the policy is
/// lower-cased at compile time, as Envoy lower-cases request headers).
fn valid_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Headers the filter sets itself: a policy must not read them as inputs.
const INTERNAL_HEADERS: [&str; 2] = ["x-switchyard-stack", "x-switchyard-decision"];

/// A header the policy reads: an HTTP header name (any case) that is not a pseudo-header
/// and not one the filter sets itself.
pub(in crate::policy) fn check_header(ctx: &mut Ctx, path: &str, name: &str) {
    if name.starts_with(':') {
        ctx.err(
            path,
            format!("'{name}' is a pseudo-header; name a request header"),
        );
    } else if !valid_header_name(name) {
        ctx.err(path, format!("'{name}' is not an HTTP header name"));
    } else if INTERNAL_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        ctx.err(
            path,
            format!("'{name}' is set by Switchyard itself and cannot be an input"),
        );
    }
}

/// A user key source (header, cookie or client address).
pub(in crate::policy) fn check_key(ctx: &mut Ctx, path: &str, key: &KeyDoc) {
    match key {
        KeyDoc::Header(h) => check_header(ctx, &format!("{path}.header"), h),
        KeyDoc::Cookie(c) if !valid_cookie_name(c) => ctx.err(
            format!("{path}.cookie"),
            format!("'{c}' is not a valid cookie name"),
        ),
        _ => {}
    }
}

/// An RFC 6265 cookie name (a token).
pub(in crate::policy) fn valid_cookie_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b))
}
