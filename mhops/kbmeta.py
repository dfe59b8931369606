"""The fault knowledge base's rules (a pure leaf): runbook metadata, review age, search.

Owns what a runbook's ``META`` block must hold (id, titles in zh-CN and en, symptoms,
default classification, diagnosis/remediation/verification steps, owner, reviewed
date), checking it against the step functions the module really defines, the review
rule (an entry reviewed more than ``REVIEW_MAX_DAYS`` ago is stale), the step-name
convention (``diagnose_*``, ``remediate_*``, ``verify_*``) and knowledge-base search
in Chinese and English. Chinese has no spaces between words, so a Chinese query is
matched by its character bigrams (and single characters by substring) instead of by
word segmentation. Standard library only; imports nothing of the project.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

REVIEW_MAX_DAYS = 183  # the contract: the knowledge base is reviewed at least every six months
LANGS = ("zh-CN", "en")
PHASES = ("diagnosis", "remediation", "verification")
PREFIX = {"diagnosis": "diagnose_", "remediation": "remediate_", "verification": "verify_"}
# Issue 5's classification axes; the incident store derives priority from these.
SCOPES = ("person", "department", "hospital")
TYPES = ("server", "software")
SEVERITIES = ("patient-safety", "clinical", "operations", "experience")
REQUIRED = ("id", "title", "symptoms", "classification", *PHASES, "owner", "reviewed")
_ID = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")


def module_name(runbook_id: str) -> str:
    """The file stem of a runbook: ``disk-full`` lives in ``runbooks/disk_full.py``."""
    return runbook_id.replace("-", "_")


def parse_date(text: Any) -> date | None:
    if isinstance(text, date):
        return text
    try:
        return date.fromisoformat(str(text))
    except ValueError:
        return None


def steps(meta: dict[str, Any], phase: str) -> list[dict[str, str]]:
    """A phase's steps as ``{"step", "zh-CN", "en"}`` from the ``(name, zh, en)`` tuples."""
    out = []
    items = meta.get(phase)
    for item in items if isinstance(items, (list, tuple)) else []:
        parts = list(item) if isinstance(item, (list, tuple)) else [item]
        name, zh, en = ([str(x or "") for x in parts] + ["", "", ""])[:3]
        out.append({"step": name, "zh-CN": zh, "en": en})
    return out


def problems(meta: Any, functions: list[str], *, stem: str, today: date) -> list[str]:
    """Everything wrong with one runbook's metadata, as sentences (empty = fine).

    `functions` are the names of the step functions the module defines (by prefix).
    """
    if not isinstance(meta, dict):
        return ["no META dict"]
    out = [f"missing field {k!r}" for k in REQUIRED if meta.get(k) in (None, "", [], {})]
    rid = meta.get("id")
    if rid and (not isinstance(rid, str) or not _ID.match(rid)):
        out.append(f"id {rid!r} is not lower-case words joined by '-'")
    elif rid and module_name(rid) != stem:
        out.append(f"id {rid!r} must live in {module_name(rid)}.py, not {stem}.py")
    for key in ("title", "symptoms"):
        value = meta.get(key)
        if value and (not isinstance(value, dict) or any(not value.get(x) for x in LANGS)):
            out.append(f"{key} needs both zh-CN and en")
    cls = meta.get("classification")
    if cls:
        cls = cls if isinstance(cls, dict) else {}
        for axis, valid in (("scope", SCOPES), ("type", TYPES), ("severity", SEVERITIES)):
            if cls.get(axis) not in valid:
                out.append(f"classification.{axis} {cls.get(axis)!r} is not one of "
                           f"{', '.join(valid)}")
    if meta.get("reviewed"):
        reviewed = parse_date(meta["reviewed"])
        if reviewed is None:
            out.append(f"reviewed {meta['reviewed']!r} is not a date (YYYY-MM-DD)")
        elif (today - reviewed).days > REVIEW_MAX_DAYS:
            out.append(f"reviewed {reviewed} is {(today - reviewed).days} days ago "
                       f"(more than {REVIEW_MAX_DAYS}): review the entry")
        elif reviewed > today:
            out.append(f"reviewed {reviewed} lies in the future")
    for phase in PHASES:
        if meta.get(phase) and not isinstance(meta[phase], (list, tuple)):
            out.append(f"{phase} must be a list of (function, zh-CN, en)")
    out.extend(_step_problems(meta, functions))
    return out


