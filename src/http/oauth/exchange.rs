//! RFC 8693 token exchange: an upstream token of the native app stands for
//! its session and mints a transfer token (or opens a hub native session
//! and answers its refresh token).
//!
//! What the exchange trusts: a subject token that verifies as an access
//! token of a configured issuer, carries a `sid`, is not revoked by a
//! logout, and was issued to the requesting client (its `azp`, `client_id`
//! or `aud` names it, or a client it lists in
//! `token_exchange_subject_clients`). A leaked token of some SPA opens
//! nothing. What it yields ends when the subject token expires (unless the
//! client has `token_exchange_outlives_subject`), and with the upstream
//! session's logout in any case.
//!
//! Errors follow RFC 8693 §2.2.2: a refused subject or actor token is
//! `invalid_request`, an audience the hub does not serve `invalid_target`.
//!
//! Must not: accept the hub's own session tokens (no nested SSO) or act
//! for another party (`actor_token`: delegation is not supported).

use std::collections::HashMap;
use std::net::IpAddr;

use serde_json::{Value, json};

use super::{STT_TOKEN_TYPE, required, transfer_answer, transfer_audience};
use crate::App;
use crate::error::OAuthError;

pub const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const REFRESH_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:refresh_token";
const SUBJECT_TYPES: [&str; 3] = [
    "urn:ietf:params:oauth:token-type:access_token",
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:oauth:token-type:jwt",
];

fn refused(why: impl Into<String>) -> OAuthError {
    OAuthError::InvalidRequest(why.into())
}

pub async fn exchange(
    app: &std::sync::Arc<App>,
    p: &HashMap<String, String>,
    client_id: &str,
    ip: IpAddr,
) -> Result<Value, OAuthError> {
    match (p.get("actor_token"), p.get("actor_token_type")) {
        (None, None) => {}
        (Some(_), None) => {
            return Err(refused(
                "actor_token_type is required with actor_token (RFC 8693 §2.1)",
            ));
        }
        _ => {
            return Err(refused(
                "delegation (actor_token) is not supported: exchange the native app's own token",
            ));
        }
    }
    let subject = required(p, "subject_token")?;
    let subject_type = required(p, "subject_token_type")?;
    if !SUBJECT_TYPES.contains(&subject_type) {
        return Err(refused(format!(
            "subject_token_type must be one of {}",
            SUBJECT_TYPES.join(", ")
        )));
    }
    let wants_refresh = match p.get("requested_token_type").map(String::as_str) {
        Some(REFRESH_TOKEN_TYPE) => true,
        None | Some(STT_TOKEN_TYPE) => false,
        Some(t) => {
            return Err(refused(format!(
                "requested_token_type {t:?} is not supported"
            )));
        }
    };
    if !wants_refresh {
        transfer_audience(app, p)?;
    }
    let principal = app.auth.verify_token(subject).await.map_err(|e| {
        app.metrics.auth_failure("token_exchange", e.reason());
        refused(format!("subject_token refused: {e}"))
    })?;
    if principal.issuer == app.hub_issuers.session_id {
        return Err(refused(
            "nested Native-to-Web SSO is not allowed: the subject is a transfer-created web session",
        ));
    }
    let client = app
        .sessions
        .client(client_id)
        .ok_or_else(|| OAuthError::InvalidClient("unknown client_id".into()))?;
    let issued_to_it = principal.issued_to(client_id)
        || client
            .token_exchange_subject_clients
            .iter()
            .any(|c| principal.issued_to(c));
    if !issued_to_it {
        app.metrics
            .auth_failure("token_exchange", "subject_of_another_client");
        return Err(refused(
            "the subject_token was not issued to this client (its azp, client_id or aud must name it)",
        ));
    }
    // A subject token already logged out must not open anything.
    let revoked = app
        .principal_revoked(&principal)
        .await
        .map_err(|e| OAuthError::TemporarilyUnavailable(format!("{e}; retry")))?;
    if revoked {
        return Err(refused("the subject_token was revoked by a logout"));
    }
    let sid = principal.sid.as_deref().ok_or_else(|| {
        refused(
            "the subject_token has no sid claim: the hub needs the upstream session to revoke along",
        )
    })?;
    let ends_ms = (!client.token_exchange_outlives_subject).then_some(principal.exp * 1000);
    let iss = app.auth.issuer_name(principal.issuer);
    if wants_refresh {
        let grant = app
            .sessions
            .open_native(client_id, iss, &principal.sub, Some(sid), ends_ms)
            .await?;
        let expires_in = (grant.expires_ms - crate::util::now_ms()).max(0) / 1000;
        return Ok(json!({
            "access_token": grant.refresh_token,
            "issued_token_type": REFRESH_TOKEN_TYPE,
            "token_type": "N_A",
            "expires_in": expires_in,
            "native_session": grant.native_session,
        }));
    }
    let minted = app
        .sessions
        .mint_for_upstream_session(client_id, iss, &principal.sub, sid, ends_ms, ip)
        .await;
    transfer_answer(app, client_id, minted).await
}
