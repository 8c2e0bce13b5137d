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

__all__ = ["InstanceInfo", "InstanceState", "NoCapacity", "Provider", "ProviderError"]


# starting: being provisioned (image pull, container start); running: its container runs;
# failed: will never serve (image pull error, container exited, host offline) - destroy it;
# misconfigured: failed for a reason another machine will not fix (image not found, registry
# login refused) - destroy it and stop renting until a person looks; exited: a local agent
# process that ended; unknown: a state this code does not know, treated as starting with the
# boot deadline as the bound.
InstanceState = Literal["starting", "running", "failed", "misconfigured", "exited", "unknown"]


class InstanceInfo(Struct, frozen=True, kw_only=True):
    provider_id: str
    label: str  # ours, unique per launch: how orphans are recognised
    state: InstanceState
    machine_id: int
    price_per_hour: float
    started_at: float
    gpu_name: str = ""
    detail: str = ""  # the provider's own words on the state (Vast.ai's status_msg), stripped
    interrupted: bool = False  # an interruptible machine the provider stopped: outbid


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
    # True when the list names only machines this process launched (local agent processes,
    # which a restarted controller cannot see): see controller/reconcile.py.
    lists_own_only: bool
    # How long an offer search stays good (Vast.ai limits searches; a local slot frees the
    # moment an agent exits, and a cached "no slot" would rent nothing for that long).
    offers_ttl_s: float

    async def search_offers(self) -> list[Offer]: ...

    async def launch(self, offer: Offer, *, label: str, env: dict[str, str]) -> InstanceInfo:
        """Start one machine. Never retried blindly by callers: a retried create can rent two
        paid machines; reconcile by label instead."""
        ...

    async def list_instances(self, label_prefix: str) -> list[InstanceInfo]: ...

    async def terminate(self, provider_id: str) -> None:
        """Destroy it; a machine that is already gone is success."""
        ...

    async def account_credit(self) -> float | None:
        """The account's remaining credit in dollars, if the provider bills one (its decrease
        is the bill); None when it does not."""
        ...
