//! The registry of export recipients (`policies/recipients.toml`): who may receive a signed
//! export, in which jurisdiction, and on what basis personal information may go abroad.
//!
//! An export names its recipient; one not declared here is refused (default deny). A
//! recipient outside the mainland (any jurisdiction but `CN`; Hong Kong, Macao and Taiwan
//! are outside for these rules) receives no important data, and personal information only
//! when the recipient declares a legal basis and a security-assessment or standard-contract
//! reference (PIPL art. 38; the cross-border rules). Those references are written into the
//! export's manifest and audit record.

use serde::Deserialize;
use toml::Spanned;

use super::PolicyError;
use super::load::FileCtx;
use crate::catalog::SourcePos;

/// The jurisdiction of the mainland.
pub const MAINLAND: &str = "CN";

/// A declared export recipient.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipient {
    /// The name exports give (`--recipient`).
    pub name: String,
    /// Where it is: an ISO 3166 code (`CN` the mainland; `HK`, `MO`, `TW`, `SG`, ...).
    pub jurisdiction: String,
    /// The legal basis for sending it personal information.
    pub legal_basis: Option<String>,
    /// The reference of a passed security assessment (CAC).
    pub security_assessment: Option<String>,
    /// The reference of a filed standard contract.
    pub standard_contract: Option<String>,
    /// Where declared.
    pub pos: SourcePos,
}

impl Recipient {
    /// Whether an export to it crosses the border of the mainland.
    pub fn cross_border(&self) -> bool {
        self.jurisdiction != MAINLAND
    }

    /// The assessment or contract that allows personal information to go to it, if any.
    pub fn transfer_basis(&self) -> Option<String> {
        match (&self.security_assessment, &self.standard_contract) {
            (Some(a), _) => Some(format!("security assessment {a}")),
            (None, Some(c)) => Some(format!("standard contract {c}")),
            (None, None) => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipientsFile {
    #[serde(default)]
    recipient: Vec<RecipientEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipientEntry {
    name: Spanned<String>,
    jurisdiction: Spanned<String>,
    legal_basis: Option<String>,
    security_assessment: Option<String>,
    standard_contract: Option<String>,
    description: Option<String>,
}

/// Parse a recipients file.
pub(super) fn parse(ctx: &FileCtx<'_>) -> Result<Vec<Recipient>, PolicyError> {
    let file: RecipientsFile = ctx.parse()?;
    let mut out: Vec<Recipient> = Vec::new();
    for r in file.recipient {
        let _ = r.description;
        let name = r.name.get_ref();
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(ctx.invalid(
                r.name.span(),
                "a recipient's name is 1 to 64 letters, digits, '-', '_' or '.'",
            ));
        }
        // Names differing only in case would be two recipients to the exchange and one
        // to a reader of the manifest (review 49).
        if let Some(o) = out.iter().find(|o| o.name.eq_ignore_ascii_case(name)) {
            return Err(ctx.invalid(
                r.name.span(),
                format!(
                    "recipient '{name}' is declared twice ('{}' at {}; names are compared ignoring case)",
                    o.name, o.pos
                ),
            ));
        }
        let j = r.jurisdiction.get_ref();
        if j.len() != 2 || !j.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(ctx.invalid(
                r.jurisdiction.span(),
                format!(
                    "jurisdiction '{j}': an ISO 3166 alpha-2 code in capitals ({MAINLAND} for the mainland; HK, MO, TW, SG, ...)"
                ),
            ));
        }
        let text = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        out.push(Recipient {
            pos: ctx.pos(r.name.span()),
            name: name.clone(),
            jurisdiction: j.clone(),
            legal_basis: text(r.legal_basis),
            security_assessment: text(r.security_assessment),
            standard_contract: text(r.standard_contract),
        });
    }
    Ok(out)
}
