"""The bit-flip stream: the flip schedule, the LTU target, per-member seeds, chunking, resume."""

import itertools

import pytest
import torch

from core.data.bitflip import BitFlipProblem, BitFlipStream, ltu_thresholds

SMALL = BitFlipProblem(flip_period=500)


def test_exactly_one_slow_bit_flips_at_every_multiple_of_t():
    stream = BitFlipStream(SMALL, seeds=[0, 1, 2])
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


def test_redraw_variant_changes_slow_bits_only_at_multiples_of_t():
    problem = BitFlipProblem(flip_period=200, flip="redraw")
    x, _ = BitFlipStream(problem, seeds=list(range(8))).next_chunk(2000)
    changes = (x[1:, :, :15] != x[:-1, :, :15]).sum(-1)
    at_flip = torch.arange(1, 2000) % 200 == 0
    assert torch.all(changes[~at_flip] == 0)
    assert changes[at_flip].float().mean() > 4  # ~7.5 of 15 bits change on average


def _direct_target(x, weights, out_weights, out_bias, problem):
    """y for every row of x, one LTU at a time, thresholds from the written-out formulas."""
    m, beta = problem.num_bits, problem.beta
    y = torch.empty(len(x), dtype=torch.float64)
    for r, row in enumerate(x.double()):
        total = float(out_bias)
        for w, v in zip(weights.double(), out_weights.double()):
            pre = float(w @ row)
            if problem.threshold == "paper":
                theta = 14.0 - int((w < 0).sum())  # m * beta = 14
                fires = pre >= theta
            else:
                theta = (m + 1) * beta - (int((w[:m] < 0).sum()) - 0.5 * float(w[m]))
                fires = pre > theta
            total += float(v) * fires
        y[r] = total
    return y


@pytest.mark.parametrize("threshold", ["paper", "code"])
def test_target_matches_a_direct_ltu_evaluation(threshold):
    problem = BitFlipProblem(flip_period=50, threshold=threshold)
    stream = BitFlipStream(problem, seeds=[3, 4])
    x, y = stream.next_chunk(120)
    for k in range(2):
        expected = _direct_target(
            x[:, k], stream.weights[k], stream.out_weights[k], stream.out_bias[k], problem
        )
        assert torch.equal(y[:, k].double(), expected)
    assert torch.equal(stream.target(x.transpose(0, 1)), y.transpose(0, 1))
    assert y.std() > 0.5


def test_thresholds():
    w = torch.tensor([[1] * 18 + [-1, -1, -1]])  # two negative input weights, bias weight -1
    assert ltu_thresholds(w, BitFlipProblem()).tolist() == [14.0 - 3]
    assert ltu_thresholds(w, BitFlipProblem(threshold="code")).tolist() == [
        pytest.approx(14.7 - (2 + 0.5))
    ]


def test_member_streams_equal_single_seed_streams_and_chunking_does_not_matter():
    seeds = [11, 12, 13]
    joint = BitFlipStream(SMALL, seeds)
    xs, ys = zip(*(joint.next_chunk(n) for n in (700, 1, 299, 1000)))
    x, y = torch.cat(xs), torch.cat(ys)
    for k, seed in enumerate(seeds):
        alone = BitFlipStream(SMALL, [seed])
        xa, ya = alone.next_chunk(2000)
        assert torch.equal(xa[:, 0], x[:, k]) and torch.equal(ya[:, 0], y[:, k])
        assert torch.equal(alone.probe_inputs[0], joint.probe_inputs[k])


def test_state_dict_resumes_mid_period():
    stream = BitFlipStream(SMALL, seeds=[5, 6])
    stream.next_chunk(730)
    saved = stream.state_dict()
    expected = stream.next_chunk(900)
    resumed = BitFlipStream(SMALL, seeds=[5, 6])
    resumed.load_state_dict(saved)
    for a, b in itertools.zip_longest(resumed.next_chunk(900), expected):
        assert torch.equal(a, b)


def test_probe_inputs_are_held_out_bits_with_the_bias_bit():
    stream = BitFlipStream(SMALL, seeds=[0], probe_size=64)
    probe = stream.probe_inputs
    assert probe.shape == (1, 64, 21)
    assert torch.all(probe[..., 20] == 1)
    assert set(probe[..., :20].unique().tolist()) == {0.0, 1.0}


def test_invalid_problem_lists_valid_values():
    with pytest.raises(ValueError, match="paper, code"):
        BitFlipProblem(threshold="dohare")
    with pytest.raises(ValueError, match="one, redraw"):
        BitFlipProblem(flip="two")
