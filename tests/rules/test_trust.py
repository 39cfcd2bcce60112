"""Learned-trust DeGroot averaging (PPAIA): simplex, first-meeting weight, learning, parity, faithful mode."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ppaia
from ppaia.learning import MODELS, LocalData, ParamLayout
from ppaia.learning.holdout import PeerLearning
from ppaia.rules import RULES, RoundContext, apply_plan, apply_step_per_peer
from ppaia.rules.trust import project_capped_simplex
from ppaia.simulation.report import densify
from ppaia.topology import MIXINGS, TOPOLOGIES, Mixing, build_graph

N = 8


def learner(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N * 12, 5, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    model = MODELS.create("mlp(hidden=[6])").build((5,), 4)
    holdout = LocalData.from_parts(x, y, [np.arange(i * 12, (i + 1) * 12) for i in range(N)])
    return PeerLearning(model, holdout), ParamLayout.of(model).size


def context(round_=1, topology="complete", link_up=1.0):
    peers, _ = learner()
    graph = build_graph(TOPOLOGIES.create(topology), N, seed=0)
    randomness = torch.Generator().manual_seed(round_)
    return RoundContext(
        round_, graph, torch.full((N,), 12), MIXINGS.create("metropolis"), link_up, randomness, peers
    )


def stacked(seed=1):
    _, size = learner()
    return torch.randn(N, size, generator=torch.Generator().manual_seed(seed)) * 0.5


def fresh(spec="learned_trust"):
    rule = RULES.create(spec)
    rule.reset(N)
    return rule


@pytest.mark.parametrize(
    "spec", ["learned_trust", "learned_trust(partners=2, steps=4)", "learned_trust(faithful=true)"]
)
@pytest.mark.parametrize("link_up", [1.0, 0.6])
def test_batched_and_per_peer_forms_agree_over_rounds(spec, link_up):
    batched_rule, peer_rule = fresh(spec), fresh(spec)
    batched, models = stacked(), list(stacked())
    for round_ in (1, 2, 3):
        ctx = context(round_, link_up=link_up)
        batched = apply_plan(batched_rule, batched_rule.plan(ctx), batched, ctx)
        ctx = context(round_, link_up=link_up)  # the same round's randomness again
        for step in peer_rule.plan(ctx).steps:
            models = apply_step_per_peer(peer_rule, step, models, ctx)
    torch.testing.assert_close(torch.stack(models), batched, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        densify(peer_rule.snapshot()["trust"]), densify(batched_rule.snapshot()["trust"]), equal_nan=True
    )


def test_each_peer_pulls_from_k_random_partners():
    ctx = context()
    plan = fresh("learned_trust(partners=3)").plan(ctx)
    (step,) = plan.steps
    assert plan.models_sent() == 3 * N
    for peer in range(N):
        senders = step.senders[step.rows == peer].tolist()
        assert peer in senders and len(set(senders)) == 4
    ring = fresh("learned_trust(partners=3)").plan(context(topology="ring"))
    assert ring.models_sent() == 2 * N  # only two neighbours on a ring


def test_first_meeting_weight_is_one_over_k_plus_one():
    rule, ctx, theta = fresh("learned_trust(partners=3, steps=0)"), context(), stacked()
    plan = rule.plan(ctx)
    out = apply_plan(rule, plan, theta.clone(), ctx)
    (step,) = plan.steps
    trust = densify(rule.snapshot()["trust"])
    for peer in range(N):
        senders = step.senders[step.rows == peer]
        partners = senders[senders != peer]
        assert torch.allclose(trust[peer, partners], torch.full((3,), 0.25, dtype=torch.float64))
        torch.testing.assert_close(out[peer], theta[senders].mean(0))  # (1 − 3/4)θᵢ + Σ θₚ/4


def test_each_rounds_trust_row_stays_in_the_capped_simplex():
    rule, theta = fresh("learned_trust(partners=4, lr=50.0)"), stacked()
    for round_ in range(1, 6):
        ctx = context(round_)
        plan = rule.plan(ctx)
        theta = apply_plan(rule, plan, theta, ctx)
        (step,) = plan.steps
        trust = densify(rule.snapshot()["trust"])
        for peer in range(N):
            senders = step.senders[step.rows == peer]
            row = trust[peer, senders[senders != peer]]  # row i of W(t) besides the self weight
            assert (row >= 0).all() and row.sum() <= 1 + 1e-9


def mixture_losses(ctx, theta, step, trust):
    """Each peer's held-out cross-entropy of the logit mixture (1 − ΣT)·f(θᵢ) + Σ Tₚ·f(θₚ)."""
    x, y, _ = ctx.learner.samples(torch.arange(N))
    losses = []
    for peer in range(N):
        senders = step.senders[step.rows == peer]
        partners = senders[senders != peer]
        weights = trust[peer, partners].float()
        models = torch.cat([theta[peer : peer + 1], theta[partners]]).unsqueeze(0)
        logits = ctx.learner.logits(models, x[peer : peer + 1])[0]
        mixture = (1 - weights.sum()) * logits[0] + (weights[:, None, None] * logits[1:]).sum(0)
        losses.append(F.cross_entropy(mixture, y[peer]).item())
    return torch.tensor(losses)


