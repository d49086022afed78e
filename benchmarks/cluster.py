"""An emulated cluster on one machine: one network namespace per worker, rate-limited links, Horovod
workers started without ssh (docs/design.md, "Emulated cluster").

Layout (everything lives inside a private ``unshare -nm --propagation private`` sandbox, so nothing
touches the host's network or mounts; tearing down is the sandbox's processes exiting):

    br0 10.10.0.254/24 ── v0 ═ eth0 10.10.0.1 (netns w0, tbf RATE) … ── v{i} ═ eth0 10.10.0.{i+1} (w{i})

Each worker's ``eth0`` shapes its egress with ``tc tbf`` (the per-NIC bandwidth of a real host).
Workers run as ``ip netns exec w{i} unshare -u`` with hostname ``w{i}``, and a generated /etc/hosts
(bind-mounted in the sandbox only) maps ``w{i}`` to its address. That works around Horovod 0.28.1's
process-set Gloo contexts resolving the hostname instead of honouring ``HOROVOD_GLOO_IFACE``.
Horovod's own `RendezvousServer` runs in the sandbox on the bridge; workers get the Gloo environment
``horovodrun`` would have given them. The launcher polls every worker, kills all of them (by process
group) at the first failure or at the timeout, and returns each worker's exit status and log.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

SANDBOX_ENV = "HOROVOD_POWERSGD_SANDBOX"
BRIDGE_ADDR = "10.10.0.254"
MAX_WORKERS = 16


class ClusterError(RuntimeError):
    pass


def require_root() -> None:
    if os.geteuid() != 0:
        raise ClusterError("the emulated cluster needs root (network namespaces, tc, mounts): "
                           "run it with sudo, e.g. sudo .venv/bin/python -m benchmarks.run")


def enter_sandbox(argv: List[str]) -> None:
    """Re-execute ``argv`` inside a private network + mount namespace (does not return), unless
    already inside one. Fails with a clear message where namespaces are not permitted."""
    if os.environ.get(SANDBOX_ENV) == "1":
        return
    require_root()
    probe = subprocess.run(["unshare", "-nm", "--propagation", "private", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise ClusterError("cannot create network/mount namespaces here (`unshare -nm` failed: "
                           f"{probe.stderr.strip()}); the emulated cluster needs a root shell that "
                           "may create namespaces (e.g. a VM, or a container with CAP_SYS_ADMIN)")
    os.environ[SANDBOX_ENV] = "1"
    os.execvp("unshare", ["unshare", "-nm", "--propagation", "private", *argv])


def unwind_on_sigterm() -> None:
    """Turn SIGTERM (a timeout, a kill) into SystemExit, so that `Cluster.__exit__` tears the
    cluster down. Without it a terminated run inside a sandbox whose mount namespace was skipped
    (``HOROVOD_POWERSGD_SANDBOX=1`` set by hand) leaves its bind mount over /etc/hosts on the host:
    the host's own name stops resolving and every Horovod launch there fails. Only from the main
    thread, and only where nobody installed a SIGTERM handler before."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def _kill(procs) -> None:
    """SIGKILL every worker's session that is still running, and reap them all."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait()


def sh(*cmd: str, netns: Optional[str] = None) -> str:
    full = (["ip", "netns", "exec", netns] if netns else []) + list(cmd)
    proc = subprocess.run(full, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise ClusterError(f"`{shlex.join(full)}` failed: {proc.stderr.strip()}")
    return proc.stdout


def worker_addr(i: int) -> str:
    return f"10.10.0.{i + 1}"


@dataclasses.dataclass
class WorkerResult:
    rank: int
    returncode: int  # -9: killed (timeout or a peer failed first)
    log: str


class Cluster:
    """``workers`` hosts w0…w{n-1}, each with a ``rate`` link (tc syntax: 1gbit, 200mbit…)."""

    def __init__(self, workers: int, rate: str = "1gbit", workdir: Path = Path("/tmp/hvd-cluster")):
        if os.environ.get(SANDBOX_ENV) != "1":
            raise ClusterError("Cluster must be built inside the sandbox: call enter_sandbox() first")
        if not 1 <= workers <= MAX_WORKERS:
            raise ClusterError(f"workers must be 1..{MAX_WORKERS}, got {workers}")
        self.workers, self.rate, self.workdir = workers, rate, Path(workdir)

    # ------------------------------------------------------------------ build / tear down
    def __enter__(self):
        unwind_on_sigterm()
        try:
            self.up()
        except BaseException:  # half built (a failed step, SIGTERM): take down what exists
            self.down()
            raise
        return self

    def __exit__(self, *exc):
        self.down()

    def up(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not os.path.ismount("/run/netns") and not getattr(Cluster, "_run_mounted", False):
            # `ip netns add` keeps its handles under /run/netns: a private tmpfs keeps them (and
            # anything else) away from the host's /run.
            sh("mount", "-t", "tmpfs", "tmpfs", "/run")
            Cluster._run_mounted = True
        hosts = self.workdir / "hosts"
        hosts.write_text("127.0.0.1 localhost\n" + "".join(
            f"{worker_addr(i)} w{i}\n" for i in range(MAX_WORKERS)) + f"{BRIDGE_ADDR} rendezvous\n")
        sh("mount", "--bind", str(hosts), "/etc/hosts")  # sandbox-private: the host's file is untouched
        sh("ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", "br0", "type", "bridge")
        sh("ip", "addr", "add", f"{BRIDGE_ADDR}/24", "dev", "br0")
        sh("ip", "link", "set", "br0", "up")
        for i in range(self.workers):
            ns = f"w{i}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", f"v{i}", "master", "br0", "mtu", "1500", "up")
            sh("ip", "link", "set", "lo", "up", netns=ns)
            sh("ip", "addr", "add", f"{worker_addr(i)}/24", "dev", "eth0", netns=ns)
            sh("ip", "link", "set", "eth0", "mtu", "1500", "up", netns=ns)
            # tbf = a NIC's line rate on egress; burst must exceed rate/HZ, 256 kB is ample up to 1 Gbit/s
            sh("tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", self.rate, "burst", "256kb",
               "latency", "100ms", netns=ns)

    def down(self) -> None:
        for i in range(self.workers):
            subprocess.run(["ip", "netns", "del", f"w{i}"], capture_output=True)
        subprocess.run(["ip", "link", "del", "br0"], capture_output=True)
        subprocess.run(["umount", "/etc/hosts"], capture_output=True)

    def link_stats(self) -> List[str]:
        return [sh("tc", "-s", "qdisc", "show", "dev", "eth0", netns=f"w{i}") for i in range(self.workers)]

    # ------------------------------------------------------------------ Horovod job
    def run_horovod(self, argv: List[str], env: Optional[dict] = None, timeout: float = 600,
                    name: str = "job") -> List[WorkerResult]:
        """Run ``argv`` once per worker as one Horovod job (Gloo controller and operations)."""
        from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts
        from horovod.runner.http.http_server import RendezvousServer

        plan = get_host_assignments(parse_hosts(",".join(f"w{i}:1" for i in range(self.workers))),
                                    self.workers)
        server = RendezvousServer()
        port = server.start()
        server.init(plan)
        try:
            envs = []
            for i, slot in enumerate(plan):
                envs.append({
                    "HOROVOD_CONTROLLER": "gloo", "HOROVOD_CPU_OPERATIONS": "gloo",
                    "HOROVOD_GLOO_RENDEZVOUS_ADDR": BRIDGE_ADDR,
                    "HOROVOD_GLOO_RENDEZVOUS_PORT": str(port), "HOROVOD_GLOO_IFACE": "eth0",
                    # also bounds one collective: generous, the outer timeout is the real limit
                    "HOROVOD_GLOO_TIMEOUT_SECONDS": str(int(timeout)),
                    "HOROVOD_HOSTNAME": slot.hostname, "HOROVOD_RANK": str(slot.rank),
                    "HOROVOD_SIZE": str(slot.size), "HOROVOD_LOCAL_RANK": str(slot.local_rank),
                    "HOROVOD_LOCAL_SIZE": str(slot.local_size), "HOROVOD_CROSS_RANK": str(slot.cross_rank),
                    "HOROVOD_CROSS_SIZE": str(slot.cross_size), **(env or {})})
            return self._run(argv, envs, timeout, name)
        finally:
            server.stop()

    def run_torch_distributed(self, argv: List[str], env: Optional[dict] = None, timeout: float = 600,
                              name: str = "job", port: int = 29500) -> List[WorkerResult]:
        """Run ``argv`` once per worker as a torch.distributed (gloo) job; rank 0 on w0 is the store."""
        envs = [{"MASTER_ADDR": worker_addr(0), "MASTER_PORT": str(port), "RANK": str(i),
                 "WORLD_SIZE": str(self.workers), "LOCAL_RANK": "0", "GLOO_SOCKET_IFNAME": "eth0",
                 **(env or {})} for i in range(self.workers)]
        return self._run(argv, envs, timeout, name)

    def _run(self, argv, envs, timeout, name) -> List[WorkerResult]:
        base = dict(os.environ)
        base.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"})
        procs, logs = [], []
        for i, extra in enumerate(envs):
            log = self.workdir / f"{name}.w{i}.log"
            logs.append(log)
            cmd = ["ip", "netns", "exec", f"w{i}", "unshare", "-u", "--", "sh", "-c",
                   'hostname "$0" && exec "$@"', f"w{i}", *argv]
            with open(log, "w") as handle:
                procs.append(subprocess.Popen(cmd, env={**base, **extra}, stdout=handle,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + timeout
        try:
            while True:
                codes = [p.poll() for p in procs]
                if all(c is not None for c in codes):
                    break
                if any(c not in (None, 0) for c in codes) or time.monotonic() > deadline:
                    _kill(procs)  # one crashed (the others would wait for it forever) or time is up
                    break
                time.sleep(0.2)
        except BaseException:  # SIGTERM (`unwind_on_sigterm`), Ctrl-C: no worker outlives the run
            _kill(procs)
            raise
        results = [WorkerResult(i, p.returncode, logs[i].read_text(errors="replace"))
                   for i, p in enumerate(procs)]
        if time.monotonic() > deadline:
            results[0].log += f"\n*** {name}: killed after {timeout:.0f} s\n"
        return results


def check(results: List[WorkerResult], name: str) -> None:
    """Raise with the failing workers' log tails unless every worker exited 0."""
    bad = [r for r in results if r.returncode != 0]
    if bad:
        tails = "\n".join(f"--- w{r.rank} (exit {r.returncode}) ---\n{r.log[-3000:]}" for r in bad)
        raise ClusterError(f"{name}: {len(bad)} of {len(results)} workers failed\n{tails}")


if __name__ == "__main__":  # a quick manual check: python -m benchmarks.cluster [workers] [rate]
    enter_sandbox([sys.executable, "-m", "benchmarks.cluster", *sys.argv[1:]])
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    with Cluster(n, sys.argv[2] if len(sys.argv) > 2 else "1gbit") as cluster:
        check(cluster.run_horovod([sys.executable, "-c",
                                   "import horovod.torch as h; h.init(); print('rank', h.rank(), 'of', h.size())"],
                                  timeout=120, name="hello"), "hello")
        print("\n".join(cluster.link_stats()))
