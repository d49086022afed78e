"""Progress bars and results, the same for every example and framework (no framework imports).

Rank 0 prints one line per epoch and, with ``--json PATH``, appends one JSON record per epoch (and per
``--eval-every`` point) plus a final one, which the benchmark and scripts/demo.sh read.
"""
from __future__ import annotations

import json
import statistics
import sys
import time


def progress(iterable, *, enabled: bool, desc: str, total: int):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr, dynamic_ncols=True)


class Reporter:
    """Rank 0 prints one line per epoch and (with ``--json``) appends machine-readable records."""

    def __init__(self, hvd, args, task: str, metric_name: str):
        self.hvd, self.args, self.task, self.metric_name = hvd, args, task, metric_name
        self.engine = getattr(args, "engine", "horovod")  # the TensorFlow examples have Horovod only
        self.start = time.perf_counter()
        self.train_seconds = 0.0
        self.step_seconds = []  # every training step's wall time (forward, backward, communication, update)

    def step_done(self, seconds: float) -> None:
        self.step_seconds.append(seconds)

    def step_summary(self) -> dict:
        """Mean, median and 90th percentile of the step times so far (rank 0's clock)."""
        s = self.step_seconds
        if not s:
            return {}
        p90 = statistics.quantiles(s, n=10)[-1] if len(s) > 1 else s[0]
        return {"mean": statistics.fmean(s), "median": statistics.median(s), "p90": p90}

    def epoch(self, epoch: int, train_loss: float, metric: float, compression, steps: int):
        stats = compression.stats
        record = {"task": self.task, "engine": self.engine, "compression": self.args.compression,
                  "epoch": epoch,
                  "steps": steps, "train_loss": train_loss, self.metric_name: metric,
                  "train_seconds": self.train_seconds,
                  "wall_seconds": time.perf_counter() - self.start, "ranks": self.hvd.size(),
                  "sent_bytes": stats.total.sent, "uncompressed_bytes": stats.total.uncompressed,
                  "compression_ratio": stats.total.ratio,
                  "codec_seconds": stats.compress_seconds + stats.decompress_seconds,
                  "own_round_wait_seconds": stats.wait_seconds,
                  "groups": getattr(self.hvd, "groups", None),
                  "step_seconds": self.step_summary()}
        if self.hvd.rank() == 0:
            print(f"epoch {epoch}: train loss {train_loss:.4f}  {self.metric_name} {metric:.4f}  "
                  f"train {self.train_seconds:.1f} s  wall {record['wall_seconds']:.1f} s  "
                  f"sent {stats.total.sent / 1e6:.2f} MB (ratio {stats.total.ratio:.1f}x)", flush=True)
            self._write(record)
        return record

    def point(self, steps: int, metric: float, compression):
        """A mid-epoch measurement (``--eval-every``), for time-to-accuracy curves."""
        if self.hvd.rank() == 0:
            self._write({"task": self.task, "engine": self.engine, "compression": self.args.compression,
                         "steps": steps,
                         self.metric_name: metric, "train_seconds": self.train_seconds,
                         "sent_bytes": compression.stats.total.sent})

    def final(self, record: dict):
        if self.hvd.rank() == 0:
            print("RESULT " + json.dumps({**record, "final": True}), flush=True)
            self._write({**record, "final": True})

    def _write(self, record):
        if self.args.json is not None:
            self.args.json.parent.mkdir(parents=True, exist_ok=True)
            with open(self.args.json, "a") as handle:
                handle.write(json.dumps(record) + "\n")
