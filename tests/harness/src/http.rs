//! A small blocking HTTP/1.1 client over one keep-alive connection that sends exactly
//! the bytes a test asks for: repeated headers, arbitrary header bytes, any host. What a
//! hostile client would send is what the tests need to send.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The `host` header sent when the request gives none.
pub const DEFAULT_HOST: &str = "localhost";

/// An HTTP/1.1 response. Header names are lowercased; values are as received.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header called `name`, in order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// `name=value` of the cookie `name` set by this response, attributes stripped.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers_named("set-cookie")
            .into_iter()
            .map(|c| c.split(';').next().unwrap_or("").trim())
            .find(|c| c.split_once('=').is_some_and(|(n, _)| n == name))
            .map(str::to_string)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, `Null` if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A keep-alive HTTP/1.1 client over one connection (reconnects once if the server
/// closed it between requests).
pub struct Client {
    addr: SocketAddr,
    host: String,
    reader: BufReader<TcpStream>,
}

impl Client {
    /// Connect to `127.0.0.1:port`.
    pub fn connect(port: u16) -> std::io::Result<Client> {
        Client::connect_addr(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Connect to `addr`.
    pub fn connect_addr(addr: SocketAddr) -> std::io::Result<Client> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(Client {
            addr,
            host: DEFAULT_HOST.to_string(),
            reader: BufReader::new(s),
        })
    }

    /// Send `host: <host>` when a request gives no `host` header of its own.
    pub fn with_host(mut self, host: &str) -> Client {
        self.host = host.to_string();
        self
    }

    /// The address it talks to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET path` with the given headers (sent verbatim, repeats included).
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
        let h: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        self.request("GET", path, &h)
    }

    /// Send a request with raw header bytes and no body; reconnects once if the server
    /// had closed the connection.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
    ) -> std::io::Result<Response> {
        self.request_with_body(method, path, headers, None)
    }

    /// Send a request with an optional body (a `content-length` is added; `POST` and
    /// `PUT` without a body send `content-length: 0`).
    pub fn request_with_body(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        body: Option<&[u8]>,
    ) -> std::io::Result<Response> {
        match self.try_request(method, path, headers, body) {
            Ok(r) => Ok(r),
            Err(_) => {
                let host = std::mem::take(&mut self.host);
                *self = Client::connect_addr(self.addr)?.with_host(&host);
                self.try_request(method, path, headers, body)
            }
        }
    }

    /// Send exactly these headers (plus `host` if none is given) once: no reconnect, no
    /// `content-length` added. For tests where a resent request would change what they
    /// count.
    pub fn request_once(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
    ) -> std::io::Result<Response> {
        self.send(method, path, headers, None, false)
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        body: Option<&[u8]>,
    ) -> std::io::Result<Response> {
        self.send(method, path, headers, body, true)
    }

    fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        body: Option<&[u8]>,
        add_length: bool,
    ) -> std::io::Result<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            req.extend_from_slice(format!("host: {}\r\n", self.host).as_bytes());
        }
        for (n, v) in headers {
            req.extend_from_slice(n.as_bytes());
            req.extend_from_slice(b": ");
            req.extend_from_slice(v);
            req.extend_from_slice(b"\r\n");
        }
        match body {
            Some(b) => req.extend_from_slice(format!("content-length: {}\r\n", b.len()).as_bytes()),
            None if add_length && (method == "POST" || method == "PUT") => {
                req.extend_from_slice(b"content-length: 0\r\n")
            }
            None => {}
        }
        req.extend_from_slice(b"\r\n");
        if let Some(b) = body {
            req.extend_from_slice(b);
        }
        self.reader.get_mut().write_all(&req)?;
        read_response(&mut self.reader, method == "HEAD")
    }
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

/// Read one response: by `content-length`, chunked, or (on `connection: close`) to EOF.
fn read_response(r: &mut BufReader<TcpStream>, head_only: bool) -> std::io::Result<Response> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(bad("connection closed"));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("status line"))?;
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 {
            return Err(bad("connection closed in the headers"));
        }
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v): &(String, String)| v.clone())
    };
    let mut body = Vec::new();
    let no_body = head_only || status / 100 == 1 || status == 204 || status == 304;
    if no_body {
    } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut l = String::new();
            r.read_line(&mut l)?;
            let size = usize::from_str_radix(l.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| bad("chunk size"))?;
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if find("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
        r.read_to_end(&mut body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}
