"""Which offers are worth renting, best first: NVENC, the operator's hardware filters, and the
price per encoded second (by measured speed when there is one, else by the GPU generation's
prior; for interruptible machines, of the time not lost to outbids). Renting a GPU without
NVENC buys no encoder; ranking by price alone buys slow GPUs.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controller.estimate import OutbidRates
    from controller.policy import Offer, Policy

__all__ = ["NO_NVENC_GPUS", "has_nvenc", "rank_offers"]

# Data-centre GPUs without an NVENC block (ffmpeg.md 5.3): renting one buys no encoder.
NO_NVENC_GPUS = frozenset({"A100", "A30", "A800", "H100", "H800", "H200", "GH200", "B200",
                           "GB200"})
# Relative NVENC throughput by GPU generation, the prior before measured speeds exist.
_SPEED_PRIOR = {"RTX 40": 1.0, "RTX 50": 1.1, "L4": 0.9, "L40": 1.0, "RTX 30": 0.8,
                "A10": 0.8, "A40": 0.8, "RTX A": 0.8, "T4": 0.5, "RTX 20": 0.6}


def _speed_prior(gpu_name: str) -> float:
    for prefix, speed in _SPEED_PRIOR.items():
        if prefix in gpu_name:
            return speed
    return 0.5


def _speeds(gpu_speed: dict[str, float]) -> dict[str, float]:
    """Measured speeds put on the priors' scale: each model keeps its measured ratio to the
    others, and the geometric mean of measured/prior is 1, so an unmeasured model still
    compares fairly whatever unit the measurements came in."""
    measured = {name: v for name, v in gpu_speed.items() if v > 0 and math.isfinite(v)}
    if not measured:
        return {}
    logs = [math.log(_speed_prior(name) / v) for name, v in measured.items()]
    scale = math.exp(sum(logs) / len(logs))
    return {name: v * scale for name, v in measured.items()}


def has_nvenc(gpu_name: str) -> bool:
    """False for the data-centre models without NVENC, matched as whole words of the name
    ("A100 SXM4", "H100_NVL", "A100X"): a substring test would also drop the RTX A1000 and
    A3000, which have NVENC."""
    words = re.split(r"[^A-Z0-9]+", gpu_name.upper())
    return not any(w in NO_NVENC_GPUS or (w.endswith("X") and w[:-1] in NO_NVENC_GPUS)
                   for w in words)


def rank_offers(offers: tuple[Offer, ...], policy: Policy,
                avoid: frozenset[int] = frozenset(),
                gpu_speed: dict[str, float] | None = None,
                outbids: OutbidRates | None = None, mean_job_s: float = 0.0) -> list[Offer]:
    """Acceptable offers, cheapest per encoded second first: by the GPU model's measured
    speed when ``gpu_speed`` has one (see ``Snapshot.gpu_speed``), else by its prior.

    ``outbids``: the learned outbid rates (controller/estimate.py). An outbid loses the job
    in hand, half a job on average, which runs again elsewhere: a model outbid ``r`` times an
    hour does useful work ``1 - r * mean_job_s / 7200`` of the time it is paid for. For jobs
    of a minute that is a rounding error; for jobs of half an hour on a model outbid twice an
    hour, half the money."""
    measured = _speeds(gpu_speed or {})
    ok = [o for o in offers
          if has_nvenc(o.gpu_name)
          and o.machine_id not in avoid
          and o.gpu_ram_mb >= policy.min_gpu_ram_mb
          and o.reliability >= policy.min_reliability
          and o.inet_down_mbps >= policy.min_inet_down_mbps
          and o.cuda_max_good >= policy.min_cuda
          and o.price_per_hour <= policy.max_offer_price_per_hour]

    def useful(o: Offer) -> float:
        lost = outbids.of(o.gpu_name) * mean_job_s / 7200 if outbids is not None else 0.0
        return max(0.05, 1.0 - lost)

    return sorted(ok, key=lambda o: (o.price_per_hour / useful(o)
                                     / (measured.get(o.gpu_name) or _speed_prior(o.gpu_name)),
                                     -o.reliability, o.offer_id))
