"""PowerSGD's hyper-parameters: the one place their defaults are written (the adapters derive theirs)."""
from __future__ import annotations

from typing import NamedTuple, Optional

from .. import arguments


class PowerSGDConfig(NamedTuple):
    """PowerSGD's hyper-parameters (immutable); the user guide says how to tune each."""

    rank: int = 1  # r; higher is more accurate and less compressed. Start at 1-2, raise if accuracy lags
    power_iterations: int = 1  # k; more → closer to the best rank-r approximation, k round pairs per step
    warm_start: bool = True  # reuse last step's factor: with k=1 this is what makes one iteration enough
    error_feedback: bool = True  # keep what the approximation missed and add it next step (biased→converges)
    min_compression_rate: float = 2.0  # send a matrix as it is unless n·m / (r(n+m)) ≥ this
    start_step: int = 0  # steps all-reduced uncompressed first (warm-up; PyTorch's hook advises ~10 %)
    seed: int = 0  # seeds the initial (and, without warm start, every) Q — the same on all ranks
    orthogonalization_epsilon: float = 1e-8  # keeps zero / rank-deficient gradients from making NaN
    wire_dtype: Optional[str] = None  # 'float16'/'bfloat16' to send the factors in half precision
    alternate: bool = False  # True: one all-reduce per step (P and Q on alternate steps), half the bytes
    two_sided: bool = False  # True: one all-reduce per step carrying P and Q together, classic's bytes

    def validate(self) -> "PowerSGDConfig":
        for name, minimum in (("rank", 1), ("power_iterations", 1), ("start_step", 0), ("seed", 0)):
            arguments.integer("PowerSGD", name, getattr(self, name), minimum)
        for name in ("warm_start", "error_feedback", "alternate", "two_sided"):
            arguments.boolean("PowerSGD", name, getattr(self, name))
        arguments.number("PowerSGD", "min_compression_rate", self.min_compression_rate, "(0, inf)")
        arguments.number("PowerSGD", "orthogonalization_epsilon", self.orthogonalization_epsilon,
                         "[0, inf)")
        if self.wire_dtype not in (None, "float16", "bfloat16", "float32"):
            raise ValueError(f"PowerSGD: wire_dtype must be None, 'float16', 'bfloat16' or 'float32', "
                             f"got {self.wire_dtype!r}")
        if self.two_sided and self.alternate:
            raise ValueError("PowerSGD: alternate=True and two_sided=True are two different "
                             "single-round schemes; choose one")
        if self.single_round and self.power_iterations != 1:
            scheme, per_step = (("alternate", "per step") if self.alternate
                                else ("two_sided", "on each side per step"))
            raise ValueError(f"PowerSGD: {scheme}=True does one half of a power iteration {per_step} "
                             f"(one all-reduce); power_iterations must be 1 with it, got "
                             f"{self.power_iterations}. Use the classic scheme (alternate=False, "
                             f"two_sided=False) for k iterations (2k all-reduce rounds per step)")
        return self

    @property
    def scheme(self) -> str:
        """Which scheme the switches select: "classic", "alternating" or "two_sided"."""
        return "alternating" if self.alternate else "two_sided" if self.two_sided else "classic"

    @property
    def single_round(self) -> bool:
        """One all-reduce per step: either single-round scheme."""
        return self.alternate or self.two_sided


#: the defaults, for signatures that spell the arguments out (the adapters)
DEFAULTS = PowerSGDConfig()
