"""One process of the end-to-end Horovod Elastic test for PyTorch (tests/torch/test_elastic.py).

Not a pytest file: the test launches it with ``horovodrun --gloo --min-np 1 --max-np 2
--host-discovery-script ...`` and judges what every process wrote (the job, the membership changes
and the log are tests/elastic_job.py's). A small MLP trains under ``hvd.elastic.run`` with
``hvd.elastic.TorchState(model, optimizer, compression=c)``, committing after every step.

    python elastic_worker.py RESULTS_DIR HOSTS_FILE SPEC
"""
import sys

import torch

from tests.elastic_job import train_elastically

LAYERS = (16, 32, 8)  # both weight matrices compressed
BATCH = 32


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


def main(results_dir, hosts_file, spec):
    import horovod.torch as hvd

    from horovod_powersgd.torch import from_spec

    hvd.init()
    torch.set_num_threads(1)
    teacher = mlp(seed=1)
    model = mlp(seed=2 + hvd.rank())  # different on purpose: the first sync must make them equal
    compression = from_spec(spec)
    optimizer = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                         named_parameters=model.named_parameters(),
                                         compression=compression)
    state = hvd.elastic.TorchState(model=model, optimizer=optimizer, compression=compression,
                                   step=0, initial_loss=None)

    def step(n):
        x, y = batch(n, hvd.rank(), teacher)
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        named = sorted(model.named_parameters())
        return [p.grad for _, p in named], [p for _, p in named], loss.detach()

    def gathered(values):
        return hvd.allgather(torch.tensor([values], dtype=torch.int64),
                             name=f"elastic_test.gather.{len(values)}").tolist()

    def evaluation_loss():
        x, y = batch(10**6, 0, teacher)
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(model(x), y))

    train_elastically(hvd, state, compression, step, evaluation_loss, gathered, results_dir,
                      hosts_file)


if __name__ == "__main__":
    main(*sys.argv[1:])
