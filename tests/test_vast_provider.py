"""The Vast.ai provider against the fake server: the vendor's quirks and the faults that cost
money (a lost create answer, a list outage, a destroy that did not take), plus the fake's own
conformance to the reference where the provider does not exercise it.

No test waits in real time: backoff goes through an injected ``sleep`` that records delays
(or moves the fake's clock), and instances move when the test steps them.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from loguru import logger

from broker.auth import generate_keys, mint_user
from broker.config import Secret
from controller.policy import Offer
from controller.providers.base import NoCapacity, ProviderError
from controller.providers.vast import VastConfig, VastProvider, instance_state
from controller.providers.vast_http import VastError, classify_error
from tests.fakes.vast import FakeContainer, FakeVast

KEY = "vk-3f9c2d7e1a8b4c6d9e0f"  # distinctive, so a leak anywhere is findable
JITTER = 0.5  # backoff = step * (0.5 + 0.5 * JITTER) = 0.75 step: 0.75, 1.5, 3.0 ...


class Sleeps:
    """The provider's sleep: records each delay and returns at once (or moves a clock)."""

    def __init__(self, on_sleep: Callable[[float], None] | None = None) -> None:
        self.delays: list[float] = []
        self._on_sleep = on_sleep

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)
        if self._on_sleep is not None:
            self._on_sleep(delay_s)


@pytest.fixture
def fake() -> Iterator[FakeVast]:
    with FakeVast(api_key=KEY, start_container=FakeContainer) as server:
        yield server


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


Make = Callable[..., VastProvider]


@pytest.fixture
async def make(fake: FakeVast, sleeps: Sleeps) -> AsyncIterator[Make]:
    made: list[VastProvider] = []

    def factory(*, transport: httpx.AsyncBaseTransport | None = None, key: str = KEY,
                clock: Callable[[], float] | None = None, sleep: Any = None,
                **overrides: Any) -> VastProvider:
        config = VastConfig(**{"api_key": Secret(key), "image": "vidfleet/agent:test",
                               "base_url": fake.url, "min_interval_s": {},
                               "allow_plaintext_agent_url": True, **overrides})
        # Plain HTTP to 127.0.0.1: a transport that skips loading the CA bundle, which costs
        # ~0.15 s of CPU per client and there is one client per provider here.
        transport = transport or httpx.AsyncHTTPTransport(verify=False)
        provider = VastProvider(config, transport=transport, sleep=sleep or sleeps,
                                jitter=lambda: JITTER, **({"clock": clock} if clock else {}))
        made.append(provider)
        return provider

    yield factory
    for provider in made:
        await provider.aclose()


@pytest.fixture
def vast(make: Make) -> VastProvider:
    return make()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """Every log line from our code (loguru) and from libraries (stdlib logging)."""
    caplog.set_level(logging.DEBUG)
    lines: list[str] = []
    handler = logger.add(lambda m: lines.append(str(m)), level="DEBUG",
                         format="{message} {extra}")
    yield lines
    logger.remove(handler)
    lines.append(caplog.text)


async def rent(vast: VastProvider, label: str = "vf-t-1", **env: str) -> tuple[Offer, int]:
    offer = (await vast.search_offers())[0]
    info = await vast.launch(offer, label=label, env=env)
    return offer, int(info.provider_id)


# ---- search ------------------------------------------------------------------------------


async def test_search_sends_a_typed_query_and_never_offers_a_gpu_without_nvenc(
        fake: FakeVast, vast: VastProvider) -> None:
    fake.add_offer("A100X PCIE")  # not in the server-side exclusion list: caught client-side
    fake.add_offer("RTX A1000")  # has NVENC: "A100" inside its name must not drop it
    offers = await vast.search_offers()
    assert "RTX A1000" in [o.gpu_name for o in offers]
    offers = [o for o in offers if o.gpu_name != "RTX A1000"]
    assert [o.gpu_name for o in offers] == ["RTX 3060", "RTX 4090"]  # cheapest first
    cheap = offers[0]
    assert cheap.price_per_hour == pytest.approx(0.09 + 0.15 * 16 / 720)  # storage included
    assert (cheap.gpu_ram_mb, cheap.cuda_max_good, cheap.reliability, cheap.inet_down_mbps) == (
        12288, 12.2, 0.985, 450.0)
    body = fake.requests("search")[-1].body
    assert body["type"] == "on-demand" and body["allocated_storage"] == 16.0
    assert body["gpu_ram"] == {"gte": 8000} and body["reliability"] == {"gte": 0.95}
    assert body["rentable"] == {"eq": True} and body["rented"] == {"eq": False}
    assert "A100 SXM4" in body["gpu_name"]["notin"]


