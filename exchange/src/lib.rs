//! exchange: a governed, federated SQL layer over agencies' Arrow/Parquet datasets.
//!
//! An analyst of one agency writes ordinary SQL joining several agencies' tables; before
//! anything is returned the exchange applies each owning agency's policy on the DataFusion
//! logical plan: which tables for which purpose, which rows, and which columns in which
//! desensitized form. Every statement is audited.
//!
//! - [`catalog`]: agencies, datasets and column metadata (`schemas/`).
//! - [`policy`]: principals, purposes and grants (`policies/`), and the checker.
//! - [`keys`]: the HMAC master secret and the Ed25519 signing key (`exchange keys init`).
//! - [`masking`]: masking functions, keyed pseudonyms and join keys.
//! - [`enforcement`]: per-principal sessions and the policy analyzer rule.
//! - [`audit`]: the hash-chained audit log and `audit.events`.
//! - [`export`]: signed, recipient-keyed Parquet exports with a k-anonymity guard.
//! - [`engine`]: [`Exchange`], running a statement as a principal, audited.
//! - [`server`]: the exchange over Arrow Flight SQL (`exchange serve`), with authentication.
//! - [`demo`]: the demo city's generator and showcase.
//! - [`cli`]: the `exchange` command line.
//! - [`text`]: text shown to people, with terminal controls escaped.

pub mod audit;
pub mod catalog;
pub mod cli;
pub mod demo;
pub mod enforcement;
pub mod engine;
pub mod export;
pub mod keys;
pub mod masking;
pub mod policy;
pub mod server;
pub mod text;
pub mod tuning;

pub use engine::{Exchange, ExchangeConfig, OpenError, QueryError, QueryOutput};
