"""The agent's configuration: ``VIDFLEET_<FIELD>`` environment variables (see README)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from msgspec import Meta, Struct

from broker.config import Secret
from broker.creds import LiveCredentials
from broker.url_guard import parse_networks

__all__ = ["AgentConfig", "agent_credentials"]

_GIB = 1 << 30


class AgentConfig(Struct, frozen=True, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    # Credentials (operator-mode servers): a .creds file, or what the controller puts in a
    # machine's environment: the nkey seed, and the user JWT in 250-character pieces
    # VIDFLEET_NATS_JWT_0, _1, ... (Vast.ai caps each environment value at 256 characters).
    creds_file: str = ""
    tls_ca_file: str = ""  # a private CA for a tls:// server (default: the system's CAs)
    nats_seed: Secret = Secret("")
    nats_jwt: str = ""
    agent_id: str = ""  # empty: agent-<host>-<random>, made at start
    ffmpeg: str = "ffmpeg"
    ffprobe: str = "ffprobe"
    work_dir: str = ""  # empty: a fresh temporary directory
    fonts_dir: str = ""  # empty: the first system font directory with a .ttf/.otf
    fetch_timeout_s: float = 10.0  # one long-poll for the next job
    # Jobs run at once (the controller sets it at launch: VIDFLEET_SLOTS); the dispatcher
    # holds an agent to at most what the controller allows.
    slots: Annotated[int, Meta(ge=1, le=64)] = 1
    # With slots > 1 the agent measures its throughput at 1..slots encodes at once and runs as
    # many as each add at least this much (0.15: 15 %); -1 runs them all whatever it measures.
    slots_min_gain: float = 0.15
    heartbeat_interval_s: float = 5.0
    progress_interval_s: float = 1.0  # at most one progress event per this many seconds
    max_input_bytes: int = 4 * _GIB
    max_input_duration_s: float = 4 * 3600.0
    url_timeout_s: float = 60.0  # one read from a URL input
    url_total_timeout_s: float = 1800.0  # a whole URL download
    url_min_bytes_per_s: float = 65536.0  # slower than this over a window: the download fails
    url_slow_window_s: float = 30.0
    # URL inputs are fetched only from public internet addresses, plus these networks
    # (comma-separated CIDRs, e.g. "10.20.0.0/16,fd00::/8") for a private deployment's servers.
    url_allow_networks: str = ""
    ffmpeg_timeout_factor: float = 10.0  # FFmpeg may run this many times the media duration
    ffmpeg_min_timeout_s: float = 120.0
    stall_timeout_s: float = 60.0  # no progress from FFmpeg this long: kill it
    retry_delay_s: float = 5.0  # first retry delay after retryable trouble; doubles, max 300 s
    max_retries: int = 3  # retryable failures a job may have before it is failed for good
    drain_timeout_s: float = 600.0  # on SIGTERM: time the running job gets to finish
    # Set by the controller at launch: the machine's price (every result carries its cost) and
    # the dead-man time (no work and no controller heartbeat this long: stop, and destroy the
    # instance when it is a Vast.ai container). 0 turns the switch off.
    price_per_hour: float = 0.0
    deadman_s: float = 0.0
    vast_url: str = "https://console.vast.ai"
    # Set by Vast.ai inside its containers as CONTAINER_ID and CONTAINER_API_KEY (a key that can
    # only stop or destroy this one instance); read by the entry point, not VIDFLEET_ variables.
    container_id: str = ""
    container_api_key: Secret = Secret("")
    log_level: str = "INFO"
    log_json: bool = False

    def __post_init__(self) -> None:
        parse_networks(self.url_allow_networks)  # a bad entry fails at start, named


def agent_credentials(config: AgentConfig) -> LiveCredentials | None:
    """What to connect with, or None (a server without auth)."""
    if config.creds_file:
        return LiveCredentials.from_creds(Path(config.creds_file).read_text(encoding="utf-8"))
    if config.nats_jwt and config.nats_seed.reveal():
        return LiveCredentials(config.nats_jwt, config.nats_seed)
    return None
