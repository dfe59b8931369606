"""Notifications end to end on loopback: a WeCom and a DingTalk receiver (http.server in a
thread), an SMTP server (aiosmtpd, with STARTTLS and AUTH), retries, dead receivers, the
notification record, and `invoke inspect` wiring (exit code unchanged by notifications)."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import hmac
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from lxml import etree
from prometheus_client.parser import text_string_to_metric_families

from mhops import notify, records
from mhops import notify_payload as P
from tests.sample_records import (
    FAKE_ID,
    KV_SECRET,
    VAULT_SECRET,
    drill_record,
    inspection_record,
    leaks,
)

REPO = Path(__file__).resolve().parents[2]
XSD = REPO / "tests" / "fixtures" / "junit-10.xsd"
WECOM_KEY = "wecom-key-4f1b2c9d"
DING_TOKEN = "ding-token-77aa01"
DING_SECRET = "SECplanted0123456789abcdef"
SMTP_PASSWORD = "smtp-pass-9z8y7x"
OK = (200, {"errcode": 0, "errmsg": "ok"})


# ------------------------------------------------------------------ receivers

class Receiver:
    """A robot webhook on 127.0.0.1: records each request, answers from a script."""

    def __init__(self, replies=()):
        self.requests: list[dict] = []
        self.replies = list(replies)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                url = urllib.parse.urlsplit(self.path)
                outer.requests.append({
                    "path": url.path, "query": urllib.parse.parse_qs(url.query),
                    "raw_query": url.query, "headers": dict(self.headers), "raw": raw,
                    "body": json.loads(raw), "at_ms": int(time.time() * 1000)})
                status, reply = outer.replies.pop(0) if outer.replies else OK
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make(replies=()):
        r = Receiver(replies)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (cryptography comes with paramiko)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return d / "cert.pem", d / "key.pem"


@pytest.fixture
def smtp(tls_files):
    """aiosmtpd on loopback requiring STARTTLS before AUTH LOGIN/PLAIN."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    class Handler:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            self.messages.append({"from": envelope.mail_from, "to": envelope.rcpt_tos,
                                  "data": envelope.content, "tls": session.ssl is not None,
                                  "login": session.auth_data})
            return "250 OK"

    def auth(server, session, envelope, mechanism, data):
        ok = (data.login, data.password) == (b"ops@mhops.test", SMTP_PASSWORD.encode())
        return AuthResult(success=ok, auth_data=data.login if ok else None)

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(tls_files[0]), str(tls_files[1]))
    handler = Handler()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port(),
                            tls_context=ctx, require_starttls=True, authenticator=auth,
                            auth_require_tls=True)
    controller.start()
    handler.port = controller.port
    yield handler
    controller.stop()


# ------------------------------------------------------------------ inventory

_VAULTED: dict[tuple[str, str], str] = {}


def _vault(tmp: Path, name: str, value: str) -> str:
    """An inline ansible-vault value, as a hospital inventory would hold it (encrypted
    once per session: the password is the same in every test)."""
    pw = tmp / "vault-pass"
    pw.write_text("mhn-test-vault-password\n")
    if (name, value) not in _VAULTED:
        _VAULTED[name, value] = subprocess.run(
            [str(Path(sys.executable).parent / "ansible-vault"), "encrypt_string",
             "--vault-password-file", str(pw), value, "--name", name],
            check=True, capture_output=True, text=True).stdout
    return _VAULTED[name, value]


def make_inventory(tmp: Path, channels: list[dict], *, group_vars: dict | None = None,
                   vault: bool = True, host_vars: dict | None = None) -> tuple[Path, Path]:
    inv = tmp / "inventory"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable, **(host_vars or {})}}}}))
    plain = {"mhops_notify_channels": channels, "vault_planted": VAULT_SECRET,
             "vault_wecom_key": WECOM_KEY, "vault_ding_token": DING_TOKEN,
             "vault_smtp_password": SMTP_PASSWORD, **(group_vars or {})}
    if vault:
        plain.pop("vault_planted")
        (inv / "group_vars" / "all" / "vault.yml").write_text(
            _vault(tmp, "vault_ding_secret", DING_SECRET)
            + _vault(tmp, "vault_planted", VAULT_SECRET))
    else:
        plain["vault_ding_secret"] = DING_SECRET
    (inv / "group_vars" / "all" / "main.yml").write_text(yaml.safe_dump(plain))
    return inv, tmp / "vault-pass"


