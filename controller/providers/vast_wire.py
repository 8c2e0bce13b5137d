"""Vast.ai's JSON as we send and read it: the offer search query, the create body, small
Structs holding only the fields the provider uses, and what an instance's status fields mean for us
(shared/reference/vastai-api.md §2, §4.5, §7.3-7.4).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import msgspec

from broker.tls import is_tls_only
from controller.policy import Offer
from controller.providers.base import InstanceInfo, InstanceState, ProviderError
from controller.ranking import has_nvenc

if TYPE_CHECKING:
    from controller.providers.vast import VastConfig

__all__ = ["VastAck", "VastCreated", "VastInstance", "VastOffer", "VastOffers", "VastPage",
           "VastSingle", "VastUser", "create_body", "instance_info", "instance_state", "offer_of",
           "search_query"]

_MAX_LABEL_CHARS = 256
_MAX_ENV_VALUE_CHARS = 256
_NO_NVENC_NAMES = ("A100 PCIE", "A100 SXM4", "A100X", "A800 PCIE", "A30", "H100 PCIE",
                   "H100 SXM", "H100 NVL", "H200", "H200 NVL", "GH200 SXM", "B200")


class VastOffer(msgspec.Struct):
    id: int
    machine_id: int | None = None
    gpu_name: str | None = None
    gpu_ram: float | None = None
    dph_total: float | None = None
    reliability: float | None = None
    inet_down: float | None = None
    cuda_max_good: float | None = None
    min_bid: float | None = None  # per GPU, $/h: the lowest bid an interruptible rent may make
    storage_total_cost: float | None = None  # $/h for allocated_storage


class VastOffers(msgspec.Struct):
    offers: list[VastOffer] = []


class VastCreated(msgspec.Struct):
    new_contract: int


class VastInstance(msgspec.Struct):
    id: int
    label: str | None = None
    actual_status: str | None = None
    intended_status: str | None = None
    next_state: str | None = None
    status_msg: str | None = None
    machine_id: int | None = None
    gpu_name: str | None = None
    dph_total: float | None = None
    start_date: float | None = None
    is_bid: bool | None = None


class VastPage(msgspec.Struct):
    instances: list[VastInstance] = []
    next_token: str | None = None


class VastSingle(msgspec.Struct):
    instances: VastInstance | None = None


class VastAck(msgspec.Struct):
    success: bool | None = None


class VastUser(msgspec.Struct):
    credit: float | None = None


# A registry or image that refuses or does not exist: another machine will not fix it.
_MISCONFIGURED = re.compile(
    r"pull access denied|repository does not exist|manifest unknown|manifest for \S+ not found"
    r"|requested access to the resource is denied|unauthorized|authentication required"
    r"|no such image|invalid reference format")
# The official self-test's fail-fast tokens for a container that is not up yet.
_ERROR_TOKENS = ("error", "failed", "failure", "exception", "traceback", "oci runtime",
                 "permission denied")
_PENDING = frozenset({"", "created", "loading", "rebooting", "restarting"})
_DEAD = frozenset({"exited", "stopped", "unknown", "offline", "frozen"})


def instance_state(actual_status: str | None, intended_status: str | None,
                   next_state: str | None, status_msg: str | None) -> InstanceState:
    """Vast.ai's words for an instance, as one of ours. Pure. First match wins:

    - status_msg names a refused or missing image/registry      -> misconfigured
    - next_state "unloaded" (a destroy is under way)            -> failed
    - actual exited/stopped/unknown/offline/frozen, or intended
      stopped (e.g. "created" + stopped after an OCI failure)   -> failed
    - actual running                                            -> running
    - actual null/created/loading/rebooting/restarting          -> starting, or failed when
      status_msg carries an error token (a pull that timed out, an OCI error)
    - anything else                                             -> unknown

    No grace period for offline/unknown hosts: the mapping is stateless, and the controller,
    which sees the agent's heartbeats, owns any patience."""
    actual = (actual_status or "").strip().lower()
    intended = (intended_status or "").strip().lower()
    msg = (status_msg or "").strip().lower()
    if _MISCONFIGURED.search(msg):
        return "misconfigured"
    if (next_state or "").strip().lower() == "unloaded":
        return "failed"  # being destroyed
    if actual in _DEAD or intended == "stopped":
        return "failed"
    if actual == "running":
        return "running"
    if actual in _PENDING:
        return "failed" if any(token in msg for token in _ERROR_TOKENS) else "starting"
    return "unknown"


