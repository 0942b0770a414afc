//! Connection strings: parsed once, the secrets split off and kept apart.
//!
//! A DSN is either a URL (`postgresql://user:pw@host:5432/db?sslmode=…`) or
//! libpq key/value pairs (`host=… dbname=… password=…`). The secrets
//! ([`SECRET_KEYS`]: `password`, `sslpassword`) never travel with the rest:
//! `pg_dump`/`pg_restore` get the DSN without them on their command line
//! and the password in `PGPASSWORD`; snapshots, logs and error messages
//! only ever see [`Dsn::redacted`]. Where no password is given, libpq's own
//! sources are honoured: `PGPASSWORD`, then the passfile (`PGPASSFILE`,
//! default `~/.pgpass`), looked up here too for our own connection.
//!
//! What the DSN leaves out is filled the way libpq does, so that one DSN
//! reaches the same server as the same user from usdcop-dr and from
//! `pg_dump`: host from `PGHOST`, else the default Unix socket directory
//! (`/var/run/postgresql` where it exists, as Debian's libpq is built;
//! else `/tmp`, upstream's); user from `PGUSER`, else the name of the OS
//! user we run as (peer authentication maps it to the role of that name).
//! A host starting with `/` is a socket directory, with `@` an abstract
//! socket (Linux), as for libpq.

use std::path::PathBuf;
use std::str::FromStr;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// A parsed DSN. `Debug` never shows the password.
#[derive(Clone)]
pub struct Dsn {
    /// The DSN as given, minus its password (safe for argv and logs).
    without_password: String,
    /// What tokio-postgres is given: also without the TLS settings, which
    /// are ours to interpret ([`super::tls`]).
    config_text: String,
    pub ssl: super::tls::SslSettings,
    password: Option<Zeroizing<String>>,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
}

