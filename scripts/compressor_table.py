#!/usr/bin/env python
"""Generate the README's compressor comparison table from the code.

    python scripts/compressor_table.py           # print the table
    python scripts/compressor_table.py --write   # replace it in README.md between the markers

Each row is one registered spec (and each documented variant, ``cls.wire_variants``), built by the
registry. Its collective, rounds, traffic and example bytes come from the compressor's own
``transfers`` — the one description of its traffic, which the advisor prices and the timeline test
checks against Horovod; the per-element formula and the properties from its `Wire`, whose formula
tests/core/test_wire.py checks against ``transfers``. tests/scripts/test_compressor_table.py checks
that README.md holds exactly this output.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from horovod_powersgd.core import wire  # noqa: E402
from horovod_powersgd.core.registry import COMPRESSORS, build  # noqa: E402

START, END = "<!-- compressor-table:start -->", "<!-- compressor-table:end -->"
#: the gradient the example column sends: Fashion-MNIST CNN's dense layer, float32
EXAMPLE_SHAPE = (1024, 1568)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def rows():
    """(spec as typed, class, Wire) for every registered compressor and documented variant."""
    for spec, cls in COMPRESSORS.items():
        for variant, wire_ in (("", cls.wire),) + tuple(cls.wire_variants):
            yield (f"{spec}:{variant}" if variant else spec), cls, wire_


def row(spec: str, cls: type, wire_: wire.Wire) -> str:
    transfers = build(spec).transfers(EXAMPLE_SHAPE)
    payload = sorted({t.collective for t in transfers if t.what != wire.PLACEHOLDER})
    example = " + ".join(f"{t.what} {t.nbytes:,}" for t in transfers)
    return (f"| `{spec}` | `{cls.__name__}` | {', '.join(payload)} | {len(wire.fuse(transfers))} "
            f"| {wire_.bits_per_element} | {example} "
            f"| {' + '.join(wire.TRAFFIC_FORMULA[c] for c in payload)} | {_yes(wire_.biased)} "
            f"| {_yes(wire_.error_feedback)} | {wire_.note} |")


def table() -> str:
    n, m = EXAMPLE_SHAPE
    lines = ["| spec | class | collective | rounds per step | bits/element sent per rank "
             f"| bytes sent for a {n}×{m} float32 gradient | traffic per rank (N ranks) "
             "| biased | error feedback | note |",
             "|---|---|---|---:|---|---|---|---|---|---|"]
    lines += [row(*r) for r in rows()]
    legend = ("d: elements of a gradient (n×m as a matrix, n its first dimension); r: rank; "
              "k: power iterations; ratio: fraction kept; S: bytes one rank sends; 32/d terms: the "
              "4-byte placeholder all-gather compressors hand to Horovod's all-reduce (its own round "
              f"next to the all-gather). Uncompressed is 32 bits/element, all-reduce, one round: "
              f"{4 * n * m:,} bytes for the {n}×{m} gradient (bytes column: each spec at its defaults). "
              "Collective, rounds, bytes and traffic "
              "come from each compressor's `transfers` (the advisor prices the same), the formulas "
              "from its `wire` (checked against `transfers` by `tests/core/test_wire.py`); generated "
              "by `scripts/compressor_table.py`. Horovod's timeline confirms every row "
              "(`tests/torch/test_timeline_bytes.py`).")
    return "\n".join(lines) + "\n\n" + legend + "\n"


def replace_in(readme: str) -> str:
    block = f"{START}\n{table()}{END}"
    if START in readme and END in readme:
        head, _, rest = readme.partition(START)
        _, _, tail = rest.partition(END)
        return head + block + tail
    return readme.rstrip("\n") + "\n\n## Compressors\n\n" + block + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    if parser.parse_args().write:
        path = ROOT / "README.md"
        path.write_text(replace_in(path.read_text()))
    else:
        sys.stdout.write(table())


if __name__ == "__main__":
    main()
