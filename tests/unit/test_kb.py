"""The knowledge base: review age, required fields, steps vs functions, search, FAQ export."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mhops import kb, kbmeta, runbook
from mhops.errors import MhopsError

REPO = Path(__file__).resolve().parents[2]
IDS = {"disk-full", "service-down", "db-connections", "queue-backlog", "tls-expiry",
       "payment-callback", "high-load"}


@pytest.fixture
def books(tmp_path) -> Path:
    folder = tmp_path / "runbooks"
    shutil.copytree(REPO / "runbooks", folder)
    return folder


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_shipped_knowledge_base_passes_and_has_every_fault():
    result = kb.check()
    assert {k.split()[0] for k in result.problems} >= IDS
    assert result.exit_code == 0, result.problems


def test_stale_entry_fails(books):
    _edit(books / "disk_full.py", '"reviewed": "2026-11-28"', '"reviewed": "2026-01-01"')
    result = kb.check(books, today=date(2026, 11, 28))
    assert result.exit_code == 2
    problems = result.problems["disk-full (disk_full.py)"]
    assert any("331 days ago" in p and "183" in p for p in problems)
    assert not result.problems["tls-expiry (tls_expiry.py)"]


def test_review_boundary_is_183_days():
    meta = _meta(reviewed=str(date(2026, 11, 28) - timedelta(days=183)))
    assert kbmeta.problems(meta, _fns(), stem="x_y", today=date(2026, 11, 28)) == []
    meta["reviewed"] = str(date(2026, 11, 28) - timedelta(days=184))
    assert kbmeta.problems(meta, _fns(), stem="x_y", today=date(2026, 11, 28))


def test_missing_field_and_step_mismatch_fail(books):
    _edit(books / "high_load.py", '    "owner": "运维组 / ops team",\n', "")
    with (books / "service_down.py").open("a") as fh:
        fh.write("\n\ndef remediate_kill_everything(c, rb):\n    pass\n")
    _edit(books / "tls_expiry.py", '("diagnose_expiry",', '("diagnose_expiry_dates",')
    result = kb.check(books, today=date(2026, 11, 28))
    assert "missing field 'owner'" in result.problems["high-load (high_load.py)"]
    assert any("remediate_kill_everything" in p and "not listed" in p
               for p in result.problems["service-down (service_down.py)"])
    tls = result.problems["tls-expiry (tls_expiry.py)"]
    assert any("diagnose_expiry_dates" in p and "no function" in p for p in tls)
    assert any("'diagnose_expiry' is not listed" in p for p in tls)


def test_bad_classification_and_date_are_named(books):
    _edit(books / "disk_full.py", '"severity": "operations"', '"severity": "urgent"')
    _edit(books / "service_down.py", '"reviewed": "2026-11-28"', '"reviewed": "28/11/2026"')
    result = kb.check(books, today=date(2026, 11, 28))
    assert any("severity 'urgent'" in p and "patient-safety" in p
               for p in result.problems["disk-full (disk_full.py)"])
    assert any("not a date" in p for p in result.problems["service-down (service_down.py)"])


def test_broken_module_is_reported_not_hidden(books):
    (books / "broken_one.py").write_text("import nonexistent_module_xyz\n")
    result = kb.check(books, today=date(2026, 11, 28))
    assert any("does not load" in p for k, ps in result.problems.items() for p in ps
               if "broken" in k)


def test_kb_check_task_exit_code(books):
    _edit(books / "disk_full.py", '"reviewed": "2026-11-28"', '"reviewed": "2025-01-01"')
    res = subprocess.run([str(Path(sys.executable).parent / "invoke"), "kb.check",
                          "--dir", str(books)], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "FAIL disk-full" in res.stdout and "kb.check" in res.stderr


def test_unknown_id_lists_valid_ids():
    with pytest.raises(MhopsError) as err:
        kb.show("disk")
    assert all(i in str(err.value) for i in IDS)
    with pytest.raises(MhopsError, match="valid: db-connections, disk-full"):
        runbook.get("no-such-runbook")


@pytest.mark.parametrize("query,expected", [
    ("磁盘满了", "disk-full"), ("磁盘", "disk-full"), ("连接数", "db-connections"),
    ("空闲事务", "db-connections"), ("消息积压", "queue-backlog"), ("证书过期", "tls-expiry"),
    ("支付回调", "payment-callback"), ("验签", "payment-callback"), ("负载高", "high-load"),
    ("服务挂了", "service-down"), ("disk full", "disk-full"), ("idle transaction",
                                                            "db-connections"),
    ("RabbitMQ", "queue-backlog"), ("certificate", "tls-expiry"), ("Callback", "payment-callback"),
])
def test_search_finds_entry_in_both_languages(query, expected):
    hits = [b.id for _, b in kb.search(query)]
    assert hits and hits[0] == expected, hits


def test_search_without_match_and_without_words():
    assert kb.search("打印机卡纸") == []
    with pytest.raises(MhopsError):
        kb.search("  ，。 ")


@given(st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5),
               min_size=1, max_size=12),
       st.text(max_size=30), st.text(max_size=30))
def test_chinese_substring_always_found(word, before, after):
    assert kbmeta.score(f"{before}{word}{after}".lower(), word) > 0


@given(st.text(max_size=40))
def test_search_terms_never_crash(query):
    kbmeta.terms(query)
    kbmeta.score("磁盘空间即将用满 disk nearly full", query)


def test_faq_export_both_languages(tmp_path):
    zh = kb.export(kb.ExportOptions(records_dir=tmp_path))
    md = (zh.record_dir / "record.md").read_text()
    assert md.startswith("# 常见问题文档")
    assert "invoke runbook disk-full --host <host>" in md
    assert all(f'id="{i}"' in (zh.record_dir / "record.html").read_text() for i in IDS)
    en = kb.export(kb.ExportOptions(records_dir=tmp_path, lang="en"))
    assert "# FAQ (fault knowledge base)" in (en.record_dir / "record.md").read_text()
    assert en.record["headline"] and en.record["kind"] == "kb_faq"


def test_disk_resolution_names_the_runbook_for_the_host():
    from mhops import thresholds as th

    res = th.classify("disk_percent", 95, th.DEFAULT_THRESHOLDS, target="/", lang="en")
    assert th.for_host(res.resolution, "his-db1").count("invoke runbook disk-full --host his-db1")
    zh = th.classify("disk_percent", 95, th.DEFAULT_THRESHOLDS, target="/")
    assert "invoke runbook disk-full --host his-db1" in th.for_host(zh.resolution, "his-db1")


def _fns() -> list[str]:
    return ["diagnose_a", "remediate_b", "verify_c"]


def _meta(**kw):
    meta = {"id": "x-y", "title": {"zh-CN": "甲", "en": "A"},
            "symptoms": {"zh-CN": ["乙"], "en": ["B"]},
            "classification": {"scope": "person", "type": "server", "severity": "experience"},
            "diagnosis": [("diagnose_a", "诊断", "diagnose")],
            "remediation": [("remediate_b", "处置", "fix")],
            "verification": [("verify_c", "验证", "verify")],
            "owner": "ops", "reviewed": "2026-11-28"}
    meta.update(kw)
    return meta


def test_cli_unknown_runbook_and_kb_id_exit_3():
    invoke = str(Path(sys.executable).parent / "invoke")
    for args in (["runbook", "disk-ful", "--host", "localhost"], ["kb.show", "nope"]):
        res = subprocess.run([invoke, *args], cwd=REPO, capture_output=True, text=True)
        assert res.returncode == 3, res.stderr
        assert "valid: db-connections, disk-full, high-load" in res.stderr


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=12)


@given(st.dictionaries(st.sampled_from([*kbmeta.REQUIRED, "settings", "other"]), _json,
                       max_size=10),
       st.lists(st.sampled_from(["diagnose_a", "remediate_b", "verify_c", "diagnose_z"]),
                max_size=4))
def test_metadata_check_never_crashes_and_always_explains(meta, functions):
    out = kbmeta.problems(meta, functions, stem="x_y", today=date(2026, 11, 28))
    kbmeta.score(kbmeta.searchable(meta), "磁盘 disk")
    assert all(isinstance(p, str) and p for p in out)
    if any(meta.get(k) in (None, "", [], {}) for k in kbmeta.REQUIRED):
        assert any(p.startswith("missing field") for p in out)
