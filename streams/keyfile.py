"""Secret keys kept in a private file, for the embedded defaults (one machine, no secret store).

The review service's session key and the decision-signing key come from settings in production.
Without one, a process reads the key from a file, creating it on first use. Two processes starting
at once must agree on one key, and no one else may read it, so the file is written aside with mode
0600, hard-linked into place (only the first link wins), and refused when its mode lets group or
others read it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import structlog

from schemas.errors import ConfigError

log = structlog.get_logger(__name__)


def private_key_file(path: Path, make: Callable[[], str]) -> str:
    """The text of the key file at ``path``; created with ``make()`` (mode 0600) if missing."""
    try:
        return _read_private(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(make() + "\n")
            with contextlib.suppress(FileExistsError):  # another process made it first: theirs
                os.link(aside, path)
                log.info("keyfile.created", path=str(path))
        finally:
            aside.unlink(missing_ok=True)
    except OSError as exc:
        raise ConfigError(f"key file {path}: cannot create it: {exc}") from exc
    return _read_private(path)


def _read_private(path: Path) -> str:
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"key file {path} must be private to its owner (chmod 600 {path})")
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"key file {path}: cannot read it: {exc}") from exc
