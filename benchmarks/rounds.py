"""Side-by-side timing: several contenders of one job measured in the same rounds.

On a shared machine the same job's step time moves by 10–20 % between runs (2 cores, AMD EPYC),
more than the differences between compressor specs. So each contender (a `Variant`: its own model
and step) gets one timed step per round, the order rotated every round: slow drift falls on every
variant alike, and the ratios between them are measured under the same conditions. Before each timed
step the rank runs one step of an identical model without any collective — that variant's compute
sample, taken next to its step.
"""
from __future__ import annotations

import dataclasses
import re
import subprocess
import time
from typing import Callable, List, Optional

from benchmarks.tasks import median


def link_bytes(dev: str = "eth0") -> int:
    """Bytes sent by this host's emulated NIC so far (the tbf qdisc's counter); -1 off-cluster."""
    try:
        out = subprocess.run(["tc", "-s", "qdisc", "show", "dev", dev], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return -1
    match = re.search(r"Sent (\d+) bytes", out)
    return int(match.group(1)) if match else -1


def time_steps(step_fn, warmup: int, steps: int) -> list:
    for i in range(warmup):
        step_fn(i)
    times = []
    for i in range(warmup, warmup + steps):
        t0 = time.perf_counter()
        step_fn(i)
        times.append(time.perf_counter() - t0)
    return times


@dataclasses.dataclass
class Variant:
    """One contender of the rounds: a label, its model and its full step (zero_grad … step())."""

    label: str
    model: object
    step: Callable[[int], None]
    compression: Optional[object] = None  # a Horovod spec's compressor
    prefix: str = ""  # its parameters' names in Horovod (unique per variant: the response cache keys
    #                   by name, and every spec sends other shapes under it)
    times: List[float] = dataclasses.field(default_factory=list)
    plain_times: List[float] = dataclasses.field(default_factory=list)
    sent_on_link: int = 0  # bytes this host's NIC sent during the variant's timed steps


def warm_up(variants: List[Variant], steps: int) -> None:
    """Every variant's first steps (agreement, warm start, a hook's uncompressed iterations)."""
    for i in range(steps):
        for variant in variants:
            variant.step(i)


def run_rounds(variants: List[Variant], plain_step: Callable[[int], None], barrier: Callable[[], None],
               first: int, rounds: int) -> None:
    """``rounds`` rounds of one timed step per variant (batches ``first`` …), the order rotated
    each round; before each, one plain step (the variant's compute sample) and a ``barrier`` so that
    every rank starts the timed step together, as the previous step's collective would make them."""
    for round_ in range(rounds):
        i = first + round_
        shift = round_ % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            variant.plain_times += time_steps(plain_step, 0, 1)  # no collectives: the link stays idle
            before = link_bytes()
            barrier()
            variant.times += time_steps(lambda _: variant.step(i), 0, 1)
            variant.sent_on_link += link_bytes() - before


def summarize(variant: Variant, rounds: int, slowest: Callable[[float], float]) -> dict:
    """The variant's figures: median step, its compute (``slowest`` takes this rank's median plain
    step to the slowest rank's: a synchronous step waits for it) and the link's bytes per step."""
    on_cluster = link_bytes() >= 0
    return {"spec": variant.label, "step_s": median(variant.times),
            "step_mean_s": sum(variant.times) / len(variant.times),
            "step_times_s": list(variant.times),  # this rank's, round by round: resolution, pairing
            "compute_s": slowest(float(median(variant.plain_times))),
            "link_bytes_per_step": variant.sent_on_link / rounds if on_cluster else None}


def plain_stepper(task, warmup: int):
    """The model every compute sample steps: the task's model with a plain optimizer (no hooks, no
    collectives), warmed up. Returns (model, step)."""
    import torch

    model = task.model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(i):
        optimizer.zero_grad()
        task.loss(model, i).backward()
        optimizer.step()

    time_steps(step, warmup, 0)
    return model, step
