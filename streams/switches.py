"""Per-tool switches: stop one tool's effects while classification (and every other tool) goes on.

``sluice tool off --tool post_invoice --reason "ledger migration"`` stores the switch in Redis
(hash ``sluice:<app_id>:tools.off``, field: the tool name, value: who, when and why). Every
executor re-reads the hash every ``switch_refresh_s`` (0.5 s by default), so a switch reaches all
of them within about a second.

An action of a switched-off tool is *held*, not dropped: the executor waits on it, leaving its
record unacknowledged, and runs it when the tool is switched back on — so nothing is lost and
the idempotency key still makes it run once. Other records keep flowing until the executor's
in-flight window (``SLUICE_MAX_IN_FLIGHT``) is full of held records; then its consumer lag grows
until ``sluice tool on``. Stopping the executor while actions are held is safe: they were not
acknowledged and are redelivered.

If Redis cannot be read, the last known switches stand (a switch that was off stays off).
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)


class ToolSwitches:
    """The switched-off tools of one deployment, read through a short local cache."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str, refresh_s: float = 0.5) -> None:
        self.redis = redis
        self.key = f"{prefix}:tools.off"
        self.refresh_s = refresh_s
        self._off: dict[str, dict[str, Any]] = {}
        self._read_at = float("-inf")

    async def off(self) -> dict[str, dict[str, Any]]:
        """Switched-off tool → who, when, why; re-read when older than ``refresh_s``."""
        if time.monotonic() - self._read_at >= self.refresh_s:
            try:
                raw = await self.redis.hgetall(self.key)
            except RedisError as exc:
                log.warning("tool.switches_unavailable", error=str(exc))
                return self._off
            self._off = {_text(k): json.loads(v) for k, v in raw.items()}
            self._read_at = time.monotonic()
        return self._off

    async def wait_until_on(self, tool: str, event_id: str) -> float:
        """Return once ``tool`` is on; the seconds it was held (0.0 when it was on)."""
        began = time.monotonic()
        logged = False
        while tool in await self.off():
            if not logged:
                info = self._off.get(tool, {})
                log.warning("tool.held", tool=tool, event_id=event_id, by=info.get("by"),
                            reason=info.get("reason"))  # fmt: skip
                logged = True
            await asyncio.sleep(self.refresh_s)
        held = time.monotonic() - began
        if logged:
            log.info("tool.released", tool=tool, event_id=event_id, held_s=round(held, 3))
        return held

    async def set(self, tool: str, *, on: bool, by: str, reason: str) -> None:
        """Switch ``tool`` on or off for every executor of the deployment."""
        if on:
            await self.redis.hdel(self.key, tool)
        else:
            value = {"by": by, "reason": reason, "at": datetime.now(UTC).isoformat()}
            await self.redis.hset(self.key, tool, json.dumps(value))
        self._read_at = float("-inf")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
