"""Reviewers and their API tokens.

The reviewers file (``SLUICE_REVIEWERS_FILE``, TOML) names each reviewer with the SHA-256 of their
token; the token itself is never stored. ``sluice review token NAME`` makes a token and prints
the lines to add::

    [reviewers.alice]
    token_sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"

Tokens are 256-bit random values, so a fast hash is enough (nothing to guess from a dictionary);
every check compares digests in constant time. Without a reviewers file the service does not
start: there is no anonymous review.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.errors import ConfigError


class Reviewer(BaseModel):
    """One reviewer's credentials."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Reviewers(BaseModel):
    """Every reviewer, by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reviewers: dict[str, Reviewer] = Field(min_length=1)

    def by_token(self, token: str) -> str | None:
        """The reviewer whose token this is, or None. Constant time per reviewer."""
        digest = token_digest(token)
        found = None
        for name, reviewer in self.reviewers.items():
            if hmac.compare_digest(digest, reviewer.token_sha256):
                found = name
        return found


def token_digest(token: str) -> str:
    """The SHA-256 hex digest stored for ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def load_reviewers(path: Path | None) -> Reviewers:
    """Read and validate the reviewers file; a missing or empty one is a configuration error."""
    if path is None:
        raise ConfigError(
            "SLUICE_REVIEWERS_FILE is not set: the review service has no anonymous access "
            "(make one with `sluice review token NAME`)"
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        return Reviewers.model_validate(raw)
    except OSError as exc:
        raise ConfigError(f"reviewers file {path}: cannot read it: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"reviewers file {path}: not valid TOML: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"reviewers file {path}: {problems}") from exc
