"""The divergence guard on its own: what stops a run, what does not, and which weights count as good."""

from hypothesis import given, settings
from hypothesis import strategies as st

from xlm.recipes.divergence import DivergenceGuard


def _guard(**overrides) -> DivergenceGuard:
    return DivergenceGuard(**{"window": 50, "factor": 3.0, "min_loss": 0.5, "patience": 5, **overrides})


def _run(guard: DivergenceGuard, losses: list[float]) -> int | None:
    """The step at which the guard stops the run, or None."""
    for step, loss in enumerate(losses, 1):
        if guard.check(step, loss) is not None:
            return step
    return None


def test_a_lasting_rise_stops_the_run_and_the_good_weights_predate_it():
    guard = _guard()
    losses = [3.2, 3.0, 3.1, 2.9, 3.0, 3.1, 4.0, 5.5, 12.0, 15.0, 20.0, 25.0]
    assert _run(guard, losses) == 11  # the median of the last 5 (4, 5.5, 12, 15, 20) is above 3 x 3.0
    assert guard.good_step == 6  # the weights of step 6 gave 4.0 (within sqrt(3) x 3.0); those of step 7 gave 5.5


def test_one_heavy_batch_or_noise_near_zero_does_not():
    spikes = [3.0] * 30
    spikes[10] = spikes[20] = 40.0  # MDLM's importance weights give such batches now and then
    assert _run(_guard(), spikes) is None
    near_zero = [0.001, 0.01, 0.004, 0.2, 0.3, 0.25, 0.002, 0.001]  # far above the lowest median, below the floor
    assert _run(_guard(), near_zero) is None


def test_window_zero_turns_it_off():
    assert _run(_guard(window=0), [1.0, 1e6, 1e9, 1e12, 1e15, 1e18]) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 20.0), min_size=1, max_size=80))
def test_a_loss_that_never_rises_never_stops_a_run(losses):
    guard = _guard()
    assert _run(guard, sorted(losses, reverse=True)) is None
    assert guard.good_step == len(losses) - 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1e4), min_size=2, max_size=60), st.integers(1, 59))
def test_resuming_from_its_state_judges_alike(losses, cut):
    cut = min(cut, len(losses) - 1)
    straight = _guard()
    stopped = _run(straight, losses)
    first = _guard()
    if _run(first, losses[:cut]) is not None:
        return
    resumed = _guard()
    resumed.load_state_dict(first.state_dict())
    later = next((step for step, loss in enumerate(losses[cut:], cut + 1) if resumed.check(step, loss) is not None),
                 None)
    assert later == stopped and resumed.good_step == straight.good_step
