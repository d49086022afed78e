#!/usr/bin/env bash
# The main job, from a fresh clone: set up (a no-op when done), then train the Fashion-MNIST CNN on
# 2 ranks five times with the same loop — Horovod uncompressed, PyTorch DDP with its powerSGD_hook at
# rank 2 (the peer), and rank-2 PowerSGD in each of its schemes — and rank them by time to accuracy.
#
# As root (where network namespaces are allowed) the two ranks talk over an emulated 1 Gbit/s link
# per worker (benchmarks/cluster.py, docs/design.md), the regime where compression matters; otherwise
# over this machine's loopback (several Gbit/s: expect little or no speed-up there).
#   DEMO_RATE=200mbit bash scripts/demo.sh      # another link speed
#   DEMO_EPOCHS=1 DEMO_TRAIN_LIMIT=20000 …      # shorter run (default: 2 epochs of all 60k images)
#   DEMO_NETWORK=loopback …                     # force plain horovodrun
#   HOROVOD_CYCLE_TIME=1 …                      # Horovod's own default cycle (the demo uses 3 ms)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh

PY="$ROOT/.venv/bin/python"
RATE="${DEMO_RATE:-1gbit}"
EPOCHS="${DEMO_EPOCHS:-2}"
LIMIT="${DEMO_TRAIN_LIMIT:-60000}"
LOCK=/tmp/horovod-powersgd-multiprocess.lock  # one multi-process run at a time on this machine
OUT="$(mktemp -d /tmp/horovod-powersgd-demo.XXXXXX)"
export TF_CPP_MIN_LOG_LEVEL=3 OMP_NUM_THREADS=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# The user guide's advice (Launching) for hosts whose cores are all busy with the model (CPU training):
# Horovod's background thread coordinates every cycle, and at its 1 ms default it slowed this CNN's
# own forward and backward by 25-50 % on a 2-core machine. Applied to every run alike.
export HOROVOD_CYCLE_TIME="${HOROVOD_CYCLE_TIME:-3}"

NETWORK="${DEMO_NETWORK:-}"
if [ -z "$NETWORK" ]; then
  if [ "$(id -u)" -eq 0 ] && unshare -nm --propagation private true 2>/dev/null; then
    NETWORK=emulated
  else
    NETWORK=loopback
  fi
fi
if [ "$NETWORK" = emulated ]; then
  echo "==> [demo] 2 workers, each behind an emulated $RATE link (network namespaces + tc tbf)"
else
  echo "==> [demo] 2 workers over loopback (not root or no namespaces: no slow link to emulate)"
fi

# engine/compression: Horovod uncompressed, the peer a PyTorch user already has (DDP + its
# powerSGD_hook at rank 2), and ours in each scheme; accuracy measured along the way (--eval-every)
RUNS=(horovod/none ddp/powersgd:rank=2 horovod/powersgd:rank=2 horovod/powersgd:rank=2,two_sided=True
      horovod/powersgd:rank=2,alternate=True)
for RUN in "${RUNS[@]}"; do
  ENGINE="${RUN%%/*}" SPEC="${RUN#*/}"
  echo "==> [demo] training with --engine $ENGINE --compression $SPEC"
  ARGS=(-m examples.torch_fashion_mnist --engine "$ENGINE" --compression "$SPEC" --epochs "$EPOCHS"
        --train-limit "$LIMIT" --test-limit 10000 --eval-every "${DEMO_EVAL_EVERY:-100}"
        --json "$OUT/${RUN//[\/:=,]/_}.jsonl")
  if [ "$NETWORK" = emulated ]; then
    LAUNCHER=$([ "$ENGINE" = ddp ] && echo torch || echo horovod)
    flock "$LOCK" "$PY" -m benchmarks.emulate --rate "$RATE" --workers 2 --launcher "$LAUNCHER" -- \
      "$PY" "${ARGS[@]}" --no-progress | grep -E '^(epoch|test)' || { echo "demo: the $RUN run failed" >&2; exit 1; }
  elif [ "$ENGINE" = ddp ]; then
    flock "$LOCK" "$ROOT/.venv/bin/torchrun" --nproc-per-node 2 "${ARGS[@]}" --no-progress 2>&1 \
      | grep -E '^epoch' || { echo "demo: the $RUN run failed" >&2; exit 1; }
  else
    flock "$LOCK" "$ROOT/.venv/bin/horovodrun" -np 2 --gloo "$PY" "${ARGS[@]}" 2>&1 \
      | grep -E 'stdout>:epoch' || { echo "demo: the $RUN run failed" >&2; exit 1; }
  fi
done

"$PY" - "$OUT" "$NETWORK" "$RATE" "${RUNS[@]}" <<'EOF'
import json, os, re, sys
from pathlib import Path

from benchmarks.tta import PEER, run_label, time_to_target
from horovod_powersgd import machine

out, network, rate, runs = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
records = {}
for run in runs:
    engine, spec = run.split("/", 1)
    path = out / (re.sub(r"[/:=,]", "_", run) + ".jsonl")
    records[engine, spec] = [json.loads(line) for line in path.read_text().splitlines()]
final = {key: [r for r in rs if r.get("final")][-1] for key, rs in records.items()}
base = final["horovod", "none"]["test_accuracy"]
target = base - 0.005
tta = {key: time_to_target(rs, "test_accuracy", target, True) for key, rs in records.items()}
peer = tta.get(PEER)
link = f"emulated {rate} per worker" if network == "emulated" else "loopback"
print(f"\nFashion-MNIST CNN, 2 workers ({link}), {final['horovod', 'none']['epoch'] + 1} epoch(s), "
      f"on {machine.one_line(machine.describe())}, HOROVOD_CYCLE_TIME={os.environ['HOROVOD_CYCLE_TIME']} ms.")
print(f"Ranked by time to the target accuracy {target:.4f} (uncompressed final {base:.4f} − 0.5 pp); "
      f"training time excludes evaluation.\n")
print(f"{'engine / compression':<44}{'to target s':>12}{'vs DDP+hook':>12}{'test acc':>10}{'train s':>9}"
      f"{'MB sent/rank':>14}")
for key in sorted(final, key=lambda k: (tta[k] is None, tta[k] or 0)):
    r, t = final[key], tta[key]
    flag = "  ! final accuracy trails uncompressed by > 0.5 pp" if r["test_accuracy"] < target else ""
    vs = f"{t / peer:>11.2f}×" if t and peer else f"{'—':>12}"
    reached = f"{t:.1f}" if t else "not reached"
    print(f"{run_label(*key):<44}{reached:>12}{vs}{r['test_accuracy']:>10.4f}{r['train_seconds']:>9.1f}"
          f"{r['sent_bytes'] / 1e6:>14.1f}{flag}")
EOF
rm -rf "$OUT"
