//! The leak suite's corpus and its check, shared by the single-node suite (tests/leaks.rs)
//! and the federated one (tests/federation.rs: the same queries through a hub).

use std::collections::{BTreeMap, HashSet};

use exchange::{Exchange, QueryError};

use super::{cells, data_root, raw_strings};

/// (kind, SQL) of the hostile corpus, tests/sql/hostile.sql. `{ID}`, `{PHONE}`, `{PATH}` are
/// replaced by a real raw value or path.
pub fn hostile() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in include_str!("../sql/hostile.sql").lines() {
        if let Some(kind) = line.strip_prefix("-- kind: ") {
            out.push((kind.trim().to_string(), String::new()));
        } else if let Some((_, sql)) = out.last_mut()
            && !line.starts_with("--")
            && !line.trim().is_empty()
        {
            if !sql.is_empty() {
                sql.push('\n');
            }
            sql.push_str(line);
        }
    }
    out
}

pub const PRINCIPALS: &[(&str, &str)] = &[
    ("police_officer", "law_enforcement"),
    ("civil_analyst", "elderly_care_planning"),
    ("hrss_analyst", "new_employment_services"),
    ("health_analyst", "public_health_statistics"),
    ("hotline_analyst", "complaint_handling"),
    ("market_trader", "data_product"),
    ("auditor", "audit_review"),
];

pub struct Protected {
    /// Long identifiers, checked as substrings: resident IDs, phones.
    pub ids: HashSet<String>,
    /// Names and full addresses, checked as whole cells (and as substrings of errors).
    pub texts: HashSet<String>,
}

/// What a principal may not see raw.
pub fn protected(principal: &str) -> Protected {
    let residents_ids = raw_strings("police/residents.parquet", "person_id");
    let mut own: HashSet<String> = HashSet::new();
    let own_file = match principal {
        "civil_analyst" => Some("civil/elderly_care.parquet"),
        "hrss_analyst" => Some("hrss/employment.parquet"),
        "health_analyst" => Some("health/visits.parquet"),
        _ => None,
    };
    if let Some(f) = own_file {
        own.extend(raw_strings(f, "person_id"));
    }
    let mut ids: HashSet<String> = residents_ids
        .into_iter()
        .filter(|i| !own.contains(i))
        .collect();
    ids.extend(raw_strings("police/residents.parquet", "phone"));
    ids.extend(raw_strings("hotline/tickets.parquet", "caller_phone"));
    let mut texts: HashSet<String> = raw_strings("police/residents.parquet", "name")
        .into_iter()
        .collect();
    texts.extend(raw_strings("police/residents.parquet", "address"));
    if principal == "police_officer" {
        // The police see their own residents raw; the hotline's callers stay protected.
        let police: HashSet<String> = raw_strings("police/residents.parquet", "person_id")
            .into_iter()
            .chain(raw_strings("police/residents.parquet", "phone"))
            .collect();
        ids.retain(|i| !police.contains(i));
        texts.clear();
    }
    Protected { ids, texts }
}

/// A protected value in free text (errors): substring search.
pub fn leaks_in(text: &str, p: &Protected, typed: &str) -> Option<String> {
    p.ids
        .iter()
        .find(|v| text.contains(v.as_str()) && !typed.contains(v.as_str()))
        .or_else(|| {
            p.texts.iter().find(|v| {
                v.chars().count() >= 2 && text.contains(v.as_str()) && !typed.contains(v.as_str())
            })
        })
        .cloned()
}

/// A protected value in a result cell: the whole cell, or any 11- or 18-char window
/// (phones, resident IDs) of it.
pub fn leaks_in_cell(cell: &str, p: &Protected, typed: &str) -> Option<String> {
    if (p.ids.contains(cell) || p.texts.contains(cell)) && !typed.contains(cell) {
        return Some(cell.to_string());
    }
    let chars: Vec<char> = cell.chars().collect();
    for width in [11, 18] {
        for w in chars.windows(width) {
            let s: String = w.iter().collect();
            if p.ids.contains(&s) && !typed.contains(&s) {
                return Some(s);
            }
        }
    }
    None
}

/// Every hostile query as every principal: no protected raw value in any output or error,
/// most refused, every one audited.
pub async fn no_hostile_query_reveals_a_protected_value(ex: &Exchange) {
    let id = raw_strings("police/residents.parquet", "person_id")[7].clone();
    let phone = raw_strings("police/residents.parquet", "phone")[7].clone();
    let path = data_root()
        .join("police/residents.parquet")
        .display()
        .to_string();
    let hostile = hostile();
    let kinds: HashSet<&str> = hostile.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        hostile.len() >= 40 && kinds.len() >= 12,
        "{} queries, {} kinds",
        hostile.len(),
        kinds.len()
    );

    let mut outcomes: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    for (principal, purpose) in PRINCIPALS {
        let guard = protected(principal);
        for (kind, template) in &hostile {
            let sql = template
                .replace("{ID}", &id)
                .replace("{PHONE}", &phone)
                .replace("{PATH}", &path);
            let result = ex.execute(principal, Some(purpose), &sql).await;
            let entry = outcomes.entry(principal).or_default();
            match &result {
                Ok(out) => {
                    entry.0 += 1;
                    for row in cells(&out.batches) {
                        for cell in row {
                            if let Some(v) = leaks_in_cell(&cell, &guard, &sql) {
                                panic!("{principal} [{kind}] {sql}\n  leaked {v} in {cell}");
                            }
                        }
                    }
                }
                Err(e) => {
                    if matches!(e, QueryError::Refused(_)) {
                        entry.1 += 1;
                    } else {
                        entry.2 += 1;
                    }
                    let text = e.to_string();
                    if let Some(v) = leaks_in(&text, &guard, &sql) {
                        panic!("{principal} [{kind}] {sql}\n  leaked {v} in error {text}");
                    }
                    assert!(
                        !text.contains("secret.key") && !text.to_lowercase().contains("hmac key"),
                        "{text}"
                    );
                }
            }
        }
    }
    // The analysts outside the police must have most hostile queries refused.
    for (principal, (allowed, refused, failed)) in &outcomes {
        eprintln!("{principal}: {allowed} allowed, {refused} refused, {failed} failed");
        if *principal != "police_officer" {
            assert!(
                *refused > *allowed,
                "{principal}: {allowed} allowed vs {refused} refused"
            );
        }
    }
    // The audit log recorded every one of them.
    let records =
        exchange::audit::statements(exchange::audit::read_all(ex.audit().path()).unwrap());
    assert_eq!(records.len(), PRINCIPALS.len() * hostile.len());
    // Every stream that started ended, recorded.
    assert!(
        records
            .iter()
            .all(|r| r.entry.stream != Some(exchange::audit::StreamStatus::Started))
    );
}
