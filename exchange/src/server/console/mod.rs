//! `exchange serve --http-listen`: the web console for auditors, agencies' data stewards
//! and analysts. Server-rendered pages (no script), charts drawn as SVG by the server.
//!
//! - Login with the principal's password ([`session`]); the session lives in server memory
//!   behind an HttpOnly, SameSite=Strict cookie (Secure under TLS), every form carries the
//!   session's CSRF token, and cross-site POSTs are refused by Origin as well.
//! - What a viewer sees follows their role: auditors the audit log ([`auditor`]), stewards
//!   their agency's grants and who read their data ([`steward`]), everyone their own history
//!   and what they may see ([`mine`]). Another role's page answers 403.
//! - Every page view, download and action is a statement of the viewer in the audit log
//!   (kind `console`), written before the page is sent: a page whose record cannot be
//!   written is not shown.
//! - Read-only: no page changes data or policy; the one action, "verify now", reads the log.

mod auditor;
mod chart;
mod html;
mod mine;
mod session;
mod steward;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::ExchangeFlightService;
use crate::audit::{AuditRecord, Decision, Entry, StatementKind, Summary};
use crate::engine::Exchange;
use html::{Cell, Nav, Table, esc, layout};
use session::{Sessions, same_secret};

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;

/// Time a client gets to send a request's headers (and, under TLS, to finish the handshake).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections of one client address at once (browsers open six): slow clients of one
/// address cannot take every connection (review 45 F1).
const MAX_CONNECTIONS_PER_ADDRESS: usize = 16;

/// How long one connection may last, keep-alive included: a body trickled a byte at a time
/// holds its connection no longer than this.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Largest request body: the console's forms are a few fields.
const MAX_BODY: usize = 16 * 1024;

/// Time a client gets to send a request's body, once its headers are in: a body trickled a
/// byte at a time is cut here, not at the connection's lifetime (review 46 F1).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The address a client is counted under: itself (IPv4) or its /64 (IPv6, where one host
/// holds a whole /64).
fn client_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

/// Read a request's body within [`BODY_TIMEOUT`] and [`MAX_BODY`] before any handler sees it.
async fn read_body(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(
                parts,
                axum::body::Body::from(bytes),
            ))
            .await
        }
        Ok(Err(_)) => plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is too large",
        ),
        Err(_) => plain(
            StatusCode::REQUEST_TIMEOUT,
            "the request body came too slowly",
        ),
    }
}

/// Open connections by client address.
#[derive(Default)]
struct PerAddress(Mutex<HashMap<std::net::IpAddr, usize>>);

/// One connection counted against its address, until it closes.
struct AddressSlot(Arc<PerAddress>, std::net::IpAddr);

impl PerAddress {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<AddressSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= MAX_CONNECTIONS_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(AddressSlot(Arc::clone(self), ip))
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// A "verify now": when, by whom, what it found.
#[derive(Clone)]
pub(super) struct Verification {
    pub when: String,
    pub by: String,
    pub at: Instant,
    pub result: Result<Summary, String>,
}

/// The console's shared state.
pub(crate) struct Console {
    gate: Arc<ExchangeFlightService>,
    sessions: Sessions,
    secure: bool,
    /// The last "verify now": when, by whom, what it found.
    verified: Mutex<Option<Verification>>,
    /// Held while a verification runs.
    verifying: tokio::sync::Mutex<()>,
    /// When the server opened (and so verified) the log.
    opened: String,
}

type Shared = State<Arc<Console>>;

/// Who is looking.
#[derive(Clone)]
struct Viewer {
    pub principal: String,
    pub agency: String,
    pub purpose: String,
    pub roles: Vec<String>,
    pub csrf: String,
}

impl Viewer {
    pub fn is(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// A page: HTML parts and tables, in order.
struct Page {
    pub title: String,
    pub parts: Vec<Part>,
}

enum Part {
    Html(String),
    Table(Table),
}

impl Page {
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            parts: Vec::new(),
        }
    }

