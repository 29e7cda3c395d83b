"""Is one extracted field right? Per-flow field specs and the rules that compare a value to a label.

An eval is only as honest as its comparison. Exact string equality calls ``"Lumen Cloud Hosting
Inc"`` wrong against ``"Lumen Cloud Hosting, Inc."`` and ``"853,94"`` wrong against ``"853.94"``,
so accuracy would measure formatting, not reading; a comparison that is too loose (dropping the
legal form, rounding money to the euro) would call a wrong vendor or a wrong amount right. Each
field therefore says *how* it is compared (:class:`FieldSpec`), and the rules are kept here, in one
place, where they can be read and tested:

- ``enum`` and ``exact``: equal as JSON values; ``bool``: both booleans and equal (``1`` is not
  ``true``). Enums are not normalised: the schema allows exactly these strings.
- ``text``: Unicode NFKC, casefolded, whitespace collapsed.
- ``key`` (vendor names, invoice numbers): as ``text``, then punctuation (except ``&``) and all
  whitespace dropped: ``"Lumen Cloud Hosting, Inc."`` = ``"lumen cloud hosting inc"`` and
  ``"RE-2024-0417"`` = ``"RE 2024/0417"``. Legal-form suffixes are **not** canonicalised: they are
  part of the legal name, so ``GmbH`` = ``gmbh`` = ``G.m.b.H.`` but ``GmbH`` ≠ ``AG``, ``Inc.`` ≠
  ``Incorporated`` and a dropped suffix is wrong: another legal form is another company.
- ``number`` and ``money``: parsed to :class:`~decimal.Decimal` (never float; ``"1.234,50"``,
  ``"1,234.50"``, ``"EUR 853,94"`` all parse, see :func:`parse_decimal`) and right when
  ``|expected - got| <= tolerance`` (inclusive: a one-cent tolerance accepts one cent off). Money
  defaults to 0.01, other numbers to exact.
- ``date``: ISO dates compared as dates (``"2024-03-12"`` = ``"2024-03-12T00:00:00"``).
- ``line_items``: items matched one to one (:func:`match_line_items`); the field is right when every
  expected item is matched, none is extra and every matched item is right in every field.

Expected ``None`` is an answer too (an invoice without a due date): it is right only when the value
read is also ``None``.

The built-in flows (``tickets``, ``invoices``) are registered below; a user's flow registers its own
with :func:`register_fields`. A flow with no specs compares every labelled field exactly, so an eval
of a new flow works on day one and can be made smarter field by field.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from difflib import SequenceMatcher
from typing import Any, Literal, get_args

from schemas.records import Sentiment, Team, TicketCategory, TicketPriority

Kind = Literal["exact", "enum", "bool", "text", "key", "number", "money", "date", "line_items"]

#: Money is right to the cent unless a spec or the caller says otherwise.
MONEY_TOLERANCE = Decimal("0.01")

#: A line-item pair is matched when the descriptions are this similar (difflib ratio on normalised
#: text), or at least :data:`MATCH_WITH_AMOUNT` similar with the same amount ("Rush fee" / "Rush
#: charge" for 25.00). Unrelated lines with the same price stay unmatched.
MATCH_ON_DESCRIPTION = 0.6
MATCH_WITH_AMOUNT = 0.4

#: The fields of one line item and how each is compared.
ITEM_FIELDS: tuple[tuple[str, Kind], ...] = (
    ("description", "key"),
    ("quantity", "number"),
    ("unit_price", "money"),
    ("amount", "money"),
)

#: Invoice issues an answer key may expect (``expect_issue``) that can be read off a record.
DETECTABLE_ISSUES = ("total_mismatch", "subtotal_mismatch", "no_invoice_number")


def _as_decimal(value: float | str | Decimal) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


@dataclass(frozen=True)
class FieldSpec:
    """One scored field of a flow: its name, how it is compared, and where its value is read."""

    name: str
    kind: Kind = "exact"
    tolerance: Decimal | None = None
    """``number``/``money``: the largest absolute difference still right; ``line_items``: the money
    tolerance of the items. None: the kind's default (money 0.01, numbers exact)."""
    values: tuple[str, ...] = ()
    """``enum``: every allowed value, so a confusion matrix lists classes never seen too."""
    read: Callable[[Mapping[str, Any]], Any] | None = None
    """How to read the value from a record; default ``record.get(name)``. A field with ``read`` is
    derived, not a record field: reviewed labels never carry it."""
    compare: Callable[[Any, Any], bool] | None = None
    """``compare(expected, got)``, replacing the kind's rule."""
    none_is_answer: bool = True
    """False when a record's ``None`` means "not produced" rather than "there is none": such a
    field is left out of a label built from an approved record."""

    def __post_init__(self) -> None:
        if self.tolerance is not None:
            object.__setattr__(self, "tolerance", _as_decimal(self.tolerance))

    def value(self, record: Mapping[str, Any]) -> Any:
        """The field's value in ``record``."""
        return self.read(record) if self.read is not None else record.get(self.name)

    def same(self, expected: Any, got: Any) -> bool:
        """Whether ``got`` is right against the label's ``expected``."""
        return same(self, expected, got)


