"""Spent privacy survives a restart: the accountant's history and each peer's stop, saved as JSON and
loaded back, give the very ε the peer had and the same run from there; every class of damaged or
hostile state is refused with PrivacyError, the accountant unchanged."""

import copy
import json

import pytest
import torch

from ppaia.privacy import PRIVACY, PeerAccountant, PrivacyError, PrivateTraining

COUNTS = torch.tensor([40, 64, 100, 17])
SOME = torch.tensor([True, False, True, True])  # who trains in every third round
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")


def training(mechanism: str = "dp_sgd(noise_multiplier=1.1)", budget: float | None = None) -> PrivateTraining:
    spec = PRIVACY.create(mechanism).model_copy(update={"budget": budget})
    return PrivateTraining(spec, COUNTS, batch_size=8, epochs=1, rounds=8, seed=0)


def counts_at(round_: int) -> torch.Tensor:
    """Each peer's training data: half of it from round 4 on (a second task: another sampling rate)."""
    return COUNTS if round_ < 4 else COUNTS // 2


def play(private: PrivateTraining, rounds) -> list[torch.Tensor]:
    """The engine's privacy steps for `rounds`: data of the round, who may train, what they spend."""
    epsilons = []
    for round_ in rounds:
        private.use_counts(counts_at(round_))
        trainers = SOME.clone() if round_ % 3 == 0 else torch.ones(4, dtype=torch.bool)
        private.spend(private.allowed(trainers, round_))
        epsilons.append(private.epsilon())
    return epsilons


def as_json(state: dict) -> dict:
    """The state as a checkpoint file gives it back."""
    return json.loads(json.dumps(state, allow_nan=False))


@pytest.mark.parametrize("mechanism", ["dp_sgd(noise_multiplier=1.1)", "update_dp(epsilon=4)"])
def test_a_restarted_peer_reports_the_epsilon_it_had_and_continues_as_if_never_stopped(mechanism):
    unbudgeted = play(training(mechanism), range(1, 9))
    budget = unbudgeted[-1].min().item()  # the peer that spends least never stops; the others do
    whole = training(mechanism, budget)
    expected = play(whole, range(1, 9))
    assert 0 < len(whole.stopped) < 4 and max(whole.stopped.values()) > 5  # some stop after the restart

    first = training(mechanism, budget)
    before = play(first, range(1, 6))[-1]
    restarted = training(mechanism, budget)
    restarted.use_counts(counts_at(5))
    restarted.load_state_dict(as_json(first.state_dict()))
    assert torch.equal(restarted.epsilon(), before)  # bit for bit
    assert restarted.stopped == first.stopped
    assert torch.equal(play(restarted, range(6, 9))[-1], expected[-1])
    assert restarted.stopped == whole.stopped
    assert restarted.state_dict() == whole.state_dict()


def test_the_accountant_state_is_opacus_style_history():
    private = training()
    play(private, range(1, 6))
    state = private.state_dict()
    assert set(state) == {"accountant", "stopped"} and state["stopped"] == [None] * 4
    accountant = state["accountant"]
    assert accountant["mechanism"] == "rdp" and accountant["delta"] == 1e-5
    # per peer: one (noise, rate, steps) entry per sampling rate it trained at, steps added up
    assert [len(entries) for entries in accountant["history"]] == [2, 2, 2, 2]
    (noise, rate, steps), _ = accountant["history"][0]
    assert noise == 1.1 and rate == 8 / 40 and steps == 3 * 40 // 8  # rounds 1 to 3, at 40 samples
    assert as_json(state) == json.loads(json.dumps(state))


def test_an_accountant_loaded_from_its_state_spends_on_from_it():
    accountant = PeerAccountant(3, 1e-5)
    noise, rate = (
        torch.tensor([0.8, 1.5, 4.0], dtype=torch.float64),
        torch.full((3,), 0.1, dtype=torch.float64),
    )
    accountant.spend(torch.tensor([0, 2]), noise, rate, torch.tensor([7, 3, 12]))
    restored = PeerAccountant(3, 1e-5)
    restored.load_state_dict(as_json(accountant.state_dict()))
    assert torch.equal(restored.epsilon(), accountant.epsilon())
    for each in (accountant, restored):
        each.spend(torch.tensor([0, 1]), noise, rate, torch.tensor([2, 5, 0]))
    assert torch.equal(restored.epsilon(), accountant.epsilon())
    assert restored.state_dict() == accountant.state_dict()


