//! The S3 client: credentials from fluent-plugin-s3's parameters and sections, the endpoint,
//! checksums, and how S3 errors are classified for the retry driver.
//!
//! Credentials are looked up as fluent-plugin-s3 does, first match wins:
//! `<assume_role_credentials>` (on top of the static keys or the default chain), static
//! `aws_key_id`/`aws_sec_key`, `<web_identity_credentials>`, `<instance_profile_credentials>`
//! (ECS when `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`/`_FULL_URI` is set, else IMDSv2),
//! `<shared_credentials>`, then the SDK's default chain (environment, shared profile, web
//! identity, ECS, IMDSv2). Every provider sits behind the SDK's identity cache, which refreshes
//! temporary credentials before they expire.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, SharedCredentialsProvider,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::config::{ConfigError, Element};

/// How the output finds its credentials.
#[derive(Debug, Clone, PartialEq)]
pub enum CredentialSource {
    /// `aws_key_id` / `aws_sec_key`.
    Static {
        /// Access key id.
        key_id: String,
        /// Secret access key.
        secret: String,
    },
    /// `<shared_credentials>`.
    Shared {
        /// `path` of the credentials file (default `~/.aws/credentials`).
        path: Option<String>,
        /// `profile_name`.
        profile: Option<String>,
    },
    /// `<assume_role_credentials>`.
    AssumeRole {
        /// `role_arn`.
        role_arn: String,
        /// `role_session_name`.
        session_name: String,
        /// `external_id`.
        external_id: Option<String>,
        /// `policy` (JSON).
        policy: Option<String>,
        /// `duration_seconds`.
        duration: Option<u64>,
        /// `sts_region`.
        sts_region: Option<String>,
        /// `sts_endpoint_url`.
        sts_endpoint: Option<String>,
        /// Where the credentials that assume the role come from.
        base: Box<CredentialSource>,
    },
    /// `<web_identity_credentials>`.
    WebIdentity {
        /// `role_arn`.
        role_arn: String,
        /// `role_session_name`.
        session_name: String,
        /// `web_identity_token_file`.
        token_file: String,
    },
    /// `<instance_profile_credentials>`.
    InstanceProfile {
        /// `retries`.
        retries: Option<u32>,
        /// `http_open_timeout` (seconds).
        open_timeout: Option<f64>,
        /// `http_read_timeout` (seconds).
        read_timeout: Option<f64>,
    },
    /// The SDK's default chain.
    Default,
}

impl CredentialSource {
    /// Reads the credential parameters and sections of an s3 `<match>`.
    pub fn configure(section: &Element) -> Result<CredentialSource, ConfigError> {
        let single = |name| super::super::single_section(section, name);
        let key_id = section.string("aws_key_id");
        let secret = section.string("aws_sec_key");
        let statics = match (key_id, secret) {
            (Some(key_id), Some(secret)) => Some(CredentialSource::Static { key_id, secret }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::at(
                    &section.pos_of("aws_key_id"),
                    "aws_key_id is set but aws_sec_key is not: set both, or neither",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::at(
                    &section.pos_of("aws_sec_key"),
                    "aws_sec_key is set but aws_key_id is not: set both, or neither",
                ))
            }
        };
        let required = |s: &Element, key: &str| {
            s.string(key)
                .ok_or_else(|| ConfigError::at(&s.pos, format!("'{key}' parameter is required")))
        };
        if let Some(s) = single("assume_role_credentials")? {
            let duration = s.integer("duration_seconds")?.map(|d| d.max(0) as u64);
            return Ok(CredentialSource::AssumeRole {
                role_arn: required(s, "role_arn")?,
                session_name: required(s, "role_session_name")?,
                external_id: s.string("external_id"),
                policy: s.string("policy"),
                duration,
                sts_region: s.string("sts_region"),
                sts_endpoint: s.string("sts_endpoint_url"),
                base: Box::new(statics.unwrap_or(CredentialSource::Default)),
            });
        }
        if let Some(s) = statics {
            return Ok(s);
        }
        if let Some(s) = single("web_identity_credentials")? {
            let _ = s.string("policy");
            let _ = s.integer("duration_seconds")?;
            let _ = s.string("sts_region");
            return Ok(CredentialSource::WebIdentity {
                role_arn: required(s, "role_arn")?,
                session_name: required(s, "role_session_name")?,
                token_file: required(s, "web_identity_token_file")?,
            });
        }
        if let Some(s) = single("instance_profile_credentials")? {
            let _ = s.string("ip_address");
            let _ = s.integer("port")?;
            return Ok(CredentialSource::InstanceProfile {
                retries: s.integer("retries")?.map(|r| r.clamp(0, 100) as u32),
                open_timeout: s.float("http_open_timeout")?,
                read_timeout: s.float("http_read_timeout")?,
            });
        }
        if let Some(s) = single("shared_credentials")? {
            return Ok(CredentialSource::Shared {
                path: s.string("path"),
                profile: s.string("profile_name"),
            });
        }
        Ok(CredentialSource::Default)
    }
}

