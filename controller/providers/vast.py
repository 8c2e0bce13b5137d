"""The Vast.ai provider: rent a GPU from an offer, find it again by label, destroy it for sure.

Money is at stake in both directions. A create that is retried after its answer was lost rents
a second machine (an offer can be rented once, so the retry fails while the first one bills),
so ``launch`` sends exactly one create and, when the outcome is unknown, looks its unique label
up and adopts what it finds. A list that fails must raise, never answer "no instances": the
controller would rent a duplicate of every machine. A destroy is verified by reading the
instance back, and repeated with backoff until it is gone.

All HTTP goes through ``vast_http.VastHttp``; the vendor's JSON is decoded into the small
Structs of ``vast_wire``, holding only the fields read here.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
from loguru import logger

from broker.config import ConfigError, Secret
from controller.policy import Offer
from controller.providers.base import InstanceInfo, NoCapacity, ProviderError
from controller.providers.vast_http import VastError, VastHttp
from controller.providers.vast_wire import (
    VastAck,
    VastCreated,
    VastInstance,
    VastOffers,
    VastPage,
    VastSingle,
    VastUser,
    create_body,
    instance_info,
    instance_state,
    offer_of,
    search_query,
)

if TYPE_CHECKING:
    from controller.config import ControllerConfig

__all__ = ["DEFAULT_MIN_INTERVAL_S", "VastConfig", "VastProvider", "instance_state",
           "provider_from_config"]

# Client-side pacing per endpoint, in seconds between calls; the server's documented
# thresholds (create 4.5, destroy 3.0, show 2.0, list 1.0, search about 10 a minute).
DEFAULT_MIN_INTERVAL_S = {"create": 4.5, "destroy": 3.0, "show": 2.0, "list": 1.0,
                          "search": 6.0, "user": 1.0}
# Vast.ai's spellings of GPUs without NVENC, excluded server-side so a page of offers is not
# filled with them; controller/ranking.py's has_nvenc (whole words of the name, so an RTX
# A1000 is not taken for an A100) is the authority, checked again client-side.
_RUNTYPE_TOKENS = frozenset({"args", "ssh", "ssh_proxy", "ssh_direc", "ssh_direct", "jupyter",
                             "jupyter_proxy", "jupyter_direc", "jupyter_direct"})
_PAGE_LIMIT = 25  # the v1 list's maximum page


class VastConfig(msgspec.Struct, frozen=True, kw_only=True):
    api_key: Secret
    image: str
    base_url: str = "https://console.vast.ai"
    disk_gb: float = 16.0
    # "args" runs the image as is: ``onstart`` is then the entrypoint and ``args`` its
    # arguments. With an ssh/jupyter runtype ``onstart`` is a startup script instead.
    runtype: str = "args"
    onstart: str = "python"
    args: tuple[str, ...] = ("-m", "gpu_agent")
    gpu_names: tuple[str, ...] = ()  # exact Vast.ai names to rent; empty: any with NVENC
    excluded_gpu_names: tuple[str, ...] = ()  # name fragments never rented (case-insensitive)
    min_gpu_ram_mb: int = 8000
    min_reliability: float = 0.95
    min_inet_down_mbps: float = 100.0
    min_cuda: float = 11.0
    max_price_per_hour: float = 1.0
    verified: bool = True
    num_gpus: int = 1
    # Interruptible: each offer is rented at its own minimum bid times 1 + bid_margin (a
    # machine-wide fixed bid overpays the cheap ones and is outbid on the dear ones).
    interruptible: bool = False
    bid_margin: float = 0.1
    # UNSAFE when True: a machine may be given a plaintext VIDFLEET_NATS_URL (tests, private
    # networks). False: a create whose env's URL is not tls:// for every server is refused.
    allow_plaintext_agent_url: bool = False
    offer_limit: int = 64
    request_timeout_s: float = 30.0
    max_retries: int = 4  # per idempotent call, after the first attempt
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 30.0
    min_interval_s: dict[str, float] = msgspec.field(
        default_factory=lambda: dict(DEFAULT_MIN_INTERVAL_S))
    destroy_attempts: int = 8  # DELETE + read back, until the instance is gone
    adopt_lookups: int = 3  # label lookups after an ambiguous create
    max_list_pages: int = 400  # 10 000 instances: more means a broken cursor

    def __post_init__(self) -> None:
        if self.disk_gb < 8:
            raise ValueError("disk_gb must be at least 8 (Vast.ai's minimum)")
        if not 0 <= self.bid_margin <= 10:
            raise ValueError("bid_margin must be within 0..10")
        if not set(self.runtype.split()) <= _RUNTYPE_TOKENS or not self.runtype.strip():
            raise ValueError(f"runtype {self.runtype!r} is not one Vast.ai accepts")


class VastProvider:
    lists_own_only = False
    offers_ttl_s = 30.0  # searches are rate-limited (about ten a minute)
    name = "vast"

    def __init__(self, config: VastConfig, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 jitter: Callable[[], float] = random.random) -> None:
        self._config = config
        self._clock = clock
        self._http = VastHttp(
            base_url=config.base_url, api_key=config.api_key,
            timeout_s=config.request_timeout_s, max_retries=config.max_retries,
            backoff_base_s=config.backoff_base_s, backoff_cap_s=config.backoff_cap_s,
            min_interval_s=config.min_interval_s, transport=transport, clock=clock,
            sleep=sleep, jitter=jitter)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def search_offers(self) -> list[Offer]:
        found = await self._http.call("POST", "/api/v0/bundles/", endpoint="search",
                                      idempotent=True, response_type=VastOffers,
                                      body=search_query(self._config))
        return [offer for o in found.offers
                if (offer := offer_of(o, self._config)) is not None]

    async def launch(self, offer: Offer, *, label: str, env: dict[str, str]) -> InstanceInfo:
        """Rent ``offer`` once. An answer we did not get (timeout, dropped connection, 5xx, an
        unreadable 200) is settled by looking ``label`` up, never by sending again: a second
        create would bill a second machine."""
        body = create_body(self._config, label, env, offer.bid_per_hour)
        try:
            created = await self._http.call("PUT", f"/api/v0/asks/{offer.offer_id}/",
                                            endpoint="create", idempotent=False,
                                            response_type=VastCreated, body=body)
        except VastError as exc:
            # Creates are never re-sent, so no_such_ask always means someone else has it.
            if exc.kind in ("offer_gone", "not_found"):
                raise NoCapacity(f"offer {offer.offer_id} is gone: {exc}") from exc
            if exc.sent and exc.kind in ("unavailable", "bad_response"):
                return await self._adopt(label, exc)
            raise
        logger.bind(instance_id=str(created.new_contract)).info(
            "vast instance created from offer {} on machine {} at {:.3f}/h",
            offer.offer_id, offer.machine_id, offer.price_per_hour)
        return InstanceInfo(provider_id=str(created.new_contract), label=label,
                            state="starting", machine_id=offer.machine_id,
                            price_per_hour=offer.price_per_hour, started_at=self._clock(),
                            gpu_name=offer.gpu_name)

    async def list_instances(self, label_prefix: str) -> list[InstanceInfo]:
        """Every instance whose label starts with ``label_prefix`` (the API filters labels
        by equality only, so the prefix is applied here). Raises when it cannot know."""
        rows = await self._list_rows({})
        return [self._info(row) for row in rows
                if (row.label or "").strip().startswith(label_prefix)]

    async def terminate(self, provider_id: str) -> None:
        """DELETE, then read back; repeat with backoff until it is gone. An instance left
        behind keeps billing storage (and GPU) until someone notices."""
        if not provider_id.isdigit():
            raise ProviderError(f"not a Vast.ai instance id: {provider_id!r}", retryable=False)
        log = logger.bind(instance_id=provider_id)
        for attempt in range(self._config.destroy_attempts):
            if attempt:
                await self._http.sleep(self._http.backoff_s(attempt - 1))
            try:
                await self._http.call("DELETE", f"/api/v0/instances/{provider_id}/",
                                      endpoint="destroy", idempotent=True, response_type=VastAck,
                                      body={})
            except VastError as exc:
                if exc.kind != "not_found":  # not found: already gone, or going
                    raise
            if await self._gone(provider_id):
                log.info("vast instance destroyed")
                return
            log.warning("vast instance still present after destroy {}", attempt + 1)
        raise VastError(f"vast instance {provider_id} still exists after "
                        f"{self._config.destroy_attempts} destroys", kind="unavailable")

    async def account_credit(self) -> float:
        """The account's remaining credit in dollars (at zero Vast.ai stops every instance)."""
        user = await self._http.call("GET", "/api/v0/users/current", endpoint="user",
                                     idempotent=True, response_type=VastUser)
        return user.credit or 0.0

    async def _adopt(self, label: str, cause: VastError) -> InstanceInfo:
        for attempt in range(self._config.adopt_lookups):
            if attempt:
                await self._http.sleep(self._http.backoff_s(attempt - 1))
            try:
                rows = await self._list_rows({"label": {"eq": label}})
            except VastError as exc:
                raise VastError(f"vast create is ambiguous ({cause}) and looking up label "
                                f"{label!r} failed ({exc}): it may exist and bill",
                                kind="ambiguous") from exc
            if rows:
                info = self._info(min(rows, key=lambda row: row.id))
                logger.bind(instance_id=info.provider_id).warning(
                    "vast create answer lost ({}); adopted the instance labelled {}",
                    cause, label)
                return info
        raise VastError(f"vast create is ambiguous ({cause}): nothing labelled {label!r} after "
                        f"{self._config.adopt_lookups} lookups; listing by label prefix will "
                        "show it if it appears", kind="ambiguous") from cause

    async def _list_rows(self, select_filters: dict[str, Any]) -> list[VastInstance]:
        rows: dict[int, VastInstance] = {}
        token: str | None = None
        for _ in range(self._config.max_list_pages):
            params: dict[str, Any] = {"select_filters": select_filters,
                                      "order_by": [{"col": "id", "dir": "asc"}],
                                      "limit": _PAGE_LIMIT}
            if token:
                params["after_token"] = token
            page = await self._http.call("GET", "/api/v1/instances/", endpoint="list",
                                         idempotent=True, response_type=VastPage, params=params)
            rows.update((row.id, row) for row in page.instances)
            token = page.next_token
            if not token:
                return list(rows.values())
        raise VastError(f"vast list: more than {self._config.max_list_pages} pages",
                        kind="bad_response")

    async def _gone(self, provider_id: str) -> bool:
        try:
            single = await self._http.call("GET", f"/api/v0/instances/{provider_id}/",
                                           endpoint="show", idempotent=True,
                                           response_type=VastSingle, params={"owner": "me"})
        except VastError as exc:
            if exc.kind == "not_found":
                return True
            raise
        return single.instances is None

    def _info(self, row: VastInstance) -> InstanceInfo:
        return instance_info(row, now=self._clock())


