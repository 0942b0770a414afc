//! S3 backend (AWS S3 or any S3-compatible store) on aws-sdk-s3.
//!
//! - Objects live under `s3://bucket/prefix/`; the prefix is invisible to callers.
//! - Each store (repository, bucket source, restore target) has its own
//!   client from its own [`S3Options`]: a named AWS profile (credentials,
//!   `endpoint_url`, `region`) or the standard AWS chain; never secrets
//!   from flags. A custom endpoint turns on path-style addressing. Errors
//!   name the store and the access key id ([`StoreInfo`]).
//! - Retries: the SDK's standard retry strategy (exponential back-off with
//!   jitter on throttling, 5xx, timeouts and connection errors), per request,
//!   so each multipart part is retried on its own. File payloads are
//!   re-read from disk on retry, never held in memory. A GET body that
//!   breaks off after the answer began is beyond the SDK's retries: every
//!   read resumes it with a ranged GET of the same version
//!   ([`ResumableGet`]).
//! - Large file payloads go up as multipart uploads with bounded
//!   parallelism; a failed one is aborted, and ones abandoned by killed
//!   processes are aborted by `Backend::abort_unfinished_writes` when the
//!   next backup finds their dead lock (`repository::recovery`).
//! - `PutMode::Create` sends `If-None-Match: *`. Whether the store honours
//!   it is found out by [`S3Backend::probe_atomic_create`], never assumed.
//! - Every request is counted by type, with bytes moved ([`RequestStats`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier, StorageClass,
};
use aws_sdk_s3::Client;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};

use super::{Backend, ListPage, ObjectMeta, Payload, PutMode, RequestCounts, RequestStats};
use crate::error::{Error, ErrorKind, Result};
use crate::format::names;

/// File payloads larger than this go up as multipart uploads.
const MULTIPART_THRESHOLD: u64 = 16 << 20;
const PART_SIZE: u64 = 8 << 20;
const PART_CONCURRENCY: usize = 4;
const MAX_ATTEMPTS: u32 = 6;
/// Attempts of a PUT answered `409 ConditionalRequestConflict`, and the
/// back-off between them (doubling, plus up to half again of jitter).
const CONFLICT_ATTEMPTS: u32 = 6;
const CONFLICT_BACKOFF: Duration = Duration::from_millis(100);
const CONFLICT_MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Region of a store that names none (S3 needs one to sign with; custom
/// stores mostly accept this one).
const DEFAULT_REGION: &str = "us-east-1";

/// Content type and user metadata for [`S3Backend::put_object_with`].
#[derive(Debug, Clone, Default)]
pub struct ObjectAttrs {
    pub content_type: Option<String>,
    /// `x-amz-meta-*` headers, without the prefix.
    pub metadata: std::collections::BTreeMap<String, String>,
}

impl ObjectAttrs {
    fn metadata_map(&self) -> Option<std::collections::HashMap<String, String>> {
        (!self.metadata.is_empty()).then(|| self.metadata.clone().into_iter().collect())
    }
}

/// One S3 store's configuration: where it is and whose keys sign for it.
/// The repository store and each bucket source (or restore target) get
/// their own, so on-prem MinIO buckets can go into an offsite repository
/// with other keys in one run. The fields map 1:1 to the config keys
/// `endpoint`, `region` and `profile` of `[repository]` and `[[source]]`.
///
/// Resolution ([`connect`]):
/// - `profile` named: credentials, `endpoint_url` and `region` come from
///   that profile of `~/.aws/config` / `~/.aws/credentials` (or
///   `AWS_CONFIG_FILE` / `AWS_SHARED_CREDENTIALS_FILE`) and win over the
///   ambient `AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, `AWS_REGION`, … (else
///   two stores could not differ). `endpoint` / `region` given here win
///   over the profile's.
/// - no profile: the standard AWS chain, exactly as the AWS CLI does
///   (environment, then `AWS_PROFILE` or the default profile, then
///   web identity, container and instance roles).
/// - `credentials`: explicit keys for programs embedding the library
///   (tests); the CLI never sets them and never takes a secret as a flag.
#[derive(Clone, Default)]
pub struct S3Options {
    /// Custom endpoint (MinIO, Garage, moto, …); path-style addressing.
    pub endpoint: Option<String>,
    /// Storage class for data packs, e.g. `STANDARD_IA` (repository only).
    pub data_storage_class: Option<String>,
    /// Explicit key pair (access key id, secret), for embedding programs.
    pub credentials: Option<(String, String)>,
    pub region: Option<String>,
    /// Named AWS profile for this store.
    pub profile: Option<String>,
}

/// By hand, so that `{:?}` can never print the secret key.
impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("data_storage_class", &self.data_storage_class)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(id, _)| (id, "<redacted>")),
            )
            .field("region", &self.region)
            .field("profile", &self.profile)
            .finish()
    }
}

/// Which store a client talks to: named in every error about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreRole {
    /// The repository (`--repo s3://…`).
    Repository,
    /// The store `backup bucket` reads.
    Source,
    /// The store `restore bucket` writes into.
    Target,
}

impl StoreRole {
    pub fn noun(self) -> &'static str {
        match self {
            StoreRole::Repository => "repository store",
            StoreRole::Source => "source store",
            StoreRole::Target => "target store",
        }
    }

    /// The CLI flags that configure this store, for hints.
    fn flags(self) -> (&'static str, &'static str) {
        match self {
            StoreRole::Repository => ("--s3-profile", "--s3-endpoint"),
            StoreRole::Source | StoreRole::Target => ("--profile", "--endpoint"),
        }
    }
}

/// A connected store as errors describe it. Holds the access key id (not
/// a secret: it is sent in clear in every request), never the secret key.
#[derive(Debug, Clone)]
pub struct StoreInfo {
    pub role: StoreRole,
    /// Endpoint URL; `None` is AWS S3.
    pub endpoint: Option<String>,
    pub region: String,
    pub profile: Option<String>,
    /// "profile minio", "the environment", "explicit credentials", …
    pub credentials_from: String,
    pub access_key_id: String,
}

