"""Write the three simulator traces (steady, bursty, diurnal) next to this file.

Seeded, so the CSVs in the repository are exactly what this writes:
``.venv/bin/python bench/traces/make_traces.py``. Each row is ``arrival_s,operation,media_s``.

- steady: Poisson arrivals, one job per 30 s on average, for 4 hours.
- bursty: one job per 5 minutes for 6 hours, plus six bursts of 50-200 jobs, each arriving
  within one minute (a batch submission); this is the trace with targets.
- diurnal: 24 hours whose rate follows the day, from one job per ~5 minutes at 03:00 to one
  per ~15 s at 15:00 (thinned Poisson).
"""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20261128
_MIX = (("caption", 0.5), ("img2vid", 0.2), ("add_audio", 0.3))
_MEDIA_MEDIAN_S = {"caption": 60.0, "img2vid": 15.0, "add_audio": 90.0}


def _job(rng: random.Random, arrival_s: float) -> tuple[float, str, float]:
    operation = rng.choices([m[0] for m in _MIX], [m[1] for m in _MIX])[0]
    media_s = min(1800.0, max(2.0, _MEDIA_MEDIAN_S[operation] * rng.lognormvariate(0, 0.8)))
    return round(arrival_s, 1), operation, round(media_s, 1)


def _poisson(rng: random.Random, rate_per_s: float, start_s: float, end_s: float) -> list[float]:
    times, t = [], start_s
    while True:
        t += rng.expovariate(rate_per_s)
        if t >= end_s:
            return times
        times.append(t)


def steady(rng: random.Random) -> list[float]:
    return _poisson(rng, 1 / 30, 0.0, 4 * 3600)


def bursty(rng: random.Random) -> list[float]:
    span_s = 6 * 3600
    times = _poisson(rng, 1 / 300, 0.0, span_s)
    for k in range(6):
        start_s = (k + 0.2 + 0.6 * rng.random()) * span_s / 6
        times += [start_s + rng.uniform(0, 60) for _ in range(rng.randint(50, 200))]
    return times


def diurnal(rng: random.Random) -> list[float]:
    def rate_per_s(t: float) -> float:  # lowest at 03:00, highest at 15:00
        return (1 / 300) + (1 / 15 - 1 / 300) * (1 - math.cos(2 * math.pi * (t - 3 * 3600)
                                                              / 86_400)) / 2

    peak = 1 / 15
    return [t for t in _poisson(rng, peak, 0.0, 86_400.0) if rng.random() < rate_per_s(t) / peak]


def write(name: str, arrivals: list[float], rng: random.Random) -> int:
    rows = [_job(rng, t) for t in sorted(arrivals)]
    with (HERE / f"{name}.csv").open("w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["arrival_s", "operation", "media_s"])
        out.writerows(rows)
    return len(rows)


def main() -> None:
    for name, make in (("steady", steady), ("bursty", bursty), ("diurnal", diurnal)):
        rng = random.Random(f"{SEED}:{name}")
        print(f"{name}: {write(name, make(rng), rng)} jobs")


if __name__ == "__main__":
    main()
