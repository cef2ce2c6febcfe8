//! `S3Store`: any S3-compatible service (AWS, MinIO, Ceph, B2, R2, Wasabi) through aws-sdk-s3.
//!
//! Create-only puts use `If-None-Match: *`; listing pages through ListObjectsV2; retries with
//! backoff and jitter on throttling, 5xx and connection errors are the SDK's standard retry
//! mode, configured here and nowhere else. Objects are at most a chunk (16 MiB) or a manifest,
//! so a single PutObject with a known length carries each one; multipart upload is not needed.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Intercept, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime as AwsDateTime};
use aws_sdk_s3::types::{ObjectLockMode, StorageClass};
use chrono::{DateTime, Utc};

use super::{ObjectMeta, PutMode, Store, validate_key};
use crate::error::{Error, Result};

/// Object Lock applied to every object written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    /// COMPLIANCE cannot be shortened or removed by anyone; GOVERNANCE by privileged users.
    pub compliance: bool,
    pub days: u32,
}

/// How long a request may take before it is given up. A hung endpoint (accepts connections,
/// never answers) must fail a run in minutes, not after every attempt's read timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S3Timeouts {
    /// Establishing a connection (TCP and TLS), per attempt.
    pub connect: Duration,
    /// Waiting for the first byte of an answer, per attempt.
    pub read: Duration,
    /// One request with all its retries and backoff: the most a single object costs.
    pub operation: Duration,
}

impl Default for S3Timeouts {
    fn default() -> Self {
        // A chunk is at most 16 MiB: three minutes carries it over a link of ~100 KB/s.
        S3Timeouts {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(30),
            operation: Duration::from_secs(180),
        }
    }
}

/// How to reach a bucket.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/`).
    pub prefix: String,
    /// Custom endpoint (MinIO, Ceph…); `AWS_ENDPOINT_URL` otherwise.
    pub endpoint: Option<String>,
    /// `AWS_REGION` otherwise; `us-east-1` if neither.
    pub region: Option<String>,
    /// Path-style addressing (`LIFEBOAT_S3_PATH_STYLE=true` too).
    pub path_style: bool,
    pub storage_class: Option<String>,
    /// Static credentials; the standard AWS chain (env, profile, container/instance) otherwise.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Attempts per request, retries included (default 8).
    pub max_attempts: u32,
    pub timeouts: S3Timeouts,
    pub object_lock: Option<ObjectLock>,
    /// SigV4-sign uploaded bodies (one SHA-256 pass over every byte sent). Off by default:
    /// every object is authenticated by AES-GCM and checked by its content address when read,
    /// and the SDK's CRC32 checksum still guards the transfer.
    pub sign_payload: bool,
}

impl S3Options {
    /// Parses `s3://bucket/prefix`.
    pub fn from_url(url: &str) -> Result<S3Options> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| Error::Usage(format!("{url} is not an s3:// URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Usage(format!("{url}: no bucket")));
        }
        Ok(S3Options {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            path_style: std::env::var("LIFEBOAT_S3_PATH_STYLE")
                .is_ok_and(|v| v == "true" || v == "1"),
            max_attempts: 8,
            ..Default::default()
        })
    }
}

#[derive(Debug, Default)]
struct AttemptCounter {
    attempts: AtomicU64,
}

/// Counts HTTP attempts (first tries and retries alike).
#[derive(Debug, Clone)]
struct CountAttempts(Arc<AttemptCounter>);

