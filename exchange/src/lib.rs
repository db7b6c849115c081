//! exchange: a governed, federated SQL layer over agencies' Arrow/Parquet datasets.
//!
//! An analyst of one agency writes ordinary SQL joining several agencies' tables; before
//! anything is returned the exchange applies each owning agency's policy on the DataFusion
//! logical plan: which tables for which purpose, which rows, and which columns in which
//! desensitized form. Every statement is audited.
//!
//! # Public API
//!
//! Open an [`Exchange`] from an [`ExchangeConfig`] and run statements as a principal for a
//! purpose, streamed ([`Exchange::start`]) or collected ([`Exchange::execute`]); every call
//! is audited. Everything else is reached
//! through a few namespaces:
//!
//! - [`Exchange`], [`ExchangeConfig`], [`QueryStream`], [`QueryOutput`], [`QueryPlan`],
//!   [`QueryError`] (with
//!   [`FailureKind`]),
//!   [`OpenError`]: the entry point and what it returns;
//! - [`config`]: one configuration, `exchange.toml` ([`Settings`]), and the library's
//!   [`ExchangeConfig`] built from it;
//! - [`check`], [`CheckReport`]: validate schemas, policies and data (`exchange policy check`);
//! - [`catalog`]: agencies, datasets and column metadata (`schemas/`), PII discovery;
//! - [`policy`]: principals, purposes and grants (`policies/`);
//! - [`keys`]: the HMAC master secret and the Ed25519 signing key (`exchange keys init`);
//! - [`masking`]: masking functions, keyed pseudonyms and join keys, validators;
//! - [`audit`]: the hash-chained audit log: reading, verifying, reporting;
//! - [`export`]: signed, recipient-keyed Parquet exports with a k-anonymity guard, and
//!   their verification;
//! - [`privacy`]: exact discrete Laplace and Gaussian noise from a cryptographic source
//!   (differential privacy);
//! - [`federation`]: agency nodes and the hub (`exchange node`, `[federation]`), and
//!   reconciling their audit logs;
//! - [`server`]: the exchange over Arrow Flight SQL (`exchange serve`), with authentication;
//! - [`demo`]: the demo city's generator and showcase;
//! - [`tuning`]: the DataFusion settings the exchange runs with;
//! - [`cli_main`]: the `exchange` command line.
//!
//! The enforcement itself (analyzer rule, barrier node, fail-closed scans, per-principal
//! sessions) and the engine's statement handling are private: the only way to data is
//! through [`Exchange`].

mod cli;
mod enforcement;
mod engine;
mod text;

pub mod audit;
pub mod catalog;
pub mod config;
pub mod demo;
pub mod distributed;
pub mod export;
pub mod federation;
pub mod keys;
pub mod masking;
pub mod policy;
pub mod privacy;
pub mod server;
pub mod tuning;

pub use cli::main as cli_main;
pub use config::{ExchangeConfig, Settings};
pub use engine::{
    Budget, CheckReport, CountingAllocator, Described, Exchange, FailureKind, Finding, Governance,
    OpenError, QueryError, QueryOutput, QueryPlan, QueryStream, ReloadError, ReloadTrigger,
    Reloaded, Severity, VisibleColumn, check, live_bytes, result_digest, version_of,
};
