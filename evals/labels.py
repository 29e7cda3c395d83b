"""Label rows: the right answers an eval scores against, from the golden sets and from reviewers.

Two sources know the right answer, and both become one normalised row (``evals/FORMATS.md``,
section 2) so scoring never cares where a label came from:

- the repo's golden sets (:func:`golden_labels`): small, argued item by item, present from day one;
- people's review decisions (:func:`reviewed_labels`): real traffic, growing every day, and the only
  labels that cover what production actually sees.

A reviewer looked at the very event, so where both exist the reviewed label wins (:func:`merge`),
and a later decision on the same event (a second look, a correction of a correction) beats an
earlier one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from evals.documents import load_invoices, load_tickets
from evals.scoring import DETECTABLE_ISSUES, registered, specs_for
from schemas.envelope import ENVELOPE_FIELDS

LABEL_FLOWS = ("tickets", "invoices")
VERDICTS = (None, "approved", "edited", "rejected")
#: ReviewDecision verdicts as label verdicts.
_DECISION_VERDICTS = {"approve": "approved", "correct": "edited", "reject": "rejected"}
#: Invoice answer-key fields that are labels (the rest is rendering input: format, document_id).
INVOICE_LABEL_FIELDS = (
    "vendor_name",
    "invoice_number",
    "issue_date",
    "due_date",
    "currency",
    "line_items",
    "subtotal",
    "tax",
    "total",
)
#: Record keys that describe how a result was made, not what it says: never labels of a flow
#: without declared specs.
_RECORD_META = frozenset(
    {*ENVELOPE_FIELDS, "field_confidence", "validation_issues", "content_type"}
)


def label_row(
    event_id: str,
    flow: str,
    fields: Mapping[str, Any] | None,
    *,
    origin: str = "golden",
    verdict: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One label row in the section-2 shape; ``extra`` keys (``tags``, ``decided_at``) follow."""
    return {
        "event_id": event_id,
        "flow": flow,
        "origin": origin,
        "verdict": verdict,
        "fields": None if fields is None else dict(fields),
        **extra,
    }


def _tags(item: Mapping[str, Any]) -> dict[str, Any]:
    tags = item.get("tags")
    return {"tags": list(tags)} if isinstance(tags, list) else {}


def golden_labels(flow: str) -> list[dict[str, Any]]:
    """The repo's golden set of ``flow`` (``tickets`` or ``invoices``) as label rows.

    Invoices: the answer key's values *as printed*. An ``expect_issue`` invoice is labelled with
    what the page says: for ``total_mismatch`` the printed, wrong total (the right extraction copies
    it and lets validation flag it; a model that "fixes" the total has misread the document), for
    ``no_invoice_number`` a null number. Every invoice also gets an ``issue`` field, its
    ``expect_issue`` (None on most), scored from the record's own values
    (:func:`evals.scoring.invoice_issues`): whether the record carries the problem through to
    review and raises none that is not there. It is reported, not a correct field. An expected
    issue no record can show is left out (not scored) rather than scored wrongly. An item's
    ``tags`` list, when it has one, is kept on the row (``tags``), outside ``fields``.
    """
    if flow == "tickets":
        return [
            label_row(t["event_id"], "tickets", t["expected"], **_tags(t)) for t in load_tickets()
        ]
    if flow == "invoices":
        rows = []
        for inv in load_invoices():
            fields = {name: inv[name] for name in INVOICE_LABEL_FIELDS}
            issue = inv.get("expect_issue")
            if issue is None or issue in DETECTABLE_ISSUES:
                fields["issue"] = issue
            rows.append(label_row(f"ev-{inv['document_id']}", "invoices", fields, **_tags(inv)))
        return rows
    raise ValueError(f"no golden set for flow {flow!r} (there are: {', '.join(LABEL_FLOWS)})")


