"""One process of the end-to-end Horovod Elastic test (tests/torch/test_elastic.py).

Not a pytest file: the test launches it with ``horovodrun --gloo --min-np 1 --max-np 2
--host-discovery-script ...`` and judges what every process wrote. A small MLP trains for `STEPS`
steps under ``hvd.elastic.run`` with ``hvd.elastic.TorchState(model, optimizer, compression=c)``,
committing after every step. Rank 0 changes the membership by rewriting the hosts file the discovery
script prints: ``localhost:2`` → ``localhost:1`` after step `REMOVE_AT` (Horovod drops slot 1, whose
process leaves the job) → ``localhost:2`` after step `ADD_AT` (Horovod starts a new process in slot
1, which joins and syncs). After writing it waits for the driver's notification, so each reset
happens at a fixed step whatever the machine's speed.

Every process appends one JSON line per event to ``<results>/proc-<pid>.jsonl`` and flushes it at
once (a process that Horovod removes ends inside ``hvd.init()``, with no chance to write later):

* ``start`` — each time `train` (re)starts: world size, rank, a digest of the compressor's shared
  state (class, config, step counters, warm-start factors) and of its own error buffers, every
  rank's shared digest (all-gathered), and the error digest at this process's last commit;
* ``step`` — each step: a digest of the reduced gradients and of the parameters, every rank's
  digests (all-gathered), the loss;
* ``done`` — at the end: the evaluation loss before and after training.

    python elastic_worker.py RESULTS_DIR HOSTS_FILE SPEC
"""
import hashlib
import json
import os
import sys
import threading
import time

import numpy as np
import torch

STEPS = 24
REMOVE_AT = 7  # after this many steps: localhost:2 -> localhost:1
ADD_AT = 15  # after this many steps: localhost:1 -> localhost:2
NOTIFY_TIMEOUT = 30.0  # seconds to wait for the driver's notification of a hosts change
LAYERS = (16, 32, 8)  # both weight matrices compressed
BATCH = 32


def digest(arrays) -> int:
    """A signed 64-bit digest of the arrays' bytes (None hashes as a marker)."""
    h = hashlib.blake2b(digest_size=8)
    for a in arrays:
        if a is None:
            h.update(b"<none>")
        else:
            a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return int.from_bytes(h.digest(), "little", signed=True)


def shared_and_own(compressor):
    """(digest of what every rank must share, {tensor: digest of this rank's error buffer or None})."""
    state = compressor.state_dict()
    shared = json.dumps({"compressor": state["compressor"], "config": state["config"]}, sort_keys=True)
    parts, own = [np.frombuffer(shared.encode(), dtype=np.uint8)], {}
    for name, tensor in sorted(state["tensors"].items()):
        parts.append(np.frombuffer(name.encode(), dtype=np.uint8))
        parts.append(np.array([tensor["step"]], dtype=np.int64))
        parts += [tensor.get(field) for field in ("q", "p")]
        own[name] = None if tensor.get("error") is None else digest([tensor["error"]])
    return digest(parts), own


def batch(step: int, rank: int, teacher):
    """This rank's deterministic batch for ``step``: inputs and a teacher network's targets."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(BATCH, LAYERS[0], generator=g)
    with torch.no_grad():
        return x, teacher(x)


def mlp(seed: int):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(LAYERS[0], LAYERS[1]), torch.nn.Tanh(),
                               torch.nn.Linear(LAYERS[1], LAYERS[2]))


class HostsChanges:
    """Rank 0's side: rewrite the hosts file, then wait for the driver to notify this process."""

    def __init__(self, hosts_file):
        self.hosts_file = hosts_file
        self.notified = threading.Event()
        self.last_timestamp = 0

    def on_hosts_updated(self, timestamp, update_res):  # called by Horovod's notification service
        self.last_timestamp = max(self.last_timestamp, timestamp)
        self.notified.set()

    def change(self, slots: int):
        # Horovod ignores a notification no newer (in whole seconds) than the last one it acted on
        while int(time.time()) <= self.last_timestamp:
            time.sleep(0.05)
        self.notified.clear()
        tmp = self.hosts_file + ".tmp"
        with open(tmp, "w") as handle:
            handle.write(f"localhost:{slots}\n")
        os.replace(tmp, self.hosts_file)  # the discovery script never reads half a file
        if not self.notified.wait(NOTIFY_TIMEOUT):
            raise RuntimeError(f"no hosts-updated notification {NOTIFY_TIMEOUT} s after writing "
                               f"localhost:{slots}")


def main(results_dir, hosts_file, spec):
    import horovod.torch as hvd
    from horovod.common.elastic import notification_manager

    from horovod_powersgd.torch import from_spec

    hvd.init()
    torch.set_num_threads(1)
    log_path = os.path.join(results_dir, f"proc-{os.getpid()}.jsonl")
    log_file = open(log_path, "a")

    def log(event, **fields):
        record = {"event": event, "pid": os.getpid(), "time": time.time(), **fields}
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()

    teacher = mlp(seed=1)
    model = mlp(seed=2 + hvd.rank())  # different on purpose: the first sync must make them equal
    compression = from_spec(spec)
    optimizer = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                         named_parameters=model.named_parameters(),
                                         compression=compression)
    state = hvd.elastic.TorchState(model=model, optimizer=optimizer, compression=compression,
                                   step=0, initial_loss=None)
    changes = HostsChanges(hosts_file)
    notification_manager.register_listener(changes)  # the driver notifies rank 0 only
    committed_errors = {"at": None}  # this process's error digests at its last commit

    def gathered(values):
        return hvd.allgather(torch.tensor([values], dtype=torch.int64),
                             name=f"elastic_test.gather.{len(values)}").tolist()

    def evaluation_loss():
        x, y = batch(10**6, 0, teacher)
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(model(x), y))

    @hvd.elastic.run
    def train(state):
        shared, own = shared_and_own(compression)
        log("start", rank=hvd.rank(), size=hvd.size(), step=state.step, shared=shared, own=own,
            committed_own=committed_errors["at"], shared_all=[row[0] for row in gathered([shared])])
        if state.initial_loss is None:
            state.initial_loss = evaluation_loss()
        while state.step < STEPS:
            x, y = batch(state.step, hvd.rank(), teacher)
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            grads = digest([p.grad for _, p in sorted(model.named_parameters())])
            params = digest([p for _, p in sorted(model.named_parameters())])
            shared, _ = shared_and_own(compression)
            log("step", rank=hvd.rank(), size=hvd.size(), step=state.step, grads=grads,
                params=params, shared=shared, all=gathered([grads, params, shared]),
                loss=float(loss.detach()))
            state.step += 1
            if hvd.rank() == 0 and state.step in (REMOVE_AT, ADD_AT):
                changes.change(1 if state.step == REMOVE_AT else 2)
            committed_errors["at"] = shared_and_own(compression)[1]
            state.commit()  # raises HostsUpdatedInterrupt on every rank after a membership change
        return evaluation_loss()

    final = train(state)
    log("done", rank=hvd.rank(), size=hvd.size(), step=state.step, initial_loss=state.initial_loss,
        final_loss=final)
    log_file.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
