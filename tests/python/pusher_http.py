"""Drives slo-hub's Pusher HTTP API with the official `pusher` package for
Python (PyPI), configured with nothing but host, port and the app's
credentials. Run by tests/pusher.rs, which holds a socket subscribed to
`visitor42_incognito` and `presence-room` and checks what arrives.

argv: host port app_id key secret. Prints one JSON object per call.
"""
import json
import sys

import pusher

host, port, app_id, key, secret = sys.argv[1:6]
client = pusher.Pusher(app_id=app_id, key=key, secret=secret,
                       host=host, port=int(port), ssl=False)


def out(name, value):
    print(json.dumps({"call": name, "result": value}), flush=True)


# The seed article's backend call, as written in Python.
out("trigger", client.trigger("visitor42_incognito", "slo-event", {"slo": True}))
out("trigger_batch", client.trigger_batch([
    {"channel": "visitor42_incognito", "name": "batched", "data": {"i": 1}},
    {"channel": "presence-room", "name": "batched", "data": {"i": 2}},
]))
out("channels_info", client.channels_info(prefix_filter="presence-", attributes=["user_count"]))
out("channel_info", client.channel_info("presence-room", ["user_count", "subscription_count"]))
out("users_info", client.users_info("presence-room"))
out("terminate_user_connections", client.terminate_user_connections("carol"))
try:
    pusher.Pusher(app_id=app_id, key=key, secret="not-the-secret-0000",
                  host=host, port=int(port), ssl=False).trigger("c", "e", {})
    out("wrong_secret", "accepted")
except pusher.errors.PusherBadAuth as e:
    out("wrong_secret", "refused: " + str(e)[:80])