@dataclass(frozen=True)
class FlowFields:
    """What a flow scores: its fields, and the ones that decide whether an event is right."""

    specs: tuple[FieldSpec, ...]
    correct_fields: tuple[str, ...]


_FLOWS: dict[str, FlowFields] = {}


def register_fields(flow: str, specs: Iterable[FieldSpec], correct_fields: Iterable[str]) -> None:
    """Declare how ``flow``'s fields are scored (replacing any earlier declaration).

    ``correct_fields`` decide an event's correctness for calibration and the auto lane; they must
    be among ``specs``.
    """
    specs = tuple(specs)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{flow}: a field is declared twice in {names}")
    correct = tuple(correct_fields)
    unknown = [f for f in correct if f not in names]
    if unknown:
        raise ValueError(f"{flow}: correct fields {unknown} are not among the specs {names}")
    _FLOWS[flow] = FlowFields(specs, correct)


@contextmanager
def judged_by(flow: str, fields: Sequence[str] | None) -> Iterator[None]:
    """Within the block, ``fields`` (None: unchanged) decide whether one of ``flow``'s events is
    right: e.g. ``category`` alone, to ask whether the score separates right categories from wrong
    ones when no answer is right on every field. The declaration is restored afterwards."""
    if not fields:
        yield
        return
    before = _FLOWS.get(flow)
    register_fields(flow, specs_for(flow, fields), fields)
    try:
        yield
    finally:
        if before is None:
            del _FLOWS[flow]
        else:
            _FLOWS[flow] = before


def registered(flow: str) -> bool:
    """Whether ``flow`` has declared specs (otherwise every labelled field is compared exactly)."""
    return flow in _FLOWS


def specs_for(
    flow: str,
    label_fields: Iterable[str] = (),
    *,
    money_tolerance: float | str | Decimal | None = None,
) -> list[FieldSpec]:
    """The flow's specs, then an ``exact`` spec for every labelled field none of them covers.

    ``money_tolerance`` overrides the tolerance of every ``money`` and ``line_items`` spec.
    """
    declared = list(_FLOWS[flow].specs) if flow in _FLOWS else []
    if money_tolerance is not None:
        tolerance = _as_decimal(money_tolerance)
        declared = [
            replace(s, tolerance=tolerance) if s.kind in ("money", "line_items") else s
            for s in declared
        ]
    known = {s.name for s in declared}
    extra = sorted({f for f in label_fields if f not in known})
    return declared + [FieldSpec(name) for name in extra]


def correct_fields(flow: str, label_fields: Iterable[str] = ()) -> list[str]:
    """The fields that decide correctness: the flow's declared ones, or for a flow with no specs
    every labelled field."""
    if flow in _FLOWS:
        return list(_FLOWS[flow].correct_fields)
    return sorted(set(label_fields))


# --- normalisation ---

_SPACE = re.compile(r"\s+")


