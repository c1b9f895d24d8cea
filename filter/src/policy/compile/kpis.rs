//! The `kpis` section: business outcomes counted per stack. Decides whether each KPI is
//! well formed (name, method, path prefix, status) and compiles it into byte matchers;
//! never drops or repairs a bad one.

use switchyard_policy_doc::KpiDoc;

use crate::policy::check::Ctx;
use crate::policy::kpi::{Kpi, StatusMatch, MAX_KPIS};

/// The fields of a KPI, with what a bad value of each must be.
const FIELDS: [(&str, &str); 4] = [
    ("name", "must be 1-32 characters of [a-z0-9_], unique"),
    ("method", "must be an HTTP method in upper case, e.g. POST"),
    ("path_prefix", "must be a path starting with '/'"),
    (
        "status",
        "must be a status class (1xx-5xx) or a code (100-599)",
    ),
];

/// What an unknown key of a KPI is told.
const UNKNOWN_HINT: &str = "expected one of `name`, `method`, `path_prefix`, `status`";

pub(super) fn kpis(ctx: &mut Ctx, docs: &[KpiDoc]) -> Vec<Kpi> {
    // Messages name the field, not its value: every formatted argument costs the
    // .wasm (this code runs in the filter too), and the path already points at it.
    if docs.len() > MAX_KPIS {
        ctx.err("kpis", "at most 16 KPIs are supported");
    }
    let mut out: Vec<Kpi> = Vec::with_capacity(docs.len());
    for (i, doc) in docs.iter().enumerate() {
        let mut k = Kpi {
            name: String::new(),
            method: String::new(),
            path_prefix: String::new(),
            status: StatusMatch::Any,
        };
        for (key, v) in doc {
            let field = FIELDS.iter().position(|(f, _)| f == key);
            let b = v.as_bytes();
            let ok = match field {
                Some(0) => {
                    k.name.clone_from(v);
                    (1..=32).contains(&b.len())
                        && b.iter()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
                        && !out.iter().any(|o| o.name == *v)
                }
                Some(1) => {
                    k.method.clone_from(v);
                    (1..=16).contains(&b.len()) && b.iter().all(u8::is_ascii_uppercase)
                }
                Some(2) => {
                    k.path_prefix.clone_from(v);
                    b.first() == Some(&b'/') && b.iter().all(|c| *c > b' ' && *c != 0x7f)
                }
                Some(_) => status_match(b).map(|m| k.status = m).is_some(),
                None => false,
            };
            match field {
                _ if ok => {}
                Some(f) => {
                    let message = FIELDS[f].1;
                    ctx.err(format!("kpis[{i}].{key}"), message);
                }
                // Worded as the native validator's shape check words it (which, in the
                // control service, reports it first).
                None => {
                    let hint = UNKNOWN_HINT;
                    ctx.err(
                        format!("kpis[{i}].{key}"),
                        format!("unknown field `{key}`, {hint}"),
                    );
                }
            }
        }
        if k.name.is_empty() {
            ctx.err(format!("kpis[{i}].name"), "missing field `name`");
        }
        out.push(k);
    }
    out
}

/// `2xx` → class 2, `201` → code 201; anything else is not a status.
fn status_match(s: &[u8]) -> Option<StatusMatch> {
    let d = |b: u8| u32::from(b - b'0');
    match *s {
        [c @ b'1'..=b'5', b'x', b'x'] => Some(StatusMatch::Class(d(c))),
        [c @ b'1'..=b'5', t @ b'0'..=b'9', u @ b'0'..=b'9'] => {
            Some(StatusMatch::Code(d(c) * 100 + d(t) * 10 + d(u)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(status_match(b"2xx"), Some(StatusMatch::Class(2)));
        assert_eq!(status_match(b"5xx"), Some(StatusMatch::Class(5)));
        assert_eq!(status_match(b"201"), Some(StatusMatch::Code(201)));
        for bad in ["6xx", "2XX", "20", "2000", "", "x2x", "099", "600"] {
            assert_eq!(status_match(bad.as_bytes()), None, "{bad}");
        }
    }
}