def _step_problems(meta: dict[str, Any], functions: list[str]) -> list[str]:
    out, listed = [], set()
    for phase in PHASES:
        for s in steps(meta, phase):
            name = s["step"]
            listed.add(name)
            if not name.startswith(PREFIX[phase]):
                out.append(f"{phase} step {name!r} must be named {PREFIX[phase]}*")
            if name not in functions:
                out.append(f"{phase} step {name!r} has no function in the module")
            if not s["zh-CN"] or not s["en"]:
                out.append(f"{phase} step {name!r} needs a zh-CN and an en description")
    for fn in functions:
        if fn not in listed:
            out.append(f"step function {fn!r} is not listed in META")
    return out


def step_functions(names: list[str]) -> list[str]:
    """The names that are step functions by the naming convention."""
    return [n for n in names if n.startswith(tuple(PREFIX.values()))]


# ------------------------------------------------------------------------ search

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"[a-z0-9]+")


def _bigrams(run: str) -> set[str]:
    return {run[i:i + 2] for i in range(len(run) - 1)}


def terms(query: str) -> list[str]:
    """Query terms: runs of Chinese characters and lower-case Latin words/numbers."""
    q = query.lower()
    return [m.group(0) for m in _CJK.finditer(q)] + _WORD.findall(_CJK.sub(" ", q))


def searchable(meta: dict[str, Any]) -> str:
    """All text of an entry a search looks at, in both languages."""
    parts = [str(meta.get("id", "")), str(meta.get("owner", ""))]
    for key in ("title", "symptoms"):
        value = meta.get(key)
        for lang in LANGS:
            v = value.get(lang, "") if isinstance(value, dict) else ""
            parts.extend(map(str, v) if isinstance(v, list) else [str(v)])
    for phase in PHASES:
        for s in steps(meta, phase):
            parts.extend([s["step"], s["zh-CN"], s["en"]])
    cls = meta.get("classification")
    parts.extend(str(v) for v in (cls.values() if isinstance(cls, dict) else []))
    return "\n".join(parts).lower()


def score(text: str, query: str) -> float:
    """How well `text` matches `query`: 0 = no match; every term must match.

    A Chinese run scores the share of its bigrams found in the text (at least half
    must be there, so 磁盘满了 still finds 磁盘空间即将用满); a Latin word matches as
    a substring of the text (so "connect" finds "connections").
    """
    found = terms(query)
    if not found:
        return 0.0
    total = 0.0
    cjk_grams = _bigrams_of(text)
    for term in found:
        if _CJK.fullmatch(term):
            if len(term) == 1:
                hit = 1.0 if term in text else 0.0
            elif term in text:
                hit = 2.0
            else:
                grams = _bigrams(term)
                share = len(grams & cjk_grams) / len(grams)
                hit = share if share >= 0.5 else 0.0
        else:
            hit = (1.0 + text.count(term) * 0.01) if term in text else 0.0
        if hit == 0.0:
            return 0.0
        total += hit
    return round(total, 3)


def _bigrams_of(text: str) -> set[str]:
    out: set[str] = set()
    for m in _CJK.finditer(text):
        out |= _bigrams(m.group(0))
    return out


# ------------------------------------------------------------------------ levels

def level(value: float | None, warning: float | None, critical: float | None,
          higher_is_worse: bool = True) -> str:
    """normal / warning / critical for a measured value (unknown when not measured)."""
    if value is None:
        return "unknown"

    def worse(limit: float | None) -> bool:
        if limit is None:
            return False
        return value >= limit if higher_is_worse else value <= limit
    if worse(critical):
        return "critical"
    return "warning" if worse(warning) else "normal"
