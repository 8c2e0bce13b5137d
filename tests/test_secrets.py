"""No secret in any log line, event or error, and a machine's environment holds its own agent
credentials and nothing else secret: an end-to-end run on the fake Vast.ai with auth on, every
log captured (the controller's, in process, and each container's), searched for every secret."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from loguru import logger
from msgspec import structs

from broker.auth import public_key
from broker.auth_store import create_tenant
from broker.config import Secret
from broker.events import Succeeded
from broker.subjects import AUTH_BUCKET, FLEET_BUCKET
from broker.topology import ensure_tenant, ensure_topology
from controller.config import policy_of
from controller.loop import Controller
from controller.providers.vast import VastConfig, VastProvider
from tests.conftest import TEST_TOPOLOGY
from tests.fakes.vast import FakeVast
from tests.secure_stack import session, start_secure_server, tenant_client
from tests.test_controller import AGENT_ENV, caption_job, until
from tests.test_vast_fleet import RENTED

# A seed is a whole token: inside a public key ("ACSA7IZ...") the same letters are no seed,
# and matched anywhere they made this test fail on about one key in sixty.
SEED_SHAPE = re.compile(r"(?<![A-Z2-7])S[UAO][A-Z2-7]{50,}")
JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}")


@contextlib.contextmanager
def captured_logs() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG")
    try:
        yield lines
    finally:
        logger.remove(sink)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_no_secret_leaks_and_machines_get_only_their_own_credentials(
        tmp_path: Path, media_dir: Path) -> None:
    secure = start_secure_server(tmp_path)
    auth, keys, server = secure.auth, secure.keys, secure.server
    vast_key = "vast-" + "k" * 40
    try:
        with FakeVast(api_key=vast_key, progress="realtime", boot_stages_s=(0.1, 0.2, 0.2),
                      base_env=os.environ, log_dir=tmp_path / "containers",
                      kill_grace_s=20.0) as fake, captured_logs() as lines:
            async with session(secure, "controller", "ctl") as ctl, \
                    session(secure, "system", "sys") as system:
                await ensure_topology(ctl.nc.jetstream(), TEST_TOPOLOGY, tenants=())
                secure.tenants["erin"] = await create_tenant(ctl.nc.jetstream(), system.nc,
                                                             keys, "erin")
                await ensure_tenant(ctl.nc.jetstream(), TEST_TOPOLOGY, "erin")
                async with session(secure, "client", "erin",
                                   tenant="erin") as client_session:
                    provider = VastProvider(VastConfig(
                        api_key=Secret(vast_key), image="vidfleet/agent:t",
                        base_url=fake.url, min_interval_s={}, backoff_base_s=0.05,
                        allow_plaintext_agent_url=True))
                    config = structs.replace(RENTED, nats_url=server.url, max_instances=2)
                    controller = Controller(
                        nc=ctl.nc, provider=provider, config=config, policy=policy_of(config),
                        auth=keys, system=system.nc,
                        agent_env={**AGENT_ENV, "VIDFLEET_VAST_URL": fake.url})
                    stop = asyncio.Event()
                    task = asyncio.create_task(controller.run(stop))
                    vf = tenant_client(client_session, "erin")
                    receipts = [await vf.submit(await caption_job(vf, media_dir))
                                for _ in range(2)]
                    results = [await vf.result(r.job_id, timeout_s=90) for r in receipts]
                    assert all(isinstance(r, Succeeded) for r in results)
                    kv = await ctl.nc.jetstream().key_value(FLEET_BUCKET)

                    async def all_gone() -> bool:
                        return not fake.instances()

                    await until(kv, all_gone, 60)
                    stop.set()
                    await asyncio.wait_for(task, 30)
                    await provider.aclose()
                    revoked = await (await ctl.nc.jetstream().key_value(AUTH_BUCKET)).get(
                        "revocations")
                    events: list[str] = []
                    for r in receipts:
                        events += [str(e) async for e in vf.watch(r.job_id, timeout_s=10)]
    finally:
        server.stop()

    secrets = {s.reveal() for s in (keys.operator, keys.system_account, keys.account,
                                    keys.agents_account, keys.controller_signer,
                                    keys.agent_signer, keys.client_signer)}
    # No account JWT the server holds (preloaded or pushed) carries a seed.
    for stored in [auth.server_conf, *auth.path.joinpath("jwt").rglob("*")]:
        if stored.is_file():
            assert not SEED_SHAPE.search(stored.read_text(errors="replace")), stored
    secrets |= {vast_key, auth.admin_creds.read_text().split("\n")[1]}
    creates = fake.create_requests
    assert creates
    for body in creates:
        env = body["env"]
        assert all(len(v) <= 256 for v in env.values())  # Vast.ai's limit per value
        jwt = "".join(env[k] for k in sorted(env) if k.startswith("VIDFLEET_NATS_JWT_"))
        seed = env["VIDFLEET_NATS_SEED"]
        assert seed.startswith("SU") and jwt.startswith("eyJ")  # its own user, nothing more
        assert not any(s in str(body) for s in secrets), "an account secret reached a machine"
        secrets |= {seed, jwt}
        # destroyed, so its key is on the revocation list
        assert public_key(Secret(seed)) in msgspec.json.decode(revoked.value or b"{}")
    containers = "\n".join(p.read_text(errors="replace")
                           for p in (tmp_path / "containers").glob("*"))
    everything = "\n".join(lines) + containers + "\n".join(events)
    assert len(list((tmp_path / "containers").glob("*"))) == len(creates)
    assert "job succeeded" in everything  # the agents' own logs are in it
    for secret in secrets:
        assert secret not in everything
    assert not SEED_SHAPE.search(everything) and not JWT_SHAPE.search(everything)
