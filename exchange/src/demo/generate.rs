//! Deterministic generator of the demo city's datasets (demo-city.md).
//!
//! Seeded, linear in `scale` (scale 1 = 100,000 residents), every identifier valid under
//! its checksum, and identifiers overlapping across agencies so joins find matches.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{Field, Schema};
use chrono::{Datelike, NaiveDate};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

use super::vocab::{
    CATEGORIES, COMPOUND, DIAGNOSES, GIVEN, HOSPITALS, INDUSTRIES, INDUSTRY_CN, JOB_TYPES,
    MOBILE_PREFIXES, ROADS, SURNAMES, WORDS,
};
use crate::masking::validate::{USCC_CHARSET, id_check_char, uscc_check_char};

/// Errors of generating demo data.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// A file could not be written.
    #[error("{path}: {message}")]
    Write {
        /// The file.
        path: String,
        /// The cause.
        message: String,
    },
    /// The scale is not positive.
    #[error("scale must be positive, got {0}")]
    Scale(f64),
}

/// SplitMix64: small, fast, and the same on every machine.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize % items.len().max(1)]
    }
}

/// The six districts: (pinyin, Chinese name, region code).
pub const DISTRICTS: &[(&str, &str, &str)] = &[
    ("heping", "和平区", "120101"),
    ("hedong", "河东区", "120102"),
    ("hexi", "河西区", "120103"),
    ("nankai", "南开区", "120104"),
    ("hebei", "河北区", "120105"),
    ("hongqiao", "红桥区", "120106"),
];

fn days(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()).num_days() as i32
}

fn date_from_days(n: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1)
        .unwrap_or_default()
        .checked_add_signed(chrono::Duration::days(i64::from(n)))
        .unwrap_or_default()
}

struct Resident {
    person_id: String,
    birth: NaiveDate,
    phone: String,
    district: usize,
}

/// Write `(name, nullable, values)` columns as one Parquet file, atomically.
fn write(path: &Path, columns: Vec<(&str, bool, ArrayRef)>) -> Result<(), GenerateError> {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, nullable, a)| Field::new(*name, a.data_type().clone(), *nullable))
            .collect::<Vec<_>>(),
    ));
    let columns: Vec<ArrayRef> = columns.into_iter().map(|(_, _, a)| a).collect();
    let err = |message: String| GenerateError::Write {
        path: path.display().to_string(),
        message,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| err(e.to_string()))?;
    // Per process: two generating the same city at once each write their own file.
    let tmp = path.with_extension(format!("parquet.{}.tmp", std::process::id()));
    let file = fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
    let props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_max_row_group_row_count(Some(64 * 1024))
        .build();
    let mut writer =
        ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| err(e.to_string()))?;
    writer.write(&batch).map_err(|e| err(e.to_string()))?;
    writer.close().map_err(|e| err(e.to_string()))?;
    // Atomic: a half-written file never looks like data.
    fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}

fn s(items: Vec<String>) -> ArrayRef {
    Arc::new(StringArray::from(items))
}

/// The tables the generator writes, relative to the data root.
pub const FILES: &[&str] = &[
    "police/residents.parquet",
    "hrss/employment.parquet",
    "health/visits.parquet",
    "civil/elderly_care.parquet",
    "market/enterprises.parquet",
    "hotline/tickets.parquet",
    "police/objections.parquet",
];