def search_query(config: VastConfig) -> dict[str, Any]:
    """The body of ``POST /bundles/``: real numbers (the server coerces strings, but we need
    not rely on it), ``allocated_storage`` = our disk so ``dph_total`` is the real price."""
    c = config
    query: dict[str, Any] = {
        "rentable": {"eq": True}, "rented": {"eq": False}, "num_gpus": {"eq": c.num_gpus},
        "gpu_ram": {"gte": c.min_gpu_ram_mb}, "reliability": {"gte": c.min_reliability},
        "inet_down": {"gte": c.min_inet_down_mbps}, "cuda_max_good": {"gte": c.min_cuda},
        "dph_total": {"lte": c.max_price_per_hour},
        "order": [["dph_total", "asc"], ["reliability", "desc"]],
        "type": "bid" if c.interruptible else "on-demand",
        "limit": c.offer_limit, "allocated_storage": c.disk_gb}
    if c.verified:
        query["verified"] = {"eq": True}
    if c.gpu_names:
        query["gpu_name"] = {"in": list(c.gpu_names)}
    else:
        query["gpu_name"] = {"notin": list(_NO_NVENC_NAMES)}
    return query


def create_body(config: VastConfig, label: str, env: dict[str, str],
                bid_per_hour: float | None = None) -> dict[str, Any]:
    """The body of ``PUT /asks/<offer>/``; ``bid_per_hour`` set: an interruptible rent at
    that per-machine bid (the offer's own, ``Offer.bid_per_hour``). Refused (not retryable)
    when the machine's ``VIDFLEET_NATS_URL`` is missing or not ``tls://`` for every server, unless
    ``allow_plaintext_agent_url``: the machine is on someone else's network, and a plaintext
    connection hands its credentials and our jobs to whoever sits in between."""
    if not label or len(label) > _MAX_LABEL_CHARS:
        raise ProviderError(f"label must be 1..{_MAX_LABEL_CHARS} characters", retryable=False)
    if not config.allow_plaintext_agent_url and not is_tls_only(env.get("VIDFLEET_NATS_URL", "")):
        raise ProviderError("env VIDFLEET_NATS_URL must be tls:// for every server: a rented "
                            "machine is never given a plaintext URL (allow_plaintext_agent_url "
                            "is off)", retryable=False)
    env = {**env, "VIDFLEET_AGENT_ID": label}
    for key, value in env.items():
        if len(value) > _MAX_ENV_VALUE_CHARS:  # name the variable, never the value
            raise ProviderError(f"env {key} is longer than {_MAX_ENV_VALUE_CHARS} "
                                "characters, Vast.ai's limit", retryable=False)
    c = config
    body: dict[str, Any] = {
        "client_id": "me", "image": c.image, "disk": c.disk_gb, "label": label,
        "env": env, "runtype": c.runtype, "onstart": c.onstart, "cancel_unavail": True,
        "target_state": "running"}
    if c.runtype == "args":
        body["args"] = list(c.args)
    if c.interruptible != (bid_per_hour is not None):
        raise ProviderError("an interruptible config rents only offers with a bid, and an "
                            "on-demand one never bids", retryable=False)
    if bid_per_hour is not None:
        body["price"] = bid_per_hour
    return body


def offer_of(o: VastOffer, config: VastConfig) -> Offer | None:
    """A search result as an offer we could rent; None when it is unpriced, unnamed, has no
    NVENC or an excluded name, or (interruptible) has no bid to make or no price to count.
    An interruptible offer's bid is its own minimum times 1 + ``bid_margin``, and its price
    that bid plus the storage: what the machine bills."""
    name = (o.gpu_name or "").strip()
    excluded = [n.upper() for n in config.excluded_gpu_names]  # the operator's, as written
    if (o.dph_total is None or not name or not has_nvenc(name)
            or any(bad in name.upper() for bad in excluded)):
        return None
    price, bid = o.dph_total, None
    if config.interruptible:
        if not o.min_bid or o.storage_total_cost is None:
            return None
        bid = round(min(128.0, max(0.001, o.min_bid * config.num_gpus
                                   * (1 + config.bid_margin))), 4)
        price = bid + o.storage_total_cost
    return Offer(offer_id=o.id, machine_id=o.machine_id or 0, gpu_name=name,
                 gpu_ram_mb=int(o.gpu_ram or 0), price_per_hour=price,
                 reliability=o.reliability or 0.0, inet_down_mbps=o.inet_down or 0.0,
                 cuda_max_good=o.cuda_max_good or 0.0, bid_per_hour=bid)


def instance_info(row: VastInstance, *, now: float) -> InstanceInfo:
    """A listed instance in our words; ``now`` stands in for a missing start date."""
    return InstanceInfo(
        provider_id=str(row.id), label=(row.label or "").strip(),
        state=instance_state(row.actual_status, row.intended_status, row.next_state,
                             row.status_msg),
        machine_id=row.machine_id or 0, price_per_hour=row.dph_total or 0.0,
        started_at=row.start_date or now, gpu_name=(row.gpu_name or "").strip(),
        detail=(row.status_msg or "").strip() or (row.actual_status or "").strip(),
        # Outbid: an interruptible instance Vast.ai stopped (we never stop, we destroy).
        interrupted=bool(row.is_bid) and "stopped" in (
            (row.actual_status or "").strip().lower(),
            (row.intended_status or "").strip().lower()))
