"""Redaction: no credential reaches a log line or a record; optionally, no PII reaches a prompt.

Two kinds of credential are removed by :func:`scrub`:

- the values this process was configured with (the provider key, the passwords in the Redis and
  ledger URLs, reviewer tokens, ``SLUICE_SECRETS``), registered once at start with
  :func:`register_secret`. Only an exact registry catches a secret that has no recognisable shape;
- well-known shapes, whoever's they are: ``sk-...`` provider keys, ``Bearer``/``Basic``
  credentials, ``Authorization:`` headers, the password of ``scheme://user:PASS@host``, and
  ``password=``/``api_key=``/``token=`` pairs in queries, configs and reprs. A key pasted into a
  ticket, or echoed by a provider's error message, is caught without having been registered.

:func:`scrub` runs on every string of every log line (:mod:`streams.logconfig`), so it is one
compiled regular expression, rebuilt only when a secret is registered, and a line with nothing to
hide costs one failed search per string. :func:`scrub_value` walks dicts, lists and tuples and also
masks by key (``{"openai_api_key": ...}``), leaving counts such as ``prompt_tokens`` alone.

:func:`redact_pii` is separate and off by default (``SLUICE_REDACT_PII``): it replaces emails,
phone numbers and card numbers in customers' text (prompts written to logs), which loses detail,
so it is the operator's choice.

This module imports nothing of ours: agents and streams both use it (schemas ← agents ← streams).
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import Any, Final
from urllib.parse import unquote, urlsplit, urlunsplit

REDACTED: Final = "[REDACTED]"
#: Shorter values are not registered: masking every "admin" or "1234" in every log line would
#: hide more than it protects, and such a value is no secret anyway.
MIN_SECRET_CHARS: Final = 6
#: How deep :func:`scrub_value` walks; deeper values (or a cycle) are replaced whole.
MAX_DEPTH: Final = 32

# Key names whose value is a credential, compared after lower-casing and turning "-" into "_".
# A key matches when it is one of these or ends with "_" + one of these ("openai_api_key",
# "ledger_password", "x_api_key"). "prompt_tokens" or "max_tokens" end in "tokens", so they don't.
_SECRET_KEYS: Final = frozenset(
    {
        "api_key",
        "apikey",
        "authorization",
        "proxy_authorization",
        "password",
        "passwd",
        "pwd",
        "secret",
        "secret_key",
        "private_key",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "auth_token",
        "cookie",
        "set_cookie",
        "credentials",
    }
)


def _word(first: str, rest: str, tail: str = "") -> str:
    """Branches for a word starting a token (not after a letter or digit), any case.

    Each branch starts with a literal character: a pattern whose every top-level branch does
    lets ``re`` skip ahead to the next position where one of those characters occurs instead of
    trying every branch at every position, which makes a search over ordinary text several
    times faster (the difference between a few µs and a few hundred ns per log field). The
    word-start check is a look-behind placed after that first character for the same reason.
    """
    return "|".join(
        f"{c}(?<![A-Za-z0-9]{c})(?i:{rest}){tail}"
        for c in dict.fromkeys((first.lower(), first.upper()))
    )


# `KEY = value`, `"KEY": "value"`, `&access_token=value`: the key and separator stay, so the line
# still says what was there. A key may follow "_" or "-" (`openai_api_key=`, `x-api-key:`,
# `client_secret=`), not a letter (`mypassword=`); `max_tokens=` and `prompt_tokens:` don't end
# in a key. A quoted value ends at its closing quote (escaped quotes skipped); a bare value at
# the next space or delimiter, after the scheme word of an Authorization value; a bare cookie
# header value (`a=1; b=2`) at the end of the line.
_SEPARATOR = r"[\"']?[ \t]*[:=][ \t]*"
_QUOTED = r"\"(?:\\.|[^\"\\\r\n])*|'(?:\\.|[^'\\\r\n])*"
_KV_TAIL = (
    rf"{_SEPARATOR}(?:{_QUOTED}|(?:(?i:bearer|basic|token|digest)[ \t]+)?[^\s&,;\"'{{}}()\[\]]+)"
)
_KV_LINE_TAIL = rf"{_SEPARATOR}(?:{_QUOTED}|[^\s\"'][^\r\n\"']*)"
_KV = "|".join(
    (
        _word("p", r"ass(?:word|wd)|wd|rivate[_-]?key", _KV_TAIL),
        _word("s", r"ecret(?:[_-]?key)?", _KV_TAIL),
        _word("a", r"pi[_-]?key|pikey|uthorization", _KV_TAIL),
        _word("t", r"oken", _KV_TAIL),
        _word("c", r"ookie", _KV_LINE_TAIL),
    )
)
# After Bearer or Basic: it must look like a credential (a digit, a symbol or an inner capital),
# so "Basic authentication failed" keeps its words.
_CREDENTIAL = r"[ \t]+(?=[A-Za-z0-9._~+/=-]*[0-9._~+/=-]|[A-Za-z][a-z]*[A-Z])[A-Za-z0-9._~+/=-]{8,}"
_SHAPES = "|".join(
    (
        # Provider keys: OpenAI sk-..., sk-proj-..., sk-svcacct-...; Anthropic sk-ant-...
        r"s(?<![A-Za-z0-9]s)k-[A-Za-z0-9_-]{20,}",
        # GitHub, Slack and AWS access key ids, and JWTs (bearer credentials by themselves).
        r"g(?<![A-Za-z0-9]g)h[pousr]_[A-Za-z0-9]{30,}",
        r"x(?<![A-Za-z0-9]x)ox[abprs]-[A-Za-z0-9-]{10,}",
        r"A(?<![A-Za-z0-9]A)(?:KIA|SIA)[A-Z0-9]{16}(?![A-Za-z0-9])",
        r"e(?<![A-Za-z0-9]e)yJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
        # scheme://user:PASSWORD@host keeps the user and the host. The password runs to the last
        # "@" before the path (a raw "@" in a password parses); the user may be empty (Redis).
        r"://[^\s/?#:@]*:[^\s/?#]*@",
        _KV,
        # Bearer and Basic credentials anywhere, not only after "Authorization:".
        _word("b", "earer", _CREDENTIAL),
        "Basic" + _CREDENTIAL,
    )
)
# Where the kept part of a match ends: "://user:", "Bearer ", `password": "`.
_HEAD = re.compile(r"://[^:]*:|(?i:bearer|basic)[ \t]+|[\w-]+[\"']?[ \t]*[:=][ \t]*[\"']?")

_SHAPES_RE = re.compile(_SHAPES)

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
#: Registered values or shapes: the one search every string goes through.
_pattern: re.Pattern[str] = _SHAPES_RE
#: Registered values only, replaced first when the search found something (rare).
_registered: re.Pattern[str] | None = None


def _alternation(secrets: frozenset[str]) -> str:
    # Longest first: a secret that contains another is replaced whole.
    return "|".join(re.escape(v) for v in sorted(secrets, key=len, reverse=True))


def register_secret(value: str | None) -> None:
    """Never log or record ``value`` from now on, wherever it appears in a string.

    Called once per configured secret at start; values shorter than :data:`MIN_SECRET_CHARS` and
    repeats are ignored, so calling it again costs nothing. Process-wide: logging has one
    configuration per process too.
    """
    global _pattern, _registered, _secrets
    if not value or len(value) < MIN_SECRET_CHARS or value in _secrets:
        return
    with _lock:
        _secrets = _secrets | {value}
        registered = _alternation(_secrets)
        _registered = re.compile(registered)
        _pattern = re.compile(f"{registered}|{_SHAPES}")


def register_url_password(url: str | None) -> None:
    """Register the password of ``scheme://user:PASSWORD@host`` (as written and percent-decoded).

    The URL shape is scrubbed anyway; registering the password also catches it where a library
    prints it alone (``auth failed for password ...``) or in a URL it re-assembled. A value that
    is not a URL with a password registers nothing.
    """
    if not url or "@" not in url or "://" not in url:
        return
    try:
        password = urlsplit(url.strip()).password
    except ValueError:  # not a URL after all (a bracket that opens no IPv6 address)
        return
    if password:
        register_secret(password)
        register_secret(unquote(password))


def url_without_credentials(url: str) -> str:
    """``url`` without user, password, query or fragment: a provider key may ride in any of them
    (``?key=...`` for some gateways). For logs, names and metric labels. A value that does not
    parse as a URL keeps only its scheme (``scheme://invalid``)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL after all: keep no part that may be a credential
        return url.split("://", 1)[0] + "://invalid"
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query="", fragment=""))