/// Everything needed to build the client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `s3_region`.
    pub region: String,
    /// `s3_endpoint`.
    pub endpoint: Option<String>,
    /// Path-style requests (`force_path_style`, or an endpoint that is an IP address or
    /// `localhost`, where virtual-hosted requests cannot work).
    pub path_style: bool,
    /// Credentials.
    pub credentials: CredentialSource,
    /// Whether requests carry a flexible checksum (`checksum_algorithm`).
    pub checksums: bool,
}

/// The HTTP client every AWS call goes through: rustls with the `ring` provider.
fn http_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// Builds the credentials provider of `source`.
// aws-config names the profile-file types by their old aliases; the new ones live in a crate
// sluice does not depend on directly.
#[allow(deprecated)]
async fn provider(
    source: &CredentialSource,
    region: &Region,
    http: &aws_sdk_s3::config::SharedHttpClient,
) -> SharedCredentialsProvider {
    let base_config = || {
        aws_config::defaults(BehaviorVersion::latest())
            .region(region.clone())
            .http_client(http.clone())
    };
    let provider_config = || {
        aws_config::provider_config::ProviderConfig::default()
            .with_region(Some(region.clone()))
            .with_http_client(http.clone())
    };
    match source {
        CredentialSource::Static { key_id, secret } => SharedCredentialsProvider::new(
            Credentials::new(key_id, secret, None, None, "sluice-static"),
        ),
        CredentialSource::Shared { path, profile } => {
            let mut files = aws_config::profile::profile_file::ProfileFiles::builder()
                .include_default_config_file(true);
            files = match path {
                Some(p) => files.with_file(
                    aws_config::profile::profile_file::ProfileFileKind::Credentials,
                    p,
                ),
                None => files.include_default_credentials_file(true),
            };
            let mut b = aws_config::profile::ProfileFileCredentialsProvider::builder()
                .configure(&provider_config())
                .profile_files(files.build());
            if let Some(p) = profile {
                b = b.profile_name(p);
            }
            SharedCredentialsProvider::new(b.build())
        }
        CredentialSource::AssumeRole {
            role_arn,
            session_name,
            external_id,
            policy,
            duration,
            sts_region,
            sts_endpoint,
            base,
        } => {
            let base_provider = Box::pin(provider(base, region, http)).await;
            let mut loader = base_config().credentials_provider(base_provider);
            if let Some(r) = sts_region {
                loader = loader.region(Region::new(r.clone()));
            }
            if let Some(e) = sts_endpoint {
                loader = loader.endpoint_url(e);
            }
            let sdk = loader.load().await;
            let mut b = aws_config::sts::AssumeRoleProvider::builder(role_arn)
                .session_name(session_name)
                .configure(&sdk);
            if let Some(x) = external_id {
                b = b.external_id(x);
            }
            if let Some(p) = policy {
                b = b.policy(p);
            }
            if let Some(d) = duration {
                b = b.session_length(Duration::from_secs(*d));
            }
            SharedCredentialsProvider::new(b.build().await)
        }
        CredentialSource::WebIdentity {
            role_arn,
            session_name,
            token_file,
        } => SharedCredentialsProvider::new(
            aws_config::web_identity_token::WebIdentityTokenCredentialsProvider::builder()
                .configure(&provider_config())
                .static_configuration(aws_config::web_identity_token::StaticConfiguration {
                    web_identity_token_file: token_file.into(),
                    role_arn: role_arn.clone(),
                    session_name: session_name.clone(),
                })
                .build(),
        ),
        CredentialSource::InstanceProfile {
            retries,
            open_timeout,
            read_timeout,
        } => {
            let ecs = std::env::var_os("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
                || std::env::var_os("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some();
            if ecs {
                let mut b = aws_config::ecs::EcsCredentialsProvider::builder()
                    .configure(&provider_config());
                if let Some(t) = open_timeout {
                    b = b.connect_timeout(Duration::from_secs_f64(*t));
                }
                if let Some(t) = read_timeout {
                    b = b.read_timeout(Duration::from_secs_f64(*t));
                }
                SharedCredentialsProvider::new(b.build())
            } else {
                let mut c = aws_config::imds::Client::builder().configure(&provider_config());
                if let Some(r) = retries {
                    c = c.max_attempts(r + 1);
                }
                if let Some(t) = open_timeout {
                    c = c.connect_timeout(Duration::from_secs_f64(*t));
                }
                if let Some(t) = read_timeout {
                    c = c.read_timeout(Duration::from_secs_f64(*t));
                }
                SharedCredentialsProvider::new(
                    aws_config::imds::credentials::ImdsCredentialsProvider::builder()
                        .configure(&provider_config())
                        .imds_client(c.build())
                        .build(),
                )
            }
        }
        CredentialSource::Default => SharedCredentialsProvider::new(
            aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                .configure(provider_config())
                .build()
                .await,
        ),
    }
}

/// Builds the S3 client.
pub async fn build(cfg: &ClientConfig) -> aws_sdk_s3::Client {
    let http = http_client();
    let region = Region::new(cfg.region.clone());
    let credentials = provider(&cfg.credentials, &region, &http).await;
    let mut b = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(region)
        .http_client(http)
        .credentials_provider(credentials)
        .force_path_style(cfg.path_style)
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .operation_attempt_timeout(Duration::from_secs(120))
                .build(),
        )
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(3))
        .request_checksum_calculation(if cfg.checksums {
            RequestChecksumCalculation::WhenSupported
        } else {
            RequestChecksumCalculation::WhenRequired
        });
    if let Some(e) = &cfg.endpoint {
        b = b.endpoint_url(e);
    }
    aws_sdk_s3::Client::from_conf(b.build())
}