def test_learning_lowers_each_peers_held_out_loss():
    ctx, theta = context(), stacked()
    rule = fresh("learned_trust(steps=20)")
    plan = rule.plan(ctx)
    apply_plan(rule, plan, theta.clone(), ctx)
    (step,) = plan.steps
    learned = densify(rule.snapshot()["trust"])
    start = torch.where(learned.isfinite(), 0.25, float("nan"))
    before, after = mixture_losses(ctx, theta, step, start), mixture_losses(ctx, theta, step, learned)
    assert (after <= before + 1e-6).all() and (after < before - 1e-3).any()


def test_a_partner_sending_nan_or_inf_gets_no_trust_and_no_peer_turns_nan():
    rule, theta = fresh("learned_trust"), stacked()
    theta[3, :5] = float("nan")
    theta[5, 0] = float("inf")
    ctx = context()
    out = apply_plan(rule, rule.plan(ctx), theta.clone(), ctx)
    trust = densify(rule.snapshot()["trust"])
    honest = [p for p in range(N) if p not in (3, 5)]
    assert torch.isfinite(out[honest]).all()
    for bad in (3, 5):
        toward = trust[honest, bad]
        assert (toward[toward.isfinite()] == 0).all()


def test_faithful_mode_takes_the_prototypes_gradient_step():
    ctx, theta = context(), stacked()
    rule = fresh("learned_trust(faithful=true, steps=1, lr=0.01)")
    plan = rule.plan(ctx)
    apply_plan(rule, plan, theta.clone(), ctx)
    (step,) = plan.steps
    x, y, _ = ctx.learner.samples(torch.arange(N))
    for peer in range(N):
        senders = step.senders[step.rows == peer]
        partners = senders[senders != peer]
        logits = ctx.learner.logits(theta[partners].unsqueeze(0), x[peer : peer + 1])[0].double()  # [k, H, C]
        own = ctx.learner.logits(theta[peer].view(1, 1, -1), x[peer : peer + 1])[0, 0].double()
        mixture = 0.25 * own + 0.25 * logits.sum(0)  # (1 − 3/4)·own + Σ ¼·partner
        residual = mixture.softmax(-1) - F.one_hot(y[peer], 4)
        expected = 0.25 - 0.01 * (residual * logits).sum(-1).mean(-1)  # no −f(x; θᵢ) term: s is detached
        torch.testing.assert_close(densify(rule.snapshot()["trust"])[peer, partners], expected)


def test_faithful_mode_does_not_project():
    rule, theta = fresh("learned_trust(faithful=true, lr=30.0, steps=5)"), stacked() * 4
    for round_ in range(1, 4):
        ctx = context(round_)
        theta = apply_plan(rule, rule.plan(ctx), theta, ctx)
    trust = densify(rule.snapshot()["trust"])
    finite = trust[trust.isfinite()]
    assert (finite < 0).any() or (trust.nan_to_num(0).sum(1) > 1).any()


def test_capped_simplex_projection():
    mask = torch.ones(1, 3, dtype=torch.bool)
    inside = torch.tensor([[0.2, 0.3, 0.1]], dtype=torch.float64)
    assert torch.equal(project_capped_simplex(inside, mask), inside)
    assert torch.equal(
        project_capped_simplex(torch.tensor([[-0.5, 0.3, 0.1]], dtype=torch.float64), mask),
        torch.tensor([[0.0, 0.3, 0.1]], dtype=torch.float64),
    )
    over = project_capped_simplex(torch.tensor([[0.8, 0.6, -1.0]], dtype=torch.float64), mask)
    torch.testing.assert_close(over, torch.tensor([[0.6, 0.4, 0.0]], dtype=torch.float64))
    masked = project_capped_simplex(
        torch.tensor([[0.9, 0.9, 5.0]], dtype=torch.float64), torch.tensor([[True, True, False]])
    )
    torch.testing.assert_close(masked, torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64))
    random = torch.randn(50, 6, dtype=torch.float64) * 2
    projected = project_capped_simplex(random, torch.ones(50, 6, dtype=torch.bool))
    assert (projected >= 0).all() and (projected.sum(1) <= 1 + 1e-12).all()
    torch.testing.assert_close(
        project_capped_simplex(projected, torch.ones(50, 6, dtype=torch.bool)), projected
    )


def test_a_noise_attackers_trust_falls_to_zero_within_a_few_rounds():
    result = ppaia.run(
        {
            "peers": 10,
            "rounds": 3,
            "topology": "complete",
            "partition": "iid",
            "holdout": 0.2,
            "rule": "learned_trust",
            "attack": "gaussian",
            "attackers": 0.3,
        }
    )
    attackers = result.attackers
    for _, entries in result.snapshots["trust"]:
        trust = densify(entries)
        toward_attackers = trust[~attackers][:, attackers]
        met = toward_attackers[toward_attackers.isfinite()]
        assert met.numel() > 0 and met.max() < 0.02
    honest = trust[~attackers][:, ~attackers]
    assert honest[honest.isfinite()].mean() > 0.1


