"""Outbid rates learned per GPU model (controller/estimate.py ``Outbids``) and what they do to
the offers an interruptible fleet rents (controller/ranking.py): as tables of decide()."""

from __future__ import annotations

import pytest

from controller.estimate import OutbidRates, Outbids
from controller.policy import decide
from tests.test_policy import POLICY, offer, rents, snap


def test_no_outbid_learns_nothing() -> None:
    """On-demand machines are never taken back: no rate, and the ranking is as before."""
    outbids = Outbids()
    outbids.ended("RTX 4090", 30.0, outbid=False)
    assert outbids.rates([("RTX 3060", 5.0)]) == OutbidRates({})


def test_a_models_rate_is_its_outbids_over_its_hours_shrunk_toward_the_pool() -> None:
    outbids = Outbids(prior_h=2.0)
    for _ in range(4):  # four 4090s taken back within 2 h of machine time
        outbids.ended("RTX 4090", 0.5, outbid=True)
    outbids.ended("RTX 3060", 20.0, outbid=False)
    rates = outbids.rates([("RTX 3060", 2.0)])  # one more 3060 up for 2 h so far
    pooled = 4 / 24.0
    assert rates.other == pytest.approx(pooled)  # a model never rented: the fleet's rate
    assert rates.of("RTX 4090") == pytest.approx((4 + 2 * pooled) / (2.0 + 2.0))  # ~1.08/h
    assert rates.of("RTX 3060") == pytest.approx(2 * pooled / (22.0 + 2.0))  # ~0.014/h
    assert rates.of("A4000") == rates.other
    # One outbid of a model run for ten minutes is not six an hour.
    once = Outbids(prior_h=2.0)
    once.ended("RTX 4090", 1 / 6, outbid=True)
    assert once.rates().of("RTX 4090") == pytest.approx((1 + 2 * 0.5) / (1 / 6 + 2.0))


def test_long_jobs_avoid_the_models_often_taken_back_short_jobs_do_not_care() -> None:
    """A 4090 10 % cheaper but outbid twice an hour: each outbid reruns half a job. For
    one-minute jobs that is 1.7 % of its time; for half-hour jobs, half of it."""
    offers = (offer(1, 0.45, "RTX 4090"), offer(2, 0.50, "RTX 4090 D"))
    outbids = OutbidRates({"RTX 4090": 2.0, "RTX 4090 D": 0.0})
    short = snap(queued=1, work_s=60, offers=offers, mean_job_s=60.0, outbids=outbids)
    assert [r.offer_id for r in rents(decide(short, POLICY))] == [1]
    long = snap(queued=1, work_s=1800, offers=offers, mean_job_s=1800.0, outbids=outbids)
    assert [r.offer_id for r in rents(decide(long, POLICY))] == [2]
    unlearned = snap(queued=1, work_s=1800, offers=offers, mean_job_s=1800.0)
    assert [r.offer_id for r in rents(decide(unlearned, POLICY))] == [1]