impl StoreInfo {
    /// `http://minio:9000` or `AWS S3`.
    pub fn endpoint_label(&self) -> String {
        self.endpoint.clone().unwrap_or_else(|| "AWS S3".into())
    }
}

impl std::fmt::Display for StoreInfo {
    /// "the source store http://127.0.0.1:9000"
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the {} {}", self.role.noun(), self.endpoint_label())
    }
}

/// The AWS config files as the SDK finds them, for messages.
fn aws_files() -> String {
    let config = std::env::var("AWS_CONFIG_FILE").unwrap_or_else(|_| "~/.aws/config".into());
    let creds = std::env::var("AWS_SHARED_CREDENTIALS_FILE")
        .unwrap_or_else(|_| "~/.aws/credentials".into());
    format!("{config} or {creds}")
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// An S3 client for one store, with the credentials resolved up front so
/// that a store without any fails now, with a message naming it, instead
/// of as an unreachable endpoint on the first request (the SDK reports a
/// credential failure as a dispatch failure). The SDK resolves them again
/// for its own cache: one extra cheap lookup per client.
pub async fn connect(opts: &S3Options, role: StoreRole) -> Result<(Client, StoreInfo)> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    let mut from_profile: Option<(Option<String>, Option<String>)> = None;
    if let Some(name) = &opts.profile {
        let profiles = aws_config::profile::load(
            &Default::default(),
            &Default::default(),
            &Default::default(),
            Some(name.clone().into()),
        )
        .await
        .map_err(|e| {
            Error::usage(format!(
                "cannot read the AWS config files for profile {name} of the {}: {}",
                role.noun(),
                e_display(&e)
            ))
        })?;
        let profile = profiles.get_profile(name).ok_or_else(|| {
            let mut known: Vec<&str> = profiles.profiles().collect();
            known.sort_unstable();
            let known = if known.is_empty() {
                "no profile is defined there".to_owned()
            } else {
                format!("defined: {}", known.join(", "))
            };
            Error::usage(format!(
                "AWS profile {name:?} (for the {}) is not defined in {} ({known})",
                role.noun(),
                aws_files()
            ))
            .with_hint("add [profile NAME] to the config file or [NAME] to the credentials file (AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE choose other files)")
        })?;
        let endpoint = profile.get("endpoint_url").map(str::to_owned);
        let region = profile.get("region").map(str::to_owned);
        // The store's region, given to the loader too: the default region
        // chain would take AWS_REGION, or ask the instance metadata
        // service. Role assumption (STS) in the profile needs it as well.
        let store_region = Region::new(
            opts.region
                .clone()
                .or_else(|| region.clone())
                .unwrap_or_else(|| DEFAULT_REGION.into()),
        );
        let provider_config = aws_config::provider_config::ProviderConfig::without_region()
            .with_region(Some(store_region.clone()));
        // Only the profile's credentials: the default chain would take
        // ambient AWS_ACCESS_KEY_ID first.
        loader = loader
            .profile_name(name)
            .region(store_region)
            .credentials_provider(
                aws_config::profile::ProfileFileCredentialsProvider::builder()
                    .configure(&provider_config)
                    .profile_name(name)
                    .build(),
            );
        from_profile = Some((endpoint, region));
    }
    if let (None, Some(r)) = (&opts.profile, &opts.region) {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some((ak, sk)) = &opts.credentials {
        loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
            ak,
            sk,
            None,
            None,
            "usdcop-dr",
        ));
    }
    let shared = loader.load().await;
    let (endpoint, region) = match from_profile {
        Some((endpoint, region)) => (
            opts.endpoint.clone().or(endpoint),
            opts.region.clone().or(region),
        ),
        None => (
            opts.endpoint
                .clone()
                .or_else(|| non_empty_env("AWS_ENDPOINT_URL_S3"))
                .or_else(|| shared.endpoint_url().map(str::to_owned)),
            opts.region
                .clone()
                .or_else(|| shared.region().map(|r| r.to_string())),
        ),
    };
    let region = region.unwrap_or_else(|| DEFAULT_REGION.into());
    let mut b = aws_sdk_s3::config::Builder::from(&shared)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_backoff(Duration::from_millis(200))
                .with_max_backoff(Duration::from_secs(20)),
        )
        // Plain signed payloads: several S3-compatible stores (Garage among
        // them) reject the SDK's default aws-chunked trailing checksums.
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(Duration::from_secs(60))
                .operation_attempt_timeout(Duration::from_secs(300))
                .build(),
        )
        .region(Region::new(region.clone()));
    // Set here, after the shared config; with a profile also cleared, so
    // that the ambient AWS_ENDPOINT_URL(_S3) does not apply.
    if endpoint.is_some() || opts.profile.is_some() {
        b.set_endpoint_url(endpoint.clone());
    }
    if endpoint.is_some() {
        b = b.force_path_style(true);
    }
    let conf = b.build();
    let credentials_from = match (&opts.credentials, &opts.profile) {
        (Some(_), _) => "explicit credentials".to_owned(),
        (None, Some(p)) => format!("profile {p}"),
        (None, None) => match non_empty_env("AWS_ACCESS_KEY_ID") {
            Some(_) => "environment AWS_ACCESS_KEY_ID".to_owned(),
            None => match non_empty_env("AWS_PROFILE") {
                Some(p) => format!("profile {p} from AWS_PROFILE"),
                None => "the AWS default chain".to_owned(),
            },
        },
    };
    let mut info = StoreInfo {
        role,
        endpoint,
        region,
        profile: opts.profile.clone(),
        credentials_from,
        access_key_id: String::new(),
    };
    // The provider the client uses: the shared config's (ours when a
    // profile or explicit keys are given, else the default chain).
    let provider = shared
        .credentials_provider()
        .ok_or_else(|| Error::usage(format!("no AWS credentials provider for {info}")))?;
    use aws_sdk_s3::config::ProvideCredentials;
    match provider.provide_credentials().await {
        Ok(c) => info.access_key_id = c.access_key_id().to_owned(),
        Err(e) => return Err(no_credentials(&info, &e)),
    }
    Ok((Client::from_conf(conf), info))
}

