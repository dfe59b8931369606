"""Notifications: WeCom and DingTalk robots and e-mail, after the run they report on.

Owns: reading the channels (``mhops_notify_channels`` in the inventory's group_vars,
secrets as ``vault_*`` variables, plus ``notify.channels`` in invoke.yaml), deciding
which channels take an event, sending with retries (exponential back-off, every
channel in parallel and each bounded by ``total_timeout_s``), and recording the
outcome as a small record of its own, kind ``notification``
(``<records>/<id>-notification/``), written after the run's record.

Why a record of its own: a run's record is published atomically and never rewritten,
and a notification is attempted only after it exists; the notification record points
back at the run (``about.run_id``), is redacted and atomic like every record, and the
report bundles can list failed deliveries from it.

Nothing here fails the run it reports on: :func:`after_run` catches everything and
says so on the console; the run keeps its own exit code.

Entry points for other capabilities:
``after_run(outcome, settings)`` (inspection, drill: raises the event the record implies),
``notify_event(event, record, settings)`` (rollback from upgrade, ...),
``sla_check(due_soon, settings, within_minutes)`` (SLA reminders).
"""

from __future__ import annotations

import json
import smtplib
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mhops import notify_payload as P
from mhops import records, state
from mhops.errors import MhopsError
from mhops.exports import written_record
from mhops.redact import Redactor

SCHEMA_VERSION = 1
KIND = "notification"
SENT, FAILED = "sent", "failed"
VARIABLE = "mhops_notify_channels"


@dataclass
class Settings:
    """invoke.yaml ``notify:`` plus where the run's records and inventory are."""

    records_dir: Path
    state_dir: Path
    inventory: list[str] = field(default_factory=list)
    vault_password_file: str | None = None
    enabled: bool = True
    channels: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=lambda: list(P.EVENTS))
    min_severity: str = P.WARNING
    attempt_timeout_s: float = 10.0
    total_timeout_s: float = 60.0
    retries: int = 4
    backoff_s: float = 1.0
    backoff_max_s: float = 20.0
    max_items: int = 10
    link_base: str = ""
    lang: str | None = None          # None: the language of the record reported on
    operator: str = ""
    timezone: str = "Asia/Shanghai"
    echo: Callable[[str], None] = print


@dataclass
class Delivery:
    channel: str
    type: str
    endpoint: str
    status: str = FAILED
    attempts: int = 0
    seconds: float = 0.0
    error: str = ""


# ------------------------------------------------------------------ channels

def load_channels(settings: Settings) -> tuple[list[dict[str, Any]], set[str]]:
    """The configured channels and every secret to redact (inventory vault values too)."""
    channels = P.validate_channels(list(settings.channels or []), "invoke.yaml notify.channels")
    secrets: set[str] = set()
    if settings.inventory:
        from mhops.inventory import select

        selection = select(settings.inventory, None, settings.vault_password_file)
        secrets |= set(selection.secrets)
        host = selection.hosts[0]
        raw = host.vars.get(VARIABLE)
        if raw is not None:
            path, line = host.where(VARIABLE)
            try:
                channels += P.validate_channels(raw, VARIABLE)
            except ValueError as exc:
                raise MhopsError(str(exc), path=path, line=line) from None
    names = [c["name"] for c in channels]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise MhopsError(f"notification channel names used twice: {', '.join(dup)}")
    secrets |= set(P.secrets_of(channels))
    return channels, secrets


# ------------------------------------------------------------------ delivery

class _Attempt(Exception):
    def __init__(self, reason: str, retry: bool):
        super().__init__(reason)
        self.retry = retry


