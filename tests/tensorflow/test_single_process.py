"""TensorFlow adapter behaviour that needs no second rank."""
import pytest

tf = pytest.importorskip("tensorflow")

from horovod_powersgd.tensorflow import PowerSGD, from_spec  # noqa: E402


def test_bad_arguments_raise_named_errors():
    with pytest.raises(ValueError, match="rank"):
        PowerSGD(rank=0)
    with pytest.raises(ValueError, match="wire_dtype"):
        PowerSGD(rank=2, wire_dtype="int8")


def test_from_spec_and_hashable():
    c = from_spec("powersgd:rank=3")
    assert isinstance(c, PowerSGD) and c.cfg.rank == 3
    assert {c: 1}[c] == 1  # Horovod caches its traced all-reduce function by compression object


def test_gradient_outside_horovod_is_a_clear_error():
    with pytest.raises(LookupError, match="DistributedGradientTape"):
        PowerSGD(rank=2).compress(tf.zeros((8, 8)))


def test_stats_start_empty():
    stats = PowerSGD(rank=2).stats
    assert stats.steps == 0 and stats.total.sent == 0


@pytest.mark.parametrize("autograph", [True, False], ids=["autograph", "no_autograph"])
def test_gradients_are_named_from_horovods_allreduce_grads(autograph):
    """One rank is enough: Horovod traces compress in allreduce_grads whatever the size. Under
    AutoGraph that frame runs its converted code; without, Horovod's own."""
    import horovod.tensorflow as hvd

    hvd.init()
    weight, bias = tf.Variable(tf.ones((8, 6)), name="weight"), tf.Variable(tf.ones((6,)), name="bias")
    compression = PowerSGD(rank=2)

    @tf.function(autograph=autograph)
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(weight * weight) + tf.reduce_sum(bias)
        return hvd.DistributedGradientTape(tape, compression=compression).gradient(loss, [weight, bias])

    step()
    assert sorted(compression.state_dict()["tensors"]) == ["bias", "weight"]
    assert compression._namer.checkpoint_key("weight") == "grad0"
