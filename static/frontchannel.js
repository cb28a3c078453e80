// The hub's front-channel logout page, after the logout was confirmed (POST
// /v1/logout/frontchannel): loads the front-channel logout URI of each app
// of the ended session in a hidden iframe (with iss and sid), waits for
// every app's acknowledgement or the timeout, then goes to returnTo (which
// the hub checked against the registered post-logout redirect URIs). On the
// confirmation page (GET) it does nothing: the form is the page.
//
// An acknowledgement counts only if it comes from the iframe this page
// opened for that app (event.source) and from that app's origin
// (event.origin): another window cannot answer for an app.
(function () {
  "use strict";
  var cfg = JSON.parse(document.getElementById("slo-frontchannel").textContent);
  if (cfg.confirm) return;
  var list = document.getElementById("apps");
  var status = document.getElementById("status");
  var pending = [];
  var done = false;

  cfg.apps.forEach(function (app) {
    var li = document.createElement("li");
    li.textContent = app.client_id + ": logging out…";
    li.dataset.clientId = app.client_id;
    li.dataset.state = "pending";
    list.appendChild(li);
    var frame = document.createElement("iframe");
    frame.hidden = true;
    frame.title = "logout of " + app.client_id;
    frame.src = app.uri;
    document.body.appendChild(frame);
    pending.push({ app: app, frame: frame, li: li });
  });

  window.addEventListener("message", function (ev) {
    if (!ev.data || ev.data.type !== "slo-hub:frontchannel-logout") return;
    for (var i = 0; i < pending.length; i++) {
      var p = pending[i];
      if (ev.source === p.frame.contentWindow && ev.origin === p.app.origin) {
        p.li.textContent = p.app.client_id + ": logged out";
        p.li.dataset.state = "done";
        pending.splice(i, 1);
        if (pending.length === 0) finish();
        return;
      }
    }
  });

  function finish() {
    if (done) return;
    done = true;
    var missing = pending.map(function (p) {
      p.li.textContent = p.app.client_id + ": did not answer";
      p.li.dataset.state = "timeout";
      return p.app.client_id;
    });
    status.textContent = missing.length
      ? "Logged out, but these apps did not confirm: " + missing.join(", ")
      : "You are logged out of every app.";
    document.body.dataset.result = JSON.stringify({
      acknowledged: cfg.apps.length - missing.length,
      missing: missing,
    });
    if (cfg.returnTo) location.replace(cfg.returnTo);
  }

  if (pending.length === 0) finish();
  else setTimeout(finish, cfg.timeoutMs);
})();
