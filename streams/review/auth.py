"""Reviewers and their API tokens.

The reviewers file (``SLUICE_REVIEWERS_FILE``, TOML) names each reviewer with the SHA-256 of their
API token and/or the Argon2id hash of their web password; neither secret is stored.
``sluice review token NAME`` and ``sluice review password NAME`` print the lines to add::

    [reviewers.alice]
    token_sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
    password_argon2 = "$argon2id$v=19$m=65536,t=3,p=4$..."

Tokens are 256-bit random values, so a fast hash is enough (nothing to guess from a dictionary);
every check compares digests in constant time. Passwords are chosen by people, so they get a slow,
salted hash (argon2-cffi's defaults). Without a reviewers file the service does not start: there
is no anonymous review.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import tomllib
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.errors import ConfigError, validation_problems

_HASHER = PasswordHasher()
_DUMMY = _HASHER.hash("not a password of anyone's")  # verified against for unknown names


class Reviewer(BaseModel):
    """One reviewer's credentials: an API token, a web password, or both."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    password_argon2: str | None = Field(None, pattern=r"^\$argon2(id|i|d)\$")

    @model_validator(mode="after")
    def _has_a_credential(self) -> Reviewer:
        if self.token_sha256 is None and self.password_argon2 is None:
            raise ValueError("a reviewer needs token_sha256 or password_argon2")
        return self


class Reviewers(BaseModel):
    """Every reviewer, by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reviewers: dict[str, Reviewer] = Field(min_length=1)

    def by_token(self, token: str) -> str | None:
        """The reviewer whose token this is, or None. Constant time per reviewer."""
        digest = token_digest(token)
        found = None
        for name, reviewer in self.reviewers.items():
            if reviewer.token_sha256 and hmac.compare_digest(digest, reviewer.token_sha256):
                found = name
        return found

    def check_password(self, name: str, password: str) -> bool:
        """Whether ``password`` is ``name``'s. An unknown name costs the same hashing time."""
        reviewer = self.reviewers.get(name)
        stored = reviewer.password_argon2 if reviewer else None
        try:
            return _HASHER.verify(stored or _DUMMY, password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False


def token_digest(token: str) -> str:
    """The SHA-256 hex digest stored for ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


def password_hash(password: str) -> str:
    """The Argon2id hash stored for ``password``."""
    return _HASHER.hash(password)


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
        problems = validation_problems(exc)
        raise ConfigError(f"reviewers file {path}: {problems}") from exc
