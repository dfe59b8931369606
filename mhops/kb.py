"""The fault knowledge base built from the runbooks: ``invoke kb.list|show|search|check|export``.

Owns presenting the runbooks' metadata as knowledge-base entries (list, one entry,
search in zh-CN and en), the review check (stale entries, missing fields, metadata
that disagrees with the step functions, modules that do not load) and the FAQ export
(常见问题文档, Markdown + HTML through the shared record writer, zh-CN by default).
The rules themselves live in the ``kbmeta`` leaf; modules are loaded by ``runbook``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from mhops import kbmeta, records
from mhops import thresholds as th
from mhops.errors import MhopsError
from mhops.redact import Redactor
from mhops.runbook import Runbook, get, load_all

SCHEMA_VERSION = 1


def _usable(folder: Path | None) -> list[Runbook]:
    return [b for b in load_all(folder).values() if not b.error]


def _dict(value: Any) -> dict:
    """A metadata field that should be a mapping; kb.check reports it when it is not."""
    return value if isinstance(value, dict) else {}


def list_lines(folder: Path | None = None, lang: str = "zh-CN") -> list[str]:
    """One line per entry: id, title, classification, reviewed date."""
    out = []
    for b in _usable(folder):
        cls = _dict(b.meta.get("classification"))
        out.append(f"{b.id:<18} {b.title(lang)}  [{cls.get('scope')}/{cls.get('type')}/"
                   f"{cls.get('severity')}]  reviewed {b.meta.get('reviewed')}")
    return out


def entry(b: Runbook, lang: str) -> dict[str, Any]:
    """An entry as the FAQ and `kb.show` present it, in one language."""
    m = b.meta
    return {"id": b.id, "title": b.title(lang),
            "symptoms": list(_dict(m.get("symptoms")).get(lang) or []),
            "classification": _dict(m.get("classification")),
            **{phase: [s[lang] for s in kbmeta.steps(m, phase)] for phase in kbmeta.PHASES},
            "owner": m.get("owner"), "reviewed": str(m.get("reviewed")),
            "command": f"invoke runbook {b.id} --host <host>",
            "settings": sorted(_dict(m.get("settings")))}


def show(runbook_id: str, folder: Path | None = None, lang: str = "zh-CN") -> str:
    records.labels(lang)
    e = entry(get(runbook_id, folder), lang)
    words = records.labels(lang)["kb_faq"]
    lines = [f"{e['id']}: {e['title']}",
             f"{words['classification']}: {e['classification'].get('scope')} / "
             f"{e['classification'].get('type')} / {e['classification'].get('severity')}",
             f"{words['owner']}: {e['owner']} · {words['reviewed']}: {e['reviewed']}",
             f"{words['symptoms']}:", *[f"  - {s}" for s in e["symptoms"]]]
    for phase in kbmeta.PHASES:
        lines.append(f"{words[phase]}:")
        lines.extend(f"  {i}. {s}" for i, s in enumerate(e[phase], 1))
    lines.append(f"{words['command']}: {e['command']}")
    lines.append(f"settings: {', '.join(e['settings'])}")
    return "\n".join(lines)


def search(words: str, folder: Path | None = None) -> list[tuple[float, Runbook]]:
    """Entries matching every word of the query (Chinese by bigrams), best first."""
    if not kbmeta.terms(words):
        raise MhopsError("kb.search needs at least one word (Chinese or English)")
    hits = [(kbmeta.score(kbmeta.searchable(b.meta), words), b) for b in _usable(folder)]
    return sorted([(s, b) for s, b in hits if s > 0], key=lambda x: (-x[0], x[1].id))


@dataclass
class CheckResult:
    problems: dict[str, list[str]]
    checked: int

    @property
    def exit_code(self) -> int:
        return th.EXIT_CRITICAL if any(self.problems.values()) else th.EXIT_OK


def check(folder: Path | None = None, today: date | None = None) -> CheckResult:
    """Every entry against the rules: review age, fields, steps vs functions, loading."""
    today = today or date.today()
    books = load_all(folder)
    out: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for rid, b in books.items():
        key = f"{rid} ({b.path.name})"
        if b.error:
            out[key] = [f"does not load: {b.error}"]
            continue
        out[key] = kbmeta.problems(b.meta, b.functions, stem=b.stem, today=today)
        if rid in seen:
            out[key].append(f"id also used by {seen[rid]}")
        seen[rid] = b.path.name
    if not books:
        out["(folder)"] = ["no runbooks found"]
    return CheckResult(out, len(books))


@dataclass
class ExportOptions:
    records_dir: Path
    runbooks_dir: Path | None = None
    lang: str = "zh-CN"
    operator: str = ""
    timezone: str = "Asia/Shanghai"


def export(opts: ExportOptions) -> records.Outcome:
    """Write the FAQ document (常见问题文档) as a record folder: JSON, Markdown, HTML."""
    started = records.utc_now()
    entries = [entry(b, opts.lang) for b in _usable(opts.runbooks_dir)]
    record = _faq_record(opts, entries, started, records.utc_now())
    run_dir = records.write_run(opts.records_dir, "kb_faq", record)
    return records.Outcome(th.EXIT_OK, run_dir, record)


def write_faq(out_dir: Path, lang: str = "zh-CN", runbooks_dir: Path | None = None) -> None:
    """The FAQ as ``faq.md`` / ``faq.html`` in *out_dir*, for the quarterly bundle.

    Dated by the newest review rather than the clock, so the same knowledge base gives
    the same bytes and the bundle stays reproducible.
    """
    from datetime import UTC, datetime

    opts = ExportOptions(records_dir=Path(out_dir), runbooks_dir=runbooks_dir, lang=lang)
    entries = [entry(b, lang) for b in _usable(runbooks_dir)]
    newest = max((e["reviewed"] for e in entries), default="1970-01-01")
    try:
        as_of = datetime.fromisoformat(newest).replace(tzinfo=UTC)
    except ValueError:
        as_of = datetime(1970, 1, 1, tzinfo=UTC)
    record = Redactor().obj(_faq_record(opts, entries, as_of, as_of))
    for fmt in ("md", "html"):
        (Path(out_dir) / f"faq.{fmt}").write_text(records.render("kb_faq", record, fmt),
                                                  encoding="utf-8")


def _faq_record(opts: ExportOptions, entries: list[dict[str, Any]], started, finished):
    words = records.labels(opts.lang)["kb_faq"]
    return {
        "schema_version": SCHEMA_VERSION, "kind": "kb_faq",
        "run_id": records.run_id("kb_faq", started), "lang": opts.lang,
        "status": th.NORMAL, "exit_code": th.EXIT_OK,
        "time": records.time_block(started, finished, opts.timezone),
        "operator": records.operator_name(opts.operator),
        "headline": f"{words['title']}: {len(entries)} {words['entries']}",
        "entries": entries,
        "ops_revision": records.ops_revision(),
    }