def all_channels(wecom: Receiver, ding: Receiver, smtp_port: int | None,
                 ca: Path | None = None) -> list[dict]:
    out = [
        {"name": "ops-wecom", "type": "wecom",
         "webhook": f"http://127.0.0.1:{wecom.port}/cgi-bin/webhook/send?key="
                    "{{ vault_wecom_key }}"},
        {"name": "ops-dingtalk", "type": "dingtalk",
         "webhook": f"http://127.0.0.1:{ding.port}/robot/send?access_token="
                    "{{ vault_ding_token }}",
         "secret": "{{ vault_ding_secret }}", "at_mobiles": ["13900000000"]},
    ]
    if smtp_port:
        out.append({"name": "ops-mail", "type": "email", "host": "127.0.0.1", "port": smtp_port,
                    "starttls": True, "ca_file": str(ca), "username": "ops@mhops.test",
                    "password": "{{ vault_smtp_password }}", "from": "ops@mhops.test",
                    "to": ["oncall@hospital.test", "lead@hospital.test"]})
    return out


def settings(tmp: Path, inv: Path | None, vault_pw: Path | None = None, **kw) -> notify.Settings:
    lines: list[str] = []
    kw = {"backoff_s": 0.1, "backoff_max_s": 1.0, **kw}
    s = notify.Settings(records_dir=tmp / "records", state_dir=tmp / "state",
                        inventory=[str(inv)] if inv else [],
                        vault_password_file=str(vault_pw) if vault_pw else None,
                        echo=lines.append, **kw)
    s.lines = lines
    return s


def _record_texts(records_dir: Path) -> str:
    return "\n".join(p.read_text() for p in records_dir.rglob("record.*"))


def _dingtalk_signature_ok(req: dict) -> bool:
    ts = req["query"]["timestamp"][0]
    want = base64.b64encode(hmac.new(DING_SECRET.encode(), f"{ts}\n{DING_SECRET}".encode(),
                                     hashlib.sha256).digest()).decode()
    fresh = abs(req["at_ms"] - int(ts)) < 3600 * 1000
    # parse_qs already url-decoded the sign parameter once, as DingTalk's server does
    return req["query"]["sign"] == [want] and fresh


# ------------------------------------------------------------------ tests

def test_each_channel_receives_its_exact_payload(tmp_path, receivers, smtp, tls_files):
    wecom, ding = receivers(), receivers()
    inv, pw = make_inventory(tmp_path, all_channels(wecom, ding, smtp.port, tls_files[0]))
    s = settings(tmp_path, inv, pw)
    out = notify.notify_event("inspection", inspection_record(), s)

    assert out.exit_code == 0, out.record
    assert [(d["channel"], d["status"], d["attempts"]) for d in out.record["deliveries"]] == [
        ("ops-wecom", "sent", 1), ("ops-dingtalk", "sent", 1), ("ops-mail", "sent", 1)]

    expected_md = out.record["message"]["text"]
    (w,) = wecom.requests
    assert w["path"] == "/cgi-bin/webhook/send" and w["query"] == {"key": [WECOM_KEY]}
    assert w["headers"]["Content-Type"] == "application/json; charset=utf-8"
    assert set(w["body"]) == {"msgtype", "markdown"} and w["body"]["msgtype"] == "markdown"
    content = w["body"]["markdown"]["content"]
    assert list(w["body"]["markdown"]) == ["content"]
    assert content.startswith("### 【严重】巡检异常\n\n> ")
    assert "\n- web01 · " in content and "20261128T040000Z-inspection" in content
    assert len(content.encode()) <= 4096
    assert w["raw"].decode("utf-8") == json.dumps(w["body"], ensure_ascii=False)

    (d,) = ding.requests
    assert d["path"] == "/robot/send"
    assert d["query"]["access_token"] == [DING_TOKEN]
    assert _dingtalk_signature_ok(d), d["raw_query"]
    assert d["body"] == {"msgtype": "markdown",
                         "markdown": {"title": "【严重】巡检异常", "text": content},
                         "at": {"atMobiles": ["13900000000"], "isAtAll": False}}

    (m,) = smtp.messages
    assert m["tls"] and m["login"] == b"ops@mhops.test"
    assert m["from"] == "ops@mhops.test"
    assert m["to"] == ["oncall@hospital.test", "lead@hospital.test"]
    msg = email.message_from_bytes(m["data"], policy=email.policy.default)
    assert msg["Subject"] == "[mhops] 【严重】巡检异常"
    body = msg.get_content()
    assert body.strip() == expected_md.strip() and "web01 · " in body

    sent = "\n".join([w["raw"].decode(), d["raw"].decode(), d["raw_query"],
                      m["data"].decode("utf-8", "replace"), body,
                      _record_texts(s.records_dir), "\n".join(s.lines)])
    assert leaks(sent) == [], leaks(sent)
    for secret in (WECOM_KEY, DING_TOKEN, DING_SECRET, SMTP_PASSWORD):
        assert secret not in _record_texts(s.records_dir) + "\n".join(s.lines)
    rec = json.loads((out.record_dir / "record.json").read_text())
    assert rec["kind"] == "notification" and rec["about"]["run_id"] == (
        "20261128T040000Z-inspection")
    for key in ("schema_version", "run_id", "lang", "status", "exit_code", "time", "operator",
                "headline"):
        assert key in rec
    assert rec["headline"] == "巡检异常：3/3 个渠道已送达"
    assert "ops-wecom" in (out.record_dir / "record.md").read_text()