/// "no AWS credentials found for the repository store (…)", with where
/// they were looked for and how to provide them.
fn no_credentials(info: &StoreInfo, e: &dyn std::error::Error) -> Error {
    let (profile_flag, _) = info.role.flags();
    let looked = match &info.profile {
        Some(p) => format!("profile {p} in {}", aws_files()),
        None => format!(
            "environment AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profile {} in {}, web identity, container and instance roles",
            non_empty_env("AWS_PROFILE").unwrap_or_else(|| "default".into()),
            aws_files()
        ),
    };
    Error::usage(format!(
        "no AWS credentials found for {info} (looked in: {looked}); last answer: {}",
        e_display(e)
    ))
    .with_hint(match &info.profile {
        Some(p) => format!(
            "give profile {p} aws_access_key_id and aws_secret_access_key (or a role / credential_process), or name another profile with {profile_flag}"
        ),
        None => format!(
            "name a profile that holds the keys with {profile_flag} (~/.aws/credentials), or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ),
    })
}

fn inc(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

#[derive(Debug, Clone)]
pub struct S3Backend {
    client: Client,
    bucket: String,
    /// Empty or ending in `/`.
    prefix: String,
    /// Which store this is, for errors and [`Backend::location`].
    store: Arc<StoreInfo>,
    data_storage_class: Option<StorageClass>,
    stats: Arc<RequestStats>,
    atomic_create: Arc<AtomicBool>,
}

/// Split `s3://bucket/some/prefix` into bucket and prefix (`some/prefix/`).
pub fn parse_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| Error::usage(format!("{url:?} is not an s3:// URL")))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(
            Error::usage(format!("{url:?} names no bucket")).with_hint("use s3://bucket/prefix")
        );
    }
    let prefix = prefix.trim_matches('/');
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    Ok((bucket.to_owned(), prefix))
}

impl S3Backend {
    /// The repository store at `url` (`s3://bucket/prefix`).
    pub async fn open(url: &str, opts: &S3Options) -> Result<S3Backend> {
        Self::open_as(url, opts, StoreRole::Repository).await
    }

    /// A bucket of the store `opts` configures, named in errors as `role`.
    pub async fn open_as(url: &str, opts: &S3Options, role: StoreRole) -> Result<S3Backend> {
        let (bucket, prefix) = parse_url(url)?;
        let (client, store) = connect(opts, role).await?;
        let mut backend = Self::from_client(
            client,
            Arc::new(store),
            bucket,
            prefix,
            Arc::new(RequestStats::default()),
        );
        backend.data_storage_class = opts.data_storage_class.as_deref().map(StorageClass::from);
        Ok(backend)
    }

    /// A bucket of a store already connected ([`connect`]): no second
    /// profile read or credential resolution (an STS call with an
    /// assume-role profile). `prefix` is empty or ends in `/`
    /// ([`parse_url`]). Requests are counted into `stats`, which may be
    /// shared with the other users of `client`, so that one store's
    /// requests add up in one place. No data storage class: that is for
    /// the repository, which [`S3Backend::open`] makes.
    pub fn from_client(
        client: Client,
        store: Arc<StoreInfo>,
        bucket: String,
        prefix: String,
        stats: Arc<RequestStats>,
    ) -> S3Backend {
        S3Backend {
            client,
            bucket,
            prefix,
            store,
            data_storage_class: None,
            stats,
            atomic_create: Arc::new(AtomicBool::new(true)),
        }
    }

    pub fn stats(&self) -> RequestCounts {
        self.stats.snapshot()
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn url(&self, name: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(name))
    }

    /// Whether `If-None-Match: *` really prevents overwrites here:
    /// create a probe object twice and see whether the second create fails
    /// and the first content survives. The answer is remembered and
    /// reported by [`Backend::atomic_create`].
    async fn probe(&self) -> Result<bool> {
        let name = format!(
            "locks/probe-{}",
            hex::encode(crate::crypto::random_bytes::<8>())
        );
        // The name is random: if the first create finds the object, it is
        // this very create's, stored by an attempt whose answer was lost
        // (the retry got 412). That already shows creates are refused; the
        // content check below still decides.
        match self
            .put_bytes(&name, Bytes::from_static(b"first"), PutMode::Create)
            .await
        {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            r => r?,
        }
        let second = self
            .put_bytes(&name, Bytes::from_static(b"second"), PutMode::Create)
            .await;
        let kept_first = self
            .get(&name)
            .await
            .map(|b| &b[..] == b"first")
            .unwrap_or(false);
        let _ = self.delete_many(&[name]).await;
        let atomic =
            matches!(&second, Err(e) if e.kind() == ErrorKind::AlreadyExists) && kept_first;
        if second.is_err() && !matches!(&second, Err(e) if e.kind() == ErrorKind::AlreadyExists) {
            second?;
        }
        self.atomic_create.store(atomic, Ordering::Relaxed);
        Ok(atomic)
    }

    async fn put_bytes(&self, name: &str, data: Bytes, mode: PutMode) -> Result<()> {
        let len = data.len() as u64;
        self.put_single(name, PutBody::Bytes(data), len, mode).await
    }

    async fn put_file(
        &self,
        name: &str,
        path: &std::path::Path,
        len: u64,
        mode: PutMode,
    ) -> Result<()> {
        if len <= MULTIPART_THRESHOLD {
            return self.put_single(name, PutBody::File(path), len, mode).await;
        }
        self.multipart(name, path, len, mode, None).await
    }