def reset_secrets() -> None:
    """Forget every registered secret (tests: each starts from an empty registry)."""
    global _pattern, _registered, _secrets
    with _lock:
        _secrets = frozenset()
        _registered = None
        _pattern = _SHAPES_RE


def _replace(m: re.Match[str]) -> str:
    text = m.group()
    head = _HEAD.match(text)
    if head is None:  # a key or token shape: all of it goes
        return REDACTED
    return head.group() + REDACTED + ("@" if text.startswith("://") else "")


def scrub(text: str) -> str:
    """``text`` with every registered secret and every well-known credential shape replaced.

    Returns ``text`` itself when there is nothing to replace: the common case on the hot path,
    one search. Otherwise registered values go first, so that a shape match starting earlier
    (``password=my pass phrase``) cannot take half a registered value and leave the rest.
    """
    if _pattern.search(text) is None:
        return text
    registered = _registered
    if registered is not None:
        text = registered.sub(REDACTED, text)
    return _SHAPES_RE.sub(_replace, text)


@lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """Whether a mapping key names a credential (``Authorization``, ``openai_api_key``)."""
    name = key.lower().replace("-", "_")
    return name in _SECRET_KEYS or any(name.endswith("_" + k) for k in _SECRET_KEYS)


def scrub_value(obj: Any, *, repr_others: bool = False, _depth: int = 0) -> Any:
    """``obj`` with :func:`scrub` applied to every string inside dicts, lists and tuples.

    A str or bytes value under a key that names a credential is replaced whole, shape or not; an
    int under such a key (``tokens=812``) is a count and stays. Other types are returned as they
    are, unless ``repr_others``: a log renderer prints them with ``repr``, so the log processor
    asks for that ``repr``, scrubbed, wherever it hides something (an exception object passed as
    a field, bytes). Containers are copied only when something inside changed.
    """
    if isinstance(obj, str):
        return scrub(obj)
    if obj is None or isinstance(obj, bool | int | float):
        return obj
    if _depth >= MAX_DEPTH:
        return REDACTED
    depth = _depth + 1
    if isinstance(obj, dict):
        out: dict[Any, Any] | None = None
        for k, v in obj.items():
            if isinstance(k, str) and isinstance(v, str | bytes) and v and is_secret_key(k):
                new: Any = REDACTED
            else:
                new = scrub_value(v, repr_others=repr_others, _depth=depth)
            if new is not v:
                if out is None:
                    out = dict(obj)
                out[k] = new
        return obj if out is None else out
    if isinstance(obj, list | tuple):
        items = [scrub_value(v, repr_others=repr_others, _depth=depth) for v in obj]
        if all(a is b for a, b in zip(items, obj, strict=True)):
            return obj
        return items if isinstance(obj, list) else tuple(items)
    if repr_others:
        try:
            text = repr(obj)
        except Exception:  # the renderer will meet the same broken __repr__; not ours to fix
            return obj
        scrubbed = scrub(text)
        return obj if scrubbed is text else scrubbed
    return obj