/// Generate every demo table under `root`. Returns the number of residents.
pub fn generate(root: &Path, scale: f64, seed: u64) -> Result<usize, GenerateError> {
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(GenerateError::Scale(scale));
    }
    let n = ((100_000.0 * scale).round() as usize).max(50);
    let mut rng = Rng::new(seed);
    let today = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap_or_default();

    // police.residents
    let mut residents = Vec::with_capacity(n);
    let mut ids = HashSet::with_capacity(n);
    let mut phones = HashSet::with_capacity(n);
    let (
        mut c_id,
        mut c_name,
        mut c_gender,
        mut c_birth,
        mut c_phone,
        mut c_addr,
        mut c_dist,
        mut c_hh,
        mut c_reg,
    ) = (
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
    );
    let start = days(NaiveDate::from_ymd_opt(1930, 1, 1).unwrap_or_default());
    let end = days(NaiveDate::from_ymd_opt(2008, 12, 31).unwrap_or_default());
    while residents.len() < n {
        let district = rng.below(DISTRICTS.len() as u64) as usize;
        let birth = date_from_days(start + rng.below((end - start) as u64) as i32);
        let male = rng.below(2) == 0;
        let mut seq = rng.below(500) as u32 * 2;
        if male {
            seq += 1;
        }
        let first17 = format!(
            "{}{}{:03}",
            DISTRICTS[district].2,
            birth.format("%Y%m%d"),
            seq
        );
        let Some(check) = id_check_char(first17.as_bytes()) else {
            continue;
        };
        let person_id = format!("{first17}{}", char::from(check));
        if !ids.insert(person_id.clone()) {
            continue;
        }
        let phone = loop {
            let p = format!("{}{:08}", rng.pick(MOBILE_PREFIXES), rng.below(100_000_000));
            if phones.insert(p.clone()) {
                break p;
            }
        };
        let surname = if rng.below(100) < 4 {
            rng.pick(COMPOUND)
        } else {
            rng.pick(SURNAMES)
        };
        let given: String = (0..1 + rng.below(2)).map(|_| *rng.pick(GIVEN)).collect();
        c_name.push(format!("{surname}{given}"));
        c_gender.push(if male { "M" } else { "F" }.to_string());
        c_birth.push(days(birth));
        c_phone.push(phone.clone());
        c_addr.push(format!(
            "天津市{}{}{}号{}号楼{}室",
            DISTRICTS[district].1,
            rng.pick(ROADS),
            1 + rng.below(300),
            1 + rng.below(30),
            101 + rng.below(20) * 100 + rng.below(4)
        ));
        c_dist.push(DISTRICTS[district].0.to_string());
        let age = today.year() - birth.year();
        c_hh.push(if age >= 60 && rng.below(3) == 0 {
            1
        } else {
            1 + rng.below(6) as i32
        });
        c_reg.push(
            days(birth).max(days(
                NaiveDate::from_ymd_opt(1985, 1, 1).unwrap_or_default(),
            )) + rng.below(3000) as i32,
        );
        c_id.push(person_id.clone());
        residents.push(Resident {
            person_id,
            birth,
            phone,
            district,
        });
    }
    let lives_alone: Vec<bool> = c_hh.iter().map(|h| *h == 1).collect();
    write(
        &root.join(FILES[0]),
        vec![
            ("person_id", false, s(c_id)),
            ("name", false, s(c_name)),
            ("gender", false, s(c_gender)),
            ("birth_date", false, Arc::new(Date32Array::from(c_birth))),
            ("phone", false, s(c_phone)),
            ("address", false, s(c_addr)),
            ("district", false, s(c_dist)),
            ("household_size", false, Arc::new(Int32Array::from(c_hh))),
            ("registered_on", false, Arc::new(Date32Array::from(c_reg))),
        ],
    )?;

    // market.enterprises
    let n_ent = (n / 20).max(10);
    let (
        mut e_uscc,
        mut e_name,
        mut e_rep,
        mut e_dist,
        mut e_ind,
        mut e_cap,
        mut e_status,
        mut e_est,
    ) = (
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
    );
    let mut usccs = HashSet::new();
    while e_uscc.len() < n_ent {
        let district = rng.below(DISTRICTS.len() as u64) as usize;
        let org: String = (0..9)
            .map(|_| char::from(USCC_CHARSET[rng.below(31) as usize % USCC_CHARSET.len()]))
            .collect();
        let first17 = format!("91{}{org}", DISTRICTS[district].2);
        let Some(check) = uscc_check_char(first17.as_bytes()) else {
            continue;
        };
        let uscc = format!("{first17}{}", char::from(check));
        if !usccs.insert(uscc.clone()) {
            continue;
        }
        let ind = rng.below(INDUSTRIES.len() as u64) as usize;
        let rep = &residents[rng.below(residents.len() as u64) as usize];
        e_name.push(format!(
            "天津{}{}有限公司",
            rng.pick(WORDS),
            INDUSTRY_CN[ind]
        ));
        e_rep.push(rep.person_id.clone());
        e_dist.push(DISTRICTS[district].0.to_string());
        e_ind.push(INDUSTRIES[ind].to_string());
        e_cap.push(100_000 * (1 + rng.below(500) as i64) + rng.below(100_000) as i64);
        e_status.push(
            if rng.below(10) < 8 {
                "active"
            } else if rng.below(2) == 0 {
                "revoked"
            } else {
                "cancelled"
            }
            .to_string(),
        );
        e_est.push(
            days(NaiveDate::from_ymd_opt(1995, 1, 1).unwrap_or_default())
                + rng.below(11_000) as i32,
        );
        e_uscc.push(uscc);
    }
    write(
        &root.join(FILES[4]),
        vec![
            ("uscc", false, s(e_uscc.clone())),
            ("name", false, s(e_name.clone())),
            ("legal_rep_id", false, s(e_rep)),
            ("district", false, s(e_dist)),
            ("industry", false, s(e_ind)),
            (
                "registered_capital",
                false,
                Arc::new(Int64Array::from(e_cap)),
            ),
            ("status", false, s(e_status)),
            ("established", false, Arc::new(Date32Array::from(e_est))),
        ],
    )?;

    // hrss.employment: working-age residents, 70% employed
    let (mut w_id, mut w_uscc, mut w_emp, mut w_job, mut w_wage, mut w_ins, mut w_upd) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for r in &residents {
        let age = today.year() - r.birth.year();
        if !(18..=64).contains(&age) || rng.unit() > 0.7 {
            continue;
        }
        let e = rng.below(e_uscc.len() as u64) as usize;
        let u = rng.unit();
        let mut acc = 0.0;
        let mut job = JOB_TYPES[0].0;
        for (j, p) in JOB_TYPES {
            acc += p;
            if u < acc {
                job = j;
                break;
            }
        }
        let base = match job {
            "regular" => 6500.0,
            "platform_delivery" => 7200.0,
            "ride_hailing" => 6800.0,
            _ => 5200.0,
        };
        w_id.push(r.person_id.clone());
        w_uscc.push(e_uscc[e].clone());
        w_emp.push(e_name[e].clone());
        w_job.push(job.to_string());
        w_wage.push(((base * (0.6 + rng.unit() * 0.9)) as i64 / 10 * 10) as f64);
        w_ins.push(rng.below(240) as i32);
        w_upd.push(days(today) - rng.below(365) as i32);
    }
    write(
        &root.join(FILES[1]),
        vec![
            ("person_id", false, s(w_id)),
            ("employer_uscc", false, s(w_uscc)),
            ("employer_name", false, s(w_emp)),
            ("job_type", false, s(w_job)),
            ("monthly_wage", false, Arc::new(Float64Array::from(w_wage))),
            ("insured_months", false, Arc::new(Int32Array::from(w_ins))),
            ("updated_on", false, Arc::new(Date32Array::from(w_upd))),
        ],
    )?;

    // health.visits: more visits for older residents
    let (mut v_id, mut v_pid, mut v_date, mut v_hosp, mut v_diag, mut v_cost, mut v_chronic) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for r in &residents {
        let age = today.year() - r.birth.year();
        let visits = rng.below(if age >= 60 { 6 } else { 3 });
        for _ in 0..visits {
            let (code, chronic) = if age >= 60 && rng.below(2) == 0 {
                *rng.pick(&DIAGNOSES[..5])
            } else {
                *rng.pick(DIAGNOSES)
            };
            v_id.push(format!("V{:09}", v_id.len() + 1));
            v_pid.push(r.person_id.clone());
            v_date.push(days(today) - rng.below(700) as i32);
            v_hosp.push(rng.pick(HOSPITALS).to_string());
            v_diag.push(code.to_string());
            v_cost.push((50.0 + rng.unit() * if chronic { 1500.0 } else { 600.0 }).round());
            v_chronic.push(chronic);
        }
    }
    write(
        &root.join(FILES[2]),
        vec![
            ("visit_id", false, s(v_id)),
            ("person_id", false, s(v_pid)),
            ("visit_date", false, Arc::new(Date32Array::from(v_date))),
            ("hospital", false, s(v_hosp)),
            ("diagnosis_code", false, s(v_diag)),
            ("cost", false, Arc::new(Float64Array::from(v_cost))),
            ("chronic", false, Arc::new(BooleanArray::from(v_chronic))),
        ],
    )?;

    // civil.elderly_care: 45% of residents aged 60+
    let (mut c_pid, mut c_level, mut c_alone, mut c_dis, mut c_sub, mut c_since) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (i, r) in residents.iter().enumerate() {
        let age = today.year() - r.birth.year();
        if age < 60 || rng.unit() > 0.45 {
            continue;
        }
        let level = 1 + rng.below(5) as i32;
        c_pid.push(r.person_id.clone());
        c_level.push(level);
        c_alone.push(lives_alone[i]);
        c_dis.push(if rng.below(4) == 0 {
            Some(1 + rng.below(4) as i32)
        } else {
            None
        });
        c_sub.push(f64::from(level) * 200.0 + if lives_alone[i] { 300.0 } else { 0.0 });
        c_since.push(days(r.birth) + 60 * 365 + rng.below(3000) as i32);
    }
    write(
        &root.join(FILES[3]),
        vec![
            ("person_id", false, s(c_pid)),
            ("care_level", false, Arc::new(Int32Array::from(c_level))),
            ("lives_alone", false, Arc::new(BooleanArray::from(c_alone))),
            ("disability_grade", true, Arc::new(Int32Array::from(c_dis))),
            (
                "subsidy_monthly",
                false,
                Arc::new(Float64Array::from(c_sub)),
            ),
            ("since", false, Arc::new(Date32Array::from(c_since))),
        ],
    )?;

    // hotline.tickets: one per five residents, 80% from residents' phones
    let n_t = (n / 5).max(10);
    let (mut t_id, mut t_phone, mut t_dist, mut t_cat, mut t_created, mut t_resolved, mut t_sat) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let base_us = i64::from(days(today)) * 86_400_000_000;
    for i in 0..n_t {
        let (phone, district) = if rng.below(10) < 8 {
            let r = &residents[rng.below(residents.len() as u64) as usize];
            (r.phone.clone(), r.district)
        } else {
            (
                format!("{}{:08}", rng.pick(MOBILE_PREFIXES), rng.below(100_000_000)),
                rng.below(DISTRICTS.len() as u64) as usize,
            )
        };
        let created = base_us - (rng.below(365 * 86_400) as i64) * 1_000_000;
        t_id.push(format!("T{:08}", i + 1));
        t_phone.push(phone);
        t_dist.push(DISTRICTS[district].0.to_string());
        t_cat.push(rng.pick(CATEGORIES).to_string());
        t_created.push(created);
        let resolved = rng.below(10) < 8;
        t_resolved
            .push(resolved.then(|| created + (1 + rng.below(14 * 86_400) as i64) * 1_000_000));
        t_sat.push(resolved.then(|| rng.below(10) < 7));
    }
    write(
        &root.join(FILES[5]),
        vec![
            ("ticket_id", false, s(t_id)),
            ("caller_phone", false, s(t_phone)),
            ("district", false, s(t_dist)),
            ("category", false, s(t_cat)),
            (
                "created_at",
                false,
                Arc::new(TimestampMicrosecondArray::from(t_created)),
            ),
            (
                "resolved_at",
                true,
                Arc::new(TimestampMicrosecondArray::from(t_resolved)),
            ),
            ("satisfied", true, Arc::new(BooleanArray::from(t_sat))),
        ],
    )?;

    // police.objections: residents who object to some uses of their data (PIPL art. 44).
    // A generator of its own, so that the other tables stay as they were.
    let mut orng = Rng::new(seed ^ 0x0b1e_c710);
    let (mut o_id, mut o_purpose, mut o_on) = (vec![], vec![], vec![]);
    for r in &residents {
        for (purpose, per_mille) in OBJECTIONS {
            if orng.below(1000) < *per_mille {
                o_id.push(r.person_id.clone());
                o_purpose.push(purpose.to_string());
                o_on.push(days(today) - orng.below(700) as i32);
            }
        }
    }
    write(
        &root.join(FILES[6]),
        vec![
            ("person_id", false, s(o_id)),
            ("purpose", false, s(o_purpose)),
            ("recorded_on", false, Arc::new(Date32Array::from(o_on))),
        ],
    )?;
    Ok(n)
}

