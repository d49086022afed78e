"""`benchmarks.step_phases`: its jobs, its table, and one tiny run on the emulated cluster."""
import subprocess
import sys
from types import SimpleNamespace

import pytest

from benchmarks import step_phases
from tests.benchmarks.test_benchmark_smoke import _require_namespaces
from tests.launch import ROOT, machine_lock, worker_env


def test_jobs_are_the_hook_then_every_cycle_and_grouping():
    jobs = step_phases.configurations(SimpleNamespace(spec="powersgd:rank=2", cycles="1,8", groups="0,1"))
    assert [(engine, env, groups) for _, engine, env, groups in jobs] == [
        ("ddp", {}, 0),
        ("horovod", {"HOROVOD_CYCLE_TIME": "1"}, 0), ("horovod", {"HOROVOD_CYCLE_TIME": "1"}, 1),
        ("horovod", {"HOROVOD_CYCLE_TIME": "8"}, 0), ("horovod", {"HOROVOD_CYCLE_TIME": "8"}, 1)]
    assert jobs[0][0] == "DDP + powerSGD_hook rank=2"
    assert jobs[2][0] == "ours, powersgd:rank=2, HOROVOD_CYCLE_TIME=1, groups=1"


def test_table_has_medians_over_jobs_and_no_compressor_columns_for_ddp():
    phases = dict.fromkeys(step_phases.PHASES, 0.010)
    ours = [{**phases, "total": t, "compress_seconds": 0.001, "decompress_seconds": 0.002,
             "wait_seconds": 0.003} for t in (0.030, 0.034, 0.040)]
    lines = step_phases.markdown([("DDP", [phases]), ("ours", ours)])
    assert lines[2] == "| DDP | 10.0 | 10.0 | 10.0 | 10.0 | 10.0 | — | — | — |"
    assert lines[3] == "| ours | 10.0 | 10.0 | 10.0 | 10.0 | 34.0 | 1.0 | 2.0 | 3.0 |"


@pytest.mark.distributed
@pytest.mark.parametrize("task", sorted(step_phases.TASKS))
def test_a_tiny_run_prints_every_configuration(task):
    _require_namespaces()
    with machine_lock():
        proc = subprocess.run([sys.executable, "-m", "benchmarks.step_phases", "--task", task, "--cycles", "1",
                               "--groups", "1", "--steps", "6", "--skip", "2", "--repeats", "1"],
                              cwd=ROOT, env=worker_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| DDP") or line.startswith("| ours")]
    assert len(rows) == 2 and "—" not in rows[1], proc.stdout
    assert f"## {task}, " in proc.stdout