/// Whether an endpoint's host is an IP address or `localhost` (virtual-hosted addressing
/// would put the bucket name in front of it, which cannot resolve).
pub fn endpoint_needs_path_style(endpoint: &str) -> bool {
    let rest = endpoint
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(endpoint);
    let authority = rest.split('/').next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        return v6.contains(']');
    } else {
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority)
    };
    host == "localhost" || host.parse::<std::net::Ipv4Addr>().is_ok()
}

/// How an S3 error is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Timeouts, connection errors, 5xx, 429: retry with backoff.
    Transient,
    /// 403, expired or invalid credentials: refresh and retry, loudly.
    Auth,
    /// Requests that can never succeed (invalid key, unknown KMS key, bad storage class).
    Permanent,
    /// Anything else: retried, never dropped.
    Other,
}

/// What went wrong with one request, in a form the upload logic can match on.
#[derive(Debug, Clone)]
pub struct S3Error {
    /// The S3 error code (`NoSuchUpload`, `PreconditionFailed`…), or a description of a
    /// transport failure.
    pub code: String,
    /// HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// The message.
    pub message: String,
    /// The class.
    pub class: ErrorClass,
}

impl std::fmt::Display for S3Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "{} (HTTP {s}): {}", self.code, self.message),
            None => write!(f, "{}: {}", self.code, self.message),
        }
    }
}

impl S3Error {
    /// Whether S3 said the object or upload does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status == Some(404)
            || matches!(
                self.code.as_str(),
                "NoSuchKey" | "NotFound" | "NoSuchUpload"
            )
    }

    /// Whether a conditional write found the key taken.
    pub fn is_precondition_failed(&self) -> bool {
        self.status == Some(412) || self.code == "PreconditionFailed"
    }

    /// Whether the endpoint does not implement a feature we asked for (a conditional write on
    /// an older S3-compatible store).
    pub fn is_not_implemented(&self) -> bool {
        self.status == Some(501) || self.code == "NotImplemented"
    }
}

