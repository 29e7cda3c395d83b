"""Local target systems for the built-in tools: a webhook receiver and an SMTP server.

``python -m agents.sinks --state DIR`` (``make up`` starts it) runs both in one process:

- **webhook** (HTTP, default port 8095): ``POST /hooks/<name>`` stores every request it gets —
  duplicates included, so they can be counted — with its ``Idempotency-Key`` header;
  ``GET /hooks/<name>/<key>`` answers 200 if a request with that key arrived, 404 if not (what a
  tool's ``reconcile`` asks); ``GET /health``.
- **SMTP** (aiosmtpd, default port 8025): stores every message it accepts, with its Message-ID.

Both write to SQLite files in DIR (``webhook.db``, ``mail.db``), which ``make chaos`` and the tests
count: effects are counted where they land, not where Sluice says it sent them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import sqlite3
import sys
from datetime import UTC, datetime
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller

WEBHOOK_SCHEMA = """CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY, hook TEXT NOT NULL, idempotency_key TEXT, body TEXT NOT NULL,
    received_at TEXT NOT NULL)"""
MAIL_SCHEMA = """CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY, message_id TEXT, mail_from TEXT NOT NULL, rcpt_to TEXT NOT NULL,
    subject TEXT, body TEXT NOT NULL, received_at TEXT NOT NULL)"""


def connect(path: Path, schema: str) -> sqlite3.Connection:
    """A connection to one sink's store (created with its table if missing)."""
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(schema)
    return db


def webhook_app(store: Path) -> web.Application:
    """The webhook receiver's aiohttp application, storing into ``store``."""
    db = connect(store, WEBHOOK_SCHEMA)

    async def receive(request: web.Request) -> web.Response:
        body = await request.text()
        db.execute(
            "INSERT INTO requests (hook, idempotency_key, body, received_at) VALUES (?, ?, ?, ?)",
            (
                request.match_info["hook"],
                request.headers.get("Idempotency-Key"),
                body,
                datetime.now(UTC).isoformat(),
            ),
        )
        return web.json_response({"received": True}, status=202)

    async def lookup(request: web.Request) -> web.Response:
        found = db.execute(
            "SELECT id, received_at FROM requests WHERE hook = ? AND idempotency_key = ? "
            "ORDER BY id LIMIT 1",
            (request.match_info["hook"], request.match_info["key"]),
        ).fetchone()
        if found is None:
            return web.json_response({"found": False}, status=404)
        return web.json_response({"found": True, "request_id": found[0], "received_at": found[1]})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hooks/{hook}", receive)
    app.router.add_get("/hooks/{hook}/{key}", lookup)
    app.router.add_get("/health", health)
    app.on_cleanup.append(lambda _: _close(db))
    return app


async def _close(db: sqlite3.Connection) -> None:
    db.close()


class MailStore:
    """aiosmtpd handler: every accepted message becomes a row."""

    def __init__(self, store: Path) -> None:
        self.store = store
        connect(store, MAIL_SCHEMA).close()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=default_policy)
        body = message.get_body(("plain",))
        with contextlib.closing(connect(self.store, MAIL_SCHEMA)) as db:
            db.execute(
                "INSERT INTO messages (message_id, mail_from, rcpt_to, subject, body, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    message.get("Message-ID"),
                    envelope.mail_from,
                    ",".join(envelope.rcpt_tos),
                    message.get("Subject"),
                    body.get_content() if body is not None else "",
                    datetime.now(UTC).isoformat(),
                ),
            )
        return "250 Message accepted for delivery"


def message_seen(store: Path, message_id: str) -> bool:
    """Whether the SMTP sink stored a message with ``message_id`` (the mail tool's reconcile)."""
    if not store.exists():
        return False
    with contextlib.closing(connect(store, MAIL_SCHEMA)) as db:
        found = db.execute("SELECT 1 FROM messages WHERE message_id = ?", (message_id,))
        return found.fetchone() is not None


async def serve(state: Path, http_port: int, smtp_port: int) -> None:
    """Run both sinks until cancelled (``state`` must exist)."""
    smtp = Controller(MailStore(state / "mail.db"), hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    runner = web.AppRunner(webhook_app(state / "webhook.db"))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    print(f"sinks: webhook http://127.0.0.1:{http_port}, smtp 127.0.0.1:{smtp_port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        smtp.stop()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.sinks", description=__doc__)
    parser.add_argument("--state", type=Path, default=Path(".local/sinks"))
    parser.add_argument("--http-port", type=int, default=8095)
    parser.add_argument("--smtp-port", type=int, default=8025)
    args = parser.parse_args(argv)
    args.state.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.state, args.http_port, args.smtp_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
