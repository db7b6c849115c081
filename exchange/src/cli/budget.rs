//! `exchange budget --as PRINCIPAL`: what a principal has spent of its privacy budgets in the
//! current period, per dataset it reads under differential privacy. Reads the ledger without
//! writing it, so it works while a server holds the state directory.

use std::process::ExitCode;

use crate::config::ExchangeConfig;
use crate::engine::{Governance, LEDGER_FILE};
use crate::policy::show_epsilon;
use crate::privacy::Spending;

/// Print the principal's budgets; exit 2 on an unknown principal or an unreadable ledger.
pub(super) fn run(config: &ExchangeConfig, principal: &str) -> ExitCode {
    let gov = match Governance::load(config) {
        Ok(g) => g,
        Err(e) => {
            complain!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(p) = gov.policies.principal(principal) else {
        complain!("error: no principal named {principal}");
        return ExitCode::from(2);
    };
    let spending = match Spending::read(&config.state_dir.join(LEDGER_FILE)) {
        Ok(s) => s,
        Err(e) => {
            complain!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let today = chrono::Utc::now().date_naive();
    let mut seen: Vec<(String, String)> = Vec::new();
    for purpose in &p.purposes {
        for d in gov.catalog.datasets() {
            let Ok(access) = gov.policies.resolve(d, p, purpose, today) else {
                continue;
            };
            let Some(privacy) = &access.privacy else {
                continue;
            };
            let dataset = d.qualified_name();
            if seen.contains(&(dataset.clone(), access.grant_ref.clone())) {
                continue;
            }
            seen.push((dataset.clone(), access.grant_ref.clone()));
            let period = privacy.period.key(today);
            let spent = spending.spent(&p.name, &dataset, &period);
            let left = privacy.budget.saturating_sub(spent);
            let all = spending.dataset_spent(&dataset, &period);
            say!("{dataset}  grant {} (purpose {purpose})", access.grant_ref);
            say!(
                "  {period}: epsilon {} of {} spent, {} left ({} queries at {} each); all principals: {} of {}",
                show_epsilon(spent),
                show_epsilon(privacy.budget),
                show_epsilon(left),
                left / privacy.epsilon.max(1),
                show_epsilon(privacy.epsilon),
                show_epsilon(all),
                show_epsilon(privacy.cap)
            );
        }
    }
    if seen.is_empty() {
        say!("{principal} reads no table under differential privacy");
    }
    ExitCode::SUCCESS
}
