// A real OpenID provider (npm `oidc-provider`, certified, with Back-Channel
// Logout) for tests/oidc_provider.rs, driven over stdin/stdout, one JSON
// object per line.
//
//   start:    prints {"issuer": "http://127.0.0.1:PORT"} once listening
//   {"cmd": "configure", "hub": URL}   the provider, with the hub registered
//                                       as client "spa"'s backchannel_logout_uri
//   {"cmd": "login", "user": NAME}      a browser's code flow (PKCE) through the
//                                       provider's own login and consent pages;
//                                       answers {id_token, sid, kid}
//   {"cmd": "logout", "sid": SID}       RP-initiated logout of that browser's
//                                       session (the confirm form included); the
//                                       provider POSTs its logout token to the
//                                       hub before answering {backchannel: [...]}
//   {"cmd": "rotate"}                   a new signing key (new kid), the old one
//                                       gone from the JWKS
//
// Everything is the library's own behaviour; the only adjustments are for a
// loopback test: http, devInteractions, and a `fetch` that lets the
// provider reach the hub on 127.0.0.1 (its default refuses special-use
// addresses, an SSRF guard).
import http from "node:http";
import crypto from "node:crypto";
import readline from "node:readline";
import Provider from "oidc-provider";

const REDIRECT_URI = "http://127.0.0.1:1/cb"; // never fetched: the code is read off the redirect

let provider = null;
let hubUrl = null;
let kid = null;
let handler = (req, res) => { res.statusCode = 503; res.end("not configured"); };
const server = http.createServer((req, res) => handler(req, res));
const browsers = new Map(); // sid -> { jar, idToken }

function send(obj) { process.stdout.write(JSON.stringify(obj) + "\n"); }

function newKey() {
  const { privateKey } = crypto.generateKeyPairSync("rsa", { modulusLength: 2048 });
  const jwk = privateKey.export({ format: "jwk" });
  kid = "k-" + crypto.randomBytes(6).toString("hex");
  return { ...jwk, kid, alg: "RS256", use: "sig" };
}