    pub fn html(&mut self, html: impl Into<String>) {
        self.parts.push(Part::Html(html.into()));
    }

    pub fn table(&mut self, table: Table) {
        self.parts.push(Part::Table(table));
    }

    fn rows(&self) -> u64 {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Table(t) => t.rows.len() as u64,
                Part::Html(_) => 0,
            })
            .sum()
    }
}

/// Why a page is not shown.
enum Refusal {
    /// The viewer's role does not cover it (403).
    Forbidden(String),
    /// No such page or record (404).
    NotFound(String),
    /// The log or policy could not be read (500).
    Failed(String),
}

/// The query string of a page.
type Params = HashMap<String, String>;

/// Records of the log, one per statement (completions folded in), from `since` on.
fn statements(ex: &Exchange, since: Option<DateTime<Utc>>) -> Result<Vec<AuditRecord>, Refusal> {
    let records = crate::audit::read_all(ex.audit().path())
        .map_err(|e| Refusal::Failed(format!("the audit log cannot be read: {e}")))?;
    let mut out = crate::audit::statements(records);
    if let Some(since) = since {
        out.retain(|r| time_of(r).is_some_and(|t| t >= since));
    }
    Ok(out)
}

/// A record's time.
fn time_of(r: &AuditRecord) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(&r.time)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A record's time as shown (UTC, to the second).
fn shown_time(r: &AuditRecord) -> String {
    time_of(r)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| r.time.clone())
}

/// The start of the period `?since=` names (1h, 24h, 7d, 30d; anything else: all).
fn since(q: &Params) -> Option<DateTime<Utc>> {
    let d = match q.get("since").map(String::as_str) {
        Some("1h") => chrono::TimeDelta::hours(1),
        Some("24h") => chrono::TimeDelta::hours(24),
        Some("7d") => chrono::TimeDelta::days(7),
        Some("30d") => chrono::TimeDelta::days(30),
        _ => return None,
    };
    Some(Utc::now() - d)
}

/// Links choosing one value of `key` (the others of the query kept).
fn filter_links(path: &str, q: &Params, key: &str, choices: &[(&str, &str)]) -> String {
    let current = q.get(key).map(String::as_str).unwrap_or("");
    let mut out = String::from("<p class=\"filters\">");
    for (value, label) in choices {
        let mut query: Vec<(String, String)> = q
            .iter()
            .filter(|(k, _)| k.as_str() != key && k.as_str() != "format" && k.as_str() != "table")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !value.is_empty() {
            query.push((key.to_string(), value.to_string()));
        }
        query.sort();
        let qs: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{}={}", html::query_value(k), html::query_value(v)))
            .collect();
        let href = if qs.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", qs.join("&"))
        };
        out.push_str(&format!(
            "<a href=\"{}\"{}>{}</a>",
            esc(&href),
            if *value == current {
                " class=\"on\""
            } else {
                ""
            },
            esc(label)
        ));
    }
    out.push_str("</p>");
    out
}

/// A link to one record's page.
fn record_link(seq: u64) -> Cell {
    Cell::Link(seq.to_string(), format!("/audit/record?seq={seq}"))
}

/// At most `n` characters of `text`, marked when cut.
fn clip(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        return text.to_string();
    }
    let mut out: String = text.chars().take(n).collect();
    out.push('…');
    out
}

const PERIODS: [(&str, &str); 5] = [
    ("", "all time"),
    ("30d", "30 days"),
    ("7d", "7 days"),
    ("24h", "24 hours"),
    ("1h", "1 hour"),
];

impl Console {
    fn exchange(&self) -> &Exchange {
        self.gate.exchange()
    }

