//! `Receiver`: a small local HTTP/1.1 server (std `TcpListener` on 127.0.0.1:0, a thread per
//! connection, keep-alive) that records webhook deliveries and answers as told: 200, a given
//! status, 429 with `Retry-After`, a redirect, a stall, a hold until released, or
//! de-duplication on `webhook-id`.

#![allow(dead_code)]

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long `wait_for` waits before failing the test.
const WAIT_CAP: Duration = Duration::from_secs(60);

/// How the receiver answers a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// 200 with a small JSON body naming the delivery.
    Ok,
    /// This status, no `Retry-After`.
    Status(u16),
    /// This status with `Retry-After: <value>`.
    RetryAfter(u16, String),
    /// Waits this many milliseconds, then answers 200.
    Stall(u64),
    /// Waits until [`Receiver::release`], then answers 200.
    Hold,
    /// 302 with `Location: <url>`.
    Redirect(String),
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// 0 for the first recorded delivery.
    pub seq: usize,
    /// Request method.
    pub method: String,
    /// Request target (path and query).
    pub path: String,
    /// Headers, names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Raw body.
    pub body: Vec<u8>,
    /// When it arrived.
    pub at: Instant,
}

impl Delivery {
    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `webhook-id` header (panics when missing).
    pub fn webhook_id(&self) -> &str {
        self.header("webhook-id")
            .unwrap_or_else(|| panic!("delivery {} has no webhook-id: {self:?}", self.seq))
    }

    /// The body as JSON (panics when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "delivery {} body is not JSON ({e}): {}",
                self.seq,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// The answer body for a 200 to the delivery with this `webhook-id` (empty when none): what a
/// task's receipt `body_head` and result should hold.
pub fn ok_body(webhook_id: &str) -> String {
    format!("{{\"received\":\"{webhook_id}\"}}")
}

#[derive(Debug)]
struct State {
    /// Recorded deliveries (in de-dup mode, only the first per `webhook-id`).
    deliveries: Vec<Delivery>,
    /// Every request, duplicates included.
    received: usize,
    /// `webhook-id`s seen (de-dup mode).
    seen: HashSet<String>,
    /// Requests not recorded because their `webhook-id` was seen before.
    duplicates: usize,
    /// The answer when no per-request mode is queued.
    mode: Mode,
    /// Answers for the next requests, in order.
    next: VecDeque<Mode>,
    /// Record only the first delivery per `webhook-id` (and answer repeats 200 at once).
    dedupe: bool,
    /// Held requests with a lower delivery number answer (set by `release`).
    released_upto: usize,
    /// Requests waiting in `Hold` right now.
    held: usize,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A recording HTTP server on 127.0.0.1 with an ephemeral port; stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Receiver {
    /// Starts answering 200 to everything.
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                deliveries: Vec::new(),
                received: 0,
                seen: HashSet::new(),
                duplicates: 0,
                mode: Mode::Ok,
                next: VecDeque::new(),
                dedupe: false,
                released_upto: 0,
                held: 0,
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let accept_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("receiver-{}", addr.port()))
            .spawn(move || {
                for stream in listener.incoming() {
                    if accept_shared.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let shared = Arc::clone(&accept_shared);
                    let _ = std::thread::Builder::new()
                        .name("receiver-conn".into())
                        .spawn(move || serve_connection(stream, &shared));
                }
            })
            .expect("receiver thread");
        Receiver { addr, shared }
    }

    /// Starts in de-dup mode.
    pub fn start_deduplicating() -> Receiver {
        let r = Receiver::start();
        r.set_dedupe(true);
        r
    }

    /// `http://127.0.0.1:<port>/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The receiver's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The circuit-breaker target name keel gives this receiver (`http:127.0.0.1:<port>`).
    pub fn target(&self) -> String {
        format!("http:{}", self.addr)
    }

