//! Requests a test sends through a VM and what came out: the headers the upstream would
//! see, the local reply if the filter sent one, the response the client would get.

use crate::abi::{Action, Pair};
use crate::props::PropValue;
use crate::state::{LocalResponse, LogEntry};

/// The response the simulated upstream returns when the filter lets a request through.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<Pair>,
    pub body: Vec<u8>,
    pub trailers: Vec<Pair>,
}

impl Default for Response {
    fn default() -> Self {
        Response::status(200)
    }
}

impl Response {
    pub fn status(status: u16) -> Self {
        Response {
            status,
            headers: vec![("content-type".into(), b"text/plain".to_vec())],
            body: Vec::new(),
            trailers: Vec::new(),
        }
    }

    /// The upstream resets the stream (or times out) before any response headers.
    pub fn reset() -> Self {
        Response {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            trailers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    pub fn body(mut self, body: impl AsRef<[u8]>) -> Self {
        self.body = body.as_ref().to_vec();
        self
    }

    pub fn trailer(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.trailers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }
}

/// Computes the upstream's response from the request headers it received.
pub type Upstream = std::sync::Arc<dyn Fn(&[Pair]) -> Response + Send + Sync>;

/// A downstream request, built like a client would send it through Envoy.
#[derive(Clone)]
pub struct Request {
    /// In Envoy's order: pseudo-headers first, then the rest as received.
    pub headers: Vec<Pair>,
    pub body: Vec<Vec<u8>>,
    pub trailers: Vec<Pair>,
    pub properties: Vec<(String, Vec<u8>)>,
    pub response: Response,
    /// When set, decides the response from the forwarded headers (wins over `response`).
    pub upstream: Option<Upstream>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("headers", &self.headers)
            .field("body", &self.body)
            .field("trailers", &self.trailers)
            .field("properties", &self.properties)
            .field("response", &self.response)
            .finish()
    }
}

impl Request {
    pub fn new(method: &str, path: &str) -> Self {
        Request {
            headers: vec![
                (":authority".into(), b"shop.example.com".to_vec()),
                (":path".into(), path.as_bytes().to_vec()),
                (":method".into(), method.as_bytes().to_vec()),
                (":scheme".into(), b"https".to_vec()),
            ],
            body: Vec::new(),
            trailers: Vec::new(),
            properties: vec![
                ("source.address".into(), b"203.0.113.7:51234".to_vec()),
                ("source.port".into(), 51234i64.to_le_bytes().to_vec()),
                ("destination.address".into(), b"10.0.0.1:10000".to_vec()),
                ("request.protocol".into(), b"HTTP/1.1".to_vec()),
            ],
            response: Response::default(),
            upstream: None,
        }
    }

    pub fn get(path: &str) -> Self {
        Request::new("GET", path)
    }

    pub fn post(path: &str) -> Self {
        Request::new("POST", path)
    }

    fn set_pseudo(mut self, name: &str, value: &[u8]) -> Self {
        match self.headers.iter_mut().find(|(k, _)| k == name) {
            Some(h) => h.1 = value.to_vec(),
            None => self.headers.push((name.into(), value.to_vec())),
        }
        self
    }

    pub fn authority(self, host: &str) -> Self {
        self.set_pseudo(":authority", host.as_bytes())
    }

    pub fn path(self, path: &str) -> Self {
        self.set_pseudo(":path", path.as_bytes())
    }

    /// Appends a header (name lowercased, as Envoy's codecs deliver it); repeats are kept.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// Appends a header with the name exactly as given (for malformed-input tests).
    pub fn raw_header(mut self, name: &[u8], value: &[u8]) -> Self {
        self.headers
            .push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
        self
    }

    /// Appends one `cookie: name=value` header.
    pub fn cookie(self, name: &str, value: &str) -> Self {
        self.header("cookie", format!("{name}={value}"))
    }

