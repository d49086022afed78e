"""Run any Horovod program on the emulated cluster (root): N hosts with rate-limited links.

    sudo .venv/bin/python -m benchmarks.emulate --rate 1gbit --workers 2 -- \\
        .venv/bin/python -m examples.torch_fashion_mnist --compression powersgd:rank=2

Like ``horovodrun -np N`` but every rank sits behind its own ``--rate`` NIC (`benchmarks.cluster`);
``--launcher torch`` runs a torch.distributed program instead (``MASTER_ADDR``, ``RANK``,
``WORLD_SIZE`` set per worker, as torchrun does).
Rank 0's output is printed; the exit status is the first failing rank's (0 when all succeed).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.cluster import Cluster, ClusterError, enter_sandbox

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", default="1gbit")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--launcher", choices=("horovod", "torch"), default="horovod")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/horovod-powersgd-emulate"))
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    try:
        enter_sandbox([sys.executable, "-m", "benchmarks.emulate", *argv])
        with Cluster(args.workers, args.rate, args.workdir) as cluster:
            launch = cluster.run_torch_distributed if args.launcher == "torch" else cluster.run_horovod
            results = launch(command, {"PYTHONPATH": str(ROOT)}, args.timeout, "emulate")
    except ClusterError as error:
        print(f"benchmarks.emulate: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(results[0].log)
    bad = [r for r in results if r.returncode != 0]
    for r in bad[:1]:
        if r.rank != 0:
            sys.stderr.write(f"--- rank {r.rank} (exit {r.returncode}) ---\n{r.log[-3000:]}")
    return bad[0].returncode if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
