"""The benchmark harness: its baselines compute the same thing as the ops they are compared with
(an "eager" column that did less work would flatter gankern), and the interleaved timer times
every contender."""
import torch

from gankern.bench import bias_act as bench_bias_act
from gankern.bench import norm as bench_norm
from gankern.bench.timing import interleaved
from gankern.reference import bias_act as ref_bias_act
from gankern.reference import norm as ref_norm

from conftest import assert_close


def test_stylegan_bias_act_baseline_matches_the_spec():
    x = torch.randn(3, 8, 5, 7, dtype=torch.float64) * 300  # some values beyond the clamp
    b = torch.randn(8, dtype=torch.float64)
    ref = ref_bias_act.bias_act(x, b, 1, "lrelu", 0.2, bench_bias_act.GAIN, bench_bias_act.CLAMP)
    assert_close(bench_bias_act.stylegan_bias_act(x, b), ref, torch.float64)


def test_native_norm_baselines_match_the_spec():
    x = torch.randn(2, 64, 5, 6, dtype=torch.float64)
    w, b = torch.randn(64, dtype=torch.float64), torch.randn(64, dtype=torch.float64)
    ref = ref_norm.group_norm_act(x, 32, w, b, 1e-5, "silu", 0.0, None, None, None, None)[0]
    assert_close(bench_norm._gn_native(x, w, b), ref, torch.float64)
    rm, rv = torch.zeros(64, dtype=torch.float64), torch.ones(64, dtype=torch.float64)
    ref = ref_norm.batch_norm_act(x, w, b, rm.clone(), rv.clone(), True, 1e-5, "relu", 0.0, None)[0]
    assert_close(bench_norm._bn_native((x, w, b, rm, rv)), ref, torch.float64)


def test_interleaved_times_every_contender():
    calls = {"a": 0, "b": 0}

    def bump(k):
        calls[k] += 1

    t = interleaved({"a": lambda: bump("a"), "b": lambda: bump("b")}, torch.device("cpu"), budget_s=0.001,
                    min_reps=7, max_reps=7, rounds=3)
    assert set(t) == {"a", "b"}
    assert len(t["a"].times_ms) == 7 and len(t["b"].times_ms) == 7
    assert calls == {"a": 12, "b": 12}  # two warm-up calls, then one untimed call per turn (3 rounds)
    assert t["a"].faults is not None and t["a"].ms >= 0


def test_each_turn_starts_with_an_untimed_call():
    """A contender's timed calls follow one of its own (its loop's memory state), never another's."""
    log = []

    def contender(k):
        log.append(k)

    interleaved({"a": lambda: contender("a"), "b": lambda: contender("b")}, torch.device("cpu"),
                budget_s=0.001, min_reps=4, max_reps=4, rounds=2)
    # warm-ups a a b b, then per round each contender's turn: 1 untimed + 2 timed calls, order rotated
    assert log == ["a", "a", "b", "b"] + ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3



def test_gan_layers_baselines_match_gankern():
    """The plain-torch StyleGAN2 formulations the gan_layers cases time do the same work as gankern's."""
    from gankern.bench import gan_layers as bench_gan

    dev = torch.device("cpu")
    layer, x, dy = bench_gan._block_setup((2, 8, 8, 8), torch.float32, dev)()
    with torch.no_grad():
        layer.bias.normal_()
    for got, want in zip(bench_gan._block_ours((layer, x, dy)), bench_gan._block_eager((layer, x, dy))):
        assert_close(got, want)
    x = torch.randn(8, 6, 3, 3, dtype=torch.float64)
    from gankern.reference import minibatch_std as ref_mbstd
    assert_close(bench_gan.eager_minibatch_std(x), ref_mbstd.minibatch_std(x, 4, 1), torch.float64)
    ours, plain, real, _ = bench_gan._r1_setup(4, 8, dev, False)()
    for p in ours.parameters():
        if p.ndim == 1:
            torch.nn.init.normal_(p)
    plain.load_state_dict(ours.state_dict())
    ours, plain, real = ours.double(), plain.double(), real.double()  # float64: same work, rounding aside
    assert_close(plain(real), ours(real), torch.float64)
    for got, want in zip(bench_gan._r1_ours((ours, plain, real, None)), bench_gan._r1_eager((ours, plain, real, None))):
        if want is None:
            assert got is None
        else:
            assert_close(got, want, torch.float64)
