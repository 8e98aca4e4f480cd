"""mope.progress: the time left and the text bar."""
from mope import progress
from mope.progress import TimeLeft, progress_text


def test_time_left_is_the_pace_so_far_times_what_remains(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress.time, "time", lambda: now[0])
    left = TimeLeft()
    assert left(0, 10) is None
    now[0] = 106.0
    assert left(3, 10) == 14.0  # 2 s an item, 7 to go
    assert left(10, 10) == 0.0


def test_progress_text_draws_a_bar_of_the_share_done():
    assert progress_text(0, 8) == "`" + "░" * 20 + "` 0/8"
    assert progress_text(8, 8, 0.0, label="Job x: ") == "`" + "█" * 20 + "` Job x: 8/8, about 0 s left"
    half = progress_text(5, 10, 12.4, width=10)
    assert half == "`█████░░░░░` 5/10, about 12 s left"
    assert progress_text(0, 0) == "`" + "░" * 20 + "` 0/0"  # nothing to do yet: an empty bar, no division by zero