# ---------------------------------------------------------------------------------------------------
# damaged or hostile states


def good_state() -> dict:
    private = training()
    play(private, range(1, 6))
    return as_json(private.state_dict())


def entry(field: int, value):
    """Change field 0 (noise), 1 (rate) or 2 (steps) of peer 1's first history entry."""

    def change(state):
        state["accountant"]["history"][1][0][field] = value
        return state

    return change


def accountant_field(key, value):
    def change(state):
        if value is ...:
            del state["accountant"][key]
        else:
            state["accountant"][key] = value
        return state

    return change


def top(key, value):
    def change(state):
        if value is ...:
            del state[key]
        else:
            state[key] = value
        return state

    return change


def history(change_rows):
    def change(state):
        state["accountant"]["history"] = change_rows(state["accountant"]["history"])
        return state

    return change


def stopped(index, value):
    def change(state):
        state["stopped"][index] = value
        return state

    return change


BAD_STATES = {
    "not a map": lambda s: [s],
    "empty": lambda s: {},
    "extra key": top("extra", 1),
    "accountant missing": top("accountant", ...),
    "accountant a list": top("accountant", []),
    "stopped missing": top("stopped", ...),
    "stopped of fewer peers": top("stopped", [None] * 3),
    "stopped of more peers": top("stopped", [None] * 5),
    "stopped at round 0": stopped(0, 0),
    "stopped at a negative round": stopped(0, -3),
    "stopped at round 2^31": stopped(0, 2**31),
    "stopped as text": stopped(0, "3"),
    "stopped as a float": stopped(0, 3.0),
    "stopped as a bool": stopped(0, True),
    "mechanism missing": accountant_field("mechanism", ...),
    "mechanism prv": accountant_field("mechanism", "prv"),
    "accountant extra key": accountant_field("orders", [2, 3]),
    "delta of another run": accountant_field("delta", 2e-5),
    "delta zero": accountant_field("delta", 0.0),
    "delta one": accountant_field("delta", 1.0),
    "delta as text": accountant_field("delta", "1e-5"),
    "delta NaN": accountant_field("delta", float("nan")),
    "history missing": accountant_field("history", ...),
    "history not a list": accountant_field("history", {"0": []}),
    "history of fewer peers": history(lambda rows: rows[:3]),
    "history of more peers": history(lambda rows: [*rows, []]),
    "entry of two": history(lambda rows: [rows[0], [row[:2] for row in rows[1]], *rows[2:]]),
    "entry of four": history(lambda rows: [rows[0], [[*row, 1] for row in rows[1]], *rows[2:]]),
    "entry a map": history(lambda rows: [rows[0], [{"noise": 1.1}], *rows[2:]]),
    "a (noise, rate) twice": history(lambda rows: [rows[0], [rows[1][0], rows[1][0]], *rows[2:]]),
    "noise negative": entry(0, -1.0),
    "noise below what is accounted for": entry(0, 1e-9),
    "noise above what is accounted for": entry(0, 1e4),
    "noise NaN": entry(0, float("nan")),
    "noise inf": entry(0, float("inf")),
    "noise as text": entry(0, "1.1"),
    "noise a bool": entry(0, True),
    "noise null": entry(0, None),
    "rate zero": entry(1, 0.0),
    "rate negative": entry(1, -0.2),
    "rate above one": entry(1, 1.5),
    "rate NaN": entry(1, float("nan")),
    "steps zero": entry(2, 0),
    "steps negative": entry(2, -5),
    "steps a float": entry(2, 5.0),
    "steps a bool": entry(2, True),
    "steps as text": entry(2, "5"),
    "steps beyond 2^53": entry(2, 2**53 + 1),
    "steps beyond 64 bits": entry(2, 2**70),
}


@pytest.mark.parametrize("name", list(BAD_STATES))
def test_a_damaged_privacy_state_is_refused_and_nothing_changes(name):
    private = training(budget=50.0)
    play(private, range(1, 3))
    private.stopped[3] = 2  # as if peer 3 had stopped
    before, spent = copy.deepcopy(private.state_dict()), private.epsilon()
    with pytest.raises(PrivacyError):
        private.load_state_dict(BAD_STATES[name](good_state()))
    assert private.state_dict() == before and torch.equal(private.epsilon(), spent)
