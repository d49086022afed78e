"""Each compressor's `transfers` is the one description of its traffic: its table formula, its
wire_bytes and the advisor's rounds all agree with it."""
import pytest

from horovod_powersgd.core import wire
from horovod_powersgd.core.registry import COMPRESSORS, build
from horovod_powersgd.core.wire import Round, Transfer

# n×m matrices on which every formula is exact: compressed by the low-rank methods at rank ≤ 4,
# d a multiple of 8 (packed signs) and ratio·d a whole number (ratio 0.01 and 0.25)
SHAPES = [(400, 600), (800, 100), (200, 40, 5)]
SINGLE_ROUND_VARIANTS = ("alternate=True", "two_sided=True")  # one half power iteration per step


def every_variant():
    for name, cls in COMPRESSORS.items():
        for variant, row in (("", cls.wire),) + tuple(cls.wire_variants):
            yield (f"{name}:{variant}" if variant else name), row


def formula_bits(formula: str, compressor, shape) -> float:
    """The table's bits per element, evaluated with the compressor's configuration."""
    config = compressor.config()
    n, m = shape[0], wire.numel(shape) // shape[0]
    symbols = {"n": n, "m": m, "d": n * m, "r": config.get("rank", 1),
               "k": config.get("power_iterations", 1), "ratio": config.get("ratio"), "max": max}
    return eval(formula.replace("·", "*"), {"__builtins__": {}}, symbols)  # noqa: S307 (our own strings)


@pytest.mark.parametrize("spec,row", list(every_variant()), ids=lambda v: v if isinstance(v, str) else "")
def test_table_formula_is_what_transfers_send(spec, row):
    name, _, variant = spec.partition(":")
    knobs = build(spec).config()
    for extra in [""] + [o for o in ("rank=3", "ratio=0.25", "power_iterations=2")
                         if o.partition("=")[0] in knobs
                         and not (variant in SINGLE_ROUND_VARIANTS and "iter" in o)]:
        compressor = build(f"{name}:" + ",".join(filter(None, (variant, extra))))
        for shape in SHAPES:
            sent = compressor.wire_bytes(shape)
            assert sent == sum(t.nbytes for t in compressor.transfers(shape))
            assert 8 * sent / wire.numel(shape) == pytest.approx(
                formula_bits(row.bits_per_element, compressor, shape)), (spec, extra, shape)


def test_wire_dtype_and_gradient_dtype_change_the_bytes():
    shape = (400, 600)
    assert build("powersgd:rank=2,wire_dtype='float16'").transfers(shape) == [
        Transfer("allreduce", 2 * 2 * 400, 0, "P"), Transfer("allreduce", 2 * 2 * 600, 1, "Q")]
    # float64 gradients: factors, scales and values in float64; float16 ones are computed in float32
    assert build("signnorm").transfers(shape, "float64")[-1] == Transfer("allgather", 8, 0, "scale")
    assert build("randomk:ratio=0.01").wire_bytes(shape, "float16") == 2400 * 4
    assert build("powersgd").wire_bytes((7,), "float16") == 14  # uncompressed: its own dtype


def test_rounds_are_fused_per_collective_and_round():
    transfers = (build("powersgd:rank=2,power_iterations=2").transfers((400, 600))
                 + wire.raw((600,)) + build("signnorm").transfers((16, 8)))
    assert wire.fuse(transfers) == [
        Round("allreduce", 0, 4 * (800 + 600) + 4, 3),  # P, the raw bias, signnorm's placeholder
        Round("allgather", 0, 16 + 4, 2),  # signnorm's signs and scale
        Round("allreduce", 1, 4 * 1200, 1), Round("allreduce", 2, 4 * 800, 1), Round("allreduce", 3, 4 * 1200, 1)]
    assert not wire.compressed(wire.raw((3, 3))) and wire.compressed(build("fp16").transfers((3, 3)))
    assert not wire.compressed(build("powersgd").transfers((3,)))


def test_link_bytes_and_hops_of_a_ring():
    assert wire.link_bytes("allreduce", 1000, 4) == 1500 and wire.hops("allreduce", 4) == 6
    assert wire.link_bytes("allgather", 1000, 4) == 3000 and wire.hops("allgather", 4) == 3
    with pytest.raises(ValueError, match="collective"):
        Transfer("broadcast", 4)
