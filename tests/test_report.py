"""The report: the setup states what was run, the HTML is self-contained."""

from __future__ import annotations

import base64
import re

from records import record
from vaelab import report
from vaelab.config import RunConfig
from vaelab.report import Setup


def make_setup(**overrides) -> Setup:
    values = dict(command="vaelab reproduce --quick --out r", version="0.1.0", epochs=5, seeds=(0, 1),
                  latent_dims=(1, 2), train_images=None, split_sizes=(50000, 10000, 10000), base=RunConfig(),
                  machine="test machine", runs_reused=0, runs_total=6, train_seconds_total=12.0,
                  phase_seconds={"training": 10.0}, wall_seconds=15.0, figure_seed=0, interpolation_classes=(0, 1))
    values.update(overrides)
    return Setup(**values)


def test_quick_subset_is_stated_in_the_setup():
    lines = " ".join(report.setup_lines(make_setup(train_images=10000)))
    assert "first 10000 of these 50000 training images" in lines
    assert "first" not in " ".join(report.setup_lines(make_setup()))


def test_html_is_self_contained(tmp_path):
    png = tmp_path / "figures" / "curves.png"
    png.parent.mkdir()
    png.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png, but bytes to embed")
    records = [record("vae", 2, s, valid=[150.0, 140.0 + s], test_se=30.0 + s) for s in (0, 1)]
    index = report.write_report(tmp_path, records, make_setup(), {"curves": png})
    page = index.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert [base64.b64decode(e) for e in embedded] == [png.read_bytes()]
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing loaded from elsewhere
    assert "<table>" in page and "140.50 ± 0.71" in page
    md = (tmp_path / "index.md").read_text()
    assert "](figures/curves.png)" in md and "140.50 ± 0.71" in md
