"""Redaction of patient identifiers and secrets before anything is recorded.

This module owns one promise: whatever mhops writes or shows (log sample
lines, command output, JSON events) has been passed through :func:`redact`,
:func:`redact_obj` or a :class:`Redactor` that also knows the deployment's
literal secrets, and so carries no patient identifier and no credential.

It is a leaf: standard library only, nothing else from the project, so every
other module can depend on it without cycles.

What is replaced, and by which marker (ASCII so zh-CN and en records read the
same):

``[REDACTED:id]``
    Chinese resident ID numbers: 18 characters (17 digits plus a digit or X,
    check digit deliberately not validated) and the old 15-digit form,
    optionally split by single spaces/hyphens at the natural group borders
    (area code | birth date as 4+2+2 or 2+2+2 | sequence | check character).
``[REDACTED:mobile]``
    Mainland mobile numbers ``1[3-9]`` + 9 digits, with ``+86``/``0086``/``86``
    prefixes and 3-4-4 grouping.
``[REDACTED:secret]``
    URL passwords, ``key=value`` / ``key: value`` / JSON / XML / ``--flag value``
    forms of password, token, secret, API-key style keys, ``mysql -pX`` and
    ``sshpass -p X``, HTTP Authorization and Cookie values, bare Bearer tokens,
    JWTs, ansible-vault payloads and the literal secrets given to a Redactor.
``[REDACTED:key]``
    PEM private-key blocks (to the end of the text when END is missing).
``[REDACTED:name]``
    Values of labelled patient-name fields (姓名, 就诊人, patient_name, ...).

Numbers are matched on a normalised copy of the text (every Unicode decimal
digit becomes ASCII, full-width and other compatibility forms are folded with
NFKC, dash and space variants become ``-`` and `` ``). The fold is one
character for one character, so match positions are valid in the original
and only the redacted spans change: text with nothing sensitive comes back
unchanged, byte for byte, whatever its script.

Digit runs are delimited with digit look-arounds, never ``\\b``: identifiers
sit next to letters, quotes and underscores in URLs and JSON, while a
13-digit millisecond timestamp or a 20-digit order number must survive whole.

Redaction is idempotent: no rule rewrites an existing marker and no marker
contains a digit, so a second pass finds nothing new.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

__all__ = [
    "MARKER_ID",
    "MARKER_KEY",
    "MARKER_MOBILE",
    "MARKER_NAME",
    "MARKER_SECRET",
    "MARKERS",
    "MIN_SECRET_LEN",
    "Redactor",
    "normalize",
    "redact",
    "redact_obj",
]

MARKER_ID = "[REDACTED:id]"
MARKER_MOBILE = "[REDACTED:mobile]"
MARKER_SECRET = "[REDACTED:secret]"
MARKER_KEY = "[REDACTED:key]"
MARKER_NAME = "[REDACTED:name]"
MARKERS = (MARKER_ID, MARKER_MOBILE, MARKER_SECRET, MARKER_KEY, MARKER_NAME)

# Shorter literals would shred ordinary words and numbers all over a record.
MIN_SECRET_LEN = 4

_MARKER_RX = re.compile(r"\[REDACTED:(?:id|mobile|secret|key|name)\]")


# --------------------------------------------------------------------------
# Normalisation


# Dashes NFKC leaves alone but people (and word processors) put between digits.
_DASHES = frozenset((*range(0x2010, 0x2016), 0x2212, 0xFE58, 0xFE63))
# Zero-width characters pasted between digit groups act as separators when
# matching; mapping them to a space keeps the fold one-to-one.
_INVISIBLE = frozenset((0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF))


class _FoldTable(dict):
    """``str.translate`` table filled on first sight of each code point.

    Every entry maps one character to exactly one character; positions in the
    folded text are therefore positions in the original, which is what lets
    redaction splice markers into the untouched original.
    """

    def __missing__(self, cp: int) -> int:
        ch = chr(cp)
        out = cp
        digit = unicodedata.decimal(ch, None)
        if digit is not None:
            out = 0x30 + digit
        elif cp in _DASHES:
            out = 0x2D
        elif cp in _INVISIBLE:
            out = 0x20
        else:
            folded = unicodedata.normalize("NFKC", ch)
            if len(folded) == 1 and folded.isascii():
                out = ord(folded)
        self[cp] = out
        return out


_FOLD = _FoldTable()


def normalize(text: str) -> str:
    """Return *text* as the matcher sees it: ASCII digits, folded forms.

    Same length as *text*; ASCII input is returned as is.
    """
    if text.isascii():
        return text
    return text.translate(_FOLD)


# --------------------------------------------------------------------------
# Rules

Span = tuple[int, int, str]
Accept = Callable[["re.Match[str]", int, int], bool]


class _Rule:
    """One compiled pattern whose match (or first matched value group) is
    replaced by *marker*, unless *accept* vetoes it."""

    __slots__ = ("rx", "marker", "groups", "accept")

    def __init__(
        self,
        pattern: str,
        marker: str,
        *,
        groups: tuple[str, ...] = (),
        accept: Accept | None = None,
        flags: int = 0,
    ) -> None:
        self.rx = re.compile(pattern, flags)
        self.marker = marker
        self.groups = groups
        self.accept = accept

    def __call__(self, text: str) -> list[Span]:
        spans: list[Span] = []
        for m in self.rx.finditer(text):
            span = _value_span(m, self.groups)
            if span is None:
                continue
            start, end = span
            if start == end or _MARKER_RX.fullmatch(text, start, end):
                continue
            if self.accept is not None and not self.accept(m, start, end):
                continue
            spans.append((start, end, self.marker))
        return spans


def _value_span(m: re.Match[str], groups: tuple[str, ...]) -> tuple[int, int] | None:
    if not groups:
        return m.span()
    for name in groups:
        start, end = m.span(name)
        if start != -1:
            return start, end
    return None


_VALUE_GROUPS = ("dq", "sq", "eq", "bare")

# A value after "key=" / "key: ": double-quoted with JSON escapes (the closing
# quote may be missing when a line was cut), single-quoted, quoted with
# escaped quotes (JSON inside a JSON string), or bare up to the characters
# that end a value in query strings, connection strings and argument lists.
_VALUE = (
    r"(?:\"(?P<dq>(?:[^\"\\\r\n]|\\.)*)\"?"
    r"|'(?P<sq>[^'\r\n]*)'?"
    r"|\\+[\"'](?P<eq>[^\\\"'\r\n]*)"
    r"|(?P<bare>(?:[^\s&;,\"'\\]|\\(?![\"']))[^\s&;,\"'\\]*(?:\\(?![\"'])[^\s&;,\"'\\]*)*))"
)
_KEY_QUOTE = r"(?P<kq>\\*[\"'])?"
_ASSIGN = r"[ \t]*(?:=>|[:=])[ \t]*"

# --- identity numbers -------------------------------------------------------

# Separators are allowed only at the natural group borders; allowing them
# anywhere would turn runs of space-separated dates into "IDs". The area code
# stays whole: a split after 3 digits made the tail of a UUID
# ("a716-446655440000") look like an old 15-digit ID.
_S = "[ -]?"
_ID18 = (
    rf"(?<![0-9])[0-9]{{6}}{_S}[0-9]{{4}}{_S}[0-9]{{2}}{_S}[0-9]{{2}}"
    # A check character X ends the number by itself: what follows it (a digit, or
    # a character that folds to one, like "¹") cannot make it part of a longer number.
    rf"{_S}[0-9]{{3}}{_S}(?:[0-9](?![0-9])|[Xx])"
)
_ID15 = rf"(?<![0-9])[0-9]{{6}}{_S}[0-9]{{2}}{_S}[0-9]{{2}}{_S}[0-9]{{2}}{_S}[0-9]{{3}}(?![0-9])"
# A bare "86" prefix is taken too: 86 followed by a mobile number is the
# E.164 form without "+", not a timestamp (those start with 1 for centuries).
_MOBILE = (
    rf"(?<![0-9])(?:(?:\+|00)?86{_S}|\(\+?86\)[ -]?)?"
    rf"1[3-9][0-9]{_S}[0-9]{{4}}{_S}[0-9]{{4}}(?![0-9])"
)

# --- secrets ----------------------------------------------------------------

_PRIVATE_KEY = (
    r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
    r".*?(?:-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|\Z)"
)
# Header, then lines made only of hex; newlines may be real or JSON-escaped.
_VAULT = (
    r"\$ANSIBLE_VAULT;[0-9]+\.[0-9]+;[A-Za-z0-9_]+(?:;[^\s;\"'\\]+)?"
    r"(?:[ \t]*(?:\r?\n|\\r\\n|\\n)[ \t]*[0-9A-Fa-f]+(?![^\s\"'\\]))*"
)
_JWT = r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"
# Anchored on "://" rather than the scheme: a scheme prefix would make the
# engine rescan every alphanumeric run, quadratic on long base64 blobs.
_URL_USERINFO = (
    r"://(?:\[REDACTED:[a-z]+\]|[^\s:/@\[\]])*:"
    r"(?P<v>(?:\[REDACTED:[a-z]+\]|[^\s/@\[\]])+)@"
)
_AUTHORIZATION = (
    r"(?:proxy-)?authorization" + _KEY_QUOTE + _ASSIGN + r"\\*[\"']?"
    r"(?:[A-Za-z][A-Za-z0-9._-]*[ \t]+(?=[^\s\"'\\]))?"
    r"(?P<v>[^\s\"'\\](?:[^\r\n\"'\\]*[^\s\"'\\])?)"
)
_COOKIE = (
    r"(?:--cookie[ \t=]+|(?:set-)?cookie" + _KEY_QUOTE + _ASSIGN + r")\\*[\"']?"
    r"(?P<v>[^\s\"'\\](?:[^\r\n\"'\\]*[^\s\"'\\])?)"
)
_BEARER = r"\bbearer[ \t]+(?P<v>[A-Za-z0-9._~+/-]{16,}=*)"

_SECRET_WORDS = (
    r"pass(?:word|wd|phrase)|pwd|secret|token|api[_-]?key|access[_-]?key"
    r"|private[_-]?key|credentials?"
)
# The key is found by its last word only; the rest of the key (PGPASSWORD,
# client_secret, --db-password) is read backwards in _accept_secret_kv, which
# keeps the pattern anchored on a literal and linear on long lines.
_SECRET_KV = rf"(?P<kw>{_SECRET_WORDS}){_KEY_QUOTE}(?P<sep>{_ASSIGN}|[ \t]+)" + _VALUE
_SECRET_XML = rf"<[A-Za-z0-9_:.-]{{0,40}}(?:{_SECRET_WORDS})(?:[ \t][^<>]*)?>(?P<v>[^<]+)</"

_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def _accept_secret_kv(m: re.Match[str], start: int, end: int) -> bool:
    text = m.string
    key_start = m.start()
    while key_start > 0 and text[key_start - 1] in _KEY_CHARS:
        key_start -= 1
    key = text[key_start : m.end("kw")]
    value = text[start:end]
    # "word value" is prose unless the word is a command-line flag.
    spaced = not m.group("sep").strip()
    if spaced and (m.group("kq") or not key.startswith("-") or value.startswith("-")):
        return False
    if key in ("PWD", "OLDPWD") and value[0] in "/~":
        return False  # the shell's working directory in an env dump
    return value.lower() != "!vault"  # YAML tag; the payload has its own rule


# mysql/mariadb take the password glued to -p (a separate word is the
# database); sshpass takes it either way.
_CLI_TOOL = re.compile(r"mysql|mariadb|sshpass", re.I)
_DASH_P = re.compile(
    r"(?<![^\s])-p(?P<sp>[ \t]+)?"
    r"(?:'(?P<sq>[^'\r\n]*)'?|\"(?P<dq>[^\"\r\n]*)\"?|(?P<bare>[^\s'\"]+))"
)


def _cli_password_spans(text: str) -> list[Span]:
    spans: list[Span] = []
    done_until = -1
    for tool in _CLI_TOOL.finditer(text):
        if tool.start() < done_until:
            continue
        line_start = text.rfind("\n", 0, tool.start()) + 1
        line_end = text.find("\n", tool.end())
        if line_end < 0:
            line_end = len(text)
        done_until = line_end
        spaced_ok = "sshpass" in text[line_start:line_end].lower()
        for m in _DASH_P.finditer(text, line_start, line_end):
            start, end = _value_span(m, ("sq", "dq", "bare")) or (0, 0)
            if start == end or _MARKER_RX.fullmatch(text, start, end):
                continue
            if m.group("sp") and (not spaced_ok or text[start] == "-"):
                continue
            spans.append((start, end, MARKER_SECRET))
    return spans


# --- patient names ------------------------------------------------------------

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_NAME_LABEL = (
    r"姓名|就诊人|联系人|收件人|收货人"
    r"|patient[_ .-]?(?:full[_ .-]?)?name|real[_ .-]?name"
)
_NAME_TOKEN = rf"[A-Za-z{_CJK}·・][A-Za-z{_CJK}·・.'-]*"
# Further words belong to the name ("Zhang San") unless they are the next
# label of the record ("姓名:张三 性别:男", "patient_name=Li Si status=ok").
_NAME_BARE = (
    rf"(?P<bare>{_NAME_TOKEN}"
    rf"(?:[ \t](?![A-Za-z0-9_.{_CJK}-]+[ \t]*(?:=>|[:=])){_NAME_TOKEN})*)"
)
_NAME = (
    rf"(?:{_NAME_LABEL}){_KEY_QUOTE}{_ASSIGN}"
    r"(?:\"(?P<dq>(?:[^\"\\\r\n]|\\.)*)\"?"
    r"|'(?P<sq>[^'\r\n]*)'?"
    r"|\\+[\"'](?P<eq>[^\\\"'\r\n]*)"
    rf"|{_NAME_BARE})"
)

_I = re.IGNORECASE

# Order matters. Literal secrets go first so nothing else can split one.
# Self-delimiting blobs (key blocks, vault payloads, JWTs) go before numbers
# so digit runs inside them cannot cut them short. Numbers go before the
# key/value rules so a phone number glued to a token is removed whole. Names
# go last: their values stop at digits and markers.
_RULES: tuple[Callable[[str], list[Span]], ...] = (
    _Rule(_PRIVATE_KEY, MARKER_KEY, flags=re.DOTALL | _I),
    _Rule(_VAULT, MARKER_SECRET),
    _Rule(_JWT, MARKER_SECRET),
    _Rule(_ID18, MARKER_ID),
    # Mobile before 15-digit IDs: "0086" + mobile is also 15 digits, and no
    # ID area code starts with 00.
    _Rule(_MOBILE, MARKER_MOBILE),
    _Rule(_ID15, MARKER_ID),
    _Rule(_URL_USERINFO, MARKER_SECRET, groups=("v",)),
    _Rule(_AUTHORIZATION, MARKER_SECRET, groups=("v",), flags=_I),
    _Rule(_COOKIE, MARKER_SECRET, groups=("v",), flags=_I),
    _Rule(_BEARER, MARKER_SECRET, groups=("v",), flags=_I),
    _Rule(_SECRET_KV, MARKER_SECRET, groups=_VALUE_GROUPS, accept=_accept_secret_kv, flags=_I),
    _Rule(_SECRET_XML, MARKER_SECRET, groups=("v",), flags=_I),
    _cli_password_spans,
    _Rule(_NAME, MARKER_NAME, groups=_VALUE_GROUPS, flags=_I),
)

# Cheap gate: a string with no digit and none of these words cannot match any
# rule above, which is the common case for check names, hosts and statuses.
_TRIGGER = re.compile(
    r"[0-9]|pass|pwd|secret|token|key|credential|authori[sz]ation|cookie|bearer"
    r"|://|vault|eyJ|mysql|mariadb|sshpass|name|姓名|就诊人|联系人|收件人|收货人",
    _I,
)


def _apply(rule: Callable[[str], list[Span]], texts: list[str]) -> None:
    """Match *rule* on ``texts[0]`` (folded) and splice into every text."""
    spans = rule(texts[0])
    if spans:
        texts[:] = [_splice(t, spans) for t in texts]


def _splice(text: str, spans: list[Span]) -> str:
    parts: list[str] = []
    pos = 0
    for start, end, marker in spans:
        parts.append(text[pos:start])
        parts.append(marker)
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


# --------------------------------------------------------------------------
# Structured values

_KEY_IGNORED = str.maketrans("", "", "_- .")

_SECRET_KEY_SUFFIXES = (
    "password", "passwd", "pwd", "passphrase", "secret", "secretkey", "token", "tokens",
    "apikey", "accesskey", "authorization", "cookie", "cookies", "privatekey", "privkey",
    "credential", "credentials",
)
_SECRET_KEY_PREFIXES = ("vault", "password", "passwd")
_ID_KEY_SUFFIXES = (
    "idcard", "idcardno", "idcardnumber", "idno", "idnumber",
    "身份证", "身份证号", "身份证号码", "证件号", "证件号码",
)
_ID_KEYS = frozenset(("sfz", "sfzh", "sfzhm"))
_MOBILE_KEY_SUFFIXES = (
    "mobile", "mobileno", "mobilenum", "mobilenumber",
    "phone", "phoneno", "phonenum", "phonenumber",
    "手机", "手机号", "手机号码", "电话", "电话号码", "联系方式",
)
_MOBILE_KEYS = frozenset(("tel", "telno"))
_NAME_KEY_SUFFIXES = (
    "patientname", "patientfullname", "realname",
    "姓名", "就诊人", "联系人", "收件人", "收货人",
)
_NAME_KEYS = frozenset(("patient", "患者", "病人"))
# Containers that describe a patient, where a plain "name" is the patient's.
_PATIENT_CONTAINER_KEYS = frozenset((
    "patients", "patientinfo", "patientdetail", "patientdetails",
    "患者信息", "病人信息", "就诊人信息",
))
_PLAIN_NAME_KEYS = frozenset(("name", "fullname", "姓名"))


def _fold_key(key: str) -> str:
    return normalize(key).casefold().translate(_KEY_IGNORED)


@lru_cache(maxsize=4096)
def _key_marker(key: str, in_patient: bool) -> str | None:
    k = _fold_key(key)
    if k.endswith(_SECRET_KEY_SUFFIXES) or k.startswith(_SECRET_KEY_PREFIXES):
        return MARKER_SECRET
    if k in _ID_KEYS or k.endswith(_ID_KEY_SUFFIXES):
        return MARKER_ID
    if k in _MOBILE_KEYS or k.endswith(_MOBILE_KEY_SUFFIXES):
        return MARKER_MOBILE
    if k in _NAME_KEYS or k.endswith(_NAME_KEY_SUFFIXES):
        return MARKER_NAME
    if in_patient and k in _PLAIN_NAME_KEYS:
        return MARKER_NAME
    return None


@lru_cache(maxsize=4096)
def _is_patient_container(key: str) -> bool:
    return _fold_key(key) in _PATIENT_CONTAINER_KEYS


# --------------------------------------------------------------------------
# Public API


class Redactor:
    """Redacts text and JSON-like values; also knows literal secret values.

    *secrets* are exact values (decrypted vault variables, configured
    passwords) replaced by ``[REDACTED:secret]`` wherever they appear.
    Values shorter than :data:`MIN_SECRET_LEN` after stripping are ignored.
    An instance is immutable and safe to share between threads.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        literals = set()
        for raw in secrets:
            if raw is None:
                continue
            if isinstance(raw, bytes):
                raw = raw.decode("utf-8", "replace")
            value = normalize(str(raw).strip())
            if len(value) >= MIN_SECRET_LEN:
                literals.add(value)
        self._literal: _Rule | None = None
        if literals:
            # Longest first so a secret containing another is removed whole;
            # existing markers are matched first so they are never rewritten.
            alternatives = "|".join(
                re.escape(v) for v in sorted(literals, key=lambda v: (-len(v), v))
            )
            self._literal = _Rule(
                rf"\[REDACTED:(?:id|mobile|secret|key|name)\]|(?P<v>{alternatives})",
                MARKER_SECRET,
                groups=("v",),
            )

    def text(self, s: str) -> str:
        """Return *s* with identifiers and secrets replaced by markers."""
        if not isinstance(s, str):
            raise TypeError(f"Redactor.text() needs str, got {type(s).__name__}")
        if not s:
            return s
        folded = normalize(s)
        # Matching happens on the folded copy; each rule's markers are spliced
        # into it and into the original at the same positions, which the
        # one-to-one fold keeps aligned, so the original survives around them.
        texts = [folded] if folded is s else [folded, s]
        if self._literal is not None:
            _apply(self._literal, texts)
        if _TRIGGER.search(texts[0]):
            for rule in _RULES:
                _apply(rule, texts)
        return texts[-1]

    def obj(self, o: Any) -> Any:
        """Return a redacted copy of a JSON-like value.

        dict/list/tuple/set are rebuilt with the same keys and lengths;
        strings go through :meth:`text`; other scalars are returned as is.
        The value under a key that names a secret, an ID number, a phone
        number or a patient name is replaced whole by the matching marker,
        whatever its type (``None`` and ``""`` are kept: they hide nothing).
        Keys themselves are kept verbatim.
        """
        return self._obj(o, False)

    def _obj(self, o: Any, in_patient: bool) -> Any:
        if isinstance(o, str):
            return self.text(o)
        if isinstance(o, dict):
            out = {}
            for key, value in o.items():
                if isinstance(key, str):
                    marker = _key_marker(key, in_patient)
                    if marker is not None:
                        hides_nothing = value is None or (isinstance(value, str) and not value)
                        out[key] = value if hides_nothing else marker
                        continue
                    out[key] = self._obj(value, _is_patient_container(key))
                else:
                    out[key] = self._obj(value, False)
            return out
        if isinstance(o, list):
            return [self._obj(v, in_patient) for v in o]
        if isinstance(o, tuple):
            return tuple(self._obj(v, in_patient) for v in o)
        if isinstance(o, (set, frozenset)):
            return type(o)(self._obj(v, in_patient) for v in o)
        return o


_DEFAULT = Redactor()


def redact(text: str) -> str:
    """Redact *text* with the default :class:`Redactor` (no literal secrets)."""
    return _DEFAULT.text(text)


def redact_obj(obj: Any) -> Any:
    """Redact a JSON-like value with the default :class:`Redactor`."""
    return _DEFAULT.obj(obj)
