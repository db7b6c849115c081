//! Pages as HTML strings: escaping, the layout every page shares, tables that are also
//! CSV downloads.

use std::fmt::Write;

/// `text` safe inside HTML text and attribute values.
pub(super) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` as a URL query value.
pub(super) fn query_value(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A table cell: text, or text linking to a page of the console.
#[derive(Debug, Clone)]
pub(super) enum Cell {
    /// Plain text.
    Text(String),
    /// Text linking to a console path (always one the server built, never user input).
    Link(String, String),
}

impl From<String> for Cell {
    fn from(s: String) -> Self {
        Cell::Text(s)
    }
}

impl From<&str> for Cell {
    fn from(s: &str) -> Self {
        Cell::Text(s.to_string())
    }
}

impl Cell {
    fn text(&self) -> &str {
        match self {
            Cell::Text(t) | Cell::Link(t, _) => t,
        }
    }
}

/// A table of a page: shown as HTML, downloadable as CSV (`?format=csv&table=<id>`).
#[derive(Debug, Clone)]
pub(super) struct Table {
    /// Identifier in the page (the CSV link names it).
    pub id: &'static str,
    /// Heading above it.
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
    /// Shown when there are no rows.
    pub empty: &'static str,
}

impl Table {
    pub fn new(id: &'static str, title: impl Into<String>, headers: &[&str]) -> Self {
        Self {
            id,
            title: title.into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            empty: "nothing yet",
        }
    }

    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    /// The table as HTML, with a link to its CSV (`page` is the page's path and query).
    pub fn html(&self, page: &str) -> String {
        let sep = if page.contains('?') { "&amp;" } else { "?" };
        let mut out = format!(
            "<section id=\"{id}\"><h2>{title}</h2><p class=\"meta\">{n} row{s} · <a href=\"{page}{sep}format=csv&amp;table={id}\">CSV</a></p>",
            id = self.id,
            title = esc(&self.title),
            n = self.rows.len(),
            s = if self.rows.len() == 1 { "" } else { "s" },
            page = esc(page),
        );
        if self.rows.is_empty() {
            let _ = write!(out, "<p class=\"empty\">{}</p></section>", esc(self.empty));
            return out;
        }
        out.push_str("<table><thead><tr>");
        for h in &self.headers {
            let _ = write!(out, "<th>{}</th>", esc(h));
        }
        out.push_str("</tr></thead><tbody>");
        for row in &self.rows {
            out.push_str("<tr>");
            for cell in row {
                match cell {
                    Cell::Text(t) => {
                        let _ = write!(out, "<td>{}</td>", esc(t));
                    }
                    Cell::Link(t, href) => {
                        let _ = write!(out, "<td><a href=\"{}\">{}</a></td>", esc(href), esc(t));
                    }
                }
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table></section>");
        out
    }

    /// The table as CSV (RFC 4180), every cell quoted, so that a spreadsheet splitting on
    /// `;` or `|` (other locales) still sees one cell; a cell a spreadsheet would read as a
    /// formula gets a leading apostrophe, so a statement text cannot run in the reviewer's
    /// spreadsheet (review 45 F5).
    pub fn csv(&self) -> String {
        let mut out = String::new();
        let line = |cells: &mut dyn Iterator<Item = &str>, out: &mut String| {
            let mut first = true;
            for c in cells {
                if !first {
                    out.push(',');
                }
                first = false;
                let c = if c.starts_with(['=', '+', '-', '@', '\t', '\r']) {
                    format!("'{c}")
                } else {
                    c.to_string()
                };
                let _ = write!(out, "\"{}\"", c.replace('"', "\"\""));
            }
            out.push_str("\r\n");
        };
        line(&mut self.headers.iter().map(String::as_str), &mut out);
        for row in &self.rows {
            line(&mut row.iter().map(Cell::text), &mut out);
        }
        out
    }
}

/// A navigation link the viewer may follow.
pub(super) struct Nav {
    pub href: &'static str,
    pub label: &'static str,
}

/// The page around `body`: header with the viewer and their links, logout form.
pub(super) fn layout(
    title: &str,
    viewer: Option<(&str, &str, &str)>,
    nav: &[Nav],
    csrf: Option<&str>,
    body: &str,
) -> String {
    let mut out = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t} · exchange</title><link rel=\"stylesheet\" href=\"/static/console.css\"></head><body><header><strong>exchange</strong> console",
        t = esc(title)
    );
    if let Some((principal, agency, purpose)) = viewer {
        out.push_str("<nav>");
        for n in nav {
            let _ = write!(out, "<a href=\"{}\">{}</a>", n.href, esc(n.label));
        }
        let _ = write!(
            out,
            "</nav><span class=\"who\">{p} ({a}) for {u}</span>",
            p = esc(principal),
            a = esc(agency),
            u = esc(purpose)
        );
        if let Some(token) = csrf {
            let _ = write!(
                out,
                "<form method=\"post\" action=\"/logout\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>Log out</button></form>",
                esc(token)
            );
        }
    }
    let _ = write!(
        out,
        "</header><main><h1>{}</h1>{body}</main></body></html>",
        esc(title)
    );
    out
}

/// The console's style sheet (served as a file: the content security policy allows no
/// inline style or script).
pub(super) const CSS: &str = r#"
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1d2430; background: #f6f7f9; }
header { background: #1d2a3a; color: #fff; padding: 10px 20px; display: flex; gap: 18px; align-items: center; flex-wrap: wrap; }
header nav { display: flex; gap: 12px; flex-wrap: wrap; }
header a { color: #cfe3ff; text-decoration: none; }
header .who { margin-left: auto; color: #d8dee8; }
header button { background: #33465c; color: #fff; border: 0; padding: 4px 10px; border-radius: 3px; cursor: pointer; }
form.inline { display: inline; }
main { padding: 12px 24px 40px; max-width: 1280px; }
h1 { font-size: 22px; margin: 8px 0 12px; }
h2 { font-size: 17px; margin: 22px 0 4px; }
p.meta { margin: 0 0 6px; color: #5b6678; font-size: 12px; }
p.empty { color: #5b6678; font-style: italic; }
table { border-collapse: collapse; background: #fff; font-size: 13px; }
th, td { border: 1px solid #d5dae1; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #e8ecf1; }
td { max-width: 520px; overflow-wrap: break-word; }
.ok { color: #17663a; font-weight: 600; }
.bad { color: #a3201a; font-weight: 600; }
.card { background: #fff; border: 1px solid #d5dae1; padding: 10px 14px; margin: 8px 0; }
label { display: block; margin: 8px 0 2px; }
input[type=text], input[type=password] { width: 260px; padding: 4px; }
form.login button, form.action button { margin-top: 10px; padding: 5px 14px; }
svg { background: #fff; border: 1px solid #d5dae1; }
svg text { font: 11px system-ui, sans-serif; fill: #1d2430; }
.filters a { margin-right: 10px; }
.filters a.on { font-weight: 700; }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let mut t = Table::new("t", "T", &["a", "b"]);
        t.row(vec!["=HYPERLINK(\"x\")".into(), "1,2".into()]);
        t.row(vec!["plain".into(), Cell::Link("42".into(), "/x".into())]);
        assert_eq!(
            t.csv(),
            "\"a\",\"b\"\r\n\"'=HYPERLINK(\"\"x\"\")\",\"1,2\"\r\n\"plain\",\"42\"\r\n"
        );
        // A cell with a formula after a separator of another locale stays one quoted cell.
        let mut t = Table::new("t", "T", &["a"]);
        t.row(vec!["GET /x?a;=1+1;@SUM(1)".into()]);
        assert_eq!(t.csv(), "\"a\"\r\n\"GET /x?a;=1+1;@SUM(1)\"\r\n");
    }

    #[test]
    fn html_tables_escape_cells_and_links() {
        let mut t = Table::new("t", "T", &["a"]);
        t.row(vec![Cell::Link("<b>".into(), "/r?x=\"".into())]);
        let h = t.html("/p?q=1");
        assert!(h.contains("<a href=\"/r?x=&quot;\">&lt;b&gt;</a>"), "{h}");
        assert!(h.contains("/p?q=1&amp;format=csv&amp;table=t"), "{h}");
    }
}
