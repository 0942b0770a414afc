//! TLS for usdcop-dr's own PostgreSQL connection (rustls), following
//! libpq's `sslmode` so that one DSN means the same to us and to
//! `pg_dump`/`pg_restore` (which do their own TLS):
//!
//! | sslmode            | encrypted            | certificate checked          |
//! |--------------------|----------------------|------------------------------|
//! | `disable`          | no                   | –                            |
//! | `allow`, `prefer`  | if the server offers | no                           |
//! | `require`          | yes                  | chain only if a root file exists (libpq does the same) |
//! | `verify-ca`        | yes                  | chain against `sslrootcert`  |
//! | `verify-full`      | yes                  | chain and host name          |
//!
//! `sslrootcert` (or `PGSSLROOTCERT`, default `~/.postgresql/root.crt`) is a
//! PEM file, or `system` for the operating system's roots. Client
//! certificates (`sslcert`/`sslkey`) are refused with a clear message.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::error::{Error, Result};

/// DSN settings that are ours to interpret (never handed to tokio-postgres).
pub const SSL_KEYS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslcompression",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "requiressl",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Result<SslMode> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::usage(format!(
                    "invalid sslmode {other:?}: use disable, allow, prefer, require, verify-ca or verify-full"
                )))
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslSettings {
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file, or `system`.
    pub root_cert: Option<String>,
}

impl SslSettings {
    /// From the settings removed from a DSN, with libpq's environment
    /// (`PGSSLMODE`, `PGSSLROOTCERT`) filling the gaps.
    pub fn from_params(
        params: &std::collections::BTreeMap<String, String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<SslSettings> {
        if params.contains_key("sslcert") || params.contains_key("sslkey") {
            return Err(Error::usage(
                "client certificates (sslcert/sslkey) are not supported for usdcop-dr's own \
                 PostgreSQL connection yet",
            )
            .with_hint("use password (SCRAM) authentication over TLS (sslmode=verify-full)"));
        }
        let mode = match params.get("sslmode").cloned().or_else(|| env("PGSSLMODE")) {
            Some(m) => SslMode::parse(&m)?,
            None if params.get("requiressl").is_some_and(|v| v == "1") => SslMode::Require,
            None => SslMode::Prefer,
        };
        let root_cert = params
            .get("sslrootcert")
            .cloned()
            .or_else(|| env("PGSSLROOTCERT"))
            .or_else(|| {
                let default = PathBuf::from(env("HOME")?).join(".postgresql/root.crt");
                default.is_file().then(|| default.display().to_string())
            });
        Ok(SslSettings { mode, root_cert })
    }

    /// The mode tokio-postgres enforces (it knows only these three).
    pub fn transport(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as T;
        match self.mode {
            SslMode::Disable => T::Disable,
            SslMode::Allow | SslMode::Prefer => T::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => T::Require,
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn load_roots(root_cert: Option<&str>, mode: SslMode) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        Some("system") => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| Error::usage(format!("cannot read sslrootcert {path}: {e}")))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| {
                    Error::usage(format!(
                        "sslrootcert {path} is not a PEM certificate file: {e}"
                    ))
                })?;
                roots.add(cert).map_err(|e| {
                    Error::usage(format!("sslrootcert {path}: unusable certificate: {e}"))
                })?;
            }
        }
        None => {}
    }
    if roots.is_empty() {
        return Err(Error::usage(format!(
            "sslmode={} needs root certificates, and none were found",
            if mode == SslMode::VerifyFull {
                "verify-full"
            } else {
                "verify-ca"
            }
        ))
        .with_hint(
            "set sslrootcert=/path/to/ca.pem in the DSN (or PGSSLROOTCERT), or sslrootcert=system",
        ));
    }
    Ok(roots)
}

/// The rustls configuration for `s`; `None` means a plain connection.
pub fn client_config(s: &SslSettings) -> Result<Option<ClientConfig>> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match s.mode {
        SslMode::Disable => return Ok(None),
        SslMode::Allow | SslMode::Prefer => Arc::new(NoVerify(provider.clone())),
        SslMode::Require if s.root_cert.is_none() => Arc::new(NoVerify(provider.clone())),
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = load_roots(s.root_cert.as_deref(), s.mode)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| Error::usage(format!("TLS roots: {e}")))?;
            if s.mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::usage(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(config))
}

/// `prefer`/`require` without roots: encrypted, certificate not checked
/// (libpq's behaviour); handshake signatures are still verified.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is
/// not compared.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn settings(pairs: &[(&str, &str)], env: &[(&str, &str)]) -> Result<SslSettings> {
        let params: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        SslSettings::from_params(&params, &|k| env.get(k).cloned())
    }

    #[test]
    fn modes_follow_libpq() {
        assert_eq!(settings(&[], &[]).unwrap().mode, SslMode::Prefer);
        assert_eq!(
            settings(&[], &[("PGSSLMODE", "require")]).unwrap().mode,
            SslMode::Require
        );
        assert_eq!(
            settings(&[("sslmode", "verify-full")], &[("PGSSLMODE", "disable")])
                .unwrap()
                .mode,
            SslMode::VerifyFull
        );
        assert!(settings(&[("sslmode", "bogus")], &[]).is_err());
        assert!(settings(&[("sslcert", "/c.pem")], &[]).is_err());
        assert!(
            client_config(&settings(&[("sslmode", "disable")], &[]).unwrap())
                .unwrap()
                .is_none()
        );
        assert!(
            client_config(&settings(&[("sslmode", "require")], &[]).unwrap())
                .unwrap()
                .is_some()
        );
        // verify-* without any root certificate: a clear refusal.
        let e = client_config(&settings(&[("sslmode", "verify-full")], &[]).unwrap()).unwrap_err();
        assert!(e.to_string().contains("needs root certificates"), "{e}");
        let e = client_config(
            &settings(
                &[
                    ("sslmode", "verify-ca"),
                    ("sslrootcert", "/nonexistent.pem"),
                ],
                &[],
            )
            .unwrap(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("cannot read sslrootcert"), "{e}");
    }
}
