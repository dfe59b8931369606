"""The pure side of notifications: events, message content, wire formats, settings."""

from __future__ import annotations

import base64
import hashlib
import hmac
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mhops import notify_payload as P
from mhops import records
from mhops.redact import Redactor
from tests.sample_records import VAULT_SECRET, drill_record, inspection_record, leaks


def _msg(event="inspection", severity="critical", lang="zh-CN", record=None, **kw):
    rec = Redactor([VAULT_SECRET]).obj(record or inspection_record(lang))
    return P.build_message(event, severity, rec, records.labels(lang), **kw)


def test_events_raised_by_records():
    assert P.event_for(inspection_record()) == ("inspection", "critical")
    warn = inspection_record()
    warn["status"] = "warning"
    assert P.event_for(warn) == ("inspection", "warning")
    ok = inspection_record()
    ok["status"] = "normal"
    assert P.event_for(ok) is None
    assert P.event_for(drill_record("failed")) == ("drill", "critical")
    assert P.event_for(drill_record("passed")) is None
    assert P.event_for(drill_record("warning")) is None
    assert P.event_for({"kind": "backup_run", "status": "critical"}) is None
    assert P.event_for({"kind": "upgrade", "status": "critical", "rolled_back": True}) == (
        "rollback", "critical")
    assert P.event_for({"kind": "upgrade", "outcome": "rolled_back"}) == ("rollback", "critical")


@pytest.mark.parametrize("lang", ["zh-CN", "en"])
def test_message_lists_abnormal_checks_worst_first_and_no_samples(lang):
    m = _msg(lang=lang)
    md, text = m.markdown(), m.text()
    title = "【严重】巡检异常" if lang == "zh-CN" else "【Critical】Abnormal inspection"
    assert md.startswith(f"### {title}\n") and text.startswith(title + "\n")
    assert "20261128T040000Z-inspection" in text
    assert m.items[0].startswith("web01 · ") and "97" in m.items[0]
    assert any(i.startswith("web02 · ") for i in m.items)
    assert not any("cpu" in i.lower() for i in m.items)       # normal checks stay out
    assert "ERROR patient" not in text                         # log samples never go out
    assert leaks(md) == [] and leaks(text) == []


def test_message_is_capped_and_links_the_record():
    m = _msg(max_items=2, link="https://ops.example/records/x/record.html", lang="en")
    assert len(m.items) == 3 and m.items[-1] == "… and 3 more"
    assert m.markdown().endswith("[Open the record](https://ops.example/records/x/record.html)")


def test_drill_message_names_database_and_reason():
    m = _msg("drill", "critical", "en", record=drill_record("failed"))
    text = m.text()
    assert "Database: his" in text and "Reason: row counts differ" in text
    assert any("verify" in i for i in m.items)
    assert leaks(text) == []


def test_wecom_bodies_exact():
    m = P.Message("inspection", "warning", "T", ["a: 1"], ["x"])
    assert P.wecom_body(m, {"type": "wecom"}) == {
        "msgtype": "markdown", "markdown": {"content": "### T\n\n> a: 1\n\n- x"}}
    assert P.wecom_body(m, {"format": "text", "mentioned_mobile_list": ["@all"]}) == {
        "msgtype": "text", "text": {"content": "T\na: 1\n- x",
                                    "mentioned_mobile_list": ["@all"]}}


def test_dingtalk_bodies_exact():
    m = P.Message("inspection", "warning", "T", ["a: 1"], ["x"])
    assert P.dingtalk_body(m, {"at_mobiles": ["13900000000"]}) == {
        "msgtype": "markdown", "markdown": {"title": "T", "text": "### T\n\n> a: 1\n\n- x"},
        "at": {"atMobiles": ["13900000000"], "isAtAll": False}}
    assert P.dingtalk_body(m, {"format": "text", "at_all": True}) == {
        "msgtype": "text", "text": {"content": "T\na: 1\n- x"},
        "at": {"atMobiles": [], "isAtAll": True}}


def test_dingtalk_signature_matches_the_documented_algorithm():
    secret, ts = "SEC0123456789abcdef", 1764302400000
    digest = hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()
    sign = P.dingtalk_sign(secret, ts)
    assert urllib.parse.unquote_plus(sign) == base64.b64encode(digest).decode()
    assert not set("+/=") & set(sign)
    url = P.dingtalk_url("https://oapi.dingtalk.com/robot/send?access_token=T", secret, ts)
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert q["timestamp"] == [str(ts)] and q["access_token"] == ["T"]
    assert q["sign"] == [base64.b64encode(digest).decode()]
    assert P.dingtalk_url("http://h/robot", None, ts) == "http://h/robot"


