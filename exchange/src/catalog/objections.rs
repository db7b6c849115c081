//! An agency's register of residents' objections (PIPL art. 44): a dataset of its own,
//! declared with `objections = true`, holding one row per resident and purpose the resident
//! objects to. The resident is named by the register's one column of an identity domain (the
//! key); the purpose by its `purpose` column.
//!
//! Every other table of the agency with a column of that domain is subject to it: a row
//! whose column of the domain names a resident who objects to the statement's purpose is
//! excluded at source (`enforcement::objections`), before the row filter, treatments and
//! everything the analyst wrote.

use super::model::{Catalog, ColumnDef, ColumnType, DataFormat, Dataset};

/// The register's column naming the purpose objected to.
pub const PURPOSE_COLUMN: &str = "purpose";

/// An agency's register of objections, with its key column.
#[derive(Debug, Clone, Copy)]
pub struct Register<'a> {
    /// The register's dataset.
    pub dataset: &'a Dataset,
    /// The column naming the resident (the register's one column of an identity domain).
    pub key: &'a ColumnDef,
}

impl<'a> Register<'a> {
    /// The identity domain residents are named in.
    pub fn domain(&self) -> &'a str {
        self.key.domain.as_deref().unwrap_or_default()
    }

    /// The columns of `table` naming residents of the register's domain: a row is about an
    /// objecting resident when any of them names one. Empty for the register itself and for
    /// tables of other agencies (each agency's register covers its own data).
    pub fn subject_columns(&self, table: &Dataset) -> Vec<String> {
        if table.agency != self.dataset.agency || table.objections {
            return vec![];
        }
        table
            .columns
            .iter()
            .filter(|c| c.domain.as_deref() == Some(self.domain()))
            .map(|c| c.name.clone())
            .collect()
    }
}

impl Catalog {
    /// The agency's register of objections, if it keeps one.
    pub fn register_of(&self, agency: &str) -> Option<Register<'_>> {
        let dataset = self
            .datasets
            .iter()
            .find(|d| d.agency == agency && d.objections)?;
        let key = dataset.columns.iter().find(|c| c.domain.is_some())?;
        Some(Register { dataset, key })
    }
}

