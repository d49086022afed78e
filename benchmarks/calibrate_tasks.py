"""The benchmark's tasks for `horovod_powersgd.calibrate` (``--model``/``--batch`` module:function),
so calibration measures the very models and batches that the step benchmark times:

    sudo .venv/bin/python -m benchmarks.emulate --rate 1gbit --workers 2 -- .venv/bin/python -m \\
        horovod_powersgd.calibrate --model benchmarks.calibrate_tasks:fashion_mnist \\
        --batch benchmarks.calibrate_tasks:fashion_mnist_batch --out /tmp/fit.json
"""
from __future__ import annotations

import itertools

from benchmarks.tasks import TASKS

_tasks = {}


def _task(name: str):
    if name not in _tasks:
        import horovod.torch as hvd

        _tasks[name] = TASKS[name](hvd.rank())  # the same data shard step_worker gives this rank
    return _tasks[name]


def _batch(name: str, model):
    task, steps = _task(name), itertools.count()
    return lambda: task.loss(model, next(steps))


def fashion_mnist():
    return _task("fashion_mnist").model()


def fashion_mnist_batch(model):
    return _batch("fashion_mnist", model)


def ptb_lstm():
    return _task("ptb_lstm").model()


def ptb_lstm_batch(model):
    return _batch("ptb_lstm", model)
