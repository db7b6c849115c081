//! Loading policy files: purposes, principals and grants, checked against the catalog,
//! with file and line in every error.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde::Deserialize;
use toml::Spanned;

use super::PolicyError;
use super::treatment::Treatment;
use crate::catalog::{Catalog, ColumnType, Dataset, SourcePos};
use crate::masking::ValueKind;

use super::model::{
    AttrValue, ColumnRule, Grant, PolicySet, Principal, Purpose, RowFilter, Selector,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalsFile {
    #[serde(default)]
    principal: Vec<PrincipalEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalEntry {
    name: Spanned<String>,
    agency: Spanned<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    attributes: BTreeMap<String, AttrValue>,
    #[serde(default)]
    purposes: Vec<Spanned<String>>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    password_hash: Option<String>,
    #[serde(default)]
    api_tokens: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurposesFile {
    #[serde(default)]
    purpose: Vec<PurposeEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurposeEntry {
    name: String,
    legal_basis: String,
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantFile {
    agency: Spanned<String>,
    version: String,
    #[serde(default)]
    grant: Vec<GrantEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantEntry {
    id: Spanned<String>,
    table: Spanned<String>,
    to: Spanned<Selector>,
    purposes: Vec<Spanned<String>>,
    expires: Option<Spanned<toml::value::Datetime>>,
    row_filter: Option<Spanned<String>>,
    min_group: Option<Spanned<u32>>,
    #[serde(default)]
    value_statistics: bool,
    description: Option<String>,
    approval: Option<String>,
    columns: BTreeMap<String, Spanned<ColumnEntry>>,
    privacy: Option<Spanned<super::privacy::PrivacyEntry>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ColumnEntry {
    Short(String),
    Long { from: String, treatment: String },
}

pub(super) struct FileCtx<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl FileCtx<'_> {
    pub(super) fn pos(&self, span: std::ops::Range<usize>) -> SourcePos {
        SourcePos {
            path: self.path.to_path_buf(),
            line: crate::catalog::model_line_of(self.text, span.start),
        }
    }

    pub(super) fn invalid(
        &self,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
    ) -> PolicyError {
        PolicyError::Invalid {
            pos: self.pos(span),
            message: message.into(),
        }
    }

    pub(super) fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, PolicyError> {
        toml::from_str(self.text).map_err(|e| PolicyError::Parse {
            path: self.path.to_path_buf(),
            line: e
                .span()
                .map(|s| crate::catalog::model_line_of(self.text, s.start))
                .unwrap_or(1),
            message: e.message().to_string(),
        })
    }
}

fn read(path: &Path) -> Result<String, PolicyError> {
    fs::read_to_string(path).map_err(|source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

impl PolicySet {
    /// The purposes named, each declared (else an error at its place, after `what`).
    fn known_purposes(
        &self,
        ctx: &FileCtx<'_>,
        named: Vec<Spanned<String>>,
        what: &str,
    ) -> Result<Vec<String>, PolicyError> {
        named
            .into_iter()
            .map(|p| match self.purpose(p.get_ref()) {
                Some(_) => Ok(p.into_inner()),
                None => {
                    Err(ctx.invalid(p.span(), format!("{what}unknown purpose '{}'", p.get_ref())))
                }
            })
            .collect()
    }

    /// Load `dir/principals.toml`, `dir/purposes.toml` and `dir/grants/*.toml`, checking
    /// every reference against the catalog.
    pub fn load(dir: &Path, catalog: &Catalog) -> Result<Self, PolicyError> {
        let mut set = PolicySet::default();
        let purposes = dir.join("purposes.toml");
        set.add_purposes(&purposes, &read(&purposes)?)?;
        let principals = dir.join("principals.toml");
        set.add_principals(&principals, &read(&principals)?, catalog)?;
        let grants_dir = dir.join("grants");
        let mut files: Vec<PathBuf> = fs::read_dir(&grants_dir)
            .map_err(|source| PolicyError::Io {
                path: grants_dir.clone(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        for f in files {
            set.add_grants(&f, &read(&f)?, catalog)?;
        }
        // Optional: without it no recipient is declared, and every export is refused.
        let recipients = dir.join("recipients.toml");
        if recipients.exists() {
            let text = read(&recipients)?;
            set.recipients = super::recipients::parse(&FileCtx {
                path: &recipients,
                text: &text,
            })?;
        }
        Ok(set)
    }

    /// Parse a purposes file.
    pub fn add_purposes(&mut self, path: &Path, text: &str) -> Result<(), PolicyError> {
        let ctx = FileCtx { path, text };
        let file: PurposesFile = ctx.parse()?;
        for p in file.purpose {
            self.purposes.push(Purpose {
                name: p.name,
                legal_basis: p.legal_basis,
                description: p.description,
            });
        }
        Ok(())
    }

    /// Parse a principals file.
    pub fn add_principals(
        &mut self,
        path: &Path,
        text: &str,
        catalog: &Catalog,
    ) -> Result<(), PolicyError> {
        let ctx = FileCtx { path, text };
        let file: PrincipalsFile = ctx.parse()?;
        for p in file.principal {
            let _ = p.description;
            if !catalog.has_agency(p.agency.get_ref()) {
                return Err(ctx.invalid(
                    p.agency.span(),
                    format!("unknown agency '{}'", p.agency.get_ref()),
                ));
            }
            if self.principal(p.name.get_ref()).is_some() {
                return Err(ctx.invalid(
                    p.name.span(),
                    format!("principal '{}' is declared twice", p.name.get_ref()),
                ));
            }
            let purposes = self.known_purposes(&ctx, p.purposes, "")?;
            self.principals.push(Principal {
                pos: ctx.pos(p.name.span()),
                name: p.name.into_inner(),
                agency: p.agency.into_inner(),
                roles: p.roles,
                attributes: p.attributes,
                purposes,
                password_hash: p.password_hash,
                api_tokens: p.api_tokens,
            });
        }
        Ok(())
    }

    /// Parse one agency's grant file.
    pub fn add_grants(
        &mut self,
        path: &Path,
        text: &str,
        catalog: &Catalog,
    ) -> Result<(), PolicyError> {
        let ctx = FileCtx { path, text };
        let file: GrantFile = ctx.parse()?;
        let agency = file.agency.get_ref().clone();
        if !catalog.has_agency(&agency) {
            return Err(ctx.invalid(file.agency.span(), format!("unknown agency '{agency}'")));
        }
        for g in file.grant {
            let id = g.id.get_ref().clone();
            if self.grants.iter().any(|x| x.agency == agency && x.id == id) {
                return Err(ctx.invalid(g.id.span(), format!("grant id '{id}' is used twice")));
            }
            let Some(dataset) = catalog.dataset(&agency, g.table.get_ref()) else {
                return Err(ctx.invalid(
                    g.table.span(),
                    format!(
                        "grant '{id}': agency {agency} has no table '{}'",
                        g.table.get_ref()
                    ),
                ));
            };
            let to = g.to.get_ref().clone();
            if to == Selector::default() {
                return Err(ctx.invalid(
                    g.to.span(),
                    format!("grant '{id}': `to` must name a principal, role or agency"),
                ));
            }
            if let Some(p) = &to.principal
                && self.principal(p).is_none()
            {
                return Err(ctx.invalid(
                    g.to.span(),
                    format!("grant '{id}': unknown principal '{p}'"),
                ));
            }
            if let Some(a) = &to.agency
                && !catalog.has_agency(a)
            {
                return Err(ctx.invalid(g.to.span(), format!("grant '{id}': unknown agency '{a}'")));
            }
            if g.purposes.is_empty() {
                return Err(ctx.invalid(g.id.span(), format!("grant '{id}' serves no purpose")));
            }
            let purposes = self.known_purposes(&ctx, g.purposes, &format!("grant '{id}': "))?;
            let expires = match g.expires {
                None => None,
                Some(e) => {
                    let date = e.get_ref().date.and_then(|d| {
                        NaiveDate::from_ymd_opt(
                            i32::from(d.year),
                            u32::from(d.month),
                            u32::from(d.day),
                        )
                    });
                    match date {
                        Some(d) => Some(d),
                        None => {
                            return Err(ctx.invalid(
                                e.span(),
                                format!("grant '{id}': expires must be a date like 2027-12-31"),
                            ));
                        }
                    }
                }
            };
            let row_filter = match g.row_filter {
                None => None,
                Some(f) => Some(parse_row_filter(&ctx, &id, f)?),
            };
            let (columns, suppressed) = parse_columns(&ctx, &id, dataset, g.columns)?;
            let min_group = match g.min_group {
                None => None,
                Some(k) if *k.get_ref() == 0 => {
                    return Err(ctx.invalid(
                        k.span(),
                        format!("grant '{id}': min_group must be at least 1"),
                    ));
                }
                Some(k) if dataset.entity.is_none() => {
                    return Err(ctx.invalid(
                        k.span(),
                        format!(
                            "grant '{id}': min_group needs the table's entity column (declare `entity` on {})",
                            dataset.qualified_name()
                        ),
                    ));
                }
                Some(k) => Some(k.into_inner()),
            };
            let privacy = match g.privacy {
                None => None,
                Some(p) => Some(std::sync::Arc::new(super::privacy::parse_privacy(
                    &ctx,
                    &id,
                    dataset,
                    &columns,
                    min_group,
                    g.value_statistics,
                    p,
                )?)),
            };
            let _ = g.description;
            self.grants.push(Grant {
                privacy,
                pos: ctx.pos(g.id.span()),
                id,
                agency: agency.clone(),
                version: file.version.clone(),
                suppressed,
                table: dataset.name.clone(),
                to,
                purposes,
                expires,
                row_filter,
                min_group,
                value_statistics: g.value_statistics,
                approval: g.approval.filter(|a| !a.trim().is_empty()),
                columns,
            });
        }
        Ok(())
    }
}

fn parse_row_filter(
    ctx: &FileCtx<'_>,
    id: &str,
    f: Spanned<String>,
) -> Result<RowFilter, PolicyError> {
    use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, visit_expressions};
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    use std::ops::ControlFlow;

    let sql = f.get_ref().clone();
    let expr = Parser::new(&GenericDialect {})
        .try_with_sql(&sql)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| {
            ctx.invalid(
                f.span(),
                format!("grant '{id}': row_filter is not valid SQL: {e}"),
            )
        })?;
    let mut attributes = BTreeSet::new();
    let _ = visit_expressions(&expr, |e| {
        if let SqlExpr::CompoundIdentifier(parts) = e
            && let [head, attr] = parts.as_slice()
            && head.value.eq_ignore_ascii_case("principal")
        {
            attributes.insert(attr.value.clone());
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(RowFilter {
        sql,
        attributes,
        pos: ctx.pos(f.span()),
    })
}

fn parse_columns(
    ctx: &FileCtx<'_>,
    id: &str,
    dataset: &Dataset,
    entries: BTreeMap<String, Spanned<ColumnEntry>>,
) -> Result<(Vec<ColumnRule>, Vec<String>), PolicyError> {
    let table = dataset.qualified_name();
    let mut rules = Vec::new();
    let mut suppressed = Vec::new();
    for (name, entry) in entries {
        let span = entry.span();
        let (source, text) = match entry.into_inner() {
            ColumnEntry::Short(t) => (name.clone(), t),
            ColumnEntry::Long { from, treatment } => (from, treatment),
        };
        let Some(col) = dataset.column(&source) else {
            return Err(ctx.invalid(
                span,
                format!("grant '{id}': table {table} has no column '{source}'"),
            ));
        };
        if name != source && dataset.column(&name).is_some() {
            return Err(ctx.invalid(
                span,
                format!("grant '{id}': derived column '{name}' hides the table's own column of that name"),
            ));
        }
        if text.trim() == "suppress" {
            // Spelled out so that reviewers and `policy check` see the decision; the
            // column simply stays out of the visible schema (as an unlisted one would).
            if name != source {
                return Err(ctx.invalid(
                    span,
                    format!("grant '{id}', column {name}: a derived column cannot be suppressed (leave it out)"),
                ));
            }
            suppressed.push(name);
            continue;
        }
        let treatment = Treatment::parse(&text)
            .map_err(|e| ctx.invalid(span.clone(), format!("grant '{id}', column {name}: {e}")))?;
        let domain = match &treatment {
            Treatment::Mask { func, .. } => {
                let fits = match func.value_kind() {
                    ValueKind::Text => matches!(
                        col.ty,
                        ColumnType::Utf8 | ColumnType::Int32 | ColumnType::Int64
                    ),
                    ValueKind::Date => matches!(col.ty, ColumnType::Date | ColumnType::Timestamp),
                    ValueKind::Number | ValueKind::NumberLabel => matches!(
                        col.ty,
                        ColumnType::Int32 | ColumnType::Int64 | ColumnType::Float64
                    ),
                    ValueKind::Any => true,
                };
                if !fits {
                    return Err(ctx.invalid(
                        span,
                        format!(
                            "grant '{id}', column {name}: {} does not apply to a {:?} column",
                            func.name(),
                            col.ty
                        ),
                    ));
                }
                None
            }
            Treatment::Pseudonym { .. } | Treatment::JoinKey { .. } => {
                match treatment.token_domain(col.domain.as_deref()) {
                    Some(d) => Some(d.to_string()),
                    None => {
                        return Err(ctx.invalid(
                            span,
                            format!(
                                "grant '{id}', column {name}: {treatment} needs an identity domain (declare `domain` on {table}.{source} or write {treatment}(domain))"
                            ),
                        ));
                    }
                }
            }
            Treatment::AggregateOnly { .. } => {
                if !matches!(
                    col.ty,
                    ColumnType::Int32
                        | ColumnType::Int64
                        | ColumnType::Float64
                        | ColumnType::Utf8
                        | ColumnType::Boolean
                        | ColumnType::Date
                ) {
                    return Err(ctx.invalid(span, format!("grant '{id}', column {name}: aggregate_only does not apply to this column type")));
                }
                None
            }
            Treatment::Replace { .. } => {
                if col.ty != ColumnType::Utf8 {
                    return Err(ctx.invalid(
                        span,
                        format!("grant '{id}', column {name}: typed_random_replace applies to text columns"),
                    ));
                }
                None
            }
            Treatment::Plain => None,
        };
        rules.push((
            dataset
                .columns
                .iter()
                .position(|c| c.name == source)
                .unwrap_or(usize::MAX),
            name != source,
            ColumnRule {
                name,
                source,
                treatment,
                domain,
                pos: ctx.pos(span),
            },
        ));
    }
    // Table order; derived columns right after their source.
    rules.sort_by(|a, b| (a.0, a.1, &a.2.name).cmp(&(b.0, b.1, &b.2.name)));
    Ok((rules.into_iter().map(|r| r.2).collect(), suppressed))
}
