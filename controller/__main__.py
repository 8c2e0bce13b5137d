"""``python -m controller``: run the reaper and the scaling loop until SIGTERM/SIGINT.

With the local provider the agents are this process's children: the first signal drains them
(each finishes its job), a second makes them hand their jobs back at once. Rented machines
(vast) are left running on exit: the next controller reconciles them by label, and their
agents' dead-man switch ends them if none comes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from loguru import logger

from broker.auth import mint_user
from broker.auth_store import AuthDir
from broker.connect import connect
from broker.creds import LiveCredentials
from broker.entrypoint import run_process, stop_signals
from controller.config import ControllerConfig, policy_of
from controller.loop import Controller
from controller.metrics import Metrics, serve
from controller.providers.base import Provider
from controller.providers.local import LocalProvider
from controller.providers.vast import VastProvider, provider_from_config

# Never handed to a machine: the provider's account key stays with the controller.
_CONTROLLER_ONLY = ("VIDFLEET_VAST_API_KEY", "VIDFLEET_AUTH_DIR", "VIDFLEET_CREDS_FILE")


def _provider(config: ControllerConfig) -> Provider:
    if config.provider == "vast":
        return provider_from_config(config)
    base_env = {k: v for k, v in os.environ.items() if k not in _CONTROLLER_ONLY}
    # Stopping waits as long as an agent may take to finish its job (its drain timeout, 600 s
    # by default) before a SIGKILL: the first signal means "finish", not "lose the work".
    return LocalProvider(max_agents=config.local_max_agents, base_env=base_env,
                         work_root=config.local_work_dir, log_dir=config.local_log_dir,
                         grace_s=config.local_stop_grace_s)


async def _main(config: ControllerConfig) -> None:
    stop, force = stop_signals()
    provider = _provider(config)
    # A Vast.ai agent's dead-man switch destroys its own instance through the same API.
    agent_env = {"VIDFLEET_VAST_URL": config.vast_url} if config.provider == "vast" else {}
    keys = AuthDir(Path(config.auth_dir)).keys() if config.auth_dir else None
    credentials = None
    if config.creds_file:
        credentials = LiveCredentials.from_creds(Path(config.creds_file).read_text())
    elif keys is not None:  # its own FLEET user, held in memory only (never on disk)
        own = mint_user(keys, "controller", "vidfleet-controller", expires_in_s=None)
        credentials = LiveCredentials(own.jwt.reveal(), own.seed)
    nc = await connect(config.nats_url, name="vidfleet-controller", credentials=credentials,
                       tls_ca_file=config.tls_ca_file)
    system = None
    if keys is not None:  # revocations are pushed to the server as its system account
        sys_user = mint_user(keys, "system", "vidfleet-controller-sys", expires_in_s=None)
        system = await connect(config.nats_url, name="vidfleet-controller-sys",
                               credentials=LiveCredentials(sys_user.jwt.reveal(), sys_user.seed),
                               tls_ca_file=config.tls_ca_file)
    metrics = Metrics()
    stop_metrics = None
    if config.metrics_listen:
        url, stop_metrics = serve(metrics, config.metrics_listen)
        logger.info("metrics on {url}", url=url)
    try:
        controller = Controller(nc=nc, provider=provider, config=config,
                                policy=policy_of(config), agent_env=agent_env, auth=keys,
                                system=system, metrics=metrics)

        async def stop_local_agents() -> None:
            if isinstance(provider, LocalProvider):
                logger.info("stopping local agents (a second signal makes them hand jobs "
                            "back)")
                await provider.close(force)

        await controller.run(stop, wind_down=stop_local_agents)
    finally:
        if isinstance(provider, LocalProvider):
            await provider.close(force)  # done already, unless the controller failed
        elif isinstance(provider, VastProvider):
            await provider.aclose()  # rented machines stay: the next controller adopts them
        if system is not None:
            await system.close()
        await nc.drain()
        if stop_metrics is not None:
            stop_metrics()


def main() -> int:
    return run_process("controller", ControllerConfig, _main)


if __name__ == "__main__":
    sys.exit(main())
