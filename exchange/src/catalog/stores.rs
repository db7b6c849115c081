//! Where datasets live: local paths and `file://` URLs, S3-compatible object stores
//! (`s3://bucket/prefix`), and HTTP(S) servers (`https://host/path`, read-only).
//!
//! Each agency reaches its bucket with its own credentials, from the environment
//! (`EXCHANGE_<AGENCY>_ACCESS_KEY_ID`, `..._SECRET_ACCESS_KEY`, optionally
//! `..._SESSION_TOKEN`) or from a credentials file named in `[stores.<agency>]` of
//! `exchange.toml`, never from schemas/ or policies/. Secrets stay inside object_store's
//! client (whose debug output masks them); errors name the agency and the variable or file,
//! never a value. Listing, range reads and retries are object_store's and DataFusion's.
//!
//! Two agencies may keep datasets in one bucket under different credentials, so a remote
//! dataset is scanned through a store registered under a name of its own agency
//! (`s3://<agency>.<bucket>`), which only the session's registry knows.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::execution::runtime_env::RuntimeEnv;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::http::HttpBuilder;
use object_store::{ClientOptions, RetryConfig};
use serde::{Deserialize, Serialize};
use url::Url;

/// `[stores.<agency>]`: how an agency's S3-compatible store is reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// The service's URL, e.g. `http://127.0.0.1:9000` (default: AWS S3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region (default `us-east-1`).
    pub region: String,
    /// Path-style requests (`endpoint/bucket/key`), as most S3-compatible services expect
    /// (default true; false: virtual-hosted style, `bucket.endpoint/key`).
    pub path_style: bool,
    /// A TOML file with `access_key_id`, `secret_access_key` and optionally
    /// `session_token`, readable by its owner only. The environment takes precedence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// A public bucket: requests are not signed and no credentials are needed.
    pub anonymous: bool,
    /// Seconds one request may take (default 30).
    pub timeout_secs: u64,
    /// Retries of a failed request (default 3).
    pub max_retries: usize,
    /// MiB of ranges read from an S3 store kept in memory, keyed by object and ETag and
    /// revalidated by each statement's listing (default 256; 0: no cache).
    pub cache_mb: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: "us-east-1".into(),
            path_style: true,
            credentials_file: None,
            anonymous: false,
            timeout_secs: 30,
            max_retries: 3,
            cache_mb: 256,
        }
    }
}

/// `store` behind a cache of the settings' size, if any.
fn cached(store: Arc<dyn ObjectStore>, settings: &StoreSettings) -> Arc<dyn ObjectStore> {
    let bytes = usize::try_from(settings.cache_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
    if bytes == 0 {
        store
    } else {
        Arc::new(super::object_cache::CachedStore::new(store, bytes))
    }
}

/// Why a dataset's store cannot be reached. Never carries a secret.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The location is not a URL the exchange can read.
    #[error("location {location}: {message}")]
    Location {
        /// The dataset's location, as declared.
        location: String,
        /// What is wrong with it.
        message: String,
    },
    /// No credentials for the agency's bucket.
    #[error(
        "no credentials for agency {agency}'s object store: set {prefix}ACCESS_KEY_ID and {prefix}SECRET_ACCESS_KEY, or credentials_file in [stores.{agency}] of exchange.toml (anonymous = true for a public bucket)"
    )]
    NoCredentials {
        /// The agency.
        agency: String,
        /// The environment variables' prefix.
        prefix: String,
    },
    /// The credentials file is unusable.
    #[error("credentials file {path} of agency {agency}: {message}")]
    CredentialsFile {
        /// The agency.
        agency: String,
        /// The file.
        path: PathBuf,
        /// What is wrong (never its content).
        message: String,
    },
    /// object_store refused the configuration.
    #[error("object store of agency {agency}: {message}")]
    Client {
        /// The agency.
        agency: String,
        /// object_store's words.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

/// The object stores of every agency, made once each and shared by all sessions (they
/// hold connection pools).
#[derive(Debug, Default)]
pub struct Stores {
    settings: BTreeMap<String, StoreSettings>,
    made: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    /// A number per (agency, HTTP server), naming its store.
    servers: Mutex<HashMap<String, usize>>,
}

/// The environment variables' prefix of an agency's credentials.
fn env_prefix(agency: &str) -> String {
    let name: String = agency
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("EXCHANGE_{name}_")
}

/// The location with any `user:password@` replaced, for messages.
fn without_userinfo(location: &str) -> String {
    let Some((scheme, rest)) = location.split_once("://") else {
        return location.to_string();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://…@{}", &rest[at + 1..]),
        None => location.to_string(),
    }
}

/// Refuse locations whose text and whose meaning differ: URL parsing resolves `..` (also
/// spelt `%2e%2e`) and drops credentials, queries and fragments, so
/// `s3://city/hotline/../police/` read the police's objects as hotline's (review 24 F4).
fn confined(location: &str) -> Result<(), String> {
    let Some((_, rest)) = location.split_once("://") else {
        return Ok(());
    };
    // URL parsing drops tabs and newlines: `.\t.` becomes `..` (review 24b N3).
    if rest.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("control or whitespace characters are not allowed in a location".into());
    }
    let lower = rest.to_ascii_lowercase();
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err("credentials in a location are not allowed (use [stores.<agency>])".into());
    }
    if rest.contains('?') || rest.contains('#') {
        return Err("a location has no query or fragment".into());
    }
    if rest.contains('\\')
        || lower.contains("%2e")
        || lower.contains("%2f")
        || lower.contains("%5c")
    {
        return Err("encoded dots, slashes or backslashes are not allowed in a location".into());
    }
    if rest
        .split('/')
        .any(|segment| segment == ".." || segment == ".")
    {
        return Err("`.` and `..` segments are not allowed in a location".into());
    }
    Ok(())
}