    /// One PutObject (`If-None-Match: *` for a create), sent again after a
    /// `409 ConditionalRequestConflict`: that answer means another
    /// conditional write of this name is in progress, so nothing is stored
    /// yet and nothing can be concluded. The retry (bounded, with
    /// exponential back-off and jitter) gets the store's real answer: the
    /// object stored, or `412` (it exists: `AlreadyExists`). The SDK's own
    /// retries do not cover 409.
    async fn put_single(
        &self,
        name: &str,
        body: PutBody<'_>,
        len: u64,
        mode: PutMode,
    ) -> Result<()> {
        let mut backoff = CONFLICT_BACKOFF;
        let mut attempt = 1;
        loop {
            let mut req = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(self.key(name))
                .content_length(len as i64)
                .body(body.stream(len).await?);
            if mode == PutMode::Create {
                req = req.if_none_match("*");
            }
            if let Some(sc) = self.storage_class_for(name) {
                req = req.storage_class(sc);
            }
            inc(&self.stats.put, 1);
            match req.send().await {
                Ok(_) => {
                    inc(&self.stats.bytes_up, len);
                    return Ok(());
                }
                Err(e) if is_write_conflict(&e) && attempt < CONFLICT_ATTEMPTS => {
                    tracing::debug!(
                        "PUT {}: 409 ConditionalRequestConflict (attempt {attempt}), retrying",
                        self.url(name)
                    );
                    let jitter =
                        rand::Rng::gen_range(&mut rand::thread_rng(), Duration::ZERO..=backoff / 2);
                    tokio::time::sleep(backoff + jitter).await;
                    backoff = (backoff * 2).min(CONFLICT_MAX_BACKOFF);
                    attempt += 1;
                }
                Err(e) => return Err(self.map_err(e, name, "PUT")),
            }
        }
    }

    /// Write (overwrite) one object with a content type and user metadata:
    /// bytes in one PUT, a file in one PUT or, above 16 MiB, as a multipart
    /// upload re-read from the file (which is removed afterwards).
    pub async fn put_object_with(
        &self,
        name: &str,
        payload: Payload,
        attrs: &ObjectAttrs,
    ) -> Result<()> {
        let len = payload.len();
        let (body, spool) = match payload {
            Payload::Bytes(b) => (ByteStream::from(b), None),
            Payload::File { path, len } if len > MULTIPART_THRESHOLD => {
                let r = self
                    .multipart(name, &path, len, PutMode::Overwrite, Some(attrs))
                    .await;
                let _ = std::fs::remove_file(&path);
                return r;
            }
            Payload::File { path, len } => {
                let body = ByteStream::read_from()
                    .path(&path)
                    .length(Length::Exact(len))
                    .build()
                    .await
                    .map_err(|e| {
                        Error::io(format!("reading spool file {}: {e}", path.display()))
                    })?;
                (body, Some(path))
            }
        };
        inc(&self.stats.put, 1);
        let put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .content_length(len as i64)
            .set_content_type(attrs.content_type.clone())
            .set_metadata(attrs.metadata_map())
            .body(body);
        let r = if attrs.content_type.is_none() {
            // The SDK adds `Content-Type: application/octet-stream` when none
            // is set; an object that had none must come back without one
            // (the store then applies its own default, as for the original).
            put.customize()
                .mutate_request(|req| {
                    req.headers_mut().remove("content-type");
                })
                .send()
                .await
        } else {
            put.send().await
        }
        .map_err(|e| self.map_err(e, name, "PUT"));
        if let Some(p) = spool {
            let _ = std::fs::remove_file(p);
        }
        r?;
        inc(&self.stats.bytes_up, len);
        Ok(())
    }

    /// Multipart upload. Create mode here is a HEAD check, not atomic: only
    /// content-addressed packs are this large, for which a concurrent
    /// writer can only have stored the same bytes. (moto and some stores do
    /// not accept `If-None-Match` on CompleteMultipartUpload.)
    async fn multipart(
        &self,
        name: &str,
        path: &std::path::Path,
        len: u64,
        mode: PutMode,
        attrs: Option<&ObjectAttrs>,
    ) -> Result<()> {
        if mode == PutMode::Create && self.head(name).await.is_ok() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("object {name} already exists"),
            ));
        }
        let key = self.key(name);
        let mut create = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&key);
        if let Some(a) = attrs {
            create = create
                .set_content_type(a.content_type.clone())
                .set_metadata(a.metadata_map());
        }
        if let Some(sc) = self.storage_class_for(name) {
            create = create.storage_class(sc);
        }
        inc(&self.stats.multipart, 1);
        let upload = create
            .send()
            .await
            .map_err(|e| self.map_err(e, name, "CreateMultipartUpload"))?;
        let upload_id = upload
            .upload_id()
            .ok_or_else(|| Error::io(format!("{}: store returned no upload id", self.url(name))))?
            .to_owned();
        let result = self
            .upload_parts_and_complete(name, &key, &upload_id, path, len, mode)
            .await;
        if result.is_err() {
            inc(&self.stats.multipart, 1);
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn upload_parts_and_complete(
        &self,
        name: &str,
        key: &str,
        upload_id: &str,
        path: &std::path::Path,
        len: u64,
        mode: PutMode,
    ) -> Result<()> {
        let parts = len.div_ceil(PART_SIZE);
        let completed: Vec<CompletedPart> = futures::stream::iter(0..parts)
            .map(|i| async move {
                let offset = i * PART_SIZE;
                let size = PART_SIZE.min(len - offset);
                let body = ByteStream::read_from()
                    .path(path)
                    .offset(offset)
                    .length(Length::Exact(size))
                    .build()
                    .await
                    .map_err(|e| {
                        Error::io(format!("reading spool file {}: {e}", path.display()))
                    })?;
                inc(&self.stats.multipart, 1);
                let out = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(i as i32 + 1)
                    .content_length(size as i64)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| self.map_err(e, name, "UploadPart"))?;
                inc(&self.stats.bytes_up, size);
                Ok::<_, Error>(
                    CompletedPart::builder()
                        .part_number(i as i32 + 1)
                        .set_e_tag(out.e_tag().map(str::to_owned))
                        .build(),
                )
            })
            .buffered(PART_CONCURRENCY)
            .try_collect()
            .await?;
        let complete = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            );
        inc(&self.stats.multipart, 1);
        match complete.send().await {
            Ok(_) => Ok(()),
            // Some stores answer 200 with a body the SDK cannot parse (moto
            // names the root element differently). The upload completed if
            // the object is now there with the right size.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 200) => {
                match self.head(name).await {
                    Ok(meta) if meta.size == len => Ok(()),
                    _ => Err(self.map_err(e, name, "CompleteMultipartUpload")),
                }
            }
            // The complete took effect but its answer was lost: the SDK's
            // retry finds the upload gone (`NoSuchUpload`, Garage). For a
            // create (a content-named pack) an object of the right size
            // under that name holds these bytes, so the upload is done. An
            // upload aborted by someone else leaves no such object.
            Err(e)
                if mode == PutMode::Create
                    && (e.code() == Some("NoSuchUpload")
                        || e.raw_response().is_some_and(|r| r.status().as_u16() == 404)) =>
            {
                match self.head(name).await {
                    Ok(meta) if meta.size == len => Ok(()),
                    _ => Err(self.map_err(e, name, "CompleteMultipartUpload")),
                }
            }
            Err(e) => Err(self.map_err(e, name, "CompleteMultipartUpload")),
        }
    }

    /// One counted GetObject (optionally ranged: offset, length), body
    /// collected. A body cut short is resumed ([`ResumableGet`]).
    async fn fetch(&self, name: &str, range: Option<(u64, u64)>) -> Result<Bytes> {
        let (_, mut body) = ResumableGet::open(
            &self.client,
            &self.store,
            &self.bucket,
            &self.key(name),
            name,
            range,
            self.stats.clone(),
        )
        .await?;
        let mut data = bytes::BytesMut::with_capacity(body.expected().unwrap_or(0) as usize);
        while let Some(piece) = body.next().await? {
            data.extend_from_slice(&piece);
        }
        Ok(data.freeze())
    }

    fn storage_class_for(&self, name: &str) -> Option<StorageClass> {
        if name.starts_with(super::super::format::names::DATA) {
            self.data_storage_class.clone()
        } else {
            None
        }
    }

    /// One clear error, with the object and the likely cause.
    fn map_err<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
        &self,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
        name: &str,
        op: &str,
    ) -> Error {
        let what = if name.is_empty() {
            format!("s3://{}/{}", self.bucket, self.prefix)
        } else {
            self.url(name)
        };
        sdk_error(e, &self.store, &self.bucket, &what, name, op)
    }

    /// Which store this is (role, endpoint, profile, access key id).
    pub fn store(&self) -> &StoreInfo {
        &self.store
    }
}

