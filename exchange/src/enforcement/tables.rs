//! The two table providers of the exchange.
//!
//! [`GovernedTable`] is what a principal's catalog holds: its schema is the visible,
//! treated schema, and it cannot be scanned: the policy rule replaces every scan of it
//! with row filter and treatments over a [`RawTable`]. A plan that still scans a
//! `GovernedTable` at execution time has escaped enforcement and fails.
//!
//! [`RawTable`] reads the agency's files and applies the owner's row filter. It accepts
//! filter pushdown only for predicates over columns the principal sees plain, so no predicate
//! on a treated column reaches Parquet statistics or page indexes, and it reports no
//! statistics, so no COUNT/MIN/MAX is answered from file metadata.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, DataFusionError, Result, TableReference, internal_err};
use datafusion::datasource::TableProvider;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExecBuilder;

use super::spec::GovernedSpec;
use crate::catalog::{DataFormat, Dataset};

/// Name of the row number a [`RawTable`] offers after the dataset's columns.
pub const ROW_NUMBER: &str = "__exchange_row";

/// A table's data cannot be read (missing or unreadable files). The message names the
/// table and the cause, never a value.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the data of table {table} cannot be read: {cause}; the operator should run `exchange policy check`"
)]
pub struct DataUnavailable {
    /// `agency.table`.
    pub table: String,
    /// What is wrong, in words.
    pub cause: String,
}

/// A table as one principal may see it. Never scanned directly.
#[derive(Debug)]
pub struct GovernedTable {
    spec: Arc<GovernedSpec>,
}

impl GovernedTable {
    /// The provider over a resolved grant.
    pub fn new(spec: Arc<GovernedSpec>) -> Self {
        Self { spec }
    }

    /// The resolved grant.
    pub fn spec(&self) -> &Arc<GovernedSpec> {
        &self.spec
    }
}

#[async_trait]
impl TableProvider for GovernedTable {
    fn schema(&self) -> SchemaRef {
        self.spec.visible_schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Reaching here means a plan bypassed the policy rule: fail closed.
        internal_err!("governed table scanned without enforcement")
    }
}

/// The agency's files, read under the exchange's control.
///
/// The owner's row filter is applied here, inside the scan, under a [`BarrierExec`]: no
/// analyst predicate (nor a dynamic join filter) can be ordered before it or reach the file
/// scan, so none is ever evaluated on (and can raise an error about) a row the principal
/// may not see, and none reaches Parquet statistics or page indexes.
///
/// [`BarrierExec`]: super::barrier::BarrierExec
#[derive(Debug)]
pub struct RawTable {
    inner: ListingTable,
    /// The dataset's columns, then the row number [`ROW_NUMBER`].
    schema: SchemaRef,
    /// `agency.table (location)` for error messages.
    name: String,
    /// The local file or directory, checked at every scan: a missing file is an error,
    /// never an empty table.
    local: Option<std::path::PathBuf>,
    /// Qualifier of the row filter's columns.
    table_ref: TableReference,
    /// Raw columns whose values the principal sees unchanged.
    pushable: BTreeSet<String>,
    /// The owner's row filter over raw columns.
    row_filter: Option<Expr>,
    /// The agency's register of objections, for the statement's purpose.
    objections: Option<Box<super::objections::Objections>>,
}

impl RawTable {
    /// Open the dataset's files at `location` with its declared schema.
    pub fn try_new(
        dataset: &Dataset,
        location: &str,
        pushable: BTreeSet<String>,
        row_filter: Option<Expr>,
    ) -> Result<Self> {
        let mut location = location.to_string();
        if !location.contains("://")
            && std::path::Path::new(&location).is_dir()
            && !location.ends_with('/')
        {
            location.push('/');
        }
        let local = if location.contains("://") {
            location
                .strip_prefix("file://")
                .map(std::path::PathBuf::from)
        } else {
            Some(std::path::PathBuf::from(&location))
        };
        let url = ListingTableUrl::parse(&location)?;
        let options = match dataset.format {
            DataFormat::Parquet => ListingOptions::new(Arc::new(ParquetFormat::default()))
                .with_file_extension(".parquet"),
            DataFormat::Csv => {
                ListingOptions::new(Arc::new(CsvFormat::default().with_has_header(true)))
                    .with_file_extension(".csv")
            }
        };
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(dataset.arrow_schema())
            .with_expr_adapter_factory(Arc::new(super::drift::DeclaredColumns {
                table: dataset.qualified_name(),
            }));
        let data = dataset.arrow_schema();
        let mut fields: Vec<_> = data.fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(ROW_NUMBER, DataType::UInt64, false)));
        Ok(Self {
            inner: ListingTable::try_new(config)?,
            schema: Arc::new(Schema::new(fields)),
            name: format!("{} ({})", dataset.qualified_name(), dataset.location),
            local,
            table_ref: TableReference::partial(dataset.agency.clone(), dataset.name.clone()),
            pushable,
            row_filter,
            objections: None,
        })
    }

    /// The same files, with rows about residents who object excluded.
    pub fn with_objections(
        mut self,
        objections: Option<Box<super::objections::Objections>>,
    ) -> Self {
        self.objections = objections;
        self
    }

    /// The local file or directory of the data, if local.
    pub fn local_path(&self) -> Option<&std::path::Path> {
        self.local.as_deref()
    }

    /// Raw columns the row filter and the register of objections read (for the audit record).
    pub fn row_filter_columns(&self) -> Vec<String> {
        let mut columns: Vec<String> = self
            .row_filter
            .as_ref()
            .map(|f| f.column_refs().iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        for c in self.objections.iter().flat_map(|o| o.column_names()) {
            if !columns.contains(&c) {
                columns.push(c);
            }
        }
        columns
    }

    /// The scan, unless its location listed no file at all (a directory or prefix emptied,
    /// a bucket or credentials pointing elsewhere): an error, never an empty table.
    fn found(
        &self,
        scan: Arc<dyn ExecutionPlan>,
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if limit != Some(0)
            && scan
                .downcast_ref::<datafusion::physical_plan::empty::EmptyExec>()
                .is_some()
        {
            return Err(DataFusionError::External(Box::new(DataUnavailable {
                table: self.table_ref.to_string(),
                cause: "no data files at its location".into(),
            })));
        }
        Ok(scan)
    }

    /// Whether an analyst's predicate may reach the file scan (for pruning only): built-in,
    /// deterministic expressions over columns the principal sees plain.
    fn may_push(&self, filter: &Expr) -> bool {
        let plain_columns = filter
            .column_refs()
            .iter()
            .all(|c| self.pushable.contains(c.name()));
        let mut treated = false;
        let _ = filter.apply(|e| {
            if let Expr::ScalarFunction(f) = e
                && (f.func.inner().is::<crate::masking::MaskUdf>()
                    || f.func.inner().is::<crate::masking::TokenUdf>())
            {
                treated = true;
            }
            Ok(TreeNodeRecursion::Continue)
        });
        plain_columns && !treated && !filter.is_volatile()
    }
}

