//! Properties (`proxy_get_property`): what Envoy exposes about the request, connection,
//! response and plugin, serialized the way Envoy serializes them for wasm — strings and
//! bytes raw, integers and timestamps as 8 little-endian bytes, booleans as one byte,
//! maps in the pairs format. Values the test sets win over derived ones.

use crate::abi;
use crate::state::HostState;

/// A property value as a test writes it; `encode` gives Envoy's wire form.
#[derive(Clone, Debug, PartialEq)]
pub enum PropValue {
    Str(String),
    Bytes(Vec<u8>),
    Int(i64),
    Bool(bool),
    /// Nanoseconds since the Unix epoch, as Envoy serializes a timestamp.
    Timestamp(i64),
}

impl PropValue {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            PropValue::Str(s) => s.as_bytes().to_vec(),
            PropValue::Bytes(b) => b.clone(),
            PropValue::Int(i) | PropValue::Timestamp(i) => i.to_le_bytes().to_vec(),
            PropValue::Bool(b) => vec![u8::from(*b)],
        }
    }
}

impl From<&str> for PropValue {
    fn from(s: &str) -> Self {
        PropValue::Str(s.to_string())
    }
}

impl From<String> for PropValue {
    fn from(s: String) -> Self {
        PropValue::Str(s)
    }
}

impl From<i64> for PropValue {
    fn from(i: i64) -> Self {
        PropValue::Int(i)
    }
}

impl From<bool> for PropValue {
    fn from(b: bool) -> Self {
        PropValue::Bool(b)
    }
}

fn header(h: &[abi::Pair], name: &str) -> Option<Vec<u8>> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// Looks a dotted property path up for the active context.
pub(crate) fn lookup(st: &mut HostState, path: &str) -> Option<Vec<u8>> {
    let vm_id = st.vm_id.clone();
    let root_id = st.root_id.clone();
    if let Some(s) = st.active_stream() {
        if let Some(v) = s
            .guest_properties
            .get(path)
            .or_else(|| s.properties.get(path))
        {
            return Some(v.clone());
        }
        let req = &s.request_headers;
        let derived = match path {
            "request.path" => header(req, ":path"),
            "request.url_path" => header(req, ":path").map(|p| {
                let end = p.iter().position(|b| *b == b'?').unwrap_or(p.len());
                p[..end].to_vec()
            }),
            "request.host" => header(req, ":authority"),
            "request.method" => header(req, ":method"),
            "request.scheme" => header(req, ":scheme"),
            "request.id" => header(req, "x-request-id"),
            "request.useragent" => header(req, "user-agent"),
            "request.referer" => header(req, "referer"),
            "request.headers" => Some(abi::encode_pairs(req)),
            "response.headers" => Some(abi::encode_pairs(&s.response_headers)),
            "response.code" => header(&s.response_headers, ":status")
                .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<i64>().ok())
                .or_else(|| {
                    s.local_response
                        .as_ref()
                        .map(|l| i64::from(l.status as i32))
                })
                .map(|c| c.to_le_bytes().to_vec()),
            "response.trailers" => Some(abi::encode_pairs(&s.response_trailers)),
            "request.trailers" => Some(abi::encode_pairs(&s.request_trailers)),
            _ => None,
        };
        if derived.is_some() {
            return derived;
        }
    }
    if let Some(v) = st.vm_properties.get(path) {
        return Some(v.clone());
    }
    match path {
        "plugin_vm_id" => Some(vm_id.into_bytes()),
        "plugin_root_id" | "plugin_name" => Some(root_id.into_bytes()),
        _ => None,
    }
}
