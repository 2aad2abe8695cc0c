"""One-Euro filter behaviour."""

import numpy as np
import pytest

from rain.pose.face_tracking import FaceLandmarkTracker
from rain.pose.dwpose import PoseDetection
from rain.pose.smoothing import OneEuroFilter


def test_first_sample_and_constant_signal_pass_unchanged():
    f = OneEuroFilter()
    x = np.random.default_rng(0).uniform(size=(68, 2))
    for _ in range(5):
        np.testing.assert_array_equal(f(x), x)


def test_step_is_smoothed_and_converges():
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0, rate=30.0)
    f(np.zeros(1))
    outs = [f(np.ones(1))[0] for _ in range(60)]
    assert 0 < outs[0] < 0.5 and all(a < b for a, b in zip(outs, outs[1:])) and outs[-1] > 0.99


def test_beta_reduces_lag_on_fast_motion():
    ramp = [np.array([0.02 * i]) for i in range(30)]
    slow, fast = OneEuroFilter(min_cutoff=0.5, beta=0.0), OneEuroFilter(min_cutoff=0.5, beta=20.0)
    lag_slow = [r[0] - slow(r)[0] for r in ramp][-1]
    lag_fast = [r[0] - fast(r)[0] for r in ramp][-1]
    assert 0 < lag_fast < lag_slow


def test_lower_cutoff_means_less_jitter():
    noise = np.random.default_rng(1).normal(0, 0.01, (200, 1)) + 0.5
    def spread(min_cutoff):
        f = OneEuroFilter(min_cutoff=min_cutoff, beta=0.0)
        return np.std([f(n)[0] for n in noise][20:])
    assert spread(0.3) < spread(3.0) < np.std(noise)


def test_invalid_points_pass_through_and_restart():
    f = OneEuroFilter(min_cutoff=0.5, beta=0.0)
    f(np.array([0.2, 0.2]))
    out = f(np.array([-1.0, 0.8]), valid=np.array([False, True]))
    assert out[0] == -1.0 and 0.2 < out[1] < 0.8
    out = f(np.array([0.9, 0.8]))
    assert out[0] == 0.9  # restarted: no history carried across the gap


def test_timestamps_and_reset():
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    f(np.zeros(1), timestamp=0.0)
    quick = f(np.ones(1), timestamp=0.01)[0]
    f.reset()
    f(np.zeros(1), timestamp=0.0)
    slow = f(np.ones(1), timestamp=1.0)[0]
    assert quick < slow
    with pytest.raises(ValueError):
        OneEuroFilter(min_cutoff=0)


def test_tracker_applies_the_filter_after_fill_in():
    def detection(x):
        kp, scores = np.zeros((134, 2)), np.zeros(134)
        kp[24:92] = x * 512
        scores[24:92] = 0.9
        return PoseDetection(kp, scores, np.array([0.0, 0, 10, 10]), np.zeros((0, 4)), (512, 512))

    tracker = FaceLandmarkTracker(smoothing=OneEuroFilter(min_cutoff=0.5, beta=0.0))
    first = tracker.update(detection(0.3))
    second = tracker.update(detection(0.6))
    assert np.allclose(first, 0.3) and np.all((second > 0.3) & (second < 0.6))
