"""The collector on this very machine: real /proc, sockets, processes and servers.

Also runs the collector both ways it is used in production: standalone under a
Python without Ansible (stdin = MHOPS_ARGS line + the file) and as the Ansible
module mhops_collect.
"""

import glob
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import load_collector

ROOT = Path(__file__).resolve().parents[2]
COLLECTOR = ROOT / "library" / "mhops_collect.py"
ANSIBLE = Path(sys.executable).with_name("ansible")
SYSTEM_PYTHON = "/usr/bin/python3"
RESULT_KEYS = {"collector_version", "hostname", "kernel", "collected_at", "duration_ms", "cpu",
               "memory", "filesystems", "uptime_seconds", "clock", "processes", "services",
               "listening", "ports", "unexpected_ports", "http", "tls", "logs", "cursors",
               "errors"}


mc = load_collector("mhops_collect_host_test")


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200 if self.path == "/health" else 500
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def _serve_forever(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


def _closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _make_cert(folder: Path, name: str, *extra: str):
    if not shutil.which("openssl"):
        pytest.skip("openssl binary missing")
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert), *extra],
                   check=True, capture_output=True)
    return cert, key


class _TlsServer:
    """Completes TLS handshakes on 127.0.0.1 and then hangs up."""

    def __init__(self, cert, key):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):  # the verifying client gives up: expected
                conn.close()

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Things the collector should find, and one run of it over all of them."""
    folder = tmp_path_factory.mktemp("host")
    sleeper = subprocess.Popen(["sleep", "31.7"])
    listener = socket.create_server(("127.0.0.1", 0))  # required
    stray = socket.create_server(("127.0.0.1", 0))  # neither required nor allowed
    web = _serve_forever(http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler))
    cert, key = _make_cert(folder, "self")
    tls = _TlsServer(cert, key)
    web_port, closed = web.server_address[1], _closed_port()
    args = {
        "cpu_sample_seconds": 0.2, "command_timeout": 3,
        "processes": [{"name": "sleeper", "match": r"^sleep 31\.7$"},
                      {"name": "ghost", "match": r"no-such-process-mhops-\d+"}],
        "services": ["sleep", "no-such-service-mhops"],
        "ports": [listener.getsockname()[1], closed],
        "http": [{"name": "health", "url": f"http://127.0.0.1:{web_port}/health"},
                 {"name": "broken", "url": f"http://127.0.0.1:{web_port}/fail"},
                 {"name": "closed", "url": f"http://127.0.0.1:{closed}/"}],
        "tls": [{"name": "self", "host": "127.0.0.1", "port": tls.port,
                 "server_name": "localhost"}],
        "system_logs": "none",
    }
    started = time.monotonic()
    result = mc.collect(args)
    elapsed = time.monotonic() - started
    yield {"result": result, "elapsed": elapsed, "listener": listener, "sleeper": sleeper,
           "closed": closed, "web_port": web_port, "stray": stray}
    sleeper.kill()
    sleeper.wait()
    listener.close()
    stray.close()
    web.shutdown()
    tls.close()


def test_result_shape_and_basics(world):
    result = world["result"]
    assert set(result) == RESULT_KEYS
    json.dumps(result)
    assert result["collector_version"] == 1
    assert result["hostname"] == socket.gethostname()
    assert result["kernel"] == os.uname().release
    assert result["collected_at"].endswith("Z")
    assert result["uptime_seconds"] > 0
    assert result["errors"] == []
    assert 200 <= result["duration_ms"] <= world["elapsed"] * 1000 + 5
    clock = result["clock"]
    assert set(clock) == {"source", "synchronized", "offset_ms", "error"}
    assert clock["source"] in (None, "chronyc", "timedatectl", "ntpq")
    if not (shutil.which("chronyc") or shutil.which("ntpq")
            or os.path.isdir("/run/systemd/system")):
        assert clock == {"source": None, "synchronized": None, "offset_ms": None, "error": None}


def test_cpu_and_memory(world):
    cpu, memory = world["result"]["cpu"], world["result"]["memory"]
    assert cpu["cores"] == os.cpu_count()
    assert 0 <= cpu["percent"] <= 100 and 0 <= cpu["iowait_percent"] <= 100
    assert cpu["load1"] >= 0
    assert 0 < memory["available_kb"] <= memory["total_kb"]
    assert 0 <= memory["percent"] <= 100 and 0 <= memory["swap_percent"] <= 100


def test_filesystems(world):
    by_mount = {fs["mount"]: fs for fs in world["result"]["filesystems"]}
    root = by_mount["/"]
    assert root["error"] is None and root["size_kb"] > 0
    assert 0 <= root["used_percent"] <= 100
    assert root["inodes_used_percent"] is None or 0 <= root["inodes_used_percent"] <= 100
    assert not {"proc", "sysfs", "devpts", "cgroup", "cgroup2"} & \
        {fs["fstype"] for fs in by_mount.values()}


def test_processes_and_services(world):
    found = {p["name"]: p for p in world["result"]["processes"]}
    assert found["sleeper"]["count"] == 1
    assert found["sleeper"]["pids"] == [world["sleeper"].pid]
    assert found["ghost"] == {"name": "ghost", "match": r"no-such-process-mhops-\d+",
                              "count": 0, "pids": []}
    services = {s["name"]: s for s in world["result"]["services"]}
    if os.path.isdir("/run/systemd/system"):
        assert {s["method"] for s in services.values()} == {"systemd"}
    else:
        assert services["sleep"]["method"] == "process" and services["sleep"]["running"]
        assert not services["no-such-service-mhops"]["running"]


def test_listening_and_ports(world):
    result = world["result"]
    port, stray = world["listener"].getsockname()[1], world["stray"].getsockname()[1]
    for opened in (port, stray):
        assert {"port": opened, "address": "127.0.0.1", "family": "ipv4"} in result["listening"]
    assert stray in result["unexpected_ports"]
    assert port not in result["unexpected_ports"]
    assert result["unexpected_ports"] == sorted(set(result["unexpected_ports"]))
    assert result["ports"] == [{"port": port, "listening": True},
                               {"port": world["closed"], "listening": False}]
    assert world["web_port"] in {item["port"] for item in result["listening"]}
    assert len({(i["port"], i["address"]) for i in result["listening"]}) == \
        len(result["listening"])


def test_allowed_ports_are_not_unexpected(world):
    port = world["stray"].getsockname()[1]
    result = mc.collect({"cpu_sample_seconds": 0, "system_logs": "none",
                         "ports_allowed": [port]})
    assert port not in result["unexpected_ports"]


def test_http_probes(world):
    http = {h["name"]: h for h in world["result"]["http"]}
    assert http["health"]["status"] == 200 and http["health"]["ok"]
    assert http["health"]["error"] is None and http["health"]["latency_ms"] >= 0
    assert http["broken"]["status"] == 500 and not http["broken"]["ok"]
    assert "500" in http["broken"]["error"]
    assert http["closed"]["status"] is None and not http["closed"]["ok"]
    assert "refused" in http["closed"]["error"].lower()


def test_tls_self_signed(world):
    (tls,) = world["result"]["tls"]
    assert tls["verified"] is False
    assert "self-signed" in tls["error"] or "self signed" in tls["error"]
    assert 29.0 < tls["days_left"] <= 30.01
    assert tls["not_after"].endswith("Z")


def test_tls_verified_when_trusted(tmp_path, monkeypatch):
    cert, key = _make_cert(tmp_path, "trusted", "-addext",
                           "subjectAltName=DNS:localhost,IP:127.0.0.1")
    server = _TlsServer(cert, key)
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        (tls,) = mc.collect({"cpu_sample_seconds": 0, "system_logs": "none",
                             "tls": [{"name": "t", "host": "127.0.0.1", "port": server.port,
                                      "server_name": "localhost"}]})["tls"]
    finally:
        server.close()
    assert tls["verified"] is True and tls["error"] is None
    assert 29.0 < tls["days_left"] <= 30.01


def test_hung_probes_return_within_the_timeout():
    # Accepts connections (the kernel does, via the backlog) and never answers.
    hung = socket.create_server(("127.0.0.1", 0), backlog=16)
    port = hung.getsockname()[1]
    try:
        started = time.monotonic()
        result = mc.collect({"cpu_sample_seconds": 0.2, "command_timeout": 0.5,
                             "system_logs": "none",
                             "http": [{"name": "hung", "url": f"http://127.0.0.1:{port}/",
                                       "timeout": 30}],
                             "tls": [{"name": "hung", "host": "127.0.0.1", "port": port}]})
        elapsed = time.monotonic() - started
    finally:
        hung.close()
    assert elapsed < 0.5 + 0.2 + 0.8
    (http,), (tls,) = result["http"], result["tls"]
    assert not http["ok"] and http["status"] is None and "timed out" in http["error"]
    assert tls["days_left"] is None and "timed out" in tls["error"]


def _standalone(args, python=SYSTEM_PYTHON):
    stdin = "MHOPS_ARGS = " + repr(json.dumps(args)) + "\n" + COLLECTOR.read_text()
    return subprocess.run([python, "-"], input=stdin, capture_output=True, text=True,
                          timeout=30)


def test_standalone_under_a_python_without_ansible(tmp_path):
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip("no /usr/bin/python3")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import ansible"], capture_output=True)
    assert probe.returncode != 0, "this test wants a Python without Ansible"
    log = tmp_path / "app.log"
    log.write_text("ERROR one\nok\nERROR two\n")
    args = {"cpu_sample_seconds": 0.1, "system_logs": "none",
            "logs": [{"path": str(log), "patterns": {"error": "ERROR"}}]}
    proc = _standalone(args)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) == RESULT_KEYS
    assert result["logs"][0]["counts"] == {"error": 2}

    with log.open("a") as fh:
        fh.write("ERROR three\n")
    args["cursors"] = result["cursors"]
    # The controller quotes the arguments as a JSON string literal; that works too.
    stdin = "MHOPS_ARGS = " + json.dumps(json.dumps(args)) + "\n" + COLLECTOR.read_text()
    proc = subprocess.run([SYSTEM_PYTHON, "-"], input=stdin, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["logs"][0]["counts"] == {"error": 1}


def _oldest_python():
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3")))
    candidates.append(shutil.which("python3.8"))
    for python in filter(None, candidates):
        probe = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 8)":
            return python
    return None


def test_standalone_on_python_3_8(tmp_path):
    python = _oldest_python()
    if not python:
        pytest.skip("no Python 3.8 here")
    log = tmp_path / "app.log"
    log.write_text("ERROR one\n")
    proc = _standalone({"cpu_sample_seconds": 0.05, "system_logs": "none",
                        "logs": [{"path": str(log), "patterns": {"error": "ERROR"}}],
                        "http": [{"name": "closed", "url": f"http://127.0.0.1:{_closed_port()}/"}]},
                       python=python)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["errors"] == [] and result["logs"][0]["counts"] == {"error": 1}


def test_bad_arguments_fall_back_to_defaults():
    result = mc.collect({"cpu_sample_seconds": "soon", "ports": "22", "initial_position": "mid",
                         "system_logs": "none", "processes": [{"name": "bad", "match": "("}]})
    assert set(result) == RESULT_KEYS
    joined = " ".join(result["errors"])
    for word in ("cpu_sample_seconds", "ports", "initial_position", "invalid match"):
        assert word in joined
    assert result["processes"] == [{"name": "bad", "match": "(", "count": 0, "pids": []}]


def test_proc_net_addresses():
    if sys.byteorder != "little":
        pytest.skip("the sample values are little-endian")
    assert mc._proc_net_address("0100007F") == "127.0.0.1"
    assert mc._proc_net_address("00000000") == "0.0.0.0"
    assert mc._proc_net_address("00000000000000000000000001000000") == "::1"
    assert mc._proc_net_address("0000000000000000FFFF00000100007F") == "::ffff:127.0.0.1"


JOURNALCTL = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/calls"
case "$*" in
  *after-cursor=gone*) echo "Failed to seek to cursor: Invalid argument" >&2; exit 1;;
  *"-n 1"*) printf '%s\n' "2026-11-28T10:00:09+0000 h app[1]: ERROR old" "-- cursor: c-end";;
  *) printf '%s\n' "2026-11-28T10:00:01+0000 h kernel: app[2]: segfault at 0" \
       "2026-11-28T10:00:02+0000 h sshd[3]: Accepted key" "-- cursor: c-next";;
esac
"""


