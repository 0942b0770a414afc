//! Connection strings: parsed once, the password split off and kept apart.
//!
//! A DSN is either a URL (`postgresql://user:pw@host:5432/db?sslmode=…`) or
//! libpq key/value pairs (`host=… dbname=… password=…`). The password never
//! travels with the rest: `pg_dump`/`pg_restore` get the DSN without it on
//! their command line and the password in `PGPASSWORD`; snapshots and logs
//! only ever see [`Dsn::redacted`]. Where no password is given, libpq's own
//! sources are honoured: `PGPASSWORD`, then the passfile (`PGPASSFILE`,
//! default `~/.pgpass`), looked up here too for our own connection.

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
        let (without_password, password) = split_password(dsn)?;
        let (config_text, ssl_params) = split_params(&without_password, super::tls::SSL_KEYS)?;
        let ssl = super::tls::SslSettings::from_params(&ssl_params, env)?;
        let config = tokio_postgres::Config::from_str(&config_text).map_err(|e| {
            Error::usage(format!("invalid PostgreSQL DSN {without_password:?}: {e}"))
        })?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            // libpq's default: the Unix socket directory (Debian's), else TCP.
            None => env("PGHOST").unwrap_or_else(|| {
                if std::path::Path::new("/var/run/postgresql").is_dir() {
                    "/var/run/postgresql".into()
                } else {
                    "localhost".into()
                }
            }),
        };
        let port = match config.get_ports().first() {
            Some(p) => *p,
            None => match env("PGPORT") {
                Some(p) => p
                    .parse()
                    .map_err(|_| Error::usage(format!("invalid PGPORT {p:?}")))?,
                None => 5432,
            },
        };
        let user = config
            .get_user()
            .map(str::to_owned)
            .or_else(|| env("PGUSER"))
            .or_else(|| env("USER"))
            .unwrap_or_else(|| "postgres".into());
        let dbname = config
            .get_dbname()
            .map(str::to_owned)
            .or_else(|| env("PGDATABASE"))
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
                let text = std::fs::read_to_string(file).ok()?;
                pgpass_lookup(&text, &dsn.host, dsn.port, &dsn.dbname, &dsn.user)
                    .map(Zeroizing::new)
            });
        }
        Ok(dsn)
    }

    /// Whether the DSN text itself carried a password.
    pub fn had_inline_password(dsn: &str) -> bool {
        matches!(split_password(dsn), Ok((_, Some(_))))
    }

    /// The DSN without its password: for argv, logs and snapshots.
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
        c.ssl_mode(self.ssl.transport());
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

    /// Environment for a libpq child process (`pg_dump`, `pg_restore`,
    /// `psql`): the password, and nothing inherited that could redirect it.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![];
        if let Some(p) = self.password() {
            env.push(("PGPASSWORD", p.to_owned()));
        }
        env
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
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let authority = match authority.rfind('@') {
            Some(at) if keys.contains(&"password") => {
                let (userinfo, hostpart) = authority.split_at(at);
                match userinfo.split_once(':') {
                    Some((user, pw)) => {
                        taken.insert("password".to_owned(), percent_decode(pw)?);
                        format!("{user}{hostpart}")
                    }
                    None => authority.to_owned(),
                }
            }
            _ => authority.to_owned(),
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
            return Err(Error::usage(format!(
                "invalid PostgreSQL DSN: expected `key=value` after {key:?}"
            )));
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
            taken.insert(key, value);
        } else {
            out.push(format!("{key}={raw}"));
        }
    }
    Ok((out.join(" "), taken))
}

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
/// anything, `\:` and `\\` escape; the first matching line wins.
pub fn pgpass_lookup(text: &str, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    // libpq matches a socket directory as "localhost".
    let host = if host.starts_with('/') {
        "localhost"
    } else {
        host
    };
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
}
