//! Loading schema files into the catalog, with file and line in every error.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::CatalogError;
use super::model::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgencyFile {
    agency: Spanned<String>,
    title: Option<String>,
    #[serde(default)]
    dataset: Vec<DatasetFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetFile {
    name: Spanned<String>,
    location: String,
    #[serde(default)]
    format: DataFormat,
    description: Option<String>,
    entity: Option<Spanned<String>>,
    export_k: Option<Spanned<u32>>,
    #[serde(default)]
    export_k_action: KAction,
    /// The agency's register of residents' objections (`catalog::objections`).
    objections: Option<Spanned<bool>>,
    #[serde(default)]
    column: Vec<ColumnFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnFile {
    name: Spanned<String>,
    #[serde(rename = "type")]
    ty: ColumnType,
    pii: Option<PiiType>,
    level: Option<Level>,
    domain: Option<String>,
    description: Option<String>,
    #[serde(default)]
    nullable: Option<bool>,
    #[serde(default)]
    quasi_identifier: bool,
}

impl Catalog {
    /// Load every `*.toml` file of `dir`, in name order.
    pub fn load(dir: &Path) -> Result<Self, CatalogError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CatalogError::Io { path, source }
        };
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        let mut catalog = Catalog::default();
        for path in files {
            let text = fs::read_to_string(&path).map_err(io(&path))?;
            catalog.add_file(&path, &text)?;
        }
        Ok(catalog)
    }

    /// Parse one schema file's text into the catalog.
    pub fn add_file(&mut self, path: &Path, text: &str) -> Result<(), CatalogError> {
        let file: AgencyFile = toml::from_str(text).map_err(|e| CatalogError::Parse {
            path: path.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
            message: e.message().to_string(),
        })?;
        let pos = |span: std::ops::Range<usize>| SourcePos {
            path: path.to_path_buf(),
            line: line_of(text, span.start),
        };
        let agency = file.agency.get_ref().clone();
        if !is_identifier(&agency) {
            return Err(CatalogError::Invalid {
                pos: pos(file.agency.span()),
                message: format!("agency name '{agency}' must be lower-case letters, digits and _"),
            });
        }
        if self.agencies.contains_key(&agency) {
            return Err(CatalogError::Invalid {
                pos: pos(file.agency.span()),
                message: format!("agency '{agency}' is declared twice"),
            });
        }
        self.agencies.insert(agency.clone(), file.title);
        let mut registry_pos = None;
        for ds in file.dataset {
            let name = ds.name.get_ref().clone();
            let ds_pos = pos(ds.name.span());
            if !is_identifier(&name) {
                return Err(CatalogError::Invalid {
                    pos: ds_pos,
                    message: format!(
                        "table name '{name}' must be lower-case letters, digits and _"
                    ),
                });
            }
            if self.dataset(&agency, &name).is_some() {
                return Err(CatalogError::Invalid {
                    pos: ds_pos,
                    message: format!("table {agency}.{name} is declared twice"),
                });
            }
            if ds.column.is_empty() {
                return Err(CatalogError::Invalid {
                    pos: ds_pos,
                    message: format!("table {agency}.{name} declares no columns"),
                });
            }
            let mut columns: Vec<ColumnDef> = Vec::new();
            for c in ds.column {
                let cpos = pos(c.name.span());
                let cname = c.name.into_inner();
                if columns.iter().any(|x| x.name == cname) {
                    return Err(CatalogError::Invalid {
                        pos: cpos,
                        message: format!("column {agency}.{name}.{cname} is declared twice"),
                    });
                }
                let _ = c.nullable;
                columns.push(ColumnDef {
                    name: cname,
                    ty: c.ty,
                    pii: c.pii,
                    level: c.level,
                    domain: c.domain,
                    description: c.description,
                    quasi_identifier: c.quasi_identifier,
                    pos: cpos,
                });
            }
            let entity = match ds.entity {
                Some(e) => {
                    let epos = pos(e.span());
                    let e = e.into_inner();
                    if !columns.iter().any(|c| c.name == e) {
                        return Err(CatalogError::Invalid {
                            pos: epos,
                            message: format!(
                                "entity column '{e}' is not a column of {agency}.{name}"
                            ),
                        });
                    }
                    Some(e)
                }
                None => None,
            };
            let export_k = match ds.export_k {
                None => None,
                Some(k) if *k.get_ref() < 2 => {
                    return Err(CatalogError::Invalid {
                        pos: pos(k.span()),
                        message: format!(
                            "export_k of {agency}.{name} must be at least 2 (every class of one row identifies it)"
                        ),
                    });
                }
                // Classes count people: the guard needs to know whose each row is.
                Some(k) if entity.is_none() => {
                    return Err(CatalogError::Invalid {
                        pos: pos(k.span()),
                        message: format!(
                            "export_k of {agency}.{name} needs the dataset's `entity` (classes count the people rows belong to)"
                        ),
                    });
                }
                Some(k) => Some(ExportK {
                    k: k.into_inner(),
                    action: ds.export_k_action,
                }),
            };
            let objections = match ds.objections {
                Some(o) if *o.get_ref() => {
                    if registry_pos.is_some() {
                        return Err(CatalogError::Invalid {
                            pos: pos(o.span()),
                            message: format!(
                                "agency '{agency}' declares a second register of objections ({agency}.{name}): one register holds every purpose"
                            ),
                        });
                    }
                    registry_pos = Some(pos(o.span()));
                    true
                }
                _ => false,
            };
            self.datasets.push(Dataset {
                agency: agency.clone(),
                name,
                location: ds.location,
                format: ds.format,
                description: ds.description,
                entity,
                export_k,
                objections,
                columns,
                pos: ds_pos,
            });
        }
        if let Some(at) = registry_pos {
            super::objections::validate(self, &agency)
                .map_err(|message| CatalogError::Invalid { pos: at, message })?;
        }
        Ok(())
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Catalog, CatalogError> {
        let mut c = Catalog::default();
        c.add_file(Path::new("schemas/x.toml"), text).map(|_| c)
    }

    const OK: &str = r#"
agency = "police"
[[dataset]]
name = "residents"
location = "police/residents.parquet"
entity = "person_id"
[[dataset.column]]
name = "person_id"
type = "utf8"
pii = "resident_id"
level = "general-3"
domain = "person"
"#;

    #[test]
    fn loads_a_valid_file() {
        let c = load(OK).unwrap();
        let d = c.dataset("police", "residents").unwrap();
        assert_eq!(d.columns[0].pii, Some(PiiType::ResidentId));
        assert_eq!(d.pos.line, 4);
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let text = OK.replace("domain = \"person\"", "domian = \"person\"");
        let err = load(&text).unwrap_err().to_string();
        assert!(err.starts_with("schemas/x.toml:12:"), "{err}");
        assert!(err.contains("domian"), "{err}");
    }

    #[test]
    fn unknown_type_is_an_error() {
        let err = load(&OK.replace("\"utf8\"", "\"varchar\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("varchar") && err.contains(":9:"), "{err}");
    }

    #[test]
    fn bad_entity_is_an_error() {
        let err = load(&OK.replace("entity = \"person_id\"", "entity = \"pid\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("entity column 'pid'"), "{err}");
    }

    #[test]
    fn missing_file_names_table_and_path() {
        let c = load(OK).unwrap();
        let errs = c.check_data(Path::new("/nonexistent-root"));
        assert_eq!(errs.len(), 1);
        let msg = errs[0].to_string();
        assert!(
            msg.contains("police.residents")
                && msg.contains("/nonexistent-root/police/residents.parquet"),
            "{msg}"
        );
    }
}
