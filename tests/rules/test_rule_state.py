"""Rule state survives a restart: state_dict / load_state_dict (whole matrix, simulator) and peer_state /
load_peer_state (one row keyed by peer id, networked peer) continue exactly where a run was, and every
class of damaged or hostile state is refused with RuleStateError, leaving the rule as it was."""

import functools
import hashlib
import json
import re

import numpy as np
import pytest
import torch

import ppaia
from ppaia import codec
from ppaia.experiment.local import LocalPhase, round_context
from ppaia.learning import MODELS, LocalData
from ppaia.learning.holdout import PeerLearning
from ppaia.rules import RULES, RoundContext, RuleStateError, apply_plan, apply_step_per_peer
from ppaia.simulation.report import densify
from ppaia.topology import MIXINGS, TOPOLOGIES, build_graph

N = 8
HELD = 16  # held-out samples per peer
IDS = [hashlib.sha256(bytes([i])).hexdigest()[:40] for i in range(N)]  # peer ids, as the network's
TRUST_SPECS = [
    "learned_trust",
    "learned_trust(partners=2, steps=4, prior=1.0)",
    "learned_trust(faithful=true)",
]
# the per-peer form learns each row on its own: fewer steps keep its rounds quick
PER_PEER_SPECS = ["learned_trust(steps=3)", "learned_trust(faithful=true, steps=3)"]


def context(round_: int, topology: str = "complete") -> RoundContext:
    """Round `round_` of N peers whose held-out labels are [x₀ > 0] + 2·[x₁ > 0] (logistic model, D = 24)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N * HELD, 5, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    model = MODELS.create("logistic").build((5,), 4)
    holdout = LocalData.from_parts(x, y, [np.arange(i * HELD, (i + 1) * HELD) for i in range(N)])
    graph = build_graph(TOPOLOGIES.create(topology), N, seed=0)
    randomness = torch.Generator().manual_seed(round_)
    return RoundContext(
        round_,
        graph,
        torch.full((N,), HELD),
        MIXINGS.create("metropolis"),
        0.8,
        randomness,
        PeerLearning(model, holdout),
    )


def start(seed: int = 1) -> torch.Tensor:
    return torch.randn(N, 24, generator=torch.Generator().manual_seed(seed))


def trained(params: torch.Tensor, round_: int, trainers: torch.Tensor | None = None) -> torch.Tensor:
    """A deterministic stand-in for local training: each trainer moves by its own round's step."""
    step = torch.randn(params.shape, generator=torch.Generator().manual_seed(100 + round_)) * 0.3
    mask = torch.ones(N, dtype=torch.bool) if trainers is None else trainers
    return params + step * mask.unsqueeze(1)


def batched_rounds(rule, params: torch.Tensor, rounds) -> torch.Tensor:
    for round_ in rounds:
        ctx = context(round_)
        plan = rule.plan(ctx)
        params = rule.prepare(params, plan, ctx)
        params = apply_plan(rule, plan, trained(params, round_, plan.trainers), ctx)
    return params


def per_peer_rounds(rule, params: torch.Tensor, rounds) -> torch.Tensor:
    models = list(params)
    for round_ in rounds:
        ctx = context(round_)
        models = list(trained(torch.stack(models), round_))
        for step in rule.plan(ctx).steps:
            models = apply_step_per_peer(rule, step, models, ctx)
    return torch.stack(models)


def fresh(spec: str):
    rule = RULES.create(spec)
    rule.reset(N)
    return rule


