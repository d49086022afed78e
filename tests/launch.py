"""Run a pytest file on several Horovod processes, from an ordinary (single-process) pytest test.

Each rank runs the same tests in the same order, so their collectives match. The whole launch is
bounded by a timeout and killed as a process group, so a rank that fails or hangs fails the outer
test instead of hanging CI. Launches take a machine-wide lock: two multi-process runs never share the
two cores at once.

Each rank writes its own JUnit XML file (tests/rank_pytest.py) and `rank_verdicts` judges the ranks by
those files: the ranks' console output is interleaved however the launcher likes (MPI may put two
ranks' summaries on one line), so it is shown for diagnosis but never parsed.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LOCK_PATH = "/tmp/horovod-powersgd-multiprocess.lock"
LAUNCHERS = ("gloo", "mpi")


def launcher_runs(both_launchers: list, gloo_only: list) -> list:
    """(launcher, file) pairs: every file under Gloo; under MPI too the files whose paths depend on
    Horovod's controller (the collectives themselves). The rest go through the same adapter code
    whichever controller negotiates."""
    return [("gloo", name) for name in both_launchers + gloo_only] + [("mpi", name) for name in both_launchers]


@contextlib.contextmanager
def machine_lock():
    with open(LOCK_PATH, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def worker_env(extra=None) -> dict:
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "TF_USE_LEGACY_KERAS": "1",
        "OMP_NUM_THREADS": "1",
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "PYTHONUNBUFFERED": "1",
        "HOROVOD_DYNAMIC_PROCESS_SETS": "1",  # lets tests add non-global process sets
    })
    env.update(extra or {})
    return env


def command(launcher: str, np: int, argv: list, launcher_args=()) -> list:
    """The launch command; ``launcher_args`` are extra horovodrun options (e.g. `elastic_args`)."""
    if launcher == "gloo":
        return [str(BIN / "horovodrun"), "-np", str(np), *launcher_args, "--gloo", *argv]
    if launcher_args:
        raise ValueError(f"launcher options {launcher_args} are for horovodrun (gloo) only")
    if launcher == "mpi":
        return ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
                "--mca", "btl_vader_single_copy_mechanism", "none", "-np", str(np),
                "-x", "PYTHONPATH", "-x", "TF_CPP_MIN_LOG_LEVEL", "-x", "TF_USE_LEGACY_KERAS",
                "-x", "OMP_NUM_THREADS", "-x", "PYTHONUNBUFFERED",
                "-x", "HOROVOD_DYNAMIC_PROCESS_SETS", *argv]
    raise ValueError(f"unknown launcher {launcher!r}")


def elastic_args(discovery_script, min_np: int, max_np: int, timeout: int = 60) -> list:
    """horovodrun options for an elastic job on this machine. ``--network-interface lo`` is what
    makes it start at all: without it, horovodrun looks for network interfaces common to two hosts
    and waits for a second host to appear — silently, up to the elastic timeout (600 s by
    default). ``--elastic-timeout`` bounds every later wait for slots the same way."""
    return ["--min-np", str(min_np), "--max-np", str(max_np),
            "--host-discovery-script", str(discovery_script),
            "--network-interface", "lo", "--elastic-timeout", str(timeout)]


def run(launcher: str, argv: list, np: int = 2, timeout: float = 300, env=None, launcher_args=()):
    """Run ``argv`` on ``np`` processes; returns (exit code, combined output). rc -9 = timed out."""
    cmd = command(launcher, np, argv, launcher_args)
    with machine_lock():
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=worker_env(env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            rc = -9
            output += f"\n*** killed after {timeout} s (a rank hung)\n"
        output += f"\n[{launcher} -np {np}: {time.monotonic() - start:.1f} s]\n"
    return rc, output


def rank_verdicts(results_dir, np: int) -> list:
    """One line per rank from its JUnit XML file; AssertionError unless every one of the ``np`` ranks
    wrote one, ran at least one test, had no failure or error, and all ran the same tests."""
    verdicts, counts = [], set()
    for rank in range(np):
        path = Path(results_dir) / f"rank{rank}.xml"
        assert path.is_file(), f"rank {rank} wrote no result file ({path.name}): it did not finish"
        suites = ElementTree.parse(path).getroot()
        suites = [suites] if suites.tag == "testsuite" else list(suites.iter("testsuite"))
        total = {key: sum(int(s.get(key, 0)) for s in suites)
                 for key in ("tests", "failures", "errors", "skipped")}
        passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
        verdict = (f"rank {rank}: {passed} passed, {total['skipped']} skipped, "
                   f"{total['failures']} failed, {total['errors']} errors")
        assert total["failures"] == total["errors"] == 0, verdict
        assert total["tests"] > 0, f"rank {rank} ran no tests"
        verdicts.append(verdict)
        counts.add(total["tests"])
    assert len(counts) == 1, f"ranks ran different numbers of tests: {verdicts}"
    return verdicts


def run_pytest(launcher: str, test_file: str, np: int = 2, timeout: float = 300, env=None):
    """Run one pytest file on every rank; asserts that all ranks passed (judged by each rank's own
    result file, see `rank_verdicts`)."""
    with tempfile.TemporaryDirectory(prefix="hpsgd-ranks-") as results_dir:
        argv = [sys.executable, "-m", "tests.rank_pytest", results_dir, "-x", "-q",
                "-p", "no:cacheprovider", "-o", "addopts=", str(ROOT / test_file)]
        rc, output = run(launcher, argv, np=np, timeout=timeout, env=env)
        assert rc == 0, f"{test_file} failed under {launcher} -np {np} (rc={rc}):\n{output[-12000:]}"
        try:
            verdicts = rank_verdicts(results_dir, np)
        except AssertionError as exc:
            raise AssertionError(f"{test_file} under {launcher} -np {np}: {exc}\n{output[-4000:]}") from None
    print(output[-3000:])
    print("\n".join(verdicts))
    return output