/// Check the agency's register: a `purpose` column of text, exactly one column of an identity
/// domain, of the same type as the agency's columns of that domain (so that values compare
/// exactly, never through a cast).
pub(super) fn validate(catalog: &Catalog, agency: &str) -> Result<(), String> {
    let Some(register) = catalog
        .datasets
        .iter()
        .find(|d| d.agency == agency && d.objections)
    else {
        return Ok(());
    };
    let name = register.qualified_name();
    match register.column(PURPOSE_COLUMN) {
        Some(c) if c.ty == ColumnType::Utf8 => {}
        Some(_) => {
            return Err(format!(
                "{name}: the register's `{PURPOSE_COLUMN}` column must be of type utf8"
            ));
        }
        None => {
            return Err(format!(
                "{name}: a register of objections needs a `{PURPOSE_COLUMN}` column (utf8) naming the purpose objected to"
            ));
        }
    }
    let keys: Vec<&ColumnDef> = register
        .columns
        .iter()
        .filter(|c| c.domain.is_some())
        .collect();
    let key = match keys.as_slice() {
        [key] => *key,
        [] => {
            return Err(format!(
                "{name}: a register of objections needs one column with a `domain` naming the resident who objects"
            ));
        }
        _ => {
            return Err(format!(
                "{name}: a register of objections names residents in one identity domain; it declares {} columns with a `domain`",
                keys.len()
            ));
        }
    };
    if key.pii.is_none() {
        return Err(format!(
            "{name}.{}: the register's key must say what it names residents by (`pii`, e.g. \"resident_id\"): identifiers are checked by it",
            key.name
        ));
    }
    // One file: a directory would pass over files named otherwise (review 51).
    if register.format != DataFormat::Parquet || !register.location.ends_with(".parquet") {
        return Err(format!(
            "{name}: a register of objections is one Parquet file (a location ending in .parquet), not '{}'",
            register.location
        ));
    }
    let domain = key.domain.as_deref().unwrap_or_default();
    for d in catalog
        .datasets
        .iter()
        .filter(|d| d.agency == agency && !d.objections)
    {
        for c in d
            .columns
            .iter()
            .filter(|c| c.domain.as_deref() == Some(domain))
        {
            if c.ty != key.ty {
                return Err(format!(
                    "{name}.{}: the register's key is {:?} but {}.{} of the same domain '{domain}' is {:?}: objections compare values exactly",
                    key.name,
                    key.ty,
                    d.qualified_name(),
                    c.name,
                    c.ty
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const POLICE: &str = r#"
agency = "police"
[[dataset]]
name = "residents"
location = "police/residents.parquet"
[[dataset.column]]
name = "person_id"
type = "utf8"
domain = "person"
[[dataset.column]]
name = "phone"
type = "utf8"
domain = "phone"

[[dataset]]
name = "objections"
location = "police/objections.parquet"
objections = true
[[dataset.column]]
name = "person_id"
type = "utf8"
pii = "resident_id"
domain = "person"
[[dataset.column]]
name = "purpose"
type = "utf8"
"#;

    fn load(text: &str) -> Result<Catalog, String> {
        let mut c = Catalog::default();
        c.add_file(Path::new("schemas/police.toml"), text)
            .map(|_| c)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_register_covers_its_agencys_columns_of_its_domain() {
        let c = load(POLICE).unwrap();
        let r = c.register_of("police").unwrap();
        assert_eq!(r.domain(), "person");
        let residents = c.dataset("police", "residents").unwrap();
        assert_eq!(r.subject_columns(residents), vec!["person_id".to_string()]);
        assert!(r.subject_columns(r.dataset).is_empty());
        assert!(c.register_of("health").is_none());
    }

    #[test]
    fn a_malformed_register_is_refused_with_its_cause() {
        let no_purpose = POLICE.replace("name = \"purpose\"", "name = \"use\"");
        let err = load(&no_purpose).unwrap_err();
        assert!(err.contains("needs a `purpose` column"), "{err}");
        assert!(err.starts_with("schemas/police.toml:"), "{err}");

        let two_keys = format!(
            "{POLICE}[[dataset.column]]\nname = \"phone\"\ntype = \"utf8\"\ndomain = \"phone\"\n"
        );
        let err = load(&two_keys).unwrap_err();
        assert!(err.contains("one identity domain"), "{err}");

        let int_key = POLICE.replacen(
            "name = \"person_id\"\ntype = \"utf8\"\npii = \"resident_id\"\ndomain = \"person\"\n[[dataset.column]]\nname = \"purpose\"",
            "name = \"person_id\"\ntype = \"int64\"\npii = \"resident_id\"\ndomain = \"person\"\n[[dataset.column]]\nname = \"purpose\"",
            1,
        );
        let err = load(&int_key).unwrap_err();
        assert!(err.contains("compare values exactly"), "{err}");

        let no_pii = POLICE.replacen("pii = \"resident_id\"\n", "", 1);
        let err = load(&no_pii).unwrap_err();
        assert!(err.contains("must say what it names residents by"), "{err}");

        let directory = POLICE.replace(
            "location = \"police/objections.parquet\"",
            "location = \"police/objections/\"",
        );
        let err = load(&directory).unwrap_err();
        assert!(err.contains("one Parquet file"), "{err}");

        let second = format!(
            "{POLICE}\n[[dataset]]\nname = \"objections2\"\nlocation = \"x.parquet\"\nobjections = true\n[[dataset.column]]\nname = \"purpose\"\ntype = \"utf8\"\n"
        );
        let err = load(&second).unwrap_err();
        assert!(err.contains("second register"), "{err}");
    }
}
