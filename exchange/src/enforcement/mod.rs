//! Enforcement on the DataFusion logical plan.
//!
//! A principal's session ([`PrincipalSession`]) holds a catalog of only the tables granted
//! for the declared purpose, each a [`GovernedTable`] exposing the visible, treated
//! columns. The [`PolicyRule`] analyzer rule then replaces every scan (subqueries, CTEs,
//! unions and self-joins included) with row filter and treatments over the raw files,
//! checks join-key and aggregate-only usage over the whole plan, and suppresses groups
//! below their minimum size. After physical planning, [`RawJoinKeys`] lets hash joins of
//! two join keys compare the raw values the keys stand for, where nothing can observe it.

mod aggregate;
mod barrier;
mod join_keys;
mod rule;
mod session;
mod size;
mod spec;
mod tables;
mod tags;
mod total;
mod violation;

pub use barrier::{BarrierExec, ExchangeQueryPlanner, PolicyBarrier};
pub use join_keys::RawJoinKeys;
pub use rule::{EnforcementReport, PolicyRule, SUBJECT, ScanUse};
pub use session::{
    AUDITOR_ROLE, CATALOG, PrincipalSession, SessionInputs, Unusable, locked_config,
};
pub use spec::{GovernedSpec, HIDDEN_ENTITY, HIDDEN_ROW, plan_row_filter};
pub use tables::{DataUnavailable, GovernedTable, RawTable};
pub use tags::Tag;
pub use total::recheck_optimized;
pub use violation::{Violation, find_violation};
