"""Readers for the deployment files, for tests/test_deploy_files.py: no YAML library is
installed (and none is added for this), so compose.yml is read by ``read_compose``, which
takes only the block-style subset the file is written in and refuses anything else (flow
collections, anchors, multi-line scalars, escapes, mappings inside sequences) rather than
misread it; systemd units by ``read_unit``; nats-server.conf's paths by ``nats_conf_paths``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

__all__ = ["nats_conf_paths", "read_compose", "read_unit", "seconds"]

_KEY = re.compile(r"([A-Za-z0-9_.-]+):(?:[ ]+(.*))?")


def read_compose(text: str) -> dict[str, Any]:
    """Mappings to dicts, sequences to lists, every scalar a str, an empty value None."""
    lines: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw:
            raise ValueError(f"line {number}: a tab")
        stripped = raw.strip()
        if stripped and not stripped.startswith("#"):
            lines.append((len(raw) - len(raw.lstrip(" ")), stripped))
    value, end = _block(lines, 0, 0)
    if end != len(lines) or not isinstance(value, dict):
        raise ValueError(f"unreadable from {lines[end][1]!r}")
    return value


def _block(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[Any, int]:
    if lines[i][1].startswith("- "):
        items = []
        while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
            items.append(_scalar(lines[i][1][2:]))
            i += 1
        return items, i
    mapping: dict[str, Any] = {}
    while i < len(lines) and lines[i][0] == indent:
        match = _KEY.fullmatch(lines[i][1])
        if match is None or match.group(1) in mapping:
            raise ValueError(f"not a new `key: value` line: {lines[i][1]!r}")
        key, rest = match.group(1), match.group(2)
        i += 1
        if rest:
            mapping[key] = _scalar(rest)
        elif i < len(lines) and (lines[i][0] > indent or (
                lines[i][0] == indent and lines[i][1].startswith("- "))):
            mapping[key], i = _block(lines, i, lines[i][0])
        else:
            mapping[key] = None
    if i < len(lines) and lines[i][0] > indent:
        raise ValueError(f"indented under nothing: {lines[i][1]!r}")
    return mapping, i


def _scalar(text: str) -> str:
    text = text.strip()
    if text[:1] in "\"'":
        end = text.find(text[0], 1)
        rest = text[end + 1:].strip() if end > 0 else "?"
        if end < 0 or "\\" in text[:end] or (rest and not rest.startswith("#")):
            raise ValueError(f"a quoted scalar this reader does not take: {text!r}")
        return text[1:end]
    text = text.split(" #", 1)[0].rstrip()
    if text[:1] in set("[]{}&*!|>%@`") or ": " in text or text.endswith(":"):
        raise ValueError(f"outside the block subset: {text!r}")
    return text


def read_unit(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` to its values in order (a key may repeat)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if not sep or line.endswith("\\"):
            raise ValueError(f"{path.name}: not a `Key=value` line: {line!r}")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def nats_conf_paths(text: str, conf_path: str) -> dict[str, str]:
    """The files and directories deploy/nats-server.conf names, absolute (its include is
    resolved from the config file's directory, as nats-server does)."""
    found = {name: re.search(rf'^\s*{name}:?\s+"([^"]+)"', text, re.M)
             for name in ("include", "store_dir", "cert_file", "key_file")}
    paths = {name: m.group(1) for name, m in found.items() if m is not None}
    if len(paths) != len(found):
        raise ValueError(f"nats-server.conf lacks {sorted(set(found) - set(paths))}")
    paths["include"] = str(Path(conf_path).parent / paths["include"])
    return paths


def seconds(text: str) -> float:
    """``30s``, ``2m``, ``90`` (systemd's and compose's durations, the forms used here)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m|min)?", text.strip())
    if match is None:
        raise ValueError(f"not a duration this reads: {text!r}")
    return float(match.group(1)) * (60 if match.group(2) in ("m", "min") else 1)