impl std::fmt::Debug for Dsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dsn")
            .field("dsn", &self.without_password)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Dsn {
    /// Parse `dsn`, filling what it leaves out from libpq's environment
    /// (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`, passfile).
    pub fn parse(dsn: &str) -> Result<Dsn> {
        Self::parse_with(dsn, &|k| std::env::var(k).ok())
    }

    /// [`Dsn::parse`] with an explicit environment (tests).
    pub fn parse_with(dsn: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Dsn> {
        let dsn = dsn.trim();
        // A bare word is a database name, as for libpq's tools.
        let bare;
        let dsn = if !dsn.is_empty() && !dsn.contains('=') && !dsn.contains("://") {
            bare = format!("dbname={}", quote_kv(dsn));
            bare.as_str()
        } else {
            dsn
        };
        let (without_password, mut secrets) = split_params(dsn, SECRET_KEYS)?;
        let had_secret = !secrets.is_empty();
        let password = secrets.remove("password");
        // `sslpassword` unlocks an encrypted client key; client
        // certificates are refused below (tls.rs), so it is never needed
        // and is dropped here (as is PostgreSQL 18's `oauth_client_secret`,
        // OAuth being unsupported): never in argv, metadata or a child's
        // environment (libpq has no variable for either anyway).
        let dropped: Vec<Zeroizing<String>> = secrets.into_values().map(Zeroizing::new).collect();
        drop(dropped);
        let (config_text, ssl_params) = split_params(&without_password, super::tls::SSL_KEYS)?;
        let ssl = super::tls::SslSettings::from_params(&ssl_params, env)?;
        let config = tokio_postgres::Config::from_str(&config_text).map_err(|e| {
            // With a password in the DSN, a malformed remainder may hold
            // a fragment of it (an unquoted space): then only say why.
            if had_secret {
                Error::usage(format!("invalid PostgreSQL DSN: {e}"))
            } else {
                Error::usage(format!("invalid PostgreSQL DSN {without_password:?}: {e}"))
            }
            .with_hint(
                "a key=value DSN quotes values with spaces (password='a b'); a URL \
                 percent-encodes reserved characters (%40 for @, %2F for /)",
            )
        })?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => env("PGHOST")
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| default_socket_dir().to_owned()),
        };
        let port = match config.get_ports().first() {
            Some(p) => *p,
            None => match env("PGPORT").filter(|p| !p.is_empty()) {
                Some(p) => p
                    .parse()
                    .map_err(|_| Error::usage(format!("invalid PGPORT {p:?}")))?,
                None => 5432,
            },
        };
        // libpq: the DSN, PGUSER, then the OS user (not $USER).
        let user = config
            .get_user()
            .map(str::to_owned)
            .or_else(|| env("PGUSER").filter(|u| !u.is_empty()))
            .or_else(os_user_name)
            .unwrap_or_else(|| "postgres".into());
        let dbname = config
            .get_dbname()
            .map(str::to_owned)
            .or_else(|| env("PGDATABASE").filter(|d| !d.is_empty()))
            .unwrap_or_else(|| user.clone());
        let mut dsn = Dsn {
            without_password,
            config_text,
            ssl,
            password: password.map(Zeroizing::new),
            host,
            port,
            user,
            dbname,
        };
        if dsn.password.is_none() {
            dsn.password = env("PGPASSWORD").map(Zeroizing::new).or_else(|| {
                let file = env("PGPASSFILE")
                    .map(PathBuf::from)
                    .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".pgpass")))?;
                let text = Zeroizing::new(std::fs::read_to_string(file).ok()?);
                // libpq matches its default socket directory as
                // "localhost", any other socket directory as written.
                let host = if dsn.host == default_socket_dir() {
                    "localhost"
                } else {
                    dsn.host.as_str()
                };
                pgpass_lookup(&text, host, dsn.port, &dsn.dbname, &dsn.user).map(Zeroizing::new)
            });
        }
        Ok(dsn)
    }

    /// Whether the host is a Unix socket: a directory (`/…`) or an
    /// abstract socket name (`@…`), as libpq reads it. Never TLS there.
    pub fn is_socket(&self) -> bool {
        is_socket_host(&self.host)
    }

    /// Where we connect, for messages: `host:port`, or the socket file.
    pub fn endpoint(&self) -> String {
        if self.is_socket() {
            format!("Unix socket {}", self.socket_file())
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The socket file libpq connects to: `<dir>/.s.PGSQL.<port>`.
    pub fn socket_file(&self) -> String {
        format!("{}/.s.PGSQL.{}", self.host.trim_end_matches('/'), self.port)
    }

    /// Whether the DSN text itself carried a secret (`password`, or
    /// `sslpassword`), also when it is too malformed to parse: such a DSN
    /// is refused on the command line either way.
    pub fn had_inline_password(dsn: &str) -> bool {
        match split_params(dsn, SECRET_KEYS) {
            Ok((_, taken)) => !taken.is_empty(),
            Err(_) => looks_like_secret(dsn),
        }
    }

    /// The DSN without its secrets: for argv, logs and snapshots.
    pub fn redacted(&self) -> &str {
        &self.without_password
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_ref().map(|p| p.as_str())
    }

    /// The same server and credentials, another database.
    pub fn with_dbname(&self, dbname: &str) -> Result<Dsn> {
        let mut d = self.clone();
        d.without_password = format!(
            "host={} port={} user={} dbname={}",
            quote_kv(&self.host),
            self.port,
            quote_kv(&self.user),
            quote_kv(dbname)
        );
        // Keep the original's other settings that matter here (the TLS
        // settings travel in `ssl`).
        if let Ok(c) = tokio_postgres::Config::from_str(&self.config_text) {
            if let Some(app) = c.get_application_name() {
                d.without_password += &format!(" application_name={}", quote_kv(app));
            }
            if let Some(t) = c.get_connect_timeout() {
                d.without_password += &format!(" connect_timeout={}", t.as_secs().max(1));
            }
        }
        d.dbname = dbname.to_owned();
        d.config_text = d.without_password.clone();
        Ok(d)
    }

    /// A tokio-postgres configuration, password included.
    pub fn config(&self) -> tokio_postgres::Config {
        let mut c =
            tokio_postgres::Config::from_str(&self.config_text).expect("parsed in Dsn::parse");
        // libpq never negotiates TLS over a Unix socket, whatever sslmode
        // says (require and verify-* included: the kernel is the channel).
        c.ssl_mode(if self.is_socket() {
            tokio_postgres::config::SslMode::Disable
        } else {
            self.ssl.transport()
        });
        if c.get_hosts().is_empty() {
            if self.host.starts_with('/') {
                c.host_path(&self.host);
            } else {
                c.host(&self.host);
            }
        }
        if c.get_ports().is_empty() {
            c.port(self.port);
        }
        c.user(&self.user).dbname(&self.dbname);
        if c.get_connect_timeout().is_none() {
            c.connect_timeout(std::time::Duration::from_secs(15));
        }
        if c.get_application_name().is_none() {
            c.application_name("usdcop-dr");
        }
        if let Some(p) = self.password() {
            c.password(p);
        }
        c
    }

    /// The environment of a libpq child process (`pg_dump`, `pg_restore`,
    /// `psql`, or what `--pg-dump` names), built from `inherited` by an
    /// allow-list ([`CHILD_ENV`], `LC_*`): what the program needs to run
    /// and to reach the server as we did, and nothing else, so our own
    /// secrets (`USDCOP_DR_PASSWORD`, a DSN with password in
    /// `USDCOP_DR_PG_DSN`, `AWS_SECRET_ACCESS_KEY`, …) stay with us. The
    /// password goes in `PGPASSWORD` only when there is one; host, port,
    /// user and database are on the command line.
    pub fn child_env(
        &self,
        inherited: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    ) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        let mut env: Vec<_> = inherited
            .into_iter()
            .filter(|(k, _)| {
                k.to_str()
                    .is_some_and(|k| CHILD_ENV.contains(&k) || k.starts_with("LC_"))
            })
            .collect();
        if let Some(p) = self.password() {
            env.push(("PGPASSWORD".into(), p.into()));
        }
        env
    }
}