def test_text_format_and_english(tmp_path, receivers):
    wecom, ding = receivers(), receivers()
    chans = all_channels(wecom, ding, None)
    chans[0].update(format="text", mentioned_mobile_list=["@all"])
    chans[1].update(format="text")
    inv, pw = make_inventory(tmp_path, chans)
    out = notify.notify_event("drill", drill_record("failed"), settings(tmp_path, inv, pw))
    assert out.exit_code == 0
    w, d = wecom.requests[0]["body"], ding.requests[0]["body"]
    assert set(w) == {"msgtype", "text"} and w["msgtype"] == "text"
    assert w["text"]["mentioned_mobile_list"] == ["@all"]
    assert w["text"]["content"].startswith("【Critical】DR drill failed\n")
    assert d == {"msgtype": "text", "text": {"content": w["text"]["content"]},
                 "at": {"atMobiles": ["13900000000"], "isAtAll": False}}
    assert leaks(json.dumps(w, ensure_ascii=False)) == []


def test_server_errors_are_retried_with_backoff(tmp_path, receivers):
    wecom = receivers([(500, {"error": "boom"}), (502, {}), OK])
    ding = receivers([(200, {"errcode": 130101, "errmsg": "send too fast"}), OK])
    inv, pw = make_inventory(tmp_path, all_channels(wecom, ding, None))
    out = notify.notify_event("inspection", inspection_record(),
                              settings(tmp_path, inv, pw, backoff_s=0.3))
    by = {d["channel"]: d for d in out.record["deliveries"]}
    assert (by["ops-wecom"]["status"], by["ops-wecom"]["attempts"]) == ("sent", 3)
    assert (by["ops-dingtalk"]["status"], by["ops-dingtalk"]["attempts"]) == ("sent", 2)
    at = [r["at_ms"] for r in wecom.requests]
    # back-off 0.3 s then 0.6 s (lower bounds only: the machine may be slower, never faster)
    assert at[1] - at[0] >= 250 and at[2] - at[1] >= 550
    # each DingTalk attempt is signed afresh and every signature verifies
    assert all(_dingtalk_signature_ok(r) for r in ding.requests)
    assert out.exit_code == 0


def test_a_permanent_refusal_is_not_retried(tmp_path, receivers):
    wecom = receivers([(200, {"errcode": 93000, "errmsg": "invalid webhook url"})])
    ding = receivers([(404, {})])
    inv, pw = make_inventory(tmp_path, all_channels(wecom, ding, None))
    out = notify.notify_event("inspection", inspection_record(), settings(tmp_path, inv, pw))
    assert [(d["status"], d["attempts"]) for d in out.record["deliveries"]] == [
        ("failed", 1), ("failed", 1)]
    assert "errcode 93000" in out.record["deliveries"][0]["error"]
    assert out.exit_code == 2 and out.record["status"] == "critical"


