"""Runbooks for real: Fabric over loopback SSH (127.0.0.65) and on localhost.

A full tmpfs is cleaned by disk-full, a stopped sample HTTP service is restarted by
service-down, a Redis list over the threshold is drained by queue-backlog after its
consumer is started, a short-lived certificate is renewed by tls-expiry; --check and a
declined confirmation change nothing; timeouts and unreachable hosts end quickly;
records carry no planted ID number or secret.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import FAKE_ID, no_leak

from mhops import runbook
from mhops.errors import MhopsError

SECRET = "tok-Planted-9f8e7d6c"
KEY = f"mhops:test:runbooks:queue:{os.getpid()}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not Path("/usr/sbin/sshd").exists():
        pytest.fail("openssh-server is not installed: run the tests with `invoke test`")
    from mhops.lab import SshLab

    with SshLab(tmp_path_factory.mktemp("rblab"), 1, first_octet=65, prefix="rb") as running:
        yield running


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inventory(root: Path, lab, settings: dict, local: bool = False) -> Path:
    path = root / "hosts.yml"
    if local:
        path.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
            "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "mhops_runbooks": settings}}}}))
    else:
        lab.write_inventory(path, hostvars={"rb1": {"mhops_runbooks": settings}})
    return path


def _run(root: Path, inventory: Path, name: str, host: str = "rb1", **kw):
    lines: list[str] = []
    opts = runbook.Options(name=name, host=host, inventory=[str(inventory)],
                           records_dir=root / "records", state_dir=root / "state",
                           operator="测试员", echo=lines.append, **kw)
    out = runbook.run(opts)
    out.lines = lines
    return out


def _kill_pidfile(path: Path) -> None:
    try:
        os.kill(int(path.read_text().strip()), signal.SIGTERM)
    except (OSError, ValueError):
        pass


# ------------------------------------------------------------------ disk-full

@pytest.fixture
def full_disk(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "mhk_rb_tmpfs", str(mnt)],
                   check=True)
    try:
        logs = mnt / "log"
        logs.mkdir()
        line = f"INFO appointment booked dept=D001 patient {FAKE_ID} ok\n"
        (logs / "app.log.1").write_text(line * (4 * 1024 * 1024 // len(line)))
        tmp = mnt / "tmp"
        tmp.mkdir()
        (tmp / "upload.tmp").write_bytes(os.urandom(2 * 1024 * 1024))
        old = time.time() - 30 * 86400
        os.utime(tmp / "upload.tmp", (old, old))
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _disk_settings(mnt: Path) -> dict:
    return {"disk-full": {"mount": str(mnt), "paths": [str(mnt / "log"), str(mnt / "tmp")],
                          "warning_percent": 50, "critical_percent": 95, "min_size_kb": 512}}


def _usage(mnt: Path) -> float:
    st = os.statvfs(mnt)
    return 100.0 * (st.f_blocks - st.f_bfree) / st.f_blocks


def test_disk_full_frees_space_over_ssh(tmp_path, lab, full_disk):
    inv = _inventory(tmp_path, lab, _disk_settings(full_disk))
    before = _usage(full_disk)
    assert before >= 50
    out = _run(tmp_path, inv, "disk-full", yes=True)
    r = out.record
    assert (r["outcome"], out.exit_code) == ("resolved", 0), out.lines
    assert _usage(full_disk) < 50 <= before
    assert (full_disk / "log" / "app.log.1.gz").is_file()
    assert not (full_disk / "log" / "app.log.1").exists()
    assert not (full_disk / "tmp" / "upload.tmp").exists()
    verify = next(s for s in r["steps"] if s["step"] == "verify_space_freed")
    assert verify["data"]["freed"] > 4 * 1024 * 1024
    assert r["summary"]["changes_done"] == 2
    assert r["kind"] == "runbook" and r["headline"].startswith("磁盘空间即将用满 @ rb1")
    no_leak([out.record_dir], FAKE_ID)


def test_check_mode_changes_nothing(tmp_path, lab, full_disk):
    inv = _inventory(tmp_path, lab, _disk_settings(full_disk))
    snapshot = {p: (p.stat().st_size, p.stat().st_mtime_ns)
                for p in full_disk.rglob("*") if p.is_file()}
    out = _run(tmp_path, inv, "disk-full", check=True)
    assert out.record["outcome"] == "diagnosed" and out.exit_code == 1
    assert out.record["summary"]["changes_planned"] == 2
    assert out.record["summary"]["changes_done"] == 0
    assert not any(s["phase"] == "verification" for s in out.record["steps"])
    after = {p: (p.stat().st_size, p.stat().st_mtime_ns)
             for p in full_disk.rglob("*") if p.is_file()}
    assert after == snapshot


# ------------------------------------------------------------------ service-down

@pytest.fixture
def sample_service(tmp_path):
    port = _free_port()
    folder = tmp_path / "svc"
    folder.mkdir()
    pidfile, log = folder / "app.pid", folder / "app.log"
    log.write_text(f"ERROR crashed handling patient {FAKE_ID} token={SECRET}\n")
    start = (f"cd {folder}; setsid {sys.executable} -m http.server {port} --bind 127.0.0.1 "
             f">>{log} 2>&1 </dev/null & echo $! > {pidfile}")
    settings = {"service-down": {"name": "sample-http", "pidfile": str(pidfile), "start": start,
                                 "log": str(log), "port": port,
                                 "health_url": f"http://127.0.0.1:{port}/",
                                 "start_timeout": 20}}
    yield {"settings": settings, "pidfile": pidfile, "port": port}
    _kill_pidfile(pidfile)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_service_down_restarts_sample_service_over_ssh(tmp_path, lab, sample_service):
    inv = _inventory(tmp_path, lab, sample_service["settings"])
    port, pidfile = sample_service["port"], sample_service["pidfile"]
    # Start the sample service with its own start command, then stop it.
    subprocess.run(sample_service["settings"]["service-down"]["start"], shell=True, check=True)
    assert runbook.Run.wait(lambda: _listening(port), 20)
    old_pid = int(pidfile.read_text())
    os.kill(old_pid, signal.SIGTERM)
    assert runbook.Run.wait(lambda: not _listening(port), 20)
    out = _run(tmp_path, inv, "service-down", yes=True)
    assert int(pidfile.read_text()) != old_pid
    assert (out.record["outcome"], out.exit_code) == ("resolved", 0), out.lines
    assert _listening(sample_service["port"])
    verify = out.record["steps"][-1]
    assert verify["data"]["process"] and verify["data"]["port"] and verify["data"]["health"]
    diag = next(s for s in out.record["steps"] if s["step"] == "diagnose_log")
    assert len(diag["data"]["errors"]) == 1
    no_leak([out.record_dir, tmp_path / "records"], FAKE_ID, SECRET)
    assert not any(FAKE_ID in ln or SECRET in ln for ln in out.lines)
    # Running again finds nothing to do.
    again = _run(tmp_path, inv, "service-down", yes=True)
    assert (again.record["outcome"], again.exit_code) == ("nothing_to_do", 0)


def test_declined_confirmation_runs_nothing(tmp_path, lab, sample_service):
    inv = _inventory(tmp_path, lab, sample_service["settings"])
    asked: list[str] = []
    out = _run(tmp_path, inv, "service-down",
               confirm=lambda prompt: asked.append(prompt) or False)
    assert (out.record["outcome"], out.exit_code) == ("not_confirmed", 2)
    assert len(asked) == 1 and "sample-http" in asked[0]
    assert not sample_service["pidfile"].exists()
    assert not _listening(sample_service["port"])


def test_command_timeout_ends_a_hanging_change(tmp_path, lab, sample_service):
    settings = {"service-down": {**sample_service["settings"]["service-down"],
                                 "start": "sleep 60"}}
    inv = _inventory(tmp_path, lab, settings)
    started = time.monotonic()
    out = _run(tmp_path, inv, "service-down", yes=True, command_timeout=2)
    assert time.monotonic() - started < 45
    change = out.record["steps"][2]["changes"][0]
    assert change["outcome"] == "failed"
    assert out.exit_code == 2


def test_unreachable_host_is_recorded_quickly(tmp_path, lab):
    import socket

    from mhops.lab import LabHost

    with socket.socket() as probe:  # a port on our own octet that nothing listens on
        probe.bind(("127.0.0.65", 0))
        port = probe.getsockname()[1]
    gone = LabHost("gone", "127.0.0.65", port)
    inv = tmp_path / "hosts.yml"
    lab.write_inventory(inv, extra_hosts=[gone])
    started = time.monotonic()
    out = _run(tmp_path, inv, "high-load", host="gone", connect_timeout=3)
    assert time.monotonic() - started < 30
    assert (out.record["outcome"], out.exit_code) == ("unreachable", 2)


# ------------------------------------------------------------------ queue-backlog

def _redis(*args: str) -> str:
    return subprocess.run(["redis-cli", *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def backlog(tmp_path):
    _redis("DEL", KEY)
    for i in range(0, 600, 200):
        _redis("RPUSH", KEY, *[f"msg-{n}" for n in range(i, i + 200)])
    pidfile = tmp_path / "consumer.pid"
    script = tmp_path / "consumer.sh"
    script.write_text(f"while :; do redis-cli LPOP {KEY} 50 >/dev/null; sleep 0.05; done\n")
    consumer = {"name": "notify-consumer", "pidfile": str(pidfile),
                "start": f"setsid sh {script} >/dev/null 2>&1 </dev/null & echo $! > {pidfile}",
                "stop": f"kill $(cat {pidfile})"}
    yield {"settings": {"queue-backlog": {"lists": [KEY], "warning": 100, "critical": 100000,
                                          "consumers": [consumer], "drain_timeout": 60}},
           "pidfile": pidfile}
    _kill_pidfile(pidfile)
    _redis("DEL", KEY)


def test_queue_backlog_reported_and_recovered_over_ssh(tmp_path, lab, backlog):
    inv = _inventory(tmp_path, lab, backlog["settings"])
    checked = _run(tmp_path, inv, "queue-backlog", check=True)
    assert checked.exit_code == 2  # the consumer is down
    redis_step = checked.record["steps"][0]
    assert redis_step["status"] == "warning" and redis_step["data"]["lengths"][KEY] == 600
    assert int(_redis("LLEN", KEY)) == 600 and not backlog["pidfile"].exists()
    out = _run(tmp_path, inv, "queue-backlog", yes=True)
    assert (out.record["outcome"], out.exit_code) == ("resolved", 0), out.lines
    assert int(_redis("LLEN", KEY)) < 100
    assert out.record["steps"][-1]["data"]["consumers"] == {"notify-consumer": True}


# ------------------------------------------------------------------ tls-expiry (localhost)

def _cert(path: Path, days: int) -> str:
    return (f"openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=mhk-rb.test "
            f"-keyout {path}.key -out {path} -days {days} 2>/dev/null")


def test_tls_expiry_renews_on_localhost(tmp_path):
    cert = tmp_path / "gw.pem"
    subprocess.run(_cert(cert, 3), shell=True, check=True)
    settings = {"tls-expiry": {"cert_files": [str(cert)], "renew": _cert(cert, 90),
                               "reload": "true"}}
    inv = _inventory(tmp_path, None, settings, local=True)
    out = _run(tmp_path, inv, "tls-expiry", host="localhost", yes=True, lang="en")
    assert (out.record["outcome"], out.exit_code) == ("resolved", 0), out.lines
    before = out.record["steps"][0]["data"]["days"][str(cert)]
    after = out.record["steps"][-1]["data"]["days"][str(cert)]
    assert before < 7 and after > 80
    assert "remediated and verified" in out.record["headline"]


# ------------------------------------------------------------------ bad input, hooks

def test_unknown_runbook_lists_valid_ids(tmp_path):
    with pytest.raises(MhopsError) as err:
        _run(tmp_path, tmp_path / "none.yml", "disk-ful", host="x")
    for rid in ("disk-full", "service-down", "db-connections", "queue-backlog", "tls-expiry",
                "payment-callback", "high-load"):
        assert rid in str(err.value)


def test_unknown_setting_is_bad_input(tmp_path):
    inv = _inventory(tmp_path, None, {"disk-full": {"mountpoint": "/"}}, local=True)
    with pytest.raises(MhopsError, match="unknown setting mountpoint.*valid: .*mount"):
        _run(tmp_path, inv, "disk-full", host="localhost")


def test_incident_hook_receives_redacted_record(tmp_path):
    inv = _inventory(tmp_path, None, {}, local=True)
    got = []
    out = _run(tmp_path, inv, "high-load", host="localhost", check=True, incident=7,
               attach_to_incident=lambda n, rec: got.append((n, rec)))
    assert got and got[0][0] == 7 and got[0][1]["run_id"] == out.record["run_id"]
    assert got[0][1]["incident"] == 7 and got[0][1]["steps"]
    with pytest.raises(MhopsError, match="no incident store"):
        _run(tmp_path, inv, "high-load", host="localhost", check=True, incident=7)


def test_record_files_render(tmp_path):
    inv = _inventory(tmp_path, None, {}, local=True)
    out = _run(tmp_path, inv, "high-load", host="localhost", check=True, lang="en")
    rec = json.loads((out.record_dir / "record.json").read_text())
    for key in ("schema_version", "kind", "run_id", "lang", "status", "exit_code", "time",
                "operator", "headline"):
        assert key in rec
    assert "diagnose_top_processes" in (out.record_dir / "record.md").read_text()
    assert "<h1>" in (out.record_dir / "record.html").read_text()


# ------------------------------------------------------------------ db-connections

DB = "mhk_rb_conn"


def _pg(database="postgres"):
    import psycopg2

    return psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=database,
                            application_name="mhk_rb_test")


def _my(database=None):
    import pymysql

    return pymysql.connect(host="127.0.0.1", port=3306, user="root", database=database)


@pytest.fixture
def idle_sessions():
    admin = _pg()
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {DB}")
        cur.execute(f"CREATE DATABASE {DB}")
    my_admin = _my()
    with my_admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {DB}")
        cur.execute(f"CREATE DATABASE {DB}")
        cur.execute(f"CREATE TABLE {DB}.t (id INT PRIMARY KEY) ENGINE=InnoDB")
    pg = _pg(DB)
    with pg.cursor() as cur:  # leaves the session idle in a transaction
        cur.execute("SELECT 1")
    my = _my(DB)
    with my.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("INSERT INTO t VALUES (1)")
    time.sleep(1.5)
    yield {"postgresql": pg, "mariadb": my}
    for conn in (pg, my):
        try:
            conn.close()
        except Exception:
            pass
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    admin.close()
    with my_admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {DB}")
    my_admin.close()


@pytest.mark.parametrize("engine", ["postgresql", "mariadb"])
def test_db_connections_terminates_idle_transactions_only_when_confirmed(
        tmp_path, lab, idle_sessions, engine):
    # Other suites share these servers: their connection count must not decide the outcome.
    settings = {"db-connections": {"engine": engine, "databases": [DB], "idle_minutes": 0.01,
                                   "usage_warning": 101, "usage_critical": 101}}
    inv = _inventory(tmp_path, lab, settings)
    declined = _run(tmp_path, inv, "db-connections", confirm=lambda prompt: False)
    assert declined.record["outcome"] == "not_confirmed"
    idle = next(s for s in declined.record["steps"]
                if s["step"] == "diagnose_idle_transactions")["data"]["sessions"]
    assert len(idle) == 1 and idle[0]["db"] == DB
    conn = idle_sessions[engine]
    with conn.cursor() as cur:  # still alive: nothing was terminated
        cur.execute("SELECT 1")
    time.sleep(1.5)
    out = _run(tmp_path, inv, "db-connections", yes=True)
    assert (out.record["outcome"], out.exit_code) == ("resolved", 0), (out.lines,
                                                                        out.record["steps"])
    assert out.record["steps"][-1]["data"]["remaining"] == []
    import psycopg2
    import pymysql

    with pytest.raises((psycopg2.Error, pymysql.Error)), conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchall()


# ------------------------------------------------------------------ inspection link

def test_inspection_disk_finding_names_the_runbook_for_its_host(tmp_path, lab):
    from mhops import inspect

    inv = tmp_path / "inv"
    (inv / "group_vars").mkdir(parents=True)
    lab.write_inventory(inv / "hosts.yml")
    (inv / "group_vars" / "all.yml").write_text(yaml.safe_dump({
        "mhops_inspect_system_logs": "none", "mhops_inspect_ports_allowed": ["1-65535"],
        "mhops_inspect_thresholds": {"disk_percent": {"warning": 0.001, "critical": 100}}}))
    out = inspect.run(inspect.Options(inventory=[str(inv)], records_dir=tmp_path / "records",
                                      state_dir=tmp_path / "state", echo=lambda s: None))
    disk = [e for e in out.record["events"] if e["check"] == "disk_percent"]
    assert disk and all("invoke runbook disk-full --host rb1" in e["resolution"] for e in disk)


# ------------------------------------------------------------------ payment-callback, high-load

def test_payment_callback_restarts_unhealthy_endpoint_on_localhost(tmp_path):
    port = _free_port()
    log, pidfile = tmp_path / "notify.log", tmp_path / "notify.pid"
    log.write_text("INFO notify ok order=20261128000001\n"
                   f"ERROR wechat notify invalid sign order=20261128000002 id={FAKE_ID}\n"
                   "ERROR alipay notify timed out order=20261128000003\n")
    start = (f"cd {tmp_path}; setsid {sys.executable} -m http.server {port} --bind 127.0.0.1 "
             f">/dev/null 2>&1 </dev/null & echo $! > {pidfile}")
    settings = {"payment-callback": {"log": str(log), "health_url": f"http://127.0.0.1:{port}/",
                                     "restart": start}}
    inv = _inventory(tmp_path, None, settings, local=True)
    try:
        out = _run(tmp_path, inv, "payment-callback", host="localhost", yes=True)
        steps = {s["step"]: s for s in out.record["steps"]}
        assert steps["diagnose_callback_errors"]["data"]["errors"] == 2
        assert steps["diagnose_endpoint"]["status"] == "critical"
        assert abs(steps["diagnose_clock"]["data"]["offset_ms"]) < 1000
        assert (out.record["outcome"], out.exit_code) == ("resolved", 0), out.lines
        assert steps["verify_callback_healthy"]["data"]["code"] == "200"
        no_leak([out.record_dir], FAKE_ID)
    finally:
        _kill_pidfile(pidfile)


def test_high_load_reads_the_trend_from_inspection_records(tmp_path):
    from datetime import UTC, datetime, timedelta

    folder = tmp_path / "inspections"
    now = datetime.now(UTC).replace(microsecond=0)
    for i in range(5):
        when = now - timedelta(days=4 - i)
        stamp = when.isoformat().replace("+00:00", "Z")
        run = folder / f"{when:%Y%m%dT%H%M%SZ}-inspection"
        run.mkdir(parents=True)
        (run / "record.json").write_text(json.dumps({
            "kind": "inspection", "time": {"started_utc": stamp},
            "hosts": [{"host": "localhost", "reachable": True, "collected_at": stamp,
                       "results": [{"check": "load_per_core", "value": 0.5 + 0.25 * i},
                                   {"check": "cpu_percent", "value": 40 + 10 * i}]}]}))
    inv = _inventory(tmp_path, None, {"high-load": {"warning_per_core": 0.0}}, local=True)
    out = _run(tmp_path, inv, "high-load", host="localhost", check=True,
               inspections_dir=folder)
    trend = next(s for s in out.record["steps"] if s["step"] == "diagnose_trend")["data"]
    assert trend["records"] == 5
    assert trend["load"]["per_week"] == pytest.approx(1.75, abs=0.05)
    assert trend["cpu"]["per_week"] == pytest.approx(70, abs=1)
    top = next(s for s in out.record["steps"] if s["step"] == "diagnose_top_processes")
    assert top["data"]["processes"]


# ------------------------------------------------------------------ queue-backlog: RabbitMQ

AMQP_QUEUE = f"mhk_rb_queue_{os.getpid()}"


def _amqp():
    pika = pytest.importorskip("pika")
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", 5672, credentials=pika.PlainCredentials("guest", "guest")))


@pytest.fixture
def amqp_backlog(tmp_path):
    conn = _amqp()
    ch = conn.channel()
    ch.queue_delete(AMQP_QUEUE)
    ch.queue_declare(AMQP_QUEUE)
    for i in range(300):
        ch.basic_publish("", AMQP_QUEUE, f"notice {i}".encode())
    conn.close()
    pidfile, script = tmp_path / "amqp.pid", tmp_path / "consumer.py"
    script.write_text(
        "import pika\n"
        "c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', 5672))\n"
        "ch = c.channel()\n"
        f"ch.basic_consume({AMQP_QUEUE!r}, lambda ch, m, p, b: None, auto_ack=True)\n"
        "ch.start_consuming()\n")
    consumer = {"name": "amqp-consumer", "pidfile": str(pidfile),
                "start": f"setsid {sys.executable} {script} >/dev/null 2>&1 </dev/null & "
                         f"echo $! > {pidfile}"}
    yield {"rabbitmq_queues": [AMQP_QUEUE], "warning": 100, "critical": 100000,
           "consumers": [consumer], "drain_timeout": 60}
    _kill_pidfile(pidfile)
    conn = _amqp()
    conn.channel().queue_delete(AMQP_QUEUE)
    conn.close()


def test_queue_backlog_rabbitmq_depth_and_consumers_over_ssh(tmp_path, lab, amqp_backlog):
    inv = _inventory(tmp_path, lab, {"queue-backlog": amqp_backlog})
    checked = _run(tmp_path, inv, "queue-backlog", check=True)
    rabbit = next(s for s in checked.record["steps"] if s["step"] == "diagnose_rabbitmq")
    assert rabbit["status"] == "critical"  # 300 waiting, no consumer
    assert rabbit["data"]["queues"][AMQP_QUEUE] == {"messages": 300, "consumers": 0}
    out = _run(tmp_path, inv, "queue-backlog", yes=True)
    assert (out.record["outcome"], out.exit_code) == ("resolved", 0), out.lines
    assert out.record["steps"][-1]["data"]["lengths"][f"amqp:{AMQP_QUEUE}"] < 100


def test_database_password_never_shown_or_written(tmp_path, lab):
    password = "Planted-Pw-5e4d3c2b"  # PostgreSQL here trusts loopback: any password works
    settings = {"db-connections": {"engine": "postgresql", "password": password,
                                   "databases": ["mhk_rb_none"], "usage_warning": 0.0,
                                   "usage_critical": 101}}
    inv = _inventory(tmp_path, lab, settings)
    out = _run(tmp_path, inv, "db-connections", check=True)
    assert out.record["steps"][0]["commands"][0]["exit"] == 0
    assert out.exit_code == 1
    no_leak([out.record_dir], password)
    assert not any(password in ln for ln in out.lines)


def test_queue_backlog_reads_redis_stream_and_groups(tmp_path, lab):
    key = f"{KEY}:stream"
    _redis("DEL", key)
    try:
        for i in range(150):
            _redis("XADD", key, "*", "notice", str(i))
        _redis("XGROUP", "CREATE", key, "senders", "0")
        settings = {"queue-backlog": {"streams": [key], "warning": 100, "critical": 1000}}
        out = _run(tmp_path, _inventory(tmp_path, lab, settings), "queue-backlog", check=True)
        step = out.record["steps"][0]
        assert step["status"] == "warning" and step["data"]["lengths"][key] == 150
        assert step["data"]["groups"][key][0]["name"] == "senders"
        assert out.exit_code == 1 and out.record["outcome"] == "diagnosed"
    finally:
        _redis("DEL", key)


def test_cli_without_terminal_or_yes_confirms_nothing(tmp_path):
    cert = tmp_path / "gw.pem"
    subprocess.run(_cert(cert, 3), shell=True, check=True)
    before = cert.read_bytes()
    inv = _inventory(tmp_path, None, {"tls-expiry": {"cert_files": [str(cert)],
                                                     "renew": _cert(cert, 90)}}, local=True)
    env = dict(os.environ, INVOKE_MHOPS_RECORDS_DIR=str(tmp_path / "records"),
               INVOKE_MHOPS_STATE_DIR=str(tmp_path / "state"))
    repo = Path(__file__).resolve().parents[2]
    res = subprocess.run([str(Path(sys.executable).parent / "invoke"), "runbook", "tls-expiry",
                          "--host", "localhost", "-i", str(inv), "--lang", "en"],
                         cwd=repo, env=env, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "not confirmed" in res.stdout
    assert cert.read_bytes() == before
    assert len(list((tmp_path / "records").glob("*-runbook"))) == 1


def test_failing_incident_hook_keeps_the_record(tmp_path):
    inv = _inventory(tmp_path, None, {"high-load": {"warning_per_core": 1000,
                                                    "critical_per_core": 1000}}, local=True)

    def broken(n, rec):
        raise RuntimeError("incident store locked")

    out = _run(tmp_path, inv, "high-load", host="localhost", check=True, incident=3,
               attach_to_incident=broken)
    assert out.exit_code == 1 and out.record_dir.is_dir()
    assert any("incident 3 failed" in ln for ln in out.lines)