/// Settings that carry a secret (libpq's keywords marked as such, `*`
/// in its `dispchar`): never shown, never on a command line.
pub const SECRET_KEYS: &[&str] = &["password", "sslpassword", "oauth_client_secret"];

/// Variables a PostgreSQL client program may inherit (besides `LC_*`):
/// to run (`PATH`, `HOME` for `~/.postgresql/root.crt`, locale, time
/// zone, temporary directory) and libpq's settings that shape the session
/// or its TLS the way they shaped ours. Not the ones naming the server,
/// user, database or password (`PGHOST`, `PGPORT`, `PGUSER`,
/// `PGDATABASE`, `PGHOSTADDR`, `PGSERVICE`, `PGPASSFILE`): those were
/// resolved once, in [`Dsn::parse`], and are given explicitly.
pub const CHILD_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "PGTZ",
    "PGDATESTYLE",
    "PGOPTIONS",
    "PGAPPNAME",
    "PGCLIENTENCODING",
    "PGCONNECT_TIMEOUT",
    "PGSSLMODE",
    "PGREQUIRESSL",
    "PGSSLROOTCERT",
    "PGSSLCRL",
    "PGSSLCRLDIR",
    "PGSSLSNI",
    "PGSSLCOMPRESSION",
    "PGSSLMINPROTOCOLVERSION",
    "PGSSLMAXPROTOCOLVERSION",
    "PGGSSENCMODE",
    "PGKRBSRVNAME",
    "PGGSSLIB",
    "PGCHANNELBINDING",
    "PGREQUIREAUTH",
    "PGREQUIREPEER",
    "PGTARGETSESSIONATTRS",
    "PGLOCALEDIR",
];

/// libpq's default host: its Unix socket directory. Debian builds libpq
/// with `/var/run/postgresql`, upstream with `/tmp`; the one that exists
/// here is the one this machine's libpq uses.
pub fn default_socket_dir() -> &'static str {
    static DIR: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        if std::path::Path::new("/var/run/postgresql").is_dir() {
            "/var/run/postgresql"
        } else {
            "/tmp"
        }
    })
}

