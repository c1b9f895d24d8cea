//! The numbers and byte layouts of the proxy-wasm ABI 0.2.1, as Envoy and the Rust SDK
//! agree on them. Nothing here touches guest memory; `host` does that.

/// Result codes returned by host functions (`WasmResult` in Envoy, `Status` in the SDK).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    /// Envoy's answer to a guest pointer outside linear memory.
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

impl Status {
    pub(crate) fn code(self) -> i32 {
        self as u32 as i32
    }
}

/// Log levels, as the guest passes them to `proxy_log`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    pub(crate) fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Trace,
            1 => Self::Debug,
            2 => Self::Info,
            3 => Self::Warn,
            4 => Self::Error,
            5 => Self::Critical,
            _ => return None,
        })
    }
}

/// `proxy_on_*` return value for stream callbacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

impl Action {
    pub(crate) fn from_i32(v: i32) -> Self {
        if v == 0 {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}

/// Header and metadata maps a guest may address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapType {
    RequestHeaders = 0,
    RequestTrailers = 1,
    ResponseHeaders = 2,
    ResponseTrailers = 3,
    GrpcReceiveInitialMetadata = 4,
    GrpcReceiveTrailingMetadata = 5,
    HttpCallResponseHeaders = 6,
    HttpCallResponseTrailers = 7,
}

impl MapType {
    pub(crate) fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::RequestHeaders,
            1 => Self::RequestTrailers,
            2 => Self::ResponseHeaders,
            3 => Self::ResponseTrailers,
            4 => Self::GrpcReceiveInitialMetadata,
            5 => Self::GrpcReceiveTrailingMetadata,
            6 => Self::HttpCallResponseHeaders,
            7 => Self::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// Buffers a guest may address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufferType {
    RequestBody = 0,
    ResponseBody = 1,
    DownstreamData = 2,
    UpstreamData = 3,
    HttpCallResponseBody = 4,
    GrpcReceiveBuffer = 5,
    VmConfiguration = 6,
    PluginConfiguration = 7,
    CallData = 8,
}

impl BufferType {
    pub(crate) fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::RequestBody,
            1 => Self::ResponseBody,
            2 => Self::DownstreamData,
            3 => Self::UpstreamData,
            4 => Self::HttpCallResponseBody,
            5 => Self::GrpcReceiveBuffer,
            6 => Self::VmConfiguration,
            7 => Self::PluginConfiguration,
            8 => Self::CallData,
            _ => return None,
        })
    }
}

/// Metric kinds for `proxy_define_metric`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricKind {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

impl MetricKind {
    pub(crate) fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Counter,
            1 => Self::Gauge,
            2 => Self::Histogram,
            _ => return None,
        })
    }
}

/// gRPC status codes the host reports in `proxy_on_grpc_close`.
pub mod grpc_status {
    pub const OK: u32 = 0;
    pub const CANCELLED: u32 = 1;
    pub const UNKNOWN: u32 = 2;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const NOT_FOUND: u32 = 5;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
    pub const UNAUTHENTICATED: u32 = 16;
}

/// A header map entry; values are bytes because Envoy lets obs-text (0x80..0xff) through.
pub type Pair = (String, Vec<u8>);

/// A decoded pairs entry: raw key and value bytes.
pub type RawPair = (Vec<u8>, Vec<u8>);

/// Serializes pairs exactly as Envoy's `marshalPairs` does: a little-endian u32 count,
/// then a (key length, value length) u32 pair per entry, then each key and value followed
/// by a NUL byte. An empty map is the empty byte string (Envoy returns no buffer at all).
pub fn encode_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    if pairs.is_empty() {
        return Vec::new();
    }
    let mut size = 4;
    for (k, v) in pairs {
        size += 8 + k.as_ref().len() + 1 + v.as_ref().len() + 1;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

/// Parses the pairs format. Like Envoy's `toPairs`, a buffer too short for its own header
/// yields an empty map; unlike a naive reader, an entry that runs past the end is an error
/// rather than an out-of-bounds read.
pub fn decode_pairs(buf: &[u8]) -> Result<Vec<RawPair>, &'static str> {
    if buf.len() < 4 {
        return Ok(Vec::new());
    }
    let count = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let header = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .ok_or("pairs count overflows")?;
    if header > buf.len() {
        return Ok(Vec::new());
    }
    let mut sizes = Vec::with_capacity(count);
    for i in 0..count {
        let at = 4 + i * 8;
        let k = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        let v = u32::from_le_bytes([buf[at + 4], buf[at + 5], buf[at + 6], buf[at + 7]]) as usize;
        sizes.push((k, v));
    }
    let mut p = header;
    let mut out = Vec::with_capacity(count);
    for (k, v) in sizes {
        let key = buf
            .get(p..p + k)
            .ok_or("pairs key runs past the buffer")?
            .to_vec();
        p += k + 1;
        let value = buf
            .get(p..p + v)
            .ok_or("pairs value runs past the buffer")?
            .to_vec();
        p += v + 1;
        if p > buf.len() {
            return Err("pairs terminator runs past the buffer");
        }
        out.push((key, value));
    }
    Ok(out)
}

/// Splits a property path as the SDK serializes it (segments each followed by NUL) and
/// joins the segments with '.', the form tests use to name properties.
pub fn property_path_to_dotted(path: &[u8]) -> String {
    let trimmed = path.strip_suffix(&[0]).unwrap_or(path);
    trimmed
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_layout_matches_envoy() {
        let bytes = encode_pairs(&[(":method", "GET"), ("a", "")]);
        let mut want = vec![2, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(b":method\0GET\0a\0\0");
        assert_eq!(bytes, want);
        let back = decode_pairs(&bytes).unwrap();
        assert_eq!(
            back,
            vec![
                (b":method".to_vec(), b"GET".to_vec()),
                (b"a".to_vec(), vec![])
            ]
        );
    }

    #[test]
    fn truncated_pairs_are_an_error_not_a_read_past_the_end() {
        let mut bytes = encode_pairs(&[("key", "value")]);
        bytes.truncate(bytes.len() - 3);
        assert!(decode_pairs(&bytes).is_err());
        assert!(decode_pairs(&[1, 0]).unwrap().is_empty());
        assert!(decode_pairs(&[0xff, 0xff, 0xff, 0xff]).unwrap().is_empty());
    }

    #[test]
    fn property_paths() {
        assert_eq!(
            property_path_to_dotted(b"source\0address\0"),
            "source.address"
        );
        assert_eq!(property_path_to_dotted(b"plugin_name"), "plugin_name");
    }
}