/// How many times one object read may have its body cut short before it
/// gives up. The SDK retries a request whose answer never came (resets,
/// `503 SlowDown`, timeouts); it cannot retry a body that breaks halfway,
/// because the body is streamed after `send` has returned. Such a cut is
/// resumed by [`ResumableGet`] instead, from the byte already received.
pub const MAX_BODY_CUTS: u32 = 5;
/// A cut after the body delivered this much since the previous cut starts
/// the count again: a long read through a lossy path may be cut many times
/// while it advances, and only cuts in a row that get nowhere mean the path
/// is broken. (Each such reset costs a MiB of progress, so a read still
/// ends.)
const CUT_COUNT_RESET_AFTER: u64 = 1 << 20;
/// Pause before the first resumption; doubles with each further cut.
const RESUME_BACKOFF: Duration = Duration::from_millis(200);
/// A body that delivers nothing for this long counts as cut: a connection
/// that silently stalls must not hang a nightly run forever.
const BODY_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A GetObject whose body survives connections dropped mid-body, handed on
/// piece by piece as it arrives (streaming, bounded memory).
///
/// - The first answer's Content-Length is what the body must deliver: a
///   body that errors, stalls, or simply ends early is a cut, never a
///   silent short read.
/// - After a cut it waits (back-off), then asks for the rest with
///   `Range: bytes=N-M` and `If-Match: <ETag of the first answer>`: an
///   object replaced meanwhile fails the read (412) instead of two
///   versions being joined, and the answer must start at byte N.
/// - At most [`MAX_BODY_CUTS`] cuts in a row, then one clear error; cuts
///   count in a row unless the body advanced a MiB in between.
///
/// Used for every read of the repository ([`S3Backend`]'s `get` and
/// `get_range`) and of bucket sources (`source::bucket`).
pub struct ResumableGet {
    client: Client,
    store: Arc<StoreInfo>,
    bucket: String,
    key: String,
    /// What "not found" errors name (repository-relative for the backend).
    name: String,
    /// First byte of the object this read covers.
    start: u64,
    /// Bytes the first answer promised (its Content-Length).
    expected: Option<u64>,
    received: u64,
    etag: Option<String>,
    body: ByteStream,
    cuts: u32,
    /// `received` at the previous cut.
    received_at_cut: u64,
    stats: Arc<RequestStats>,
    /// Set when a resumption found the object replaced (412).
    replaced: Arc<AtomicBool>,
}

impl ResumableGet {
    /// Send the first GetObject (`range`: offset and length, length > 0),
    /// counted in `stats`. The output comes back without its body (content
    /// type, metadata, ETag, …); read the body with [`ResumableGet::next`].
    pub async fn open(
        client: &Client,
        store: &Arc<StoreInfo>,
        bucket: &str,
        key: &str,
        name: &str,
        range: Option<(u64, u64)>,
        stats: Arc<RequestStats>,
    ) -> Result<(GetObjectOutput, ResumableGet)> {
        debug_assert!(range.is_none_or(|(_, len)| len > 0));
        inc(&stats.get, 1);
        let mut out = client
            .get_object()
            .bucket(bucket)
            .key(key)
            .set_range(range.map(|(off, len)| format!("bytes={off}-{}", off + len - 1)))
            .send()
            .await
            .map_err(|e| {
                let what = format!("s3://{bucket}/{key}");
                sdk_error(e, store, bucket, &what, name, "GET")
            })?;
        let body = std::mem::take(&mut out.body);
        let reader = ResumableGet {
            client: client.clone(),
            store: store.clone(),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            name: name.to_owned(),
            start: range.map_or(0, |(off, _)| off),
            expected: out.content_length().and_then(|n| u64::try_from(n).ok()),
            received: 0,
            etag: out.e_tag().map(str::to_owned),
            body,
            cuts: 0,
            received_at_cut: 0,
            stats,
            replaced: Arc::default(),
        };
        Ok((out, reader))
    }

    /// Bytes the body should deliver, if the store said.
    pub fn expected(&self) -> Option<u64> {
        self.expected
    }

    fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    /// Becomes true if the read failed because the object was replaced
    /// while it was being read (a caller that can start over may do so:
    /// the bucket source reads the new version from its first byte).
    pub fn replaced_flag(&self) -> Arc<AtomicBool> {
        self.replaced.clone()
    }

