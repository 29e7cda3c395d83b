"""``sluice review ...``: run the service, make tokens, and act on items from a terminal.

The item commands call the service's JSON API (``SLUICE_REVIEW_URL``) with the reviewer's token
(``SLUICE_REVIEW_TOKEN``) and print its JSON answer; a refused request prints the service's error
and exits 1. They are the same operations as the API, with the same checks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from schemas.errors import ConfigError
from streams.settings import Settings


def add_parser(sub: Any) -> None:
    """Add ``review`` and its subcommands to the ``sluice`` parser."""
    r = sub.add_parser("review", help="human review: the service, tokens, and item commands")
    rs = r.add_subparsers(dest="review_command", required=True)
    serve = rs.add_parser("serve", help="run the review service (JSON API) until interrupted")
    serve.add_argument("--flow", action="append", help="a flow to review (default: all)")
    token = rs.add_parser("token", help="make a reviewer token; prints the reviewers-file lines")
    token.add_argument("name")
    password = rs.add_parser(
        "password", help="hash a web password (asked for, or one line on stdin); prints the line"
    )
    password.add_argument("name")
    ls = rs.add_parser("list", help="items, oldest first")
    ls.add_argument("--flow")
    ls.add_argument("--state", choices=["pending", "decided", "all"], default="pending")
    for name, text in [
        ("show", "one item, with its source event"),
        ("claim", "claim an item (renews your own claim)"),
        ("release", "give your claim back"),
        ("confirm", "confirm another reviewer's held decision as the second reviewer"),
    ]:
        rs.add_parser(name, help=text).add_argument("item")
    ap = rs.add_parser("approve", help="the result is right: its actions may run")
    ap.add_argument("item")
    ap.add_argument("--comment")
    ed = rs.add_parser("edit", help="correct fields (validated by the record's schema)")
    ed.add_argument("item")
    ed.add_argument(
        "--set",
        action="append",
        required=True,
        metavar="FIELD=JSON",
        help="a field and its new value as JSON, e.g. team='\"billing\"' (repeatable)",
    )
    ed.add_argument("--comment")
    rj = rs.add_parser("reject", help="the result is wrong: nothing may act on it")
    rj.add_argument("item")
    rj.add_argument("--reason", required=True)


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run one ``sluice review`` subcommand."""
    command = args.review_command
    if command == "serve":
        from streams import logconfig, telemetry
        from streams.flow import select
        from streams.review.api import serve

        logconfig.configure(settings.log_level, settings.log_format)
        telemetry.install(settings, "sluice-review")
        flows = [spec.name for spec in select(args.flow)]
        asyncio.run(serve(settings, flows))
        return 0
    if command == "token":
        from streams.review.auth import new_token, token_digest

        token = new_token()
        print(f"token for {args.name} (give it to them; it is not stored): {token}")
        print(f'\n[reviewers.{args.name}]\ntoken_sha256 = "{token_digest(token)}"')
        return 0
    if command == "password":
        import getpass

        from streams.review.auth import password_hash

        secret = getpass.getpass(f"password for {args.name}: ") if sys.stdin.isatty() else ""
        secret = secret or sys.stdin.readline().rstrip("\n")
        if len(secret) < 8:
            raise ConfigError("a password needs at least 8 characters")
        print(f'[reviewers.{args.name}]\npassword_argon2 = "{password_hash(secret)}"')
        return 0
    if command == "list":
        query = "&".join(f"{k}={v}" for k, v in (("flow", args.flow), ("state", args.state)) if v)
        return _call(settings, "GET", f"/api/items?{query}")
    if command in ("show",):
        return _call(settings, "GET", f"/api/items/{args.item}")
    body: dict[str, Any] = {}
    if command == "approve":
        body = {"comment": args.comment}
    elif command == "edit":
        body = {"changes": _changes(args.set), "comment": args.comment}
    elif command == "reject":
        body = {"reason": args.reason}
    return _call(settings, "POST", f"/api/items/{args.item}/{command}", body)


def _changes(pairs: list[str]) -> dict[str, Any]:
    changes = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep or not field:
            raise ConfigError(f"--set {pair!r}: use FIELD=JSON")
        try:
            changes[field] = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--set {pair!r}: the value is not JSON ({exc})") from exc
    return changes


def _call(settings: Settings, method: str, path: str, body: dict[str, Any] | None = None) -> int:
    if settings.review_token is None:
        raise ConfigError("SLUICE_REVIEW_TOKEN is not set (sluice review token NAME makes one)")
    request = urllib.request.Request(
        settings.review_url.rstrip("/") + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {settings.review_token.get_secret_value()}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            print(json.dumps(json.loads(response.read()), indent=2))
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.read().decode(errors="replace"), file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        raise ConfigError(f"review service at {settings.review_url}: {exc.reason}") from exc