def norm_text(value: str) -> str:
    """NFKC, casefolded, whitespace collapsed and stripped."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", value).casefold()).strip()


def norm_key(value: str) -> str:
    """:func:`norm_text` without punctuation (``&`` kept: "A & B" is not "AB") or whitespace."""
    return "".join(
        c
        for c in norm_text(value)
        if not c.isspace() and (c == "&" or not unicodedata.category(c).startswith("P"))
    )


_NUMBER_NOISE = re.compile(r"[^\d.,+\-]")


def parse_decimal(value: Any) -> Decimal | None:
    """A number from JSON or from text as invoices print it; None when it is not one.

    Currency codes and symbols, spaces and apostrophes (Swiss grouping) are dropped. With both
    ``.`` and ``,`` the last one is the decimal separator (``1.234,50``, ``1,234.50``). A lone
    comma is decimal (``853,94``) unless exactly three digits follow it and the integer part is not
    zero (``1,234`` is a thousand; ``0,125`` is an eighth). A lone dot is always decimal, as in
    JSON; repeated separators of one kind are grouping (``1.234.567``).
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, int | float):
        number = Decimal(str(value))
        return number if number.is_finite() else None
    if not isinstance(value, str):
        return None
    text = _NUMBER_NOISE.sub("", unicodedata.normalize("NFKC", value))
    if text.count("-") + text.count("+") > 1 or re.search(r"\d[+\-]", text):
        return None
    dots, commas = text.count("."), text.count(",")
    if dots and commas:
        decimal_mark = "." if text.rfind(".") > text.rfind(",") else ","
        grouping = "," if decimal_mark == "." else "."
        if text.count(decimal_mark) > 1:
            return None
        text = text.replace(grouping, "").replace(decimal_mark, ".")
    elif commas > 1 or dots > 1:
        text = text.replace(",", "").replace(".", "")
    elif commas == 1:
        whole, fraction = text.split(",")
        grouped = len(fraction) == 3 and whole.lstrip("+-") not in ("", "0")
        text = whole + fraction if grouped else f"{whole}.{fraction}"
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def parse_date(value: Any) -> date | None:
    """A date from a date, a datetime or an ISO string (a datetime string gives its date)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        return date.fromisoformat(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).date()
    except ValueError:
        return None


# --- comparison ---


def _numbers_match(expected: Any, got: Any, tolerance: Decimal) -> bool:
    a, b = parse_decimal(expected), parse_decimal(got)
    return a is not None and b is not None and abs(a - b) <= tolerance


def _tolerance(spec: FieldSpec) -> Decimal:
    if spec.tolerance is not None:
        return spec.tolerance
    return MONEY_TOLERANCE if spec.kind in ("money", "line_items") else Decimal(0)


def same(spec: FieldSpec, expected: Any, got: Any) -> bool:
    """Whether ``got`` is right against ``expected`` under ``spec``'s rule (see the module doc)."""
    if spec.compare is not None:
        return spec.compare(expected, got)
    if expected is None or got is None:
        return expected is None and got is None
    kind = spec.kind
    if kind == "bool":
        return isinstance(expected, bool) and isinstance(got, bool) and expected == got
    if kind in ("text", "key"):
        if not isinstance(expected, str) or not isinstance(got, str):
            return False
        norm = norm_text if kind == "text" else norm_key
        return norm(expected) == norm(got)
    if kind in ("number", "money"):
        return _numbers_match(expected, got, _tolerance(spec))
    if kind == "date":
        a, b = parse_date(expected), parse_date(got)
        return a is not None and a == b
    if kind == "line_items":
        if not isinstance(expected, list) or not isinstance(got, list):
            return False
        return match_line_items(expected, got, _tolerance(spec)).all_right
    # exact, enum: equal as JSON values, and a boolean is never a number (in Python 1 == True).
    if isinstance(expected, bool) or isinstance(got, bool):
        return isinstance(expected, bool) and isinstance(got, bool) and expected == got
    return bool(expected == got)


# --- line items ---


@dataclass(frozen=True)
class LineItemMatch:
    """How one record's line items match the label's: pairs ``(expected index, got index)``."""

    expected: int
    got: int
    pairs: tuple[tuple[int, int], ...]
    field_right: Mapping[str, int] = field(default_factory=dict)
    """Per item field, how many matched pairs have it right."""

    @property
    def matched(self) -> int:
        return len(self.pairs)

    @property
    def precision(self) -> float | None:
        """Share of the items read that match an expected one (None when none was read)."""
        return self.matched / self.got if self.got else None

    @property
    def recall(self) -> float | None:
        """Share of the expected items that were read (None when none was expected)."""
        return self.matched / self.expected if self.expected else None

    @property
    def all_right(self) -> bool:
        """Every item found, none extra, every matched item right in every field."""
        return self.matched == self.expected == self.got and all(
            self.field_right.get(name, 0) == self.matched for name, _ in ITEM_FIELDS
        )


