//! Start-up steps for identity: the hub's signing keys, the issuers it
//! trusts (configured, its own session issuer, the dev issuer), the
//! authenticator, the registered SSO clients and each issuer's leeway.
//!
//! Must not: bind or serve anything (the caller does, once the app is whole).

use super::*;

/// A key the hub signs with (`name`: `session` or `dev`): a file in the
/// data directory, or, when nodes share a store, one key in it that the
/// first node creates and every node uses.
async fn signer(
    config: &Config,
    stores: &Stores,
    name: &str,
    file: &str,
    iss: String,
) -> Result<Signer, StartError> {
    if config.cluster.is_none() {
        return Ok(Signer::load_or_create(&config.data_dir, file, name, iss)?);
    }
    let keys = [name.to_string()];
    for _ in 0..3 {
        if let Some(r) = stores
            .durable
            .read(Kind::SigningKeys, &keys)
            .await?
            .remove(0)
        {
            let pkcs8 = B64.decode(&r.data).unwrap_or_default();
            return Signer::from_pkcs8(&pkcs8, name, iss).ok_or_else(|| {
                StartError::Store(StoreError::Corrupt(format!(
                    "the shared {name} signing key is not an Ed25519 key"
                )))
            });
        }
        let fresh = Record {
            kind: Kind::SigningKeys,
            key: keys[0].clone(),
            version: 0,
            expires_at_ms: i64::MAX / 2,
            data: B64.encode(Signer::generate_pkcs8()),
        };
        // The first node to start creates it; the others read that one.
        stores.durable.write_once(fresh).await?;
    }
    Err(StartError::Store(StoreError::Contention))
}

/// The issuers the hub trusts, its own among them: (every issuer's
/// settings, the hub's own, the names native sessions may be rooted at).
pub(super) async fn build_issuers(
    config: &Config,
    public_url: &str,
    clients: &[ClientSettings],
    stores: &Stores,
) -> Result<(Vec<IssuerSettings>, HubIssuers, Vec<String>), StartError> {
    let mut issuers = config.issuers.clone();
    let mut dev = None;
    let mut dev_id = None;
    if config.dev.issuer {
        let key = signer(
            config,
            stores,
            "dev",
            crate::auth::dev_issuer::KEY_FILE,
            format!("{public_url}/dev"),
        )
        .await?;
        let d = DevIssuer::with_signer(key);
        dev_id = Some(IssuerId(issuers.len() as u16));
        issuers.push(d.issuer_settings());
        if !config.is_dev() {
            tracing::warn!(
                "the dev issuer is enabled in production mode: it answers loopback clients only; turn it off (dev.issuer = false) for real deployments"
            );
        }
        dev = Some(d);
    }
    // Native sessions are rooted at these issuers (not the hub's own).
    let roots: Vec<String> = issuers.iter().map(|i| i.issuer.clone()).collect();
    check_issuer_tags(&roots)?;
    let session = Arc::new(
        signer(
            config,
            stores,
            "session",
            "hub-session.ed25519.pk8",
            public_url.to_string(),
        )
        .await?,
    );
    let session_id = IssuerId(issuers.len() as u16);
    let mut audiences: Vec<String> = clients
        .iter()
        .filter(|c| c.kind == ClientKind::Web)
        .map(|c| c.client_id.clone())
        .collect();
    if audiences.is_empty() {
        // No web client: no session token can be issued; keep the issuer valid.
        audiences.push("slo-hub-session".into());
    }
    issuers.push(session.issuer_settings(audiences));
    let own = HubIssuers {
        dev,
        dev_id,
        session,
        session_id,
    };
    Ok((issuers, own, roots))
}

