"""PowerSGD's three schemes as the tests parametrize them: constructor keywords by test id."""
import pytest

SCHEMES = {"classic": {}, "alternate": {"alternate": True}, "two_sided": {"two_sided": True}}
SINGLE_ROUND = {name: kwargs for name, kwargs in SCHEMES.items() if kwargs}

every_scheme = pytest.mark.parametrize("scheme", list(SCHEMES))
every_single_round_scheme = pytest.mark.parametrize("scheme", list(SINGLE_ROUND))


def max_output_rank(scheme: str, rank: int) -> int:
    """The two-sided scheme's gradient is rank ≤ 2r (both subspaces); the others' rank ≤ r."""
    return 2 * rank if scheme == "two_sided" else rank


def factor_numbers(scheme: str, rank: int, n: int, m: int) -> int:
    """Numbers one compressed n×m matrix sends per step: P or Q padded to r·max(n, m) (alternate),
    P and Q (the others)."""
    return rank * max(n, m) if scheme == "alternate" else rank * (n + m)