/// A socket directory (`/…`) or an abstract socket name (`@…`), as libpq
/// tells a socket from a host name.
pub fn is_socket_host(host: &str) -> bool {
    host.starts_with('/') || host.starts_with('@')
}

/// The name of the OS user we run as (`getpwuid(geteuid())`), libpq's
/// default user: a cron job of `postgres` connects as role `postgres`.
fn os_user_name() -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid out-parameter; getpwuid_r writes
    // only within `buf` (its length is passed) and sets `found` to `pwd`
    // or null; pw_name then points into `buf`, alive here.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        );
        if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr(pwd.pw_name)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// For a DSN too malformed to split: does its text look like it holds a
/// secret? (A URL with `user:…@`, or a `password` key.) Errs towards yes.
fn looks_like_secret(dsn: &str) -> bool {
    let dsn = dsn.trim();
    match dsn
        .strip_prefix("postgresql://")
        .or_else(|| dsn.strip_prefix("postgres://"))
    {
        Some(rest) => rest
            .rfind('@')
            .is_some_and(|at| rest[..at].contains(':') || rest[..at].contains("password")),
        None => dsn.contains("password"),
    }
}

fn quote_kv(v: &str) -> String {
    if !v.is_empty() && !v.contains([' ', '\'', '\\']) {
        return v.to_owned();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Split a DSN into (DSN without password, password). Works on the text, so
/// every other setting survives unchanged.
pub fn split_password(dsn: &str) -> Result<(String, Option<String>)> {
    let (rest, mut taken) = split_params(dsn, &["password"])?;
    Ok((rest, taken.remove("password")))
}

/// Remove the settings named in `keys` from a DSN's text (a URL's
/// userinfo password counts as `password`); returns the rest and what was
/// removed (last value wins, values decoded).
pub fn split_params(
    dsn: &str,
    keys: &[&str],
) -> Result<(String, std::collections::BTreeMap<String, String>)> {
    let mut taken = std::collections::BTreeMap::new();
    let dsn = dsn.trim();
    if let Some(rest) = dsn
        .strip_prefix("postgresql://")
        .map(|r| ("postgresql://", r))
        .or_else(|| dsn.strip_prefix("postgres://").map(|r| ("postgres://", r)))
    {
        let (scheme, rest) = rest;
        // The user info ends at an `@` found by meaning, not at the first
        // `/` or `?` (where libpq stops): a password with an unescaped
        // `/`, `?`, `@` or `#` (base64 has `/`) must still be recognised
        // as one, or it would be printed with the rest.
        let (userinfo, rest) = match userinfo_end(rest) {
            Some(at) => (Some(&rest[..at]), &rest[at..]),
            None => (None, rest),
        };
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (hostpart, tail) = rest.split_at(authority_end);
        let authority = match userinfo {
            Some(userinfo) => match userinfo.split_once(':') {
                Some((user, pw)) if keys.contains(&"password") => {
                    taken.insert("password".to_owned(), percent_decode(pw)?);
                    format!("{user}{hostpart}")
                }
                _ => format!("{userinfo}{hostpart}"),
            },
            None => hostpart.to_owned(),
        };
        // `?key=value` settings in the query string.
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (tail, None),
        };
        let mut out = format!("{scheme}{authority}{path}");
        if let Some(q) = query {
            let mut kept: Vec<&str> = vec![];
            for kv in q.split('&').filter(|kv| !kv.is_empty()) {
                match kv.split_once('=') {
                    Some((k, v)) if keys.contains(&k) => {
                        taken.insert(k.to_owned(), percent_decode(v)?);
                    }
                    _ => kept.push(kv),
                }
            }
            if !kept.is_empty() {
                out.push('?');
                out.push_str(&kept.join("&"));
            }
        }
        return Ok((out, taken));
    }
    // key=value pairs; values may be single-quoted with backslash escapes.
    let mut out: Vec<String> = vec![];
    // The last well-known key, to say where an error is without echoing.
    let mut prev: Option<String> = None;
    let mut chars = dsn.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            // Not echoed: after an unquoted password with a space, the
            // "key" is the rest of the password.
            return Err(Error::usage(format!(
                "invalid PostgreSQL DSN: expected `key=value` after {}",
                match &prev {
                    Some(k) => format!("the `{k}` setting"),
                    None => "its start".into(),
                }
            ))
            .with_hint("quote values with spaces: password='a b'"));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut raw = String::new();
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            raw.push(chars.next().unwrap());
            let mut closed = false;
            while let Some(c) = chars.next() {
                raw.push(c);
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            raw.push(n);
                            value.push(n);
                        }
                    }
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(Error::usage(
                    "invalid PostgreSQL DSN: unterminated quoted value",
                ));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        raw.push(c);
                        raw.push(n);
                        value.push(n);
                    }
                    continue;
                }
                raw.push(c);
                value.push(c);
            }
        }
        if keys.contains(&key.as_str()) {
            taken.insert(key.clone(), value);
        } else {
            out.push(format!("{key}={raw}"));
        }
        if LIBPQ_KEYWORDS.contains(&key.as_str()) {
            prev = Some(key);
        }
    }
    Ok((out.join(" "), taken))
}

