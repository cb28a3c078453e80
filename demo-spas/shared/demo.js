// Demo SPA logic shared by app A and app B. The page defines window.DEMO_APP
// ({ id, name }); /config.js (served by the hub's demo server) defines
// window.SLO_DEMO ({ hub, wsUrl }). Tokens come from the hub's dev issuer, or
// from Native-to-Web SSO: opened by the native app with a session transfer
// token, the app signs in through the hub's /authorize (PKCE) and gets a
// hub-signed session token.
(function () {
  "use strict";
  var app = window.DEMO_APP;
  var cfg = window.SLO_DEMO;
  var KEY = "slo-demo-token";
  var PKCE = "slo-demo-pkce";
  var client = null;
  var $ = function (id) { return document.getElementById(id); };

  // First thing, before any other script runs or anything is logged: take
  // the transfer token (and any code) out of the address bar and history.
  var params = new URLSearchParams(location.search);
  var sso = null;
  if (params.has("session_transfer_token") || params.has("sso") || params.has("code") || params.has("error")) {
    sso = params;
    history.replaceState(null, "", location.pathname);
  }

  function b64url(bytes) {
    var s = String.fromCharCode.apply(null, new Uint8Array(bytes));
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  // Step 1: off to the hub's /authorize with a PKCE challenge (and the token
  // if it came in the query; in cookie mode the browser sends the cookie).
  function authorize(stt) {
    var verifier = b64url(crypto.getRandomValues(new Uint8Array(32)));
    var state = b64url(crypto.getRandomValues(new Uint8Array(16)));
    sessionStorage.setItem(PKCE, JSON.stringify({ verifier: verifier, state: state }));
    crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)).then(function (d) {
      var q = new URLSearchParams({
        client_id: app.id,
        redirect_uri: location.origin + "/",
        response_type: "code",
        state: state,
        code_challenge: b64url(d),
        code_challenge_method: "S256",
      });
      if (stt) q.set("session_transfer_token", stt);
      location.replace(cfg.hub + "/authorize?" + q.toString());
    });
  }

  // Step 2: back with a code (or an error): exchange it for a session token.
  function finishSso(p) {
    var saved = {};
    try { saved = JSON.parse(sessionStorage.getItem(PKCE)) || {}; } catch (e) { /* none */ }
    sessionStorage.removeItem(PKCE);
    if (p.get("state") !== saved.state) {
      render(null, "Single sign-on refused: the state does not match.");
      return;
    }
    if (p.has("error")) {
      log("SSO: " + p.get("error") + " (" + (p.get("error_description") || "") + ")");
      render(null, "Single sign-on refused: " + p.get("error") + ". Log in here instead.");
      return;
    }
    fetch(cfg.hub + "/oauth/token", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        grant_type: "authorization_code",
        client_id: app.id,
        code: p.get("code"),
        redirect_uri: location.origin + "/",
        code_verifier: saved.verifier,
      }),
    })
      .then(function (r) { return r.json(); })
      .then(function (j) {
        if (!j.access_token) throw new Error(j.error_description || j.error);
        if (client) { client.close(); client = null; }
        localStorage.setItem(KEY, j.access_token);
        log("signed in by Native-to-Web SSO (web session " + j.session_id + ")");
        start();
      })
      .catch(function (e) { log("SSO failed: " + e); render(null, "Single sign-on failed."); });
  }

  function log(line) {
    var el = $("log");
    el.textContent = new Date().toISOString().slice(11, 23) + "  " + line + "\n" + el.textContent;
  }

  function claims(token) {
    try {
      var b64 = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(b64));
    } catch (e) {
      return {};
    }
  }

  function render(loggedInAs, note) {
    var status = $("status");
    if (loggedInAs) {
      status.textContent = "Logged in as " + loggedInAs;
      status.dataset.state = "in";
    } else {
      status.textContent = "Logged out";
      status.dataset.state = "out";
      // When this page learned of the logout (the browser test compares it
      // with the click time in the other app).
      status.dataset.at = String(Date.now());
      $("conn").textContent = "not connected";
    }
    $("note").textContent = note || "";
    $("logout").disabled = !loggedInAs;
    document.querySelectorAll("[data-login]").forEach(function (b) { b.disabled = !!loggedInAs; });
  }

  function start() {
    var token = localStorage.getItem(KEY);
    if (!token) {
      render(null, "Log in as a demo user. Log in to the other app as the same user, then log out here or there.");
      return;
    }
    var c = claims(token);
    render(c.sub, "session " + (c.sid || "?"));
    if (client && client.state === "logged-out") {
      // Logged out by a push, now logged in again: the hub kept the socket,
      // so log in on it instead of reconnecting.
      client.login();
      return;
    }
    client = SloHub.connect({
      url: cfg.wsUrl,
      getToken: function () { return localStorage.getItem(KEY); },
      onState: function (state, detail) {
        $("conn").textContent = state;
        if (state === "connected") log("connected as " + detail.sub + " (connection " + detail.connection_id + ")");
      },
      onLogout: function (event) {
        localStorage.removeItem(KEY);
        log("logout pushed: " + (event.reason || "") + (event.id ? " (event " + event.id.slice(0, 8) + ")" : ""));
        render(null, "Logged out by the hub: " + (event.reason || "logout"));
      },
    });
  }

  function login(sub) {
    fetch(cfg.hub + "/dev/token", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ sub: sub, client_id: app.id }),
    })
      .then(function (r) {
        if (!r.ok) throw new Error("dev token: HTTP " + r.status);
        return r.json();
      })
      .then(function (j) {
        localStorage.setItem(KEY, j.access_token);
        log("logged in as " + sub);
        start();
      })
      .catch(function (e) { log(String(e)); });
  }

  function logout() {
    var token = localStorage.getItem(KEY);
    if (!token) return;
    document.body.dataset.logoutClickedAt = String(Date.now());
    if (client) client.close();
    client = null;
    localStorage.removeItem(KEY);
    render(null, "You logged out here; the other apps are being told.");
    fetch(cfg.hub + "/v1/logout", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: "Bearer " + token },
      body: JSON.stringify({ scope: "user", reason: "logged out in " + app.name }),
    })
      .then(function (r) { return r.json(); })
      .then(function (j) { log("logout sent: " + j.delivered + " socket(s) told"); })
      .catch(function (e) { log("logout failed: " + e); });
  }

  // The front-channel logout page's iframe of this app removed the token
  // and left this mark (a logout pushed by the hub reaches each tab itself).
  window.addEventListener("storage", function (e) {
    if (e.key !== "slo-demo-frontchannel-logout" || !e.newValue) return;
    if (client) client.close();
    client = null;
    log("front-channel logout");
    render(null, "Logged out by the front-channel logout page.");
  });

  // The hub's common logout page: every app, even without an open socket.
  $("frontchannel").addEventListener("click", function () {
    location.assign(cfg.hub + "/v1/logout/frontchannel?returnTo=" +
      encodeURIComponent(location.origin + "/"));
  });

  document.title = app.name + " — slo-hub demo";
  $("app-name").textContent = app.name;
  $("origin").textContent = location.origin;
  document.querySelectorAll("[data-login]").forEach(function (b) {
    b.addEventListener("click", function () { login(b.dataset.login); });
  });
  $("logout").addEventListener("click", logout);

  var script = document.createElement("script");
  script.src = cfg.hub + "/static/slo-client.js";
  script.onload = function () {
    if (!sso) start();
    else if (sso.has("code") || sso.has("error")) finishSso(sso);
    else authorize(sso.get("session_transfer_token"));
  };
  script.onerror = function () { log("could not load " + script.src); };
  document.head.appendChild(script);
})();