def test_dead_receivers_fail_within_the_bound_and_are_recorded(tmp_path):
    refused = _free_port()                       # nothing listens here
    silent = socket.socket()                     # accepts, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    chans = [{"name": "refused", "type": "wecom",
              "webhook": f"http://127.0.0.1:{refused}/send?key={{{{ vault_wecom_key }}}}"},
             {"name": "silent", "type": "dingtalk", "secret": "{{ vault_ding_secret }}",
              "webhook": f"http://127.0.0.1:{silent.getsockname()[1]}/robot/send"
                         "?access_token={{ vault_ding_token }}"},
             {"name": "mail-down", "type": "email", "host": "127.0.0.1", "port": refused,
              "from": "a@mhops.test", "to": ["b@mhops.test"]}]
    inv, pw = make_inventory(tmp_path, chans)
    s = settings(tmp_path, inv, pw, total_timeout_s=3, attempt_timeout_s=1, retries=50)
    t0 = time.monotonic()
    out = notify.notify_event("inspection", inspection_record(), s)
    elapsed = time.monotonic() - t0
    silent.close()
    assert elapsed < 20, elapsed                  # bound 3 s; generous for a loaded machine
    by = {d["channel"]: d for d in out.record["deliveries"]}
    assert all(d["status"] == "failed" for d in by.values())
    assert by["refused"]["attempts"] >= 2 and "refused" in by["refused"]["error"].lower()
    assert "timed out" in by["silent"]["error"].lower() or "timeout" in by["silent"][
        "error"].lower(), by["silent"]["error"]
    assert all(d["seconds"] <= 5 for d in by.values()), by   # bound 3 s + scheduling slack
    assert out.exit_code == 2
    texts = _record_texts(s.records_dir)
    for secret in (WECOM_KEY, DING_TOKEN, DING_SECRET):
        assert secret not in texts


def test_after_run_never_raises_and_records_bad_settings(tmp_path):
    s = settings(tmp_path, tmp_path / "no-such-inventory")
    outcome = records.Outcome(2, None, drill_record("failed"))
    out = notify.after_run(outcome, s)
    assert out is not None and out.exit_code == 2
    assert "does not exist" in out.record["error"]
    # nothing to report: no record at all
    passed = notify.after_run(records.Outcome(0, None, drill_record("passed")), s)
    assert passed is None
    # even an unwritable records folder only prints a line
    s.records_dir = Path("/proc/mhn-cannot-write")
    assert notify.after_run(outcome, s) is None
    assert any("could not be recorded" in line for line in s.lines)


def test_filters_by_event_and_severity(tmp_path, receivers):
    wecom, ding = receivers(), receivers()
    chans = all_channels(wecom, ding, None)
    chans[0]["min_severity"] = "critical"
    chans[1]["events"] = ["drill"]
    inv, pw = make_inventory(tmp_path, chans)
    rec = inspection_record()
    out = notify.notify_event("inspection", rec, settings(tmp_path, inv, pw),
                              severity="warning")
    assert out.record["deliveries"] == [] and not wecom.requests and not ding.requests
    assert out.exit_code == 0 and out.record_dir is None
    assert not (tmp_path / "records").exists()


def test_sla_reminders_go_out_once_per_incident(tmp_path, receivers):
    wecom, ding = receivers(), receivers()
    inv, pw = make_inventory(tmp_path, all_channels(wecom, ding, None))
    s = settings(tmp_path, inv, pw)
    incidents = [{"id": "INC-7", "due": "2026-11-28T05:00:00Z", "minutes_left": 12,
                  "priority": "P1", "title": f"挂号失败 患者 {FAKE_ID}", "host": "api1"}]
    asked = []

    def due_soon(within):
        asked.append(within)
        return list(incidents)

    first = notify.sla_check(due_soon, s, 30)
    assert first is not None and first.exit_code == 0 and asked == [30]
    content = wecom.requests[0]["body"]["markdown"]["content"]
    assert "【警告】故障工单即将超出 SLA" in content and "INC-7" in content
    assert "12min" in content and FAKE_ID not in content
    assert notify.sla_check(due_soon, s, 30) is None          # already announced
    incidents.append({"id": "INC-8", "due": "2026-11-28T04:10:00Z", "minutes_left": 0})
    third = notify.sla_check(due_soon, s, 30)
    assert third.record["severity"] == "critical"
    assert len(wecom.requests) == 2 and "INC-8" in wecom.requests[1]["body"]["markdown"][
        "content"] and "INC-7" not in wecom.requests[1]["body"]["markdown"]["content"]


