"""Notification content, channel settings and wire formats (a pure leaf).

Owns: which events a record raises (abnormal inspection, failed drill, rollback, SLA
about to be breached) and how severe they are; the message built from a (redacted)
record, in markdown and plain text, with no log samples and no free-form record fields
beyond the headline, explanations and reason; validation of the channel settings;
the WeCom group-robot and DingTalk robot JSON bodies and DingTalk's request signature;
the e-mail message; the retry back-off schedule and which replies are worth a retry.

Imports nothing of the project: labels come in as a mapping.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import urllib.parse
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from mhops.cases import FAIL, LEVEL_RANK, WARN, cases, drill_subject, level, run_level

# Event kinds and the record kinds they come from.
INSPECTION, DRILL, ROLLBACK, SLA, TEST = "inspection", "drill", "rollback", "sla", "test"
EVENTS = (INSPECTION, DRILL, ROLLBACK, SLA, TEST)
WARNING, CRITICAL = "warning", "critical"
SEVERITIES = (WARNING, CRITICAL)
CHANNEL_TYPES = ("wecom", "dingtalk", "email")
FORMATS = ("markdown", "text")
# Robot limits: WeCom markdown 4096 bytes, text 2048 bytes; DingTalk 20000 bytes.
MAX_BYTES = {("wecom", "markdown"): 4096, ("wecom", "text"): 2048,
             ("dingtalk", "markdown"): 20000, ("dingtalk", "text"): 20000}
# errcode values that mean "busy or rate-limited, try again later".
RETRY_ERRCODES = {"wecom": {-1, 45009}, "dingtalk": {-1, 130101, 130102}}

_COMMON = {"name": str, "type": str, "events": list, "min_severity": str, "format": str}
_KEYS = {
    "wecom": {**_COMMON, "webhook": str, "mentioned_list": list, "mentioned_mobile_list": list},
    "dingtalk": {**_COMMON, "webhook": str, "secret": str, "at_mobiles": list,
                 "at_all": bool},
    "email": {**_COMMON, "host": str, "port": int, "starttls": bool, "ssl": bool,
              "username": str, "password": str, "from": str, "to": list,
              "subject_prefix": str, "ca_file": str, "verify": bool},
}
_REQUIRED = {"wecom": ("webhook",), "dingtalk": ("webhook",), "email": ("host", "from", "to")}


# ------------------------------------------------------------------ settings

def validate_channels(raw: Any, where: str) -> list[dict[str, Any]]:
    """Check a list of channel mappings; raise ValueError naming `where` and the entry."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError(f"{where}: must be a list of channels")
    out, names = [], set()
    for i, ch in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(ch, dict):
            raise ValueError(f"{at}: a channel must be a mapping")
        kind = ch.get("type")
        if kind not in CHANNEL_TYPES:
            raise ValueError(f"{at}: type must be one of {', '.join(CHANNEL_TYPES)}")
        allowed = _KEYS[kind]
        for key, value in ch.items():
            if key not in allowed:
                raise ValueError(f"{at}: unknown setting {key!r} for a {kind} channel; "
                                 f"valid: {', '.join(sorted(allowed))}")
            want = allowed[key]
            if value is not None and not (isinstance(value, want)
                                          and not (want is int and isinstance(value, bool))):
                raise ValueError(f"{at}.{key}: must be {want.__name__}")
        for key in _REQUIRED[kind]:
            if not ch.get(key):
                raise ValueError(f"{at}: {key} is required for a {kind} channel")
        c = dict(ch)
        c.setdefault("name", f"{kind}-{i + 1}")
        if c["name"] in names:
            raise ValueError(f"{at}: channel name {c['name']!r} is used twice")
        names.add(c["name"])
        if c.get("format", "markdown") not in FORMATS:
            raise ValueError(f"{at}.format: must be one of {', '.join(FORMATS)}")
        if c.get("min_severity", WARNING) not in SEVERITIES:
            raise ValueError(f"{at}.min_severity: must be one of {', '.join(SEVERITIES)}")
        bad = [e for e in c.get("events") or [] if e not in EVENTS]
        if bad:
            raise ValueError(f"{at}.events: unknown {bad}; valid: {', '.join(EVENTS)}")
        if kind == "email" and not all(isinstance(t, str) and "@" in t for t in c["to"]):
            raise ValueError(f"{at}.to: must be a list of e-mail addresses")
        out.append(c)
    return out


