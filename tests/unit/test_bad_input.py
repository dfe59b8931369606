"""Bad input names its file (and line where YAML gives one) and stops the run (exit 3)."""

import textwrap

import pytest

from mhops.errors import MhopsError
from mhops.inspect_config import collector_args
from mhops.inventory import select


def _inventory(tmp_path, group_vars: str, hosts: str | None = None):
    (tmp_path / "group_vars").mkdir(exist_ok=True)
    (tmp_path / "hosts.yml").write_text(hosts or textwrap.dedent("""\
        all:
          children:
            web:
              hosts:
                web01: {ansible_connection: local}
        """))
    (tmp_path / "group_vars" / "web.yml").write_text(textwrap.dedent(group_vars))
    return str(tmp_path)


def _args(inv):
    return collector_args(select([inv]).hosts[0])


def test_good_settings_pass(tmp_path):
    inv = _inventory(tmp_path, """\
        mhops_inspect_ports: [80]
        mhops_inspect_thresholds:
          disk_percent: {warning: 70, critical: 80}
        """)
    args, thr = _args(inv)
    assert args["ports"] == [80]
    assert thr["disk_percent"] == {"warning": 70, "critical": 80}
    assert thr["cpu_percent"]  # built-in defaults fill the rest


@pytest.mark.parametrize("group_vars, message, line", [
    ("""\
     mhops_inspect_thresholds:
       cpu_percent: {warning: 80}
       disk_pct: {warning: 1}
     """, "unknown threshold key 'disk_pct'", 3),
    ("""\
     mhops_inspect_thresholds:
       disk_percent:
         warning: -5
     """, "must not be negative", 3),
    ("""\
     mhops_inspect_thresholds:
       disk_percent: {warning: eighty}
     """, "must be a number, got str", 2),
    ("""\
     mhops_inspect_ports: "80"
     """, "must be list", 1),
    ("""\
     mhops_inspect_ports: [80, 70000]
     """, "must be a TCP port", 1),
    ("""\
     mhops_inspect_logz: []
     """, "unknown setting", 1),
    ("""\
     mhops_inspect_logs:
       - path: /var/log/app.log
         patterns: {error: "ERROR(("}
     """, "invalid regular expression", 3),
    ("""\
     mhops_inspect_logs:
       - path: relative.log
         patterns: {error: x}
     """, "must be an absolute path", 2),
])
def test_bad_settings_name_file_and_line(tmp_path, group_vars, message, line):
    inv = _inventory(tmp_path, group_vars)
    with pytest.raises(MhopsError, match=message) as err:
        _args(inv)
    assert err.value.path == str(tmp_path / "group_vars" / "web.yml")
    assert err.value.line == line
    assert err.value.exit_code == 3


def test_per_host_override_in_wrong_order_is_refused(tmp_path):
    inv = _inventory(tmp_path, """\
        mhops_inspect_threshold_overrides:
          disk_percent: {warning: 95}
        mhops_inspect_thresholds:
          disk_percent: {warning: 70, critical: 80}
        """)
    with pytest.raises(MhopsError, match="critical .* is below warning"):
        _args(inv)


def test_malformed_group_vars_yaml(tmp_path):
    inv = _inventory(tmp_path, """\
        mhops_inspect_thresholds:
          cpu_percent: {warning: 80
          x: [
        """)
    with pytest.raises(MhopsError, match="YAML") as err:
        select([inv])
    assert err.value.path == str(tmp_path / "group_vars" / "web.yml")
    assert err.value.line == 3


def test_malformed_inventory_yaml(tmp_path):
    inv = _inventory(tmp_path, "a: 1\n", hosts="all:\n  hosts:\n    a: {x: 1\n  b: [\n")
    with pytest.raises(MhopsError, match="failed to parse") as err:
        select([inv])
    assert err.value.path == str(tmp_path / "hosts.yml")
    assert err.value.line == 4


def test_limit_matching_nothing_is_an_error(tmp_path):
    inv = _inventory(tmp_path, "a: 1\n")
    with pytest.raises(MhopsError, match="--limit 'nosuch' matches no host"):
        select([inv], limit="nosuch")
    assert [h.name for h in select([inv], limit="web").hosts] == ["web01"]


def test_empty_inventory_is_an_error(tmp_path):
    (tmp_path / "hosts.yml").write_text("all:\n  children:\n    web: {}\n")
    with pytest.raises(MhopsError, match="no hosts"):
        select([str(tmp_path)])


def test_missing_inventory_is_an_error(tmp_path):
    with pytest.raises(MhopsError, match="does not exist"):
        select([str(tmp_path / "nope.yml")])


def test_sample_hospital_inventory_is_valid():
    from pathlib import Path
    inv = Path(__file__).resolve().parents[2] / "inventory" / "hospital.example"
    sel = select([str(inv)])
    groups = sel.groups
    for g in ("gateway", "wechat", "alipay", "baidu", "elder_frontend", "record_copy",
              "message_center", "pc_portal", "mysql", "postgresql", "redis", "mq", "api",
              "databases"):
        assert g in groups, g
    for h in sel.hosts:
        collector_args(h)  # every group's settings pass validation
    pg = next(h for h in sel.hosts if h.name == "db-pg01")
    assert collector_args(pg)[1]["disk_percent"] == {"warning": 85, "critical": 92}
    from mhops import backup, release_hosts

    assert [d["name"] for d in backup.database_entries(pg)] == ["his_mp_pg"]
    api = [h.name for h in sel.hosts if release_hosts.settings(h, "mp-api")]
    assert api == ["wx-api01", "ali-api01", "bd-api01"]
    assert [h.name for h, _ in backup.locate([str(inv)], ["his_mp_pg"])] == ["db-pg01"]
