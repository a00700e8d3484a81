"""The bit-flip stream: the flip schedule and its uniformity, the three LTU threshold variants
(firing rate and target variance), per-member seeds, the separate probe stream, chunking, resume."""

import itertools

import pytest
import torch

from core.data.bitflip import BitFlipProblem, BitFlipStream, ltu_thresholds

SMALL = BitFlipProblem(flip_period=500)


def _stream(problem, seeds, probe_size=128):
    return BitFlipStream(problem, seeds, [s + 1000 for s in seeds], probe_size=probe_size)


def test_exactly_one_slow_bit_flips_at_every_multiple_of_t():
    stream = _stream(SMALL, seeds=[0, 1, 2])
    x, _ = stream.next_chunk(10 * SMALL.flip_period)  # (steps, members, 21)
    slow = x[:, :, : SMALL.num_slow]
    changes = (slow[1:] != slow[:-1]).sum(-1)  # (steps - 1, members): bits changed from t-1 to t
    steps = torch.arange(1, len(x))
    at_flip = steps % SMALL.flip_period == 0
    assert torch.all(changes[at_flip] == 1)
    assert torch.all(changes[~at_flip] == 0)
    fast = x[:, :, SMALL.num_slow : SMALL.num_bits]
    assert 0.45 < fast.mean().item() < 0.55  # redrawn every step
    assert (fast[1:] != fast[:-1]).any(-1).float().mean() > 0.9
    assert torch.all(x[:, :, SMALL.num_bits] == 1)  # the bias bit


def test_the_flipped_bit_is_uniform_over_the_slow_bits():
    """Chi-squared goodness of fit of the flipped bit's index over 15 slow bits: 6 members x
    1000 periods (expected 400 per bit); 14 degrees of freedom, p = 0.001 critical value 36.12."""
    problem = BitFlipProblem(flip_period=1)
    x, _ = _stream(problem, seeds=list(range(6))).next_chunk(1001)
    flipped = (x[1:, :, :15] != x[:-1, :, :15]).float()  # (1000, 6, 15): one 1 per row
    assert torch.all(flipped.sum(-1) == 1)
    counts = flipped.sum((0, 1))
    expected = 6000 / 15
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 36.12, counts.tolist()


def test_redraw_variant_changes_slow_bits_only_at_multiples_of_t():
    problem = BitFlipProblem(flip_period=200, flip="redraw")
    x, _ = _stream(problem, seeds=list(range(8))).next_chunk(2000)
    changes = (x[1:, :, :15] != x[:-1, :, :15]).sum(-1)
    at_flip = torch.arange(1, 2000) % 200 == 0
    assert torch.all(changes[~at_flip] == 0)
    assert changes[at_flip].float().mean() > 4  # ~7.5 of 15 bits change on average


def _by_hand(threshold, w):
    """theta and the firing rule of one LTU, written from each source's formula: w (21,) in
    {-1, +1}, the last entry the bias weight b; n = the negative input weights."""
    n, b = int((w[:20] < 0).sum()), float(w[20])
    if threshold == "code":  # the paper's script: (m + 1) beta - (n - b / 2), fires on >
        return 14.7 - (n - b / 2), lambda pre, theta: pre > theta
    if threshold == "latex":  # the paper's formula: m beta - (n - b / 2), fires on >= 0
        return 14.0 - (n - b / 2), lambda pre, theta: pre - theta >= 0
    # Dohare's FixLTUNet: S = (m - sum_j w_j + b) / 2, tau = beta (m + 1) - S, fires on >
    return 0.7 * 21 - (20 - float(w[:20].sum()) + b) / 2, lambda pre, theta: pre > theta


# (firing rate, target variance over the stream) for seeds 0..7 over 20,000 steps, as measured
# on the paper script's and Dohare's data: code ~1.4% / ~1, dohare ~3% / ~1.6, latex higher.
BANDS = {
    "code": ((0.010, 0.020), (0.6, 1.4)),
    "latex": ((0.03, 0.06), (1.5, 3.5)),
    "dohare": ((0.02, 0.04), (1.1, 2.4)),
}


