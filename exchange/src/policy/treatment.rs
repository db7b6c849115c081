//! Column treatments and their policy syntax.
//!
//! `plain`, `mask(fn, args...)`, `pseudonym[(domain)]`, `join_key[(domain)]`,
//! `aggregate_only(k)`. Parsed when policies load, so a bad treatment is an error with
//! file and line, never a query-time failure.

use std::fmt;

use crate::masking::{MaskArg, MaskFn};

/// What a visible column becomes for a principal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Treatment {
    /// The raw value.
    Plain,
    /// A masking function with its literal parameters.
    Mask {
        /// The function.
        func: MaskFn,
        /// Its parameters after the value.
        args: Vec<MaskArg>,
    },
    /// A keyed token, stable within (consumer agency, domain); may be output.
    Pseudonym {
        /// Identity domain (None: the column's declared domain).
        domain: Option<String>,
    },
    /// A keyed token usable only for equi-joins within its domain.
    JoinKey {
        /// Identity domain (None: the column's declared domain).
        domain: Option<String>,
    },
    /// A keyed, valid-looking replacement identifier of the given type.
    Replace {
        /// resident_id, uscc, phone or bank_card.
        kind: String,
    },
    /// Usable only as input of aggregate functions, in groups of at least `k` entities.
    AggregateOnly {
        /// Minimum distinct entities per output group.
        k: u32,
    },
}

impl fmt::Display for Treatment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Treatment::Plain => write!(f, "plain"),
            Treatment::Mask { func, args } => {
                write!(f, "mask({}", func.name())?;
                for a in args {
                    write!(f, ", {a}")?;
                }
                write!(f, ")")
            }
            Treatment::Pseudonym { domain: Some(d) } => write!(f, "pseudonym({d})"),
            Treatment::Pseudonym { domain: None } => write!(f, "pseudonym"),
            Treatment::JoinKey { domain: Some(d) } => write!(f, "join_key({d})"),
            Treatment::JoinKey { domain: None } => write!(f, "join_key"),
            Treatment::AggregateOnly { k } => write!(f, "aggregate_only({k})"),
            Treatment::Replace { kind } => write!(f, "typed_random_replace({kind})"),
        }
    }
}