    /// The next piece of the body, `None` at its (complete) end.
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        loop {
            let cause = match tokio::time::timeout(BODY_STALL_TIMEOUT, self.body.try_next()).await {
                Ok(Ok(Some(piece))) => {
                    self.received += piece.len() as u64;
                    inc(&self.stats.bytes_down, piece.len() as u64);
                    if let Some(n) = self.expected.filter(|&n| self.received > n) {
                        return Err(Error::integrity(format!(
                            "{}: the body is longer than its Content-Length ({n} bytes)",
                            self.url()
                        )));
                    }
                    return Ok(Some(piece));
                }
                Ok(Ok(None)) => match self.expected {
                    // hyper normally reports this itself; never trust it
                    // to: a short body must not pass as the whole object.
                    Some(n) if self.received < n => "the body ended early".to_owned(),
                    _ => return Ok(None),
                },
                Ok(Err(e)) => e_display(&e),
                Err(_) => format!("no data for {} s", BODY_STALL_TIMEOUT.as_secs()),
            };
            self.resume(cause).await?;
        }
    }

    /// After a cut: back off, then ask for the rest of the same version.
    async fn resume(&mut self, cause: String) -> Result<()> {
        if self.expected.is_some_and(|n| self.received >= n) {
            // Broke after the last byte: nothing is missing.
            self.body = ByteStream::default();
            return Ok(());
        }
        if self.received >= self.received_at_cut + CUT_COUNT_RESET_AFTER {
            self.cuts = 0;
        }
        self.received_at_cut = self.received;
        self.cuts += 1;
        let of = self
            .expected
            .map_or_else(|| "?".to_owned(), |n| n.to_string());
        if self.etag.is_none() {
            // Without an ETag the ranged read cannot be pinned to the same
            // version (If-Match), and joining two versions is worse than
            // failing.
            return Err(Error::io(format!(
                "{}: body cut short after {} of {of} bytes, and the store sent no ETag to \
                 resume the same version with; giving up (cause: {cause})",
                self.url(),
                self.received,
            ))
            .with_hint("run again; if it keeps happening, check the network path to the store"));
        }
        if self.cuts >= MAX_BODY_CUTS {
            return Err(Error::io(format!(
                "{}: body cut short {} times after {} of {of} bytes; giving up (last: {cause})",
                self.url(),
                self.cuts,
                self.received,
            ))
            .with_hint(
                "the network or the store keeps dropping connections mid-transfer; \
                 run again later, or check proxies and load balancers on the way to the store",
            ));
        }
        tracing::debug!(
            "{}: body cut short after {} of {of} bytes ({cause}); resuming ({} of {MAX_BODY_CUTS})",
            self.url(),
            self.received,
            self.cuts
        );
        tokio::time::sleep(RESUME_BACKOFF * 2u32.pow(self.cuts - 1)).await;
        let from = self.start + self.received;
        let range = match self.expected {
            Some(n) => format!("bytes={from}-{}", self.start + n - 1),
            None => format!("bytes={from}-"),
        };
        inc(&self.stats.get, 1);
        let mut out =
            self.client
                .get_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .range(&range)
                .set_if_match(self.etag.clone())
                .send()
                .await
                .map_err(|e| {
                    if e.raw_response().is_some_and(|r| r.status().as_u16() == 412) {
                        self.replaced.store(true, Ordering::Relaxed);
                        return Error::io(format!(
                            "{}: the object changed while it was being read (its ETag is no \
                         longer {}); the two versions are not joined",
                            self.url(),
                            self.etag.as_deref().unwrap_or("?")
                        ))
                        .with_hint("run again: the new version will be read whole");
                    }
                    let what = self.url();
                    sdk_error(e, &self.store, &self.bucket, &what, &self.name, "GET").context(
                        format!("resuming a body cut short after {} bytes", self.received),
                    )
                })?;
        // The answer must be the bytes asked for, not the whole object
        // again (a store ignoring Range) or another slice.
        let remaining = self.expected.map(|n| n - self.received);
        let starts_at_from = out
            .content_range()
            .and_then(|r| r.trim().strip_prefix("bytes "))
            .is_some_and(|r| r.starts_with(&format!("{from}-")));
        let length = out.content_length().and_then(|n| u64::try_from(n).ok());
        if !starts_at_from || (remaining.is_some() && length != remaining) {
            return Err(Error::io(format!(
                "{}: asked for {range} to resume a body cut short, the store answered \
                 Content-Range {:?} with {} bytes",
                self.url(),
                out.content_range().unwrap_or("(none)"),
                length.map_or_else(|| "?".to_owned(), |n| n.to_string()),
            )));
        }
        self.body = std::mem::take(&mut out.body);
        Ok(())
    }
}

/// A PutObject's body, built again for each attempt (a file is re-read).
enum PutBody<'a> {
    Bytes(Bytes),
    File(&'a std::path::Path),
}

impl PutBody<'_> {
    async fn stream(&self, len: u64) -> Result<ByteStream> {
        match self {
            PutBody::Bytes(b) => Ok(ByteStream::from(b.clone())),
            PutBody::File(path) => ByteStream::read_from()
                .path(path)
                .length(Length::Exact(len))
                .build()
                .await
                .map_err(|e| Error::io(format!("reading spool file {}: {e}", path.display()))),
        }
    }
}

/// `409 ConditionalRequestConflict`: a concurrent conditional write of the
/// same name is in progress; the request did nothing and may be repeated.
fn is_write_conflict<E: ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    e.raw_response().is_some_and(|r| r.status().as_u16() == 409)
        && e.code() == Some("ConditionalRequestConflict")
}

