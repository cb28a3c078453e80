/*! slo-client.js — browser client for slo-hub. No dependencies, no build step.
 *
 *   const slo = SloHub.connect({
 *     url: "wss://hub.example.com/v1/ws",
 *     getToken: () => auth.getAccessToken(),   // string or Promise<string>
 *     onLogout: (event) => { clearLocalSession(); location.assign("/") },
 *     onState: (state, detail) => console.log(state, detail),
 *   });
 *   // slo.close() stops watching (e.g. after the app's own logout);
 *   // slo.login() after a pushed logout and a new login reuses the socket.
 *
 * What it does: opens one socket per tab, sends the token as the first message
 * (never in the URL), acknowledges logout pushes, reconnects with exponential
 * backoff and jitter, pings the hub to notice dead connections, and tells the
 * other tabs of this origin about a logout (BroadcastChannel) so every tab
 * logs out even if its own socket was down at that moment.
 */
(function (global) {
  "use strict";

  /** Close codes sent by the hub (see the README). */
  var CLOSE = {
    LOGGED_OUT: 4000,
    BAD_PROTOCOL: 4400,
    UNAUTHORIZED: 4401,
    TOKEN_EXPIRED: 4403,
    HEARTBEAT_TIMEOUT: 4408,
    SLOW_CONSUMER: 4409,
    RATE_LIMITED: 4429,
    SERVICE_RESTART: 1012,
    TRY_AGAIN_LATER: 1013,
  };

  function SloClient(opts) {
    if (!opts || !opts.url || typeof opts.getToken !== "function") {
      throw new Error("SloHub.connect needs { url, getToken }");
    }
    this.url = opts.url;
    this.getToken = opts.getToken;
    this.onLogout = opts.onLogout || function () {};
    this.onState = opts.onState || function () {};
    this.minDelay = opts.minDelay || 500;
    this.maxDelay = opts.maxDelay || 30000;
    this.pingEvery = opts.pingIntervalMs || 25000;
    this.attempt = 0;
    this.ws = null;
    this.stopped = false;
    this.loggedOut = false;
    this.timer = null;
    this.pingTimer = null;
    this.awaitingPong = false;
    var self = this;
    if (typeof BroadcastChannel !== "undefined") {
      this.channel = new BroadcastChannel(opts.channel || "slo-hub");
      this.channel.onmessage = function (e) {
        if (e.data && e.data.type === "logout") self._logout(e.data.event, false);
      };
    }
    this._open();
  }

  SloClient.prototype._state = function (state, detail) {
    this.state = state;
    try {
      this.onState(state, detail || {});
    } catch (err) {
      console.error(err);
    }
  };

  /** Gets a token (string or promise) and hands it to `use`; says why not. */
  SloClient.prototype._withToken = function (use) {
    var self = this;
    this._state("connecting");
    Promise.resolve()
      .then(function () {
        return self.getToken();
      })
      .then(
        function (token) {
          if (self.stopped) return;
          if (!token) {
            self._state("no-token");
            return;
          }
          use(token);
        },
        function (err) {
          console.warn("slo-hub: getToken failed", err);
          self._retry();
        }
      );
  };

  SloClient.prototype._open = function () {
    var self = this;
    if (this.stopped) return;
    this._withToken(function (token) {
      var ws = new WebSocket(self.url);
      self.ws = ws;
      ws.onopen = function () {
        ws.send(JSON.stringify({ type: "auth", token: token }));
      };
      ws.onmessage = function (m) {
        self._message(ws, m);
      };
      ws.onclose = function (e) {
        self._closed(ws, e);
      };
      ws.onerror = function () {
        /* onclose follows */
      };
    });
  };

  SloClient.prototype._message = function (ws, m) {
    var msg;
    try {
      msg = JSON.parse(m.data);
    } catch (e) {
      return;
    }
    switch (msg.type) {
      case "ready":
        this.attempt = 0;
        this._startPing(ws);
        this._state("connected", msg);
        break;
      case "logout":
        // Ack first. The hub keeps the socket open for a while
        // (ws.relogin_secs) so login() can reuse it.
        try {
          ws.send(JSON.stringify({ type: "ack", id: msg.id }));
        } catch (e) {
          /* the socket may already be closing */
        }
        this._logout(msg, true);
        break;
      case "pong":
        this.awaitingPong = false;
        break;
      case "error":
        console.warn("slo-hub:", msg.code, msg.message);
        break;
    }
  };

  SloClient.prototype._closed = function (ws, e) {
    if (ws !== this.ws) return;
    this._stopPing();
    this.ws = null;
    if (this.stopped) {
      if (!this.loggedOut) this._state("stopped");
      return;
    }
    if (e.code === CLOSE.LOGGED_OUT) {
      // The token predates a logout (the push normally arrives just before).
      this._logout({ type: "logout", reason: "logged_out" }, true);
      return;
    }
    if (e.code === CLOSE.UNAUTHORIZED || e.code === CLOSE.TOKEN_EXPIRED) {
      this._state("unauthorized", { code: e.code, reason: e.reason });
    }
    this._retry();
  };

  SloClient.prototype._retry = function () {
    if (this.stopped) return;
    var self = this;
    var base = Math.min(this.maxDelay, this.minDelay * Math.pow(2, this.attempt));
    var delay = Math.round(base / 2 + Math.random() * (base / 2));
    this.attempt += 1;
    this._state("reconnecting", { delay: delay, attempt: this.attempt });
    clearTimeout(this.timer);
    this.timer = setTimeout(function () {
      self._open();
    }, delay);
  };

  SloClient.prototype._startPing = function (ws) {
    var self = this;
    this._stopPing();
    this.awaitingPong = false;
    this.pingTimer = setInterval(function () {
      if (self.awaitingPong) {
        // No pong for a whole interval: the connection is dead (sleep, network change).
        ws.close(4408, "no pong");
        self._closed(ws, { code: 1006 });
        return;
      }
      self.awaitingPong = true;
      try {
        ws.send('{"type":"ping"}');
      } catch (e) {
        /* closed meanwhile */
      }
    }, this.pingEvery);
  };

  SloClient.prototype._stopPing = function () {
    clearInterval(this.pingTimer);
    this.pingTimer = null;
  };

  SloClient.prototype._logout = function (event, tellOtherTabs) {
    if (this.loggedOut) return;
    this.loggedOut = true;
    this.stopped = true;
    clearTimeout(this.timer);
    if (tellOtherTabs && this.channel) this.channel.postMessage({ type: "logout", event: event });
    var ws = this.ws;
    if (ws && !tellOtherTabs) {
      // Told by another tab: give this socket's own push a moment to arrive
      // (and be acknowledged), then let go of it.
      setTimeout(function () {
        if (ws.readyState <= 1) ws.close(1000);
      }, 2000);
    }
    this._state("logged-out", event);
    try {
      this.onLogout(event);
    } catch (err) {
      console.error(err);
    }
  };

  /**
   * After a logout, when the user has logged in again: authenticates with a
   * fresh getToken() on the socket the hub kept open, or connects anew if it
   * is gone.
   */
  SloClient.prototype.login = function () {
    var self = this;
    if (!this.loggedOut) return;
    this.loggedOut = false;
    this.stopped = false;
    this.attempt = 0;
    var ws = this.ws;
    if (!ws || ws.readyState !== 1) {
      this._open();
      return;
    }
    this._withToken(function (token) {
      if (self.ws === ws && ws.readyState === 1) {
        ws.send(JSON.stringify({ type: "auth", token: token }));
      } else {
        self._open();
      }
    });
  };

  /** Stops watching: no reconnects, the socket is closed. */
  SloClient.prototype.close = function () {
    this.stopped = true;
    clearTimeout(this.timer);
    this._stopPing();
    if (this.ws) this.ws.close(1000);
    if (this.channel) this.channel.close();
  };

  global.SloHub = {
    CLOSE: CLOSE,
    connect: function (opts) {
      return new SloClient(opts);
    },
  };
})(typeof window !== "undefined" ? window : globalThis);
