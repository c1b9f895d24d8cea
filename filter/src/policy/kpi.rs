//! Compiled business outcomes (the policy's `kpis`) and their matchers. Decides whether
//! a request and its response count towards a KPI; counting is the adapter's business.
//! Matching is a few byte comparisons per KPI with no allocation: the request path pays
//! for it only when the policy declares KPIs.

/// Most KPIs a policy may declare (a request's candidates fit in a `u16` mask).
pub const MAX_KPIS: usize = 16;

/// Which response statuses a KPI counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    Any,
    /// A class by its first digit: `Class(2)` is `2xx`.
    Class(u32),
    Code(u32),
}

impl StatusMatch {
    /// Whether a response status matches. A stream that ended without a response
    /// (`None`) has no outcome and matches nothing.
    pub fn matches(self, status: Option<u32>) -> bool {
        match (self, status) {
            (_, None) => false,
            (StatusMatch::Any, Some(_)) => true,
            (StatusMatch::Class(c), Some(s)) => s / 100 == c,
            (StatusMatch::Code(c), Some(s)) => s == c,
        }
    }
}

/// A compiled KPI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kpi {
    pub name: String,
    /// Exact method (empty: any).
    pub method: String,
    /// Path prefix (empty: any).
    pub path_prefix: String,
    pub status: StatusMatch,
}

/// The KPIs (bit `i` for `kpis[i]`) whose method and path prefix match a request.
pub fn request_mask(kpis: &[Kpi], method: &[u8], path: &[u8]) -> u16 {
    let mut mask = 0u16;
    for (i, k) in kpis.iter().take(MAX_KPIS).enumerate() {
        let method_ok = k.method.is_empty() || k.method.as_bytes() == method;
        if method_ok && path.starts_with(k.path_prefix.as_bytes()) {
            mask |= 1 << i;
        }
    }
    mask
}

/// Of the request's candidates, the KPIs whose status matches the response.
pub fn response_mask(kpis: &[Kpi], candidates: u16, status: Option<u32>) -> u16 {
    let mut mask = 0u16;
    for (i, k) in kpis.iter().take(MAX_KPIS).enumerate() {
        if candidates & (1 << i) != 0 && k.status.matches(status) {
            mask |= 1 << i;
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kpi(name: &str, method: Option<&str>, path: Option<&str>, status: StatusMatch) -> Kpi {
        Kpi {
            name: name.into(),
            method: method.unwrap_or_default().to_string(),
            path_prefix: path.unwrap_or_default().to_string(),
            status,
        }
    }

    #[test]
    fn request_and_status_both_must_match() {
        let kpis = [
            kpi(
                "orders",
                Some("POST"),
                Some("/checkout"),
                StatusMatch::Class(2),
            ),
            kpi("any_get", Some("GET"), None, StatusMatch::Any),
            kpi("failures", None, Some("/checkout"), StatusMatch::Class(5)),
            kpi("created", None, None, StatusMatch::Code(201)),
        ];
        let m = request_mask(&kpis, b"POST", b"/checkout/confirm?x=1");
        assert_eq!(m, 0b1101);
        assert_eq!(response_mask(&kpis, m, Some(200)), 0b0001);
        assert_eq!(response_mask(&kpis, m, Some(201)), 0b1001);
        assert_eq!(response_mask(&kpis, m, Some(503)), 0b0100);
        assert_eq!(response_mask(&kpis, m, None), 0);
        // Method is exact, path a prefix.
        assert_eq!(request_mask(&kpis, b"post", b"/checkout"), 0b1100);
        assert_eq!(request_mask(&kpis, b"GET", b"/check"), 0b1010);
        assert_eq!(response_mask(&kpis, 0b1010, Some(404)), 0b0010);
        assert_eq!(request_mask(&[], b"GET", b"/"), 0);
    }
}
