"""Parsers of package-manager output on recorded samples, plus property tests."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from mhops import pkgupdates as p

DATA = Path(__file__).resolve().parents[1] / "data"


def test_bookworm_sample_flags_security_origins():
    ups = p.parse_apt_simulation((DATA / "apt_sim_bookworm.txt").read_text())
    by = {u.name: u for u in ups}
    s = p.summarize(ups)
    assert s["upgrade"] == 125  # the sample's own "125 upgraded" line
    assert by["bash"].current == "5.2.15-2+b8" and by["bash"].candidate == "5.2.15-2+b13"
    assert not by["bash"].security
    assert by["libgcrypt20-dev"].security  # trailing "[]" of broken deps is ignored
    assert by["liblzma5"].origins == ("Debian-Security:12/oldstable-security",)
    assert by["libcap2"].candidate.startswith("1:")  # epochs kept
    assert all(u.action in ("upgrade", "configure") for u in ups)


def test_jammy_sample_new_install_removal_and_conf_repeats():
    ups = p.parse_apt_simulation((DATA / "apt_sim_jammy.txt").read_text())
    by = {u.name: u for u in ups}
    assert [u.name for u in ups] == ["libssl3", "openssl", "linux-image-5.15.0-91-generic",
                                     "tzdata", "oldpkg"]
    assert by["linux-image-5.15.0-91-generic"].action == "install"
    assert by["linux-image-5.15.0-91-generic"].current is None
    assert by["oldpkg"].action == "remove" and by["oldpkg"].current == "1.2-3"
    assert by["openssl"].security and not by["tzdata"].security
    assert p.summarize(ups) == {"total": 4, "security": 2, "upgrade": 3, "install": 1,
                                "remove": 1, "configure": 0}
    assert [u.name for u in p.select(ups, security_only=True)] == ["libssl3", "openssl"]


def test_dnf_security_and_check_update():
    sec = p.parse_dnf_security((DATA / "dnf_security.txt").read_text())
    assert sec["openssl"] == [("RHSA-2026:1234", "Important")]
    assert sec["curl"] == [("RHSA-2026:2001", "Moderate")]
    ups = p.parse_dnf_check_update((DATA / "dnf_check_update.txt").read_text(), sec)
    by = {u.name: u for u in ups}
    assert by["openssl-libs"].security and by["openssl-libs"].advisories == ("RHSA-2026:1234",)
    assert not by["vim-minimal"].security and by["vim-minimal"].candidate == "2:8.2.2637-20.el9_1"


def test_dpkg_query_and_audit():
    text = "bash\t5.2.15-2+b8\tii \nfoo:amd64\t1.0\tii \ngone\t2.0\trc \n"
    assert p.parse_dpkg_query(text) == {"bash": "5.2.15-2+b8", "foo": "1.0"}
    audit = ("The following packages are only half configured:\n mhs-dummy  test\n\n"
             "The following packages are missing files:\n other\n")
    assert len(p.audit_problems(audit)) == 2
    assert p.audit_problems("") == [] and p.audit_problems("\n  \n") == []


_name = st.from_regex(r"[a-z0-9][a-z0-9+.-]{0,30}", fullmatch=True)
_version = st.from_regex(r"([0-9]:)?[0-9][A-Za-z0-9.+~-]{0,20}", fullmatch=True)
_origin = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,12}:[0-9.]{1,5}/[a-z-]{1,20}", fullmatch=True)


@given(st.lists(st.tuples(_name, st.one_of(st.none(), _version), _version,
                          st.lists(_origin, min_size=1, max_size=3),
                          st.sampled_from(["amd64", "all", "arm64"])),
                max_size=20, unique_by=lambda t: t[0]))
def test_apt_lines_round_trip(rows):
    lines = ["Reading package lists...", "Calculating upgrade..."]
    for name, cur, cand, origins, arch in rows:
        current = f" [{cur}]" if cur else ""
        lines.append(f"Inst {name}{current} ({cand} {', '.join(origins)} [{arch}])")
        lines.append(f"Conf {name} ({cand} {', '.join(origins)} [{arch}])")
    ups = p.parse_apt_simulation("\n".join(lines))
    assert [u.name for u in ups] == [r[0] for r in rows]
    for u, (_, cur, cand, origins, arch) in zip(ups, rows, strict=True):
        assert (u.current, u.candidate, u.arch, u.origins) == (cur, cand, arch, tuple(origins))
        assert u.security == any("security" in o.lower() for o in origins)
        assert u.action == ("upgrade" if cur else "install")


@given(st.text(max_size=400))
def test_parsers_never_raise_on_noise(text):
    p.parse_apt_simulation(text)
    p.parse_dnf_security(text)
    p.parse_dnf_check_update(text)
    p.parse_dpkg_query(text)
    p.audit_problems(text)
    s = p.summarize(p.parse_apt_simulation(text))
    assert s["security"] <= s["total"]
