"""Kills (issue 7): training SIGKILLed mid-epoch and during a checkpoint write, inference SIGKILLed mid-folder.

Each case starts a real child process, waits until it stalls at the kill point (a half-written checkpoint or
output, or the middle of an epoch), kills it with SIGKILL, then checks that the newest complete file loads and that
resuming or re-running ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import pytest

from tests import faults

KILLS = [case for case in faults.CASES if case.slow]


def test_every_kill_case_is_here():
    assert {case.name for case in KILLS} == {
        "kill/train-mid-epoch",
        "kill/train-during-checkpoint-write",
        "kill/inference-mid-folder",
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", KILLS, ids=[case.name for case in KILLS])
def test_kill_loses_nothing_and_the_rerun_matches_an_uninterrupted_run(case, tmp_path):
    outcome = faults.run_case(case, tmp_path)
    assert outcome.ok, f"{outcome.status}: {outcome.detail}"