/// Turn an SDK failure into one clear error line naming the object
/// (`what`), the store (role, endpoint, credentials) and the likely cause.
/// Shared by the repository backend and the bucket source.
pub fn sdk_error<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    store: &StoreInfo,
    bucket: &str,
    what: &str,
    name: &str,
    op: &str,
) -> Error {
    let (profile_flag, endpoint_flag) = store.role.flags();
    match &e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            let detail = e_display(&e);
            // Credentials that stop resolving mid-run (expired SSO, role
            // refresh failing) surface as dispatch failures too.
            if detail.to_ascii_lowercase().contains("credential") {
                return Error::io(format!(
                    "could not get AWS credentials for {store} ({}) for {op} {what}: {detail}",
                    store.credentials_from
                ))
                .with_hint(format!(
                    "check the store's credentials ({profile_flag} or the AWS environment)"
                ));
            }
            return Error::io(format!(
                "cannot reach the S3 endpoint {} of the {} ({op} {what})",
                store.endpoint_label(),
                store.role.noun()
            ))
            .with_hint(format!(
                "check the endpoint ({endpoint_flag}, the profile's endpoint_url or AWS_ENDPOINT_URL) and the network"
            ));
        }
        // The answer's body broke off (the SDK reads whole bodies of
        // listings and other small answers itself, and retried this).
        SdkError::ResponseError(_) => {
            return Error::io(format!(
                "S3 {op} {what}: the connection broke while the answer was being read, \
                 on every attempt ({})",
                e_display(&e)
            ))
            .with_hint(
                "the network or the store keeps dropping connections mid-transfer; \
                 run again later, or check proxies and load balancers on the way to the store",
            );
        }
        SdkError::ConstructionFailure(_) => {
            return Error::usage(format!(
                "cannot build the S3 request for {what} on {store}: {}",
                e_display(&e)
            ))
            .with_hint("check AWS credentials and region (environment or profile)");
        }
        _ => {}
    }
    let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
    let code = e.code().unwrap_or("").to_owned();
    let message = e.message().unwrap_or("").to_owned();
    let keys_hint = || {
        match &store.profile {
        Some(p) => format!(
            "check the key pair of profile {p} in {}; each store has its own (repository: --s3-profile, bucket store: --profile)",
            aws_files()
        ),
        None => format!(
            "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or name this store's profile with {profile_flag}"
        ),
    }
    };
    match (status, code.as_str()) {
        (_, "NoSuchBucket") => Error::io(format!("bucket {bucket} does not exist at {store}"))
            .with_hint("create the bucket, or check the bucket name / s3:// URL"),
        (404, _) | (_, "NoSuchKey") | (_, "NotFound") => {
            Error::not_found(format!("object {name} not found ({what})"))
        }
        (412, _) => Error::new(
            ErrorKind::AlreadyExists,
            format!("object {name} already exists ({what})"),
        ),
        // Not "already exists": another conditional write of this name is
        // in progress and this one did nothing (`put_single` retries it).
        (409, "ConditionalRequestConflict") => Error::io(format!(
            "S3 {op} {what}: another conditional write of this object was in progress \
             on every attempt (409 ConditionalRequestConflict)"
        ))
        .with_hint("another process keeps writing the same object; run again later"),
        // The key itself is refused: unknown key id or wrong secret.
        _ if key_refused(status, &code, &message) => Error::io(format!(
            "{store} refused access key {} ({}): {} ({op} {what})",
            store.access_key_id,
            store.credentials_from,
            format!("{code} {message}").trim()
        ))
        .with_hint(keys_hint()),
        (403, _) | (_, "AccessDenied") => Error::io(
            format!(
                "{store} denied {op} on {what} to access key {} ({}): {} {message}",
                store.access_key_id,
                store.credentials_from,
                if code.is_empty() {
                    "403 Forbidden"
                } else {
                    &code
                }
            )
            .trim_end()
            .to_owned(),
        )
        .with_hint(format!(
            "{}; or the bucket policy does not allow this key",
            keys_hint()
        )),
        (416, _) | (_, "InvalidRange") => {
            Error::integrity(format!("{what} is shorter than the range requested"))
        }
        _ if code.is_empty() => Error::io(format!(
            "S3 {op} {what} failed (HTTP {status}) on {store}: {}",
            e_display(&e)
        )),
        _ => Error::io(
            format!("S3 {op} {what} failed on {store}: {status} {code} {message}")
                .trim_end()
                .to_owned(),
        ),
    }
}

/// Whether a store refused the key pair itself (unknown key id, wrong
/// secret) rather than denying one request to a valid key. AWS and MinIO
/// say so by code; Garage answers `AccessDenied` with "No such key: GK…"
/// or "Invalid signature" in the message.
fn key_refused(status: u16, code: &str, message: &str) -> bool {
    const CODES: &[&str] = &[
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidSignature",
        "AuthorizationHeaderMalformed",
        "InvalidToken",
        "ExpiredToken",
    ];
    let m = message.to_ascii_lowercase();
    CODES.contains(&code)
        || ((status == 403 || code == "AccessDenied")
            && ["no such key", "signature", "access key"]
                .iter()
                .any(|p| m.contains(p)))
}