def secrets_of(channels: list[dict[str, Any]]) -> list[str]:
    """Values that must never be shown: webhooks (they carry the key), secrets, passwords."""
    out = []
    for c in channels:
        for key in ("webhook", "secret", "password"):
            if c.get(key):
                out.append(str(c[key]))
                query = urllib.parse.urlsplit(str(c[key])).query
                out += [v for _, v in urllib.parse.parse_qsl(query)]
    return out


def wants(channel: dict[str, Any], event: str, severity: str,
          default_events: list[str], default_min: str) -> bool:
    """Whether `channel` takes this event (TEST events go everywhere)."""
    if event == TEST:
        return True
    events = channel.get("events") or default_events
    least = channel.get("min_severity") or default_min
    return event in events and SEVERITIES.index(severity) >= SEVERITIES.index(least)


def endpoint(url: str) -> str:
    """A webhook as it may be recorded: scheme, host and path, never the query (the key)."""
    p = urllib.parse.urlsplit(url)
    return f"{p.scheme}://{p.hostname or ''}{f':{p.port}' if p.port else ''}{p.path}"


# ------------------------------------------------------------------ events

def event_for(record: dict[str, Any]) -> tuple[str, str] | None:
    """(event, severity) a finished run raises by itself, or None.

    An inspection with warning or critical results, a failed drill, and any record that
    says it rolled back (``rolled_back: true`` or status/outcome ``rolled_back``, e.g.
    an upgrade). SLA reminders are raised by ``sla_check``.
    """
    kind = record.get("kind")
    if record.get("rolled_back") is True or "rolled_back" in (record.get("status"),
                                                              record.get("outcome")):
        return ROLLBACK, CRITICAL
    if kind == "inspection":
        lvl = run_level(record)
        if lvl == FAIL:
            return INSPECTION, CRITICAL
        if lvl == WARN:
            return INSPECTION, WARNING
        return None
    if kind == "drill" and level(record.get("outcome")) == FAIL:
        return DRILL, CRITICAL
    return None


def severity_of(record: dict[str, Any], default: str = CRITICAL) -> str:
    lvl = run_level(record)
    return CRITICAL if lvl == FAIL else (WARNING if lvl == WARN else default)


# ------------------------------------------------------------------ the message

