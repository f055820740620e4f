#!/usr/bin/env python3
"""Independent client for atlas-sim, standard library only (urllib).

Usage:
  sim_client.py digest ATLAS_URL ORG_ID PUBLIC_KEY PRIVATE_KEY
      POST a link token (Digest via urllib.request.HTTPDigestAuthHandler), then DELETE it.
  sim_client.py oauth ATLAS_URL ORG_ID CLIENT_ID CLIENT_SECRET
      Mint a bearer token, POST a link token with it, revoke the bearer token, and check the
      next call is refused.
  sim_client.py source SOURCE_URL SOURCE_ORG_ID PUBLIC_KEY PRIVATE_KEY LINK_TOKEN
      Link LINK_TOKEN on the Cloud Manager / Ops Manager side (Digest), read the status, unlink,
      and check a second unlink and the status answer 404.
Prints one line per step as "step status detail" and exits non-zero on any surprise.
"""
import base64
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

VERSION = "application/vnd.atlas.2023-01-01+json"


def fail(msg):
    print("FAIL " + msg)
    sys.exit(1)


def link_url(base, org):
    return f"{base}/api/atlas/v2/orgs/{org}/liveMigrations/linkTokens"


def call(opener, method, url, body=None, headers=None, media=VERSION):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Accept", media)
    if data is not None:
        req.add_header("Content-Type", media)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def digest(base, org, user, password):
    mgr = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    mgr.add_password(None, base, user, password)
    opener = urllib.request.build_opener(urllib.request.HTTPDigestAuthHandler(mgr))
    status, body = call(opener, "POST", link_url(base, org), {"accessListIps": ["192.0.2.1", "10.0.0.0/8"]})
    if status != 201:
        fail(f"post {status} {body}")
    token = json.loads(body)["linkToken"]
    print(f"post {status} tokenlen={len(token)}")
    status, body = call(opener, "DELETE", link_url(base, org))
    if status != 204:
        fail(f"delete {status} {body}")
    print(f"delete {status}")
    status, body = call(opener, "DELETE", link_url(base, org))
    if status != 404:
        fail(f"delete-again {status} {body}")
    print(f"delete-again {status} {json.loads(body)['detail']}")


def oauth(base, org, client_id, secret):
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    opener = urllib.request.build_opener()

    def form(path, fields):
        req = urllib.request.Request(
            base + path, data=urllib.parse.urlencode(fields).encode(), method="POST")
        req.add_header("Authorization", "Basic " + basic)
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
        req.add_header("Accept", "application/json")
        try:
            with opener.open(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    status, body = form("/api/oauth/token", {"grant_type": "client_credentials"})
    if status != 200:
        fail(f"token {status} {body}")
    tok = json.loads(body)
    if tok.get("token_type") != "Bearer" or not isinstance(tok.get("expires_in"), int):
        fail(f"token body {body}")
    print(f"token {status} expires_in={tok['expires_in']}")
    bearer = {"Authorization": "Bearer " + tok["access_token"]}
    status, body = call(opener, "POST", link_url(base, org), {"accessListIps": []}, bearer)
    if status != 201 or "linkToken" not in json.loads(body):
        fail(f"bearer-post {status} {body}")
    print(f"bearer-post {status}")
    status, body = form("/api/oauth/revoke", {"token": tok["access_token"], "token_type_hint": "access_token"})
    if status != 200:
        fail(f"revoke {status} {body}")
    print(f"revoke {status}")
    status, body = call(opener, "POST", link_url(base, org), {"accessListIps": []}, bearer)
    if status != 401:
        fail(f"after-revoke {status} {body}")
    print(f"after-revoke {status}")


def source(base, org, user, password, token):
    mgr = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    mgr.add_password(None, base, user, password)
    opener = urllib.request.build_opener(urllib.request.HTTPDigestAuthHandler(mgr))
    link = f"{base}/api/public/v1.0/orgs/{org}/liveExport/migrationLink"

    def send(method, url, body=None):
        return call(opener, method, url, body, media="application/json")

    status, body = send("POST", link, {"linkToken": token})
    if status != 200 or json.loads(body) != {"status": "SYNCED"}:
        fail(f"link {status} {body}")
    print(f"link {status} {json.loads(body)['status']}")
    status, body = send("GET", link + "/status")
    if status != 200:
        fail(f"status {status} {body}")
    print(f"status {status} {json.loads(body)['status']}")
    status, body = send("DELETE", link)
    if status != 204:
        fail(f"unlink {status} {body}")
    print(f"unlink {status}")
    for step, method, url in [("unlink-again", "DELETE", link), ("status-after", "GET", link + "/status")]:
        status, body = send(method, url)
        if status != 404:
            fail(f"{step} {status} {body}")
        print(f"{step} {status} {json.loads(body)['errorCode']}")


if __name__ == "__main__":
    modes = {"digest": (digest, 6), "oauth": (oauth, 6), "source": (source, 7)}
    if len(sys.argv) < 2 or sys.argv[1] not in modes or len(sys.argv) != modes[sys.argv[1]][1]:
        print(__doc__)
        sys.exit(2)
    modes[sys.argv[1]][0](*sys.argv[2:])