# --- PII ---------------------------------------------------------------------------------------

_PII = re.compile(
    r"(?P<email>(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"\.[A-Za-z]{2,}(?![\w-]))"
    # A run of digits with the separators phone and card numbers use, not touching a word, a
    # decimal point or a thousands comma ("INV-2024-0042" and "1,234.56" are no candidates);
    # what the run is (if anything) is decided in _classify.
    r"|(?P<num>(?:(?<![\w.,+/-])\+|(?<![\w.,+/:-])\(?)\d[\d ().-]{6,}\d(?![\w/:]|[.,-]\d))"
)
_DATE = re.compile(r"(?<!\d)(?:\d{4}([-./])\d{1,2}\1\d{1,2}|\d{1,2}([-./])\d{1,2}\2\d{2,4})(?!\d)")
# Amounts (1.234.567) and IPv4 addresses: digits and dots, but not phone numbers.
_NOT_PHONE = re.compile(r"\d{1,3}(?:[.,]\d{3})+|\d{1,3}(?:\.\d{1,3}){3}")
_DIGITS = re.compile(r"\d+")
_SPACES = re.compile(r"( +)")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies (and few other numbers do)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _is_card(candidate: str, groups: list[str]) -> bool:
    # 4111111111111111, 4111 1111 1111 1111, 3782-822463-10005 (Amex): one run, or groups of
    # 3 to 6 digits joined by one kind of single separator. Two dates side by side are not.
    if len(groups) > 1:
        separators = set(_DIGITS.split(candidate)[1:-1])
        if len(separators) != 1 or separators - {" ", "-"}:
            return False
        if any(not 3 <= len(g) <= 6 for g in groups[:-1]) or not 1 <= len(groups[-1]) <= 6:
            return False
    digits = "".join(groups)
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _classify(candidate: str) -> str | None:
    if _NOT_PHONE.fullmatch(candidate) or _DATE.search(candidate):
        return None
    groups = _DIGITS.findall(candidate)
    n = sum(len(g) for g in groups)
    if _is_card(candidate, groups):
        return "[CARD]"
    if candidate.startswith("+"):
        return "[PHONE]" if 8 <= n <= 15 else None
    # National formats: (555) 123-4567, 555-123-4567, 555.123.4567, 020 7946 0958,
    # 06 12 34 56 78, 0612345678. One separator ("2024-0042") or a bare run that does not start
    # with a trunk 0 is more often an id than a phone number.
    if 8 <= n <= 12 and ("(" in candidate or len(groups) >= 3 or candidate[0] == "0"):
        return "[PHONE]"
    return None