    /// Client address, `ip:port` (IPv6 as `[addr]:port`), as Envoy's `source.address`.
    pub fn source(self, addr: &str) -> Self {
        let port = addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<i64>().ok())
            .unwrap_or(0);
        self.property("source.address", addr)
            .property("source.port", port)
    }

    pub fn property(mut self, path: &str, value: impl Into<PropValue>) -> Self {
        let v = value.into().encode();
        match self.properties.iter_mut().find(|(k, _)| k == path) {
            Some(p) => p.1 = v,
            None => self.properties.push((path.to_string(), v)),
        }
        self
    }

    pub fn body(mut self, chunk: impl AsRef<[u8]>) -> Self {
        self.body.push(chunk.as_ref().to_vec());
        self
    }

    pub fn trailer(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.trailers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// An upstream that answers according to what it receives (e.g. per stack).
    pub fn upstream(mut self, f: Upstream) -> Self {
        self.upstream = Some(f);
        self
    }

    /// What the upstream answers if the request reaches it.
    pub fn respond(mut self, response: Response) -> Self {
        self.response = response;
        self
    }
}

/// A `Set-Cookie` the client received, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetCookie {
    pub name: String,
    pub value: String,
    /// Attributes in order, names lowercased (`max-age`, `path`, `httponly`, …).
    pub attributes: Vec<(String, String)>,
}

impl SetCookie {
    pub fn parse(raw: &str) -> Option<SetCookie> {
        let mut parts = raw.split(';');
        let (name, value) = parts.next()?.trim().split_once('=')?;
        let attributes = parts
            .map(|a| {
                let a = a.trim();
                match a.split_once('=') {
                    Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim().to_string()),
                    None => (a.to_ascii_lowercase(), String::new()),
                }
            })
            .collect();
        Some(SetCookie {
            name: name.trim().to_string(),
            value: value.trim().to_string(),
            attributes,
        })
    }

    pub fn attribute(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.attributes
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn max_age(&self) -> Option<i64> {
        self.attribute("max-age")?.parse().ok()
    }
}

/// Everything one request did.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub context_id: u32,
    pub request_headers_action: Action,
    /// The request headers as forwarded upstream; `None` if the request never got there
    /// (local reply, or paused and never resumed).
    pub upstream_request: Option<Vec<Pair>>,
    pub local_response: Option<LocalResponse>,
    /// Response headers as the client receives them, `:status` included.
    pub response_headers: Vec<Pair>,
    pub response_body: Vec<u8>,
    /// True when a callback paused and nothing resumed the stream.
    pub paused: bool,
    pub route_cache_cleared: u32,
    /// Log lines written while this stream's context was active.
    pub logs: Vec<LogEntry>,
    /// Properties the guest set on the stream.
    pub guest_properties: Vec<(String, Vec<u8>)>,
}

fn find<'a>(h: &'a [Pair], name: &str) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    h.iter()
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

impl Exchange {
    /// First value of a request header as the upstream received it.
    pub fn upstream_header(&self, name: &str) -> Option<&str> {
        find(self.upstream_request.as_deref()?, name)
    }

    /// Every value of a request header as the upstream received it.
    pub fn upstream_headers(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.upstream_request
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .filter(|(k, _)| *k == name)
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .collect()
    }

    /// First value of a response header as the client received it.
    pub fn response_header(&self, name: &str) -> Option<&str> {
        find(&self.response_headers, name)
    }

    /// The status the client received.
    pub fn status(&self) -> u16 {
        self.response_header(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Every `set-cookie` the client received, parsed.
    pub fn set_cookies(&self) -> Vec<SetCookie> {
        self.response_headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .filter_map(|(_, v)| SetCookie::parse(std::str::from_utf8(v).ok()?))
            .collect()
    }

    pub fn set_cookie(&self, name: &str) -> Option<SetCookie> {
        self.set_cookies().into_iter().find(|c| c.name == name)
    }

    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.response_body).unwrap_or("<non-utf8>")
    }
}
