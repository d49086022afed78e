#!/usr/bin/env bash
# The main job, from a fresh clone: set up (a no-op when done), then train the Fashion-MNIST CNN on
# 2 Horovod ranks four times — uncompressed, rank-2 PowerSGD (two all-reduces per step) and its two
# single-round schemes (one each: alternating, two-sided) — and print what a user cares about.
#
# As root (where network namespaces are allowed) the two ranks talk over an emulated 1 Gbit/s link
# per worker (benchmarks/cluster.py, docs/design.md), the regime where compression matters; otherwise
# over this machine's loopback (several Gbit/s: expect little or no speed-up there).
#   DEMO_RATE=200mbit bash scripts/demo.sh      # another link speed
#   DEMO_EPOCHS=1 DEMO_TRAIN_LIMIT=20000 …      # shorter run (default: 2 epochs of all 60k images)
#   DEMO_NETWORK=loopback …                     # force plain horovodrun
#   HOROVOD_CYCLE_TIME=1 …                      # Horovod's own default cycle (the demo uses 8 ms)
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
# The README's advice for hosts whose cores are all busy with the model, as here (CPU training):
# Horovod's background thread coordinates every cycle, and at its 1 ms default it slowed this CNN's
# own forward and backward by 25-50 % on a 2-core machine. Applied to every run alike.
export HOROVOD_CYCLE_TIME="${HOROVOD_CYCLE_TIME:-8}"

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

SPECS=(none "powersgd:rank=2" "powersgd:rank=2,alternate=True" "powersgd:rank=2,two_sided=True")
for SPEC in "${SPECS[@]}"; do
  echo "==> [demo] training with --compression $SPEC"
  ARGS=(-m examples.torch_fashion_mnist --compression "$SPEC" --epochs "$EPOCHS"
        --train-limit "$LIMIT" --test-limit 10000 --json "$OUT/${SPEC//[:=,]/_}.jsonl")
  if [ "$NETWORK" = emulated ]; then
    flock "$LOCK" "$PY" -m benchmarks.emulate --rate "$RATE" --workers 2 -- "$PY" "${ARGS[@]}" --no-progress \
      | grep -E '^(epoch|test)' || { echo "demo: the $SPEC run failed" >&2; exit 1; }
  else
    flock "$LOCK" "$ROOT/.venv/bin/horovodrun" -np 2 --gloo "$PY" "${ARGS[@]}" 2>&1 \
      | grep -E 'stdout>:epoch' || { echo "demo: the $SPEC run failed" >&2; exit 1; }
  fi
done

"$PY" - "$OUT" "$NETWORK" "$RATE" "${SPECS[@]}" <<'EOF'
import json, os, re, sys
from pathlib import Path

from horovod_powersgd import machine

out, network, rate, specs = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
rows = {}
for spec in specs:
    name = re.sub(r"[:=,]", "_", spec) + ".jsonl"
    rows[spec] = [json.loads(l) for l in (out / name).read_text().splitlines() if '"final"' in l][-1]
base = rows["none"]["train_seconds"]
link = f"emulated {rate} per worker" if network == "emulated" else "loopback"
print(f"\nFashion-MNIST CNN, 2 workers ({link}), {rows['none']['epoch'] + 1} epoch(s)")
print(f"on {machine.one_line(machine.describe())}, HOROVOD_CYCLE_TIME={os.environ['HOROVOD_CYCLE_TIME']} ms:\n")
print(f"{'compression':<32}{'test acc':>9}{'train s':>9}{'speed-up':>10}{'MB sent/rank':>14}{'ratio':>8}")
for spec, r in rows.items():
    print(f"{spec:<32}{r['test_accuracy']:>9.4f}{r['train_seconds']:>9.1f}{base / r['train_seconds']:>9.2f}×"
          f"{r['sent_bytes'] / 1e6:>14.1f}{r['compression_ratio']:>7.0f}×")
EOF
rm -rf "$OUT"
