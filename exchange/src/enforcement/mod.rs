//! Enforcement on the DataFusion logical plan.
//!
//! A principal's session ([`PrincipalSession`]) holds a catalog of only the tables granted
//! for the declared purpose, each a [`GovernedTable`] exposing the visible, treated
//! columns. The [`rule::PolicyRule`] analyzer rule then replaces every scan (subqueries, CTEs,
//! unions and self-joins included) with row filter and treatments over the raw files,
//! checks join-key and aggregate-only usage over the whole plan, and suppresses groups
//! below their minimum size. Rows about residents who object to the statement's purpose
//! ([`objections`]) are excluded at source, beside the owner's row filter. After physical
//! planning (in a distributed session, after the plan is cut into stages),
//! [`join_keys::RawJoinKeys`] lets hash joins of two join keys compare the raw values the
//! keys stand for, where nothing can observe it.

mod aggregate;
mod barrier;
mod batches;
mod drift;
mod join_keys;
mod objections;
mod outputs;
mod private;
mod rule;
mod session;
mod size;
mod spec;
mod tables;
mod tags;
mod total;
mod violation;

pub(crate) use aggregate::NOISE_SCALE;
pub(crate) use barrier::{BarrierExec, PolicyBarrier, thresholds_applied};
pub(crate) use batches::BatchSplitExec;
pub(crate) use join_keys::RawJoinKeys;
pub(crate) use outputs::{guard_functions, string_concat};
pub use private::{PrivacyRuntime, privacy_applied};
pub(crate) use rule::SUBJECT;
pub(crate) use session::{AUDITOR_ROLE, CATALOG, PrincipalSession, SessionInputs, locked_config};
pub(crate) use spec::{BaseTag, HIDDEN_ENTITY, HIDDEN_ROW, plan_row_filter};
pub(crate) use tables::{DataUnavailable, GovernedTable, RawTable};
pub(crate) use total::recheck_optimized;
pub(crate) use violation::{Limit, find_in_chain, find_limit, find_violation};