    /// The viewer of a request's session cookie.
    fn viewer(&self, headers: &HeaderMap) -> Option<(String, Viewer)> {
        let (id, s) = self.sessions.of(headers)?;
        // A principal removed from the policy, or whose password changed, since login
        // has no session any more.
        if !self.gate.credentials_current(&s.principal, &s.stamp) {
            self.sessions.remove(&id);
            return None;
        }
        let gov = self.exchange().governance();
        let p = gov.policies.principal(&s.principal)?;
        Some((
            id,
            Viewer {
                principal: p.name.clone(),
                agency: p.agency.clone(),
                purpose: s.purpose,
                roles: p.roles.clone(),
                csrf: s.csrf,
            },
        ))
    }

    fn nav(v: &Viewer) -> Vec<Nav> {
        let mut nav = vec![Nav {
            href: "/",
            label: "Home",
        }];
        if v.is("auditor") {
            nav.extend([
                Nav {
                    href: "/audit/activity",
                    label: "Activity",
                },
                Nav {
                    href: "/audit/refusals",
                    label: "Refusals",
                },
                Nav {
                    href: "/audit/access",
                    label: "Access",
                },
                Nav {
                    href: "/audit/exports",
                    label: "Exports",
                },
                Nav {
                    href: "/audit/statements",
                    label: "Statements",
                },
                Nav {
                    href: "/audit/log",
                    label: "Log integrity",
                },
            ]);
        }
        if v.is("steward") {
            nav.extend([
                Nav {
                    href: "/steward/grants",
                    label: "Our grants",
                },
                Nav {
                    href: "/steward/reads",
                    label: "Reads of our data",
                },
            ]);
        }
        nav.extend([
            Nav {
                href: "/me/history",
                label: "My history",
            },
            Nav {
                href: "/me/access",
                label: "What I may see",
            },
        ]);
        nav
    }

    /// Write the record of a viewer's request; false when it could not be written.
    fn record(
        &self,
        v: &Viewer,
        statement: String,
        decision: Decision,
        reason: Option<String>,
        rows: Option<u64>,
        started: Instant,
    ) -> bool {
        let entry = Entry {
            decision,
            reason,
            rows,
            ..Entry::new(StatementKind::Console, &v.principal, statement)
                .declared(Some(v.agency.clone()), Some(&v.purpose))
                .timed(started)
        };
        self.exchange().audit().append(entry).is_ok()
    }

    fn page_response(&self, v: &Viewer, status: StatusCode, page: &Page, target: &str) -> Response {
        let mut body = String::new();
        for part in &page.parts {
            match part {
                Part::Html(h) => body.push_str(h),
                Part::Table(t) => body.push_str(&t.html(target)),
            }
        }
        let html = layout(
            &page.title,
            Some((&v.principal, &v.agency, &v.purpose)),
            &Self::nav(v),
            Some(&v.csrf),
            &body,
        );
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response()
    }
}

/// The statement a request is recorded as: method, path and query, at most 2000
/// characters (a URL is the viewer's own text, like a SQL statement).
fn statement_of(method: &Method, uri: &Uri) -> String {
    clip(
        &format!(
            "{method} {}",
            uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
        ),
        2000,
    )
}

/// The answer when the record of a request cannot be written: nothing is shown or done.
fn unrecorded() -> Response {
    plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "the audit log cannot be written: nothing is shown or done",
    )
}

fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

fn plain(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        layout("Refused", None, &[], None, &format!("<p>{}</p>", esc(text))),
    )
        .into_response()
}

/// Whether a POST comes from the console's own pages: an `Origin` (or, failing that, a
/// fetch-site header) naming another site refuses it, on top of SameSite cookies and
/// the CSRF token.
fn same_origin(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|s| s == "cross-site" || s == "same-site")
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| !host.is_empty() && rest == host)
}