impl Intercept for CountAttempts {
    fn name(&self) -> &'static str {
        "lifeboat-attempt-counter"
    }

    fn read_before_attempt(
        &self,
        _ctx: &aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _rc: &aws_sdk_s3::config::RuntimeComponents,
        _cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> std::result::Result<(), aws_sdk_s3::error::BoxError> {
        self.0.attempts.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A bucket (and prefix) as a store.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    opts: S3Options,
    attempts: Arc<AttemptCounter>,
    requests: Arc<AtomicU64>,
    read: Arc<AtomicU64>,
}

impl S3Store {
    /// Builds the client (no request is made).
    pub async fn new(opts: S3Options) -> Result<S3Store> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
        if let Some(r) = opts
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
        {
            loader = loader.region(Region::new(r));
        } else {
            loader = loader.region(Region::new("us-east-1"));
        }
        if let Some(e) = &opts.endpoint {
            loader = loader.endpoint_url(e);
        }
        if let (Some(id), Some(secret)) = (&opts.access_key_id, &opts.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret,
                None,
                None,
                "lifeboat-config",
            ));
        }
        let shared = loader.load().await;
        let attempts = Arc::new(AttemptCounter::default());
        let conf = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(opts.path_style)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(opts.max_attempts.max(1))
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(20)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(opts.timeouts.connect)
                    .read_timeout(opts.timeouts.read)
                    .operation_attempt_timeout(opts.timeouts.operation)
                    .operation_timeout(opts.timeouts.operation)
                    .build(),
            )
            .interceptor(CountAttempts(attempts.clone()))
            .build();
        Ok(S3Store {
            client: Client::from_conf(conf),
            opts,
            attempts,
            requests: Arc::default(),
            read: Arc::default(),
        })
    }

    /// The options in use.
    pub fn options(&self) -> &S3Options {
        &self.opts
    }

    /// Creates the bucket (tests, `init` on a fresh server), with Object Lock if asked.
    pub async fn create_bucket(&self, object_lock: bool) -> Result<()> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        self.client
            .create_bucket()
            .bucket(&self.opts.bucket)
            .object_lock_enabled_for_bucket(object_lock)
            .send()
            .await
            .map_err(|e| self.err("create bucket", "", started, e))?;
        Ok(())
    }

    fn attempts_beyond_first(&self) -> u64 {
        self.attempts
            .attempts
            .load(Ordering::Relaxed)
            .saturating_sub(self.requests.load(Ordering::Relaxed))
    }

    fn full_key(&self, key: &str) -> Result<String> {
        validate_key(key)?;
        Ok(if self.opts.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.opts.prefix)
        })
    }

    fn err<E>(
        &self,
        op: &'static str,
        key: &str,
        started: Instant,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = e.raw_response().map(|r| r.status().as_u16());
        let code = e.code().map(str::to_string);
        match (status, code.as_deref()) {
            (Some(404), _) | (_, Some("NoSuchKey")) | (_, Some("NotFound")) => Error::NotFound {
                key: key.to_string(),
                location: self.location(),
            },
            (Some(412), _) | (_, Some("PreconditionFailed")) => Error::AlreadyExists {
                key: key.to_string(),
                location: self.location(),
            },
            (Some(403), _) if op == "delete" && self.opts.object_lock.is_some() => {
                Error::Retained {
                    key: key.to_string(),
                    location: self.location(),
                }
            }
            _ => Error::Store {
                location: self.location(),
                op,
                key: key.to_string(),
                source: std::io::Error::other(self.describe(&e, key, started)),
            },
        }
    }

    /// One line for an SDK error: what happened, where (endpoint, bucket, key), and how long
    /// the request tried, instead of the SDK's nested Debug output.
    fn describe<E>(
        &self,
        e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
        key: &str,
        started: Instant,
    ) -> String
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let t = &self.opts.timeouts;
        let cause = match e {
            SdkError::TimeoutError(_) => format!(
                "no answer in time (operation_timeout {}s)",
                t.operation.as_secs()
            ),
            SdkError::DispatchFailure(d) => {
                let what = if d.is_timeout() {
                    format!(
                        "timed out (connect_timeout {}s, read_timeout {}s)",
                        t.connect.as_secs(),
                        t.read.as_secs()
                    )
                } else if d.is_io() {
                    "connection failed".to_string()
                } else {
                    "request not sent".to_string()
                };
                format!("{what}: {}", causes(e))
            }
            SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
                let status = e
                    .raw_response()
                    .map(|r| format!("HTTP {}", r.status().as_u16()))
                    .unwrap_or_else(|| "an answer".into());
                match (e.code(), e.message()) {
                    (Some(c), Some(m)) => format!("{status} {c}: {m}"),
                    (Some(c), None) => format!("{status} {c}"),
                    _ => format!("{status} that could not be read: {}", causes(e)),
                }
            }
            _ => causes(e),
        };
        let endpoint = self
            .opts
            .endpoint
            .clone()
            .unwrap_or_else(|| "the AWS endpoint for the region".into());
        let full = self.full_key(key).unwrap_or_else(|_| key.to_string());
        format!(
            "{cause} (endpoint {endpoint}, bucket {}, key {}; gave up after {:.1}s, max_attempts {})",
            self.opts.bucket,
            if full.is_empty() { "-" } else { &full },
            started.elapsed().as_secs_f64(),
            self.opts.max_attempts.max(1)
        )
    }

    async fn body(&self, key: &str, body: ByteStream) -> Result<Vec<u8>> {
        let data = body.collect().await.map_err(|e| Error::Store {
            location: self.location(),
            op: "get",
            key: key.to_string(),
            source: std::io::Error::other(e),
        })?;
        let data = data.into_bytes().to_vec();
        self.read.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }

    fn lock_until(&self) -> Option<AwsDateTime> {
        self.opts.object_lock.map(|l| {
            let until = Utc::now() + chrono::Duration::days(i64::from(l.days));
            AwsDateTime::from_secs(until.timestamp())
        })
    }

    fn lock_mode(&self) -> Option<ObjectLockMode> {
        self.opts.object_lock.map(|l| {
            if l.compliance {
                ObjectLockMode::Compliance
            } else {
                ObjectLockMode::Governance
            }
        })
    }

    /// Checks the bucket answers, and has Object Lock enabled when configured.
    async fn verify_bucket(&self) -> Result<()> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        self.client
            .head_bucket()
            .bucket(&self.opts.bucket)
            .send()
            .await
            .map_err(|e| match self.err("head bucket", "", started, e) {
                Error::NotFound { .. } => Error::BucketNotFound {
                    bucket: self.opts.bucket.clone(),
                    location: self.location(),
                },
                other => other,
            })?;
        if self.opts.object_lock.is_some() {
            self.requests.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let cfg = self
                .client
                .get_object_lock_configuration()
                .bucket(&self.opts.bucket)
                .send()
                .await;
            if let Err(e @ (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_))) = cfg {
                return Err(self.err("get object lock configuration", "", started, e));
            }
            let enabled = matches!(&cfg, Ok(c) if c.object_lock_configuration().and_then(|o| o.object_lock_enabled()).is_some());
            if !enabled {
                return Err(Error::Config {
                    path: self.location(),
                    detail: "object_lock is configured but the bucket does not have Object Lock enabled (it can only be enabled when the bucket is created, with versioning)".into(),
                });
            }
        }
        Ok(())
    }

    /// Retention end of an object (Object Lock), if any.
    async fn get_retention(&self, key: &str) -> Result<Option<DateTime<Utc>>> {
        let k = self.full_key(key)?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        match self
            .client
            .get_object_retention()
            .bucket(&self.opts.bucket)
            .key(&k)
            .send()
            .await
        {
            Ok(r) => Ok(r
                .retention()
                .and_then(|r| r.retain_until_date())
                .and_then(|d| DateTime::from_timestamp(d.secs(), 0))),
            Err(e) => match self.err("get retention", key, started, e) {
                Error::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Extends an object's retention to the configured horizon (never shortens it).
    async fn put_retention(&self, key: &str) -> Result<()> {
        let (Some(mode), Some(until)) = (self.lock_mode(), self.lock_until()) else {
            return Ok(());
        };
        let k = self.full_key(key)?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        self.client
            .put_object_retention()
            .bucket(&self.opts.bucket)
            .key(&k)
            .retention(
                aws_sdk_s3::types::ObjectLockRetention::builder()
                    .mode(mode.as_str().into())
                    .retain_until_date(until)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.err("extend retention", key, started, e))?;
        Ok(())
    }
}

/// The innermost distinct messages of an error chain, joined: the SDK nests "dispatch
/// failure", "io error", "connection refused"; the operator needs the last ones.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut chain: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        let s = c.to_string();
        if !s.is_empty() && !chain.contains(&s) {
            chain.push(s);
        }
        cur = c.source();
    }
    let generic = [
        "dispatch failure",
        "io error",
        "other",
        "service error",
        "response error",
    ];
    let specific: Vec<&String> = chain
        .iter()
        .filter(|p| !generic.contains(&p.as_str()))
        .filter(|p| !chain.iter().any(|q| q != *p && q.contains(p.as_str())))
        .collect();
    if specific.is_empty() {
        return chain.join(": ");
    }
    specific
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(": ")
}

