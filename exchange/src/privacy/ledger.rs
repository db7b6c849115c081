//! The privacy budget ledger (issue 18, part 2): what each principal spent on each dataset in
//! each period, and what all principals together spent on it (a cap per dataset, so that
//! colluding analysts cannot pool their budgets).
//!
//! Epsilon is counted in millionths (integers: sums are exact, never rounded floats). A charge
//! is written and synced to disk before it is granted, so a result is only released against
//! spent budget that survives a crash; a refund (nothing was released) is a line of its own.
//! The file is append-only JSON lines; a torn last line (a crash while writing it) was never
//! granted and is passed over, any other unreadable line refuses every charge.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Millionths of epsilon.
pub type MicroEpsilon = u64;

/// Errors of the ledger.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// The charge would exceed the principal's budget for the dataset and period.
    #[error(
        "privacy budget of {principal} on {dataset} for {period} exhausted: {spent} of {budget} spent, {asked} asked (epsilon in millionths)"
    )]
    Principal {
        /// Who.
        principal: String,
        /// `agency.table`.
        dataset: String,
        /// The period.
        period: String,
        /// Spent so far.
        spent: MicroEpsilon,
        /// The budget.
        budget: MicroEpsilon,
        /// This charge.
        asked: MicroEpsilon,
    },
    /// The charge would exceed the dataset's cap across principals for the period.
    #[error(
        "privacy budget of {dataset} for {period} across all principals exhausted: {spent} of {cap} spent, {asked} asked (epsilon in millionths)"
    )]
    Dataset {
        /// `agency.table`.
        dataset: String,
        /// The period.
        period: String,
        /// Spent so far by everyone.
        spent: MicroEpsilon,
        /// The cap.
        cap: MicroEpsilon,
        /// This charge.
        asked: MicroEpsilon,
    },
    /// The ledger cannot be read or written: nothing is charged, so nothing is released.
    #[error("privacy budget ledger {path}: {cause}")]
    Ledger {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        cause: String,
    },
}

/// One line of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Line {
    /// Charge number (refunds name the charge they undo).
    id: u64,
    principal: String,
    dataset: String,
    period: String,
    /// Millionths of epsilon; a refund's is the charge's.
    epsilon: MicroEpsilon,
    refund: bool,
}

/// A granted charge, to refund if nothing was released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// Charge number.
    pub id: u64,
    /// What was charged.
    pub epsilon: MicroEpsilon,
    /// The principal's spending on the dataset in the period, this charge included.
    pub spent: MicroEpsilon,
}

/// What one charge asks.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// Who.
    pub principal: &'a str,
    /// `agency.table`.
    pub dataset: &'a str,
    /// The period (`2026-12`, `2026`...).
    pub period: &'a str,
    /// This charge.
    pub epsilon: MicroEpsilon,
    /// The principal's budget on the dataset per period.
    pub budget: MicroEpsilon,
    /// Every principal's spending together on the dataset per period.
    pub cap: MicroEpsilon,
}

#[derive(Debug, Default)]
struct Totals {
    next_id: u64,
    by_principal: BTreeMap<(String, String, String), MicroEpsilon>,
    by_dataset: BTreeMap<(String, String), MicroEpsilon>,
    charges: BTreeMap<u64, Line>,
}

impl Totals {
    fn apply(&mut self, line: &Line) {
        let pk = (
            line.principal.clone(),
            line.dataset.clone(),
            line.period.clone(),
        );
        let dk = (line.dataset.clone(), line.period.clone());
        if line.refund {
            if self.charges.remove(&line.id).is_some() {
                let p = self.by_principal.entry(pk).or_default();
                *p = p.saturating_sub(line.epsilon);
                let d = self.by_dataset.entry(dk).or_default();
                *d = d.saturating_sub(line.epsilon);
            }
        } else {
            *self.by_principal.entry(pk).or_default() += line.epsilon;
            *self.by_dataset.entry(dk).or_default() += line.epsilon;
            self.charges.insert(line.id, line.clone());
            self.next_id = self.next_id.max(line.id + 1);
        }
    }
}

/// Apply every line of a ledger file's `text`; whether its last line is complete.
fn read_lines(text: &[u8], totals: &mut Totals) -> Result<bool, String> {
    let complete = text.ends_with(b"\n");
    let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
    for (n, raw) in lines.iter().enumerate() {
        if raw.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Line>(raw) {
            Ok(line) => totals.apply(&line),
            // The torn tail of a crash: never synced, never granted.
            Err(_) if n + 1 == lines.len() && !complete => {}
            Err(e) => return Err(format!("line {}: {e}", n + 1)),
        }
    }
    Ok(complete)
}

