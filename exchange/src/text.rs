//! Text shown to people. Values, statements and reasons can hold characters a terminal acts
//! on (escape sequences, carriage returns, bidirectional overrides) that could hide or
//! rewrite what a reader sees, such as an analyst's own statement in an auditor's report.
//! Every rendering shows them escaped (`\u{1b}`, `\r`), never raw.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, LargeListArray, LargeStringArray, ListArray,
    MapArray, RecordBatch, StringArray, StringViewArray, StructArray,
};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema};
use arrow::error::ArrowError;
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// Cut `s` to at most `max` bytes at a character boundary, then append `tail(bytes cut)`;
/// unchanged when it fits.
pub fn cut(s: &mut String, max: usize, tail: impl FnOnce(usize) -> String) {
    if s.len() <= max {
        return;
    }
    let end = (0..=max)
        .rev()
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0);
    let more = s.len() - end;
    s.truncate(end);
    s.push_str(&tail(more));
}

/// Characters that change how text displays rather than being displayed: controls,
/// bidirectional marks and overrides, zero-width characters, line and paragraph separators.
fn acts_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Unicode's format characters (Cf) and the line and paragraph separators.
            '\u{00AD}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061C}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0001}'
                | '\u{E0020}'..='\u{E007F}'
        )
}

/// `s` with control and bidirectional-override characters escaped.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(acts_on_terminal) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else if acts_on_terminal(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// The batches with every string escaped: values (in lists, structs, maps and dictionaries
/// too), column names and struct field names; other values as they are.
pub fn escape_batches(batches: &[RecordBatch]) -> Result<Vec<RecordBatch>, ArrowError> {
    batches
        .iter()
        .map(|b| {
            let columns = b
                .columns()
                .iter()
                .map(escape_array)
                .collect::<Result<Vec<_>, _>>()?;
            let fields: Vec<Field> = b
                .schema()
                .fields()
                .iter()
                .zip(&columns)
                .map(|(f, c)| Field::new(escape(f.name()), c.data_type().clone(), f.is_nullable()))
                .collect();
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        })
        .collect()
}

fn escape_array(a: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    Ok(match a.data_type() {
        DataType::Utf8 => {
            let s = a.as_string::<i32>();
            if !needs_escape(s.iter()) {
                return Ok(a.clone());
            }
            Arc::new(s.iter().map(|v| v.map(escape)).collect::<StringArray>())
        }
        DataType::LargeUtf8 => {
            let s = a.as_string::<i64>();
            if !needs_escape(s.iter()) {
                return Ok(a.clone());
            }
            Arc::new(
                s.iter()
                    .map(|v| v.map(escape))
                    .collect::<LargeStringArray>(),
            )
        }
        DataType::Utf8View => {
            let s = a.as_string_view();
            if !needs_escape(s.iter()) {
                return Ok(a.clone());
            }
            Arc::new(s.iter().map(|v| v.map(escape)).collect::<StringViewArray>())
        }
        DataType::List(field) => {
            let l = a.as_list::<i32>();
            let values = escape_array(l.values())?;
            Arc::new(ListArray::try_new(
                renamed(field, &values),
                l.offsets().clone(),
                values,
                l.nulls().cloned(),
            )?)
        }
        DataType::LargeList(field) => {
            let l = a.as_list::<i64>();
            let values = escape_array(l.values())?;
            Arc::new(LargeListArray::try_new(
                renamed(field, &values),
                l.offsets().clone(),
                values,
                l.nulls().cloned(),
            )?)
        }
        DataType::FixedSizeList(field, size) => {
            let l = a.as_fixed_size_list();
            let values = escape_array(l.values())?;
            Arc::new(FixedSizeListArray::try_new(
                renamed(field, &values),
                *size,
                values,
                l.nulls().cloned(),
            )?)
        }
        DataType::Struct(fields) => {
            let s = a.as_struct();
            let columns = s
                .columns()
                .iter()
                .map(escape_array)
                .collect::<Result<Vec<_>, _>>()?;
            let fields: Fields = fields
                .iter()
                .zip(&columns)
                .map(|(f, c)| renamed(f, c))
                .collect();
            Arc::new(StructArray::try_new(fields, columns, s.nulls().cloned())?)
        }
        DataType::Map(field, ordered) => {
            let m = a.as_map();
            let entries: ArrayRef = Arc::new(m.entries().clone());
            let entries = escape_array(&entries)?;
            Arc::new(MapArray::try_new(
                renamed(field, &entries),
                m.offsets().clone(),
                entries.as_struct().clone(),
                m.nulls().cloned(),
                *ordered,
            )?)
        }
        DataType::Dictionary(_, _) => {
            let d = a
                .as_any_dictionary_opt()
                .ok_or_else(|| ArrowError::CastError("dictionary".into()))?;
            let values = escape_array(d.values())?;
            d.with_values(values)
        }
        // Any other nested value that could hold text is shown as its escaped text.
        t if t.is_nested() || matches!(t, DataType::RunEndEncoded(..)) => as_text(a)?,
        _ => a.clone(),
    })
}

