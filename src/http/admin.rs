//! The operator's API: the audit trail (`GET /v1/audit`, NDJSON export at
//! `/v1/audit/export`; API key scope `audit:read`) and a user's live
//! sockets and session tree (`GET /v1/users/{sub}/connections`, scope
//! `admin`). `admin` includes every other scope.
//!
//! Must not: change state (logouts go through `/v1/logout`, audited there).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Bearer;
use crate::App;
use crate::audit::{self, Page};
use crate::auth::Credential;
use crate::auth::api_keys::ApiKey;
use crate::error::{ApiError, AuthError};

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/audit", get(audit_page))
        .route("/v1/audit/export", get(export))
        .route("/v1/users/{sub}/connections", get(connections))
}

/// The API key of the request, if it carries `scope`.
pub fn key_with(cred: Credential, scope: &'static str) -> Result<Arc<ApiKey>, ApiError> {
    match cred {
        Credential::Backend(k) => {
            k.require(scope)?;
            Ok(k)
        }
        Credential::User(_) => Err(AuthError::MissingScope(scope).into()),
    }
}

fn unavailable(e: crate::store::StoreError) -> ApiError {
    ApiError::Unavailable(format!("{e}; the audit trail cannot be read now, retry"))
}

/// A cursor is an entry id as the API gave it: digits, `-`, digits.
fn check_cursor(q: &audit::Query) -> Result<(), ApiError> {
    let valid = |c: &str| {
        c.split_once('-').is_some_and(|(a, b)| {
            [a, b]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit()))
        })
    };
    match q.cursor.as_deref() {
        Some(c) if !valid(c) => Err(ApiError::bad_request(
            "invalid_cursor",
            "cursor must be a next_cursor this API returned",
        )),
        _ => Ok(()),
    }
}

async fn audit_page(
    State(app): State<Arc<App>>,
    Bearer(cred): Bearer,
    Query(q): Query<audit::Query>,
) -> Result<Json<Page>, ApiError> {
    key_with(cred, "audit:read")?;
    check_cursor(&q)?;
    app.audit.page(&q).await.map(Json).map_err(unavailable)
}

/// Entries exported per request at most (`x-next-cursor` continues).
const MAX_EXPORT: usize = 100_000;

/// NDJSON, newest first: one entry per line.
async fn export(
    State(app): State<Arc<App>>,
    Bearer(cred): Bearer,
    Query(mut q): Query<audit::Query>,
) -> Result<Response, ApiError> {
    key_with(cred, "audit:read")?;
    check_cursor(&q)?;
    let want = q.limit.unwrap_or(10_000).clamp(1, MAX_EXPORT);
    let mut body = String::new();
    let mut sent = 0;
    let mut next = None;
    while sent < want {
        q.limit = Some((want - sent).min(audit::MAX_LIMIT));
        let page = app.audit.page(&q).await.map_err(unavailable)?;
        for e in &page.entries {
            body.push_str(&serde_json::to_string(e).unwrap_or_default());
            body.push('\n');
        }
        sent += page.entries.len();
        next = page.next_cursor;
        match &next {
            Some(c) => q.cursor = Some(c.clone()),
            None => break,
        }
    }
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    if let Some(c) = next.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert("x-next-cursor", c);
    }
    Ok(resp)
}

#[derive(Deserialize)]
struct ConnectionsQuery {
    /// The user's issuer; without it, every configured issuer.
    iss: Option<String>,
}

async fn connections(
    State(app): State<Arc<App>>,
    Bearer(cred): Bearer,
    Path(sub): Path<String>,
    Query(q): Query<ConnectionsQuery>,
) -> Result<Json<Value>, ApiError> {
    key_with(cred, "admin")?;
    if !crate::util::is_printable_id(&sub) {
        return Err(ApiError::bad_request(
            "bad_request",
            "sub must be 1 to 255 printable characters",
        ));
    }
    let issuers: Vec<String> = match q.iss {
        Some(iss) if app.auth.issuer_id(&iss).is_some() => vec![iss],
        Some(_) => {
            return Err(ApiError::bad_request(
                "unknown_issuer",
                "no issuer with this iss is configured",
            ));
        }
        None => app
            .auth
            .issuer_names()
            .into_iter()
            .filter(|i| *i != app.hub_issuers.session.iss)
            .collect(),
    };
    let users: Vec<(String, String)> = issuers.iter().map(|i| (i.clone(), sub.clone())).collect();
    let (sockets, answered, asked) = app.connections_everywhere(users).await;
    let mut sessions = Vec::new();
    for iss in &issuers {
        let tree = app.sessions.tree(iss, &sub).await.map_err(|e| {
            ApiError::Unavailable(format!("{e}; the session graph cannot be read now"))
        })?;
        let empty = tree["native_sessions"]
            .as_array()
            .is_some_and(Vec::is_empty)
            && tree["web_sessions"].as_array().is_some_and(Vec::is_empty);
        if !empty {
            sessions.push(tree);
        }
    }
    Ok(Json(json!({
        "sub": sub,
        "sockets": sockets,
        "sessions": sessions,
        "nodes": { "answered": answered, "asked": asked },
    })))
}
