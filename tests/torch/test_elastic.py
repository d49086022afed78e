"""Horovod Elastic end to end: a slot removed and re-added mid-training, with PowerSGD in
``hvd.elastic.TorchState``.

``horovodrun --gloo -np 2 --min-np 1 --max-np 2 --host-discovery-script S`` runs
tests/torch/distributed/elastic_worker.py; S prints a hosts file that rank 0 rewrites
(``localhost:2`` → ``localhost:1`` after step 7 → ``localhost:2`` after step 15, of 24). Horovod
removes slot 1's process at the first change (it ends inside ``hvd.init()``) and starts a new one at
the second, which joins through ``TorchState.sync()``. Every process writes its own log of
digests; these tests judge the run by those files, never by the console output.
"""
import json
import os
import stat
import sys
from collections import defaultdict

import pytest

from tests.launch import ROOT, elastic_args, run

sys.path.insert(0, str(ROOT / "tests/torch/distributed"))
import elastic_worker as worker  # noqa: E402

SPECS = {"powersgd": "powersgd:rank=2", "powersgd_single_round": "powersgd:rank=2,alternate=True"}
TIMEOUT = 150  # seconds for one whole elastic job (about 20 s when the machine is idle)


class Story:
    """What every process of one elastic job logged, by role."""

    def __init__(self, logs: dict, output: str):
        self.logs, self.output = logs, output
        finished = [events for events in logs.values() if events[-1]["event"] == "done"]
        self.survivor = next((e for e in finished if e[0]["step"] == 0), None)
        self.joiner = next((e for e in finished if e[0]["step"] > 0), None)
        self.removed = next((e for e in logs.values() if e[-1]["event"] != "done"), None)

    def summary(self) -> str:
        lines = []
        for pid, events in sorted(self.logs.items()):
            starts = [f"step {e['step']} rank {e['rank']}/{e['size']}"
                      for e in events if e["event"] == "start"]
            steps = [e["step"] for e in events if e["event"] == "step"]
            span = f"steps {steps[0]}..{steps[-1]}" if steps else "no steps"
            lines.append(f"process {pid}: starts [{'; '.join(starts)}], {span}, last event "
                         f"{events[-1]['event']!r}")
        return "\n".join(lines)

    def events(self, kind: str):
        return [e for events in self.logs.values() for e in events if e["event"] == kind]


@pytest.fixture(scope="module", params=sorted(SPECS))
def story(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"elastic-{request.param}")
    hosts = directory / "hosts"
    hosts.write_text("localhost:2\n")
    discovery = directory / "discover_hosts.sh"  # must be executable and print host:slots lines
    discovery.write_text(f"#!/bin/sh\ncat '{hosts}'\n")
    discovery.chmod(discovery.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    argv = [sys.executable, "-u", str(ROOT / "tests/torch/distributed/elastic_worker.py"),
            str(directory), str(hosts), SPECS[request.param]]
    rc, output = run("gloo", argv, np=2, timeout=TIMEOUT,
                     launcher_args=elastic_args(discovery, min_np=1, max_np=2, timeout=60))
    logs = {}
    for name in sorted(os.listdir(directory)):
        if name.startswith("proc-") and name.endswith(".jsonl"):
            with open(directory / name) as handle:
                events = [json.loads(line) for line in handle if line.strip()]
            if events:
                logs[name[len("proc-"):-len(".jsonl")]] = events
    result = Story(logs, output)
    assert rc == 0, (f"elastic job ({SPECS[request.param]}) failed, rc={rc} (-9: killed after "
                     f"{TIMEOUT} s)\n{result.summary()}\n--- output ---\n{output[-8000:]}")
    print(f"\n{SPECS[request.param]}:\n{result.summary()}")
    return result


def test_slot_removed_and_re_added_mid_training(story):
    """Three processes: one trains all 24 steps at 2, 1, 2 ranks; slot 1's first process leaves after
    step 7; a new one joins at step 15 (odd: with the single-round variant its first step sends Q,
    from rank 0's P) and finishes."""
    assert len(story.logs) == 3, story.summary()
    assert story.survivor and story.joiner and story.removed, story.summary()
    sizes = {e["step"]: e["size"] for e in story.survivor if e["event"] == "step"}
    assert sizes == {s: 1 if worker.REMOVE_AT <= s < worker.ADD_AT else 2 for s in range(worker.STEPS)}
    assert [(e["step"], e["size"]) for e in story.survivor if e["event"] == "start"] == [
        (0, 2), (worker.REMOVE_AT, 1), (worker.ADD_AT, 2)], story.summary()
    assert [e["step"] for e in story.removed if e["event"] == "step"] == list(range(worker.REMOVE_AT))
    assert [e["step"] for e in story.joiner if e["event"] == "step"] == list(
        range(worker.ADD_AT, worker.STEPS))
    assert story.joiner[0]["rank"] == 1 and story.joiner[-1]["step"] == worker.STEPS


def test_gradients_and_parameters_identical_on_all_ranks_every_step(story):
    """Each step every rank all-gathers digests of its reduced gradients and parameters: equal on
    all ranks, and as many ranks logged the step as the world had."""
    by_step = defaultdict(list)
    for e in story.events("step"):
        assert len(e["all"]) == e["size"], e
        assert all(row[:2] == e["all"][0][:2] for row in e["all"]), f"step {e['step']}: {e['all']}"
        by_step[e["step"]].append(e)
    assert sorted(by_step) == list(range(worker.STEPS))
    for step, events in by_step.items():
        assert len(events) == events[0]["size"], f"step {step}: logged by {len(events)} processes"
        assert len({(e["grads"], e["params"]) for e in events}) == 1, f"step {step} differs"


def test_every_ranks_compressor_agrees_after_each_reset(story):
    """Config, step counters and warm-start factors: one digest, equal on all ranks when training
    (re)starts and after every step; the joiner has rank 0's (not a fresh compressor's)."""
    for e in story.events("start"):
        assert len(e["shared_all"]) == e["size"] and len(set(e["shared_all"])) == 1, e
    for e in story.events("step"):
        assert len({row[2] for row in e["all"]}) == 1, f"step {e['step']}: {e['all']}"
    survivor_start = next(e for e in story.survivor if e["event"] == "start" and e["step"] == worker.ADD_AT)
    assert story.joiner[0]["shared"] == survivor_start["shared"]
    fresh = [e for e in story.survivor if e["event"] == "start"][0]["shared"]
    assert story.joiner[0]["shared"] != fresh  # it did receive warm-start factors and counters


def test_error_buffers_follow_the_documented_rule(story):
    """Each process keeps its own error buffers through every reset (the survivor's, at both
    changes, are those of its last commit); the process that joins starts with none (zero)."""
    resets = [e for e in story.survivor if e["event"] == "start" and e["step"] > 0]
    assert len(resets) == 2
    for e in resets:
        assert e["own"] == e["committed_own"], f"step {e['step']}: {e['own']} != {e['committed_own']}"
        assert any(v is not None for v in e["own"].values()), "no error buffer to keep: a vacuous test"
    assert story.joiner[0]["own"] and all(v is None for v in story.joiner[0]["own"].values())


def test_training_continues(story):
    done = [story.survivor[-1], story.joiner[-1]]
    assert done[0]["final_loss"] == done[1]["final_loss"]
    assert done[0]["initial_loss"] == done[1]["initial_loss"]
    assert done[0]["final_loss"] < 0.5 * done[0]["initial_loss"], done