/// A column as its escaped display text.
fn as_text(a: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    let options = FormatOptions::default();
    let f = ArrayFormatter::try_new(a.as_ref(), &options)?;
    let text: StringArray = (0..a.len())
        .map(|i| (!a.is_null(i)).then(|| escape(&f.value(i).to_string()).into_owned()))
        .collect();
    Ok(Arc::new(text))
}

/// The batches (already escaped) with nested columns (lists, structs, maps) as their
/// display text, for formats that only hold flat values (CSV).
pub fn flatten_nested(batches: &[RecordBatch]) -> Result<Vec<RecordBatch>, ArrowError> {
    batches
        .iter()
        .map(|b| {
            let columns = b
                .columns()
                .iter()
                .map(|c| {
                    if c.data_type().is_nested() {
                        as_text(c)
                    } else {
                        Ok(c.clone())
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            let fields: Vec<Field> = b
                .schema()
                .fields()
                .iter()
                .zip(&columns)
                .map(|(f, c)| Field::new(f.name(), c.data_type().clone(), f.is_nullable()))
                .collect();
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        })
        .collect()
}

/// A child field under its escaped name, with its (possibly rebuilt) child's type.
fn renamed(f: &FieldRef, child: &ArrayRef) -> FieldRef {
    Arc::new(
        f.as_ref()
            .clone()
            .with_name(escape(f.name()))
            .with_data_type(child.data_type().clone()),
    )
}

fn needs_escape<'a>(mut values: impl Iterator<Item = Option<&'a str>>) -> bool {
    values.any(|v| v.is_some_and(|s| s.chars().any(acts_on_terminal)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use arrow::array::ListBuilder;
    use arrow::array::StringBuilder;

    #[test]
    fn terminal_controls_are_escaped_and_text_kept() {
        assert_eq!(escape("张三 plain"), "张三 plain");
        assert_eq!(escape("a\u{1b}[2Jb\rc\u{7}"), "a\\u{1b}[2Jb\\rc\\u{7}");
        assert_eq!(escape("x\u{202E}y\u{9b}z"), "x\\u{202e}y\\u{9b}z");
        assert_eq!(
            escape("a\u{2028}b\u{200b}c\u{feff}"),
            "a\\u{2028}b\\u{200b}c\\u{feff}"
        );
        // Tag characters can spell hidden text; soft hyphens hide in plain sight.
        assert_eq!(escape("x\u{e0041}\u{ad}"), "x\\u{e0041}\\u{ad}");
    }

    #[test]
    fn batches_escape_strings_in_lists() {
        let mut list = ListBuilder::new(StringBuilder::new());
        list.values().append_value("ok");
        list.values().append_value("evil\u{1b}[1A");
        list.append(true);
        let strings: ArrayRef = Arc::new(StringArray::from(vec![Some("a\rb"), None]));
        let lists: ArrayRef = Arc::new({
            list.append(false);
            list.finish()
        });
        let batch = RecordBatch::try_from_iter(vec![("s", strings), ("l", lists)]).unwrap();
        let out = escape_batches(&[batch]).unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&out)
            .unwrap()
            .to_string();
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text}");
        assert!(
            text.contains("a\\rb") && text.contains("evil\\u{1b}[1A"),
            "{text}"
        );
    }
}
