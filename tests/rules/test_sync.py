"""Synchronisation schemes: hand-worked BSP, SSP and BAP schedules, staleness, validation, registry."""

import pydantic
import pytest

from ppaia.rules.sync import SYNC_SCHEMES, Contribution, Release

STRAGGLER = [1.0, 2.0, 5.0]  # trainer 2 is a straggler


def run(spec, compute, releases):
    """The schedule as (time, ((trainer, base version), ...)) per release, checking versions are 1, 2, ..."""
    schedule = SYNC_SCHEMES.create(spec).schedule(compute, releases)
    assert [r.version for r in schedule] == list(range(1, releases + 1))
    return [(r.time, tuple((c.trainer, c.base_version) for c in r.contributions)) for r in schedule]


def uploads(spec, compute, releases):
    return [r.uploads for r in SYNC_SCHEMES.create(spec).schedule(compute, releases)]


def test_bsp_releases_at_every_barrier_with_stale_straggler():
    # trainers 0, 1 finish every period; trainer 2 finishes version 0 at t=5, version 3 at t=11
    assert run("bsp(2.0)", STRAGGLER, 6) == [
        (2.0, ((0, 0), (1, 0))),
        (4.0, ((0, 1), (1, 1))),
        (6.0, ((0, 2), (1, 2), (2, 0))),
        (8.0, ((0, 3), (1, 3))),
        (10.0, ((0, 4), (1, 4))),
        (12.0, ((0, 5), (1, 5), (2, 3))),
    ]
    assert uploads("bsp(2.0)", STRAGGLER, 6) == [2, 2, 3, 2, 2, 3]


def test_bsp_barrier_without_submissions_keeps_the_version():
    # barriers 2, 4 (and 8, 10) pass empty: no version is created
    assert run("bsp(period=2)", [5.0], 2) == [(6.0, ((0, 0),)), (12.0, ((0, 1),))]


def test_ssp_extends_missing_barriers_once():
    # barrier 3: trainer 2 missing → +3·1/3 → release at 4; next barrier 7 is complete; barrier 10 → 11
    assert run("ssp(3.0)", STRAGGLER, 4) == [
        (4.0, ((0, 0), (1, 0))),
        (7.0, ((0, 1), (1, 1), (2, 0))),
        (11.0, ((0, 2), (1, 2))),
        (14.0, ((0, 3), (1, 3), (2, 2))),
    ]


def test_ssp_extension_lets_a_straggler_in_where_bsp_makes_it_stale():
    # barrier 3: trainer 1 (done at 3.5) missing → +3·1/2 → 4.5; barrier 7.5 → 9 (trainer 1 done at 8)
    assert run("ssp(3.0)", [1.0, 3.5], 2) == [(4.5, ((0, 0), (1, 0))), (9.0, ((0, 1), (1, 1)))]
    assert run("bsp(3.0)", [1.0, 3.5], 2) == [(3.0, ((0, 0),)), (6.0, ((0, 1), (1, 0)))]


def test_ssp_extension_scales_with_missing_trainers():
    assert run("ssp(3.0)", [1.0, 4.0, 4.0], 1) == [(5.0, ((0, 0), (1, 0), (2, 0)))]  # 3 + 3·2/3


def test_ssp_empty_extension_passes_and_next_barrier_follows_it():
    # 2 → 4 (empty), 6 → 8 (empty), 10: submitted; then 12 → 14, 16 → 18, 20
    assert run("ssp(2.0)", [10.0], 2) == [(10.0, ((0, 0),)), (20.0, ((0, 1),))]


def test_bap_releases_when_the_slowest_trainer_submits():
    expected = [(5.0, ((0, 0), (1, 0), (2, 0))), (10.0, ((0, 1), (1, 1), (2, 1)))]
    for quota in (1, 2, 3):
        assert run(f"bap({quota})", STRAGGLER, 2) == expected


def test_bap_quota_caps_resubmissions():
    assert uploads("bap(1)", STRAGGLER, 2) == [3, 3]
    assert uploads("bap(2)", STRAGGLER, 2) == [5, 5]  # trainers 0, 1 submit twice each
    # quota 3: trainer 1 is mid-retrain at t=5 and submits a stale update at 6 before three fresh ones
    assert uploads("bap(3)", STRAGGLER, 3) == [6, 7, 6]
    assert uploads("bap(100)", STRAGGLER, 1) == [5 + 2 + 1]  # trainer 0 submits at t = 1, ..., 5


