//! `privacy_budget('agency.table')`: the epsilon the session's principal has left on a table it
//! reads under differential privacy, this period (a volatile function: read at each call).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use arrow::datatypes::DataType;
use chrono::NaiveDate;
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::policy::Privacy;
use crate::privacy::Ledger;

/// The function's name in SQL.
pub const BUDGET_FN: &str = "privacy_budget";

#[derive(Debug)]
struct BudgetFn {
    ledger: Arc<Ledger>,
    principal: String,
    today: NaiveDate,
    /// The session's tables under differential privacy.
    budgets: BTreeMap<String, Arc<Privacy>>,
    signature: Signature,
}

impl PartialEq for BudgetFn {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.ledger, &other.ledger)
            && self.principal == other.principal
            && self.today == other.today
            && self.budgets == other.budgets
    }
}

impl Eq for BudgetFn {}

impl std::hash::Hash for BudgetFn {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.principal.hash(state);
        self.today.hash(state);
        self.budgets.hash(state);
    }
}

/// The function for one principal's session.
pub fn budget_fn(
    ledger: Arc<Ledger>,
    principal: &str,
    today: NaiveDate,
    budgets: BTreeMap<String, Arc<Privacy>>,
) -> ScalarUDF {
    ScalarUDF::new_from_impl(BudgetFn {
        ledger,
        principal: principal.to_string(),
        today,
        budgets,
        signature: Signature::exact(vec![DataType::Utf8], Volatility::Volatile),
    })
}

impl ScalarUDFImpl for BudgetFn {
    fn name(&self) -> &str {
        BUDGET_FN
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let [table] = args.args.as_slice() else {
            return exec_err!(
                "{BUDGET_FN} takes one table name, e.g. {BUDGET_FN}('health.visits')"
            );
        };
        let names: ArrayRef = table.to_array(rows)?;
        let Some(names) = names.as_string_opt::<i32>() else {
            return exec_err!("{BUDGET_FN} takes a table name as text");
        };
        let mut out = Vec::with_capacity(names.len());
        for i in 0..names.len() {
            if names.is_null(i) {
                out.push(None);
                continue;
            }
            let name = names.value(i).to_lowercase();
            let name = name.strip_prefix("exchange.").unwrap_or(&name);
            let Some(privacy) = self.budgets.get(name) else {
                return exec_err!(
                    "{name}: {} reads no such table under differential privacy",
                    self.principal
                );
            };
            let period = privacy.period.key(self.today);
            let spent = self.ledger.spent(&self.principal, name, &period);
            out.push(Some(privacy.budget.saturating_sub(spent) as f64 / 1e6));
        }
        Ok(ColumnarValue::Array(Arc::new(Float64Array::from(out))))
    }
}
