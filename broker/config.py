"""Configuration from the environment into one frozen Struct per component.

Each field ``foo_bar`` of a config Struct is read from ``<PREFIX>FOO_BAR`` (e.g.
``VIDFLEET_NATS_URL``), converted by msgspec to the field's type, and a bad value fails at start
with the variable's name. Entry points call ``load_config`` once; nothing else reads os.environ.
Secrets use ``Secret`` so a config can be logged: its repr is ``***``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

__all__ = ["ConfigError", "Secret", "load_config"]

T = TypeVar("T", bound=msgspec.Struct)


class ConfigError(ValueError):
    pass


class Secret(str):
    """A string that never prints itself. Use ``.reveal()`` at the one place it is needed."""

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "***"

    def reveal(self) -> str:
        return str.__str__(self)


def load_config(
    cls: type[T],
    *,
    prefix: str = "VIDFLEET_",
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` from ``env`` (default: os.environ) and ``overrides`` (e.g. CLI flags).

    Overrides whose value is None are ignored, so click options can be passed through as-is.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    for field in msgspec.structs.fields(cls):
        var = f"{prefix}{field.name.upper()}"
        if var in env:
            raw[field.name] = env[var]
    for name, value in (overrides or {}).items():
        if value is not None:
            raw[name] = value
    try:
        return msgspec.convert(raw, cls, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(_name_the_variable(str(exc), prefix)) from None


def _dec_hook(type_: type, obj: Any) -> Any:
    if type_ is Secret and isinstance(obj, str):
        return Secret(obj)
    raise NotImplementedError


def _name_the_variable(message: str, prefix: str) -> str:
    # msgspec says "... - at `$.nats_url`"; a user sets VIDFLEET_NATS_URL, so say that.
    head, sep, path = message.rpartition(" - at `$.")
    if not sep:
        return f"bad configuration: {message}"
    field = path.rstrip("`").split(".")[0].split("[")[0]
    return f"bad configuration in {prefix}{field.upper()}: {head}"