/// GET of any page: who is looking, whether their role covers it, the page or its CSV,
/// and its record in the log.
async fn page(
    State(c): Shared,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<Params>,
) -> Response {
    let started = Instant::now();
    let Some((_, v)) = c.viewer(&headers) else {
        return redirect("/login");
    };
    let path = uri.path().to_string();
    let target = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let statement = statement_of(&method, &uri);
    let built = {
        let c = Arc::clone(&c);
        let v = v.clone();
        // Pages read the log and policy files: off the async workers.
        tokio::task::spawn_blocking(move || build(&c, &v, &path, &q).map(|p| (p, q)))
            .await
            .unwrap_or_else(|_| Err(Refusal::Failed("the page failed".into())))
    };
    let (page, q) = match built {
        Ok(p) => p,
        Err(refusal) => {
            let (status, decision, reason) = match refusal {
                Refusal::Forbidden(r) => (StatusCode::FORBIDDEN, Decision::Refused, r),
                Refusal::NotFound(r) => (StatusCode::NOT_FOUND, Decision::Failed, r),
                Refusal::Failed(r) => (StatusCode::INTERNAL_SERVER_ERROR, Decision::Failed, r),
            };
            if !c.record(&v, statement, decision, Some(reason.clone()), None, started) {
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the audit log cannot be written: nothing is shown",
                );
            }
            let mut p = Page::new(if status == StatusCode::FORBIDDEN {
                "Not for your role"
            } else {
                "Not shown"
            });
            p.html(format!("<p class=\"bad\">{}</p>", esc(&reason)));
            return c.page_response(&v, status, &p, &target);
        }
    };
    if q.get("format").is_some_and(|f| f == "csv") {
        let wanted = q.get("table").map(String::as_str).unwrap_or("");
        let table = page.parts.iter().find_map(|p| match p {
            Part::Table(t) if t.id == wanted || wanted.is_empty() => Some(t),
            _ => None,
        });
        let Some(table) = table else {
            if !c.record(
                &v,
                statement,
                Decision::Failed,
                Some("no such table on the page".into()),
                None,
                started,
            ) {
                return unrecorded();
            }
            return plain(StatusCode::NOT_FOUND, "no such table on the page");
        };
        if !c.record(
            &v,
            statement,
            Decision::Allowed,
            None,
            Some(table.rows.len() as u64),
            started,
        ) {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the audit log cannot be written: nothing is shown",
            );
        }
        let name = format!(
            "{}-{}.csv",
            uri.path().trim_matches('/').replace('/', "-"),
            table.id
        );
        return (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{name}\""),
                ),
            ],
            table.csv(),
        )
            .into_response();
    }
    if !c.record(
        &v,
        statement,
        Decision::Allowed,
        None,
        Some(page.rows()),
        started,
    ) {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit log cannot be written: nothing is shown",
        );
    }
    c.page_response(&v, StatusCode::OK, &page, &target)
}

/// The page at `path` for `v`, or why not.
fn build(c: &Console, v: &Viewer, path: &str, q: &Params) -> Result<Page, Refusal> {
    let ex = c.exchange();
    let auditor = || {
        if v.is("auditor") {
            Ok(())
        } else {
            Err(Refusal::Forbidden(
                "the audit pages are for principals with the auditor role".into(),
            ))
        }
    };
    let steward = || {
        if v.is("steward") {
            Ok(())
        } else {
            Err(Refusal::Forbidden(
                "the steward pages are for principals with the steward role".into(),
            ))
        }
    };
    match path {
        "/" => Ok(mine::home(ex, v)),
        "/me/history" => mine::history(ex, v, q),
        "/me/access" => Ok(mine::access(ex, v)),
        "/audit" | "/audit/activity" => auditor().and_then(|_| auditor::activity(ex, q)),
        "/audit/refusals" => auditor().and_then(|_| auditor::refusals(ex, q)),
        "/audit/access" => auditor().and_then(|_| auditor::access(ex, q)),
        "/audit/exports" => auditor().and_then(|_| auditor::exports(ex, q)),
        "/audit/statements" => auditor().and_then(|_| auditor::list(ex, q)),
        "/audit/record" => auditor().and_then(|_| auditor::record(ex, q)),
        "/audit/log" => {
            auditor()?;
            let last = c.verified.lock().map(|l| l.clone()).unwrap_or(None);
            Ok(auditor::log_status(ex, v, &c.opened, last))
        }
        "/steward" | "/steward/grants" => steward().map(|_| steward::grants(ex, v)),
        "/steward/reads" => steward().and_then(|_| steward::reads(ex, v, q)),
        _ => Err(Refusal::NotFound(format!("no page {}", clip(path, 200)))),
    }
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    nonce: String,
}

