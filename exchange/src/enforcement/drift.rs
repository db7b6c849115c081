//! Files that do not hold what their dataset declares fail the scan.
//!
//! DataFusion adapts each file to the table's schema: a declared column a file lacks is read
//! as NULLs, a list is cast to a string. For governed data that turns drift into silent
//! wrong answers presented as complete (a file of one prefix missing `caller_phone` gave
//! NULL phones) and, with a location pointing at another agency's objects, served another
//! table's rows under this table's grant (review 24 F3/F4); an integer where a timestamp is
//! declared read as microseconds since 1970, a duplicated column served the stray copy
//! (review 24b N4). So a file lacking a declared column, holding it twice, or holding it
//! in a type that `exchange policy check` would report ([`crate::catalog::column_holds`])
//! fails the scan as unreadable data: the check and the scan agree.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result};
use datafusion::physical_expr_adapter::{
    DefaultPhysicalExprAdapterFactory, PhysicalExprAdapter, PhysicalExprAdapterFactory,
};

use super::DataUnavailable;

/// The adapter factory of a governed table's files: strict on presence and shape.
#[derive(Debug)]
pub(crate) struct DeclaredColumns {
    /// `agency.table`, for the error.
    pub(crate) table: String,
}

impl PhysicalExprAdapterFactory for DeclaredColumns {
    fn create(
        &self,
        logical_file_schema: SchemaRef,
        physical_file_schema: SchemaRef,
    ) -> Result<Arc<dyn PhysicalExprAdapter>> {
        let unreadable = |cause: &str| {
            DataFusionError::External(Box::new(DataUnavailable {
                table: self.table.clone(),
                cause: cause.to_string(),
            }))
        };
        for field in logical_file_schema.fields() {
            // Columns are not named: the table's owner declared them, the analyst may not
            // see them all.
            let mut found = physical_file_schema
                .fields()
                .iter()
                .filter(|f| f.name() == field.name());
            let (Some(found), None) = (found.next(), found.next()) else {
                return Err(unreadable(
                    "a data file lacks a declared column or holds it twice (the operator should run `exchange policy check`)",
                ));
            };
            if !crate::catalog::column_holds(field.data_type(), found.data_type()) {
                return Err(unreadable(
                    "a data file holds a declared column in another type than declared (the operator should run `exchange policy check`)",
                ));
            }
        }
        DefaultPhysicalExprAdapterFactory.create(logical_file_schema, physical_file_schema)
    }
}
