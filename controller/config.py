"""The controller's configuration: ``VIDFLEET_<FIELD>`` environment variables (see README).

One flat Struct, loaded once at the entry point (``vidfleet controller run`` flags override it).
The policy knobs map one to one onto ``Policy``; the Vast.ai settings are read only when
``provider`` is ``vast``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from broker.config import ConfigError, Secret
from broker.tls import is_tls_only
from broker.url_guard import parse_networks
from controller.policy import Policy

__all__ = ["ControllerConfig", "policy_of"]


class ControllerConfig(Struct, frozen=True, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    creds_file: str = ""  # the controller's own NATS credentials (operator-mode servers)
    tls_ca_file: str = ""  # a private CA for a tls:// server (default: the system's CAs)
    # The deployment's keys (broker/auth_store.py AuthDir): set, every machine gets its own
    # agent credentials, renewed over the bus and revoked when it is destroyed.
    auth_dir: str = ""
    agent_credentials_s: float = 4 * 3600.0  # an agent JWT's lifetime; renewed at half
    provider: Literal["local", "vast"] = "local"
    label_prefix: str = "vf-"  # every machine we rent is labelled <prefix><random>
    tick_s: float = 5.0  # observe -> decide -> act, this often
    # A tenant's queued jobs (not yet finished) beyond this are refused at submit, for that
    # tenant only: one tenant cannot fill the queue everyone shares.
    max_queued_jobs_per_tenant: int = 10_000
    # Webhooks (controller/webhooks.py) reach public internet addresses only, plus these
    # networks (comma-separated CIDRs) for a private deployment's receivers.
    webhook_allow_networks: str = ""
    webhook_retry_base_s: float = 5.0  # the first retry's delay; doubles, at most an hour
    # What one tenant's dead letters may keep of their inputs (the store is shared).
    dead_letter_inputs_per_tenant_gb: float = 1.0
    # The agents' settings, put into each machine's environment at launch.
    agent_nats_url: str = ""  # empty: nats_url (a rented machine needs a public address)
    # UNSAFE: lets rented machines be given a plaintext (nats://) URL, so their credentials,
    # jobs and results cross networks we do not control unencrypted; a stripped or spoofed
    # server gets a replayable login. Only for tests and private networks; off, the vast
    # provider refuses to start unless the agents' URL is tls:// for every server.
    allow_plaintext_agent_url: bool = False
    agent_deadman_s: float = 900.0  # an agent with no work and no controller this long stops
    agent_heartbeat_interval_s: float = 5.0
    # Policy (controller/policy.py says what each one does).
    min_warm: int = 0
    max_instances: int = 4
    target_drain_s: float = 600.0  # used when target_wait_s is 0
    # The wait objective: rent so that every queued job starts within this (0: drain instead).
    target_wait_s: float = 120.0
    # Booting machines rented per one a queue waits for, minus one: a boot bills only storage
    # on Vast.ai, and the first machine up takes the job (the local provider never hedges).
    hedge: float = 1.0
    # More booting machines per one needed while a burst needs five or more at once: the k-th
    # job of a burst waits for the k-th fastest boot, which more spares make sooner. Off by
    # default: it multiplies create calls, which Vast.ai rate-limits (the simulator does not).
    burst_hedge: float = 0.0
    warm_per_load: float = 0.0  # machines kept up per machine of measured load (rounded down)
    # With a wait target shorter than most boots, keep the measured load plus its square root
    # up (in machines), since only a machine already up starts a job that soon.
    warm_below_boot: bool = True
    # Jobs each machine runs at once (NVENC sessions run side by side, and decoding, subtitles
    # and audio are CPU work): each pays its share of the machine's price. The agents are
    # told it at launch and the dispatcher holds them to it.
    slots: Annotated[int, Meta(ge=1, le=64)] = 1
    idle_timeout_s: float = 300.0
    boot_deadline_s: float = 900.0
    heartbeat_timeout_s: float = 30.0
    rent_cooldown_s: float = 20.0
    expected_boot_s: float = 90.0
    budget_reserve_s: float = 900.0
    max_spend_per_hour: float = 5.0
    max_spend_per_day: float = 50.0
    max_offer_price_per_hour: float = 1.0
    min_gpu_ram_mb: int = 8000
    min_reliability: float = 0.95
    min_inet_down_mbps: float = 100.0
    min_cuda: float = 11.0
    # local provider
    local_max_agents: int = 2
    local_stop_grace_s: float = 660.0  # an agent's drain timeout plus a margin
    local_work_dir: str = ""  # agents work under it, an area each; empty: the temp dir
    local_log_dir: str = ""  # agents log to <dir>/<label>.log; empty: the controller's stderr
    # vast provider
    vast_api_key: Secret = Secret("")
    vast_url: str = "https://console.vast.ai"
    vast_image: str = ""  # the agent image by digest (make image; see deploy/README.md)
    vast_disk_gb: float = 20.0
    # Interruptible machines, each rented at its offer's minimum bid times 1 + the margin;
    # one outbid is destroyed (its job goes back to the queue) and its machine avoided a while.
    vast_interruptible: bool = False
    vast_bid_margin: float = 0.1
    # Prometheus figures on http://<this>/metrics (controller/metrics.py); empty: none. Keep
    # it off the internet (no auth): loopback, or a private network Prometheus scrapes.
    metrics_listen: str = "127.0.0.1:9464"
    log_level: str = "INFO"
    log_json: bool = False

    def __post_init__(self) -> None:
        parse_networks(self.webhook_allow_networks, "VIDFLEET_WEBHOOK_ALLOW_NETWORKS")

    def rented_agent_nats_url(self) -> str:
        """The URL rented machines are given; ``ConfigError`` naming the setting unless every
        server in it is ``tls://`` (or ``allow_plaintext_agent_url`` is set)."""
        url = self.agent_nats_url or self.nats_url
        if not self.allow_plaintext_agent_url and not is_tls_only(url):
            source = "" if self.agent_nats_url else " (unset, so VIDFLEET_NATS_URL's)"
            raise ConfigError(
                f"bad configuration in VIDFLEET_AGENT_NATS_URL{source}: rented machines must "
                "get a tls:// URL for every server, or their credentials and jobs cross the "
                "internet in plaintext; set it to tls://<public host>:<port> (on a private "
                "network only: VIDFLEET_ALLOW_PLAINTEXT_AGENT_URL=1, which is unsafe)")
        return url

    def agent_env(self, label: str, price_per_hour: float) -> dict[str, str]:
        """The settings a machine's agent gets (its credentials are added by the caller)."""
        return {"VIDFLEET_NATS_URL": self.agent_nats_url or self.nats_url,
                "VIDFLEET_AGENT_ID": label,
                "VIDFLEET_PRICE_PER_HOUR": repr(price_per_hour),
                "VIDFLEET_DEADMAN_S": repr(self.agent_deadman_s),
                "VIDFLEET_HEARTBEAT_INTERVAL_S": repr(self.agent_heartbeat_interval_s),
                "VIDFLEET_SLOTS": str(self.slots)}


def policy_of(config: ControllerConfig) -> Policy:
    """The policy from the same-named settings (``max_spend_per_hour`` is the policy's
    ``max_price_per_hour``); the hardware filters on offers apply to rented machines only (a
    local slot is this machine, whatever it has)."""
    knobs = {name: getattr(config, name) for name in Policy.__struct_fields__
             if hasattr(config, name)}
    knobs["max_price_per_hour"] = config.max_spend_per_hour
    if config.provider == "local":
        knobs |= {"min_gpu_ram_mb": 0, "min_reliability": 0.0, "min_inet_down_mbps": 0.0,
                  "min_cuda": 0.0, "hedge": 0.0, "burst_hedge": 0.0}
    return Policy(**knobs)