def test_trust_is_written_with_the_run_outputs(tmp_path):
    result = ppaia.run(
        {"peers": 5, "rounds": 2, "topology": "complete", "holdout": 0.2, "rule": "learned_trust(partners=2)"}
    )
    ppaia.write_outputs(result, tmp_path / "out")
    lines = (tmp_path / "out" / "trust.csv").read_text().splitlines()
    assert lines[0] == "round,peer,partner,trust" and len(lines) > 1
    assert {int(line.split(",")[0]) for line in lines[1:]} == {1, 2}
    assert (tmp_path / "out" / "trust.png").stat().st_size > 1000


def test_a_strong_prior_keeps_trust_at_its_first_meeting_value():
    rule, theta = fresh("learned_trust(prior=1e6, steps=5)"), stacked() * 3
    free = fresh("learned_trust(steps=5)")
    ctx = context()
    apply_plan(rule, rule.plan(ctx), theta.clone(), ctx)
    ctx = context()
    apply_plan(free, free.plan(ctx), theta.clone(), ctx)
    pulled, moved = densify(rule.snapshot()["trust"]), densify(free.snapshot()["trust"])
    known = pulled.isfinite()
    assert (pulled[known] - 0.25).abs().max() < 1e-3
    assert (moved[known] - 0.25).abs().max() > 0.05


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_partners_beyond_reach_are_anchored_at_zero_and_the_others_at_one_over_k_plus_one(scale, seed):
    """The anchor is a distance gate relative to the nearest partner: whatever the scale of the
    disagreement, a partner within `reach` (2) times the nearest one's distance is anchored at 1/(k+1),
    one beyond it at 0; with `reach = None` every partner is anchored at 1/(k+1). A strong prior holds
    trust at the anchor, so the trust learned is the anchor."""
    _, size = learner()
    g = torch.Generator().manual_seed(seed)
    theta = stacked(seed)
    directions = F.normalize(torch.randn(4, size, generator=g), dim=1)
    for partner, distance in zip((1, 2, 3, 4), (1.0, 1.9, 2.1, 50.0), strict=True):
        theta[partner] = theta[0] + scale * distance * directions[partner - 1]
    step = Mixing(
        torch.zeros(5, dtype=torch.long),
        torch.arange(5),
        torch.full((5,), float("nan")),
        1,
        torch.tensor([0]),
        torch.tensor([0]),
    )
    expected = {"": [0.2, 0.2, 0.0, 0.0], ", reach=None": [0.2] * 4}
    for options, anchor in expected.items():
        rule = fresh(f"learned_trust(partners=4, prior=1e12, steps=3{options})")
        rule.combine(theta, step, context())
        learned = densify(rule.snapshot()["trust"])[0, 1:5]
        torch.testing.assert_close(learned, torch.tensor(anchor, dtype=torch.float64), atol=1e-3, rtol=0)


SKEWED = {
    "peers": 20,
    "rounds": 15,
    "topology": "random_regular(k=4)",
    "partition": "dirichlet(0.5)",
    "holdout": 0.2,
    "lr": 0.1,
    "eval_every": 15,
    "seed": 0,
}


def isolation_and_accuracy(config: dict) -> tuple[float, float]:
    """The share of met partners trusted below 0.02 at the end, and the mean accuracy."""
    sim = ppaia.Simulation(ppaia.ExperimentConfig.model_validate(config))
    result = sim.run()
    trust = sim.rule.state_dict()
    return float((trust["trust"][trust["met"]] < 0.02).double().mean()), result.summary()["acc_mean"]


def test_anchored_trust_does_not_isolate_peers_on_skewed_data_where_the_unanchored_fit_does():
    """On label-skewed data each peer's held-out data has few classes, so fitting trust on it alone
    pushes honest partners to 0 (the peers end up alone); anchored trust keeps them near 1/(k+1)."""
    anchored = isolation_and_accuracy({**SKEWED, "rule": "learned_trust"})
    unanchored = isolation_and_accuracy({**SKEWED, "rule": "learned_trust(prior=0, reach=None)"})
    assert anchored[0] < 0.4 < 0.6 < unanchored[0]  # share of met partners trusted below 0.02
    assert anchored[1] > unanchored[1] + 0.08


def test_a_prior_scaled_by_the_classes_a_peer_lacks_keeps_two_class_peers_together():
    """With 2 classes per peer the held-out loss speaks for 2 of 10 classes: a fixed λ loses to it and
    the peers drift apart; λ·C/c keeps the partners' trust and most of consensus's accuracy."""
    shards = {**SKEWED, "partition": "shards(k=2)"}
    scaled = isolation_and_accuracy({**shards, "rule": "learned_trust"})
    fixed = isolation_and_accuracy({**shards, "rule": "learned_trust(per_class=false)"})
    assert scaled[0] < 0.2 < 0.3 < fixed[0]
    assert scaled[1] > fixed[1] + 0.2