def test_rollback_event_for_the_integrator(tmp_path, receivers):
    wecom, ding = receivers(), receivers()
    inv, pw = make_inventory(tmp_path, all_channels(wecom, ding, None))
    rollback = {"kind": "upgrade", "run_id": "20261128T050000Z-upgrade", "lang": "en",
                "status": "critical", "exit_code": 2,
                "headline": "api 2.3 -> 2.4 rolled back on api1: health check failed",
                "reason": f"health check failed password={KV_SECRET}",
                "hosts": [{"host": "api1", "results": [
                    {"check": "health", "target": "/healthz", "status": "critical",
                     "explanation": "HTTP 502"}]}]}
    out = notify.notify_event(P.ROLLBACK, rollback, settings(tmp_path, inv, pw))
    content = wecom.requests[0]["body"]["markdown"]["content"]
    assert content.startswith("### 【Critical】Upgrade rolled back")
    assert "api1 · health /healthz [critical]: HTTP 502" in content
    assert KV_SECRET not in content and out.exit_code == 0


# ------------------------------------------------------------------ invoke wiring

def _local_inventory(tmp: Path, channels: list[dict]) -> tuple[Path, Path]:
    # A warning the local machine always has (memory in use > 0 %), nothing critical.
    gv = {"mhops_inspect_system_logs": "none", "mhops_inspect_ports_allowed": ["1-65535"],
          "mhops_inspect_thresholds": {
              "memory_percent": {"warning": 0, "critical": 100},
              "cpu_percent": {"warning": 101, "critical": 101},
              "load_per_core": {"warning": 100, "critical": 100},
              "swap_percent": {"warning": 100, "critical": 100},
              "disk_percent": {"warning": 99.9, "critical": 100},
              "inode_percent": {"warning": 99.9, "critical": 100}}}
    return make_inventory(tmp, channels, group_vars=gv)


def _invoke(tmp: Path, vault_pw: Path, *args, **env_extra) -> subprocess.CompletedProcess:
    env = {"INVOKE_MHOPS_RECORDS_DIR": str(tmp / "records"),
           "INVOKE_MHOPS_STATE_DIR": str(tmp / "state"),
           "INVOKE_MHOPS_VAULT_PASSWORD_FILE": str(vault_pw),
           "INVOKE_NOTIFY_BACKOFF_S": "0.2", "PATH": "/usr/bin:/bin", "HOME": str(tmp),
           **env_extra}
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_invoke_inspect_notifies_and_writes_junit_and_prom(tmp_path, receivers):
    wecom, ding = receivers(), receivers()
    inv, pw = _local_inventory(tmp_path, all_channels(wecom, ding, None))
    prom = tmp_path / "textfile"
    prom.mkdir()
    out = _invoke(tmp_path, pw, "inspect", "-i", str(inv), "--junit",
                  str(tmp_path / "junit.xml"), "--prom-textfile", str(prom))
    assert out.returncode == 1, out.stdout + out.stderr
    assert len(wecom.requests) == 1 and len(ding.requests) == 1
    assert wecom.requests[0]["body"]["markdown"]["content"].startswith("### 【警告】巡检异常")
    assert all(_dingtalk_signature_ok(r) for r in ding.requests)
    schema = etree.XMLSchema(etree.parse(str(XSD)))
    doc = etree.parse(str(tmp_path / "junit.xml"))
    assert schema.validate(doc), schema.error_log
    assert doc.find("testsuite").get("name") == "localhost"
    families = {f.name for f in text_string_to_metric_families(
        (prom / "mhops_inspection.prom").read_text())}
    assert {"mhops_check_value", "mhops_check_status", "mhops_run_exit_code"} <= families
    kinds = sorted(p.name.split("-", 1)[1] for p in (tmp_path / "records").iterdir()
                   if not p.name.startswith("."))
    assert kinds == ["inspection", "notification"]


