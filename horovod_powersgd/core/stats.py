"""Cheap, always-on accounting of what a compressor saved and what it cost."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class StepBytes:
    uncompressed: int = 0  # bytes the gradients would have put on the wire as they are
    sent: int = 0  # bytes this compressor handed to collectives (every round, every tensor)

    @property
    def ratio(self) -> float:
        """Compression ratio uncompressed / sent (inf when nothing was sent)."""
        return self.uncompressed / self.sent if self.sent else float("inf")


@dataclasses.dataclass
class CompressionStats:
    """Counters kept by every compressor.

    A *step* is everything between the first ``compress`` after a quiet period and the ``decompress``
    that leaves no tensor in flight — one optimizer step under Horovod. Times are wall-clock seconds
    measured on the host: ``compress_seconds`` and ``decompress_seconds`` are the compressor's own
    work, ``wait_seconds`` the time spent blocked on its second-round collectives (communication
    that backprop did not hide). On GPUs kernel launches are asynchronous, so these are lower bounds.
    ``nonfinite_steps`` counts steps whose reduced result held an inf or NaN (an overflowed loss
    scale): the compressor's state was left untouched by them and the non-finite gradient handed on.
    """

    steps: int = 0
    total: StepBytes = dataclasses.field(default_factory=StepBytes)
    last_step: StepBytes = dataclasses.field(default_factory=StepBytes)
    compressed_tensors_last_step: int = 0
    uncompressed_tensors_last_step: int = 0
    compress_seconds: float = 0.0
    decompress_seconds: float = 0.0
    wait_seconds: float = 0.0
    nonfinite_steps: int = 0
    _current: StepBytes = dataclasses.field(default_factory=StepBytes, repr=False)
    _current_counts: list = dataclasses.field(default_factory=lambda: [0, 0], repr=False)

    def begin_step(self) -> None:
        self._current = StepBytes()
        self._current_counts = [0, 0]

    def add(self, uncompressed: int = 0, sent: int = 0, compressed_tensor: bool | None = None) -> None:
        self._current.uncompressed += uncompressed
        self._current.sent += sent
        if compressed_tensor is not None:
            self._current_counts[0 if compressed_tensor else 1] += 1

    def end_step(self) -> None:
        self.steps += 1
        self.last_step = self._current
        self.compressed_tensors_last_step, self.uncompressed_tensors_last_step = self._current_counts
        self.total.uncompressed += self._current.uncompressed
        self.total.sent += self._current.sent

    def as_dict(self) -> dict:
        return {
            "steps": self.steps,
            "uncompressed_bytes_total": self.total.uncompressed,
            "sent_bytes_total": self.total.sent,
            "compression_ratio_total": self.total.ratio,
            "uncompressed_bytes_last_step": self.last_step.uncompressed,
            "sent_bytes_last_step": self.last_step.sent,
            "compression_ratio_last_step": self.last_step.ratio,
            "compressed_tensors_last_step": self.compressed_tensors_last_step,
            "uncompressed_tensors_last_step": self.uncompressed_tensors_last_step,
            "compress_seconds": self.compress_seconds,
            "decompress_seconds": self.decompress_seconds,
            "wait_seconds": self.wait_seconds,
            "nonfinite_steps": self.nonfinite_steps,
        }

    def __str__(self) -> str:
        d = self.as_dict()
        return (f"{d['steps']} steps, last step {d['uncompressed_bytes_last_step'] / 1e6:.3f} MB -> "
                f"{d['sent_bytes_last_step'] / 1e6:.3f} MB ({d['compression_ratio_last_step']:.1f}x), "
                f"compress {d['compress_seconds']:.3f} s, decompress {d['decompress_seconds']:.3f} s, "
                f"wait {d['wait_seconds']:.3f} s"
                + (f", {d['nonfinite_steps']} non-finite steps skipped" if d["nonfinite_steps"] else ""))