async def test_an_interruptible_config_bids_per_offer_and_counts_what_it_pays(
        fake: FakeVast, make: Make) -> None:
    """Each offer at its own minimum bid plus the margin (not one fixed bid for every
    machine), and the price the caps count is that bid plus the storage: what it bills."""
    vast = make(interruptible=True, bid_margin=0.2)
    offer, _ = await rent(vast)
    assert fake.requests("search")[-1].body["type"] == "bid"
    assert offer.bid_per_hour == pytest.approx(0.05 * 1.2)  # the RTX 3060's minimum bid
    assert offer.price_per_hour == pytest.approx(0.06 + 0.15 * 16 / 720)
    assert fake.create_requests[-1]["price"] == pytest.approx(0.06)
    [listed] = await vast.list_instances("vf-")
    assert listed.price_per_hour == pytest.approx(offer.price_per_hour) and not listed.interrupted
    fake.outbid(int(listed.provider_id))
    [stopped] = await vast.list_instances("vf-")
    assert stopped.interrupted and stopped.state == "failed"
    with pytest.raises(ProviderError, match="never bids"):  # an on-demand config never bids
        await make().launch(offer, label="vf-x", env={"VIDFLEET_NATS_URL": "nats://h:4222"})


# ---- launch ------------------------------------------------------------------------------


async def test_launch_sends_env_as_an_object_and_runs_the_agent_as_entrypoint(
        fake: FakeVast, vast: VastProvider) -> None:
    offer = (await vast.search_offers())[0]
    info = await vast.launch(offer, label="vf-env", env={"VIDFLEET_NATS_URL": "nats://h:4222"})
    body = fake.create_requests[-1]
    assert body["env"] == {"VIDFLEET_NATS_URL": "nats://h:4222", "VIDFLEET_AGENT_ID": "vf-env"}
    assert (body["runtype"], body["onstart"], body["args"]) == ("args", "python",
                                                                ["-m", "gpu_agent"])
    assert body["cancel_unavail"] is True and body["target_state"] == "running"
    assert body["disk"] == 16.0 and body["label"] == "vf-env" and "price" not in body
    [inst] = fake.instances()
    assert info.provider_id == str(inst.id) != str(offer.offer_id)
    assert (info.state, info.machine_id, info.gpu_name) == ("starting", offer.machine_id,
                                                            "RTX 3060")
    for sent in fake.requests():
        assert sent.authorization == f"Bearer {KEY}" and KEY not in sent.path


@pytest.mark.parametrize("mode", ["drop", "500"])
async def test_a_lost_create_answer_is_settled_by_label_not_by_a_second_create(
        fake: FakeVast, vast: VastProvider, mode: str) -> None:
    fake.drop_next_create(mode)  # type: ignore[arg-type]
    offer = (await vast.search_offers())[0]
    info = await vast.launch(offer, label="vf-lost", env={})
    [inst] = fake.instances()  # exactly one machine bills
    assert info.provider_id == str(inst.id) and info.label == "vf-lost"
    assert len(fake.create_requests) == 1


