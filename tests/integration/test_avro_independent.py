"""Bytes written by Sluice, decoded by Apache Avro's own implementations — not by our codec.

Java's ``BinaryMessageDecoder`` is the reference for single-object encoding (header, fingerprint,
schema resolution); the Python ``avro`` package decodes the bodies. The Java jars come from Maven
Central through ``tests/java/avro-pom.xml``.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from pathlib import Path

import avro.io
import avro.schema
import pytest
from pydantic import BaseModel

from schemas import codec
from schemas.catalogue import entry
from schemas.records import DeadLetter
from tests.integration.conftest import ROOT
from tests.records import SAMPLES, dead_letter_v1_bytes

AVSC = ROOT / "schemas" / "avro"
JAVA = ROOT / "tests" / "java"


@pytest.fixture(scope="session")
def avro_java() -> Path:
    libs = ROOT / ".local" / "avro-java" / "libs"
    stamp = libs / ".pom-sha256"
    want = hashlib.sha256((JAVA / "avro-pom.xml").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != want:
        subprocess.run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(JAVA / "avro-pom.xml"),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={libs}",
            ],
            check=True,
            timeout=600,
        )
        stamp.write_text(want)
    return libs


def java_decode(libs: Path, schemas: list[Path], records: list[Path]) -> tuple[str, list[dict]]:  # type: ignore[type-arg]
    out = subprocess.run(
        [
            "java",
            "-cp",
            f"{libs}/*",
            str(JAVA / "AvroDecode.java"),
            *map(str, schemas),
            "--",
            *map(str, records),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.splitlines()
    return out[0].removeprefix("fingerprint "), [json.loads(line) for line in out[1:]]


def plain(record: BaseModel) -> dict:  # type: ignore[type-arg]
    """Fields whose Java GenericRecord JSON form equals the Python value (strings, ints, enums)."""
    return {
        k: v
        for k, v in record.model_dump(mode="python").items()
        if isinstance(v, str | int | float) and not isinstance(v, bool)
    }


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_java_decodes_our_bytes(avro_java: Path, tmp_path: Path, record: BaseModel) -> None:
    data = tmp_path / "record.bin"
    data.write_bytes(codec.encode(record))
    fp, decoded = java_decode(avro_java, [AVSC / entry(type(record)).filename], [data])
    assert fp == codec.fingerprint_of(type(record)).hex()  # Java computes the same fingerprint
    assert len(decoded) == 1
    for key, value in plain(record).items():
        assert decoded[0][key] == value, key


def test_java_reads_a_released_v1_record_with_the_current_schema(
    avro_java: Path, tmp_path: Path
) -> None:
    data = tmp_path / "v1.bin"
    data.write_bytes(dead_letter_v1_bytes())
    _, decoded = java_decode(
        avro_java,
        [AVSC / "dead_letter.avsc", AVSC / "released" / "dead_letter.v1.avsc"],
        [data],
    )
    assert decoded[0]["event_id"] == "old"
    assert decoded[0]["retriable"] is False  # the v2 field's default, filled in by Java
    assert codec.decode_as(data.read_bytes(), DeadLetter).retriable is False


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_python_avro_decodes_our_bodies(record: BaseModel) -> None:
    schema = avro.schema.parse((AVSC / entry(type(record)).filename).read_text())
    data = codec.encode(record)
    reader = avro.io.DatumReader(schema, schema)
    decoded = reader.read(avro.io.BinaryDecoder(io.BytesIO(data[codec.SINGLE_OBJECT_HEADER :])))
    assert type(record).model_validate(decoded) == record
