//! Logging in over the Postgres protocol.
//!
//! A principal with a password logs in with SCRAM-SHA-256: the stored PBKDF2-HMAC-SHA256
//! hash is SCRAM's salted password, so the password never crosses the wire, even without
//! TLS. A principal with API tokens only sends a token as the password (cleartext
//! authentication), asked for over TLS or on loopback only. An unknown name goes through
//! SCRAM against a decoy salt and key, as stable as a real one's, with the iterations of
//! the costliest stored hash, and fails like a wrong password (review 31: a fresh random
//! salt told unknown names apart at SCRAM's first answer).
//! Every failure is audited. The purpose may be declared at startup
//! (`options=-c exchange.purpose=...`); one the principal may not declare refuses the login.

use std::fmt::Debug;

use async_trait::async_trait;
use futures::{Sink, SinkExt};
use pgwire::api::auth::sasl::scram::{ScramServerAuth, ScramServerAuthWaitingForClientFinal};
use pgwire::api::auth::{
    Password, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::{ClientInfo, METADATA_USER, PgWireConnectionState};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use super::Conn;
use crate::audit::{Decision, Entry, StatementKind};

/// SCRAM's mechanism name.
const SCRAM: &str = "SCRAM-SHA-256";

/// Where a login stands.
#[derive(Default)]
pub(super) enum Login {
    /// No startup message yet.
    #[default]
    Start,
    /// SCRAM offered; `stamp` the principal's credential stamp, None for a name that is
    /// no principal's.
    Scram {
        stamp: Option<String>,
        iterations: u32,
        salt: Vec<u8>,
        key: Vec<u8>,
    },
    /// SCRAM's server-first message sent.
    ScramSent {
        stamp: Option<String>,
        nonce: String,
        waiting: Box<ScramServerAuthWaitingForClientFinal>,
    },
    /// An API token asked for as the password.
    Token,
    /// Logged in.
    Done,
}

/// What a connection logged in with, checked again before each statement: a principal
/// removed from the policies, a changed password or a revoked API token ends what it
/// opened (a reload applies this to the next statement).
#[derive(Debug, Clone)]
pub(super) enum Credential {
    /// A password, by the principal's credential stamp at login.
    Password(String),
    /// An API token, by its stored form.
    Token(String),
}

impl Credential {
    /// Whether `principal` still logs in so under `policies`.
    pub(super) fn current(&self, policies: &crate::policy::PolicySet, principal: &str) -> bool {
        let Some(p) = policies.principal(principal) else {
            return false;
        };
        match self {
            Self::Password(stamp) => {
                crate::server::auth::same_stamp(&crate::server::auth::credential_stamp(p), stamp)
            }
            Self::Token(stored) => p.api_tokens.iter().any(|t| t == stored),
        }
    }
}

/// The value of a SCRAM message's attribute `name` (`r=...`).
fn attribute(message: &str, name: char) -> Option<String> {
    message.split(',').find_map(|a| {
        let mut chars = a.chars();
        (chars.next() == Some(name) && chars.next() == Some('=')).then(|| a[2..].to_string())
    })
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        code.into(),
        message,
    )))
}

impl Conn {
    fn user<C: ClientInfo>(client: &C) -> String {
        client
            .metadata()
            .get(METADATA_USER)
            .cloned()
            .unwrap_or_default()
    }

    /// A failed login, audited under the principal's name or `(unknown)`, never text an
    /// attacker chose; the error the client gets.
    fn refuse(&self, user: &str, reason: &str) -> PgWireError {
        let who = match self.shared.ex().governance().policies.principal(user) {
            Some(p) => p.name.clone(),
            None => "(unknown)".to_string(),
        };
        self.shared
            .gate
            .record_login_failure(&who, "(Postgres authentication)", reason);
        fatal(
            "28P01",
            format!(
                "password authentication failed for user \"{}\"",
                crate::text::escape(user)
            ),
        )
    }

    /// How `user` logs in: SCRAM against the stored hash (or a random one), or a token.
    fn offer(&self, user: &str, secure: bool) -> Result<Login, PgWireError> {
        let gov = self.shared.ex().governance();
        if let Some(p) = gov.policies.principal(user) {
            if let Some((iterations, salt, key)) = p
                .password_hash
                .as_deref()
                .and_then(crate::server::auth::password_parts)
            {
                return Ok(Login::Scram {
                    stamp: Some(crate::server::auth::credential_stamp(p)),
                    iterations,
                    salt,
                    key,
                });
            }
            if !p.api_tokens.is_empty() && secure {
                return Ok(Login::Token);
            }
        }
        // A name that is no principal's, or a service's (tokens only, which SCRAM cannot
        // check) seen from a host that may not send a token in clear: the same SCRAM offer
        // as a real principal's, with a salt and key of its own that stay the same from one
        // attempt to the next, and the iterations of the costliest stored hash.
        let decoy = self.shared.ex().key_ring().login_decoy_key();
        let salt = ring::hmac::sign(&decoy, format!("salt\0{user}").as_bytes());
        let key = ring::hmac::sign(&decoy, format!("key\0{user}").as_bytes());
        Ok(Login::Scram {
            stamp: None,
            iterations: self.shared.decoy_iterations,
            salt: salt.as_ref()[..16].to_vec(),
            key: key.as_ref().to_vec(),
        })
    }

