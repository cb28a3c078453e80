//! Dev mode's demo SPAs: app A and app B, each on its own port so the browser
//! sees two origins, exactly like two real apps on two domains, and the
//! native-app simulator (`/demo/native-sim/` on the hub itself: a native app
//! has no web origin of its own). Files are embedded; `config.js` tells the
//! pages where the hub and the apps are.
//!
//! Must not: run outside dev mode (lib.rs starts it only when `dev.demo` is on).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::App;

const DEMO_JS: &str = include_str!("../demo-spas/shared/demo.js");
const DEMO_CSS: &str = include_str!("../demo-spas/shared/demo.css");
const NATIVE_SIM_HTML: &str = include_str!("../demo-spas/native-sim/index.html");
const FRONTCHANNEL_LOGOUT_HTML: &str = include_str!("../demo-spas/shared/frontchannel-logout.html");
/// Where each demo app answers the hub's front-channel logout page.
pub const FRONTCHANNEL_LOGOUT_PATH: &str = "/frontchannel-logout";

/// A demo app: its name and page.
pub struct DemoApp {
    pub name: &'static str,
    pub html: &'static str,
}

pub const APPS: [DemoApp; 2] = [
    DemoApp {
        name: "app-a",
        html: include_str!("../demo-spas/app-a/index.html"),
    },
    DemoApp {
        name: "app-b",
        html: include_str!("../demo-spas/app-b/index.html"),
    },
];

/// Serves one demo app on `listener` until shutdown.
pub fn spawn(app: &Arc<App>, demo: &'static DemoApp, listener: TcpListener, hub_url: &str) {
    let ws_url = format!("{}/v1/ws", hub_url.replacen("http", "ws", 1));
    let config_js = format!(
        "window.SLO_DEMO = {};\n",
        serde_json::json!({ "hub": hub_url, "wsUrl": ws_url })
    );
    let router = Router::new()
        .route("/", get(move || async move { Html(demo.html) }))
        .route("/demo.js", get(|| async { js(DEMO_JS.to_string()) }))
        .route(
            "/demo.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], DEMO_CSS) }),
        )
        .route("/config.js", get(move || async move { js(config_js) }))
        .route(
            FRONTCHANNEL_LOGOUT_PATH,
            get(|| async { Html(FRONTCHANNEL_LOGOUT_HTML) }),
        );
    let shutdown = app.shutdown.clone();
    app.tasks.spawn(async move {
        let served = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, demo = demo.name, "demo server stopped");
        }
    });
}

/// The native-app simulator, served by the hub (dev mode with demos only):
/// it logs in as the `native-sim` client and opens app A with transfer tokens.
pub fn native_sim(app: &App, demos: &[(&'static str, SocketAddr)]) -> Router {
    let app_a = demos
        .iter()
        .find(|(n, _)| *n == "app-a")
        .map(|(_, a)| format!("http://{a}"))
        .unwrap_or_default();
    let config_js = format!(
        "window.SLO_NATIVE_SIM = {};\n",
        serde_json::json!({
            "clientId": "native-sim",
            "audience": app.config.transfer.audiences.first(),
            "appA": app_a,
        })
    );
    Router::new()
        .route("/demo/native-sim/", get(|| async { Html(NATIVE_SIM_HTML) }))
        .route(
            "/demo/native-sim",
            get(|| async { axum::response::Redirect::permanent("/demo/native-sim/") }),
        )
        .route(
            "/demo/native-sim/config.js",
            get(move || async move { js(config_js) }),
        )
        .route(
            "/demo/native-sim/demo.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], DEMO_CSS) }),
        )
}

fn js(body: String) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
}