def through_safetensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state as a checkpoint file would give it back (safetensors bytes, never pickle)."""
    return codec.decode(codec.encode(state), {name: (t.shape, t.dtype) for name, t in state.items()})


def identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a, b)


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(identical(a[name], b[name]) for name in a)


# ---------------------------------------------------------------------------------------------------
# round trips: a restarted rule continues exactly as one that never stopped


@pytest.mark.parametrize(
    "spec", [*TRUST_SPECS, "flobc(stragglers=1, slowdown=2)", "flobc(sync='ssp', stragglers=2)"]
)
def test_a_rule_loaded_from_its_state_continues_as_the_uninterrupted_run(spec):
    whole = fresh(spec)
    expected = batched_rounds(whole, start(), range(1, 7))

    first = fresh(spec)
    halfway = batched_rounds(first, start(), range(1, 4))
    state = through_safetensors(first.state_dict())
    restarted = fresh(spec)
    restarted.load_state_dict(state)
    assert same_state(restarted.state_dict(), state)
    assert torch.equal(batched_rounds(restarted, halfway, range(4, 7)), expected)
    assert same_state(restarted.state_dict(), whole.state_dict())


def test_learned_trust_state_is_the_trust_between_peers_that_met():
    rule = fresh("learned_trust(partners=2)")
    batched_rounds(rule, start(), range(1, 4))
    state = rule.state_dict()
    assert state["trust"].dtype == torch.float64 and state["met"].dtype == torch.bool
    met = state["met"]
    assert met.any() and not met.all() and not met.diagonal().any()
    assert (state["trust"][~met] == 0).all() and (
        (state["trust"][met] >= 0) & (state["trust"][met] <= 1)
    ).all()
    state["trust"][met] = 0.5  # a copy: the rule's own trust does not change
    assert not torch.equal(rule.state_dict()["trust"], state["trust"])


def test_flobc_state_holds_scores_and_the_released_models_stale_updates_need():
    rule = fresh("flobc(stragglers=1, slowdown=2)")
    batched_rounds(rule, start(), range(1, 4))
    state = rule.state_dict()
    assert sorted(state) == ["score", "version.0", "version.1", "version.2"]
    assert (state["score"][-3:] == 0).all() and state["score"][:5].sum().item() == pytest.approx(1)
    # without the released models, a stale update's base is unknown: the state is what lets it go on
    scores_only = fresh("flobc(stragglers=1, slowdown=2)")
    scores_only.load_state_dict({"score": state["score"]})
    with pytest.raises(KeyError):
        batched_rounds(scores_only, start(), range(4, 6))


@pytest.mark.parametrize("spec", PER_PEER_SPECS)
def test_every_peer_restarted_from_its_id_keyed_row_continues_as_the_uninterrupted_run(spec):
    whole = fresh(spec)
    expected = per_peer_rounds(whole, start(), range(1, 5))

    first = fresh(spec)
    halfway = per_peer_rounds(first, start(), range(1, 3))
    rows = [first.peer_state(peer, IDS) for peer in range(N)]  # what each peer checkpoints
    assert all(set(row) <= set(IDS) - {IDS[peer]} for peer, row in enumerate(rows))
    assert sum(map(len, rows)) == int(first.state_dict()["met"].sum())
    restarted = fresh(spec)
    for peer in range(N):  # each networked peer plays only its own row
        restarted.load_peer_state(peer, IDS, rows[peer])
    assert same_state(restarted.state_dict(), first.state_dict())
    assert torch.equal(per_peer_rounds(restarted, halfway, range(3, 5)), expected)


def test_a_peer_row_follows_its_partners_to_their_new_positions():
    rule = fresh("learned_trust(partners=3)")
    batched_rounds(rule, start(), range(1, 4))
    order = torch.randperm(N, generator=torch.Generator().manual_seed(7))  # position j now holds order[j]
    moved = [IDS[k] for k in order.tolist()]
    restarted = fresh("learned_trust(partners=3)")
    for peer in range(N):
        now = moved.index(IDS[peer])
        restarted.load_peer_state(now, moved, rule.peer_state(peer, IDS))
        assert restarted.peer_state(now, moved) == rule.peer_state(peer, IDS)
    before, after = rule.state_dict(), restarted.state_dict()
    for name in before:  # the same matrix, rows and columns permuted
        assert torch.equal(after[name], before[name][order][:, order])


def test_partners_with_no_position_now_are_kept_aside_until_placed_again():
    rule = fresh("learned_trust(partners=3)")
    batched_rounds(rule, start(), range(1, 4))
    row = rule.peer_state(0, IDS)
    away = next(iter(row))  # a partner that is not in the swarm at the restart
    ids_now = [None if peer_id == away else peer_id for peer_id in IDS]
    restarted = fresh("learned_trust(partners=3)")
    restarted.load_peer_state(0, ids_now, row)
    assert restarted.peer_state(0, ids_now) == row  # kept: later checkpoints still hold it
    assert int(restarted.state_dict()["met"][0].sum()) == len(row) - 1
    restarted.load_peer_state(0, IDS, restarted.peer_state(0, ids_now))  # it is back: place it again
    assert torch.equal(restarted.state_dict()["trust"][0], rule.state_dict()["trust"][0])
    assert restarted.peer_state(0, IDS) == row


def test_a_partner_met_at_a_position_without_a_known_id_is_left_out_of_the_row():
    rule = fresh("learned_trust(partners=3)")
    batched_rounds(rule, start(), range(1, 4))
    row = rule.peer_state(0, IDS)
    partner = IDS.index(next(iter(row)))
    unknown = [None if j == partner else peer_id for j, peer_id in enumerate(IDS)]
    assert rule.peer_state(0, unknown) == {k: v for k, v in row.items() if k != IDS[partner]}


def test_rules_that_learn_nothing_save_and_accept_only_an_empty_state():
    stateless = [name for name, _ in RULES if name not in ("learned_trust", "flobc")]
    assert len(stateless) >= 8
    for name in stateless:
        rule = fresh(name) if name != "centralized" else RULES.create(name)
        assert rule.state_dict() == {} and rule.peer_state(0, IDS) == {}
        rule.load_state_dict({})
        rule.load_peer_state(0, IDS, {})
        with pytest.raises(RuleStateError, match="learns no state"):
            rule.load_state_dict({"trust": torch.zeros(N, N)})
        with pytest.raises(RuleStateError, match="learns no state"):
            rule.load_peer_state(0, IDS, {IDS[1]: 0.5})


def test_flobc_has_no_per_peer_state():
    with pytest.raises(RuleStateError, match="committee"):
        fresh("flobc").peer_state(0, IDS)


# ---------------------------------------------------------------------------------------------------
# damaged or hostile states: refused with RuleStateError, the rule unchanged


@functools.cache
def learned(spec: str, rounds: int = 2) -> dict[str, torch.Tensor]:
    """The state of rule `spec` after `rounds` batched rounds (computed once; callers get copies)."""
    rule = fresh(spec)
    batched_rounds(rule, start(), range(1, rounds + 1))
    return rule.state_dict()


def trust_state() -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in learned("learned_trust(partners=3)").items()}


def first_met(state) -> tuple[int, int]:
    i, j = state["met"].nonzero()[0].tolist()
    return i, j


def unmet(state) -> tuple[int, int]:
    off = ~state["met"] & ~torch.eye(N, dtype=torch.bool)
    i, j = off.nonzero()[0].tolist()
    return i, j


def with_value(where, value):
    def change(state):
        state["trust"][where(state)] = value
        return state

    return change


def meeting_oneself(state):
    state["met"][0, 0] = True
    return state


BAD_TRUST_STATES = {
    "empty": lambda s: {},
    "trust missing": lambda s: {"met": s["met"]},
    "met missing": lambda s: {"trust": s["trust"]},
    "extra entry": lambda s: s | {"extra": torch.zeros(1)},
    "trust float32": lambda s: s | {"trust": s["trust"].float()},
    "trust int64": lambda s: s | {"trust": s["trust"].long()},
    "met uint8": lambda s: s | {"met": s["met"].to(torch.uint8)},
    "trust a list": lambda s: s | {"trust": s["trust"].tolist()},
    "trust a numpy array": lambda s: s | {"trust": s["trust"].numpy()},
    "trust sparse": lambda s: s | {"trust": s["trust"].to_sparse()},
    "trust 1-d": lambda s: s | {"trust": s["trust"].flatten()},
    "trust 3-d": lambda s: s | {"trust": s["trust"].unsqueeze(0)},
    "not square": lambda s: {"trust": s["trust"][:, :-1], "met": s["met"][:, :-1]},
    "met another shape": lambda s: s | {"met": s["met"][:-1, :-1]},
    "another number of peers": lambda s: {"trust": s["trust"][:-1, :-1], "met": s["met"][:-1, :-1]},
    "NaN where met": with_value(first_met, float("nan")),
    "inf where met": with_value(first_met, float("inf")),
    "negative where met": with_value(first_met, -0.25),
    "above one where met": with_value(first_met, 1.5),
    "trust where never met": with_value(unmet, 0.5),
    "NaN where never met": with_value(unmet, float("nan")),
    "trust in oneself": meeting_oneself,
}


@pytest.mark.parametrize("name", list(BAD_TRUST_STATES))
def test_a_damaged_trust_state_is_refused_and_the_rule_kept(name):
    rule = fresh("learned_trust(partners=3)")
    rule.load_state_dict(learned("learned_trust(partners=3)", rounds=1))
    before = rule.state_dict()
    bad = BAD_TRUST_STATES[name](trust_state())
    with pytest.raises(RuleStateError, match="learned_trust"):
        rule.load_state_dict(bad)
    assert same_state(rule.state_dict(), before)


def test_faithful_trust_may_be_negative_or_above_one_but_not_nan():
    rule = fresh("learned_trust(faithful=true)")
    state = trust_state()
    i, j = first_met(state)
    state["trust"][i, j] = -0.5
    rule.load_state_dict(state)
    assert rule.peer_state(i, IDS)[IDS[j]] == -0.5
    state["trust"][i, j] = float("nan")
    with pytest.raises(RuleStateError, match="not finite"):
        rule.load_state_dict(state)


ROW = {IDS[1]: 0.25, IDS[2]: 0.0, IDS[5]: 1.0}
BAD_ROWS = {
    "a list": list(ROW.items()),
    "a key not a string": {1: 0.25},
    "a value as text": ROW | {IDS[3]: "0.5"},
    "a value a bool": ROW | {IDS[3]: True},
    "a value null": ROW | {IDS[3]: None},
    "a value a tensor": ROW | {IDS[3]: torch.tensor(0.5)},
    "NaN": ROW | {IDS[3]: float("nan")},
    "inf": ROW | {IDS[3]: float("inf")},
    "negative": ROW | {IDS[3]: -1e-9},
    "above one": ROW | {IDS[3]: 1.0000001},
    "huge": ROW | {"f" * 40: 1e308},
    "trust in oneself": ROW | {IDS[0]: 0.5},
}


@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_a_damaged_peer_row_is_refused_and_the_rule_kept(name):
    rule = fresh("learned_trust")
    rule.load_peer_state(0, IDS, ROW)
    with pytest.raises(RuleStateError, match="learned_trust"):
        rule.load_peer_state(0, IDS, BAD_ROWS[name])
    assert rule.peer_state(0, IDS) == ROW


@pytest.mark.parametrize(
    ("peer", "ids"),
    [
        (0, [IDS[0], IDS[1], IDS[1]]),  # an id twice
        (N, IDS),  # not a position
        (-1, IDS),
        (1, [IDS[0], None, IDS[2]]),  # its own id unknown
    ],
    ids=["repeated id", "peer beyond the positions", "negative peer", "own id unknown"],
)
def test_positions_that_cannot_key_a_row_are_refused(peer, ids):
    rule = fresh("learned_trust")
    with pytest.raises(RuleStateError):
        rule.load_peer_state(peer, ids, {})
    with pytest.raises(RuleStateError):
        rule.peer_state(peer, ids)


def test_a_row_cannot_be_keyed_with_fewer_ids_than_the_positions_it_met():
    rule = fresh("learned_trust")
    rule.load_peer_state(0, IDS, ROW)
    with pytest.raises(RuleStateError, match="beyond"):
        rule.peer_state(0, IDS[:4])


def flobc_state() -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in learned("flobc(stragglers=1, slowdown=2)").items()}


def with_score(peer, value):
    def change(state):
        state["score"][peer] = value
        return state

    return change


BAD_FLOBC_STATES = {
    "empty": lambda s: {},
    "score missing": lambda s: {k: v for k, v in s.items() if k != "score"},
    "unknown entry": lambda s: s | {"versions.3": s["version.0"]},
    "a version not a number": lambda s: s | {"version.x": s["version.0"]},
    "a version with a sign": lambda s: s | {"version.-1": s["version.0"]},
    "a version with leading zeros": lambda s: s | {"version.01": s["version.0"]},
    "score float32": lambda s: s | {"score": s["score"].float()},
    "score 2-d": lambda s: s | {"score": s["score"].unsqueeze(0)},
    "scores of another number of peers": lambda s: s | {"score": s["score"][1:]},
    "a trainer's score NaN": with_score(0, float("nan")),
    "a trainer's score negative": with_score(0, -0.1),
    "a validator's score": with_score(-1, 0.1),
    "a validator's score NaN": with_score(-1, float("nan")),
    "scores not summing to one": lambda s: s | {"score": s["score"] * 2},
    "a model with NaN": lambda s: s | {"version.0": s["version.0"].clone().fill_(float("nan"))},
    "a model of another size": lambda s: s | {"version.1": s["version.1"][:-1]},
    "a model of integers": lambda s: s | {"version.1": s["version.1"].long()},
    "a model of another dtype": lambda s: s | {"version.1": s["version.1"].double()},
    "a model not a tensor": lambda s: s | {"version.1": s["version.1"].tolist()},
}


@pytest.mark.parametrize("name", list(BAD_FLOBC_STATES))
def test_a_damaged_flobc_state_is_refused_and_the_rule_kept(name):
    rule = fresh("flobc(stragglers=1, slowdown=2)")
    rule.load_state_dict(learned("flobc(stragglers=1, slowdown=2)", rounds=1))
    before = rule.state_dict()
    bad = BAD_FLOBC_STATES[name](flobc_state())
    with pytest.raises(RuleStateError, match="flobc"):
        rule.load_state_dict(bad)
    assert same_state(rule.state_dict(), before)


# ---------------------------------------------------------------------------------------------------
# in the simulator: stopped after round 2 and restarted from the saved states, as the whole run

STOP = re.compile(r"peer (\d+) stops training at round (\d+)")
RESUMED = {
    "peers": 6,
    "rounds": 4,
    "dataset": "synthetic(samples=240)",
    "model": "logistic",
    "topology": "complete",
    "holdout": 0.25,
    "batch_size": 8,
    "seed": 3,
}
# learned trust refuses DP (it fits trust on raw held-out records); the accountant is resumed with others
RESUMED_CASES = {
    "learned trust": {"rule": "learned_trust(partners=2, steps=3)"},
    "flobc with stragglers": {"rule": "flobc(validators=2, stragglers=1, slowdown=2)"},
    # with budgets some peers reach after the restart (in rounds 3 and 4), so only the loaded ε stops them
    "gossip with dp_sgd": {"rule": "gossip", "privacy": "dp_sgd(noise_multiplier=1.0, budget=8)"},
    "fedavg with update_dp": {"rule": "fedavg(fraction=0.5)", "privacy": "update_dp(epsilon=2, budget=2.6)"},
}


def simulated_rounds(sim, params, rounds, state=None):
    """The engine's rounds `rounds` from `params`, its rule and accountant loaded from `state` if given;
    returns the parameters, the rule's state and the privacy state (None without privacy) after them."""
    sim.rule.reset(sim.n_peers)
    phase = LocalPhase(sim.setup, sim.train)
    if state is not None:
        rule_state, privacy_state = state
        sim.rule.load_state_dict(through_safetensors(rule_state))
        if phase.privacy is not None:
            phase.privacy.load_state_dict(json.loads(json.dumps(privacy_state)))
    for round_ in rounds:
        phase.enter(round_)
        ctx = round_context(sim.setup, round_)
        plan = sim.rule.plan(ctx)
        params = sim.rule.prepare(params, plan, ctx)
        params, held = phase.train(params, round_, phase.trainers(plan.trainers, round_))
        params = sim.cooperate(plan, phase.send(params, held, round_), ctx)
    privacy = phase.privacy
    return params, (sim.rule.state_dict(), None if privacy is None else privacy.state_dict()), privacy


