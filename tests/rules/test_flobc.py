"""FLoBC: roles, parity of the batched and per-peer forms, validation gating, reward-penalty scores."""

import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch

import ppaia
from ppaia.learning import MODELS, LocalData
from ppaia.learning.holdout import PeerLearning
from ppaia.ledger import content_hash, encode
from ppaia.ledger import to_fixed as ledger_fixed
from ppaia.rules import RULES, RoundContext, apply_plan, apply_step_per_peer
from ppaia.rules.flobc import SCORE_SCALE, fixed_mean, to_fixed
from ppaia.topology import MIXINGS, TOPOLOGIES, build_graph

HELD = 40  # held-out samples per peer


def context(n=8, round_=1, held=HELD):
    """N peers whose held-out labels are y = [x₀ > 0] + 2·[x₁ > 0]; a logistic model (D = 24)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n * held, 5, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    model = MODELS.create("logistic").build((5,), 4)
    holdout = LocalData.from_parts(x, y, [np.arange(i * held, (i + 1) * held) for i in range(n)])
    graph = build_graph(TOPOLOGIES.create("complete"), n, seed=0)
    randomness = torch.Generator().manual_seed(round_)
    learner = PeerLearning(model, holdout)
    return RoundContext(
        round_, graph, torch.full((n,), HELD), MIXINGS.create("metropolis"), 1.0, randomness, learner
    )


def logistic(weight, bias=(0.0, 0.0, 0.0, 0.0)):
    """Flat parameters of the logistic model: weight [4, 5] then bias [4]."""
    return torch.cat([torch.tensor(weight, dtype=torch.float32).flatten(), torch.tensor(bias)])


SIGNS = [[-1, -1], [1, -1], [-1, 1], [1, 1]]  # class c ↔ (sign x₀, sign x₁)
PERFECT = logistic([[5.0 * a, 5.0 * b, 0, 0, 0] for a, b in SIGNS])  # accuracy 1
HALF = logistic([[5.0 * a, 0, 0, 0, 0] for a, _ in SIGNS])  # only x₀: accuracy ≈ 1/2
CONSTANT = logistic([[0.0] * 5] * 4, [1.0, 0, 0, 0])  # always class 0: accuracy ≈ 1/4


def fresh(spec, n=8):
    rule = RULES.create(spec)
    rule.reset(n)
    return rule


def accuracy(ctx, model, peers):
    x, y, _ = ctx.learner.samples(torch.tensor(peers))
    logits = ctx.learner.logits(model.expand(len(peers), 1, -1), x)[:, 0]
    return (logits.argmax(-1) == y).double().mean(-1)


def round_params(global_model, trainers, n=8):
    """Validators (the last peers) hold `global_model`; trainer i sends trainers[i]."""
    params = global_model.expand(n, -1).clone()
    params[: len(trainers)] = torch.stack(trainers)
    return params


def test_roles_transfers_and_errors():
    rule, ctx = fresh("flobc(validators=3)"), context()
    plan = rule.plan(ctx)
    assert plan.trainers.tolist() == [True] * 5 + [False] * 3
    assert plan.models_sent() == 5 + 8  # T uploads, N downloads
    (step,) = plan.steps
    assert step.n_rows == 1 and step.sender_peers().tolist() == list(range(8))
    assert step.targets.tolist() == list(range(8)) and (step.target_rows == 0).all()
    assert rule.needs_holdout and not rule.uses_topology and rule.quorum == 3
    assert fresh("flobc(validators=1)").quorum == 1 and fresh("flobc(validators=4)").quorum == 3
    with pytest.raises(ValueError, match="validators: need at least one trainer"):
        fresh("flobc(validators=8)")
    with pytest.raises(ValueError, match="validators: need at least one trainer"):
        RULES.create("flobc(validators=9)").plan(ctx)
    with pytest.raises(ValueError, match="holdout"):
        ppaia.ExperimentConfig.model_validate({"peers": 8, "rule": "flobc", "holdout": 0})
    torch.testing.assert_close(rule.snapshot()["score"][:5], torch.full((5,), 0.2, dtype=torch.float64))
    assert rule.snapshot()["score"][5:].isnan().all()
    assert rule.broadcasts_initial


@pytest.mark.parametrize("spec", ["flobc", "flobc(validators=2, decay=0.5)", "flobc(faithful=true)"])
def test_batched_and_per_peer_forms_agree_over_rounds(spec):
    batched_rule, peer_rule = fresh(spec), fresh(spec)
    g = torch.Generator().manual_seed(5)
    noise = [torch.randn(24, generator=g) * s for s in (0.5, 2.0, 4.0, 8.0, 3.0)]
    batched = models = None
    for round_ in (1, 2, 3):
        start = HALF if round_ == 1 else batched[0]
        params = round_params(start, [start + e * round_ for e in noise])
        ctx = context(round_=round_)
        batched = apply_plan(batched_rule, batched_rule.plan(ctx), params.clone(), ctx)
        models = list(params.clone())
        ctx = context(round_=round_)
        for step in peer_rule.plan(ctx).steps:
            models = apply_step_per_peer(peer_rule, step, models, ctx)
        torch.testing.assert_close(torch.stack(models), batched, rtol=1e-5, atol=1e-6)
        assert (batched == batched[0]).all()  # everyone holds the global model
        torch.testing.assert_close(
            peer_rule.snapshot()["score"], batched_rule.snapshot()["score"], equal_nan=True
        )
        assert torch.equal(peer_rule.last_accepted, batched_rule.last_accepted)


def test_a_sub_quorum_update_is_not_applied():
    ctx = context()
    good = [PERFECT + 0.1 * k for k in range(4)]
    params = round_params(HALF, [*good, CONSTANT])
    rule = fresh("flobc")
    out = apply_plan(rule, rule.plan(ctx), params.clone(), ctx)
    assert rule.last_accepted.tolist() == [True] * 4 + [False] * 4
    weights = rule.last_weights
    assert weights[4] == 0 and abs(float(weights.sum()) - 1) < 1e-12
    scores = rule.scores[:4]
    expected = HALF + sum(s / scores.sum() * (m - HALF) for s, m in zip(scores.tolist(), good, strict=True))
    torch.testing.assert_close(out, expected.expand(8, -1))
    # every trainer's score moved by its mean accuracy gain over the global model, then renormalised
    validators = [5, 6, 7]
    gains = [float((accuracy(ctx, m, validators) - accuracy(ctx, HALF, validators)).mean()) for m in good]
    raw = torch.tensor([0.2 + gain for gain in gains], dtype=torch.float64)
    torch.testing.assert_close(scores, raw / raw.sum())  # the constant model's score fell to 0
    assert rule.scores[4] == 0


def test_faithful_mode_applies_every_update_with_its_score():
    ctx = context(n=5)  # two trainers, three validators
    params = round_params(HALF, [PERFECT, CONSTANT], n=5)
    default, faithful = fresh("flobc", n=5), fresh("flobc(faithful=true)", n=5)
    out = apply_plan(default, default.plan(ctx), params.clone(), ctx)
    assert default.last_accepted.tolist() == [True, False, False, False, False]
    torch.testing.assert_close(out, PERFECT.expand(5, -1))  # the rejection does not shrink the step
    out = apply_plan(faithful, faithful.plan(ctx), params.clone(), ctx)
    assert faithful.last_accepted.tolist() == [True, True, False, False, False]
    s = faithful.scores[:2]
    assert 0 < s[1] < s[0] and abs(float(s.sum()) - 1) < 1e-12
    expected = HALF + s[0].item() * (PERFECT - HALF) + s[1].item() * (CONSTANT - HALF)
    torch.testing.assert_close(out, expected.expand(5, -1))
    torch.testing.assert_close(faithful.last_weights[:2], s)
    # scores are the same in both modes; only the gate and the weights differ
    torch.testing.assert_close(default.scores, faithful.scores, equal_nan=True)


def test_no_accepted_update_keeps_the_global_model_and_nan_updates_are_rejected():
    ctx = context()
    broken = PERFECT.clone()
    broken[3] = float("nan")
    params = round_params(PERFECT, [CONSTANT, CONSTANT + 0.1, HALF * 0.01, broken, CONSTANT * 2])
    for spec in ("flobc", "flobc(faithful=true)"):
        rule = fresh(spec)
        out = apply_plan(rule, rule.plan(ctx), params.clone(), ctx)
        assert not rule.last_accepted[3] and out.isfinite().all()
    rule = fresh("flobc")
    out = apply_plan(rule, rule.plan(ctx), params.clone(), ctx)
    assert not rule.last_accepted.any()
    torch.testing.assert_close(out, PERFECT.expand(8, -1))


def test_noisier_trainers_scores_fall_and_the_noisiest_reaches_zero():
    rule, theta = fresh("flobc"), PERFECT.expand(8, -1).clone()
    direction = torch.randn(24, generator=torch.Generator().manual_seed(2))
    trainers = [PERFECT + 0.3 * i * direction for i in range(5)]  # trainer i: noise of scale 0.3·i
    history = []
    for round_ in range(1, 5):
        ctx = context(round_=round_)
        theta = apply_plan(rule, rule.plan(ctx), round_params(theta[-1], trainers), ctx)
        history.append(rule.scores[:5])
    first, second, last = history[0], history[1], history[-1]
    assert (first[:-1] > first[1:]).all() and (second[:-1] > second[1:]).all()  # ordered by noise
    assert (last[:-1] >= last[1:]).all() and last[0] > last[1] > last[2]
    assert history[1][4] < 1e-3 and last[4] == 0 and abs(float(last.sum()) - 1) < 1e-12
    assert (torch.stack(history)[:, 4].diff() <= 0).all()  # the noisiest trainer's score only falls
    assert rule.last_accepted[:5].tolist() == [True, True, False, False, False]


def test_end_to_end_learns_and_records_scores(tmp_path):
    result = ppaia.run(
        {"peers": 8, "rounds": 5, "rule": "flobc(validators=3)", "holdout": 0.2, "partition": "iid"}
    )
    accuracy = [row["acc_mean"] for row in result.history]
    assert accuracy[-1] > accuracy[0] + 0.2
    rounds = [round_ for round_, _ in result.snapshots["score"]]
    assert rounds == [1, 2, 3, 4, 5]
    last = result.snapshots["score"][-1][1]
    assert last.shape == (8,) and last[5:].isnan().all() and abs(float(last[:5].sum()) - 1) < 1e-9
    ppaia.write_outputs(result, tmp_path / "out")
    lines = (tmp_path / "out" / "score.csv").read_text().splitlines()
    assert lines[0] == "round,peer,score" and len(lines) == 1 + 5 * 8


def test_a_noise_attacking_trainers_score_falls():
    result = ppaia.run(
        {
            "peers": 8,
            "rounds": 3,
            "rule": "flobc(validators=3)",
            "holdout": 0.2,
            "partition": "iid",
            "attack": "gaussian",
            "attackers": 0.25,
            "seed": 3,
        }
    )
    attackers = result.attackers.nonzero().flatten().tolist()
    noisy = [peer for peer in attackers if peer < 5]
    assert noisy and 5 not in attackers  # a noisy trainer; the global model's validator is honest
    scores = result.snapshots["score"][-1][1][:5]
    honest = [peer for peer in range(5) if peer not in noisy]
    assert scores[noisy].max() < 0.05 < scores[honest].min()


def test_a_stale_update_is_rebased_onto_the_current_global_model():
    # trainers 0..4, trainer 4 twice as slow; BSP period 1: release 2 carries its update from version 0
    rule, ctx = fresh("flobc(stragglers=1, slowdown=2)"), context()
    params = HALF.expand(8, -1).clone()
    plan = rule.plan(ctx)
    assert plan.trainers.tolist() == [True] * 4 + [False] * 4 and plan.info["sim_time"] == 1.0
    params = rule.prepare(params, plan, ctx)
    params[:4] = torch.stack([PERFECT + 0.1 * k for k in range(4)])
    first = apply_plan(rule, plan, params, ctx)[0]

    ctx = context(round_=2)
    plan = rule.plan(ctx)
    assert plan.trainers.tolist() == [True] * 5 + [False] * 3
    assert plan.info == {"sim_time": 2.0, "contributors": 5, "staleness_mean": 0.2}
    params = rule.prepare(first.expand(8, -1).clone(), plan, ctx)
    assert torch.equal(params[4], HALF) and torch.equal(params[0], first)  # each starts from its base
    delta = 0.01 * torch.arange(24.0)
    params[4] = HALF + delta  # the straggler's update, trained from version 0
    apply_plan(rule, plan, params, ctx)
    last = rule.last_round
    assert last.base_versions.tolist() == [1, 1, 1, 1, 0]
    torch.testing.assert_close(last.candidates[4], first + delta)  # judged and applied as θ + Δ
    torch.testing.assert_close(last.candidates[0], first)  # no change: Δ = 0 for the fresh ones


def test_every_validator_computes_the_bit_identical_model():
    rule, ctx = fresh("flobc"), context()
    g = torch.Generator().manual_seed(1)
    params = round_params(HALF, [PERFECT + 0.5 * torch.randn(24, generator=g) for _ in range(5)])
    models = apply_step_per_peer(rule, rule.plan(ctx).steps[0], list(params), ctx)
    hashes = {content_hash(encode({"theta": m})) for m in models[5:]}  # each validator's own result
    assert len(hashes) == 1
    assert all(torch.equal(m, models[5]) for m in models)


@pytest.mark.parametrize(
    ("sync", "times"),
    [("bsp(period=1)", [1, 2, 3, 4, 5, 6]), ("ssp(period=1)", None), ("bap(quota=2)", [3, 6, 9, 12, 15, 18])],
)
def test_sync_schemes_drive_the_rounds_on_a_simulated_clock(sync, times, tmp_path):
    config = {
        "peers": 8,
        "rounds": 6,
        "rule": f"flobc(sync='{sync}', stragglers=2, slowdown=3)",
        "holdout": 0.2,
        "partition": "iid",
    }
    result = ppaia.run(config)
    rows = result.history[1:]
    clock = [row["sim_time"] for row in rows]
    assert all(b > a for a, b in itertools.pairwise(clock))
    if times is not None:
        assert clock == times
    assert result.final["acc_mean"] > result.history[0]["acc_mean"] + 0.2
    if sync.startswith("bsp"):  # the two stragglers' updates arrive every third release, 2 versions stale
        assert [row["contributors"] for row in rows] == [3, 3, 5, 3, 3, 5]
        assert rows[2]["staleness_mean"] == pytest.approx(4 / 5)
    ppaia.write_outputs(result, tmp_path / "out")
    assert (tmp_path / "out" / "accuracy_vs_time.png").exists()
    header = (tmp_path / "out" / "metrics.csv").read_text().splitlines()[0]
    assert "sim_time" in header.split(",")


def test_the_fixed_point_is_pythons_round_and_the_ledger_clients():
    """The rule's quantisation (the ledger client's too) is the nearest multiple of 10⁻⁶, ties to even,
    over accuracies k/n, exact ties and random values; its mean is the exact mean, rounded once."""
    g = torch.Generator().manual_seed(4)
    values = [k / n for n in (1, 3, 7, 40, 360, 999_983) for k in range(0, n + 1, max(1, n // 97))]
    values += [(2 * k + 1) / 2e6 for k in range(200)] + torch.rand(
        500, generator=g, dtype=torch.float64
    ).tolist()
    fixed = to_fixed(torch.tensor(values, dtype=torch.float64))
    assert fixed.dtype == torch.int64 and fixed.tolist() == [round(x * SCORE_SCALE) for x in values]
    assert [ledger_fixed(x) for x in values] == fixed.tolist()
    for count in (1, 2, 3, 5, 9):
        rows = fixed[: 60 * count].view(60, count)
        means = fixed_mean(rows, dim=1)
        exact = [float(Fraction(sum(row), count * SCORE_SCALE)) for row in rows.tolist()]
        assert means.dtype == torch.float64 and means.tolist() == exact
        assert torch.equal(fixed_mean(rows.flip(1).T), means)  # any order, any layout
    assert fixed_mean(torch.zeros(0, dtype=torch.long)).item() == 0.0


def test_scores_move_by_the_fixed_point_accuracies_the_ledger_records():
    """Accuracies on 7 held-out samples are not multiples of 10⁻⁶: the scores use their fixed point."""
    ctx = context(held=7)
    g = torch.Generator().manual_seed(3)
    params = round_params(HALF, [HALF + 0.5 * torch.randn(24, generator=g) for _ in range(5)])
    rule = fresh("flobc(decay=0)")
    apply_plan(rule, rule.plan(ctx), params, ctx)
    last = rule.last_round
    assert not torch.equal(to_fixed(last.accuracy).double() / SCORE_SCALE, last.accuracy)  # rounding acts
    gain = fixed_mean(to_fixed(last.accuracy)) - fixed_mean(to_fixed(last.reference))
    expected, _ = rule.rescore(torch.full((5,), 0.2, dtype=torch.float64), last.trainers, gain, last.accepted)
    assert torch.equal(rule.scores[:5], expected)
