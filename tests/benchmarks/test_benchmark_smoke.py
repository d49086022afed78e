"""The emulated-cluster benchmark, end to end at smoke size, and its launcher's failure handling.

Needs root and permission to create network namespaces (CI has both). Where they are missing these
tests FAIL with the reason — a benchmark that cannot run must not look green.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from benchmarks.timeline import collective_payload, wire_bytes
from tests.launch import ROOT, machine_lock, worker_env


def _require_namespaces():
    if os.geteuid() != 0:
        pytest.fail("the emulated-cluster benchmark needs root (network namespaces, tc); run CI as root")
    probe = subprocess.run(["unshare", "-nm", "--propagation", "private", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"cannot create network namespaces here (unshare -nm: {probe.stderr.strip()}); "
                    f"the benchmark smoke test needs a root shell allowed to create them")


@pytest.mark.distributed
def test_benchmark_smoke_runs_end_to_end(tmp_path):
    _require_namespaces()
    with machine_lock():
        proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--smoke", "--repeats", "2", "--out", str(tmp_path)],
                              cwd=ROOT, env=worker_env(), capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads((tmp_path / "benchmark.json").read_text())
    steps = {r["spec"]: r for r in result["raw"]["steps"][0]["results"]}
    none, psgd = steps["none"], steps["powersgd:rank=2"]
    assert "error" not in none and "error" not in psgd
    # Traffic crossed the shaped links, and PowerSGD sent far less of it.
    assert none["link_bytes_per_step"] > 0.9 * none["sent_bytes_per_step"]
    assert psgd["link_bytes_per_step"] < none["link_bytes_per_step"] / 3
    # Horovod's timeline agrees with the compressor's own byte count.
    assert sum(psgd["timeline_payload_per_step"].values()) == pytest.approx(psgd["sent_bytes_per_step"], rel=0.01)
    assert sum(none["timeline_payload_per_step"].values()) == pytest.approx(none["sent_bytes_per_step"], rel=0.01)
    ddp = result["raw"]["ddp"][0]["results"][0]
    assert ddp["spec"] == "ddp+powerSGD_hook:rank=2" and ddp["step_s"] > 0
    assert 0 < ddp["link_bytes_per_step"] < none["link_bytes_per_step"]
    # both jobs ran twice, alternating; every figure is the median of the two
    assert result["raw"]["steps"][0]["side_by_side"] and result["raw"]["steps"][0]["repeats"] == 2
    assert len(psgd["step_s_repeats"]) == len(ddp["step_s_repeats"]) == 2
    assert [(run["engine"], run["spec"]) for run in result["raw"]["tta"]] == [
        ("ddp", "powersgd:rank=2"), ("horovod", "none"), ("horovod", "powersgd:rank=2"), ("local", "none")]
    table, = result["summary"]["tta"]
    assert {row["label"] for row in table["rows"]} == {
        "DDP + powerSGD_hook rank=2", "Horovod, none", "ours, powersgd:rank=2"}
    assert all(len(row["final"]) == 1 and row["bytes_per_step_median"] > 0 for row in table["rows"])
    assert table["floor_s"] > 0
    for name in ("benchmark.md", "step_breakdown.png", "time_to_accuracy.png", "advisor_fit.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "| powersgd:rank=2 |" in (tmp_path / "benchmark.md").read_text()


@pytest.mark.distributed
def test_launcher_kills_the_others_when_one_worker_fails(tmp_path):
    _require_namespaces()
    script = textwrap.dedent(f"""
        import sys, time
        from benchmarks.cluster import Cluster, enter_sandbox
        enter_sandbox([sys.executable, __file__])
        with Cluster(2, "100mbit", {str(tmp_path)!r}) as cluster:
            t0 = time.monotonic()
            results = cluster.run_torch_distributed(
                ["sh", "-c", 'if [ "$RANK" = 0 ]; then hostname; exit 3; else sleep 60; fi'], timeout=30)
            print("RESULT", [r.returncode for r in results], round(time.monotonic() - t0, 1),
                  results[0].log.strip())
    """)
    path = tmp_path / "fail.py"
    path.write_text(script)
    proc = subprocess.run([sys.executable, str(path)], cwd=ROOT, env=worker_env(), capture_output=True,
                          text=True, timeout=60)
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT")), proc.stderr
    codes, seconds, hostname = line[0].split(" ", 1)[1].rsplit(" ", 2)
    assert codes == "[3, -9]" and float(seconds) < 10
    assert hostname == "w0"  # each worker runs under its own hostname (Horovod's Gloo hostname bug)


def test_refuses_without_root(monkeypatch):
    from benchmarks import cluster

    monkeypatch.setattr(cluster.os, "geteuid", lambda: 1000)
    monkeypatch.delenv(cluster.SANDBOX_ENV, raising=False)
    with pytest.raises(cluster.ClusterError, match="needs root"):
        cluster.enter_sandbox(["true"])


@pytest.mark.distributed
def test_timeline_bytes(tmp_path):
    """Horovod timeline events → bytes per rank (allgather shapes are the gathered output)."""
    path = tmp_path / "t.json"
    path.write_text('[\n{"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "allreduce.a"}},\n'
                    '{"ph": "B", "name": "ALLREDUCE", "ts": 1, "pid": 1},{"ph": "B", "name": "GLOO_ALLREDUCE", '
                    '"ts": 2, "pid": 1},{"ph": "E", "ts": 3, "pid": 1},{"ph": "E", "ts": 4, "pid": 1, "args": '
                    '{"dtype": "float32", "shape": "[1000]"}},{"ph": "B", "name": "ALLGATHER", "ts": 5, "pid": 2},'
                    '{"ph": "E", "ts": 6, "pid": 2, "args": {"dtype": "uint8", "shape": "[10, 2]"}},'
                    '{"ph": "B", "name": "ALLREDUCE", "ts": 7, "pid": 3},{"ph": "E", "ts": 8, "pid": 3, '
                    '"args": {"dtype": "float16", "shape": "[10, 3]"}},')  # unterminated, as Horovod leaves it
    payload = collective_payload(path, size=2)
    assert payload == {"ALLREDUCE": 4000 + 60, "ALLGATHER": 10}
    assert wire_bytes(payload, 2) == pytest.approx(4060 + 10)
    assert wire_bytes(payload, 4) == pytest.approx(1.5 * 4060 + 30)
