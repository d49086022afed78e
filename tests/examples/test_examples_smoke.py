"""Smoke runs of the real-data examples on two Horovod ranks: a few batches of real data, one epoch,
then a resume from the per-rank checkpoints (model, optimizer and compressor state)."""
import json
import sys

import pytest
import torch

from examples.datasets import DatasetMissing, PennTreebank, fashion_mnist
from horovod_powersgd.core.registry import build
from tests.launch import run

pytestmark = pytest.mark.distributed  # launches ranks of its own

PY = sys.executable


def _launch(argv, timeout=180):
    rc, out = run("gloo", [PY, *map(str, argv)], np=2, timeout=timeout)
    assert rc == 0, out[-6000:]
    return out


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _models():
    """The examples' models as the smoke runs build them, by example."""
    from examples.torch_fashion_mnist import FashionCNN
    from examples.torch_ptb_lstm import WordLSTM

    return {"torch_fashion_mnist": lambda: FashionCNN(),
            "torch_ptb_lstm": lambda: WordLSTM(PennTreebank().vocab_size, 32, 32)}


def _metric_in_range(metric: str, value: float) -> bool:
    """Accuracy in [0, 1]; perplexity above 1 and not beyond a uniform guess over the vocabulary
    (10k words) by more than 10 % after a few steps."""
    return 0 <= value <= 1 if metric == "test_accuracy" else 1 < value < 11_000


@pytest.mark.parametrize("example,flags,metric", [
    ("torch_fashion_mnist", ["--train-limit", 1200, "--test-limit", 200, "--eval-every", 2],
     "test_accuracy"),
    ("torch_ptb_lstm", ["--train-tokens", 30000, "--eval-tokens", 3000, "--embedding", 32,
                           "--hidden", 32], "valid_perplexity"),
])
def test_example_trains_checkpoints_and_resumes(tmp_path, example, flags, metric):
    log, ckpt = tmp_path / "log.jsonl", tmp_path / "ckpt"
    common = ["-m", f"examples.{example}", "--compression", "powersgd:rank=2", "--max-batches", 3,
              "--no-progress", "--json", log, "--checkpoint", ckpt, *flags]
    out = _launch([*common, "--epochs", 1])
    assert "RESULT" in out
    final = _records(log)[-1]
    assert final["final"] and final["epoch"] == 0 and final["steps"] == 3 and final["ranks"] == 2
    # exactly what the compressor's traffic description says, for every step
    per_step = sum(build("powersgd:rank=2").wire_bytes(tuple(p.shape)) for p in _models()[example]().parameters())
    assert final["sent_bytes"] == 3 * per_step and final["compression_ratio"] > 5
    assert _metric_in_range(metric, final[metric]), final

    # One checkpoint per rank; the error buffers are each rank's own, so the files differ.
    states = [torch.load(f"{ckpt}.rank{r}", weights_only=False) for r in (0, 1)]
    tensors = [s["compression"]["tensors"] for s in states]
    assert tensors[0].keys() == tensors[1].keys() and tensors[0]
    name = next(n for n, t in tensors[0].items() if t["error"] is not None)
    assert tensors[0][name]["step"] == 3
    assert not torch.equal(torch.as_tensor(tensors[0][name]["error"]), torch.as_tensor(tensors[1][name]["error"]))
    for key, value in states[0]["model"].items():  # but the models agree
        assert torch.equal(value, states[1]["model"][key]), key

    _launch([*common, "--epochs", 2, "--resume"])
    resumed = _records(log)[-1]
    assert resumed["final"] and resumed["epoch"] == 1
    state = torch.load(f"{ckpt}.rank0", weights_only=False)
    assert state["epoch"] == 1 and state["compression"]["tensors"][name]["step"] == 6  # continued, not restarted


def test_uncompressed_run_reports_bytes(tmp_path):
    log = tmp_path / "log.jsonl"
    _launch(["-m", "examples.torch_fashion_mnist", "--compression", "none", "--epochs", 1,
             "--max-batches", 2, "--train-limit", 600, "--test-limit", 100, "--no-progress", "--json", log])
    final = _records(log)[-1]
    assert final["compression_ratio"] == 1.0
    assert final["sent_bytes"] == 2 * 4 * 1_630_154  # two steps of every float32 gradient


def test_missing_dataset_names_the_package(tmp_path):
    with pytest.raises(DatasetMissing, match="dataset-fashion-mnist"):
        fashion_mnist("train", directory=tmp_path)


@pytest.mark.parametrize("example", ["tf_fashion_mnist", "keras_fashion_mnist"])
def test_tensorflow_example_trains_checkpoints_and_resumes(tmp_path, example):
    log, ckpt = tmp_path / "log.jsonl", tmp_path / "ckpt"
    common = ["-m", f"examples.{example}", "--compression", "powersgd:rank=2", "--max-batches", 3,
              "--train-limit", 1200, "--test-limit", 200, "--hidden", 64, "--no-progress",
              "--json", log, "--checkpoint", ckpt]
    _launch([*common, "--epochs", 1], timeout=240)
    final = _records(log)[-1]
    assert final["final"] and final["epoch"] == 0 and final["steps"] == 3 and final["ranks"] == 2
    assert final["compression_ratio"] > 3 and _metric_in_range("test_accuracy", final["test_accuracy"])
    assert 0 < final["train_loss"] < 3.5  # finite and not diverged (ln 10 ≈ 2.3 at a uniform guess)
    import tensorflow as tf

    # one checkpoint per rank, each with the compressor's state; error buffers differ between ranks
    readers = [tf.train.load_checkpoint(f"{ckpt}.rank{r}") for r in (0, 1)]
    names = [n for n, _ in tf.train.list_variables(f"{ckpt}.rank0") if n.startswith("compression/")]
    assert names, tf.train.list_variables(f"{ckpt}.rank0")
    assert any(not (readers[0].get_tensor(n) == readers[1].get_tensor(n)).all() for n in names)
    _launch([*common, "--epochs", 2, "--resume"], timeout=240)
    resumed = _records(log)[-1]
    assert resumed["final"] and resumed["epoch"] == 1
    assert resumed["steps"] == 6  # counters came back from the checkpoint and continued