/// In a URL's text after `scheme://`: the position of the `@` that ends
/// the user info, if any. The first `@` followed by a plausible
/// `hosts[/dbname][?key=value&…]` (host characters only, a dbname without
/// `/` or `@`, libpq keywords) is the one; failing that the last `@`, so
/// that a password is hidden rather than shown. An `@` inside a password
/// followed by text that looks like all that is read wrongly (as libpq
/// would): percent-encode it (`%40`).
fn userinfo_end(rest: &str) -> Option<usize> {
    let ats: Vec<usize> = rest.match_indices('@').map(|(i, _)| i).collect();
    ats.iter()
        .copied()
        .find(|&at| plausible_after_userinfo(&rest[at + 1..]))
        .or(ats.last().copied())
}

fn plausible_after_userinfo(t: &str) -> bool {
    let host_end = t.find(['/', '?']).unwrap_or(t.len());
    let hosts_ok = t[..host_end]
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~%:[],".contains(c));
    let t = &t[host_end..];
    let (path, query) = match t.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (t, None),
    };
    let path_ok = match path.strip_prefix('/') {
        Some(db) => !db.contains(['/', '@']),
        None => path.is_empty(),
    };
    let query_ok = query.is_none_or(|q| {
        q.split('&').filter(|kv| !kv.is_empty()).all(|kv| {
            kv.split_once('=')
                .is_some_and(|(k, _)| LIBPQ_KEYWORDS.contains(&k))
        })
    });
    hosts_ok && path_ok && query_ok
}

/// libpq's connection keywords (PostgreSQL 17).
const LIBPQ_KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "require_auth",
    "channel_binding",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "replication",
    "gssencmode",
    "sslmode",
    "sslnegotiation",
    "requiressl",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcertmode",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
    "oauth_issuer",
    "oauth_client_id",
    "oauth_client_secret",
    "oauth_scope",
];

fn percent_decode(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let h = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::usage("invalid %-escape in PostgreSQL DSN"))?;
            out.push(h);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::usage("PostgreSQL DSN password is not UTF-8"))
}