#[async_trait]
impl TableProvider for RawTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.may_push(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    fn statistics(&self) -> Option<datafusion::common::Statistics> {
        None
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some(path) = &self.local
            && !path.exists()
        {
            return Err(DataFusionError::External(Box::new(DataUnavailable {
                table: self.table_ref.to_string(),
                cause: "its data file is missing".into(),
            })));
        }
        // The row number is made by the barrier, not read from the files.
        let schema = self.inner.schema();
        let width = schema.fields().len();
        let all: Vec<usize> = (0..=width).collect();
        let projection = projection.unwrap_or(&all);
        let row_at = projection.iter().position(|i| *i == width);
        let requested: Vec<usize> = projection.iter().copied().filter(|i| *i != width).collect();
        let barrier = |plan: Arc<dyn ExecutionPlan>| match row_at {
            Some(at) => super::barrier::BarrierExec::wrap_numbered(plan, at, ROW_NUMBER),
            None => Ok(super::barrier::BarrierExec::wrap(plan)),
        };
        // Re-check: only what we accepted may reach the file scan.
        let mut pushed: Vec<Expr> = filters
            .iter()
            .filter(|f| self.may_push(f))
            .cloned()
            .collect();
        let excluded = match &self.objections {
            Some(o) => o.condition(state).await?,
            None => None,
        };
        if self.row_filter.is_none() && excluded.is_none() {
            let scan = self
                .inner
                .scan(state, Some(&requested), &pushed, limit)
                .await?;
            return barrier(self.found(scan, limit)?);
        }
        let mut read = requested.clone();
        for e in self.row_filter.iter().chain(excluded.iter()) {
            for c in e.column_refs() {
                let idx = schema.index_of(c.name())?;
                if !read.contains(&idx) {
                    read.push(idx);
                }
            }
        }
        // The row filter also prunes row groups; the limit cannot apply before it.
        if let Some(row_filter) = &self.row_filter {
            pushed.push(row_filter.clone());
        }
        let input = self.found(
            self.inner.scan(state, Some(&read), &pushed, None).await?,
            None,
        )?;
        let read_schema = Arc::new(schema.project(&read)?);
        let df_schema = DFSchema::try_from_qualified_schema(self.table_ref.clone(), &read_schema)?;
        // Never echo another agency's filter (nor who objects) in an error.
        let physical = |e: &Expr, what: &str| {
            state.create_physical_expr(e.clone(), &df_schema).map_err(|_| {
                DataFusionError::Execution(format!(
                    "the {what} of table {} cannot be applied; the owning agency must fix its policy",
                    self.name
                ))
            })
        };
        let row_filter = self
            .row_filter
            .as_ref()
            .map(|f| physical(f, "row filter"))
            .transpose()?;
        let excluded = excluded
            .as_ref()
            .map(|e| physical(e, "register of objections"))
            .transpose()?;
        let predicate = match (row_filter, excluded) {
            (Some(a), Some(b)) => {
                Arc::new(datafusion::physical_expr::expressions::BinaryExpr::new(
                    a,
                    datafusion::logical_expr::Operator::And,
                    b,
                ))
            }
            (Some(p), None) | (None, Some(p)) => p,
            (None, None) => return internal_err!("a filtered scan without a filter"),
        };
        let filter = FilterExecBuilder::new(predicate, input)
            .apply_projection(Some((0..requested.len()).collect()))?
            .build()?;
        barrier(Arc::new(filter))
    }
}