@given(st.text(max_size=3000), st.integers(min_value=8, max_value=4096))
def test_fit_never_exceeds_the_byte_limit_or_splits_a_character(text, limit):
    out = P.fit(text, limit)
    assert len(out.encode("utf-8")) <= limit
    assert out == text or out.endswith("…")


def test_wecom_markdown_is_cut_to_4096_bytes():
    m = P.Message("inspection", "warning", "T", [], ["磁盘" * 50] * 100)
    body = P.wecom_body(m, {})
    assert len(body["markdown"]["content"].encode()) <= 4096


def test_backoff_doubles_and_is_capped():
    assert [P.backoff(n, 0.5, 3) for n in range(1, 6)] == [0.5, 1, 2, 3, 3]


def test_replies_and_status_codes():
    assert P.robot_reply_ok("wecom", {"errcode": 0, "errmsg": "ok"})[:2] == (True, False)
    assert P.robot_reply_ok("wecom", {"errcode": 45009, "errmsg": "freq"})[:2] == (False, True)
    assert P.robot_reply_ok("dingtalk", {"errcode": 310000, "errmsg": "sign"})[:2] == (
        False, False)
    assert P.robot_reply_ok("dingtalk", "<html>")[:2] == (False, False)
    assert P.http_retriable(503) and P.http_retriable(429) and not P.http_retriable(404)


CH = {"wecom": {"type": "wecom", "webhook": "https://x/send?key=K"},
      "dingtalk": {"type": "dingtalk", "webhook": "https://x/robot/send?access_token=A",
                   "secret": "SECxyz"},
      "email": {"type": "email", "host": "smtp", "from": "a@b", "to": ["c@d"]}}


def test_valid_channels_get_names_and_secrets_are_collected():
    out = P.validate_channels(list(CH.values()), "v")
    assert [c["name"] for c in out] == ["wecom-1", "dingtalk-2", "email-3"]
    assert {"K", "A", "SECxyz", CH["wecom"]["webhook"]} <= set(P.secrets_of(out))


@pytest.mark.parametrize("bad, message", [
    ({"type": "slack"}, "type must be one of"),
    ({**CH["wecom"], "webhok": "x"}, "unknown setting 'webhok'"),
    ({"type": "wecom"}, "webhook is required"),
    ({**CH["email"], "port": "25"}, "port: must be int"),
    ({**CH["email"], "to": ["nobody"]}, "e-mail addresses"),
    ({**CH["wecom"], "events": ["backup"]}, "unknown ['backup']"),
    ({**CH["wecom"], "min_severity": "info"}, "min_severity"),
    ({**CH["wecom"], "format": "card"}, "format"),
])
def test_bad_channels_are_refused_with_where(bad, message):
    with pytest.raises(ValueError, match=r"mhops_notify_channels\[0\]") as err:
        P.validate_channels([bad], "mhops_notify_channels")
    assert message in str(err.value)


def test_channel_filters():
    all_events = list(P.EVENTS)
    ch = {"min_severity": "critical", "events": ["drill"]}
    assert P.wants(ch, "drill", "critical", all_events, "warning")
    assert not P.wants(ch, "drill", "warning", all_events, "warning")
    assert not P.wants(ch, "inspection", "critical", all_events, "warning")
    assert P.wants({}, "sla", "warning", all_events, "warning")
    assert not P.wants({}, "sla", "warning", ["inspection"], "warning")
    assert P.wants(ch, "test", "warning", all_events, "warning")


def test_endpoint_drops_the_key():
    assert P.endpoint("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=SECRET") == (
        "https://qyapi.weixin.qq.com/cgi-bin/webhook/send")


def test_email_message():
    m = P.email_message(P.Message("drill", "critical", "【严重】灾备演练失败", ["x"]),
                        {**CH["email"], "to": ["a@b", "c@d"]})
    assert m["Subject"] == "[mhops] 【严重】灾备演练失败" and m["To"] == "a@b, c@d"
    assert m.get_content().startswith("【严重】灾备演练失败\nx")
