//! Files that do not hold what their dataset declares fail the scan.
//!
//! DataFusion adapts each file to the table's schema: a declared column a file lacks is read
//! as NULLs, a list is cast to a string. For governed data that turns drift into silent
//! wrong answers presented as complete (a file of one prefix missing `caller_phone` gave
//! NULL phones) and, with a location pointing at another agency's objects, served another
//! table's rows under this table's grant (review 24 F3/F4). So a file lacking a declared
//! column, or holding it as a nested value where a flat one is declared (or the reverse),
//! fails the scan as unreadable data; other type differences are DataFusion's casts.

use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
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

fn nested(t: &DataType) -> bool {
    t.is_nested()
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
            let Ok(found) = physical_file_schema.field_with_name(field.name()) else {
                return Err(unreadable(
                    "a data file lacks a declared column (the operator should run `exchange policy check`)",
                ));
            };
            if nested(found.data_type()) != nested(field.data_type()) {
                return Err(unreadable(
                    "a data file holds a declared column with another shape (list, struct or map) than declared (the operator should run `exchange policy check`)",
                ));
            }
        }
        DefaultPhysicalExprAdapterFactory.create(logical_file_schema, physical_file_schema)
    }
}