@pytest.mark.parametrize("case", list(RESUMED_CASES))
def test_a_simulation_restarted_from_its_rule_and_privacy_state_ends_as_the_uninterrupted_run(case):
    config = ppaia.ExperimentConfig.model_validate(RESUMED | RESUMED_CASES[case])
    whole = ppaia.Simulation(config).run()

    first = ppaia.Simulation(config)
    params, state, _ = simulated_rounds(first, first.setup.params.clone(), range(1, 3))
    second = ppaia.Simulation(config)  # a new process: set up afresh, then the saved states loaded
    params, (rule_state, _), privacy = simulated_rounds(second, params, range(3, 5), state)

    assert torch.equal(params, whole.params)
    if "trust" in whole.snapshots:
        trust = densify(whole.snapshots["trust"][-1][1])
        assert rule_state["met"].any() and torch.equal(rule_state["met"], trust.isfinite())
        assert torch.equal(rule_state["trust"], trust.nan_to_num(0.0))
    if "score" in whole.snapshots:
        assert torch.equal(rule_state["score"], whole.snapshots["score"][-1][1].nan_to_num(0.0))
    if privacy is not None:
        assert torch.equal(privacy.epsilon(), whole.snapshots["epsilon"][-1][1])
        stops = {int(peer): int(round_) for peer, round_ in STOP.findall(" ".join(whole.events))}
        assert privacy.stopped == stops and stops and min(stops.values()) >= 3