class LoseCreateAnswer(httpx.AsyncBaseTransport):
    """Delivers the create, then loses its answer the way a read timeout does."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if request.method == "PUT" and "/asks/" in request.url.path:
            await response.aread()
            await response.aclose()
            raise httpx.ReadTimeout("timed out", request=request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a_create_timeout_is_settled_by_label(fake: FakeVast, make: Make) -> None:
    vast = make(transport=LoseCreateAnswer())
    offer = (await vast.search_offers())[0]
    info = await vast.launch(offer, label="vf-slow", env={})
    assert [i.id for i in fake.instances()] == [int(info.provider_id)]
    assert len(fake.create_requests) == 1


async def test_a_create_that_did_not_happen_is_reported_ambiguous_never_resent(
        fake: FakeVast, vast: VastProvider, sleeps: Sleeps) -> None:
    fake.server_errors(1, status=503, endpoint="create")
    offer = (await vast.search_offers())[0]
    with pytest.raises(VastError) as caught:
        await vast.launch(offer, label="vf-maybe", env={})
    assert caught.value.kind == "ambiguous" and not caught.value.retryable
    assert "vf-maybe" in str(caught.value)
    assert len(fake.create_requests) == 1 and fake.instances() == []
    assert len(fake.requests("list")) == 3 and len(sleeps.delays) == 2  # bounded lookups


async def test_an_ambiguous_create_whose_lookup_fails_says_it_may_bill(
        fake: FakeVast, vast: VastProvider) -> None:
    fake.drop_next_create()
    fake.server_errors(20, status=502, endpoint="list")
    offer = (await vast.search_offers())[0]
    with pytest.raises(VastError, match="may exist and bill") as caught:
        await vast.launch(offer, label="vf-dark", env={})
    assert caught.value.kind == "ambiguous" and len(fake.create_requests) == 1


async def test_a_create_that_never_left_is_retryable_not_ambiguous(make: Make) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    vast = make(base_url=f"http://127.0.0.1:{closed_port}")
    offer = Offer(offer_id=1, machine_id=1, gpu_name="RTX 4090", gpu_ram_mb=24564,
                  price_per_hour=0.3, reliability=0.99, inet_down_mbps=900, cuda_max_good=12.4)
    with pytest.raises(VastError) as caught:
        await vast.launch(offer, label="vf-x", env={})
    assert (caught.value.kind, caught.value.retryable, caught.value.sent) == (
        "unavailable", True, False)


async def test_a_rate_limited_create_is_not_resent(fake: FakeVast, vast: VastProvider) -> None:
    fake.rate_limit_burst(1, endpoint="create")
    offer = (await vast.search_offers())[0]
    with pytest.raises(VastError) as caught:
        await vast.launch(offer, label="vf-busy", env={})
    assert caught.value.kind == "rate_limited" and caught.value.retryable
    assert len(fake.create_requests) == 1 and fake.instances() == []


@pytest.mark.parametrize("status", [404, 410])
async def test_an_offer_taken_between_search_and_rent_is_no_capacity(
        fake: FakeVast, vast: VastProvider, status: int) -> None:
    offer = (await vast.search_offers())[0]
    fake.steal_offer(offer.offer_id, status=status)
    with pytest.raises(NoCapacity):
        await vast.launch(offer, label="vf-late", env={})
    assert fake.instances() == [] and fake.requests("list") == []


async def test_a_200_with_success_false_is_a_refusal(fake: FakeVast,
                                                     vast: VastProvider) -> None:
    fake.reject_next_create(msg="error 400/3467: Invalid args: bad image name")
    offer = (await vast.search_offers())[0]
    with pytest.raises(VastError, match="bad image name") as caught:
        await vast.launch(offer, label="vf-no", env={})
    assert not isinstance(caught.value, NoCapacity)
    assert (caught.value.kind, caught.value.retryable, caught.value.status) == (
        "rejected", False, 200)
    assert fake.instances() == [] and fake.requests("list") == []


async def test_credentials_echoed_in_an_error_are_scrubbed(fake: FakeVast,
                                                          vast: VastProvider) -> None:
    minted = mint_user(generate_keys(), "agent", "vf-x", expires_in_s=60)
    echoed = f"bad env: VIDFLEET_NATS_SEED={minted.seed.reveal()} JWT={minted.jwt.reveal()}"
    fake.reject_next_create(msg=echoed)
    offer = (await vast.search_offers())[0]
    with pytest.raises(VastError) as caught:
        await vast.launch(offer, label="vf-no", env={})
    text = str(caught.value)
    assert "bad env" in text and minted.seed.reveal() not in text
    assert minted.jwt.reveal() not in text


@pytest.mark.parametrize("error, msg", [
    ("insufficient_balance", "Your balance is too low"),
    ("spend_rate_limit", "New accounts have a spend limit; verify your email"),
    ("invalid_args", "error 402/1234: insufficient credit"),
])
async def test_account_errors_on_create_are_final(fake: FakeVast, vast: VastProvider,
                                                  error: str, msg: str) -> None:
    fake.inject("create", 402, {"success": False, "error": error, "msg": msg})
    offer = (await vast.search_offers())[0]
    with pytest.raises(VastError) as caught:
        await vast.launch(offer, label="vf-broke", env={})
    assert (caught.value.kind, caught.value.retryable) == ("account", False)


@pytest.mark.parametrize("status, error, msg, kind", [
    (404, "auth_error", "Invalid user key", "auth"),
    (404, "", "Invalid user key", "auth"),
    (403, "auth_error", "This action requires login.", "auth"),
    (403, "invalid_args", "error 403/3586: Offer 1 is not your own.", "rejected"),
    (404, "invalid_args", "error 404/3603: no_such_ask Instance type by id 1 is not available.",
     "offer_gone"),
    (410, "no_such_ask", "error 410/3907: no_such_ask Instance type 1 is no longer available.",
     "offer_gone"),
    (400, "no_such_ask", "", "offer_gone"),
    (404, "not_found", "Instance not found", "not_found"),
    (429, "search_quota_exceeded", "", "quota"),
    (429, "", "API requests too frequent", "rate_limited"),
    (502, "", "<html>load balancer: bad gateway</html>", "unavailable"),
    (400, "missing_billing", "", "account"),
    (200, "invalid_args", "Invalid args", "rejected"),
])
def test_error_answers_are_classified_once(status: int, error: str, msg: str,
                                           kind: str) -> None:
    assert classify_error(status, error, msg) == kind


# ---- auth and secrets --------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 404])
async def test_a_wrong_key_is_final_everywhere_and_never_shown(
        fake: FakeVast, make: Make, logs: list[str], status: int) -> None:
    fake.bad_key_status = status  # Vast.ai answers "Invalid user key" with either
    wrong = "vk-wrong-0a1b2c3d4e5f6a7b"
    vast = make(key=wrong)
    offer = Offer(offer_id=9_100_001, machine_id=1, gpu_name="RTX 4090", gpu_ram_mb=24564,
                  price_per_hour=0.3, reliability=0.99, inet_down_mbps=900, cuda_max_good=12.4)
    calls: list[Callable[[], Awaitable[object]]] = [
        vast.search_offers, lambda: vast.list_instances("vf-"), lambda: vast.terminate("123"),
        lambda: vast.launch(offer, label="vf-auth", env={}), vast.account_credit]
    for call in calls:
        with pytest.raises(ProviderError) as caught:
            await call()
        assert not isinstance(caught.value, NoCapacity)
        assert isinstance(caught.value, VastError) and caught.value.kind == "auth"
        assert not caught.value.retryable
        assert wrong not in str(caught.value) and wrong not in repr(caught.value.args)
    assert len(fake.requests()) == len(calls)  # none retried
    assert all(wrong not in line and KEY not in line for line in logs)


async def test_the_key_stays_out_of_errors_and_logs_through_retries(
        fake: FakeVast, vast: VastProvider, logs: list[str]) -> None:
    fake.rate_limit_burst(2, endpoint="list")
    fake.inject("search", 400, {"error": "invalid_request", "msg": f"bad key {KEY} echoed"})
    await vast.list_instances("vf-")
    with pytest.raises(VastError) as caught:
        await vast.search_offers()
    assert KEY not in str(caught.value) and "***" in str(caught.value)
    assert all(KEY not in line for line in logs)
    assert any("retry" in line for line in logs)


# ---- retries on idempotent calls ---------------------------------------------------------


@pytest.mark.parametrize("text", [True, False], ids=["plain-text", "json"])
async def test_a_burst_of_429s_is_ridden_out_with_jittered_backoff(
        fake: FakeVast, vast: VastProvider, sleeps: Sleeps, text: bool) -> None:
    fake.rate_limit_burst(3, endpoint="search", text=text)
    assert await vast.search_offers()
    assert sleeps.delays == [0.75, 1.5, 3.0]
    assert [r.status for r in fake.requests("search")] == [429, 429, 429, 200]


async def test_retry_after_is_honoured(fake: FakeVast, vast: VastProvider,
                                       sleeps: Sleeps) -> None:
    fake.rate_limit_burst(2, endpoint="list", text=False, retry_after=7)
    assert await vast.list_instances("vf-") == []
    assert sleeps.delays == [7.0, 7.0]


async def test_a_retry_after_beyond_a_minute_is_not_waited_out(
        fake: FakeVast, vast: VastProvider, sleeps: Sleeps) -> None:
    fake.rate_limit_burst(1, endpoint="list", retry_after=120)
    with pytest.raises(VastError) as caught:
        await vast.list_instances("vf-")
    assert caught.value.kind == "rate_limited" and caught.value.retryable
    assert sleeps.delays == []


async def test_the_daily_search_quota_is_final(fake: FakeVast, vast: VastProvider) -> None:
    fake.inject("search", 429, {"error": "search_quota_exceeded", "msg": "Daily quota"},
                headers={"X-RateLimit-Reset": "1900000000"})
    with pytest.raises(VastError) as caught:
        await vast.search_offers()
    assert (caught.value.kind, caught.value.retryable) == ("quota", False)
    assert len(fake.requests("search")) == 1


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_gateway_errors_on_search_and_list_are_retried(
        fake: FakeVast, vast: VastProvider, status: int) -> None:
    fake.server_errors(2, status=status, endpoint="search")
    fake.server_errors(2, status=status, endpoint="list")
    assert await vast.search_offers()
    assert await vast.list_instances("") == []
    assert len(fake.requests("search")) == len(fake.requests("list")) == 3


async def test_a_list_outage_raises_instead_of_answering_no_instances(
        fake: FakeVast, vast: VastProvider) -> None:
    await rent(vast)
    fake.server_errors(50, status=503, endpoint="list")
    with pytest.raises(ProviderError) as caught:
        await vast.list_instances("vf-")
    assert caught.value.retryable
    assert len(fake.requests("list")) == 5  # the first try and max_retries=4


# ---- listing -----------------------------------------------------------------------------


async def test_listing_follows_the_cursor_past_25_and_filters_by_prefix(
        fake: FakeVast, make: Make) -> None:
    vast = make(offer_limit=100)
    for _ in range(31):
        fake.add_offer("RTX 4090")
    offers = await vast.search_offers()
    for n, offer in enumerate(offers[:32]):
        await vast.launch(offer, label=f"vf-pg-{n}" if n < 30 else f"other-{n}", env={})
    listed = await vast.list_instances("vf-pg-")
    assert sorted(i.label for i in listed) == sorted(f"vf-pg-{n}" for n in range(30))
    assert len({i.provider_id for i in listed}) == 30
    pages = fake.requests("list")
    assert len(pages) == 2 and "after_token" in pages[1].path
    assert len(await vast.list_instances("")) == 32


async def test_listed_fields_are_stripped_and_carry_price_and_start(
        fake: FakeVast, vast: VastProvider) -> None:
    offer, instance_id = await rent(vast, label="vf-f")
    fake.boot(instance_id)
    [info] = await vast.list_instances("vf-")
    assert info.detail == "success, running vidfleet/agent:test/args"  # no trailing newline
    assert info.started_at == fake.now()  # start_date, on the fake's frozen clock
    assert info.price_per_hour == pytest.approx(offer.price_per_hour)
    assert (info.machine_id, info.gpu_name, info.state) == (offer.machine_id, "RTX 3060",
                                                            "running")


# ---- states ------------------------------------------------------------------------------


@pytest.mark.parametrize("actual, intended, next_state, msg, expected", [
    (None, "running", "running", None, "starting"),
    ("created", "running", "running", "", "starting"),
    ("loading", "running", "running", "4c7d45f7c63c: Pulling fs layer\n", "starting"),
    ("rebooting", "running", "running", None, "starting"),
    ("restarting", "running", "running", None, "starting"),
    ("running", "running", "running", "success, running img/ssh", "running"),
    ("loading", "running", "running",
     "Error response from daemon: pull access denied for foo, repository does not exist",
     "misconfigured"),
    ("loading", "running", "running", "manifest for foo:latest not found: manifest unknown",
     "misconfigured"),
    ("loading", "running", "running", "Error response from daemon: Get https://r/v2/: "
     "net/http: request canceled (Client.Timeout exceeded)", "failed"),
    ("created", "stopped", "stopped", "OCI runtime create failed: exec: not found", "failed"),
    ("created", "stopped", "stopped", None, "failed"),
    ("exited", "running", "running", None, "failed"),
    ("stopped", "stopped", "stopped", None, "failed"),
    ("offline", "running", "running", None, "failed"),
    ("unknown", "running", "running", None, "failed"),
    ("frozen", "running", "running", None, "failed"),
    ("running", "running", "unloaded", None, "failed"),
    (" Running \n", "running", "running", None, "running"),
    ("hibernating", "running", "running", None, "unknown"),
    ("scheduling", "running", "running", None, "unknown"),
])
def test_vast_states_map_to_ours(actual: str | None, intended: str, next_state: str,
                                 msg: str | None, expected: str) -> None:
    assert instance_state(actual, intended, next_state, msg) == expected


@pytest.mark.parametrize("scenario, expected", [
    ("loading", "starting"), ("stuck", "starting"), ("running", "running"),
    ("pull_denied", "misconfigured"), ("pull_timeout", "failed"), ("oci", "failed"),
    ("exits", "failed"), ("exited", "failed"), ("offline", "failed"),
    ("hibernating", "unknown"),
])
async def test_the_fakes_states_reach_the_controller_mapped(
        fake: FakeVast, vast: VastProvider, scenario: str, expected: str) -> None:
    if scenario in ("pull_denied", "pull_timeout", "oci", "stuck", "exits"):
        fake.fail_next_boot(scenario)  # type: ignore[arg-type]
    _, instance_id = await rent(vast)
    if scenario == "loading":
        fake.step(instance_id)
    else:
        fake.boot(instance_id)
    if scenario == "exited":
        fake.set_status(instance_id, actual_status="exited")
    elif scenario == "offline":
        fake.set_offline(instance_id)
    elif scenario == "hibernating":
        fake.set_status(instance_id, actual_status="hibernating")
    [info] = await vast.list_instances("vf-")
    assert info.state == expected, info.detail
    # An offline host's container may well still run; an exited one does not.
    assert fake.instances()[0].alive == (scenario in ("running", "offline"))


async def test_instances_boot_as_they_are_watched_or_as_the_clock_moves(make: Make) -> None:
    with FakeVast(api_key=KEY, progress="observe", start_container=FakeContainer) as watched:
        vast = make(base_url=watched.url)
        await rent(vast)
        seen = [(await vast.list_instances("vf-"))[0] for _ in range(4)]
        assert [i.state for i in seen] == ["starting", "starting", "starting", "running"]
        assert seen[1].detail.endswith("Pulling fs layer")
    with FakeVast(api_key=KEY, start_container=FakeContainer,
                  boot_stages_s=(2.0, 5.0, 5.0)) as clocked:
        vast = make(base_url=clocked.url)
        await rent(vast)
        clocked.advance(11.9)
        assert (await vast.list_instances("vf-"))[0].state == "starting"
        clocked.advance(0.1)
        assert (await vast.list_instances("vf-"))[0].state == "running"
        assert clocked.alive_count() == 1


# ---- terminate ---------------------------------------------------------------------------


async def test_terminate_verifies_and_a_second_terminate_is_success(
        fake: FakeVast, vast: VastProvider) -> None:
    _, instance_id = await rent(vast)
    fake.boot(instance_id)
    await vast.terminate(str(instance_id))
    async with httpx.AsyncClient(base_url=fake.url) as http:
        shown = await http.get(f"/api/v0/instances/{instance_id}/",
                               headers={"Authorization": f"Bearer {KEY}"})
    assert shown.json() == {"instances": None}
    await vast.terminate(str(instance_id))
    assert fake.alive_count() == 0 and await vast.list_instances("") == []
    fake.gone_as_404 = True  # the other documented answer for a gone instance
    await vast.terminate(str(instance_id))


async def test_terminate_repeats_with_backoff_until_the_instance_is_gone(
        fake: FakeVast, vast: VastProvider, sleeps: Sleeps) -> None:
    fake.destroy_linger_views = 2  # still shown twice after the destroy
    _, instance_id = await rent(vast)
    await vast.terminate(str(instance_id))
    assert [r.status for r in fake.requests("destroy")] == [200, 404, 404]
    assert sleeps.delays == [0.75, 1.5]


async def test_terminate_gives_up_bounded_and_retryable(fake: FakeVast, make: Make) -> None:
    vast = make(destroy_attempts=3)
    fake.destroy_linger_views = 100
    _, instance_id = await rent(vast)
    with pytest.raises(VastError) as caught:
        await vast.terminate(str(instance_id))
    assert caught.value.retryable and len(fake.requests("destroy")) == 3


async def test_terminate_refuses_an_id_that_is_not_vasts(vast: VastProvider) -> None:
    with pytest.raises(ProviderError):
        await vast.terminate("../users/current")


# ---- pacing, billing ---------------------------------------------------------------------


async def test_pacing_keeps_a_rate_limited_server_happy(make: Make) -> None:
    with FakeVast(api_key=KEY, min_intervals_s={"list": 1.0},
                  start_container=FakeContainer) as strict:
        clocked = Sleeps(strict.advance)  # waiting moves the fake's clock
        unpaced = make(base_url=strict.url, sleep=clocked)
        await unpaced.list_instances("")
        await unpaced.list_instances("")  # too soon: 429 (plain text), backoff, retry
        assert [r.status for r in strict.requests("list")] == [200, 429, 429, 200]
        assert clocked.delays == [0.75, 1.5]
        paced_sleep = Sleeps(strict.advance)
        paced = make(base_url=strict.url, sleep=paced_sleep, clock=strict.now,
                     min_interval_s={"list": 1.0})
        strict.advance(5)
        before = len(strict.requests("list"))
        for _ in range(3):
            await paced.list_instances("")
        assert [r.status for r in strict.requests("list")[before:]] == [200, 200, 200]
        assert paced_sleep.delays == pytest.approx([1.0, 1.0])


async def test_billing_draws_credit_and_zero_credit_stops_everything(
        fake: FakeVast, vast: VastProvider) -> None:
    _, instance_id = await rent(vast)
    fake.boot(instance_id)
    before = await vast.account_credit()
    fake.advance(3600)
    spent = before - await vast.account_credit()
    assert spent == pytest.approx(0.09 + 0.15 * 16 / 720, abs=1e-5)
    fake.credit = 0.01
    fake.advance(3600)
    [info] = await vast.list_instances("vf-")
    assert info.state == "failed" and fake.alive_count() == 0


# ---- the fake's own conformance ----------------------------------------------------------


def _offers(fake: FakeVast) -> list[dict[str, Any]]:
    with httpx.Client(base_url=fake.url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        return list(http.post("/api/v0/bundles/", json={"limit": 100}).json()["offers"])


def test_the_fake_answers_application_json_exactly_and_checks_auth(fake: FakeVast) -> None:
    with httpx.Client(base_url=fake.url) as http:
        for path in ("/api/v0/users/current", "/api/v0/users/current/"):
            ok = http.get(path, headers={"Authorization": f"Bearer {KEY}"})
            assert ok.status_code == 200 and ok.headers["content-type"] == "application/json"
        missing = http.get("/api/v0/users/current")
        assert missing.status_code == 403 and missing.json()["error"] == "auth_error"
        wrong = http.get("/api/v0/users/current", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["msg"] == "Invalid user key"


def test_the_fake_rejects_env_as_a_string_and_rents_an_offer_once(fake: FakeVast) -> None:
    offer_id = _offers(fake)[0]["id"]
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=fake.url, headers=auth) as http:
        body: dict[str, Any] = {"image": "img", "disk": 10, "env": "-e A=1"}
        bad = http.put(f"/api/v0/asks/{offer_id}/", json=body)
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_args"
        small = http.put(f"/api/v0/asks/{offer_id}/", json={**body, "env": {}, "disk": 4})
        assert small.status_code == 400
        ok = http.put(f"/api/v0/asks/{offer_id}/", json={**body, "env": {"A": "1"}})
        assert ok.json()["success"] is True and ok.json()["new_contract"] != offer_id
        again = http.put(f"/api/v0/asks/{offer_id}/", json={**body, "env": {"A": "1"}})
        assert again.status_code == 404 and "no_such_ask" in again.json()["msg"]


def test_the_fake_search_coerces_strings_and_knows_the_virtual_filters(
        fake: FakeVast) -> None:
    fake.add_offer("RTX 4090", geolocation="Taipei, TW", disk_space=40.0)
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=fake.url, headers=auth) as http:
        def names(query: dict[str, Any]) -> list[str]:
            got = http.post("/api/v0/bundles/", json=query)
            assert got.status_code == 200, got.text
            return [o["gpu_name"] for o in got.json()["offers"]]

        assert names({"gpu_ram": {"gte": "20000"}, "order": [["dph_total", "asc"]]}) == [
            "RTX 4090", "RTX 4090", "A100 SXM4"]
        assert names({"geolocation": {"in": ["TW"]}}) == ["RTX 4090"]
        assert names({"geolocation": {"eq": "TW"}, "allocated_storage": 100}) == []
        assert names({"datacenter": {"eq": True}}) == ["A100 SXM4"]
        assert names({"gpu_name": {"notin": ["RTX 4090", "A100 SXM4"]},
                      "verified": {"eq": "true"}}) == ["RTX 3060"]
        assert len(names({"limit": 2})) == 2
        bad = http.post("/api/v0/bundles/", json={"gpu_ram": {"approx": 1}})
        assert bad.status_code == 400


def test_the_fake_lists_25_at_most_and_refuses_computed_columns(fake: FakeVast) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=fake.url, headers=auth) as http:
        for _ in range(30):
            offer_id = fake.add_offer("RTX 3060")
            http.put(f"/api/v0/asks/{offer_id}/", json={"image": "i", "disk": 10, "env": {}})

        def page(**params: Any) -> httpx.Response:
            return http.get("/api/v1/instances/", params={
                k: json.dumps(v) if not isinstance(v, str) else v for k, v in params.items()})

        assert len(page(limit=100).json()["instances"]) == 25
        assert len(page(limit=0).json()["instances"]) == 5
        assert page(select_filters={"dph_total": {"lte": 1}}).status_code == 400
        bad_token = base64.b64encode(b"{}").decode()
        assert page(after_token=bad_token).json()["error"] == "invalid_token"
        first = page(limit=25, order_by=[{"col": "id", "dir": "desc"}]).json()
        rest = page(limit=25, order_by=[{"col": "id", "dir": "desc"}],
                    after_token=first["next_token"]).json()
        ids = [r["id"] for r in first["instances"] + rest["instances"]]
        assert ids == sorted(ids, reverse=True) and len(ids) == 30
        assert rest["next_token"] is None
        assert page(select_filters={"label": {"in": [None]}}).json()["instances_found"] == 30


def test_an_instance_key_can_only_touch_its_own_instance(fake: FakeVast) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=fake.url) as http:
        ids = []
        for offer in _offers(fake)[:2]:
            made = http.put(f"/api/v0/asks/{offer['id']}/", headers=auth,
                            json={"image": "i", "disk": 10, "env": {"A": "1"}})
            ids.append(made.json()["new_contract"])
        for instance_id in ids:
            fake.boot(instance_id)
        [mine, other] = fake.instances()
        container_env = mine.container_env
        assert container_env["CONTAINER_ID"] == str(mine.id)
        assert container_env["VAST_CONTAINERLABEL"] == f"C.{mine.id}"
        assert container_env["A"] == "1" and "PATH" in container_env
        own = {"Authorization": f"Bearer {container_env['CONTAINER_API_KEY']}"}
        assert http.get(f"/api/v0/instances/{mine.id}/", headers=own).status_code == 200
        assert http.delete(f"/api/v0/instances/{other.id}/", headers=own).status_code == 403
        assert http.post("/api/v0/bundles/", headers=own, json={}).status_code == 403
        assert http.request("DELETE", f"/api/v0/instances/{mine.id}/", headers=own,
                            json={}).json() == {"success": True}
    fake.wait_for(lambda f: f.alive_count() == 1, timeout_s=5)