def provider_from_config(config: ControllerConfig) -> VastProvider:
    """The controller's flat settings as a ``VastProvider`` with production edges."""
    if not config.vast_api_key.reveal():
        raise ConfigError("bad configuration in VIDFLEET_VAST_API_KEY: required when "
                          "VIDFLEET_PROVIDER is vast")
    config.rented_agent_nats_url()  # refuses a plaintext URL for machines on the internet
    if not config.vast_image:
        raise ConfigError("bad configuration in VIDFLEET_VAST_IMAGE: required when "
                          "VIDFLEET_PROVIDER is vast; build the agent image (make image), push "
                          "it where the hosts can pull it, and name it by digest "
                          "(<registry>/vidfleet-agent@sha256:...)")
    if "@sha256:" not in config.vast_image:
        logger.warning("VIDFLEET_VAST_IMAGE is not pinned by digest: a moved tag changes what "
                       "every new machine boots")
    try:
        vast = VastConfig(
            api_key=config.vast_api_key, image=config.vast_image, base_url=config.vast_url,
            disk_gb=config.vast_disk_gb, interruptible=config.vast_interruptible,
            bid_margin=config.vast_bid_margin,
            min_gpu_ram_mb=config.min_gpu_ram_mb, min_reliability=config.min_reliability,
            min_inet_down_mbps=config.min_inet_down_mbps, min_cuda=config.min_cuda,
            max_price_per_hour=config.max_offer_price_per_hour,
            allow_plaintext_agent_url=config.allow_plaintext_agent_url,
            # The loop re-sends a destroy every 15 s until the machine is gone; waiting out
            # eight attempts here would stall renting, drains and heartbeats meanwhile.
            destroy_attempts=2)
    except ValueError as exc:
        raise ConfigError(f"bad vast configuration: {exc}") from None
    return VastProvider(vast)