impl Stores {
    /// The stores of `settings` (agency -> settings; agencies not named get the defaults).
    pub fn new(settings: BTreeMap<String, StoreSettings>) -> Self {
        Self {
            settings,
            made: Mutex::new(HashMap::new()),
            servers: Mutex::new(HashMap::new()),
        }
    }

    /// Make `location` (a dataset's resolved location) of `agency` readable through
    /// `runtime`; the location to scan. Local locations are returned as they are.
    pub fn register(
        &self,
        runtime: &RuntimeEnv,
        agency: &str,
        location: &str,
    ) -> Result<String, StoreError> {
        if !location.contains("://") || location.starts_with("file://") {
            return Ok(location.to_string());
        }
        let bad = |message: &str| StoreError::Location {
            location: without_userinfo(location),
            message: message.to_string(),
        };
        confined(location).map_err(|m| bad(&m))?;
        let url = Url::parse(location).map_err(|e| bad(&e.to_string()))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("names no bucket or host"))?
            .to_string();
        let (key, scan) = match url.scheme() {
            "s3" => {
                // A name of the agency's own: the same bucket under other credentials is
                // another store.
                let key = format!("s3://{agency}.{host}");
                let scan = format!("{key}{}", url.path());
                (key, scan)
            }
            "http" | "https" => {
                // Also a name of the agency's own (a number per server, as a host name
                // cannot end in a number label): one agency's timeouts and retries are not
                // another's.
                let base = match url.port() {
                    Some(p) => format!("{}://{host}:{p}", url.scheme()),
                    None => format!("{}://{host}", url.scheme()),
                };
                let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
                let next = servers.len();
                let n = *servers.entry(format!("{agency} {base}")).or_insert(next);
                let key = format!("{}://{agency}.server{n}.exchange", url.scheme());
                let scan = format!("{key}{}", url.path());
                (key, scan)
            }
            other => {
                return Err(bad(&format!(
                    "the scheme {other}:// is not supported (local paths, file://, s3://, http(s)://)"
                )));
            }
        };
        let store = {
            let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
            match made.get(&key) {
                Some(s) => Arc::clone(s),
                None => {
                    let s = self.make(agency, &url, &host)?;
                    made.insert(key.clone(), Arc::clone(&s));
                    s
                }
            }
        };
        let registered = Url::parse(&key).map_err(|e| bad(&e.to_string()))?;
        runtime.register_object_store(&registered, store);
        Ok(scan)
    }

    fn make(
        &self,
        agency: &str,
        url: &Url,
        host: &str,
    ) -> Result<Arc<dyn ObjectStore>, StoreError> {
        let defaults = StoreSettings::default();
        let settings = self.settings.get(agency).unwrap_or(&defaults);
        let client_error = |e: object_store::Error| StoreError::Client {
            agency: agency.to_string(),
            message: super::store_client::describe(&e),
        };
        let timeout = Duration::from_secs(settings.timeout_secs.max(1));
        let connector = |https_only: bool| super::store_client::NoRedirects {
            timeout,
            connect_timeout: Duration::from_secs(settings.timeout_secs.clamp(1, 10)),
            https_only,
        };
        let retry = RetryConfig {
            max_retries: settings.max_retries,
            ..RetryConfig::default()
        };
        let mut options = ClientOptions::new()
            .with_timeout(Duration::from_secs(settings.timeout_secs.max(1)))
            .with_connect_timeout(Duration::from_secs(settings.timeout_secs.clamp(1, 10)));
        if url.scheme() != "s3" {
            options = options.with_allow_http(url.scheme() == "http");
            let base = match url.port() {
                Some(p) => format!("{}://{host}:{p}", url.scheme()),
                None => format!("{}://{host}", url.scheme()),
            };
            let store = HttpBuilder::new()
                .with_url(base)
                .with_http_connector(connector(url.scheme() == "https"))
                .with_client_options(options)
                .with_retry(retry)
                .build()
                .map_err(client_error)?;
            // Not cached: HTTP servers' ETags often come from size and time, not content.
            return Ok(Arc::new(store));
        }
        let endpoint_http = settings
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(host)
            .with_region(settings.region.clone())
            .with_virtual_hosted_style_request(!settings.path_style)
            .with_allow_http(endpoint_http)
            .with_client_options(options.with_allow_http(endpoint_http))
            .with_http_connector(connector(!endpoint_http))
            .with_retry(retry);
        if let Some(e) = &settings.endpoint {
            builder = builder.with_endpoint(e.clone());
        }
        if settings.anonymous {
            builder = builder.with_skip_signature(true);
        } else {
            let (id, secret, token) = self.credentials(agency, settings)?;
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
            if let Some(t) = token {
                builder = builder.with_token(t);
            }
        }
        Ok(cached(
            Arc::new(builder.build().map_err(client_error)?),
            settings,
        ))
    }

    /// The agency's credentials: from the environment, else from its credentials file.
    fn credentials(
        &self,
        agency: &str,
        settings: &StoreSettings,
    ) -> Result<(String, String, Option<String>), StoreError> {
        let prefix = env_prefix(agency);
        let var = |name: &str| {
            std::env::var(format!("{prefix}{name}"))
                .ok()
                .filter(|v| !v.is_empty())
        };
        if let (Some(id), Some(secret)) = (var("ACCESS_KEY_ID"), var("SECRET_ACCESS_KEY")) {
            return Ok((id, secret, var("SESSION_TOKEN")));
        }
        let Some(path) = &settings.credentials_file else {
            return Err(StoreError::NoCredentials {
                agency: agency.to_string(),
                prefix,
            });
        };
        let file_error = |message: String| StoreError::CredentialsFile {
            agency: agency.to_string(),
            path: path.clone(),
            message,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| file_error(e.to_string()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(file_error(format!(
                    "is readable by others (mode {:o}): chmod 600 it",
                    mode & 0o777
                )));
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        // Never the parser's message: it may quote the file.
        let c: CredentialsFile = toml::from_str(&text).map_err(|_| {
            file_error(
                "is not a credentials file (TOML with access_key_id and secret_access_key, optionally session_token)"
                    .into(),
            )
        })?;
        Ok((c.access_key_id, c.secret_access_key, c.session_token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_locations_pass_and_unknown_schemes_are_refused() {
        let stores = Stores::default();
        let rt = RuntimeEnv::default();
        assert_eq!(
            stores.register(&rt, "police", "/data/p.parquet").unwrap(),
            "/data/p.parquet"
        );
        let e = stores
            .register(&rt, "police", "ftp://host/x.parquet")
            .unwrap_err();
        assert!(e.to_string().contains("ftp:// is not supported"), "{e}");
    }

    #[test]
    fn an_agency_without_credentials_is_told_where_to_put_them() {
        let stores = Stores::default();
        let rt = RuntimeEnv::default();
        let e = stores
            .register(&rt, "no-such-agency", "s3://bucket/prefix/")
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("EXCHANGE_NO_SUCH_AGENCY_ACCESS_KEY_ID"),
            "{text}"
        );
    }

    #[test]
    fn each_agency_scans_its_bucket_through_a_store_of_its_own() {
        let mut settings = BTreeMap::new();
        for a in ["police", "health"] {
            settings.insert(
                a.to_string(),
                StoreSettings {
                    anonymous: true,
                    endpoint: Some("http://127.0.0.1:9".into()),
                    ..StoreSettings::default()
                },
            );
        }
        let stores = Stores::new(settings);
        let rt = RuntimeEnv::default();
        let p = stores.register(&rt, "police", "s3://shared/p/").unwrap();
        let h = stores.register(&rt, "health", "s3://shared/h/").unwrap();
        assert_eq!(p, "s3://police.shared/p/");
        assert_eq!(h, "s3://health.shared/h/");
        assert!(rt.object_store(url_of("s3://police.shared")).is_ok());
        assert!(rt.object_store(url_of("s3://health.shared")).is_ok());
    }

    fn url_of(s: &str) -> datafusion::execution::object_store::ObjectStoreUrl {
        datafusion::execution::object_store::ObjectStoreUrl::parse(s).unwrap()
    }

    #[test]
    fn a_credentials_file_readable_by_others_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("police.toml");
        std::fs::write(&path, "access_key_id = 'AKIDSECRET'\nsecret = 'x'\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let settings = StoreSettings {
            credentials_file: Some(path.clone()),
            ..StoreSettings::default()
        };
        let stores = Stores::new(BTreeMap::from([("police".to_string(), settings)]));
        let rt = RuntimeEnv::default();
        let e = stores
            .register(&rt, "police", "s3://b/p/")
            .unwrap_err()
            .to_string();
        assert!(e.contains("readable by others"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = stores
            .register(&rt, "police", "s3://b/p/")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a credentials file"), "{e}");
        assert!(!e.contains("AKIDSECRET"), "{e}");
    }
}
