"""Batch manifests: one job per line, as JSON Lines or CSV. Pure: reading and checking, no bus.

JSON Lines: each line an object with ``operation`` (``caption``, ``img2vid``, ``add_audio``)
and that operation's fields, e.g. ``{"operation": "caption", "video": "talks/a.mp4", "srt":
"talks/a.srt", "style": {"position": "top"}}``. CSV: a header row naming the same fields;
nested ones as ``style.position`` or ``output.container``; an empty cell leaves a field out.
Either may add ``out`` (the result's file name in the output folder) and ``id`` (a job id of
your own). Blank lines and JSON Lines starting with ``#`` are skipped.

Inputs are ``obj:`` names, http(s) URLs, or local files (relative to the manifest's folder),
which are uploaded. Each line's job id is derived from what the line says (and the size and
modification time of the local files it names), so running the same manifest again finds the
jobs of the first run instead of repeating them; a changed line or file is a new job.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from broker.jobs import OPERATIONS, JobRequest
from broker.subjects import validate_job_id

__all__ = ["INPUT_FIELDS", "ManifestLine", "job_from", "local_inputs", "read_manifest"]

INPUT_FIELDS = ("video", "srt", "image", "audio")  # the fields that name an input


@dataclass(frozen=True)
class ManifestLine:
    number: int  # the line's number in the file (CSV: counting the header)
    operation: str = ""
    fields: dict[str, Any] = field(default_factory=dict)  # the job's fields, inputs as given
    job_id: str = ""
    out: str | None = None
    error: str = ""  # set: this line cannot be a job, and says why

    @property
    def ok(self) -> bool:
        return not self.error


def local_inputs(line: ManifestLine, base: Path) -> dict[str, Path]:
    """The line's inputs that are local files (field -> path)."""
    return {name: base / value for name, value in line.fields.items()
            if name in INPUT_FIELDS and isinstance(value, str)
            and not value.startswith(("obj:", "http://", "https://"))}


def job_from(line: ManifestLine, refs: dict[str, str]) -> JobRequest:
    """The line's job, its local inputs replaced by ``refs`` (field -> ``obj:`` name)."""
    return msgspec.convert({**line.fields, **refs}, OPERATIONS[line.operation],
                           strict=False)  # type: ignore[return-value]


def read_manifest(path: Path) -> list[ManifestLine]:
    """Every line of the manifest, each a job or the reason it is not one."""
    text = path.read_text(encoding="utf-8-sig")
    rows = _csv_rows(text) if path.suffix.lower() == ".csv" else _jsonl_rows(text)
    return [_line(number, row, path.parent) for number, row in rows]


def _jsonl_rows(text: str) -> list[tuple[int, dict[str, Any] | str]]:
    rows: list[tuple[int, dict[str, Any] | str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            rows.append((number, f"not JSON: {exc.msg} at column {exc.colno}"))
            continue
        rows.append((number, value if isinstance(value, dict) else "not a JSON object"))
    return rows


def _csv_rows(text: str) -> list[tuple[int, dict[str, Any] | str]]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        return []
    rows: list[tuple[int, dict[str, Any] | str]] = []
    for row in reader:
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            rows.append((number, f"{len(row)} cells, but the header names {len(header)}"))
            continue
        values: dict[str, Any] = {}
        for name, cell in zip(header, row, strict=False):
            if cell.strip() == "":
                continue
            *parents, leaf = name.strip().split(".")
            target = values
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = cell.strip()
        rows.append((number, values))
    return rows


def _line(number: int, row: dict[str, Any] | str, base: Path) -> ManifestLine:
    if isinstance(row, str):
        return ManifestLine(number, error=row)
    fields = dict(row)
    operation = str(fields.pop("operation", "")).replace("-", "_")
    out = fields.pop("out", None)
    own_id = fields.pop("id", None)
    if operation not in OPERATIONS:
        return ManifestLine(number, error=f"operation {operation or '(none)'!r} is not one of "
                            f"{', '.join(sorted(OPERATIONS))}")
    line = ManifestLine(number, operation, fields, out=str(out) if out else None)
    missing = [f"{name}: no such file {str(p)!r}"
               for name, p in local_inputs(line, base).items() if not p.is_file()]
    if missing:
        return ManifestLine(number, operation, fields, error="; ".join(missing))
    placeholders = {name: "obj:x" for name in local_inputs(line, base)}
    try:
        job_from(line, placeholders)  # the agent's own checks, before anything is sent
        job_id = validate_job_id(str(own_id)) if own_id else _derived_id(line, base)
    except (msgspec.ValidationError, ValueError) as exc:
        return ManifestLine(number, operation, fields, error=str(exc))
    return ManifestLine(number, operation, fields, job_id=job_id, out=line.out)


def _derived_id(line: ManifestLine, base: Path) -> str:
    files = {name: [p.stat().st_size, p.stat().st_mtime_ns]
             for name, p in local_inputs(line, base).items()}
    said = json.dumps([line.operation, line.fields, files], sort_keys=True, default=str)
    return "b" + hashlib.sha256(said.encode()).hexdigest()[:32]
