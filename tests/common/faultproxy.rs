//! A fault-injecting HTTP/1.1 proxy on loopback, in front of an S3 test
//! server (moto or Garage), for tests that must survive a bad network.
//!
//! ```ignore
//! #[path = "common/faultproxy.rs"]
//! mod faultproxy;
//! use faultproxy::{FaultProxy, FaultRates};
//!
//! let proxy = FaultProxy::start(&server.endpoint, FaultRates::issue(), 42);
//! // point the client at proxy.endpoint instead of server.endpoint …
//! assert!(proxy.counts().cut_body > 0);
//! ```
//!
//! - The client's endpoint IS the proxy: requests (path-style, SigV4-signed)
//!   are forwarded byte for byte, so the signed `Host` header is the proxy's
//!   address and the server (Garage checks signatures, moto does not)
//!   verifies exactly what the client signed. Answers are relayed byte for
//!   byte too, with their own framing (Content-Length or chunked), so
//!   keep-alive connections work as they would without the proxy. Each
//!   request is relayed over a new upstream connection.
//! - Faults are decided per request, in arrival order, from `seed`: the
//!   N-th request always meets the same fault (which request is N-th
//!   depends on the client's concurrency).
//!   - `slow_down`: answer `503 SlowDown` with S3's XML error body; the
//!     request is read but never forwarded.
//!   - `reset`: read the request, forward nothing, reset the connection
//!     (TCP RST) before any answer.
//!   - `cut_body`: a GET answered 2xx with a body (an object, or a listing
//!     unless `cut_listings` is false): forward the head with its full
//!     Content-Length, then only part of the body (0–90 %), then close the
//!     connection. Other requests drawn for this fault pass unharmed (and
//!     are not counted).
//!   - `delay` (not a fault): every request waits this long before it is
//!     answered or forwarded, as over a long round trip
//!     (`examples/latency_proxy.rs`, `scripts/bench-restore-latency.sh`).
//!   - `reset_after`: forward the request, read the server's whole answer,
//!     then reset the client's connection instead of relaying it: the
//!     request took effect, its answer is lost (a PUT stored, the client
//!     retries it). `lost_answer_paths` limits it to some writes (PUT,
//!     POST), and `lost_answer_once` to the first answer per kind of
//!     request on a path, so that the client's retry gets the server's
//!     real answer to a repeated request.
//!     Other requests drawn for this fault pass unharmed (not counted).
//!   - `conflict_first_put`: the first PutObject of each object under one
//!     of these paths is answered `409 ConditionalRequestConflict` (what S3
//!     says while another conditional write of that name is in progress)
//!     and not forwarded: the object is not stored. Later PUTs of that
//!     object pass. Independent of the rates above.
//! - [`FaultProxy::counts`] tells how many faults were really injected.
//! - Stopped on drop (connections still open end on their own when the
//!   client or the server closes them).
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A connection that says nothing for this long is dropped.
const IDLE: Duration = Duration::from_secs(120);
const MAX_HEAD: usize = 64 * 1024;

/// Probabilities (0.0–1.0) of each fault, per request.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultRates {
    pub slow_down: f64,
    pub reset: f64,
    pub cut_body: f64,
    /// Whether bodies of listings (GETs of a bucket, not of an object:
    /// ListObjectsV2, ListMultipartUploads) may be cut too, or only object
    /// bodies.
    pub cut_listings: bool,
    /// Cut no more bodies after this many (`None`: no limit).
    pub cut_limit: Option<u64>,
    /// Cut only bodies of GETs whose path (`/bucket/key`, no query)
    /// starts with one of these (`None`: any).
    pub cut_paths: Option<&'static [&'static str]>,
    /// Cut only bodies of at least this many bytes (a test about large
    /// reads leaves the small ones, e.g. list tree nodes, alone).
    pub cut_min_len: Option<u64>,
    /// Reset the connection after the server answered (the answer is lost).
    pub reset_after: f64,
    /// `reset_after` only for writes (PUT: PutObject, UploadPart; POST:
    /// Create/CompleteMultipartUpload) whose path (`/bucket/key`, no
    /// query) starts with one of these; `None`: any request.
    pub lost_answer_paths: Option<&'static [&'static str]>,
    /// `reset_after` at most once per kind of request on a path (method,
    /// path and the names of the query's parameters: a multipart upload
    /// loses its create's, its first part's and its complete's answers).
    pub lost_answer_once: bool,
    /// Answer the first PutObject (PUT without `uploadId`) of each object
    /// whose path starts with one of these `409 ConditionalRequestConflict`,
    /// without forwarding it.
    pub conflict_first_put: Option<&'static [&'static str]>,
    /// Hold every request this long before it is answered or forwarded:
    /// the round trip of a distant store (benchmarks, not tests).
    pub delay: Duration,
}

