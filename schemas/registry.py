"""A small client for the Confluent Schema Registry REST API (also served by Apicurio's ccompat
API and Karapace).

Subjects follow Confluent's RecordNameStrategy (``dev.sluice.v1.TicketTriaged``): a record type is
one subject whatever topic it is written to, so the codec needs no topic to encode. Lookups are
cached for the life of the process; ids are immutable in a registry, so the cache never goes stale.
Synchronous on purpose: schemas are registered once at start-up, and an unknown id is fetched once.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from schemas.errors import ConfigError, IncompatibleSchema, UnknownSchema

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryClient:
    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._ids: dict[str, int] = {}  # canonical schema JSON -> id
        self._schemas: dict[int, dict[str, Any]] = {}  # id -> schema

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            if exc.code == 404:
                raise UnknownSchema(f"registry {self.url}{path}: not found: {detail}") from exc
            if exc.code == 409:
                raise IncompatibleSchema(f"registry {self.url}{path} refused: {detail}") from exc
            raise ConfigError(f"registry {self.url}{path}: HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise ConfigError(f"schema registry at {self.url} does not answer: {exc}") from exc

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        """The id of ``schema`` under ``subject``, registering it if new. Idempotent."""
        text = json.dumps(schema, sort_keys=True)
        if text not in self._ids:
            answer = self._call(
                "POST", f"/subjects/{subject}/versions", {"schema": text, "schemaType": "AVRO"}
            )
            self._ids[text] = int(answer["id"])
            self._schemas[int(answer["id"])] = schema
        return self._ids[text]

    def schema(self, schema_id: int) -> dict[str, Any]:
        """The schema with ``schema_id``; :class:`UnknownSchema` if the registry has none."""
        if schema_id not in self._schemas:
            answer = self._call("GET", f"/schemas/ids/{schema_id}")
            self._schemas[schema_id] = json.loads(answer["schema"])
        return self._schemas[schema_id]
