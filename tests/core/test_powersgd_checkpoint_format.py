"""Checkpoints saved by an earlier version of PowerSGD load and continue exactly where they stopped.

`checkpoint_fixture` wrote each scheme's per-rank state (after a warm-up step, compressed steps and
a step with a zero gradient) and the outputs the saving code returned for the next steps.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from . import checkpoint_fixture as fixture

SAVED = json.loads(fixture.FIXTURE.read_text())


@pytest.mark.parametrize("scheme", sorted(fixture.SCHEMES))
def test_a_saved_checkpoint_loads_and_continues_as_the_saving_code_did(scheme):
    saved = SAVED[scheme]
    assert saved["options"] == fixture.SCHEMES[scheme]
    states = [fixture.from_json(state) for state in saved["states"]]
    results = fixture.run(saved["options"], state=states)
    expected = [fixture.from_json(step) for step in saved["outputs"]]
    for rank_saved, replayed in results:
        assert len(replayed) == len(expected) == fixture.REPLAYED
        for got, want in zip(replayed, expected):
            assert got.keys() == want.keys()
            for name in want:
                np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6,
                                           err_msg=f"{scheme}: {name}")