@pytest.mark.parametrize("threshold", ["code", "latex", "dohare"])
def test_each_threshold_variant_matches_its_formula_firing_rate_and_variance(threshold):
    """On a fixed seed, the LTUs' firing rate and the target's variance computed here, one LTU at
    a time from the formula above, equal the stream's; both lie in the variant's band."""
    problem = BitFlipProblem(flip_period=2000, threshold=threshold)
    stream = _stream(problem, seeds=list(range(8)))
    x, y = stream.next_chunk(20_000)  # (steps, members, 21)
    fired = total = 0
    variances = []
    for k in range(8):
        xk = x[:, k].double()
        target = torch.full((len(xk),), float(stream.out_bias[k]), dtype=torch.float64)
        for w, v in zip(stream.weights[k].double(), stream.out_weights[k].double()):
            theta, fires = _by_hand(threshold, w)
            on = fires(xk @ w, theta).double()
            fired += int(on.sum())
            total += len(on)
            target += v * on
        assert torch.equal(y[:, k].double(), target)
        variances.append(target.var().item())
    rate, variance = fired / total, sum(variances) / len(variances)
    (lo_rate, hi_rate), (lo_var, hi_var) = BANDS[threshold]
    assert lo_rate < rate < hi_rate and lo_var < variance < hi_var, (rate, variance)
    assert torch.equal(stream.target(x.transpose(0, 1)), y.transpose(0, 1))


def test_thresholds_on_one_written_out_unit():
    w = torch.tensor([[1] * 18 + [-1, -1, -1]])  # two negative input weights, bias weight -1
    theta = {
        t: ltu_thresholds(w, BitFlipProblem(threshold=t)).item()
        for t in ("code", "latex", "dohare")
    }
    assert theta["code"] == pytest.approx(14.7 - 2.5)  # S = 2 - (-1)/2
    assert theta["latex"] == pytest.approx(14.0 - 2.5)
    assert theta["dohare"] == pytest.approx(14.7 - 1.5)  # S = 2 + (-1)/2


def test_without_the_bias_input_the_learner_sees_20_bits_of_the_same_stream():
    with_bias = _stream(BitFlipProblem(flip_period=300), seeds=[4, 5])
    without = _stream(BitFlipProblem(flip_period=300, bias_input=False), seeds=[4, 5])
    assert without.problem.input_dim == 20
    (xa, ya), (xb, yb) = with_bias.next_chunk(900), without.next_chunk(900)
    assert xb.shape == (900, 2, 20)
    assert torch.equal(xa[..., :20], xb) and torch.equal(ya, yb)
    assert without.probe_inputs.shape == (2, 128, 20)
    assert torch.equal(without.target(xb.transpose(0, 1)), yb.transpose(0, 1))


def test_the_probe_size_never_changes_a_training_input():
    small, large = _stream(SMALL, [7, 8], probe_size=16), _stream(SMALL, [7, 8], probe_size=512)
    for a, b in zip(small.next_chunk(1500), large.next_chunk(1500)):
        assert torch.equal(a, b)
    assert torch.equal(small.probe_inputs, large.probe_inputs[:, :16])
    assert torch.equal(small.weights, large.weights)


def test_member_streams_equal_single_seed_streams_and_chunking_does_not_matter():
    seeds = [11, 12, 13]
    joint = _stream(SMALL, seeds)
    xs, ys = zip(*(joint.next_chunk(n) for n in (700, 1, 299, 1000)))
    x, y = torch.cat(xs), torch.cat(ys)
    for k, seed in enumerate(seeds):
        alone = _stream(SMALL, [seed])
        xa, ya = alone.next_chunk(2000)
        assert torch.equal(xa[:, 0], x[:, k]) and torch.equal(ya[:, 0], y[:, k])
        assert torch.equal(alone.probe_inputs[0], joint.probe_inputs[k])


def test_state_dict_resumes_mid_period():
    stream = _stream(SMALL, seeds=[5, 6])
    stream.next_chunk(730)
    saved = stream.state_dict()
    expected = stream.next_chunk(900)
    resumed = _stream(SMALL, seeds=[5, 6])
    resumed.load_state_dict(saved)
    for a, b in itertools.zip_longest(resumed.next_chunk(900), expected):
        assert torch.equal(a, b)


def test_probe_inputs_are_held_out_bits_with_the_bias_bit():
    stream = _stream(SMALL, seeds=[0], probe_size=64)
    probe = stream.probe_inputs
    assert probe.shape == (1, 64, 21)
    assert torch.all(probe[..., 20] == 1)
    assert set(probe[..., :20].unique().tolist()) == {0.0, 1.0}


def test_invalid_problem_lists_valid_values():
    with pytest.raises(ValueError, match="code, latex, dohare"):
        BitFlipProblem(threshold="paper")
    with pytest.raises(ValueError, match="one, redraw"):
        BitFlipProblem(flip="two")
    assert BitFlipProblem().threshold == "code"