impl FaultRates {
    /// No faults: a plain relay.
    pub const NONE: FaultRates = FaultRates {
        slow_down: 0.0,
        reset: 0.0,
        cut_body: 0.0,
        cut_listings: true,
        cut_limit: None,
        cut_paths: None,
        cut_min_len: None,
        reset_after: 0.0,
        lost_answer_paths: None,
        lost_answer_once: false,
        conflict_first_put: None,
        delay: Duration::ZERO,
    };

    /// No faults, only `delay` added to every request (a store far away).
    pub fn latency(delay: Duration) -> FaultRates {
        FaultRates {
            delay,
            ..FaultRates::NONE
        }
    }

    /// The rates of issue 8: 5 % `503 SlowDown`, 3 % resets before the
    /// answer, 3 % GET bodies cut short. No answers lost after the fact
    /// (`reset_after`): the tests that want them say so.
    pub fn issue() -> FaultRates {
        FaultRates {
            slow_down: 0.05,
            reset: 0.03,
            cut_body: 0.03,
            ..FaultRates::NONE
        }
    }

    /// The first answer to each kind of write (PUT, POST) under one of
    /// `paths` (`/bucket/prefix`) is lost after the server executed it;
    /// nothing else is harmed.
    pub fn lose_first_write_answer(paths: &'static [&'static str]) -> FaultRates {
        FaultRates {
            reset_after: 1.0,
            lost_answer_paths: Some(paths),
            lost_answer_once: true,
            ..FaultRates::NONE
        }
    }

    /// The first PutObject of each object under one of `paths` is answered
    /// `409 ConditionalRequestConflict` (not forwarded); nothing else is
    /// harmed.
    pub fn conflict_on_first_put(paths: &'static [&'static str]) -> FaultRates {
        FaultRates {
            conflict_first_put: Some(paths),
            ..FaultRates::NONE
        }
    }

    /// Every object body (GetObject) with at least one byte is cut
    /// short; listings pass (the SDK retries a listing cut short as a
    /// whole, so cutting every one would only stop the run earlier).
    pub fn cut_every_body() -> FaultRates {
        FaultRates {
            cut_body: 1.0,
            cut_listings: false,
            ..FaultRates::NONE
        }
    }
}

/// What the proxy saw and did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Requests received.
    pub requests: u64,
    /// Requests received that were GETs.
    pub gets: u64,
    /// Requests forwarded to the server.
    pub forwarded: u64,
    pub slow_down: u64,
    pub reset: u64,
    pub cut_body: u64,
    /// Answers read from the server and not relayed (connection reset).
    pub reset_after: u64,
    /// PUTs answered `409 ConditionalRequestConflict`.
    pub conflict: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    gets: AtomicU64,
    forwarded: AtomicU64,
    slow_down: AtomicU64,
    reset: AtomicU64,
    cut_body: AtomicU64,
    reset_after: AtomicU64,
    conflict: AtomicU64,
}

/// Called (on the proxy's thread) with the request path after a body was
/// cut and before the client sees the connection close: lets a test change
/// the object between the cut and the client's resumption.
pub type OnCut = Box<dyn Fn(&str) + Send + Sync>;

struct Shared {
    upstream: SocketAddr,
    rates: FaultRates,
    seed: u64,
    stop: AtomicBool,
    counters: Counters,
    on_cut: Option<OnCut>,
    /// Paths whose answer was already lost (`lost_answer_once`).
    lost: Mutex<HashSet<String>>,
    /// Paths whose first PUT was already answered 409.
    conflicted: Mutex<HashSet<String>>,
}

pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`, no trailing slash: use it as the client's
    /// S3 endpoint.
    pub endpoint: String,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    SlowDown,
    Reset,
    /// Cut after this fraction of the body.
    Cut(f64),
    /// Forward, read the answer, reset instead of relaying it.
    ResetAfter,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

impl Shared {
    /// The fault for the `n`-th request: a pure function of seed and `n`.
    fn fault(&self, n: u64) -> Fault {
        let a = splitmix(self.seed ^ splitmix(n));
        let r = unit(a);
        let FaultRates {
            slow_down,
            reset,
            cut_body,
            reset_after,
            ..
        } = self.rates;
        if r < slow_down {
            Fault::SlowDown
        } else if r < slow_down + reset {
            Fault::Reset
        } else if r < slow_down + reset + cut_body {
            Fault::Cut(unit(splitmix(a)) * 0.9)
        } else if r < slow_down + reset + cut_body + reset_after {
            Fault::ResetAfter
        } else {
            Fault::None
        }
    }
}

impl Shared {
    /// Whether this request is the first PutObject of an object under
    /// `conflict_first_put` (it is then answered 409).
    fn conflicts(&self, req: &Head) -> bool {
        let Some(paths) = self.rates.conflict_first_put else {
            return false;
        };
        let (path, query) = req.second.split_once('?').unwrap_or((&req.second, ""));
        req.first.eq_ignore_ascii_case("PUT")
            && !query.contains("uploadId")
            && paths.iter().any(|p| path.starts_with(p))
            && self.conflicted.lock().unwrap().insert(path.to_owned())
    }

    /// Whether a request drawn for `reset_after` loses its answer: a write
    /// under `lost_answer_paths` (when given), once per kind of request on
    /// a path when `lost_answer_once`.
    fn loses_answer(&self, req: &Head) -> bool {
        let (path, query) = req.second.split_once('?').unwrap_or((&req.second, ""));
        if let Some(paths) = self.rates.lost_answer_paths {
            let write = ["PUT", "POST"]
                .iter()
                .any(|m| req.first.eq_ignore_ascii_case(m));
            if !write || !paths.iter().any(|p| path.starts_with(p)) {
                return false;
            }
        }
        let params: Vec<&str> = query
            .split('&')
            .map(|kv| kv.split('=').next().unwrap_or(""))
            .collect();
        !self.rates.lost_answer_once
            || self.lost.lock().unwrap().insert(format!(
                "{} {path}?{}",
                req.first,
                params.join("&")
            ))
    }
}

/// `default`, or `USDCOP_DR_FAULT_SEED` when set: to replay a failure, or to
/// try other fault sequences (`USDCOP_DR_FAULT_SEED=7 cargo test …`).
pub fn seed(default: u64) -> u64 {
    std::env::var("USDCOP_DR_FAULT_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

impl FaultProxy {
    /// A proxy on a free loopback port relaying to `upstream`
    /// (`http://127.0.0.1:PORT`), injecting faults at `rates`, decided
    /// from `seed`.
    pub fn start(upstream: &str, rates: FaultRates, seed: u64) -> FaultProxy {
        Self::start_with(upstream, rates, seed, None)
    }

    /// As [`FaultProxy::start`], calling `on_cut` after each body cut.
    pub fn start_with(
        upstream: &str,
        rates: FaultRates,
        seed: u64,
        on_cut: Option<OnCut>,
    ) -> FaultProxy {
        eprintln!("fault proxy in front of {upstream}: {rates:?}, seed {seed}");
        let hostport = upstream
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("the fault proxy relays plain http://, not {upstream}"))
            .trim_end_matches('/');
        let upstream_addr = hostport
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| panic!("cannot resolve the upstream {upstream}"));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream: upstream_addr,
            rates,
            seed,
            stop: AtomicBool::new(false),
            counters: Counters::default(),
            on_cut,
            lost: Mutex::new(HashSet::new()),
            conflicted: Mutex::new(HashSet::new()),
        });
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name("faultproxy-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let s = s.clone();
                    let _ = std::thread::Builder::new()
                        .name("faultproxy-conn".into())
                        .spawn(move || {
                            let _ = serve(&s, conn);
                        });
                }
            })
            .expect("spawn the proxy thread");
        FaultProxy {
            endpoint: format!("http://{addr}"),
            addr,
            shared,
            accept: Some(accept),
        }
    }

    pub fn counts(&self) -> FaultCounts {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::SeqCst);
        FaultCounts {
            requests: l(&c.requests),
            gets: l(&c.gets),
            forwarded: l(&c.forwarded),
            slow_down: l(&c.slow_down),
            reset: l(&c.reset),
            cut_body: l(&c.cut_body),
            reset_after: l(&c.reset_after),
            conflict: l(&c.conflict),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// A request or response head, as received (forwarded unchanged) and parsed.
struct Head {
    raw: Vec<u8>,
    /// Request: method, target. Response: version, status code.
    first: String,
    second: String,
    /// Lower-case names.
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.header(name)
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }
    fn content_length(&self) -> Option<u64> {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
    }
    fn chunked(&self) -> bool {
        self.has_token("transfer-encoding", "chunked")
    }
}

