//! `a || b` as a guarded function.
//!
//! String concatenation is an operator, evaluated by arrow's kernel without any bound:
//! `WITH t AS (SELECT repeat('x', 250000000) a) SELECT a || a || ... FROM t` made gigabytes
//! from one bounded call. [`super::GuardOutputs`] plans every `||` of two strings (after type
//! coercion, so both sides have one type) as a call of [`StringConcat`], which does what the
//! operator did (NULL if either side is) after bounding its output like every built-in.

use std::sync::Arc;

use arrow::compute::kernels::concat_elements::concat_elements_dyn;
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

use super::{admit, admit_constant, estimate, made_bytes};
use crate::engine::Budget;

/// Name of the function `||` becomes (shown by EXPLAIN; not callable by analysts: it is in
/// no session's registry).
const NAME: &str = "string_concat";

/// The function `||` of strings is planned as.
pub(super) fn udf(budget: Budget) -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::new_from_impl(StringConcat {
        signature: Signature::any(2, Volatility::Immutable),
        budget,
    }))
}

/// Whether `||` of two values of this type is planned as [`StringConcat`].
pub(super) fn concatenable(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
    )
}

/// `a || b` of two values of one string or binary type, bounded like every built-in.
#[derive(Debug, PartialEq, Eq, Hash)]
struct StringConcat {
    signature: Signature,
    budget: Budget,
}

impl ScalarUDFImpl for StringConcat {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [l, r] if l == r && concatenable(l) => Ok(l.clone()),
            _ => plan_err!("{NAME} takes two values of one string type"),
        }
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let types: Vec<DataType> = args
            .arg_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let nullable = args.arg_fields.iter().any(|f| f.is_nullable());
        Ok(Arc::new(Field::new(
            NAME,
            self.return_type(&types)?,
            nullable,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let bytes = args
            .args
            .iter()
            .map(|a| estimate::broadcast_bytes(a, rows))
            .fold(0u128, u128::saturating_add);
        admit_constant("string concatenation (||)", &args.args, || {
            Ok(args
                .args
                .iter()
                .map(|a| estimate::broadcast_bytes(a, 1))
                .fold(0u128, u128::saturating_add))
        })?;
        admit("string concatenation (||)", bytes, self.budget)?;
        let scalars = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let [l, r] = args.args.as_slice() else {
            return plan_err!("{NAME} takes two values");
        };
        let n = if scalars { 1 } else { rows };
        let out = concat_elements_dyn(l.to_array(n)?.as_ref(), r.to_array(n)?.as_ref())?;
        let out = if scalars {
            ColumnarValue::Scalar(ScalarValue::try_from_array(out.as_ref(), 0)?)
        } else {
            ColumnarValue::Array(out)
        };
        admit("string concatenation (||)", made_bytes(&out), self.budget)?;
        Ok(out)
    }
}