fn login_page(
    c: &Console,
    headers: &HeaderMap,
    status: StatusCode,
    message: Option<&str>,
    user: &str,
) -> Response {
    // A nonce the browser already holds is kept: another tab's login form, or a request
    // sent to /login behind the form's back (a favicon), must not void the form shown.
    let held = session::cookie(headers, c.sessions.login_cookie_name())
        .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string);
    let Some(nonce) = held.or_else(session::random_hex) else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "no randomness for a login form",
        );
    };
    let body = format!(
        "{msg}<form method=\"post\" action=\"/login\" class=\"login card\"><input type=\"hidden\" name=\"nonce\" value=\"{nonce}\"><label for=\"user\">Principal</label><input type=\"text\" id=\"user\" name=\"user\" value=\"{user}\" autocomplete=\"username\" required><label for=\"password\">Password</label><input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required><label for=\"purpose\">Purpose (when you have more than one)</label><input type=\"text\" id=\"purpose\" name=\"purpose\"><br><button type=\"submit\">Log in</button></form><p class=\"meta\">Every page you open is recorded in the audit log under your name and purpose.</p>",
        msg = message
            .map(|m| format!("<p class=\"bad\" id=\"error\">{}</p>", esc(m)))
            .unwrap_or_default(),
        user = esc(user),
    );
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        layout("Log in", None, &[], None, &body),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&c.sessions.set_cookie(
        c.sessions.login_cookie_name(),
        &nonce,
        session::LOGIN_FORM_SECS,
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn login_form(State(c): Shared, headers: HeaderMap) -> Response {
    if c.viewer(&headers).is_some() {
        return redirect("/");
    }
    login_page(&c, &headers, StatusCode::OK, None, "")
}

async fn login(State(c): Shared, headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    let started = Instant::now();
    // The form's nonce must come back in its cookie: a login form posted from another
    // site (logging the victim in as the attacker) has no such cookie.
    let nonce_ok = session::cookie(&headers, c.sessions.login_cookie_name())
        .is_some_and(|n| same_secret(n, &f.nonce));
    if !nonce_ok || !same_origin(&headers) {
        return login_page(
            &c,
            &headers,
            StatusCode::FORBIDDEN,
            Some("the login form expired or came from another site: log in again"),
            "",
        );
    }
    let stamp = match c
        .gate
        .check_password(&f.user, &f.password, "(console login)")
        .await
    {
        Ok(stamp) => stamp,
        Err(status) => {
            return login_page(
                &c,
                &headers,
                StatusCode::UNAUTHORIZED,
                Some(status.message()),
                "",
            );
        }
    };
    let gov = c.exchange().governance();
    let Some(p) = gov.policies.principal(&f.user) else {
        return login_page(
            &c,
            &headers,
            StatusCode::UNAUTHORIZED,
            Some("wrong user name or password"),
            "",
        );
    };
    let purpose = f.purpose.trim();
    let purpose = if purpose.is_empty() {
        match p.purposes.as_slice() {
            [only] => only.clone(),
            _ => {
                return login_page(
                    &c,
                    &headers,
                    StatusCode::BAD_REQUEST,
                    Some(&format!(
                        "state your purpose: one of {}",
                        p.purposes.join(", ")
                    )),
                    &f.user,
                );
            }
        }
    } else if p.purposes.iter().any(|x| x == purpose) {
        purpose.to_string()
    } else {
        let recorded = c.exchange().audit().append(Entry {
            decision: Decision::Refused,
            reason: Some("purpose not declared for the principal".into()),
            ..Entry::new(StatementKind::Console, &p.name, "POST /login")
                .declared(Some(p.agency.clone()), Some(purpose))
                .timed(started)
        });
        if recorded.is_err() {
            return unrecorded();
        }
        return login_page(
            &c,
            &headers,
            StatusCode::FORBIDDEN,
            Some(&format!(
                "purpose not declared for {}: one of {}",
                p.name,
                p.purposes.join(", ")
            )),
            &f.user,
        );
    };
    let Some(id) = c.sessions.create(&p.name, &purpose, &stamp) else {
        let _ = c.exchange().audit().append(Entry {
            decision: Decision::Refused,
            reason: Some("too many console sessions open".into()),
            ..Entry::new(StatementKind::Console, &p.name, "POST /login")
                .declared(Some(p.agency.clone()), Some(&purpose))
                .timed(started)
        });
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many console sessions open",
        );
    };
    let recorded = c
        .exchange()
        .audit()
        .append(
            Entry::new(StatementKind::Console, &p.name, "POST /login")
                .declared(Some(p.agency.clone()), Some(&purpose))
                .timed(started),
        )
        .is_ok();
    if !recorded {
        c.sessions.remove(&id);
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit log cannot be written: no login",
        );
    }
    let mut r = redirect("/");
    for cookie in [
        c.sessions.session_cookie(&id),
        c.sessions.set_cookie(c.sessions.login_cookie_name(), "", 0),
    ] {
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

#[derive(Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
}

