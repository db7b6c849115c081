//! How an outcome is recorded: decision, redacted reason, keyed result digest.

use super::QueryError;
use crate::audit::Decision;

/// Replace quoted strings and long digit runs of an error text with '…'.
/// The decision and reason an outcome is audited with. Error texts may quote values; the
/// log keeps them out of auditors' sight.
pub(crate) fn audit_decision<T>(outcome: &Result<T, QueryError>) -> (Decision, Option<String>) {
    match outcome {
        Ok(_) => (Decision::Allowed, None),
        Err(QueryError::Refused(r)) => (Decision::Refused, Some(r.clone())),
        Err(QueryError::Failed(r))
        | Err(QueryError::Run { message: r, .. })
        | Err(QueryError::Audit(r)) => (Decision::Failed, Some(redact_values(r))),
    }
}

pub(crate) fn redact_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote: Option<char> = None;
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        if digits.len() >= 4 {
            out.push('…');
        } else {
            out.push_str(digits);
        }
        digits.clear();
    };
    for c in text.chars() {
        match quote {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None if c == '\'' || c == '"' => {
                flush(&mut digits, &mut out);
                out.push(c);
                quote = Some(c);
            }
            None if c.is_ascii_digit() => digits.push(c),
            None => {
                flush(&mut digits, &mut out);
                out.push(c);
            }
        }
    }
    if quote.is_some() {
        out.push('…');
    }
    flush(&mut digits, &mut out);
    out
}
