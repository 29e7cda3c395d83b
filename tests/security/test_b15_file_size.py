"""B15: a document read by path was read whole (``read_bytes``) before any size check.

A path to a huge file (here a sparse one: gigabytes that cost no disk) must be refused from its
size alone, as ``input_too_large``, without reading it into memory.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest

from agents.documents import MAX_FILE_BYTES, _read_allowlisted, load
from schemas.errors import InputTooLarge
from schemas.events import DocumentReceived


def sparse(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


@pytest.mark.parametrize("size", [MAX_FILE_BYTES + 1, 64 * 1024 * 1024])
def test_a_huge_file_is_refused_before_it_is_read(tmp_path: Path, size: int) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    sparse(root / "huge.txt", size)
    event = DocumentReceived(document_id="D-huge", path="huge.txt")
    tracemalloc.start()
    began = time.monotonic()
    try:
        with pytest.raises(InputTooLarge, match=f"file has {size} bytes") as err:
            load(event, root)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.reason == "input_too_large"
    assert peak < 1_000_000, peak  # nothing of the file was read
    assert time.monotonic() - began < 0.5


def test_the_limit_is_inclusive(tmp_path: Path) -> None:
    (tmp_path / "at.txt").write_bytes(b"x" * 100)
    (tmp_path / "over.txt").write_bytes(b"x" * 101)
    assert _read_allowlisted("at.txt", tmp_path, limit=100) == b"x" * 100
    with pytest.raises(InputTooLarge, match="101 bytes; the limit is 100"):
        _read_allowlisted("over.txt", tmp_path, limit=100)
