"""The end-to-end Horovod Elastic job both frameworks' tests run (tests/torch/test_elastic.py,
tests/tensorflow/test_elastic.py): the workers' side and the tests' side of one protocol.

``horovodrun --gloo -np 2 --min-np 1 --max-np 2 --host-discovery-script S`` runs a framework's
worker script; S prints a hosts file that rank 0 rewrites (``localhost:2`` → ``localhost:1`` after
step `REMOVE_AT` → ``localhost:2`` after step `ADD_AT`, of `STEPS`). Horovod removes slot 1's process
at the first change (it ends inside ``hvd.init()``) and starts a new one at the second, which joins
through the state's ``sync()``. Rank 0 waits for the driver's notification after each rewrite, so
each reset happens at a fixed step whatever the machine's speed.

Workers (`train_elastically`) append one JSON line per event to ``<results>/proc-<pid>.jsonl`` and
flush it at once (a process that Horovod removes has no chance to write later):

* ``start`` — each time training (re)starts: world size, rank, a digest of the compressor's shared
  state (class, config, step counters, warm-start factors) and of its own error buffers, every
  rank's shared digest (all-gathered), and the error digests at this process's last commit;
* ``step`` — each step: a digest of the reduced gradients and of the parameters, every rank's
  digests (all-gathered), the loss;
* ``done`` — at the end: the evaluation loss before and after training.

The tests (`run_job`, `Story`, `ElasticJobChecks`) judge the run by those files, never by the
console output.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import threading
import time
from collections import defaultdict

import numpy as np

STEPS = 24
REMOVE_AT = 7  # after this many steps: localhost:2 -> localhost:1
ADD_AT = 15  # after this many steps: localhost:1 -> localhost:2 (odd: a single-round Q-step)
NOTIFY_TIMEOUT = 30.0  # seconds to wait for the driver's notification of a hosts change
TIMEOUT = 150  # seconds for one whole elastic job (20-40 s when the machine is idle)


# ---------------------------------------------------------------------------------- workers' side
def digest(arrays) -> int:
    """A signed 64-bit digest of the arrays' bytes (torch or TF tensors, NumPy arrays; None hashes
    as a marker)."""
    h = hashlib.blake2b(digest_size=8)
    for a in arrays:
        if a is None:
            h.update(b"<none>")
            continue
        if hasattr(a, "detach"):  # torch
            a = a.detach().cpu()
        a = np.asarray(a.numpy() if hasattr(a, "numpy") else a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return int.from_bytes(h.digest(), "little", signed=True)


def shared_and_own(compressor):
    """(digest of what every rank must share, {tensor: digest of this rank's error buffer or None})."""
    state = compressor.state_dict()
    shared = json.dumps({"compressor": state["compressor"], "config": state["config"]}, sort_keys=True)
    parts, own = [np.frombuffer(shared.encode(), dtype=np.uint8)], {}
    for name, tensor in sorted(state["tensors"].items()):
        parts.append(np.frombuffer(name.encode(), dtype=np.uint8))
        parts.append(np.array([tensor["step"]], dtype=np.int64))
        parts += [tensor.get(field) for field in ("q", "p")]
        own[name] = None if tensor.get("error") is None else digest([tensor["error"]])
    return digest(parts), own


class HostsChanges:
    """Rank 0's side: rewrite the hosts file, then wait for the driver to notify this process."""

    def __init__(self, hosts_file):
        self.hosts_file = hosts_file
        self.notified = threading.Event()
        self.last_timestamp = 0

    def on_hosts_updated(self, timestamp, update_res):  # called by Horovod's notification service
        self.last_timestamp = max(self.last_timestamp, timestamp)
        self.notified.set()

    def change(self, slots: int):
        # Horovod ignores a notification no newer (in whole seconds) than the last one it acted on
        while int(time.time()) <= self.last_timestamp:
            time.sleep(0.05)
        self.notified.clear()
        tmp = self.hosts_file + ".tmp"
        with open(tmp, "w") as handle:
            handle.write(f"localhost:{slots}\n")
        os.replace(tmp, self.hosts_file)  # the discovery script never reads half a file
        if not self.notified.wait(NOTIFY_TIMEOUT):
            raise RuntimeError(f"no hosts-updated notification {NOTIFY_TIMEOUT} s after writing "
                               f"localhost:{slots}")


def train_elastically(hvd, state, compression, step, evaluation_loss, gathered, results_dir,
                      hosts_file):
    """The worker's whole job under ``hvd.elastic.run`` (``hvd`` is horovod.torch or
    horovod.tensorflow). ``state`` has attributes ``step`` and ``initial_loss`` (None at first);
    ``step(n)`` trains step ``n`` on this rank's batch and returns (reduced gradients, parameters,
    loss); ``gathered(values)`` all-gathers a list of int64 from every rank as a list of rows."""
    from horovod.common.elastic import notification_manager

    log_file = open(os.path.join(results_dir, f"proc-{os.getpid()}.jsonl"), "a")

    def log(event, **fields):
        record = {"event": event, "pid": os.getpid(), "time": time.time(), "rank": hvd.rank(),
                  "size": hvd.size(), "step": state.step, **fields}
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()

    changes = HostsChanges(hosts_file)
    notification_manager.register_listener(changes)  # the driver notifies rank 0 only
    committed_errors = {"at": None}  # this process's error digests at its last commit

    @hvd.elastic.run
    def train(state):
        shared, own = shared_and_own(compression)
        log("start", shared=shared, own=own, committed_own=committed_errors["at"],
            shared_all=[row[0] for row in gathered([shared])])
        if state.initial_loss is None:
            state.initial_loss = evaluation_loss()
        while state.step < STEPS:
            gradients, parameters, loss = step(state.step)
            grads, params = digest(gradients), digest(parameters)
            shared, _ = shared_and_own(compression)
            log("step", grads=grads, params=params, shared=shared,
                all=gathered([grads, params, shared]), loss=float(loss))
            state.step += 1
            if hvd.rank() == 0 and state.step in (REMOVE_AT, ADD_AT):
                changes.change(1 if state.step == REMOVE_AT else 2)
            committed_errors["at"] = shared_and_own(compression)[1]
            state.commit()  # raises HostsUpdatedInterrupt on every rank after a membership change
        return evaluation_loss()

    final = train(state)
    log("done", initial_loss=state.initial_loss, final_loss=final)
    log_file.close()


# ------------------------------------------------------------------------------------ tests' side
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


def run_job(directory, worker_script, *worker_args) -> Story:
    """Run one elastic job of ``worker_script`` (called as ``worker_script RESULTS_DIR HOSTS_FILE
    *worker_args``) in ``directory``; its story, after asserting that the job succeeded."""
    from tests.launch import ROOT, elastic_args, run

    hosts = directory / "hosts"
    hosts.write_text("localhost:2\n")
    discovery = directory / "discover_hosts.sh"  # must be executable and print host:slots lines
    discovery.write_text(f"#!/bin/sh\ncat '{hosts}'\n")
    discovery.chmod(discovery.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    argv = [sys.executable, "-u", str(ROOT / worker_script), str(directory), str(hosts),
            *worker_args]
    rc, output = run("gloo", argv, np=2, timeout=TIMEOUT,
                     launcher_args=elastic_args(discovery, min_np=1, max_np=2, timeout=60))
    logs = {}
    for name in sorted(os.listdir(directory)):
        if name.startswith("proc-") and name.endswith(".jsonl"):
            with open(directory / name) as handle:
                events = [json.loads(line) for line in handle if line.strip()]
            if events:
                logs[name[len("proc-"):-len(".jsonl")]] = events
    story = Story(logs, output)
    assert rc == 0, (f"elastic job ({' '.join(worker_args)}) failed, rc={rc} (-9: killed after "
                     f"{TIMEOUT} s)\n{story.summary()}\n--- output ---\n{output[-8000:]}")
    print(f"\n{' '.join(worker_args)}:\n{story.summary()}\n{output.strip().splitlines()[-1]}")
    return story


class ElasticJobChecks:
    """The tests of one elastic job: subclass it as ``Test...`` in a test module that defines a
    ``story`` fixture (a `Story` from `run_job`)."""

    def test_slot_removed_and_re_added_mid_training(self, story):
        """Three processes: one trains all steps at 2, 1, 2 ranks; slot 1's first process leaves
        after step REMOVE_AT; a new one joins at step ADD_AT (odd: with the single-round variant its
        first step sends Q, from rank 0's P) and finishes."""
        assert len(story.logs) == 3, story.summary()
        assert story.survivor and story.joiner and story.removed, story.summary()
        sizes = {e["step"]: e["size"] for e in story.survivor if e["event"] == "step"}
        assert sizes == {s: 1 if REMOVE_AT <= s < ADD_AT else 2 for s in range(STEPS)}
        assert [(e["step"], e["size"]) for e in story.survivor if e["event"] == "start"] == [
            (0, 2), (REMOVE_AT, 1), (ADD_AT, 2)], story.summary()
        assert [e["step"] for e in story.removed if e["event"] == "step"] == list(range(REMOVE_AT))
        assert [e["step"] for e in story.joiner if e["event"] == "step"] == list(range(ADD_AT, STEPS))
        assert story.joiner[0]["rank"] == 1 and story.joiner[-1]["step"] == STEPS

    def test_gradients_and_parameters_identical_on_all_ranks_every_step(self, story):
        """Each step every rank all-gathers digests of its reduced gradients and parameters: equal
        on all ranks, and as many ranks logged the step as the world had."""
        by_step = defaultdict(list)
        for e in story.events("step"):
            assert len(e["all"]) == e["size"], e
            assert all(row[:2] == e["all"][0][:2] for row in e["all"]), f"step {e['step']}: {e['all']}"
            by_step[e["step"]].append(e)
        assert sorted(by_step) == list(range(STEPS))
        for step, events in by_step.items():
            assert len(events) == events[0]["size"], f"step {step}: logged by {len(events)} processes"
            assert len({(e["grads"], e["params"]) for e in events}) == 1, f"step {step} differs"

    def test_every_ranks_compressor_agrees_after_each_reset(self, story):
        """Config, step counters and warm-start factors: one digest, equal on all ranks when training
        (re)starts and after every step; the joiner has rank 0's (not a fresh compressor's)."""
        for e in story.events("start"):
            assert len(e["shared_all"]) == e["size"] and len(set(e["shared_all"])) == 1, e
        for e in story.events("step"):
            assert len({row[2] for row in e["all"]}) == 1, f"step {e['step']}: {e['all']}"
        survivor_start = next(e for e in story.survivor if e["event"] == "start" and e["step"] == ADD_AT)
        assert story.joiner[0]["shared"] == survivor_start["shared"]
        fresh = [e for e in story.survivor if e["event"] == "start"][0]["shared"]
        assert story.joiner[0]["shared"] != fresh  # it did receive warm-start factors and counters

    def test_error_buffers_follow_the_documented_rule(self, story):
        """Each process keeps its own error buffers through every reset (the survivor's, at both
        changes, are those of its last commit); the process that joins starts with none (zero)."""
        resets = [e for e in story.survivor if e["event"] == "start" and e["step"] > 0]
        assert len(resets) == 2
        for e in resets:
            assert e["own"] == e["committed_own"], f"step {e['step']}: {e['own']} != {e['committed_own']}"
            assert any(v is not None for v in e["own"].values()), "no error buffer to keep: a vacuous test"
        assert story.joiner[0]["own"] and all(v is None for v in story.joiner[0]["own"].values())

    def test_training_continues(self, story):
        done = [story.survivor[-1], story.joiner[-1]]
        assert done[0]["final_loss"] == done[1]["final_loss"]
        assert done[0]["initial_loss"] == done[1]["initial_loss"]
        assert done[0]["final_loss"] < 0.5 * done[0]["initial_loss"], done