def test_bap_in_flight_resubmission_arrives_stale():
    # quota 2: trainer 0 retrains version 0 from t=2 to 4, past the release at 2.5; its next update
    # (version 1, done at 6) comes after trainer 1's at 5, so version 2 uses the stale one
    schedule = SYNC_SCHEMES.create("bap(2)").schedule([2.0, 2.5], 2)
    assert [r.staleness for r in schedule] == [{0: 0, 1: 0}, {0: 1, 1: 0}]
    assert run("bap(1)", [2.0, 2.5], 2) == [(2.5, ((0, 0), (1, 0))), (5.0, ((0, 1), (1, 1)))]


def test_equal_compute_times_give_the_same_contributions_everywhere():
    expected = [tuple((i, v) for i in range(3)) for v in range(4)]
    for spec in ("bsp(3.0)", "ssp(3.0)", "bap(1)", "bap(2)"):
        assert [c for _, c in run(spec, [2.0] * 3, 4)] == expected
    assert run("bsp(2.0)", [2.0] * 3, 4) == run("ssp(2.0)", [2.0] * 3, 4) == run("bap(2)", [2.0] * 3, 4)


def test_staleness():
    schedule = SYNC_SCHEMES.create("bsp(2.0)").schedule(STRAGGLER, 6)
    assert schedule[2].staleness == {0: 0, 1: 0, 2: 2}
    assert schedule[5].staleness == {0: 0, 1: 0, 2: 2}
    assert SYNC_SCHEMES.create("ssp(3.0)").schedule(STRAGGLER, 2)[1].staleness == {0: 0, 1: 0, 2: 1}
    release = Release(5, 9.0, (Contribution(0, 4), Contribution(3, 1)), 2)
    assert release.staleness == {0: 0, 3: 3}


def test_float_periods_do_not_reorder_simultaneous_events():
    # 0.1 + 0.1 + 0.1 != 0.3: events within TIE still count as simultaneous
    times = [r.time for r in SYNC_SCHEMES.create("bsp(0.1)").schedule([0.1, 0.3], 10)]
    assert times == pytest.approx([0.1 * k for k in range(1, 11)])
    assert all(
        len(r.contributions) == 2 for r in SYNC_SCHEMES.create("bsp(0.1)").schedule([0.1, 0.3], 10)[2::3]
    )


@pytest.mark.parametrize(
    ("compute", "releases", "message"),
    [
        ([], 1, "at least one trainer"),
        ([1.0, 0.0], 1, "trainer 1"),
        ([-1.0], 1, "trainer 0"),
        ([float("nan")], 1, "finite"),
        ([float("inf")], 1, "finite"),
        ([1.0], 0, "releases"),
        ([1.0], 1.5, "releases"),
        ([1.0], True, "releases"),
    ],
)
def test_invalid_inputs_raise(compute, releases, message):
    for name in SYNC_SCHEMES.names():
        with pytest.raises(ValueError, match=message):
            SYNC_SCHEMES.create(name).schedule(compute, releases)


@pytest.mark.parametrize(
    "spec", ["bsp(0)", "ssp(-1.0)", {"name": "bsp", "period": float("inf")}, "bap(0)", "bap(1.5)", "bsp(q=1)"]
)
def test_invalid_options_raise(spec):
    with pytest.raises(pydantic.ValidationError):
        SYNC_SCHEMES.create(spec)


def test_registry():
    assert SYNC_SCHEMES.names() == ["bap", "bsp", "ssp"]
    for _, cls in SYNC_SCHEMES:
        assert cls.__doc__ and "\n" not in cls.__doc__.strip()
    assert SYNC_SCHEMES.create("bap").spec() == {"name": "bap", "quota": 1}
    assert SYNC_SCHEMES.create("ssp(2.5)").label() == "ssp(period=2.5)"


@pytest.mark.parametrize("scheme", ["bsp(period=0.001)", "ssp(period=0.001)", "bsp(period=1.0)"])
def test_long_idle_stretches_are_skipped_not_stepped_through(scheme):
    (release,) = SYNC_SCHEMES.create(scheme).schedule([1e4], 1)  # 10⁷ empty barriers at period 0.001
    assert release.contributions == (Contribution(0, 0),) and 1e4 <= release.time <= 1e4 + 0.003
    (far,) = SYNC_SCHEMES.create("bsp(period=1.0)").schedule([1e17], 1)  # past 2⁵³ a +1 s step is lost
    assert far.time == pytest.approx(1e17)
