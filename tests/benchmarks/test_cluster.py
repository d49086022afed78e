"""The emulated cluster's teardown guarantees that need no namespaces: a terminated run unwinds."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from benchmarks import cluster


def test_sigterm_unwinds_so_the_cluster_is_torn_down(tmp_path):
    """A SIGTERM'd process runs its ``finally`` blocks (and so `Cluster.__exit__`) once
    `unwind_on_sigterm` is installed, and exits with 128 + SIGTERM."""
    marker = tmp_path / "torn_down"
    script = textwrap.dedent(f"""
        import os, signal, time
        from benchmarks import cluster
        cluster.unwind_on_sigterm()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        finally:
            open({str(marker)!r}, "w").close()
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd(), timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert marker.exists()


def test_a_handler_already_installed_is_left_alone():
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        cluster.unwind_on_sigterm()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_cluster_that_fails_half_built_takes_down_what_it_built(monkeypatch):
    calls = []
    monkeypatch.setenv(cluster.SANDBOX_ENV, "1")
    monkeypatch.setattr(cluster, "unwind_on_sigterm", lambda: None)
    c = cluster.Cluster(2)
    monkeypatch.setattr(c, "up", lambda: (calls.append("up"), 1 / 0))
    monkeypatch.setattr(c, "down", lambda: calls.append("down"))
    with pytest.raises(ZeroDivisionError):
        with c:
            pass
    assert calls == ["up", "down"]