def _item(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _description(item: Mapping[str, Any]) -> str:
    text = item.get("description")
    return norm_text(text) if isinstance(text, str) else ""


def match_line_items(
    expected: Sequence[Any], got: Sequence[Any], tolerance: float | str | Decimal = MONEY_TOLERANCE
) -> LineItemMatch:
    """Pair expected and extracted items one to one, whatever their order.

    Greedy best-first assignment: every eligible pair is scored ``description similarity + 0.5 if
    the amounts agree``, and pairs are taken best first (ties in list order) while both items are
    free. Eligible: similarity >= :data:`MATCH_ON_DESCRIPTION`, or >= :data:`MATCH_WITH_AMOUNT`
    with the same amount. Greedy is optimal whenever the right pairs are clearly the most similar,
    which is what invoice lines are; it is O(n² log n) where an exact assignment would be O(n³).
    """
    tol = _as_decimal(tolerance)
    exp = [_item(e) for e in expected]
    out = [_item(g) for g in got]
    candidates: list[tuple[float, int, int]] = []
    for i, e in enumerate(exp):
        for j, g in enumerate(out):
            similarity = SequenceMatcher(None, _description(e), _description(g)).ratio()
            amount = _numbers_match(e.get("amount"), g.get("amount"), tol)
            if similarity >= MATCH_ON_DESCRIPTION or (amount and similarity >= MATCH_WITH_AMOUNT):
                candidates.append((similarity + (0.5 if amount else 0.0), i, j))
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    used_e: set[int] = set()
    used_g: set[int] = set()
    pairs = []
    for _, i, j in candidates:
        if i not in used_e and j not in used_g:
            used_e.add(i)
            used_g.add(j)
            pairs.append((i, j))
    pairs.sort()
    specs = [FieldSpec(name, kind, tolerance=tol if kind == "money" else None)
             for name, kind in ITEM_FIELDS]  # fmt: skip
    right = {
        spec.name: sum(
            1 for i, j in pairs if spec.same(exp[i].get(spec.name), out[j].get(spec.name))
        )
        for spec in specs
    }
    return LineItemMatch(len(exp), len(out), tuple(pairs), right)


# --- the built-in flows ---


def invoice_issues(record: Mapping[str, Any], tolerance: Decimal = MONEY_TOLERANCE) -> list[str]:
    """The issues a record's own values show (:data:`DETECTABLE_ISSUES`): printed amounts that do
    not add up, and no invoice number.

    Read from the values, not from ``validation_issues`` text, so the check does not depend on the
    agent's wording: a record that copied a wrongly printed total shows ``total_mismatch``; one that
    "fixed" it does not.
    """
    issues = []
    if "invoice_number" in record and record["invoice_number"] is None:
        issues.append("no_invoice_number")
    subtotal, tax, total = (parse_decimal(record.get(k)) for k in ("subtotal", "tax", "total"))
    if (
        subtotal is not None
        and tax is not None
        and total is not None
        and abs(subtotal + tax - total) > tolerance
    ):
        issues.append("total_mismatch")
    items = record.get("line_items")
    if subtotal is not None and isinstance(items, list) and items:
        amounts = [parse_decimal(_item(i).get("amount")) for i in items]
        if all(a is not None for a in amounts):
            lines = sum((a for a in amounts if a is not None), Decimal(0))
            if abs(lines - subtotal) > tolerance * len(items):
                issues.append("subtotal_mismatch")
    return issues


def _issue_right(expected: Any, got: Any) -> bool:
    """``issue``: None expects no issue at all, a kind expects that one (among others)."""
    issues = got if isinstance(got, list) else []
    return not issues if expected is None else expected in issues


TICKET_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("category", "enum", values=get_args(TicketCategory)),
    FieldSpec("priority", "enum", values=get_args(TicketPriority)),
    FieldSpec("sentiment", "enum", values=get_args(Sentiment), none_is_answer=False),
    FieldSpec("team", "enum", values=get_args(Team), none_is_answer=False),
    FieldSpec("requires_human", "bool", none_is_answer=False),
)

INVOICE_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("vendor_name", "key"),
    FieldSpec("invoice_number", "key"),
    FieldSpec("issue_date", "date"),
    FieldSpec("due_date", "date"),
    FieldSpec("currency", "enum"),
    FieldSpec("line_items", "line_items"),
    FieldSpec("subtotal", "money"),
    FieldSpec("tax", "money"),
    FieldSpec("total", "money"),
    FieldSpec("issue", read=invoice_issues, compare=_issue_right),
)

register_fields("tickets", TICKET_FIELDS, ("category", "priority", "team", "requires_human"))
register_fields(
    "invoices", INVOICE_FIELDS, ("vendor_name", "invoice_number", "issue_date", "currency", "total")
)


# --- events ---


def rejected(label: Mapping[str, Any]) -> bool:
    """A reviewer's rejection: the answer was wrong, which field is not known."""
    return label.get("verdict") == "rejected" or label.get("fields") is None


def scorable(label: Mapping[str, Any] | None, flow: str) -> bool:
    """Whether a label can decide an event's correctness: a rejection (incorrect), or a label with
    at least one of the flow's correct fields."""
    if label is None:
        return False
    if rejected(label):
        return True
    fields = label["fields"]
    return any(f in fields for f in correct_fields(flow, fields))


def is_correct(
    row: Mapping[str, Any],
    label: Mapping[str, Any],
    *,
    money_tolerance: float | str | Decimal | None = None,
) -> bool:
    """Whether a replay row's answer is right: every correct field the label has is right.

    A rejected label is incorrect; so is a row without a record (a dead letter). The flow is the
    label's (else the row's).
    """
    record = row.get("record")
    if rejected(label) or not isinstance(record, Mapping):
        return False
    flow = str(label.get("flow") or row.get("flow") or "")
    fields: Mapping[str, Any] = label["fields"]
    specs = {s.name: s for s in specs_for(flow, fields, money_tolerance=money_tolerance)}
    return all(
        specs[name].same(fields[name], specs[name].value(record))
        for name in correct_fields(flow, fields)
        if name in fields
    )