def test_journald_commands_with_a_stand_in_journalctl(tmp_path, monkeypatch):
    # This host has no journald; a stand-in journalctl checks the calls and the parsing.
    fake = tmp_path / "journalctl"
    fake.write_text(JOURNALCTL)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    cfg = mc._settings({}, [])
    deadline = time.monotonic() + 5

    entry, cursor = mc._read_journal(mc.DEFAULT_SYSTEM_PATTERNS, None, cfg, deadline)
    assert (entry["source"], entry["path"], entry["kind"]) == ("journald", "journal", "system")
    assert entry["counts"] == {"error": 1} and entry["lines_read"] == 2 and cursor == "c-next"

    entry, cursor = mc._read_journal(mc.DEFAULT_SYSTEM_PATTERNS, "c-next", cfg, deadline)
    assert cursor == "c-next" and not entry["cursor_reset"]

    entry, cursor = mc._read_journal(mc.DEFAULT_SYSTEM_PATTERNS, "gone", cfg, deadline)
    assert entry["cursor_reset"] and entry["error"] is None and cursor == "c-next"

    cfg["initial_position"] = "end"
    entry, cursor = mc._read_journal(mc.DEFAULT_SYSTEM_PATTERNS, None, cfg, deadline)
    assert entry["counts"] == {"error": 0} and cursor == "c-end"

    calls = (tmp_path / "calls").read_text().splitlines()
    assert all(c.startswith("--no-pager -q -o short-iso --show-cursor") for c in calls)
    assert [c.split("--show-cursor ")[1] for c in calls] == [
        "--since=-24h", "--after-cursor=c-next", "--after-cursor=gone", "--since=-24h", "-n 1"]