/// libpq's passfile: `host:port:database:user:password` lines, `*` matches
/// anything, `\:` and `\\` escape; the first matching line wins. `host`
/// is "localhost" for libpq's default socket directory (the caller's job).
pub fn pgpass_lookup(text: &str, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = vec![String::new()];
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        fields.last_mut().unwrap().push(n);
                    }
                }
                ':' if fields.len() < 5 => fields.push(String::new()),
                c => fields.last_mut().unwrap().push(c),
            }
        }
        if fields.len() != 5 {
            continue;
        }
        let want = [host, port.as_str(), db, user];
        if fields[..4]
            .iter()
            .zip(want)
            .all(|(f, w)| f == "*" || f == w)
        {
            return Some(fields[4].clone());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn url_password_is_split_off_and_the_rest_kept() {
        let (d, p) =
            split_password("postgresql://trader:s3cr%40t@db:5433/usdcop_trading?sslmode=disable")
                .unwrap();
        assert_eq!(
            d,
            "postgresql://trader@db:5433/usdcop_trading?sslmode=disable"
        );
        assert_eq!(p.as_deref(), Some("s3cr@t"));
        let (d, p) = split_password("postgres://u@h/db?password=x%20y&application_name=a").unwrap();
        assert_eq!(d, "postgres://u@h/db?application_name=a");
        assert_eq!(p.as_deref(), Some("x y"));
        let (d, p) = split_password("postgresql://h/db").unwrap();
        assert_eq!((d.as_str(), p), ("postgresql://h/db", None));
    }

    #[test]
    fn key_value_password_is_split_off_with_quotes_and_escapes() {
        let (d, p) = split_password("host=db  password='it\\'s a secret' dbname=x").unwrap();
        assert_eq!(d, "host=db dbname=x");
        assert_eq!(p.as_deref(), Some("it's a secret"));
        let (d, p) = split_password("host = db password=plain user=u").unwrap();
        assert_eq!(d, "host=db user=u");
        assert_eq!(p.as_deref(), Some("plain"));
        assert!(split_password("host=db password='open").is_err());
        assert!(split_password("host").is_err());
    }

    #[test]
    fn parse_fills_defaults_and_never_shows_the_password() {
        let d = Dsn::parse_with("postgresql://trader:pw@127.0.0.1:6000/usd", &no_env).unwrap();
        assert_eq!(
            (d.host.as_str(), d.port, d.user.as_str(), d.dbname.as_str()),
            ("127.0.0.1", 6000, "trader", "usd")
        );
        assert_eq!(d.password(), Some("pw"));
        assert!(!format!("{d:?}").contains("pw@"));
        assert!(!d.redacted().contains("pw"));
        let env = |k: &str| match k {
            "PGPASSWORD" => Some("from-env".to_string()),
            "PGPORT" => Some("7000".to_string()),
            _ => None,
        };
        let d = Dsn::parse_with("host=h user=u", &env).unwrap();
        assert_eq!((d.port, d.dbname.as_str()), (7000, "u"));
        assert_eq!(d.password(), Some("from-env"));
        let other = d.with_dbname("postgres").unwrap();
        assert_eq!(other.dbname, "postgres");
        assert_eq!(other.config().get_dbname(), Some("postgres"));
        assert_eq!(other.password(), Some("from-env"));
    }

    #[test]
    fn pgpass_matches_like_libpq() {
        let text = "# comment\n\
                    otherhost:*:*:*:nope\n\
                    db:5432:usd:trader:pa\\:ss\n\
                    *:*:*:trader:fallback\n";
        assert_eq!(
            pgpass_lookup(text, "db", 5432, "usd", "trader").as_deref(),
            Some("pa:ss")
        );
        assert_eq!(
            pgpass_lookup(text, "db", 5433, "usd", "trader").as_deref(),
            Some("fallback")
        );
        assert_eq!(pgpass_lookup(text, "db", 5432, "usd", "other"), None);
    }
    #[test]
    fn a_url_password_with_reserved_characters_unescaped_is_still_a_password() {
        // base64 passwords have `/`; others have `?`, `@`, `#`.
        let url = "postgresql://trader:a/b?c@d#e=@db:5433/usd?sslmode=disable";
        let (d, p) = split_password(url).unwrap();
        assert_eq!(d, "postgresql://trader@db:5433/usd?sslmode=disable");
        assert_eq!(p.as_deref(), Some("a/b?c@d#e="));
        assert!(Dsn::had_inline_password(url));
        let dsn = Dsn::parse_with(url, &no_env).unwrap();
        assert_eq!((dsn.host.as_str(), dsn.port), ("db", 5433));
        assert_eq!(dsn.password(), Some("a/b?c@d#e="));
        // An `@` in a query value does not end the user info.
        let (d, p) = split_password("postgresql://u:p@h/db?application_name=a@b").unwrap();
        assert_eq!(d, "postgresql://u@h/db?application_name=a@b");
        assert_eq!(p.as_deref(), Some("p"));
        // Malformed escapes: refused without echo, still seen as a password.
        let bad = "postgresql://u:50%zz/x@h/db";
        assert!(Dsn::had_inline_password(bad));
        let e = Dsn::parse_with(bad, &no_env).unwrap_err().to_string();
        assert!(!e.contains("50%zz"), "{e}");
    }

    #[test]
    fn sslpassword_is_never_kept() {
        for dsn in [
            "host=h dbname=d sslpassword='k3y pass' sslmode=disable",
            "postgresql://u@h/d?sslpassword=k3y%20pass&sslmode=disable",
        ] {
            assert!(Dsn::had_inline_password(dsn), "{dsn}");
            let d = Dsn::parse_with(dsn, &no_env).unwrap();
            assert!(!d.redacted().contains("sslpassword"), "{}", d.redacted());
            assert!(!d.redacted().contains("k3y"), "{}", d.redacted());
            assert!(d.redacted().contains("sslmode=disable"), "{}", d.redacted());
            assert_eq!(d.password(), None);
        }
    }

    #[test]
    fn a_bare_dbname_reaches_the_socket_as_the_os_user_like_libpq() {
        let d = Dsn::parse_with("dbname=usdcop_trading", &no_env).unwrap();
        assert_eq!(d.host, default_socket_dir());
        assert!(d.is_socket());
        assert_eq!(d.port, 5432);
        assert_eq!(Some(d.user.clone()), os_user_name());
        assert_eq!(
            d.config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        let env = |k: &str| match k {
            "PGHOST" => Some("/run/pg sock".to_string()),
            "PGPORT" => Some("6543".to_string()),
            _ => None,
        };
        let d = Dsn::parse_with("usdcop_trading sslmode=require", &env);
        assert!(d.is_err(), "a bare word is only a dbname alone");
        let d = Dsn::parse_with("dbname=usdcop_trading sslmode=require", &env).unwrap();
        assert_eq!((d.host.as_str(), d.port), ("/run/pg sock", 6543));
        assert_eq!(d.socket_file(), "/run/pg sock/.s.PGSQL.6543");
        // libpq: no TLS over a socket, even with sslmode=require.
        assert_eq!(
            d.config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        let d = Dsn::parse_with("host=/s dbname=x", &no_env).unwrap();
        assert!(d.is_socket());
        let d = Dsn::parse_with("host=@abstract dbname=x", &no_env).unwrap();
        assert!(d.is_socket());
        assert_eq!(d.endpoint(), "Unix socket @abstract/.s.PGSQL.5432");
        let d = Dsn::parse_with("host=db.internal dbname=x", &no_env).unwrap();
        assert!(!d.is_socket());
        assert_eq!(
            d.config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );
    }

    #[test]
    fn the_passfile_matches_the_default_socket_as_localhost() {
        let dir = tempfile::tempdir().unwrap();
        let passfile = dir.path().join("pgpass");
        std::fs::write(
            &passfile,
            "localhost:5432:d:u:local-pw\n/elsewhere:5432:d:u:dir-pw\n",
        )
        .unwrap();
        let env = |host: &'static str| {
            let passfile = passfile.display().to_string();
            move |k: &str| match k {
                "PGPASSFILE" => Some(passfile.clone()),
                "PGHOST" if !host.is_empty() => Some(host.to_string()),
                _ => None,
            }
        };
        let d = Dsn::parse_with("dbname=d user=u", &env("")).unwrap();
        assert_eq!(d.password(), Some("local-pw"));
        let d = Dsn::parse_with("dbname=d user=u", &env("/elsewhere")).unwrap();
        assert_eq!(d.password(), Some("dir-pw"));
    }

    #[test]
    fn children_inherit_only_the_allow_list() {
        let d = Dsn::parse_with("postgresql://u:pw@h/db", &no_env).unwrap();
        let inherited = [
            ("PATH", "/usr/bin"),
            ("HOME", "/home/u"),
            ("LC_ALL", "C.UTF-8"),
            ("PGSSLROOTCERT", "/ca.pem"),
            ("USDCOP_DR_PASSWORD", "repo secret"),
            ("USDCOP_DR_PASSWORD_FILE", "/secret"),
            ("USDCOP_DR_PG_DSN", "postgresql://u:pw@h/db"),
            ("AWS_SECRET_ACCESS_KEY", "aws secret"),
            ("PGPASSWORD", "stale"),
            ("PGHOST", "elsewhere"),
            ("PGSERVICE", "other"),
        ]
        .map(|(k, v)| (k.into(), v.into()));
        let env = d.child_env(inherited);
        let names: Vec<_> = env.iter().map(|(k, _)| k.to_str().unwrap()).collect();
        assert_eq!(
            names,
            ["PATH", "HOME", "LC_ALL", "PGSSLROOTCERT", "PGPASSWORD"]
        );
        assert_eq!(env.last().unwrap().1, "pw");
        let d = Dsn::parse_with("host=h dbname=db", &no_env).unwrap();
        let env = d.child_env([("PGPASSWORD".into(), "stale".into())]);
        assert!(env.is_empty(), "{env:?}");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn kv_quote(v: &str) -> String {
            format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
        }

        fn pct(v: &str) -> String {
            v.bytes().map(|b| format!("%{b:02X}")).collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]
            /// No generated password (reserved URL characters, quotes,
            /// backslashes, spaces, `%`) ever shows: not in an error, the
            /// redacted DSN (what snapshot metadata records), `Debug`, nor
            /// a child's argv or environment other than PGPASSWORD.
            #[test]
            fn a_password_never_appears(
                pw in "[A-Za-z0-9/+=?@#:%&!$*' \\\\-]{8,24}",
                form in 0usize..6,
                suffix in prop::sample::select(vec![
                    "", "sslmode=disable", "sslmode=bogus", "application_name=x",
                    "nonsense=1", "port=notaport",
                ]),
            ) {
                let q = if suffix.is_empty() { String::new() } else { format!("?{suffix}") };
                let dsn = match form {
                    0 => format!("postgresql://u:{pw}@db.internal:5433/usd{q}"),
                    1 => format!("postgres://u:{}@db.internal/usd{q}", pct(&pw)),
                    2 => format!("host=db.internal password={} dbname=usd {suffix}", kv_quote(&pw)),
                    3 => format!("host=/run/pg sslpassword={} dbname=usd {suffix}", kv_quote(&pw)),
                    4 => format!(
                        "postgresql://u@db.internal/usd?sslpassword={}{}{suffix}",
                        pct(&pw),
                        if suffix.is_empty() { "" } else { "&" }
                    ),
                    _ => format!("postgresql://u:{pw}@/usd?host=/run/pg"),
                };
                prop_assert!(Dsn::had_inline_password(&dsn), "not refused on argv: {}", dsn);
                match Dsn::parse_with(&dsn, &|_| None) {
                    Err(e) => {
                        prop_assert!(!e.to_string().contains(&pw), "error: {}", e);
                        prop_assert!(!e.hint().unwrap_or("").contains(&pw));
                    }
                    Ok(d) => {
                        prop_assert!(!d.redacted().contains(&pw), "redacted: {}", d.redacted());
                        let debug = format!("{d:?}");
                        prop_assert!(!debug.contains(&pw));
                        prop_assert!(!d.endpoint().contains(&pw));
                        let tool = crate::postgres::tools::PgTool {
                            path: "pg_dump".into(),
                            version: String::new(),
                            major: 15,
                        };
                        let cmd = tool.command(&d, &["--format=custom"]);
                        for a in cmd.get_args() {
                            prop_assert!(!a.to_string_lossy().contains(&pw), "argv: {:?}", a);
                        }
                        for (k, v) in cmd.get_envs() {
                            if k != "PGPASSWORD" {
                                let v = v.map(|v| v.to_string_lossy().into_owned());
                                prop_assert!(!v.unwrap_or_default().contains(&pw), "env {:?}", k);
                            }
                        }
                        let picture = serde_json::json!({ "dsn": d.redacted(), "user": d.user, "host": d.host });
                        prop_assert!(!picture.to_string().contains(&pw));
                    }
                }
            }
        }
    }
}
