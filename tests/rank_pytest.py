"""One rank's pytest under tests/launch.py: runs the given pytest arguments and writes this rank's
result to ``<results dir>/rank<N>.xml`` (JUnit XML), so that the launcher judges every rank by its own
file, never by the ranks' interleaved console output.

    python -m tests.rank_pytest RESULTS_DIR [pytest arguments...]
"""
from __future__ import annotations

import os
import sys

#: where each launcher puts the process's rank (horovodrun, Open MPI, MPICH/Hydra)
RANK_VARIABLES = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def launcher_rank() -> int:
    for variable in RANK_VARIABLES:
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable])
    raise RuntimeError(f"no rank in the environment (looked for {', '.join(RANK_VARIABLES)})")


def main(argv) -> int:
    import pytest

    results_dir, *pytest_args = argv
    path = os.path.join(results_dir, f"rank{launcher_rank()}.xml")
    return int(pytest.main([*pytest_args, f"--junitxml={path}"]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
