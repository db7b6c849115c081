//! Console sessions: a random identifier in an HttpOnly, SameSite=Strict cookie (Secure and
//! `__Host-` prefixed under TLS), held in memory so that it dies with the server and on
//! logout; a per-session CSRF token that every form carries back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use ring::rand::{SecureRandom, SystemRandom};

/// Sessions held at once; past that, expired ones are dropped and, if still full, the
/// login is turned away (a flood of logins cannot grow memory without bound).
const MAX_SESSIONS: usize = 10_000;

/// Sessions of one principal at once: a new login past it ends that principal's oldest
/// session, so one principal's logins cannot fill the table for everyone (review 45 F3).
pub(super) const MAX_SESSIONS_PER_PRINCIPAL: usize = 8;

/// How long the login form's nonce cookie lives.
pub(super) const LOGIN_FORM_SECS: u64 = 900;

/// A logged-in viewer.
#[derive(Debug, Clone)]
pub(super) struct Session {
    pub principal: String,
    pub purpose: String,
    pub csrf: String,
    /// The principal's credential stamp at login: the session ends when it changes.
    pub stamp: String,
    expires: Instant,
}

/// Sessions by identifier.
pub(super) struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    ttl: Duration,
    /// Under TLS: Secure cookies with the `__Host-` prefix.
    secure: bool,
}

/// 256 random bits as hex.
pub(super) fn random_hex() -> Option<String> {
    let mut b = [0u8; 32];
    SystemRandom::new().fill(&mut b).ok()?;
    Some(hex::encode(b))
}

/// Whether two secrets are equal, in time independent of where they differ.
pub(super) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of cookie `name` in a request.
pub(super) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Sessions {
    pub fn new(ttl: Duration, secure: bool) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            ttl,
            secure,
        }
    }

    /// Name of the session cookie.
    pub fn cookie_name(&self) -> &'static str {
        if self.secure {
            "__Host-exchange"
        } else {
            "exchange"
        }
    }

    /// Name of the login form's nonce cookie.
    pub fn login_cookie_name(&self) -> &'static str {
        if self.secure {
            "__Host-exchange-login"
        } else {
            "exchange-login"
        }
    }

    /// A `Set-Cookie` value: `name=value` for `max_age` seconds (0: delete it).
    pub fn set_cookie(&self, name: &str, value: &str, max_age: u64) -> String {
        format!(
            "{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// The `Set-Cookie` value of a new session.
    pub fn session_cookie(&self, id: &str) -> String {
        self.set_cookie(self.cookie_name(), id, self.ttl.as_secs())
    }

    /// Start a session; its identifier, or None when too many are open or randomness failed.
    pub fn create(&self, principal: &str, purpose: &str, stamp: &str) -> Option<String> {
        let id = random_hex()?;
        let csrf = random_hex()?;
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut own: Vec<(Instant, String)> = map
            .iter()
            .filter(|(_, s)| s.principal == principal)
            .map(|(k, s)| (s.expires, k.clone()))
            .collect();
        if own.len() >= MAX_SESSIONS_PER_PRINCIPAL {
            own.sort();
            for (_, k) in own.iter().take(own.len() + 1 - MAX_SESSIONS_PER_PRINCIPAL) {
                map.remove(k);
            }
        }
        if map.len() >= MAX_SESSIONS {
            let now = Instant::now();
            map.retain(|_, s| s.expires > now);
            if map.len() >= MAX_SESSIONS {
                return None;
            }
        }
        map.insert(
            id.clone(),
            Session {
                principal: principal.to_string(),
                purpose: purpose.to_string(),
                csrf,
                stamp: stamp.to_string(),
                expires: Instant::now() + self.ttl,
            },
        );
        Some(id)
    }

    /// The live session of a request's cookie.
    pub fn of(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let id = cookie(headers, self.cookie_name())?;
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.get(id)?.clone();
        if s.expires <= Instant::now() {
            map.remove(id);
            return None;
        }
        Some((id.to_string(), s))
    }

    /// End a session.
    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(axum::http::header::COOKIE, v.parse().unwrap());
        h
    }

    #[test]
    fn sessions_live_until_removed_or_expired() {
        let s = Sessions::new(Duration::from_secs(60), false);
        let id = s.create("auditor", "audit_review", "00").unwrap();
        let (got, session) = s.of(&with_cookie(&format!("a=b; exchange={id}"))).unwrap();
        assert_eq!(
            (got.as_str(), session.principal.as_str()),
            (id.as_str(), "auditor")
        );
        assert!(s.of(&with_cookie("exchange=forged")).is_none());
        s.remove(&id);
        assert!(s.of(&with_cookie(&format!("exchange={id}"))).is_none());
        let short = Sessions::new(Duration::ZERO, false);
        let id = short.create("auditor", "audit_review", "00").unwrap();
        assert!(short.of(&with_cookie(&format!("exchange={id}"))).is_none());
    }

    #[test]
    fn a_principal_holds_a_bounded_number_of_sessions_the_oldest_ending_first() {
        let s = Sessions::new(Duration::from_secs(60), false);
        let first = s
            .create("hotline_analyst", "complaint_handling", "00")
            .unwrap();
        let other = s.create("auditor", "audit_review", "00").unwrap();
        let mut last = String::new();
        for _ in 0..MAX_SESSIONS_PER_PRINCIPAL * 3 {
            last = s
                .create("hotline_analyst", "complaint_handling", "00")
                .unwrap();
        }
        let alive = |id: &str| s.of(&with_cookie(&format!("exchange={id}"))).is_some();
        assert!(!alive(&first) && alive(&last) && alive(&other));
        let count = s
            .map
            .lock()
            .unwrap()
            .values()
            .filter(|x| x.principal == "hotline_analyst")
            .count();
        assert_eq!(count, MAX_SESSIONS_PER_PRINCIPAL);
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_under_tls() {
        let tls = Sessions::new(Duration::from_secs(60), true);
        let c = tls.session_cookie("x");
        assert!(c.starts_with("__Host-exchange=x; Path=/;"), "{c}");
        assert!(c.contains("HttpOnly; SameSite=Strict; Secure"), "{c}");
        assert!(
            !Sessions::new(Duration::from_secs(1), false)
                .session_cookie("x")
                .contains("Secure")
        );
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
    }
}