fn to_chrono(d: Option<&AwsDateTime>) -> Option<DateTime<Utc>> {
    d.and_then(|d| DateTime::from_timestamp(d.secs(), d.subsec_nanos()))
}

#[async_trait]
impl Store for S3Store {
    fn location(&self) -> String {
        if self.opts.prefix.is_empty() {
            format!("s3://{}", self.opts.bucket)
        } else {
            format!("s3://{}/{}", self.opts.bucket, self.opts.prefix)
        }
    }

    fn retries(&self) -> u64 {
        self.attempts_beyond_first()
    }

    fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    async fn verify(&self) -> Result<()> {
        self.verify_bucket().await
    }

    fn retention_days(&self) -> Option<u32> {
        self.opts.object_lock.map(|l| l.days)
    }

    async fn extend_retention(&self, key: &str) -> Result<()> {
        self.put_retention(key).await
    }

    async fn retention_until(&self, key: &str) -> Result<Option<DateTime<Utc>>> {
        self.get_retention(key).await
    }

    async fn put(&self, key: &str, data: Vec<u8>, mode: PutMode) -> Result<()> {
        let k = self.full_key(key)?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let mut req = self
            .client
            .put_object()
            .bucket(&self.opts.bucket)
            .key(&k)
            .content_length(data.len() as i64)
            .body(ByteStream::from(data));
        if mode == PutMode::CreateOnly {
            req = req.if_none_match("*");
        }
        if let Some(sc) = &self.opts.storage_class {
            req = req.storage_class(StorageClass::from(sc.as_str()));
        }
        // Data, WAL and keys are locked; coordination objects (markers, protection marks) must
        // stay deletable, or a finished backup's marker would block GC for the retention period.
        let data = ["chunks/", "packs/", "index/", "snapshots/", "keys/", "wal/"]
            .iter()
            .any(|p| key.starts_with(p))
            || key == "config";
        if let (Some(m), Some(u), true) = (self.lock_mode(), self.lock_until(), data) {
            req = req.object_lock_mode(m).object_lock_retain_until_date(u);
        }
        let sent = if self.opts.sign_payload {
            req.send().await
        } else {
            req.customize().disable_payload_signing().send().await
        };
        sent.map_err(|e| self.err("put", key, started, e))?;
        Ok(())
    }

