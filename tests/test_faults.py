"""The fault suite's short version (bench/faults.py has the whole one and its figures in
docs/reliability.md): agents SIGKILLed at random moments while jobs run on the real stack lose
nothing, run nothing twice and leave nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.faults import run


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_agents_killed_at_random_lose_nothing_and_leave_nothing(tmp_path: Path) -> None:
    figures = await run("agents", jobs=4, kills=2, seed=1, root=tmp_path)
    assert figures.faults == 2
    assert (figures.submitted, figures.succeeded, dict(figures.failed)) == (4, 4, {})
    assert (figures.lost, figures.duplicated, figures.bad_sha) == ([], [], [])
    assert (figures.processes_left, figures.areas_left) == ([], [])