def _opener(url: str) -> urllib.request.OpenerDirector:
    """The environment's proxies for the robots' public hosts; never for loopback."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost" or host.startswith("127.") or host == "::1":
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def _post_json(url: str, body: dict[str, Any], timeout: float) -> Any:
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json; charset=utf-8"})
    try:
        with _opener(url).open(req, timeout=timeout) as resp:
            text = resp.read(65536)
    except urllib.error.HTTPError as exc:
        raise _Attempt(f"HTTP {exc.code}", P.http_retriable(exc.code)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Attempt(f"{type(exc).__name__}: {reason}",
                       not isinstance(reason, ssl.SSLCertVerificationError)) from None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _robot(channel: dict[str, Any], msg: P.Message, timeout: float) -> None:
    kind = channel["type"]
    if kind == "wecom":
        body, url = P.wecom_body(msg, channel), channel["webhook"]
    else:
        body = P.dingtalk_body(msg, channel)
        # Signed per attempt: DingTalk refuses a timestamp more than an hour old.
        url = P.dingtalk_url(channel["webhook"], channel.get("secret"),
                             int(time.time() * 1000))
    ok, retry, reason = P.robot_reply_ok(kind, _post_json(url, body, timeout))
    if not ok:
        raise _Attempt(reason, retry)


def _email(channel: dict[str, Any], msg: P.Message, timeout: float) -> None:
    context = ssl.create_default_context(cafile=channel.get("ca_file") or None)
    if channel.get("verify") is False:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    port = channel.get("port") or (465 if channel.get("ssl") else 25)
    try:
        if channel.get("ssl"):
            smtp = smtplib.SMTP_SSL(channel["host"], port, timeout=timeout, context=context)
        else:
            smtp = smtplib.SMTP(channel["host"], port, timeout=timeout)
        with smtp:
            smtp.ehlo()
            if channel.get("starttls") and not channel.get("ssl"):
                smtp.starttls(context=context)
                smtp.ehlo()
            if channel.get("username"):
                smtp.login(channel["username"], channel.get("password") or "")
            smtp.send_message(P.email_message(msg, channel))
    except (smtplib.SMTPNotSupportedError, ssl.SSLError) as exc:
        # No STARTTLS/AUTH on the server, or a certificate we do not trust: no retry heals it.
        raise _Attempt(f"{type(exc).__name__}: {exc}", False) from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise _Attempt(f"recipients refused: {', '.join(exc.recipients)}", False) from None
    except smtplib.SMTPResponseException as exc:
        # 4xx is a temporary refusal (greylisting, busy); 5xx is permanent.
        raise _Attempt(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}",
                       400 <= exc.smtp_code < 500) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise _Attempt(f"{type(exc).__name__}: {exc}", True) from None


_SENDERS = {"wecom": _robot, "dingtalk": _robot, "email": _email}


def deliver(channel: dict[str, Any], msg: P.Message, settings: Settings) -> Delivery:
    """Send one message on one channel, retrying within ``total_timeout_s``."""
    where = (P.endpoint(channel["webhook"]) if channel.get("webhook")
             else f"smtp://{channel.get('host')}:{channel.get('port') or ''}")
    d = Delivery(channel["name"], channel["type"], where)
    t0 = time.monotonic()
    deadline = t0 + settings.total_timeout_s
    for attempt in range(1, settings.retries + 2):
        remaining = deadline - time.monotonic()
        if remaining <= 0.05:
            d.error += " (gave up: total time bound reached)"
            break
        d.attempts = attempt
        try:
            _SENDERS[channel["type"]](channel, msg,
                                      max(0.05, min(settings.attempt_timeout_s, remaining)))
        except _Attempt as exc:
            d.error = str(exc)
            if not exc.retry:
                break
        except Exception as exc:  # a bug in one channel must not stop the others
            d.error = f"{type(exc).__name__}: {exc}"
            break
        else:
            d.status, d.error = SENT, ""
            break
        if attempt > settings.retries:
            break
        wait = P.backoff(attempt, settings.backoff_s, settings.backoff_max_s)
        if time.monotonic() + wait >= deadline:
            d.error += " (gave up: total time bound reached)"
            break
        time.sleep(wait)
    d.seconds = round(time.monotonic() - t0, 3)
    return d


# ------------------------------------------------------------------ events

def notify_event(event: str, record: dict[str, Any], settings: Settings, *,
                 severity: str | None = None, record_dir: Path | None = None,
                 channels: tuple[list[dict[str, Any]], set[str]] | None = None
                 ) -> records.Outcome:
    """Send `event` about `record` to every channel that takes it; write the record.

    Raises only when even the notification record cannot be written; a channel that
    cannot be configured or reached is recorded as such. When no channel takes the
    event nothing is sent and no record is written (``record_dir`` is None).
    """
    started = records.utc_now()
    severity = severity or P.severity_of(record)
    error = ""
    try:
        configured, secrets = channels if channels is not None else load_channels(settings)
    except (MhopsError, ValueError) as exc:
        configured, secrets, error = [], set(), str(exc)
    redactor = Redactor(secrets=secrets)
    clean = redactor.obj(record)
    lang = settings.lang or clean.get("lang") or "zh-CN"
    words = records.labels(lang)
    link = ""
    if settings.link_base and record_dir is not None:
        link = f"{settings.link_base.rstrip('/')}/{Path(record_dir).name}/record.html"
    msg = P.build_message(event, severity, clean, words, max_items=settings.max_items,
                          link=link)
    msg.title = redactor.text(msg.title)
    msg.lines = [redactor.text(x) for x in msg.lines]
    msg.items = [redactor.text(x) for x in msg.items]
    targets = [c for c in configured
               if P.wants(c, event, severity, settings.events, settings.min_severity)]
    if targets:
        with ThreadPoolExecutor(max_workers=len(targets)) as pool:
            deliveries = list(pool.map(lambda c: deliver(c, msg, settings), targets))
    else:
        deliveries = []
    sent = sum(1 for d in deliveries if d.status == SENT)
    if error or (deliveries and sent == 0):
        status, code = "critical", 2
    elif sent < len(deliveries):
        status, code = "warning", 1
    else:
        status, code = "normal", 0
    n = words["notify"]
    out = {
        "schema_version": SCHEMA_VERSION, "kind": KIND,
        "run_id": records.run_id(KIND, started), "lang": lang,
        "status": status, "exit_code": code,
        "time": records.time_block(started, records.utc_now(), settings.timezone),
        "operator": records.operator_name(settings.operator),
        "headline": n["headline"].format(event=n["events"][event], sent=sent,
                                         total=len(deliveries)),
        "event": event, "severity": severity,
        "about": {"kind": clean.get("kind"), "run_id": clean.get("run_id"),
                  "status": clean.get("status") or clean.get("outcome")},
        "message": {"title": msg.title, "text": msg.text()},
        "deliveries": [asdict(d) for d in deliveries],
        "error": error or None,
    }
    if not targets and not error:
        # Nothing was attempted (no channel configured, or none takes this event): a
        # record per abnormal run saying so would only bury the real ones.
        return records.Outcome(exit_code=0, record_dir=None, record=redactor.obj(out))
    run_dir = records.write_run(settings.records_dir, KIND, out, redactor)
    clean_out = json.loads((run_dir / "record.json").read_text(encoding="utf-8"))
    for d in clean_out["deliveries"]:
        settings.echo(f"{n['channel']} {d['channel']} ({d['type']}): "
                      f"{n['delivery_statuses'][d['status']]} {d['attempts']}× "
                      f"{d['seconds']}s {d['error'] or ''}".rstrip())
    if clean_out["error"]:
        settings.echo(f"{n['error']}: {clean_out['error']}")
    settings.echo(str(run_dir))
    return records.Outcome(exit_code=code, record_dir=run_dir, record=clean_out)


def after_run(outcome: records.Outcome, settings: Settings) -> records.Outcome | None:
    """Notify about a finished run when its record calls for it; never raises."""
    try:
        if not settings.enabled:
            return None
        record = written_record(outcome.record_dir, outcome.record)
        found = P.event_for(record)
        if found is None:
            return None
        event, severity = found
        return notify_event(event, record, settings, severity=severity,
                            record_dir=outcome.record_dir)
    except Exception as exc:  # the run is already recorded; its exit code stands
        settings.echo(f"notification failed and could not be recorded: "
                      f"{Redactor().text(str(exc))}")
        return None


def send_test(settings: Settings) -> records.Outcome:
    """A test message on every channel (bad settings raise MhopsError: exit 3)."""
    channels = load_channels(settings)
    lang = settings.lang or "zh-CN"
    record = {"kind": "test", "lang": lang,
              "headline": records.labels(lang)["notify"]["test_headline"]}
    return notify_event(P.TEST, record, settings, severity=P.WARNING, channels=channels)


# ------------------------------------------------------------------ SLA reminders

def _sent_path(state_dir: Path) -> Path:
    return Path(state_dir) / "notify" / "sla-sent.json"


def sla_check(due_soon: Callable[[int], list[dict[str, Any]]], settings: Settings,
              within_minutes: int) -> records.Outcome | None:
    """Remind about incidents whose SLA deadline falls within `within_minutes`.

    `due_soon(within_minutes)` returns mappings with ``id``, ``due`` (ISO time) and
    optionally ``title``, ``priority``, ``minutes_left``, ``host``. Each incident is
    announced once per deadline: ``<state>/notify/sla-sent.json`` remembers what was
    delivered, so polling every few minutes does not repeat the reminder.
    """
    path = _sent_path(settings.state_dir)
    with state.locked(settings.state_dir, "notify-sla"):
        try:
            sent = json.loads(path.read_text())
        except (OSError, ValueError):
            sent = {}
        due = [i for i in due_soon(within_minutes)
               if f"{i.get('id')}|{i.get('due')}" not in sent]
        if not due:
            return None
        lang = settings.lang or "zh-CN"
        n = records.labels(lang)["notify"]
        overdue = any((i.get("minutes_left") or 0) <= 0 for i in due)
        items = [{"subject": str(i.get("host") or i.get("id")), "check": "sla",
                  "target": f"{i.get('id')} {i.get('priority') or ''}".strip(),
                  "status": "critical" if (i.get("minutes_left") or 0) <= 0 else "warning",
                  "value": i.get("minutes_left"), "unit": "min",
                  "explanation": str(i.get("title") or "")} for i in due]
        started = records.utc_now()
        record = {"kind": "sla", "lang": lang, "run_id": records.run_id("sla", started),
                  "status": "critical" if overdue else "warning",
                  "headline": n["sla_headline"].format(n=len(due), minutes=within_minutes),
                  "items": items}
        out = notify_event(P.SLA, record, settings,
                           severity=P.CRITICAL if overdue else P.WARNING)
        if any(d["status"] == SENT for d in out.record["deliveries"]):
            now = records.iso(records.utc_now())
            sent.update({f"{i.get('id')}|{i.get('due')}": now for i in due})
            state.atomic_write(path, json.dumps(sent, sort_keys=True, indent=1).encode())
        return out


def settings_from(cfg: Any, **kw: Any) -> Settings:
    """Settings from invoke.yaml's ``notify:`` section (a mapping) plus run-specific keys."""
    def get(key, default):
        value = cfg.get(key) if hasattr(cfg, "get") else None
        return default if value in (None, "") else value

    return Settings(
        enabled=bool(get("enabled", True)),
        channels=[dict(c) for c in get("channels", [])],
        events=list(get("events", list(P.EVENTS))),
        min_severity=str(get("min_severity", P.WARNING)),
        attempt_timeout_s=float(get("attempt_timeout_s", 10)),
        total_timeout_s=float(get("total_timeout_s", 60)),
        retries=int(get("retries", 4)),
        backoff_s=float(get("backoff_s", 1)),
        backoff_max_s=float(get("backoff_max_s", 20)),
        max_items=int(get("max_items", 10)),
        link_base=str(get("link_base", "")),
        **kw)
