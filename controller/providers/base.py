"""The provider interface: a few flat, idempotent operations, and one error family.

Every provider (``local`` subprocesses, ``vast`` rented GPUs) passes the same contract tests.
``list_instances`` is how the controller learns what exists; it must never answer "none"
when it does not know (raise instead): reading an outage as an empty fleet would rent
duplicates of every machine.
"""

from __future__ import annotations

from typing import Literal, Protocol

from msgspec import Struct

from controller.policy import Offer

__all__ = ["InstanceInfo", "NoCapacity", "Provider", "ProviderError"]


class InstanceInfo(Struct, frozen=True, kw_only=True):
    provider_id: str
    label: str  # ours, unique per launch: how orphans are recognised
    state: Literal["starting", "running", "exited", "unknown"]
    machine_id: int
    price_per_hour: float
    started_at: float


class ProviderError(Exception):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class NoCapacity(ProviderError):
    """The offer is gone or nothing fits: try another offer, not the same one again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class Provider(Protocol):
    name: str

    async def search_offers(self) -> list[Offer]: ...

    async def launch(self, offer: Offer, *, label: str, env: dict[str, str]) -> InstanceInfo:
        """Start one machine. Never retried blindly by callers: a retried create can rent two
        paid machines; reconcile by label instead."""
        ...

    async def list_instances(self, label_prefix: str) -> list[InstanceInfo]: ...

    async def terminate(self, provider_id: str) -> None:
        """Destroy it; a machine that is already gone is success."""
        ...