/// Split `name(arg, 'str', 3)` into the name and raw argument texts.
fn split_call(text: &str) -> Result<(&str, Vec<&str>), String> {
    let text = text.trim();
    match text.find('(') {
        None => Ok((text, vec![])),
        Some(open) => {
            let Some(inner) = text[open + 1..].strip_suffix(')') else {
                return Err(format!("'{text}': missing closing parenthesis"));
            };
            let name = text[..open].trim();
            let mut args = Vec::new();
            let mut start = 0;
            let mut quoted = false;
            for (i, c) in inner.char_indices() {
                match c {
                    '\'' => quoted = !quoted,
                    ',' if !quoted => {
                        args.push(inner[start..i].trim());
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            if quoted {
                return Err(format!("'{text}': unterminated string"));
            }
            let last = inner[start..].trim();
            if !last.is_empty() || !args.is_empty() {
                args.push(last);
            }
            Ok((name, args))
        }
    }
}

fn parse_arg(raw: &str) -> Result<MaskArg, String> {
    if let Some(s) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return Ok(MaskArg::Str(s.to_string()));
    }
    raw.parse::<i64>()
        .map(MaskArg::Int)
        .map_err(|_| format!("argument '{raw}' is neither an integer nor a 'quoted string'"))
}

fn domain_arg(name: &str, args: &[&str]) -> Result<Option<String>, String> {
    match args {
        [] => Ok(None),
        [d] if !d.is_empty() && d.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            Ok(Some((*d).to_string()))
        }
        _ => Err(format!(
            "{name} takes one identity domain name, e.g. {name}(person)"
        )),
    }
}

impl Treatment {
    /// Parse the policy syntax.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, args) = split_call(text)?;
        match name {
            "plain" if args.is_empty() => Ok(Treatment::Plain),
            "plain" => Err("plain takes no arguments".into()),
            "mask" => {
                let Some((func, rest)) = args.split_first() else {
                    return Err("mask needs a function, e.g. mask(name_cn)".into());
                };
                let func = MaskFn::from_name(func).ok_or_else(|| {
                    let known: Vec<&str> = MaskFn::ALL.iter().map(|f| f.name()).collect();
                    format!(
                        "unknown masking function '{func}' (known: {})",
                        known.join(", ")
                    )
                })?;
                let args = rest
                    .iter()
                    .map(|a| parse_arg(a))
                    .collect::<Result<Vec<_>, _>>()?;
                func.check_args(&args)?;
                Ok(Treatment::Mask { func, args })
            }
            "pseudonym" => Ok(Treatment::Pseudonym {
                domain: domain_arg(name, &args)?,
            }),
            "join_key" => Ok(Treatment::JoinKey {
                domain: domain_arg(name, &args)?,
            }),
            "typed_random_replace" => match args.as_slice() {
                [kind] if crate::masking::replace::KINDS.contains(kind) => Ok(Treatment::Replace {
                    kind: (*kind).to_string(),
                }),
                _ => Err(format!(
                    "typed_random_replace takes one of {}",
                    crate::masking::replace::KINDS.join(", ")
                )),
            },
            "aggregate_only" => match args.as_slice() {
                [k] => match k.parse::<u32>() {
                    Ok(k) if k >= 1 => Ok(Treatment::AggregateOnly { k }),
                    _ => Err(format!(
                        "aggregate_only takes a minimum group size >= 1, got '{k}'"
                    )),
                },
                _ => Err(
                    "aggregate_only takes one minimum group size, e.g. aggregate_only(5)".into(),
                ),
            },
            other => Err(format!(
                "unknown treatment '{other}' (expected plain, mask(..), pseudonym, join_key, typed_random_replace(..), aggregate_only(k) or suppress)"
            )),
        }
    }

    /// The identity domain of a token treatment, given the column's declared domain.
    pub fn token_domain<'a>(&'a self, declared: Option<&'a str>) -> Option<&'a str> {
        match self {
            Treatment::Pseudonym { domain } | Treatment::JoinKey { domain } => {
                domain.as_deref().or(declared)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(Treatment::parse("plain"), Ok(Treatment::Plain));
        assert_eq!(
            Treatment::parse("mask(keep_first_last, 3, 4)"),
            Ok(Treatment::Mask {
                func: MaskFn::KeepFirstLast,
                args: vec![MaskArg::Int(3), MaskArg::Int(4)]
            })
        );
        assert_eq!(
            Treatment::parse(" mask(address_cn, 'district') ").map(|t| t.to_string()),
            Ok("mask(address_cn, 'district')".to_string())
        );
        assert_eq!(
            Treatment::parse("join_key(person)"),
            Ok(Treatment::JoinKey {
                domain: Some("person".into())
            })
        );
        assert_eq!(
            Treatment::parse("pseudonym"),
            Ok(Treatment::Pseudonym { domain: None })
        );
        assert_eq!(
            Treatment::parse("aggregate_only(5)"),
            Ok(Treatment::AggregateOnly { k: 5 })
        );
    }

    #[test]
    fn rejects_bad_forms_with_reasons() {
        let e = |t: &str| Treatment::parse(t).err().unwrap_or_default();
        assert!(e("mask(nope)").contains("unknown masking function 'nope'"));
        assert!(e("mask(keep_first_last, 3)").contains("takes (n, m)"));
        assert!(e("aggregate_only(0)").contains(">= 1"));
        assert!(e("aggregate_only").contains("one minimum group size"));
        assert!(e("hash").contains("unknown treatment 'hash'"));
        assert!(e("mask(name_cn").contains("closing parenthesis"));
        assert!(e("join_key(a b)").contains("identity domain"));
    }
}