/// What a ledger file says was spent, read without writing (while a server holds it).
#[derive(Debug, Default)]
pub struct Spending {
    totals: Totals,
}

impl Spending {
    /// Read the ledger at `path`; a missing file spent nothing.
    pub fn read(path: &Path) -> Result<Self, BudgetError> {
        let mut totals = Totals::default();
        match std::fs::read(path) {
            Ok(text) => {
                read_lines(&text, &mut totals).map_err(|cause| BudgetError::Ledger {
                    path: path.to_path_buf(),
                    cause,
                })?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(BudgetError::Ledger {
                    path: path.to_path_buf(),
                    cause: e.to_string(),
                });
            }
        }
        Ok(Self { totals })
    }

    /// What the principal spent on the dataset in the period.
    pub fn spent(&self, principal: &str, dataset: &str, period: &str) -> MicroEpsilon {
        self.totals
            .by_principal
            .get(&(principal.into(), dataset.into(), period.into()))
            .copied()
            .unwrap_or(0)
    }

    /// What every principal together spent on the dataset in the period.
    pub fn dataset_spent(&self, dataset: &str, period: &str) -> MicroEpsilon {
        self.totals
            .by_dataset
            .get(&(dataset.into(), period.into()))
            .copied()
            .unwrap_or(0)
    }
}

/// The ledger of one exchange (one state directory, which one process holds at a time).
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    state: Mutex<(File, Totals)>,
}

impl Ledger {
    /// Open (or create) the ledger file, reading what was spent.
    pub fn open(path: &Path) -> Result<Self, BudgetError> {
        let err = |cause: String| BudgetError::Ledger {
            path: path.to_path_buf(),
            cause,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let mut totals = Totals::default();
        if path.exists() {
            let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            let complete = read_lines(&text, &mut totals).map_err(err)?;
            if !complete && !text.is_empty() {
                // Cut the torn tail, so that the next line starts clean.
                let keep = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| err(e.to_string()))?;
                f.set_len(keep as u64).map_err(|e| err(e.to_string()))?;
                f.sync_all().map_err(|e| err(e.to_string()))?;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| err(e.to_string()))?;
        Ok(Self {
            path: path.to_path_buf(),
            state: Mutex::new((file, totals)),
        })
    }

    fn write(&self, file: &mut File, line: &Line) -> Result<(), BudgetError> {
        let err = |cause: String| BudgetError::Ledger {
            path: self.path.clone(),
            cause,
        };
        let mut bytes = serde_json::to_vec(line).map_err(|e| err(e.to_string()))?;
        bytes.push(b'\n');
        file.write_all(&bytes).map_err(|e| err(e.to_string()))?;
        file.sync_data().map_err(|e| err(e.to_string()))
    }

    /// Charge `ask.epsilon` if both the principal's budget and the dataset's cap allow it:
    /// durable before it returns.
    pub fn charge(&self, ask: Ask<'_>) -> Result<Charge, BudgetError> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (file, totals) = &mut *guard;
        let pk = (
            ask.principal.to_string(),
            ask.dataset.to_string(),
            ask.period.to_string(),
        );
        let dk = (ask.dataset.to_string(), ask.period.to_string());
        let spent = totals.by_principal.get(&pk).copied().unwrap_or(0);
        let all = totals.by_dataset.get(&dk).copied().unwrap_or(0);
        if spent
            .checked_add(ask.epsilon)
            .is_none_or(|s| s > ask.budget)
        {
            return Err(BudgetError::Principal {
                principal: pk.0,
                dataset: pk.1,
                period: pk.2,
                spent,
                budget: ask.budget,
                asked: ask.epsilon,
            });
        }
        if all.checked_add(ask.epsilon).is_none_or(|s| s > ask.cap) {
            return Err(BudgetError::Dataset {
                dataset: dk.0,
                period: dk.1,
                spent: all,
                cap: ask.cap,
                asked: ask.epsilon,
            });
        }
        let line = Line {
            id: totals.next_id,
            principal: pk.0,
            dataset: pk.1,
            period: pk.2,
            epsilon: ask.epsilon,
            refund: false,
        };
        self.write(file, &line)?;
        totals.apply(&line);
        Ok(Charge {
            id: line.id,
            epsilon: ask.epsilon,
            spent: spent + ask.epsilon,
        })
    }

    /// Undo a charge whose statement released nothing. Unknown or refunded charges: no-op.
    pub fn refund(&self, charge: &Charge) -> Result<(), BudgetError> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (file, totals) = &mut *guard;
        let Some(original) = totals.charges.get(&charge.id).cloned() else {
            return Ok(());
        };
        let line = Line {
            refund: true,
            ..original
        };
        self.write(file, &line)?;
        totals.apply(&line);
        Ok(())
    }

