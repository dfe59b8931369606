"""Stand-in for a mini-program API backend: a health URL and a version endpoint.

The release it was unpacked from (``release.json`` beside this file) says which
version it serves; ``broken_health`` makes a release whose health check fails after
start, as a bad release would; a file ``config/fail-<version>`` makes that version fail
the same way on this host only (tests of a failure on some hosts of a batch). Data,
logs and config live in the component's shared folder, linked into each release as
``data/``, ``logs/`` and ``config/``.
"""

import json
import os
import sqlite3
import time

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "release.json"), encoding="utf-8") as fh:
    META = json.load(fh)
DB = os.path.join(HERE, "data", "app.db")
LOG = os.path.join(HERE, "logs", "app.log")


def log(level, message):
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(LOG, "a", encoding="utf-8") as fh:
        fh.write(f"{stamp} {level} pid={os.getpid()} v{META['version']} {message}\n")


def health():
    if META.get("broken_health"):
        return False, "queue backend not configured"
    if os.path.exists(os.path.join(HERE, "config", "fail-" + META["version"])):
        return False, "this host's configuration does not support this version"
    try:
        with sqlite3.connect(DB, timeout=2) as db:
            applied = {r[0] for r in db.execute("SELECT id FROM mhops_schema_migrations")}
    except sqlite3.Error as exc:
        return False, f"database: {exc}"
    missing = sorted(set(META.get("migrations", [])) - applied)
    if missing:
        return False, "schema is missing migrations " + ", ".join(missing)
    return True, "ok"


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/health":
        ok, why = health()
        if not ok:
            log("ERROR", "health check failed: " + why)
        body = {"status": "ok" if ok else "fail", "detail": why}
        status = "200 OK" if ok else "500 Internal Server Error"
    elif path == "/version":
        body, status = {"version": META["version"]}, "200 OK"
    else:
        body, status = {"error": "not found"}, "404 Not Found"
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data)))])
    return [data]