/// The viewer of a POST whose CSRF token and origin check out.
fn poster(
    c: &Console,
    headers: &HeaderMap,
    form: &ActionForm,
) -> Result<(String, Viewer), Box<Response>> {
    let Some((id, v)) = c.viewer(headers) else {
        return Err(Box::new(redirect("/login")));
    };
    if !same_origin(headers) || !same_secret(&form.csrf, &v.csrf) {
        return Err(Box::new(plain(
            StatusCode::FORBIDDEN,
            "the form did not come from this console (CSRF check failed): reload the page",
        )));
    }
    Ok((id, v))
}

async fn logout(State(c): Shared, headers: HeaderMap, Form(f): Form<ActionForm>) -> Response {
    let started = Instant::now();
    let (id, v) = match poster(&c, &headers, &f) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    // Logging out always ends the session; a failed record is told.
    let recorded = c.record(
        &v,
        "POST /logout".into(),
        Decision::Allowed,
        None,
        None,
        started,
    );
    c.sessions.remove(&id);
    let mut r = if recorded {
        redirect("/login")
    } else {
        unrecorded()
    };
    if let Ok(v) = HeaderValue::from_str(&c.sessions.set_cookie(c.sessions.cookie_name(), "", 0)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// A verification is not run again within this long of the last: its result is shown.
const VERIFY_COOLDOWN: Duration = Duration::from_secs(10);

async fn verify_now(State(c): Shared, headers: HeaderMap, Form(f): Form<ActionForm>) -> Response {
    let started = Instant::now();
    let (_, v) = match poster(&c, &headers, &f) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let statement = "POST /audit/verify".to_string();
    if !v.is("auditor") {
        let reason = "the audit pages are for principals with the auditor role";
        if !c.record(
            &v,
            statement,
            Decision::Refused,
            Some(reason.into()),
            None,
            started,
        ) {
            return unrecorded();
        }
        return plain(StatusCode::FORBIDDEN, reason);
    }
    // One verification at a time (review 45 F4): a request during one, or soon after,
    // gets its result.
    let recent = |c: &Console| {
        c.verified
            .lock()
            .ok()
            .and_then(|l| l.as_ref().map(|v| v.at.elapsed() < VERIFY_COOLDOWN))
            .unwrap_or(false)
    };
    let Ok(_running) = c.verifying.try_lock() else {
        let note = "a verification was running: its result is shown";
        if !c.record(
            &v,
            statement,
            Decision::Allowed,
            Some(note.into()),
            None,
            started,
        ) {
            return unrecorded();
        }
        return redirect("/audit/log");
    };
    if recent(&c) {
        let note = "verified less than 10 s before: that result is shown";
        if !c.record(
            &v,
            statement,
            Decision::Allowed,
            Some(note.into()),
            None,
            started,
        ) {
            return unrecorded();
        }
        return redirect("/audit/log");
    }
    let result = {
        let c = Arc::clone(&c);
        tokio::task::spawn_blocking(move || c.exchange().audit().verify_now())
            .await
            .map_err(|_| "verification failed".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
    };
    let reason = result.as_ref().err().cloned();
    if let Ok(mut last) = c.verified.lock() {
        *last = Some(Verification {
            when: Utc::now().format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            by: v.principal.clone(),
            at: Instant::now(),
            result,
        });
    }
    let decision = if reason.is_none() {
        Decision::Allowed
    } else {
        Decision::Failed
    };
    if !c.record(&v, statement, decision, reason, None, started) {
        return unrecorded();
    }
    redirect("/audit/log")
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        html::CSS,
    )
        .into_response()
}

/// Headers on every response: nothing runs, nothing frames it, nothing is cached, no
/// referrer leaves the console (`same-origin`, not `no-referrer`: under that, browsers send
/// `Origin: null` with forms, and the origin check could not tell the console's own).
async fn harden(State(c): Shared, mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
    ];
    for (k, v) in set {
        h.insert(k, HeaderValue::from_static(v));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if c.secure {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    r
}

fn router(c: Arc<Console>) -> Router {
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/audit/verify", post(verify_now))
        .route("/static/console.css", get(css))
        .route("/favicon.ico", get(|| async { StatusCode::NOT_FOUND }))
        .fallback(get(page))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(read_body))
        .layer(axum::middleware::map_response_with_state(
            Arc::clone(&c),
            harden,
        ))
        .with_state(c)
}

/// Serve the console on `listener` until `stop` is notified.
pub(crate) async fn accept(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    gate: Arc<ExchangeFlightService>,
    session_ttl: Duration,
    stop: Arc<tokio::sync::Notify>,
) {
    let console = Arc::new(Console {
        gate,
        sessions: Sessions::new(session_ttl, tls.is_some()),
        secure: tls.is_some(),
        verified: Mutex::new(None),
        verifying: tokio::sync::Mutex::new(()),
        opened: Utc::now().format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    });
    let app = router(console);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_address = Arc::new(PerAddress::default());
    loop {
        let permit = tokio::select! {
            _ = stop.notified() => return,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.notified() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                // Out of descriptors and the like: wait, then go on accepting.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Past its address's share, a connection is closed at once.
        let Some(slot) = per_address.take(client_key(peer.ip())) else {
            continue;
        };
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _slot = slot;
            let service = hyper_util::service::TowerToHyperService::new(app);
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            match tls {
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let serving = http.serve_connection(io, service);
                    let _ = tokio::time::timeout(CONNECTION_LIFETIME, serving).await;
                }
                None => {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let serving = http.serve_connection(io, service);
                    let _ = tokio::time::timeout(CONNECTION_LIFETIME, serving).await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::client_key;

    #[test]
    fn clients_are_counted_by_address_and_ipv6_by_their_64() {
        let k = |s: &str| client_key(s.parse().unwrap()).to_string();
        assert_eq!(k("192.0.2.7"), "192.0.2.7");
        assert_eq!(k("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(k("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::");
        assert_eq!(k("::ffff:192.0.2.7"), "192.0.2.7");
    }
}
