//! Real S3-compatible servers on loopback for integration tests: moto's S3
//! server and a single-node Garage, each started in its own temporary
//! directory on its own free ports, and killed (directory removed) on drop.
//!
//! Include it from an integration test with
//!
//! ```ignore
//! #[path = "common/servers.rs"]
//! mod servers;
//! use servers::{S3Server, ServerKind};
//! ```
//!
//! The servers are installed by `scripts/install-test-deps.sh` under
//! [`tools_dir`]. Every test may start its own servers; they can run in
//! parallel. A server kept in a `static` is never dropped, so its process
//! outlives the test binary: prefer one server per test (moto starts in about
//! a second, Garage in well under one).
//!
//! This module needs no S3 SDK: the few requests it makes itself
//! (ListBuckets to see a server is up, CreateBucket) are signed here with
//! AWS Signature Version 4 over plain HTTP/1.1.
#![allow(dead_code)]

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long `start` waits for a server to answer a signed ListBuckets.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `create_bucket` retries while a fresh server is not yet able to.
const CREATE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServerKind {
    /// moto's S3 server (Python). Honours `If-None-Match: *` on PutObject.
    Moto,
    /// Garage 2.5, single node. Ignores `If-None-Match: *` (overwrites).
    Garage,
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerKind::Moto => "moto",
            ServerKind::Garage => "garage",
        })
    }
}

/// A running server. Requests must use path-style addressing
/// (`http://127.0.0.1:PORT/bucket/key`): neither server is set up for
/// virtual-hosted buckets.
pub struct S3Server {
    pub kind: ServerKind,
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    port: u16,
    child: Child,
    log: PathBuf,
    config: Option<PathBuf>,
    dir: tempfile::TempDir,
}

/// An HTTP answer: (status, headers with lower-case names, body).
pub type Response = (u16, Vec<(String, String)>, Vec<u8>);

/// Where `scripts/install-test-deps.sh` puts the servers:
/// `$USDCOP_DR_TOOLS`, or `/opt/usdcop-dr-tools`.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("USDCOP_DR_TOOLS") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from("/opt/usdcop-dr-tools"),
    }
}

/// The moto virtualenv's Python (it has boto3, which moto depends on).
pub fn venv_python() -> PathBuf {
    tools_dir().join("moto-venv/bin/python")
}

fn binary(kind: ServerKind) -> PathBuf {
    match kind {
        ServerKind::Moto => tools_dir().join("moto-venv/bin/moto_server"),
        ServerKind::Garage => tools_dir().join("bin/garage"),
    }
}

/// A loopback port that was free a moment ago. Another process may take it
/// before the server binds it: `start` retries with new ports if so.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind a loopback port")
}

fn read_log(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    // The tail is what tells why it stopped.
    const MAX: usize = 8000;
    if s.len() > MAX {
        let mut cut = s.len() - MAX;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s = format!("[... log cut ...]\n{}", &s[cut..]);
    }
    s
}

impl S3Server {
    /// Starts a server of `kind` on a free loopback port and waits until it
    /// answers a signed ListBuckets with these credentials. Panics, with the
    /// server's log, if it cannot.
    pub fn start(kind: ServerKind) -> S3Server {
        let bin = binary(kind);
        if !bin.exists() {
            panic!(
                "{kind} server not installed: {} is missing; run scripts/install-test-deps.sh \
                 (or set USDCOP_DR_TOOLS to where it installed them)",
                bin.display()
            );
        }
        let mut last_err = String::new();
        for _attempt in 0..3 {
            match Self::try_start(kind, &bin) {
                Ok(s) => return s,
                Err((msg, port_clash)) => {
                    if !port_clash {
                        panic!("{msg}");
                    }
                    last_err = msg;
                }
            }
        }
        panic!("{last_err}")
    }