    /// Every put is durable when the server answers: nothing to batch.
    async fn put_batched(&self, key: &str, data: Vec<u8>, mode: PutMode) -> Result<()> {
        self.put(key, data, mode).await
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// Uploads are atomic on the server: a killed put leaves nothing (an unfinished multipart
    /// upload is invisible to listings; a bucket lifecycle rule aborts them).
    async fn sweep_incomplete(
        &self,
        _older_than: std::time::Duration,
        _dry_run: bool,
    ) -> Result<(usize, u64)> {
        Ok((0, 0))
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let k = self.full_key(key)?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let out = self
            .client
            .get_object()
            .bucket(&self.opts.bucket)
            .key(&k)
            .send()
            .await
            .map_err(|e| self.err("get", key, started, e))?;
        self.body(key, out.body).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        if range.end <= range.start {
            self.head(key).await?;
            return Ok(Vec::new());
        }
        let k = self.full_key(key)?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let res = self
            .client
            .get_object()
            .bucket(&self.opts.bucket)
            .key(&k)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await;
        let out = match res {
            Ok(o) => o,
            // 416: the range starts past the end; the contract clamps it to empty.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) => {
                self.head(key).await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(self.err("get", key, started, e)),
        };
        self.body(key, out.body).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let k = self.full_key(key)?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let out = self
            .client
            .head_object()
            .bucket(&self.opts.bucket)
            .key(&k)
            .send()
            .await
            .map_err(|e| self.err("head", key, started, e))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            modified: to_chrono(out.last_modified()),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let full = if self.opts.prefix.is_empty() {
            prefix.to_string()
        } else {
            format!("{}/{prefix}", self.opts.prefix)
        };
        let strip = if self.opts.prefix.is_empty() {
            0
        } else {
            self.opts.prefix.len() + 1
        };
        let mut out = Vec::new();
        let mut token = None;
        loop {
            self.requests.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.opts.bucket)
                .prefix(&full)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| self.err("list", prefix, started, e))?;
            for o in page.contents() {
                if let Some(k) = o.key()
                    && k.len() >= strip
                {
                    out.push(ObjectMeta {
                        key: k[strip..].to_string(),
                        size: o.size().unwrap_or(0).max(0) as u64,
                        modified: to_chrono(o.last_modified()),
                    });
                }
            }
            token = page.next_continuation_token().map(str::to_string);
            if token.is_none() || page.is_truncated() != Some(true) {
                break;
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let k = self.full_key(key)?;
        if self.opts.object_lock.is_some() {
            // Object Lock buckets are versioned: a plain delete only adds a delete marker and
            // frees nothing. Delete every version; the server refuses locked ones.
            self.requests.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let versions = self
                .client
                .list_object_versions()
                .bucket(&self.opts.bucket)
                .prefix(&k)
                .send()
                .await
                .map_err(|e| self.err("list versions", key, started, e))?;
            let ids: Vec<String> = versions
                .versions()
                .iter()
                .filter(|v| v.key() == Some(k.as_str()))
                .filter_map(|v| v.version_id().map(str::to_string))
                .chain(
                    versions
                        .delete_markers()
                        .iter()
                        .filter(|m| m.key() == Some(k.as_str()))
                        .filter_map(|m| m.version_id().map(str::to_string)),
                )
                .collect();
            for v in ids {
                self.requests.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                if let Err(e) = self
                    .client
                    .delete_object()
                    .bucket(&self.opts.bucket)
                    .key(&k)
                    .version_id(&v)
                    .send()
                    .await
                {
                    match self.err("delete", key, started, e) {
                        Error::NotFound { .. } => {}
                        other => return Err(other),
                    }
                }
            }
            return Ok(());
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        match self
            .client
            .delete_object()
            .bucket(&self.opts.bucket)
            .key(&k)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match self.err("delete", key, started, e) {
                Error::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }
}