@dataclass
class Message:
    event: str
    severity: str
    title: str
    lines: list[str] = field(default_factory=list)      # key: value facts
    items: list[str] = field(default_factory=list)      # abnormal checks
    link: str = ""
    link_label: str = ""

    def markdown(self) -> str:
        out = [f"### {self.title}", ""]
        out += [f"> {line}" for line in self.lines]
        if self.items:
            out += [""] + [f"- {i}" for i in self.items]
        if self.link:
            out += ["", f"[{self.link_label}]({self.link})"]
        return "\n".join(out)

    def text(self) -> str:
        out = [self.title, *self.lines]
        out += [f"- {i}" for i in self.items]
        if self.link:
            out.append(f"{self.link_label}: {self.link}")
        return "\n".join(out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return "" if value is None else str(value)


def build_message(event: str, severity: str, record: dict[str, Any],
                  words: dict[str, Any], *, max_items: int = 10,
                  link: str = "") -> Message:
    """The notification for `record` (already redacted) in the record's language.

    `words` is the merged label mapping of that language (``notify``, ``statuses``,
    ``checks``). Log samples and free-form fields other than the headline, the reason
    and each check's explanation are left out on purpose: the message leaves the
    hospital's network.
    """
    n = words["notify"]
    statuses = {**n.get("statuses", {}), **words.get("statuses", {})}
    checks = words.get("checks", {})
    title = f"【{n['severities'][severity]}】{n['events'][event]}"
    lines = []
    if record.get("headline"):
        lines.append(f"{n['summary']}: {record['headline']}")
    if record.get("reason"):
        lines.append(f"{n['reason']}: {record['reason']}")
    status = record.get("status") or record.get("outcome")
    if status:
        code = record.get("exit_code")
        lines.append(f"{n['status']}: {statuses.get(status, status)}"
                     + (f" ({n['exit_code']} {code})" if code is not None else ""))
    t = record.get("time") or {}
    when = t.get("started_local") or t.get("started_utc")
    if when:
        lines.append(f"{n['time']}: {str(when)[:19].replace('T', ' ')}"
                     + (f" ({t['timezone']})" if t.get("timezone") else ""))
    if record.get("kind") == "drill":
        lines.append(f"{n['database']}: {drill_subject(record)}")
    if record.get("run_id"):
        lines.append(f"{n['run_id']}: {record['run_id']}")
    bad = sorted((c for c in cases(record) if c.level in (WARN, FAIL)),
                 key=lambda c: -LEVEL_RANK[c.level])
    items = []
    for c in bad[:max_items]:
        what = checks.get(c.check, c.check) + (f" {c.target}" if c.target else "")
        value = f" = {_fmt(c.value)}{c.unit}" if c.value not in (None, "") else ""
        expl = f": {c.message}" if c.message else ""
        items.append(f"{c.subject} · {what}{value} [{statuses.get(c.status, c.status)}]"
                     f"{expl}")
    if len(bad) > max_items:
        items.append(n["more"].format(n=len(bad) - max_items))
    return Message(event, severity, title, lines, items, link, n["link"])


def fit(text: str, max_bytes: int, tail: str = "\n…") -> str:
    """Cut `text` to `max_bytes` of UTF-8 without splitting a character."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    room = max_bytes - len(tail.encode("utf-8"))
    return data[:room].decode("utf-8", "ignore") + tail


# ------------------------------------------------------------------ wire formats

def wecom_body(msg: Message, channel: dict[str, Any]) -> dict[str, Any]:
    """WeCom group robot: ``{"msgtype": "markdown"|"text", ...}``."""
    fmt = channel.get("format") or "markdown"
    if fmt == "markdown":
        return {"msgtype": "markdown",
                "markdown": {"content": fit(msg.markdown(), MAX_BYTES["wecom", fmt])}}
    text: dict[str, Any] = {"content": fit(msg.text(), MAX_BYTES["wecom", fmt])}
    if channel.get("mentioned_list"):
        text["mentioned_list"] = [str(x) for x in channel["mentioned_list"]]
    if channel.get("mentioned_mobile_list"):
        text["mentioned_mobile_list"] = [str(x) for x in channel["mentioned_mobile_list"]]
    return {"msgtype": "text", "text": text}


def dingtalk_body(msg: Message, channel: dict[str, Any]) -> dict[str, Any]:
    """DingTalk custom robot: markdown (title + text) or text, with the @ block."""
    fmt = channel.get("format") or "markdown"
    at = {"atMobiles": [str(x) for x in channel.get("at_mobiles") or []],
          "isAtAll": bool(channel.get("at_all"))}
    if fmt == "markdown":
        return {"msgtype": "markdown",
                "markdown": {"title": msg.title,
                             "text": fit(msg.markdown(), MAX_BYTES["dingtalk", fmt])},
                "at": at}
    return {"msgtype": "text", "text": {"content": fit(msg.text(), MAX_BYTES["dingtalk", fmt])},
            "at": at}


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk 加签: base64(HMAC-SHA256(key=secret, "timestamp\\nsecret")), URL-encoded."""
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp_ms}\n{secret}".encode(),
                      hashlib.sha256).digest()
    return urllib.parse.quote_plus(base64.b64encode(digest).decode("ascii"))


def dingtalk_url(webhook: str, secret: str | None, timestamp_ms: int) -> str:
    """The webhook with ``timestamp`` and ``sign`` appended when the robot signs requests."""
    if not secret:
        return webhook
    sep = "&" if urllib.parse.urlsplit(webhook).query else "?"
    return f"{webhook}{sep}timestamp={timestamp_ms}&sign={dingtalk_sign(secret, timestamp_ms)}"


def robot_reply_ok(kind: str, reply: Any) -> tuple[bool, bool, str]:
    """(delivered, worth retrying, reason) from a robot's JSON reply."""
    if not isinstance(reply, dict) or "errcode" not in reply:
        return False, False, "reply is not the robot's JSON ({errcode, errmsg})"
    code = reply.get("errcode")
    if code == 0:
        return True, False, "ok"
    return False, code in RETRY_ERRCODES[kind], f"errcode {code}: {reply.get('errmsg', '')}"


def email_message(msg: Message, channel: dict[str, Any], domain: str = "mhops.local"
                  ) -> EmailMessage:
    m = EmailMessage()
    prefix = channel.get("subject_prefix", "[mhops]")
    m["Subject"] = f"{prefix} {msg.title}".strip()
    m["From"] = channel["from"]
    m["To"] = ", ".join(channel["to"])
    m["Date"] = formatdate(localtime=False)
    m["Message-ID"] = make_msgid(domain=domain)
    m.set_content(msg.text() + "\n")
    return m


# ------------------------------------------------------------------ retries

def backoff(attempt: int, base_s: float, max_s: float) -> float:
    """Wait before retry number `attempt` (1, 2, ...): base, 2×base, 4×base ... capped."""
    return min(max_s, base_s * (2 ** (attempt - 1)))


def http_retriable(status: int) -> bool:
    """5xx and 429 are the server's trouble and may pass; other 4xx will not."""
    return status >= 500 or status in (408, 429)