    /// Err((message, whether a port was taken by someone else)).
    fn try_start(kind: ServerKind, bin: &Path) -> Result<S3Server, (String, bool)> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("usdcop-dr-{kind}-"))
            .tempdir()
            .expect("cannot create a temporary directory");
        let port = free_port();
        let log = dir.path().join("server.log");
        let log_file = File::create(&log).expect("cannot create the server log");
        let log_err = log_file.try_clone().expect("cannot clone a file handle");

        let (mut cmd, access_key, secret_key, region, config) = match kind {
            ServerKind::Moto => {
                let mut cmd = Command::new(bin);
                cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .env("NO_COLOR", "1");
                // moto checks no signature: any key pair is accepted.
                (
                    cmd,
                    "usdcop-test-key".to_string(),
                    "usdcop-test-secret".to_string(),
                    "us-east-1".to_string(),
                    None,
                )
            }
            ServerKind::Garage => {
                let rpc_port = free_port();
                // Fresh keys for each server, so that a request can only
                // succeed against the server it was meant for.
                let seed = unique_seed(port);
                let access_key =
                    format!("GK{}", &hex(&sha256(&[&seed[..], b"key"].concat()))[..24]);
                let secret_key = hex(&sha256(&[&seed[..], b"secret"].concat()));
                let rpc_secret = hex(&sha256(&[&seed[..], b"rpc"].concat()));
                let config = dir.path().join("garage.toml");
                let toml = format!(
                    r#"metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{port}"
root_domain = ".s3.garage.localhost"
"#,
                    dir = dir.path().display(),
                );
                std::fs::write(&config, toml).expect("cannot write garage.toml");
                let mut cmd = Command::new(bin);
                cmd.arg("-c")
                    .arg(&config)
                    .args(["server", "--single-node", "--default-access-key"])
                    .env("GARAGE_DEFAULT_ACCESS_KEY", &access_key)
                    .env("GARAGE_DEFAULT_SECRET_KEY", &secret_key)
                    .env("RUST_LOG", "garage=info")
                    .env("NO_COLOR", "1");
                (
                    cmd,
                    access_key,
                    secret_key,
                    "garage".to_string(),
                    Some(config),
                )
            }
        };
        let child = cmd
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));

        let mut server = S3Server {
            kind,
            endpoint: format!("http://127.0.0.1:{port}"),
            access_key,
            secret_key,
            region,
            port,
            child,
            log,
            config,
            dir,
        };
        let started = Instant::now();
        let mut last: String;
        loop {
            let exited = server.child.try_wait().ok().flatten();
            let log = read_log(&server.log);
            // A port taken meanwhile by someone else: moto exits, Garage
            // logs it and may linger. Either way, try again on new ports.
            let clash = log.contains("Address already in use") || log.contains("AddrInUse");
            if exited.is_some() || clash {
                let what = match exited {
                    Some(status) => format!("exited during start-up ({status})"),
                    None => "could not bind its ports".to_string(),
                };
                return Err((
                    format!("{kind} server {what} on port {port}; its log:\n{log}"),
                    clash,
                ));
            }
            match server.request_timeout("GET", "/", &[], b"", Duration::from_secs(2)) {
                // moto checks no signature, so make sure the answer is from
                // our moto and not another server that took the port.
                Ok((200, _, _))
                    if kind != ServerKind::Moto || log.contains(&format!("127.0.0.1:{port}")) =>
                {
                    return Ok(server)
                }
                Ok((200, _, _)) => last = "HTTP 200, but moto has not said it listens".into(),
                Ok((code, _, body)) => {
                    last = format!("HTTP {code}: {}", String::from_utf8_lossy(&body))
                }
                Err(e) => last = e,
            }
            if started.elapsed() > START_TIMEOUT {
                // Drop kills it.
                return Err((
                    format!(
                        "{kind} server on port {port} did not answer a signed ListBuckets within \
                         {START_TIMEOUT:?} (last: {last}); its log:\n{}",
                        read_log(&server.log)
                    ),
                    false,
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates `name`, readable and writable with `access_key`.
    /// Panics if the server refuses.
    pub fn create_bucket(&self, name: &str) {
        // Garage's default key may create buckets and owns what it creates;
        // moto checks nothing. A just-started Garage may briefly answer
        // 5xx while its layout settles: retry those.
        let started = Instant::now();
        loop {
            let r = self.request("PUT", &format!("/{name}"), &[], b"");
            match r {
                Ok((200, _, _)) => return,
                Ok((code, _, body)) if code < 500 => panic!(
                    "{} refused CreateBucket {name}: HTTP {code}: {}",
                    self.kind,
                    String::from_utf8_lossy(&body)
                ),
                other => {
                    if started.elapsed() > CREATE_TIMEOUT {
                        panic!(
                            "{} could not create bucket {name} within {CREATE_TIMEOUT:?} \
                             (last: {other:?}); its log:\n{}",
                            self.kind,
                            read_log(&self.log)
                        );
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The environment for a child process that talks to this server
    /// through an AWS SDK: credentials, region and endpoint. (Clients must
    /// use path-style addressing.)
    /// Run `tests/data/s3_bucket_tool.py COMMAND ENDPOINT ARGS…` against
    /// this server (boto3, the moto venv's Python); returns its JSON answer.
    pub fn bucket_tool(&self, args: &[&str]) -> serde_json::Value {
        let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/s3_bucket_tool.py");
        let out = Command::new(venv_python())
            .envs(self.env())
            .arg(tool)
            .arg(args[0])
            .arg(&self.endpoint)
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .expect("run the bucket fixture tool");
        assert!(
            out.status.success(),
            "fixture tool {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("the fixture tool answers JSON")
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_REGION".into(), self.region.clone()),
            ("AWS_DEFAULT_REGION".into(), self.region.clone()),
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
        ]
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's own stdout and stderr so far (its tail), for messages.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Garage's config file, for `garage -c CONFIG ...` admin commands.
    pub fn garage_config(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// The server's private temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Is the server process still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A signed S3 request over HTTP/1.1: `path` is absolute and already
    /// URI-encoded (no query string); `headers` are added and signed.
    /// Returns (status, headers, body).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, String> {
        self.request_timeout(method, path, headers, body, Duration::from_secs(10))
    }

    fn request_timeout(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<Response, String> {
        let host = format!("127.0.0.1:{}", self.port);
        let (date, amz_date) = amz_now();
        let payload_hash = hex(&sha256(body));
        let mut signed: Vec<(String, String)> = vec![
            ("host".into(), host.clone()),
            ("x-amz-content-sha256".into(), payload_hash.clone()),
            ("x-amz-date".into(), amz_date.clone()),
        ];
        for (k, v) in headers {
            signed.push((k.to_ascii_lowercase(), v.trim().to_string()));
        }
        signed.sort();
        let canonical_headers: String = signed.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let signed_names = signed
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let canonical_request =
            format!("{method}\n{path}\n\n{canonical_headers}\n{signed_names}\n{payload_hash}");
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex(&sha256(canonical_request.as_bytes()))
        );
        let mut key = hmac(
            format!("AWS4{}", self.secret_key).as_bytes(),
            date.as_bytes(),
        );
        for part in [self.region.as_str(), "s3", "aws4_request"] {
            key = hmac(&key, part.as_bytes());
        }
        let signature = hex(&hmac(&key, string_to_sign.as_bytes()));
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_names}, Signature={signature}",
            self.access_key
        );

        let mut req = format!("{method} {path} HTTP/1.1\r\n");
        for (k, v) in &signed {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!(
            "authorization: {auth}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        ));
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_read_timeout(Some(timeout)).ok();
        stream.set_write_timeout(Some(timeout)).ok();
        stream
            .write_all(req.as_bytes())
            .and_then(|_| stream.write_all(body))
            .map_err(|e| format!("send to {addr}: {e}"))?;
        let mut resp = Vec::new();
        stream
            .read_to_end(&mut resp)
            .map_err(|e| format!("read from {addr}: {e}"))?;
        parse_response(&resp)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `dir` (a TempDir) removes itself after this.
    }
}

fn parse_response(resp: &[u8]) -> Result<Response, String> {
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("incomplete HTTP response ({} bytes)", resp.len()))?;
    let head = String::from_utf8_lossy(&resp[..split]);
    let mut body = resp[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad HTTP status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Ok((code, headers, body))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunked body")?;
        let size_str = String::from_utf8_lossy(&data[..eol]);
        let size_str = size_str.split(';').next().unwrap_or("").trim().to_string();
        let size = usize::from_str_radix(&size_str, 16)
            .map_err(|_| format!("bad chunk size {size_str:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
}

// ---- SigV4 helpers ------------------------------------------------------

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&sha256(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    inner.extend_from_slice(msg);
    let mut outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    outer.extend_from_slice(&sha256(&inner));
    sha256(&outer).to_vec()
}

fn unique_seed(port: u16) -> Vec<u8> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{port}-{nanos}", std::process::id()).into_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// ("YYYYMMDD", "YYYYMMDDTHHMMSSZ") for now, in UTC.
fn amz_now() -> (String, String) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock before 1970")
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    let date = format!("{y:04}{m:02}{d:02}");
    let time = format!("{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
    (date.clone(), format!("{date}T{time}Z"))
}
