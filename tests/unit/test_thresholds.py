"""Thresholds: validation of bad input, merging, classification, exit codes."""

import pytest

from mhops import thresholds as th


@pytest.mark.parametrize("raw, message", [
    ({"cpu_procent": {"warning": 1}}, "unknown threshold key 'cpu_procent'"),
    ({"cpu_percent": {"warning": "80"}}, "must be a number, got str"),
    ({"cpu_percent": {"warning": True}}, "must be a number, got bool"),
    ({"cpu_percent": {"critical": -1}}, "must not be negative"),
    ({"cpu_percent": {"warn": 1}}, "unknown level 'warn'"),
    ({"cpu_percent": 80}, "must be a mapping with warning"),
    ([1, 2], "must be a mapping of check"),
])
def test_validate_rejects_bad_input(raw, message):
    with pytest.raises(th.ThresholdError, match=message):
        th.validate(raw, "mhops_inspect_thresholds")


def test_validate_accepts_and_converts_numbers():
    assert th.validate({"disk_percent": {"warning": 80, "critical": 90.5}}) == {
        "disk_percent": {"warning": 80.0, "critical": 90.5}}


def test_merge_later_layers_win_per_level():
    merged = th.merge(th.DEFAULT_THRESHOLDS, {"disk_percent": {"critical": 99}})
    assert merged["disk_percent"] == {"warning": 80, "critical": 99}
    assert merged["cpu_percent"] == th.DEFAULT_THRESHOLDS["cpu_percent"]


@pytest.mark.parametrize("layer", [
    {"disk_percent": {"warning": 90, "critical": 80}},
    {"tls_days_left": {"warning": 7, "critical": 30}},
])
def test_merge_rejects_levels_in_the_wrong_order(layer):
    with pytest.raises(th.ThresholdError):
        th.merge(th.DEFAULT_THRESHOLDS, layer)


T = {"disk_percent": {"warning": 80, "critical": 90}, "tls_days_left": {"warning": 30,
                                                                        "critical": 7}}


@pytest.mark.parametrize("key, value, status", [
    ("disk_percent", 10, th.NORMAL),
    ("disk_percent", 79.9, th.NORMAL),
    ("disk_percent", 80, th.WARNING),
    ("disk_percent", 90, th.CRITICAL),
    ("disk_percent", None, th.UNKNOWN),
    ("tls_days_left", 90, th.NORMAL),
    ("tls_days_left", 30, th.WARNING),
    ("tls_days_left", 3, th.CRITICAL),
    ("tls_days_left", -2, th.CRITICAL),
])
def test_classify(key, value, status):
    res = th.classify(key, value, T, lang="en")
    assert res.status == status
    assert res.explanation
    assert bool(res.resolution) == (status in (th.WARNING, th.CRITICAL))


def test_classify_explains_in_chinese_by_default():
    res = th.classify("disk_percent", 95, T, target="/")
    assert "严重阈值" in res.explanation and "90%" in res.explanation
    assert "invoke runbook disk-full" in res.resolution


@pytest.mark.parametrize("statuses, unreachable, code", [
    (["normal", "normal"], 0, 0),
    (["normal", "unknown"], 0, 0),
    (["normal", "warning"], 0, 1),
    (["warning", "critical"], 0, 2),
    (["normal"], 1, 2),
    ([], 0, 0),
])
def test_exit_code(statuses, unreachable, code):
    assert th.exit_code(statuses, unreachable) == code


@pytest.mark.parametrize("statuses, worst", [
    (["normal", "unknown"], "normal"),
    (["unknown"], "unknown"),
    (["warning", "unknown", "normal"], "warning"),
    (["warning", "critical"], "critical"),
    ([], "normal"),
])
def test_worst(statuses, worst):
    assert th.worst(statuses) == worst
