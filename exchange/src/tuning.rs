//! Execution settings chosen by measurement (`cargo bench --bench governed`), in one place.
//!
//! Every principal's session starts from [`apply`]; the security settings of
//! `enforcement::locked_config` are applied after it and cannot be loosened here. The
//! benchmark's `raw` and `hand` engines use the same settings (its `df-defaults` engine
//! does not), so that the exchange's ratio to them measures the enforcement, not the
//! tuning; `cargo bench --bench governed -- --set key=value` tries a setting on them first.
//!
//! | setting | value | measured (2 cores, TPC-H SF 1, 3-way join-aggregate, raw / hand-written) |
//! |---|---|---|
//! | `datafusion.optimizer.repartition_joins` | false | 0.93 s -> 0.47 s / 1.26 s -> 0.79 s |
//!
//! Without join repartitioning, hash joins build one shared table from the (smaller)
//! build side and probe it from every partition, instead of hash-partitioning both sides
//! first: on two cores the repartitioning costs more than it parallelises. The governed
//! scans' estimated row counts (see `enforcement::BarrierExec`) let the planner pick the
//! smaller side to build.
//!
//! Left at DataFusion's defaults, not measured yet: target partitions (the number of cores)
//! and the batch size (8192).

use datafusion::prelude::SessionConfig;

/// The exchange's execution settings on top of DataFusion's defaults.
pub fn apply(config: SessionConfig) -> SessionConfig {
    config.with_repartition_joins(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn joins_are_not_repartitioned() {
        let config = super::apply(datafusion::prelude::SessionConfig::new());
        assert!(!config.options().optimizer.repartition_joins);
    }
}
