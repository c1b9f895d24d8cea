//! Bounded load for the chaos suite and the soak: one thread per connection, each pacing
//! its requests and recording every one (never resent), so a verdict can count what a
//! client saw.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use switchyard_e2e::*;

/// One request a load connection sent.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Sent at, since the load started.
    pub at: Duration,
    pub latency: Duration,
    /// HTTP status, or 0 for a transport error (refused, reset, client timeout).
    pub status: u16,
    pub served_by: String,
    /// The load stream it belongs to (a segment, a path).
    pub stream: &'static str,
}

/// What one load connection sends.
#[derive(Clone)]
pub struct Stream {
    pub name: &'static str,
    pub method: &'static str,
    pub path: &'static str,
    pub headers: Vec<(&'static str, String)>,
    /// Pause between requests (bounded load: at most 1/pace requests per second).
    pub pace: Duration,
}

impl Stream {
    pub fn get(name: &'static str, path: &'static str) -> Stream {
        Stream {
            name,
            method: "GET",
            path,
            headers: Vec::new(),
            pace: Duration::from_millis(10),
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Stream {
        self.headers.push((name, value.to_string()));
        self
    }
}

/// Bounded load: one thread per connection, each sending its stream's requests once
/// (never resent), until stopped or the safety cap (120 s unless `start_for`).
pub struct Load {
    start: Instant,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Sample>>>,
    port: u16,
    /// Safety cap: every connection stops by then even if nobody calls `stop`.
    max: Duration,
}

impl Load {
    pub fn start(port: u16) -> Load {
        Load {
            start: Instant::now(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            port,
            max: Duration::from_secs(120),
        }
    }

    /// The same, with a longer safety cap (the soak).
    pub fn start_for(port: u16, max: Duration) -> Load {
        Load {
            max,
            ..Load::start(port)
        }
    }

    /// Adds `conns` connections sending `stream`.
    pub fn add(&mut self, stream: &Stream, conns: usize) {
        for _ in 0..conns {
            let (stop, start, port, s, max) = (
                self.stop.clone(),
                self.start,
                self.port,
                stream.clone(),
                self.max,
            );
            self.threads.push(std::thread::spawn(move || {
                let mut out = Vec::new();
                let mut client = Client::connect(port).ok();
                let mut headers: Vec<(&str, &[u8])> =
                    s.headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
                if s.method == "POST" {
                    headers.push(("content-length", b"0"));
                }
                while !stop.load(Ordering::Relaxed) && start.elapsed() < max {
                    let at = start.elapsed();
                    let t = Instant::now();
                    let r = match client.as_mut() {
                        Some(c) => c.request_once(s.method, s.path, &headers),
                        None => Err(std::io::Error::other("not connected")),
                    };
                    let (status, served_by) = match r {
                        Ok(r) => {
                            let by = r.served_by().unwrap_or("-").to_string();
                            if r.header("connection") == Some("close") {
                                client = Client::connect(port).ok();
                            }
                            (r.status, by)
                        }
                        Err(_) => {
                            client = Client::connect(port).ok();
                            (0, "-".to_string())
                        }
                    };
                    out.push(Sample {
                        at,
                        latency: t.elapsed(),
                        status,
                        served_by,
                        stream: s.name,
                    });
                    std::thread::sleep(s.pace);
                }
                out
            }));
        }
    }

    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<Sample> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_by_key(|s| s.at);
        all
    }
}

pub fn p99(samples: &[&Sample]) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut l: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    l.sort();
    l[(l.len() * 99 / 100).min(l.len() - 1)]
}

pub fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}