/// Error codes that retrying can never fix.
const PERMANENT_CODES: &[&str] = &[
    "InvalidArgument",
    "KeyTooLongError",
    "InvalidStorageClass",
    "InvalidEncryptionAlgorithmError",
    "KMS.NotFoundException",
    "KMS.DisabledException",
    "InvalidBucketName",
    "MetadataTooLarge",
    "InvalidTag",
];

/// Classifies an SDK error.
pub fn classify<E, R>(e: &SdkError<E, R>) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + HttpStatus + 'static,
{
    let transport = |code: &str, message: String| S3Error {
        code: code.into(),
        status: None,
        message,
        class: ErrorClass::Transient,
    };
    match e {
        SdkError::TimeoutError(_) => transport("Timeout", error_chain(e)),
        SdkError::DispatchFailure(_) => transport("ConnectionError", error_chain(e)),
        SdkError::ConstructionFailure(_) => S3Error {
            code: "RequestConstruction".into(),
            status: None,
            message: error_chain(e),
            class: ErrorClass::Other,
        },
        SdkError::ResponseError(r) => S3Error {
            code: "ResponseError".into(),
            status: Some(r.raw().status()),
            message: error_chain(e),
            class: ErrorClass::Transient,
        },
        SdkError::ServiceError(s) => {
            let status = s.raw().status();
            let err = s.err();
            let code = err.code().unwrap_or("Unknown").to_string();
            let message = err
                .message()
                .filter(|m| !m.trim().is_empty())
                .map(str::to_string)
                .unwrap_or_else(|| format!("no message from the server ({})", error_chain(err)));
            let class = class_of(status, &code);
            S3Error {
                code,
                status: Some(status),
                message,
                class,
            }
        }
        _ => S3Error {
            code: "Unknown".into(),
            status: None,
            message: error_chain(e),
            class: ErrorClass::Other,
        },
    }
}

/// The class of an S3 error response.
pub fn class_of(status: u16, code: &str) -> ErrorClass {
    let auth_codes = [
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "TokenRefreshRequired",
        "InvalidToken",
    ];
    if status == 403 || auth_codes.contains(&code) {
        ErrorClass::Auth
    } else if status >= 500 || status == 429 || status == 408 || code == "SlowDown" {
        ErrorClass::Transient
    } else if PERMANENT_CODES.contains(&code) {
        ErrorClass::Permanent
    } else {
        ErrorClass::Other
    }
}

/// The HTTP status of a raw response.
pub trait HttpStatus {
    /// The status code.
    fn status(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }
}

/// An error and its sources, joined with `: `.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_style_for_ip_endpoints() {
        assert!(endpoint_needs_path_style("http://127.0.0.1:9000"));
        assert!(endpoint_needs_path_style("http://localhost:9000/"));
        assert!(endpoint_needs_path_style("https://[::1]:9000"));
        assert!(!endpoint_needs_path_style(
            "https://s3.eu-west-1.amazonaws.com"
        ));
        assert!(!endpoint_needs_path_style("https://minio.internal:9000"));
    }

    #[test]
    fn error_classes() {
        assert_eq!(class_of(503, "SlowDown"), ErrorClass::Transient);
        assert_eq!(class_of(500, "InternalError"), ErrorClass::Transient);
        assert_eq!(class_of(429, "TooManyRequests"), ErrorClass::Transient);
        assert_eq!(class_of(403, "AccessDenied"), ErrorClass::Auth);
        assert_eq!(class_of(400, "ExpiredToken"), ErrorClass::Auth);
        assert_eq!(class_of(400, "InvalidArgument"), ErrorClass::Permanent);
        assert_eq!(
            class_of(400, "KMS.NotFoundException"),
            ErrorClass::Permanent
        );
        assert_eq!(class_of(404, "NoSuchBucket"), ErrorClass::Other);
        assert_eq!(class_of(409, "OperationAborted"), ErrorClass::Other);
    }
}