def _checked(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a label row is a JSON object")
    for key in ("event_id", "flow"):
        if not isinstance(row.get(key), str) or not row[key]:
            raise ValueError(f"{where}: {key!r} must be a non-empty string")
    verdict = row.get("verdict")
    if verdict not in VERDICTS:
        raise ValueError(f"{where}: verdict {verdict!r} is not one of {VERDICTS}")
    fields = row.get("fields")
    if fields is None and verdict != "rejected":
        raise ValueError(f"{where}: only a rejected label may have null fields")
    if fields is not None and not isinstance(fields, dict):
        raise ValueError(f"{where}: 'fields' must be an object or null")
    origin = row.get("origin") or ("golden" if verdict is None else "reviewed")
    return {**row, "origin": origin, "verdict": verdict, "fields": fields}


def read_labels(path: str | Path) -> list[dict[str, Any]]:
    """Label rows from a JSON Lines file (blank lines skipped); a malformed row is an error with
    its line number, never skipped: a silently dropped label would change the score."""
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not JSON: {exc}") from exc
            rows.append(_checked(data, where))
    return rows


def _jsonable(value: Any) -> Any:
    """A record value as its JSON form (money as decimal strings, dates as ISO strings)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def record_fields(flow: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """The labelled fields of a result record: the flow's record fields that the record has
    (derived fields and a ``None`` meaning "not produced" left out), or, for a flow without
    specs, every record key that is not metadata (agent, route, usage, confidence, ...)."""
    if not registered(flow):
        return {k: _jsonable(v) for k, v in record.items() if k not in _RECORD_META}
    fields = {}
    for spec in specs_for(flow):
        if spec.read is not None or spec.name not in record:
            continue
        value = record[spec.name]
        if value is None and not spec.none_is_answer:
            continue
        fields[spec.name] = _jsonable(value)
    return fields


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.isoformat()
    return value if isinstance(value, str) else None


def reviewed_labels(decisions: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Label rows from decoded ``ReviewDecision`` dicts (``record``: the decided record as a dict,
    None for a rejection), in decision order.

    - approve → ``approved``: the record's fields as they are;
    - correct → ``edited``: the corrected record's fields;
    - reject → ``rejected``: ``fields`` null (the answer was wrong; which field is not known).

    Rows carry ``decided_at`` so :func:`merge` can keep the latest decision. An approval or
    correction without its record (written before decisions carried one) says nothing about the
    fields and gives no row.
    """
    rows = []
    for d in decisions:
        verdict = _DECISION_VERDICTS.get(str(d.get("verdict")), d.get("verdict"))
        if verdict not in ("approved", "edited", "rejected"):
            raise ValueError(f"{d.get('event_id')}: unknown review verdict {d.get('verdict')!r}")
        flow = str(d["flow"])
        record = d.get("record")
        fields: dict[str, Any] | None
        if verdict == "rejected":
            fields = None
        elif record is None:
            continue
        elif isinstance(record, Mapping):
            fields = record_fields(flow, record)
        else:
            raise ValueError(f"{d['event_id']}: decode the decision's record to a dict first")
        decided_at = _iso(d.get("decided_at"))
        rows.append(
            label_row(
                d["event_id"],
                flow,
                fields,
                origin="reviewed",
                verdict=verdict,
                decided_at=decided_at,
            )
        )
    return rows


def _when(row: Mapping[str, Any]) -> datetime | None:
    text = row.get("decided_at")
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _wins(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    new_reviewed, old_reviewed = new.get("origin") == "reviewed", old.get("origin") == "reviewed"
    if new_reviewed != old_reviewed:
        return new_reviewed
    new_at, old_at = _when(new), _when(old)
    if new_reviewed and new_at is not None and old_at is not None:
        return new_at >= old_at
    return True  # same origin, no times to compare: the later in the input wins


def merge(*label_lists: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One label per (flow, event_id): a reviewed label beats a golden one; among reviewed ones
    the latest ``decided_at`` wins (equal or missing times: the one given later); among others the
    one given later. Rows keep the order in which their event first appeared."""
    chosen: dict[tuple[str, str], dict[str, Any]] = {}
    for labels in label_lists:
        for row in labels:
            key = (str(row.get("flow")), str(row["event_id"]))
            if key not in chosen or _wins(row, chosen[key]):
                chosen[key] = dict(row)
    return list(chosen.values())
