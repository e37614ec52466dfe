"""Progress of long steps: an estimate before a long step runs on, a line with the wall time after."""

from vaelab import progress


def test_a_long_step_says_how_long_before_it_runs_on(monkeypatch):
    lines = []
    clock = iter([0.0, 40.0, 400.0])  # start, after the first of 10 chunks, the end
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    with progress.step("IWAE_5000", 10, log=lines.append, bar=False) as advance:
        advance(1)
    assert lines == ["IWAE_5000: about 6.7 min (10 images; projected from the first 1)",
                     "IWAE_5000: 10 images in 6.7 min"]


def test_a_short_step_only_reports_its_time(monkeypatch):
    lines = []
    clock = iter([0.0, 1.0, 2.0, 3.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    with progress.step("exact NLL", 4, log=lines.append, bar=False) as advance:
        advance(2)
        advance(2)
    assert lines == ["exact NLL: 4 images in 3.0 s"]


def test_format_seconds():
    assert [progress.format_seconds(s) for s in (8.14, 400, 7200)] == ["8.1 s", "6.7 min", "2.0 h"]
