//! The `kpis` section: business outcomes counted per stack. Decides whether each KPI is
//! well formed (name, method, path prefix, status) and compiles it into byte matchers;
//! never drops or repairs a bad one.

use switchyard_policy_doc::KpiDoc;

use crate::policy::check::Ctx;
use crate::policy::kpi::{Kpi, StatusMatch, MAX_KPIS};

pub(super) fn kpis(ctx: &mut Ctx, docs: &[KpiDoc]) -> Vec<Kpi> {
    if docs.len() > MAX_KPIS {
        ctx.err(
            "kpis",
            format!("at most {MAX_KPIS} KPIs are supported, got {}", docs.len()),
        );
    }
    let mut out: Vec<Kpi> = Vec::with_capacity(docs.len());
    for (i, k) in docs.iter().enumerate() {
        let path = format!("kpis[{i}]");
        let name_ok = (1..=32).contains(&k.name.len())
            && k.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            ctx.err(
                format!("{path}.name"),
                format!("'{}' must be 1-32 characters of [a-z0-9_]", k.name),
            );
        } else if out.iter().any(|o| o.name == k.name) {
            ctx.err(
                format!("{path}.name"),
                format!("duplicate KPI '{}'", k.name),
            );
        }
        if let Some(m) = &k.method {
            if !(1..=16).contains(&m.len()) || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                ctx.err(
                    format!("{path}.method"),
                    format!("'{m}' must be an HTTP method in upper case, e.g. POST"),
                );
            }
        }
        if let Some(p) = &k.path_prefix {
            if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
                ctx.err(
                    format!("{path}.path_prefix"),
                    format!("'{p}' must be a path starting with '/'"),
                );
            }
        }
        let status = match k.status.as_deref() {
            None => StatusMatch::Any,
            Some(s) => match status_match(s) {
                Some(m) => m,
                None => {
                    ctx.err(
                        format!("{path}.status"),
                        format!("'{s}' must be a status class (1xx-5xx) or a code (100-599)"),
                    );
                    StatusMatch::Any
                }
            },
        };
        out.push(Kpi {
            name: k.name.clone(),
            method: k.method.as_ref().map(|m| m.as_bytes().into()),
            path_prefix: k.path_prefix.as_ref().map(|p| p.as_bytes().into()),
            status,
        });
    }
    out
}

/// `2xx` → class 2, `201` → code 201; anything else is not a status.
fn status_match(s: &str) -> Option<StatusMatch> {
    match s.as_bytes() {
        [d @ b'1'..=b'5', b'x', b'x'] => Some(StatusMatch::Class(u32::from(d - b'0'))),
        [b'1'..=b'5', b'0'..=b'9', b'0'..=b'9'] => s.parse().ok().map(StatusMatch::Code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(status_match("2xx"), Some(StatusMatch::Class(2)));
        assert_eq!(status_match("5xx"), Some(StatusMatch::Class(5)));
        assert_eq!(status_match("201"), Some(StatusMatch::Code(201)));
        for bad in ["6xx", "2XX", "20", "2000", "", "x2x", "099", "600"] {
            assert_eq!(status_match(bad), None, "{bad}");
        }
    }
}