    /// Logged in as `user`: the purpose stated at startup is checked, the session begins.
    async fn admit<C>(&self, client: &mut C, user: &str, credential: Credential) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let purpose = super::statement::startup_purpose(client.metadata());
        if let Some(purpose) = &purpose
            && let Err(e) = self.shared.ex().session(user, Some(purpose))
        {
            let reason = e.to_string();
            let _ = self.shared.ex().audit().append(Entry {
                decision: Decision::Refused,
                reason: Some(reason.clone()),
                ..Entry::new(StatementKind::Auth, user, "(Postgres authentication)")
                    .declared(self.shared.ex().agency_of(user), Some(purpose))
            });
            return Err(fatal("42501", crate::text::escape(&reason).into_owned()));
        }
        let Some(counted) = self.shared.count(user) else {
            let reason = format!(
                "{user} has {} connections open, as many as a principal may",
                super::MAX_CONNECTIONS_PER_PRINCIPAL
            );
            let _ = self.shared.ex().audit().append(Entry {
                decision: Decision::Refused,
                reason: Some(reason.clone()),
                ..Entry::new(StatementKind::Auth, user, "(Postgres authentication)")
            });
            return Err(fatal("53300", reason));
        };
        {
            let mut state = self.lock();
            state.counted = Some(counted);
            state.principal = Some(user.to_string());
            state.credential = Some(credential);
            state.purpose = purpose;
            state.login = Login::Done;
        }
        finish_authentication(client, &self.shared.parameters).await
    }
}

#[async_trait]
impl StartupHandler for Conn {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                let user = Self::user(client);
                // A token is asked for in clear over TLS or from this host only.
                let secure = client.is_secure() || client.socket_addr().ip().is_loopback();
                let login = self.offer(&user, secure)?;
                let ask = match &login {
                    Login::Token => Authentication::CleartextPassword,
                    _ => Authentication::SASL(vec![SCRAM.to_string()]),
                };
                self.lock().login = login;
                client
                    .send(PgWireBackendMessage::Authentication(ask))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(msg) => {
                let user = Self::user(client);
                let login = std::mem::take(&mut self.lock().login);
                match login {
                    Login::Scram {
                        stamp,
                        iterations,
                        salt,
                        key,
                    } => {
                        let first = msg.into_sasl_initial_response()?;
                        if first.auth_method != SCRAM {
                            return Err(self.refuse(&user, "an authentication method not offered"));
                        }
                        let data = first.data.unwrap_or_default();
                        let mut server = ScramServerAuth::new();
                        server.set_iterations(iterations as usize);
                        let (server_first, waiting) = server
                            .on_client_first_message(&data, Password::new(Some(salt), key))
                            .map_err(|_| self.refuse(&user, "a malformed SCRAM message"))?;
                        self.lock().login = Login::ScramSent {
                            stamp,
                            nonce: attribute(&server_first, 'r').unwrap_or_default(),
                            waiting: Box::new(waiting),
                        };
                        client
                            .send(PgWireBackendMessage::Authentication(
                                Authentication::SASLContinue(server_first.into()),
                            ))
                            .await?;
                    }
                    Login::ScramSent {
                        stamp,
                        nonce,
                        waiting,
                    } => {
                        let response = msg.into_sasl_response()?;
                        // The client-final message must carry the nonce this server sent
                        // (RFC 5802 section 5.1); pgwire checks only the proof.
                        let said = std::str::from_utf8(&response.data)
                            .ok()
                            .and_then(|m| attribute(m, 'r'));
                        if nonce.is_empty() || said.as_deref() != Some(nonce.as_str()) {
                            return Err(self.refuse(&user, "a SCRAM nonce not this server's"));
                        }
                        match waiting.on_client_final_message(&response.data) {
                            Ok(server_final) if let Some(stamp) = stamp => {
                                client
                                    .send(PgWireBackendMessage::Authentication(
                                        Authentication::SASLFinal(server_final.into()),
                                    ))
                                    .await?;
                                self.admit(client, &user, Credential::Password(stamp))
                                    .await?;
                            }
                            Ok(_) => return Err(self.refuse(&user, "unknown principal")),
                            Err(_) => return Err(self.refuse(&user, "wrong password")),
                        }
                    }
                    Login::Token => {
                        let token = msg.into_password()?.password;
                        let gov = self.shared.ex().governance();
                        match crate::server::auth::principal_of_api_token(&gov.policies, &token) {
                            Some(p) if p.name == user => {
                                let stored = crate::server::auth::hash_api_token(&token);
                                self.admit(client, &user, Credential::Token(stored)).await?
                            }
                            _ => return Err(self.refuse(&user, "unknown API token")),
                        }
                    }
                    Login::Start | Login::Done => {
                        return Err(fatal("08P01", "unexpected authentication message".into()));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::attribute;

    #[test]
    fn scram_attributes_are_read_by_name() {
        let first = "r=abcdefserver,s=c2FsdA==,i=4096";
        assert_eq!(attribute(first, 'r').as_deref(), Some("abcdefserver"));
        assert_eq!(attribute(first, 'i').as_deref(), Some("4096"));
        assert_eq!(
            attribute("c=biws,r=x,p=cHJvb2Y=", 'r').as_deref(),
            Some("x")
        );
        assert_eq!(attribute("c=biws,p=cHJvb2Y=", 'r'), None);
        assert_eq!(attribute("rr=x", 'r'), None);
    }
}