/// Read one head; `None` on a clean end of stream before its first byte.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut raw = Vec::new();
    loop {
        let before = raw.len();
        let n = r.read_until(b'\n', &mut raw)?;
        if n == 0 {
            if raw.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "head cut short",
            ));
        }
        // Blank line: end of the head (tolerate stray CRLF before a request).
        if &raw[before..] == b"\r\n" || &raw[before..] == b"\n" {
            if before == 0 {
                raw.clear();
                continue;
            }
            break;
        }
        if raw.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.lines();
    let mut first_line = lines.next().unwrap_or("").split_whitespace();
    let first = first_line.next().unwrap_or("").to_owned();
    let second = first_line.next().unwrap_or("").to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Some(Head {
        raw,
        first,
        second,
        headers,
    }))
}

/// Copy exactly `n` bytes.
fn copy_exact(r: &mut impl Read, w: &mut impl Write, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n), w)?;
    if copied < n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("body ended after {copied} of {n} bytes"),
        ));
    }
    Ok(())
}

/// Relay a chunked body as is (sizes, data, trailers).
fn copy_chunked(r: &mut impl BufRead, w: &mut impl Write) -> io::Result<()> {
    loop {
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line)?;
        w.write_all(&line)?;
        let text = String::from_utf8_lossy(&line);
        let size = text.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers, up to a blank line.
            loop {
                let mut t = Vec::new();
                if r.read_until(b'\n', &mut t)? == 0 {
                    return Ok(());
                }
                w.write_all(&t)?;
                if t == b"\r\n" || t == b"\n" {
                    return Ok(());
                }
            }
        }
        copy_exact(r, w, size + 2)?;
    }
}

/// How a message's body is delimited.
enum Body {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

fn request_body(h: &Head) -> Body {
    if h.chunked() {
        Body::Chunked
    } else {
        match h.content_length() {
            Some(n) if n > 0 => Body::Length(n),
            _ => Body::Empty,
        }
    }
}

fn response_body(req: &Head, resp: &Head) -> Body {
    let status: u16 = resp.second.parse().unwrap_or(0);
    if req.first.eq_ignore_ascii_case("HEAD") || status / 100 == 1 || status == 204 || status == 304
    {
        Body::Empty
    } else if resp.chunked() {
        Body::Chunked
    } else {
        match resp.content_length() {
            Some(0) => Body::Empty,
            Some(n) => Body::Length(n),
            None => Body::UntilClose,
        }
    }
}

fn relay_body(body: &Body, r: &mut impl BufRead, w: &mut impl Write) -> io::Result<()> {
    match body {
        Body::Empty => Ok(()),
        Body::Length(n) => copy_exact(r, w, *n),
        Body::Chunked => copy_chunked(r, w),
        Body::UntilClose => io::copy(r, w).map(|_| ()),
    }
}

/// A GET of a bucket (`/bucket?list-type=2…`), not of an object
/// (`/bucket/key?x-id=GetObject`): path-style addressing.
fn is_listing(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or("");
    !path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .contains('/')
}

/// Close with a TCP RST instead of a FIN (SO_LINGER with a zero timeout),
/// as a crashed or overloaded middlebox does.
fn reset(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream);
}

fn slow_down(req: &Head, n: u64) -> Vec<u8> {
    s3_error(
        req,
        n,
        "503 Slow Down",
        "SlowDown",
        "Please reduce your request rate.",
    )
}

fn conflict(req: &Head, n: u64) -> Vec<u8> {
    s3_error(
        req,
        n,
        "409 Conflict",
        "ConditionalRequestConflict",
        "A conflicting conditional operation is currently in progress against this resource. \
         Please try again.",
    )
}

/// An S3 error answer: `status` ("503 Slow Down"), XML body with `code`.
fn s3_error(req: &Head, n: u64, status: &str, code: &str, message: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><Resource>{}</Resource>\
         <RequestId>faultproxy-{n}</RequestId></Error>",
        req.second.split('?').next().unwrap_or("")
    );
    let head_only = req.first.eq_ignore_ascii_case("HEAD");
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/xml\r\n\
         x-amz-request-id: faultproxy-{n}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// One client connection: requests one after another (keep-alive), each
