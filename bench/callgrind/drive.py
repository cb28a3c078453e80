# N user-token logouts, one at a time, on one keep-alive connection.
import base64, hashlib, hmac, http.client, json, sys, time
n, port = int(sys.argv[1]), int(sys.argv[2])
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
def token(sub):
    h = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    now = int(time.time())
    c = b64(json.dumps({"iss": "https://cg.invalid", "aud": "cg", "sub": sub, "iat": now - 5, "exp": now + 600}).encode())
    s = b64(hmac.new(b"cg-secret-0123456789abcdef0123456789", h + b"." + c, hashlib.sha256).digest())
    return (h + b"." + c + b"." + s).decode()
conn = http.client.HTTPConnection("127.0.0.1", port)
ok = 0
for i in range(n):
    conn.request("POST", "/v1/logout", body='{"scope":"user"}', headers={"authorization": "Bearer " + token(f"u{i}"), "content-type": "application/json"})
    r = conn.getresponse(); r.read()
    ok += r.status == 200
    if i == 0 and r.status != 200: print(r.status, file=sys.stderr)
print(ok)
