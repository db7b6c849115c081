//! How the exchange talks to object stores, and what it says when they fail.
//!
//! - No redirects: object_store's HTTP client follows them to any host, taking along the
//!   S3 session token (only `Authorization` is dropped) and reading that host's data as the
//!   dataset's (review 24 F2). A store that redirects fails the read instead.
//! - Errors by kind only: object_store's error text carries the service's response body,
//!   and an S3 `SignatureDoesNotMatch` body quotes the access key id and the canonical
//!   request with the session token in it (review 24 F1). Analysts, audit records and
//!   `exchange policy check` are told the kind of failure and the object's path, never the
//!   service's words.

use std::time::Duration;

use object_store::client::{HttpClient, HttpConnector};
use object_store::{ClientOptions, Error as StoreFailure};

/// Builds reqwest clients that never follow a redirect.
#[derive(Debug, Clone)]
pub(super) struct NoRedirects {
    pub(super) timeout: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) https_only: bool,
}

impl HttpConnector for NoRedirects {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .https_only(self.https_only)
            .user_agent(concat!("exchange/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StoreFailure::Generic {
                store: "HTTP client",
                // reqwest's builder error names the setting, never a request or secret.
                source: Box::new(std::io::Error::other(e.to_string())),
            })?;
        Ok(HttpClient::new(client))
    }
}

/// What an object store failure may say: its kind and the object's path, never the
/// service's response.
pub fn describe(e: &StoreFailure) -> String {
    match e {
        StoreFailure::NotFound { path, .. } => format!("{path} was not found"),
        StoreFailure::PermissionDenied { path, .. } => {
            format!(
                "the store denied access to {path} (permission denied: check the agency's credentials and bucket policy)"
            )
        }
        StoreFailure::Unauthenticated { path, .. } => {
            format!("the store did not accept the agency's credentials for {path}")
        }
        StoreFailure::InvalidPath { .. } => "an object path is invalid".into(),
        StoreFailure::NotSupported { .. } | StoreFailure::NotImplemented { .. } => {
            "the store does not support a request the scan needs".into()
        }
        StoreFailure::Precondition { path, .. } | StoreFailure::NotModified { path, .. } => {
            format!("{path} changed while it was read")
        }
        StoreFailure::Generic { store, .. } => format!(
            "the {store} store failed (unreachable, timed out, redirected or an error response; its words are not repeated as they can quote credentials)"
        ),
        _ => "the store failed".into(),
    }
}

/// The first object store failure in an error's chain, described.
pub fn describe_in(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = current {
        if let Some(s) = x.downcast_ref::<StoreFailure>() {
            return Some(describe(s));
        }
        if let Some(d) = x.downcast_ref::<datafusion::error::DataFusionError>()
            && let datafusion::error::DataFusionError::ObjectStore(s) = d
        {
            return Some(describe(s));
        }
        // io::Error's source() skips the error it wraps (object_store's writers wrap theirs).
        if let Some(io) = x.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(s) = describe_in(inner)
        {
            return Some(s);
        }
        current = x.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_never_repeat_the_service_words() {
        let body =
            "<Error><AWSAccessKeyId>AKIDSECRET</AWSAccessKeyId>x-amz-security-token:TOKEN</Error>";
        let source = || -> Box<dyn std::error::Error + Send + Sync> {
            Box::new(std::io::Error::other(body))
        };
        for e in [
            StoreFailure::Generic {
                store: "S3",
                source: source(),
            },
            StoreFailure::PermissionDenied {
                path: "police/residents.parquet".into(),
                source: source(),
            },
            StoreFailure::Unauthenticated {
                path: "p".into(),
                source: source(),
            },
            StoreFailure::NotFound {
                path: "p".into(),
                source: source(),
            },
        ] {
            let wrapped = datafusion::error::DataFusionError::External(Box::new(
                parquet::errors::ParquetError::External(Box::new(e)),
            ));
            let said = describe_in(&wrapped).unwrap();
            assert!(!said.contains("AKID") && !said.contains("TOKEN"), "{said}");
        }
    }
}