fn e_display(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[async_trait]
impl Backend for S3Backend {
    fn location(&self) -> String {
        match &self.store.endpoint {
            None => format!("s3://{}/{}", self.bucket, self.prefix),
            Some(endpoint) => format!("s3://{}/{} at {endpoint}", self.bucket, self.prefix),
        }
    }

    async fn put(&self, name: &str, payload: Payload, mode: PutMode) -> Result<()> {
        match payload {
            Payload::Bytes(b) => self.put_bytes(name, b, mode).await,
            Payload::File { path, len } => {
                let r = self.put_file(name, &path, len, mode).await;
                // The spool file is ours to consume, as with the local backend.
                let _ = std::fs::remove_file(&path);
                r
            }
        }
    }

    async fn get(&self, name: &str) -> Result<Bytes> {
        self.fetch(name, None).await
    }

    async fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Bytes> {
        if len == 0 {
            self.head(name).await?;
            return Ok(Bytes::new());
        }
        let data = self.fetch(name, Some((offset, len))).await?;
        if data.len() as u64 != len {
            return Err(Error::integrity(format!(
                "{} returned {} bytes for a {len}-byte range at {offset}",
                self.url(name),
                data.len()
            )));
        }
        Ok(data)
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta> {
        inc(&self.stats.head, 1);
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .send()
            .await
            .map_err(|e| self.map_err(e, name, "HEAD"))?;
        Ok(ObjectMeta {
            name: name.to_owned(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            last_modified: out.last_modified().and_then(store_time),
        })
    }

    async fn list_page(&self, prefix: &str, token: Option<String>) -> Result<ListPage> {
        inc(&self.stats.list, 1);
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.key(prefix))
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| self.map_err(e, prefix, "LIST"))?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                let name = o.key()?.strip_prefix(&self.prefix)?.to_owned();
                Some(ObjectMeta {
                    name,
                    size: o.size().unwrap_or(0).max(0) as u64,
                    last_modified: o.last_modified().and_then(store_time),
                })
            })
            .collect();
        let next = if out.is_truncated() == Some(true) {
            out.next_continuation_token().map(str::to_owned)
        } else {
            None
        };
        Ok(ListPage { objects, next })
    }

    async fn delete_many(&self, names: &[String]) -> Result<()> {
        for batch in names.chunks(1000) {
            let ids = batch
                .iter()
                .map(|n| ObjectIdentifier::builder().key(self.key(n)).build())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::io(format!("building delete request: {e}")))?;
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| Error::io(format!("building delete request: {e}")))?;
            inc(&self.stats.delete, 1);
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.map_err(e, &batch[0], "DeleteObjects"))?;
            if let Some(err) = out.errors().iter().find(|e| e.code() != Some("NoSuchKey")) {
                return Err(Error::io(format!(
                    "S3 could not delete {}: {} {}",
                    err.key().unwrap_or("?"),
                    err.code().unwrap_or(""),
                    err.message().unwrap_or("")
                )));
            }
        }
        Ok(())
    }

    fn atomic_create(&self) -> bool {
        self.atomic_create.load(Ordering::Relaxed)
    }

    async fn probe_atomic_create(&self) -> Result<bool> {
        self.probe().await
    }

    fn request_counts(&self) -> Option<RequestCounts> {
        Some(self.stats.snapshot())
    }

    /// Multipart uploads of our own pack names started before `cutoff`:
    /// left by killed processes, they cost storage until aborted (see the
    /// trait's contract). Only `<prefix>data/` is listed and only exact pack
    /// names are aborted, so that a repository with an empty prefix never
    /// touches another application's uploads or a nested repository's.
    async fn abort_unfinished_writes(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        let mut aborted = 0;
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        let data = self.key(names::DATA);
        loop {
            inc(&self.stats.list, 1);
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&data)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| self.map_err(e, names::DATA, "ListMultipartUploads"))?;
            for u in page.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                let initiated = u.initiated().and_then(store_time);
                if !abortable_upload(&self.prefix, key, initiated, cutoff) {
                    continue;
                }
                inc(&self.stats.multipart, 1);
                self.client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await
                    .map_err(|e| self.map_err(e, key, "AbortMultipartUpload"))?;
                aborted += 1;
            }
            if page.is_truncated() == Some(true) {
                key_marker = page.next_key_marker().map(str::to_owned);
                id_marker = page.next_upload_id_marker().map(str::to_owned);
                if key_marker.is_none() {
                    break;
                }
            } else {
                break;
            }
        }
        Ok(aborted)
    }
}

/// A time the store gave (its own clock).
fn store_time(t: &aws_smithy_types::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

/// Whether recovery may abort the multipart upload of `key`: it must be
/// one of our own pack names under `prefix`, and started before `cutoff`.
/// An upload whose start time the store does not give is left alone.
fn abortable_upload(
    prefix: &str,
    key: &str,
    initiated: Option<DateTime<Utc>>,
    cutoff: DateTime<Utc>,
) -> bool {
    let own = key
        .strip_prefix(prefix)
        .is_some_and(|name| names::pack_id_of(name).is_some());
    own && initiated.is_some_and(|t| t < cutoff)
}

#[cfg(test)]
mod tests {
    use super::{abortable_upload, key_refused};

    #[test]
    fn only_our_own_old_pack_uploads_are_abortable() {
        let t = |s: i64| chrono::DateTime::from_timestamp(s, 0);
        let cutoff = t(1000).unwrap();
        let pack = format!("data/ab/ab{}", "0".repeat(62));
        let nested = format!("sub/{pack}");
        assert!(abortable_upload("", &pack, t(999), cutoff));
        assert!(abortable_upload(
            "repo/",
            &format!("repo/{pack}"),
            t(1),
            cutoff
        ));
        // Too young, or of unknown age.
        assert!(!abortable_upload("", &pack, t(1000), cutoff));
        assert!(!abortable_upload("", &pack, None, cutoff));
        // Not ours: another application's key, a nested repository's pack,
        // a pack name in the wrong shard, upper-case hex, a suffix.
        assert!(!abortable_upload("", "other-app/big.bin", t(1), cutoff));
        assert!(!abortable_upload("", &nested, t(1), cutoff));
        assert!(!abortable_upload("repo/", &pack, t(1), cutoff));
        let wrong_shard = format!("data/cd/ab{}", "0".repeat(62));
        assert!(!abortable_upload("", &wrong_shard, t(1), cutoff));
        assert!(!abortable_upload("", &pack.to_uppercase(), t(1), cutoff));
        assert!(!abortable_upload("", &format!("{pack}.tmp"), t(1), cutoff));
    }

    #[test]
    fn debug_of_store_options_never_shows_the_secret_key() {
        let opts = super::S3Options {
            credentials: Some(("AKIDEXAMPLE".into(), "wJalrXUtnFEMI/K7MDENG".into())),
            ..Default::default()
        };
        let shown = format!("{opts:?}");
        assert!(shown.contains("AKIDEXAMPLE"), "{shown}");
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
    }

    #[test]
    fn refused_keys_are_told_from_denied_requests() {
        assert!(key_refused(403, "InvalidAccessKeyId", ""));
        assert!(key_refused(
            403,
            "SignatureDoesNotMatch",
            "The request signature …"
        ));
        // Garage's answers for an unknown key and a wrong secret.
        assert!(key_refused(
            403,
            "AccessDenied",
            "Forbidden: No such key: GK0123"
        ));
        assert!(key_refused(
            403,
            "AccessDenied",
            "Forbidden: Invalid signature"
        ));
        // A valid key the bucket policy does not allow.
        assert!(!key_refused(403, "AccessDenied", "Access Denied"));
        assert!(!key_refused(
            404,
            "NoSuchKey",
            "The specified key does not exist."
        ));
    }
}
