//! What a statement's noisy aggregates charge and draw from: the ledger, the principal, the
//! day, the random source; and what they spent, for the statement's audit record.

use std::sync::{Arc, Mutex};

use chrono::NaiveDate;

use crate::policy::show_epsilon;
use crate::privacy::{Ask, BudgetError, Charge, Ledger, RandomSource, SystemSource};

/// A statement's privacy context, carried in its task's configuration.
pub struct PrivacyRuntime {
    ledger: Arc<Ledger>,
    principal: String,
    today: NaiveDate,
    source: Mutex<Box<dyn RandomSource + Send>>,
    spent: Mutex<Vec<String>>,
}

impl std::fmt::Debug for PrivacyRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivacyRuntime")
            .field("principal", &self.principal)
            .field("today", &self.today)
            .finish_non_exhaustive()
    }
}

impl PrivacyRuntime {
    /// The context of one statement of `principal` on `today`, drawing from the system's
    /// cryptographic source.
    pub fn new(ledger: Arc<Ledger>, principal: &str, today: NaiveDate) -> Self {
        Self::with_source(ledger, principal, today, Box::new(SystemSource::new()))
    }

    /// The same with another random source (seeded, for statistical tests only).
    pub(crate) fn with_source(
        ledger: Arc<Ledger>,
        principal: &str,
        today: NaiveDate,
        source: Box<dyn RandomSource + Send>,
    ) -> Self {
        Self {
            ledger,
            principal: principal.to_string(),
            today,
            source: Mutex::new(source),
            spent: Mutex::new(Vec::new()),
        }
    }

    /// Charge one query's epsilon on `dataset` under `privacy`, durably.
    pub(super) fn charge(
        &self,
        dataset: &str,
        privacy: &crate::policy::Privacy,
    ) -> Result<Charge, BudgetError> {
        let period = privacy.period.key(self.today);
        let charge = self.ledger.charge(Ask {
            principal: &self.principal,
            dataset,
            period: &period,
            epsilon: privacy.epsilon,
            budget: privacy.budget,
            cap: privacy.cap,
        })?;
        if let Ok(mut spent) = self.spent.lock() {
            spent.push(format!(
                "{dataset}: epsilon {} spent ({} of {} in {period})",
                show_epsilon(charge.epsilon),
                show_epsilon(charge.spent),
                show_epsilon(privacy.budget)
            ));
        }
        Ok(charge)
    }

    /// Draw with the statement's source.
    pub(super) fn draw<T>(
        &self,
        f: impl FnOnce(&mut dyn RandomSource) -> Result<T, crate::privacy::PrivacyError>,
    ) -> Result<T, crate::privacy::PrivacyError> {
        let mut source = self
            .source
            .lock()
            .map_err(|_| crate::privacy::PrivacyError::Randomness)?;
        f(source.as_mut())
    }

    /// What the statement spent, one line per charge, for its audit record.
    pub fn spent(&self) -> Vec<String> {
        self.spent.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// A budget refusal in words: epsilon as decimals, and when it renews.
pub fn budget_message(e: &BudgetError) -> String {
    match e {
        BudgetError::Principal {
            principal,
            dataset,
            period,
            spent,
            budget,
            asked,
        } => format!(
            "the privacy budget of {principal} on {dataset} for {period} is spent: epsilon {} of {} used, this query needs {} (the budget renews with the next period)",
            show_epsilon(*spent),
            show_epsilon(*budget),
            show_epsilon(*asked)
        ),
        BudgetError::Dataset {
            dataset,
            period,
            spent,
            cap,
            asked,
        } => format!(
            "the privacy budget of {dataset} for {period} across all principals is spent: epsilon {} of {} used, this query needs {} (it renews with the next period)",
            show_epsilon(*spent),
            show_epsilon(*cap),
            show_epsilon(*asked)
        ),
        BudgetError::Ledger { .. } => {
            format!("{e}; nothing is released without its privacy charge")
        }
    }
}
