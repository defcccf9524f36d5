import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnscribe.types import SAMPLE_RATE
from turnscribe.windows import WindowConfigError, plan_windows


def test_short_audio_is_one_window():
    assert [(w.start, w.end) for w in plan_windows(30 * SAMPLE_RATE, window_s=30, overlap_s=2)] == [(0.0, 30.0)]
    assert [(w.start, w.end) for w in plan_windows(SAMPLE_RATE // 5)] == [(0.0, 0.2)]
    assert plan_windows(0) == []


@pytest.mark.parametrize(
    ("window", "overlap"), [(31, 2), (0, 0), (28, 14), (28, -1), (0.00001, 0), (float("nan"), 0), (28, float("nan"))]
)
def test_invalid_windows_are_refused(window, overlap):
    with pytest.raises(WindowConfigError):
        plan_windows(100 * SAMPLE_RATE, window, overlap)


@given(st.integers(1, 3 * 3600 * SAMPLE_RATE), st.sampled_from([(28.0, 2.0), (30.0, 5.0), (10.0, 0.0), (20.0, 1.5)]))
def test_windows_cover_the_audio_with_the_given_overlap(n, config):
    window_s, overlap_s = config
    spans = plan_windows(n, window_s, overlap_s)
    assert spans[0].start_sample == 0 and spans[-1].end_sample == n
    assert all(0 < s.duration <= window_s for s in spans)
    for a, b in zip(spans, spans[1:]):
        assert a.end_sample - b.start_sample == round(overlap_s * SAMPLE_RATE)
    assert [s.index for s in spans] == list(range(len(spans)))