/// Purposes residents of the demo city object to, with how many in a thousand object.
/// Elderly care planning has none: the showcase contrasts it with employment services.
const OBJECTIONS: &[(&str, u64)] = &[
    ("new_employment_services", 10),
    ("public_health_statistics", 5),
    ("data_product", 3),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_identifier_validates() {
        use crate::masking::validate::{is_valid_id_cn, is_valid_mobile_cn, is_valid_uscc};
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), 0.005, 3).unwrap();
        let read = |file: &str, col: &str| -> Vec<String> {
            let f = fs::File::open(dir.path().join(file)).unwrap();
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
                .unwrap()
                .build()
                .unwrap();
            reader
                .flat_map(|b| {
                    let b = b.unwrap();
                    let c = b.column(b.schema().index_of(col).unwrap()).clone();
                    let s = c.as_any().downcast_ref::<StringArray>().unwrap().clone();
                    s.iter().flatten().map(str::to_string).collect::<Vec<_>>()
                })
                .collect()
        };
        let ids = read("police/residents.parquet", "person_id");
        assert_eq!(ids.len(), 500);
        assert!(ids.iter().all(|i| is_valid_id_cn(i)));
        assert!(
            read("police/residents.parquet", "phone")
                .iter()
                .all(|p| is_valid_mobile_cn(p))
        );
        assert!(
            read("market/enterprises.parquet", "uscc")
                .iter()
                .all(|u| is_valid_uscc(u))
        );
        assert!(
            read("hotline/tickets.parquet", "caller_phone")
                .iter()
                .all(|p| is_valid_mobile_cn(p))
        );
    }

    #[test]
    fn generation_is_deterministic() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        generate(a.path(), 0.002, 7).unwrap();
        generate(b.path(), 0.002, 7).unwrap();
        for f in FILES {
            assert_eq!(
                fs::read(a.path().join(f)).unwrap(),
                fs::read(b.path().join(f)).unwrap(),
                "{f}"
            );
        }
    }
}