def test_invoke_inspect_keeps_its_exit_code_when_every_channel_is_dead(tmp_path):
    dead = _free_port()
    chans = [{"name": "dead", "type": "wecom",
              "webhook": f"http://127.0.0.1:{dead}/send?key={{{{ vault_wecom_key }}}}"}]
    inv, pw = _local_inventory(tmp_path, chans)
    t0 = time.monotonic()
    out = _invoke(tmp_path, pw, "inspect", "-i", str(inv),
                  INVOKE_NOTIFY_TOTAL_TIMEOUT_S="2", INVOKE_NOTIFY_RETRIES="20")
    assert out.returncode == 1, out.stdout + out.stderr
    assert time.monotonic() - t0 < 120
    (note,) = [p for p in (tmp_path / "records").iterdir() if p.name.endswith("notification")]
    rec = json.loads((note / "record.json").read_text())
    (d,) = rec["deliveries"]
    assert d["status"] == "failed" and d["attempts"] >= 2 and d["seconds"] <= 4
    assert rec["about"]["kind"] == "inspection" and WECOM_KEY not in json.dumps(rec)
    assert "dead (wecom)" in out.stdout


def test_invoke_refuses_a_missing_prom_folder_before_running(tmp_path):
    inv, pw = _local_inventory(tmp_path, [])
    out = _invoke(tmp_path, pw, "inspect", "-i", str(inv), "--prom-textfile",
                  str(tmp_path / "nope"))
    assert out.returncode == 3 and "--prom-textfile" in out.stderr
    assert not (tmp_path / "records").exists()
    # abnormal, but no channel configured: nothing sent, no notification record
    out = _invoke(tmp_path, pw, "inspect", "-i", str(inv))
    assert out.returncode == 1, out.stdout + out.stderr
    assert [p.name.split("-", 1)[1] for p in (tmp_path / "records").iterdir()
            if not p.name.startswith(".")] == ["inspection"]


def test_invoke_notify_test(tmp_path, receivers):
    wecom, ding = receivers(), receivers()
    inv, pw = make_inventory(tmp_path, all_channels(wecom, ding, None))
    out = _invoke(tmp_path, pw, "notify.test", "-i", str(inv), "--lang", "en")
    assert out.returncode == 0, out.stdout + out.stderr
    assert wecom.requests[0]["body"]["markdown"]["content"].startswith(
        "### 【Warning】Notification test")
    bad, _ = make_inventory(tmp_path / "bad", [{"type": "wecom", "webhok": "x"}], vault=False)
    out = _invoke(tmp_path, pw, "notify.test", "-i", str(bad))
    assert out.returncode == 3 and "unknown setting 'webhok'" in out.stderr
    assert "main.yml" in out.stderr