def _label(text: str) -> str:
    """``text`` (one candidate run) with what is a phone or a card number in it replaced."""
    label = _classify(text)
    if label is not None:
        if text.startswith("(") and ")" not in text:  # "(" opened before the number: keep it
            return "(" + label
        return label
    # A date may be joined by a space to a number after it ("2024-03-15 555-123-4567"): then try
    # the longest space-separated windows from the left. Only then: a run that failed as a whole
    # (a card number failing Luhn) is not cut into pieces that might pass as something else.
    parts = _SPACES.split(text)  # numbers at even indexes, the spaces between at odd ones
    if len(parts) < 3 or not _DATE.search(text):
        return text
    out: list[str] = []
    i = 0
    while i < len(parts):
        for j in range(len(parts), i, -2):
            if not (parts[i][0].isdigit() or parts[i][0] in "(+") or not parts[j - 1][-1].isdigit():
                continue
            window = "".join(parts[i:j])
            if (found := _classify(window)) is not None:
                out.append(found)
                break
        else:
            j = i + 1
            out.append(parts[i])
        if j < len(parts):
            out.append(parts[j])  # the spaces after the window
        i = j + 1
    return "".join(out)


def _replace_pii(m: re.Match[str]) -> str:
    return "[EMAIL]" if m.lastgroup == "email" else _label(m.group())


def redact_pii(text: str) -> str:
    """``text`` with email addresses, phone numbers and card numbers replaced by placeholders.

    For customers' text that leaves the worker (prompts in log lines, ``SLUICE_REDACT_PII``): a
    reader still sees that a customer gave an address or a card (``[EMAIL]``, ``[PHONE]``,
    ``[CARD]``), not which. Dates, amounts and invoice numbers are left alone, since they are
    what the text is about; a card number must pass the Luhn check, so an order number of the
    same length is kept.
    """
    return _PII.sub(_replace_pii, text)