    /// What the principal spent on the dataset in the period.
    pub fn spent(&self, principal: &str, dataset: &str, period: &str) -> MicroEpsilon {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .1
            .by_principal
            .get(&(principal.into(), dataset.into(), period.into()))
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn ask<'a>(principal: &'a str, epsilon: MicroEpsilon) -> Ask<'a> {
        Ask {
            principal,
            dataset: "civil.elderly_care",
            period: "2026-12",
            epsilon,
            budget: 1_000_000,
            cap: 1_500_000,
        }
    }

    #[test]
    fn budgets_exhaust_refuse_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("budget/ledger.jsonl");
        let ledger = Ledger::open(&path).unwrap();
        let a = ledger.charge(ask("a", 400_000)).unwrap();
        ledger.charge(ask("a", 400_000)).unwrap();
        let err = ledger.charge(ask("a", 400_000)).unwrap_err().to_string();
        assert!(
            err.contains(
                "budget of a on civil.elderly_care for 2026-12 exhausted: 800000 of 1000000"
            ),
            "{err}"
        );
        // Another principal: its own budget, but the dataset's cap binds.
        ledger.charge(ask("b", 600_000)).unwrap();
        let err = ledger.charge(ask("b", 200_000)).unwrap_err().to_string();
        assert!(
            err.contains("across all principals exhausted: 1400000 of 1500000"),
            "{err}"
        );
        // A refund gives back what was not released.
        ledger.refund(&a).unwrap();
        ledger.refund(&a).unwrap();
        assert_eq!(ledger.spent("a", "civil.elderly_care", "2026-12"), 400_000);
        // Another period starts afresh.
        let next = Ask {
            period: "2027-01",
            ..ask("a", 900_000)
        };
        ledger.charge(next).unwrap();
        drop(ledger);
        let reopened = Ledger::open(&path).unwrap();
        assert_eq!(
            reopened.spent("a", "civil.elderly_care", "2026-12"),
            400_000
        );
        assert_eq!(
            reopened.spent("b", "civil.elderly_care", "2026-12"),
            600_000
        );
        assert_eq!(
            reopened.spent("a", "civil.elderly_care", "2027-01"),
            900_000
        );
        // Charge numbers go on after the restart: a refund never undoes another charge.
        let c = reopened.charge(ask("a", 100_000)).unwrap();
        assert!(c.id > a.id);
    }

    #[test]
    fn a_torn_tail_is_passed_over_and_a_corrupt_line_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let ledger = Ledger::open(&path).unwrap();
        ledger.charge(ask("a", 300_000)).unwrap();
        drop(ledger);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"id\":7,\"princ").unwrap();
        drop(f);
        let ledger = Ledger::open(&path).unwrap();
        assert_eq!(ledger.spent("a", "civil.elderly_care", "2026-12"), 300_000);
        ledger.charge(ask("a", 100_000)).unwrap();
        drop(ledger);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");

        std::fs::write(&path, format!("garbage\n{text}")).unwrap();
        let err = Ledger::open(&path).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn concurrent_charges_cannot_overspend() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.jsonl")).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let ledger = Arc::clone(&ledger);
                std::thread::spawn(move || {
                    let who = if i % 2 == 0 { "a" } else { "b" };
                    (0..50)
                        .filter(|_| ledger.charge(ask(who, 30_000)).is_ok())
                        .count()
                })
            })
            .collect();
        let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        // The cap (1.5) allows exactly 50 charges of 0.03, each principal at most 33.
        assert_eq!(granted, 50);
        let a = ledger.spent("a", "civil.elderly_care", "2026-12");
        let b = ledger.spent("b", "civil.elderly_care", "2026-12");
        assert!(a <= 1_000_000 && b <= 1_000_000);
        assert_eq!(a + b, 1_500_000);
    }
}