function build(issuer) {
  const events = [];
  const p = new Provider(issuer, {
    clients: [{
      client_id: "spa",
      token_endpoint_auth_method: "none",
      application_type: "web",
      redirect_uris: [REDIRECT_URI],
      post_logout_redirect_uris: [REDIRECT_URI],
      response_types: ["code"],
      grant_types: ["authorization_code"],
      backchannel_logout_uri: hubUrl + "/v1/backchannel-logout",
      backchannel_logout_session_required: true,
    }],
    jwks: { keys: [newKey()] },
    features: {
      devInteractions: { enabled: true },
      backchannelLogout: { enabled: true },
      rpInitiatedLogout: { enabled: true },
    },
    cookies: { keys: [crypto.randomBytes(32).toString("hex")] },
    findAccount: async (ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
    fetch: (url, options) => {
      delete options.dispatcher;
      return fetch(url, options);
    },
  });
  p.on("backchannel.success", (ctx, client, accountId, sid) => events.push({ ok: true, client: client.clientId, sid }));
  p.on("backchannel.error", (ctx, err, client, accountId, sid) => events.push({ ok: false, client: client.clientId, sid, error: String(err) }));
  p.on("server_error", (ctx, err) => process.stderr.write("provider server_error: " + err.stack + "\n"));
  p.events = events;
  return p;
}

// A minimal browser: a cookie jar, redirects followed by hand.
function browser() {
  const jar = new Map();
  return {
    jar,
    async request(url, init = {}) {
      const headers = new Headers(init.headers || {});
      if (jar.size) headers.set("cookie", [...jar].map(([k, v]) => k + "=" + v).join("; "));
      const res = await fetch(url, { ...init, headers, redirect: "manual" });
      for (const c of res.headers.getSetCookie()) {
        const [pair] = c.split(";");
        const i = pair.indexOf("=");
        const name = pair.slice(0, i), value = pair.slice(i + 1);
        if (value === "" || /expires=Thu, 01 Jan 1970/i.test(c)) jar.delete(name);
        else jar.set(name, value);
      }
      return res;
    },
  };
}

function b64url(buf) { return Buffer.from(buf).toString("base64url"); }

async function login(issuer, user) {
  const b = browser();
  const verifier = b64url(crypto.randomBytes(32));
  const challenge = b64url(crypto.createHash("sha256").update(verifier).digest());
  const q = new URLSearchParams({
    client_id: "spa", response_type: "code", scope: "openid", redirect_uri: REDIRECT_URI,
    code_challenge: challenge, code_challenge_method: "S256", state: "s", nonce: "n",
  });
  let res = await b.request(issuer + "/auth?" + q);
  for (let hops = 0; hops < 10; hops++) {
    const location = res.headers.get("location");
    if (!location) throw new Error("no redirect: HTTP " + res.status + " " + (await res.text()).slice(0, 300));
    const url = new URL(location, issuer);
    if (url.href.startsWith(REDIRECT_URI)) {
      const code = url.searchParams.get("code");
      if (!code) throw new Error("authorization failed: " + url.search);
      const tok = await fetch(issuer + "/token", {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({
          grant_type: "authorization_code", code, redirect_uri: REDIRECT_URI,
          client_id: "spa", code_verifier: verifier,
        }),
      });
      const j = await tok.json();
      if (!j.id_token) throw new Error("token: " + JSON.stringify(j));
      const claims = JSON.parse(Buffer.from(j.id_token.split(".")[1], "base64url"));
      browsers.set(claims.sid, { b, idToken: j.id_token });
      return { id_token: j.id_token, sid: claims.sid, kid };
    }
    if (url.pathname.startsWith("/interaction/")) {
      const page = await (await b.request(url.href)).text();
      const prompt = /name="prompt" value="(\w+)"/.exec(page)?.[1];
      if (!prompt) throw new Error("no prompt on the interaction page: " + page.slice(0, 300));
      const form = prompt === "login"
        ? { prompt, login: user, password: "any" }
        : { prompt };
      res = await b.request(url.href, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams(form),
      });
    } else {
      res = await b.request(url.href);
    }
  }
  throw new Error("too many redirects");
}

async function logout(issuer, sid) {
  const session = browsers.get(sid);
  if (!session) throw new Error("no browser for sid " + sid);
  const { b, idToken } = session;
  provider.events.length = 0;
  const q = new URLSearchParams({ id_token_hint: idToken, client_id: "spa" });
  const page = await (await b.request(issuer + "/session/end?" + q)).text();
  const xsrf = /name="xsrf" value="([^"]+)"/.exec(page)?.[1];
  if (!xsrf) throw new Error("no logout form: " + page.slice(0, 300));
  const res = await b.request(issuer + "/session/end/confirm", {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ xsrf, logout: "yes" }),
  });
  if (res.status !== 303) throw new Error("logout confirm: HTTP " + res.status);
  browsers.delete(sid);
  return { backchannel: [...provider.events] };
}

server.listen(0, "127.0.0.1", () => {
  const issuer = "http://127.0.0.1:" + server.address().port;
  send({ issuer });
  const rl = readline.createInterface({ input: process.stdin });
  rl.on("line", async (line) => {
    try {
      const m = JSON.parse(line);
      if (m.cmd === "configure" || m.cmd === "rotate") {
        if (m.hub) hubUrl = m.hub;
        provider = build(issuer);
        const callback = provider.callback();
        handler = (req, res) => callback(req, res);
        send({ ok: true, kid });
      } else if (m.cmd === "login") {
        send({ ok: true, ...(await login(issuer, m.user)) });
      } else if (m.cmd === "logout") {
        send({ ok: true, ...(await logout(issuer, m.sid)) });
      } else {
        send({ ok: false, error: "unknown command " + m.cmd });
      }
    } catch (e) {
      send({ ok: false, error: String(e && e.stack || e) });
    }
  });
  rl.on("close", () => process.exit(0));
});