def test_invoke_drill_restore_failure_notifies_and_exports(tmp_path, receivers):
    """A backup whose bytes do not match its manifest: the drill fails at the file check
    (no database is touched), exits 2, and the failure goes out and into JUnit."""
    backups = tmp_path / "backups"
    folder = backups / "mhn_pg"
    folder.mkdir(parents=True)
    dump = folder / "mhn_pg-20261128T000000Z.dump"
    dump.write_bytes(b"PGDMP not really a dump")
    (folder / "mhn_pg-20261128T000000Z.manifest.json").write_text(json.dumps({
        "schema_version": 1, "name": "mhn_pg", "engine": "postgresql", "database": "mhn_x",
        "file": dump.name, "format": "custom", "sha256": "0" * 64, "size": 23,
        "started_at": "2026-11-28T00:00:00Z", "finished_at": "2026-11-28T00:00:01Z",
        "tables": {"public.patients": 1}, "tool": "pg_dump 15", "host": "localhost"}))
    db = {"name": "mhn_pg", "engine": "postgresql", "host": "127.0.0.1", "port": 5432,
          "user": "postgres", "password": "", "database": "mhn_x", "production": False,
          "backup_dir": str(backups)}
    wecom, ding = receivers(), receivers()
    inv, pw = make_inventory(tmp_path, all_channels(wecom, ding, None),
                             host_vars={"mhops_databases": [db]})
    prom = tmp_path / "textfile"
    prom.mkdir()
    out = _invoke(tmp_path, pw, "drill", "restore", "-i", str(inv), "--engine", "postgresql",
                  "--name", "mhn_pg", "--lang", "en", "--junit", str(tmp_path / "drill.xml"),
                  "--prom-textfile", str(prom), INVOKE_DRILL_SCRATCH_DIR=str(tmp_path))
    assert out.returncode == 2, out.stdout + out.stderr
    content = wecom.requests[0]["body"]["markdown"]["content"]
    assert content.startswith("### 【Critical】DR drill failed") and "Database: mhn_pg" in content
    assert all(_dingtalk_signature_ok(r) for r in ding.requests)
    schema = etree.XMLSchema(etree.parse(str(XSD)))
    doc = etree.parse(str(tmp_path / "drill.xml"))
    assert schema.validate(doc), schema.error_log
    assert doc.find(".//failure") is not None
    m = {f.name: f.samples for f in text_string_to_metric_families(
        (prom / "mhops_drill.prom").read_text())}
    assert m["mhops_run_exit_code"][0].value == 2


def test_invoke_notify_sla_with_an_injected_source(tmp_path, receivers):
    wecom, ding = receivers(), receivers()
    inv, pw = make_inventory(tmp_path, all_channels(wecom, ding, None))
    incidents = tmp_path / "due.json"
    incidents.write_text(json.dumps([
        {"id": "INC-1", "due": "2026-11-28T05:00:00Z", "minutes_left": 20, "priority": "P2",
         "title": "处方流转延迟"},
        {"id": "INC-2", "due": "2026-11-28T09:00:00Z", "minutes_left": 240}]))
    args = ["notify.sla", "-i", str(inv), "--within", "30", "--source", "tests.sla_stub:due_soon"]
    first = _invoke(tmp_path, pw, *args, MHN_SLA_FILE=str(incidents))
    assert first.returncode == 0, first.stdout + first.stderr
    (req,) = wecom.requests
    content = req["body"]["markdown"]["content"]
    assert "INC-1" in content and "INC-2" not in content and "处方流转延迟" in content
    again = _invoke(tmp_path, pw, *args, MHN_SLA_FILE=str(incidents))
    assert again.returncode == 0 and "already announced" in again.stdout
    assert len(wecom.requests) == 1


def test_notify_sla_reads_the_incident_store_by_default(tmp_path, receivers):
    wecom, ding = receivers(), receivers()
    inv, pw = make_inventory(tmp_path, all_channels(wecom, ding, None))
    opened = _invoke(tmp_path, pw, "incident.open", "--title", "挂号接口超时",
                     "--scope", "department", "--type", "software", "--severity", "clinical")
    assert opened.returncode == 0, opened.stdout + opened.stderr
    first = _invoke(tmp_path, pw, "notify.sla", "-i", str(inv), "--within", "60")
    assert first.returncode == 0, first.stdout + first.stderr
    (req,) = wecom.requests
    assert "挂号接口超时" in req["body"]["markdown"]["content"]
    bad = _invoke(tmp_path, pw, "notify.sla", "-i", str(inv), "--source", "nocolon")
    assert bad.returncode == 3 and "module:function" in bad.stderr


def test_an_untrusted_smtp_certificate_is_not_retried(tmp_path, smtp):
    chans = [{"name": "mail", "type": "email", "host": "127.0.0.1", "port": smtp.port,
              "starttls": True, "from": "a@mhops.test", "to": ["b@mhops.test"]}]
    inv, pw = make_inventory(tmp_path, chans)
    out = notify.notify_event("inspection", inspection_record(), settings(tmp_path, inv, pw))
    (d,) = out.record["deliveries"]
    assert (d["status"], d["attempts"]) == ("failed", 1) and "SSL" in d["error"], d
    assert smtp.messages == []