    /// Answers every later request (without a queued per-request mode) like this.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.lock().mode = mode;
    }

    /// Answers the next requests with these modes, one each, before falling back to the
    /// global mode.
    pub fn push_modes(&self, modes: impl IntoIterator<Item = Mode>) {
        self.shared.lock().next.extend(modes);
    }

    /// Turns de-duplication on `webhook-id` on or off.
    pub fn set_dedupe(&self, on: bool) {
        self.shared.lock().dedupe = on;
    }

    /// Lets every request recorded so far answer (200), including one about to be held;
    /// later requests in `Hold` wait for the next release.
    pub fn release(&self) {
        let mut state = self.shared.lock();
        state.released_upto = state.deliveries.len();
        drop(state);
        self.shared.changed.notify_all();
    }

    /// Requests waiting in `Hold` right now.
    pub fn held(&self) -> usize {
        self.shared.lock().held
    }

    /// Recorded deliveries, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.lock().deliveries.clone()
    }

    /// How many deliveries were recorded.
    pub fn count(&self) -> usize {
        self.shared.lock().deliveries.len()
    }

    /// Every request received, duplicates included.
    pub fn received(&self) -> usize {
        self.shared.lock().received
    }

    /// Requests not recorded because their `webhook-id` was seen before (de-dup mode).
    pub fn duplicates(&self) -> usize {
        self.shared.lock().duplicates
    }

    /// Waits until at least `n` deliveries were recorded and returns them all; fails the test
    /// after a minute.
    pub fn wait_for(&self, n: usize) -> Vec<Delivery> {
        let deadline = Instant::now() + WAIT_CAP;
        let mut state = self.shared.lock();
        while state.deliveries.len() < n {
            let now = Instant::now();
            assert!(
                now < deadline,
                "receiver {}: waited {WAIT_CAP:?} for {n} deliveries, got {}: {:#?}",
                self.addr,
                state.deliveries.len(),
                state
                    .deliveries
                    .iter()
                    .map(|d| (d.seq, d.webhook_id_or_none(), d.path.clone()))
                    .collect::<Vec<_>>()
            );
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.deliveries.clone()
    }

    /// Waits until `n` requests are held (`Mode::Hold`); fails the test after a minute.
    pub fn wait_held(&self, n: usize) {
        let deadline = Instant::now() + WAIT_CAP;
        let mut state = self.shared.lock();
        while state.held < n {
            let now = Instant::now();
            assert!(
                now < deadline,
                "receiver {}: waited {WAIT_CAP:?} for {n} held requests, got {}",
                self.addr,
                state.held
            );
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Delivery {
    fn webhook_id_or_none(&self) -> String {
        self.header("webhook-id").unwrap_or("-").to_string()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.release();
        // Unblock `accept`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// A URL on 127.0.0.1 where nothing listens (the port was bound, then closed).
pub fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{addr}/hook")
}

/// A request read off the wire.
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Reads one request; `None` at end of stream or on a malformed request.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = header("content-length") {
        let len: usize = len.parse().ok()?;
        body = vec![0; len];
        reader.read_exact(&mut body).ok()?;
    }
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        400 => "Bad Request",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn serve_connection(stream: TcpStream, shared: &Shared) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader) {
        let webhook_id = request
            .headers
            .iter()
            .find(|(n, _)| n == "webhook-id")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let close = request
            .headers
            .iter()
            .any(|(n, v)| n == "connection" && v.eq_ignore_ascii_case("close"));
        let (mode, seq) = {
            let mut state = shared.lock();
            state.received += 1;
            let duplicate =
                state.dedupe && !webhook_id.is_empty() && !state.seen.insert(webhook_id.clone());
            if duplicate {
                state.duplicates += 1;
                (Mode::Ok, usize::MAX)
            } else {
                let seq = state.deliveries.len();
                state.deliveries.push(Delivery {
                    seq,
                    method: request.method,
                    path: request.path,
                    headers: request.headers,
                    body: request.body,
                    at: Instant::now(),
                });
                let mode = state.next.pop_front().unwrap_or_else(|| state.mode.clone());
                shared.changed.notify_all();
                (mode, seq)
            }
        };
        let (status, extra) = match mode {
            Mode::Ok => (200, None),
            Mode::Status(s) => (s, None),
            Mode::RetryAfter(s, v) => (s, Some(("retry-after", v))),
            Mode::Redirect(to) => (302, Some(("location", to))),
            Mode::Stall(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                (200, None)
            }
            Mode::Hold => {
                let mut state = shared.lock();
                state.held += 1;
                shared.changed.notify_all();
                while seq >= state.released_upto && !shared.stop.load(Ordering::SeqCst) {
                    state = shared
                        .changed
                        .wait(state)
                        .unwrap_or_else(|e| e.into_inner());
                }
                state.held -= 1;
                (200, None)
            }
        };
        let body = if status == 200 {
            ok_body(&webhook_id)
        } else {
            format!("{{\"error\":\"told to answer {status}\"}}")
        };
        let mut answer = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            reason(status),
            body.len()
        );
        if let Some((name, value)) = extra {
            answer.push_str(&format!("{name}: {value}\r\n"));
        }
        if close {
            answer.push_str("connection: close\r\n");
        }
        answer.push_str("\r\n");
        answer.push_str(&body);
        if writer.write_all(answer.as_bytes()).is_err() || writer.flush().is_err() || close {
            return;
        }
    }
}