/// Hub subjects name their issuer by a 32-bit tag (`sessions::hub_subject`):
/// two configured issuers with one tag would share their users.
fn check_issuer_tags(issuers: &[String]) -> Result<(), StartError> {
    let mut seen = std::collections::HashMap::new();
    for iss in issuers {
        if let Some(other) = seen.insert(sessions::issuer_tag(iss), iss) {
            return Err(StartError::Issuers(format!(
                "{other:?} and {iss:?} have the same subject tag; rename one"
            )));
        }
    }
    Ok(())
}

pub(super) fn build_origins(
    config: &Config,
    public_url: &str,
    demos: &[(&'static str, SocketAddr)],
    clients: &[ClientSettings],
) -> Origins {
    let mut sockets = config.ws.allowed_origins.clone();
    if config.is_dev() {
        sockets.push(public_url.to_string());
        for (_, a) in demos {
            sockets.push(format!("http://{a}"));
            sockets.push(format!("http://localhost:{}", a.port()));
        }
    }
    for o in clients.iter().flat_map(|c| &c.allowed_origins) {
        if !sockets.contains(o) {
            sockets.push(o.clone());
        }
    }
    let cors = if config.http.cors_origins.is_empty() {
        sockets.clone()
    } else {
        config.http.cors_origins.clone()
    };
    Origins { sockets, cors }
}

/// The authenticator, with the configured API keys and, in dev mode, a
/// fresh key written to a 0600 file (written only now: the store is open,
/// so this is the only hub on this data directory).
pub(super) async fn build_auth(
    config: &Config,
    issuers: &[IssuerSettings],
) -> Result<(Authenticator, Option<PathBuf>), StartError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let mut api_keys = ApiKeys::new(&config.api_keys);
    let mut dev_api_key_file = None;
    if config.is_dev() {
        let (key, _) = auth::api_keys::generate();
        let path = config.data_dir.join("dev-api-key");
        util::write_private_file(&path, format!("{key}\n").as_bytes()).map_err(|source| {
            StartError::DataDir {
                path: path.clone(),
                source,
            }
        })?;
        api_keys.add("dev", &key, config::API_SCOPES);
        dev_api_key_file = Some(path);
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let auth = Authenticator::new(issuers, api_keys, config.max_token_lifetime_secs, http)
        .map_err(StartError::Issuers)?;
    auth.load_keys().await;
    Ok((auth, dev_api_key_file))
}

/// How far each issuer's clock may run ahead of ours, by id (the hub's
/// own issuers share its clock).
pub(super) fn leeways(issuers: &[IssuerSettings], own: &HubIssuers) -> Vec<i64> {
    let hub_issued = [own.dev_id, Some(own.session_id)];
    issuers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if hub_issued.contains(&Some(IssuerId(i as u16))) {
                0
            } else {
                s.leeway_secs as i64
            }
        })
        .collect()
}

/// The registered clients; in dev mode with none configured, the demo's:
/// `native-sim` (mints transfer tokens) and the demo apps as web clients
/// (with their front-channel logout pages and post-logout addresses).
pub(super) fn sso_clients(
    config: &Config,
    demos: &[(&'static str, SocketAddr)],
) -> Vec<ClientSettings> {
    if !config.is_dev() || !config.clients.is_empty() {
        return config.clients.clone();
    }
    let mut native = ClientSettings::new("native-sim", ClientKind::Native);
    native.can_create_session_transfer_token = true;
    let mut clients = vec![native];
    for (name, addr) in demos {
        let mut web = ClientSettings::new(name, ClientKind::Web);
        for host in [addr.ip().to_string(), "localhost".into()] {
            let origin = format!("http://{host}:{}", addr.port());
            web.redirect_uris.push(format!("{origin}/"));
            web.post_logout_redirect_uris.push(format!("{origin}/"));
            web.allowed_origins.push(origin);
        }
        // The address the hub prints, so the iframe shares the app's storage.
        web.frontchannel_logout_uri =
            Some(format!("http://{addr}{}", demo::FRONTCHANNEL_LOGOUT_PATH));
        web.allow_refresh_token = true;
        clients.push(web);
    }
    clients
}