def test_as_ansible_module(tmp_path):
    if not ANSIBLE.exists():
        pytest.skip("ansible is not installed next to this Python")
    log = tmp_path / "app.log"
    log.write_text("ERROR one\n")
    args = {"cpu_sample_seconds": 0.1, "system_logs": "none", "ports_allowed": [22],
            "logs": [{"path": str(log), "patterns": {"error": "ERROR"}}]}
    config = tmp_path / "ansible.cfg"  # not the project's: this is the module alone
    config.write_text("[defaults]\n")
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_CONFIG=str(config), ANSIBLE_LOCALHOST_WARNING="0",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="0", ANSIBLE_NOCOLOR="1")
    python = SYSTEM_PYTHON if os.path.exists(SYSTEM_PYTHON) else sys.executable
    proc = subprocess.run(
        [str(ANSIBLE), "localhost", "-i", "localhost,", "-c", "local",
         "-M", str(COLLECTOR.parent), "-m", "mhops_collect", "-a", json.dumps(args),
         "-e", f"ansible_python_interpreter={python}", "--check"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    output = json.loads(proc.stdout)
    result = output["plays"][0]["tasks"][0]["hosts"]["localhost"]
    assert result["changed"] is False
    assert set(result) >= RESULT_KEYS
    assert result["logs"][0]["counts"] == {"error": 1}
    assert str(log) in result["cursors"]
    assert result["cpu"]["cores"] >= 1