/// either answered with a fault or relayed to the server.
fn serve(s: &Shared, client: TcpStream) -> io::Result<()> {
    client.set_read_timeout(Some(IDLE))?;
    client.set_nodelay(true)?;
    let mut from_client = BufReader::with_capacity(64 * 1024, client.try_clone()?);
    let mut to_client = client;
    loop {
        let Some(req) = read_head(&mut from_client)? else {
            return Ok(());
        };
        if s.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let n = s.counters.requests.fetch_add(1, Ordering::SeqCst);
        let is_get = req.first.eq_ignore_ascii_case("GET");
        if is_get {
            s.counters.gets.fetch_add(1, Ordering::SeqCst);
        }
        let fault = s.fault(n);
        if !s.rates.delay.is_zero() {
            std::thread::sleep(s.rates.delay);
        }
        let req_body = request_body(&req);
        let client_closes = req.has_token("connection", "close");
        if s.conflicts(&req) {
            if req.has_token("expect", "100-continue") {
                to_client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            }
            relay_body(&req_body, &mut from_client, &mut io::sink())?;
            s.counters.conflict.fetch_add(1, Ordering::SeqCst);
            to_client.write_all(&conflict(&req, n))?;
            to_client.flush()?;
            if client_closes {
                return Ok(());
            }
            continue;
        }
        if matches!(fault, Fault::SlowDown | Fault::Reset) {
            if req.has_token("expect", "100-continue") {
                to_client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            }
            relay_body(&req_body, &mut from_client, &mut io::sink())?;
            if fault == Fault::Reset {
                s.counters.reset.fetch_add(1, Ordering::SeqCst);
                drop(from_client);
                reset(to_client);
                return Ok(());
            }
            s.counters.slow_down.fetch_add(1, Ordering::SeqCst);
            to_client.write_all(&slow_down(&req, n))?;
            to_client.flush()?;
            if client_closes {
                return Ok(());
            }
            continue;
        }

        // A fresh upstream connection per request: a server closing an
        // idle keep-alive connection must not look like an injected fault.
        let up = TcpStream::connect_timeout(&s.upstream, Duration::from_secs(5))?;
        up.set_read_timeout(Some(IDLE))?;
        up.set_nodelay(true)?;
        let mut from_up = BufReader::with_capacity(64 * 1024, up.try_clone()?);
        let mut to_up = up;
        s.counters.forwarded.fetch_add(1, Ordering::SeqCst);
        to_up.write_all(&req.raw)?;
        relay_body(&req_body, &mut from_client, &mut to_up)?;
        to_up.flush()?;

        // Interim answers (100 Continue) go to the client as they come.
        let resp = loop {
            let Some(resp) = read_head(&mut from_up)? else {
                // The server closed without answering: so does the proxy.
                return Ok(());
            };
            let interim = resp.second.starts_with('1') && resp.second != "101";
            if !interim {
                break resp;
            }
            to_client.write_all(&resp.raw)?;
        };
        let body = response_body(&req, &resp);
        if fault == Fault::ResetAfter && s.loses_answer(&req) {
            // The server has executed the request: read its whole answer
            // (so it is done with it), then lose it.
            relay_body(&body, &mut from_up, &mut io::sink())?;
            s.counters.reset_after.fetch_add(1, Ordering::SeqCst);
            drop(from_client);
            reset(to_client);
            return Ok(());
        }
        to_client.write_all(&resp.raw)?;
        let status: u16 = resp.second.parse().unwrap_or(0);
        let cuttable = is_get
            && (200..300).contains(&status)
            && (s.rates.cut_listings || !is_listing(&req.second))
            && s.rates.cut_paths.is_none_or(|paths| {
                let path = req.second.split('?').next().unwrap_or("");
                paths.iter().any(|p| path.starts_with(p))
            })
            && s.rates
                .cut_limit
                .is_none_or(|limit| s.counters.cut_body.load(Ordering::SeqCst) < limit);
        let long_enough = match &body {
            Body::Length(len) => s.rates.cut_min_len.is_none_or(|min| *len >= min),
            _ => true,
        };
        if let (Fault::Cut(fraction), true, Body::Length(len)) =
            (fault, cuttable && long_enough, &body)
        {
            let keep = (*len as f64 * fraction) as u64;
            copy_exact(&mut from_up, &mut to_client, keep)?;
            to_client.flush()?;
            s.counters.cut_body.fetch_add(1, Ordering::SeqCst);
            if let Some(f) = &s.on_cut {
                f(&req.second);
            }
            let _ = to_client.shutdown(Shutdown::Both);
            return Ok(());
        }
        relay_body(&body, &mut from_up, &mut to_client)?;
        to_client.flush()?;
        // The client was told what the server said: if it closes, so do we.
        let closes = resp.has_token("connection", "close")
            || resp.first.eq_ignore_ascii_case("HTTP/1.0")
            || matches!(body, Body::UntilClose);
        if closes || client_closes {
            return Ok(());
        }
    }
}
