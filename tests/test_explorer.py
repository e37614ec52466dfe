"""The latent explorer in a real headless browser (Debian's chromium driven by playwright): the page's
JavaScript decoder equals torch's, pointer, pin, keys and interpolation work, and nothing is fetched."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FAKE_VALID, trust_files, write_fake_dataset
from test_cli import run as run_cli
from test_report import make_setup, record
from vaelab import data as vdata
from vaelab import explorer, report
from vaelab.config import RunConfig
from vaelab.training import train

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _missing(message: str) -> None:
    """CI (CI=true) must run the browser tests: there a missing browser fails; elsewhere it skips."""
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(message + " (CI=true: .ci/run installs chromium with apt-get)")
    pytest.skip(message)


# --- tiny trained runs, made once for the module ------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Fake MNIST and KMNIST roots and tiny runs trained on them: name -> run directory, plus "data"."""
    root = tmp_path_factory.mktemp("explorer")
    patch = pytest.MonkeyPatch()
    for name in ("mnist", "kmnist"):
        trust_files(patch, name, write_fake_dataset(root / "data", vdata.SPECS[name]))
    patch.delenv(vdata.ENV_DATA, raising=False)
    patch.setenv(vdata.ENV_CACHE, str(root / "cache"))
    made = {"data": root / "data"}
    for name, model, objective, dim, dataset in [
        ("ae-z2", "autoencoder", "reconstruction", 2, "mnist"), ("vae-z2", "vae", "paper", 2, "mnist"),
        ("vae-z1", "vae", "elbo", 1, "mnist"), ("vae-z3", "vae", "paper", 3, "mnist"),
        ("pca-z2", "pca", "squared-error", 2, "mnist"), ("kmnist-z2", "vae", "paper", 2, "kmnist"),
        ("mog-z2", "vae", "elbo", 2, "mnist"),
    ]:
        config = RunConfig(model=model, objective=objective, latent_dim=dim, hidden=(32, 16), epochs=2,
                           batch_size=32, valid_size=FAKE_VALID, seed=1, dataset=dataset,
                           prior="mog:3" if name.startswith("mog") else "standard")
        train(config, root / name, data_dir=root / "data", device="cpu", progress=False, log=lambda m: None)
        made[name] = root / name
    yield made
    patch.undo()


def write_page(runs: dict, names: list[str], path: Path, **kwargs) -> tuple[Path, list]:
    items = explorer.load_runs([runs[n] for n in names], data_dir=runs["data"], device="cpu")
    return explorer.write_page(path, explorer.build_page(items, **kwargs)), items


# --- the browser ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists():
        _missing(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Opened:
    """A page loaded from file:// with every request and console error it made recorded."""

    def __init__(self, browser, path: Path):
        self.page = browser.new_page(viewport={"width": 1200, "height": 900})
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)
        self.page.wait_for_function("window.vaelabReady === true")

    def pixels(self, canvas_id: str) -> list[int]:
        return self.page.evaluate(f"""Array.from(document.getElementById("{canvas_id}").getContext("2d")
            .getImageData(0, 0, document.getElementById("{canvas_id}").width,
                          document.getElementById("{canvas_id}").height).data)""")

    def center(self, element_id: str) -> tuple[float, float]:
        box = self.page.locator(f"#{element_id}").bounding_box()
        return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    def settle(self) -> None:
        """Wait for the redraw the page schedules on the next animation frame."""
        self.page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")

    def close(self) -> None:
        self.page.close()


def torch_decode(item: explorer.Loaded, z: np.ndarray, *, half: bool = False) -> np.ndarray:
    """The reference: the run's own decoder module (weights rounded to float16 first if `half`)."""
    decoder = item.decoder
    if half:
        import copy

        decoder = copy.deepcopy(decoder)
        with torch.no_grad():
            for p in decoder.parameters():
                p.copy_(p.half().float())
    with torch.no_grad():
        return torch.sigmoid(decoder(torch.from_numpy(z))).numpy()


@pytest.mark.parametrize("names, precision", [
    (["ae-z2", "vae-z2"], "float32"), (["ae-z2", "vae-z2"], "float16"), (["vae-z1"], "float32"),
    (["vae-z3"], "float32"),
])
def test_javascript_decode_equals_torch(runs, browser, tmp_path, names, precision):
    path, items = write_page(runs, names, tmp_path / "e.html", precision=precision)
    opened = Opened(browser, path)
    assert opened.page.evaluate("vaelabState().precision") == precision
    assert precision in opened.page.inner_text("#about")  # the page says which weights it holds
    codes = np.random.default_rng(0).normal(0, 2, (100, items[0].latent_dim)).astype(np.float32)
    for r, item in enumerate(items):
        js = np.array(opened.page.evaluate("([r, codes]) => codes.map(z => vaelabDecode(r, z))",
                                           [r, codes.tolist()]))
        reference = torch_decode(item, codes, half=precision == "float16")
        assert js.shape == reference.shape == (100, 784)
        np.testing.assert_allclose(js, reference, rtol=0, atol=1e-5)
        assert reference.std() > 1e-3  # the codes give different images: the comparison means something
    assert opened.errors == []
    opened.close()


def test_pointer_pin_keys_and_interpolation(runs, browser, tmp_path):
    path, items = write_page(runs, ["ae-z2", "vae-z2"], tmp_path / "e.html")
    opened = Opened(browser, path)
    page = opened.page
    x, y = opened.center("plane-1")
    page.mouse.move(x - 60, y - 60)
    opened.settle()
    before = opened.pixels("decoded-0"), opened.pixels("decoded-1")
    hover = page.evaluate("vaelabState().hover")
    page.mouse.move(x + 70, y + 50)
    opened.settle()
    after = opened.pixels("decoded-0"), opened.pixels("decoded-1")
    assert before[0] != after[0] and before[1] != after[1]  # one pointer drives both runs' decoders
    moved = page.evaluate("vaelabState().hover")
    assert moved[0] > hover[0] and moved[1] < hover[1]  # right and down on the plane: +z1, -z2

    page.mouse.click(x + 70, y + 50)
    opened.settle()  # the readout is redrawn on the next animation frame
    state = page.evaluate("vaelabState()")
    assert state["pinned"] and state["code"] == pytest.approx(moved)
    assert "pinned  z = (" in page.inner_text("#readout")
    page.mouse.move(x + 200, y + 300)  # off the plane: the pinned code is decoded
    opened.settle()
    pinned_image = opened.pixels("decoded-1")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowUp")
    opened.settle()
    code = page.evaluate("vaelabState().code")
    assert code[0] > state["code"][0] and code[1] > state["code"][1]
    assert f"{code[0]:.3f}" in page.inner_text("#readout")
    assert opened.pixels("decoded-1") != pinned_image

    assert not page.locator("#row-0").is_visible()
    a, b = (page.evaluate(f"vaelabPagePoint(0, {i})") for i in (3, 7))
    page.keyboard.down("Shift")
    page.mouse.click(*a)
    page.mouse.click(*b)
    page.keyboard.up("Shift")
    opened.settle()
    picks = page.evaluate("vaelabState().picks")
    assert len(picks) == 2  # the nearest test points (others may lie under the cursor too)
    for r in range(2):
        assert page.locator(f"#row-{r}").is_visible()
        row = np.array(opened.pixels(f"row-{r}")).reshape(28, 280, 4)[..., 0]
        first, last = row[:, :28], row[:, -28:]
        expect = torch_decode(items[r], np.array([page.evaluate(f"vaelabCode({r}, {i})") for i in picks],
                                                 dtype=np.float32))
        np.testing.assert_allclose(first / 255, expect[0].reshape(28, 28), atol=0.5 / 255 + 1e-6)
        np.testing.assert_allclose(last / 255, expect[1].reshape(28, 28), atol=0.5 / 255 + 1e-6)
    page.fill("#pick-a", "5")
    page.fill("#pick-b", "9")
    page.click("#interpolate")
    assert page.evaluate("vaelabState().picks") == [5, 9]
    page.click("#clear")
    assert not page.locator("#row-0").is_visible()
    page.check("#pick-mode")  # the other way to pick: plain clicks while the box is ticked
    for i in (3, 7):
        page.mouse.click(*page.evaluate(f"vaelabPagePoint(1, {i})"))
    opened.settle()
    assert len(page.evaluate("vaelabState().picks")) == 2 and page.locator("#row-1").is_visible()
    assert opened.errors == []
    opened.close()


def test_no_network_and_a_screenshot_that_is_not_blank(runs, browser, tmp_path):
    path, _ = write_page(runs, ["ae-z2", "vae-z2"], tmp_path / "e.html")
    opened = Opened(browser, path)
    page = opened.page
    x, y = opened.center("plane-0")
    page.mouse.click(x + 30, y - 20)
    page.fill("#pick-a", "1")
    page.fill("#pick-b", "2")
    page.click("#interpolate")
    page.mouse.move(x - 40, y + 10)
    opened.settle()
    shot = tmp_path / "explorer.png"
    page.screenshot(path=str(shot), full_page=True)
    assert opened.requests == [opened.url]  # the file itself and nothing else: no fonts, scripts, CDNs
    assert opened.errors == []
    from PIL import Image  # matplotlib's dependency

    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    colours = {tuple(c) for c in image.reshape(-1, 3)[::7]}
    assert image.std() > 20 and len(colours) > 50  # planes, scatter colours, decoded images
    for r in range(2):  # the decoded canvas is drawn: not one flat colour
        decoded = np.array(opened.pixels(f"decoded-{r}")).reshape(-1, 4)[:, 0]
        assert decoded.std() > 1
    opened.close()


def test_a_learned_prior_is_drawn_as_its_mass_regions(runs, browser, tmp_path):
    from vaelab.checkpoint import load_trained

    items = explorer.load_runs([runs["ae-z2"], runs["mog-z2"]], data_dir=runs["data"], device="cpu")
    model = load_trained(runs["mog-z2"], "cpu")[0]
    assert items[0].prior is None  # the autoencoder: N(0, I) as the reference
    means, stds = items[1].prior  # the mixture the run learned
    assert torch.equal(means, model.prior.means.detach()) and torch.allclose(stds, model.prior.log_scales.exp())
    # two known Gaussians far apart, half the mass each: the regions are circles of 1, 2 and 3 sd around each
    means, sd = np.array([[1.5, -1.0], [-6.0, 4.0]]), 0.5
    items[1].prior = (torch.tensor(means, dtype=torch.float32), torch.full((2, 2), sd))
    opened = Opened(browser, explorer.write_page(tmp_path / "prior.html", explorer.build_page(items)))
    page = opened.page
    for mean in means:
        for radius, band in ((0.0, 3), (0.9, 3), (1.1, 2), (1.9, 2), (2.1, 1), (2.9, 1), (3.1, 0)):
            for angle in (0.0, 2.0, 4.0):
                z = mean + radius * sd * np.array([np.cos(angle), np.sin(angle)])
                assert page.evaluate("z => vaelabPriorBand(1, z)", z.tolist()) == band, (mean, radius, angle)
    mean = means[0]
    assert "a learned prior: the regions of highest density holding the same mass" in page.inner_text("#about")
    # their borders are drawn (dashed): dark pixels along the 2-sd circle, none of that colour at its centre
    width = page.evaluate("document.getElementById('plane-1').width")
    pixels = np.array(opened.pixels("plane-1")).reshape(-1, width, 4)
    dark = (pixels[..., :3] == 34).all(-1)

    def near_dark(z) -> bool:
        x, y = (round(v) for v in page.evaluate("z => vaelabCanvasPoint(1, z)", list(z)))
        return bool(dark[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3].any())

    on_circle = [near_dark(mean + 2 * sd * np.array([np.cos(a), np.sin(a)])) for a in np.linspace(0, 6.2, 40)]
    assert sum(on_circle) >= 12 and not near_dark(mean)
    assert opened.errors == []
    opened.close()


def test_learned_prior_regions_on_a_strip_and_on_chosen_dimensions(runs, browser, tmp_path):
    """Latent 1: the 1, 2, 3 σ intervals' masses (68.3, 95.4, 99.7%); latent 3: the marginal on the plane's
    two dimensions, whichever two are chosen."""
    (z1,) = explorer.load_runs([runs["vae-z1"]], data_dir=runs["data"], device="cpu")
    z1.prior = (torch.tensor([[0.8]]), torch.tensor([[0.25]]))
    opened = Opened(browser, explorer.write_page(tmp_path / "z1.html", explorer.build_page([z1])))
    for radius, band in ((0.0, 3), (0.9, 3), (1.1, 2), (1.9, 2), (2.1, 1), (2.9, 1), (3.1, 0)):
        for sign in (-1, 1):
            assert opened.page.evaluate("z => vaelabPriorBand(0, z)", [0.8 + sign * radius * 0.25]) == band
    about = opened.page.inner_text("#about")
    assert "same mass, 68.3, 95.5, 99.7%" in about and opened.errors == [], about
    opened.close()

    (z3,) = explorer.load_runs([runs["vae-z3"]], data_dir=runs["data"], device="cpu")
    mean, sd = np.array([1.0, -1.0, 5.0]), np.array([0.5, 0.5, 2.0])
    z3.prior = (torch.tensor(mean[None], dtype=torch.float32), torch.tensor(sd[None], dtype=torch.float32))
    opened = Opened(browser, explorer.write_page(tmp_path / "z3.html", explorer.build_page([z3])))
    page = opened.page
    page.select_option("#dim-x", "2")
    page.select_option("#dim-y", "0")
    assert page.evaluate("vaelabState().dims") == [2, 0]
    for radius, band in ((0.9, 3), (1.1, 2), (2.1, 1), (3.1, 0)):
        for angle in (0.0, 1.0, 2.0):  # an ellipse on (z3, z1): sd 2 along x, 0.5 along y
            z = [5.0 + radius * 2.0 * np.cos(angle), 1.0 + radius * 0.5 * np.sin(angle)]
            assert page.evaluate("z => vaelabPriorBand(0, z)", z) == band, (radius, angle)
    assert opened.errors == []
    opened.close()


def test_latent_1_and_3_controls(runs, browser, tmp_path):
    path, _ = write_page(runs, ["vae-z1"], tmp_path / "z1.html")
    opened = Opened(browser, path)
    page = opened.page
    assert page.locator("#slider-0").count() == 1  # the strip's slider
    page.locator("#slider-0").fill("1.5")
    assert page.evaluate("vaelabState().code") == [1.5]
    opened.close()

    path, _ = write_page(runs, ["vae-z3"], tmp_path / "z3.html")
    opened = Opened(browser, path)
    page = opened.page
    assert page.locator("#slider-2").count() == 1 and page.locator("#slider-0").count() == 0
    before = opened.pixels("decoded-0")
    page.locator("#slider-2").fill("-2")
    opened.settle()
    assert page.evaluate("vaelabState().code")[2] == -2 and opened.pixels("decoded-0") != before
    page.select_option("#dim-x", "2")  # plane shows z3 against z2; z1 gets the slider
    assert page.evaluate("vaelabState().dims") == [2, 1]
    assert page.locator("#slider-0").count() == 1 and page.locator("#slider-2").count() == 0
    assert opened.errors == []
    opened.close()


def test_float16_when_the_page_would_be_too_big(runs, monkeypatch):
    items = explorer.load_runs([runs["ae-z2"], runs["vae-z2"]], data_dir=runs["data"], device="cpu")
    float32 = explorer.build_page(items)
    assert '"precision":"float32"' in float32
    monkeypatch.setattr(explorer, "MAX_FLOAT32_BYTES", len(float32.encode()) - 1)
    float16 = explorer.build_page(items)
    assert '"precision":"float16"' in float16 and len(float16) < len(float32)


# --- the command ------------------------------------------------------------------------------------

def test_explore_command_writes_the_page(runs, tmp_path, capsys):
    out = tmp_path / "page.html"
    code, stdout, err = run_cli(["explore", runs["ae-z2"], runs["vae-z2"], "-o", out, "--data-dir", runs["data"],
                                 "--device", "cpu", "--points", 50], capsys)
    assert code == 0, err
    assert f"wrote {out}" in stdout
    page = out.read_text()
    assert '"n_points":50' in page and "http://" not in page and "https://" not in page


def test_explore_help(capsys):
    code, stdout, _ = run_cli(["explore", "--help"], capsys)
    assert code == 0 and "--serve" in stdout and "[default: auto]" in stdout and "\\[" not in stdout


@pytest.mark.parametrize("names, message", [
    (["pca-z2"], "is a pca run; the explorer shows autoencoder and VAE runs"),
    (["vae-z2", "kmnist-z2"], "was trained on kmnist but"),
    (["vae-z2", "vae-z1"], "has latent dimension 1 but"),
])
def test_refused_runs_get_one_line_and_exit_2(runs, tmp_path, capsys, names, message):
    out = tmp_path / "page.html"
    code, _, err = run_cli(["explore", *[runs[n] for n in names], "-o", out, "--data-dir", runs["data"]], capsys)
    assert code == 2 and message in err
    assert err.startswith("vaelab: error: ") and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_serve_answers_on_localhost_only():
    server, thread = explorer.serve_in_thread("<html>explorer</html>")
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1" and port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as response:
            assert response.read() == b"<html>explorer</html>"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_explore_serve_command_until_ctrl_c(runs, monkeypatch, capsys):
    """`--serve` prints its address, answers there, and Ctrl-C (SIGINT) stops it with exit code 0."""
    servers = []
    make_server = explorer.make_server
    monkeypatch.setattr(explorer, "make_server", lambda page, port=0: servers.append(make_server(page, port))
                        or servers[-1])
    fetched = []

    def client() -> None:  # fetch the page once the server runs, then press Ctrl-C
        for _ in range(600):
            if servers:
                break
            time.sleep(0.05)
        port = servers[0].server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            fetched.append(response.read().decode())
        os.kill(os.getpid(), signal.SIGINT)

    # A job started in the background by a non-interactive shell (as CI may start this suite) inherits
    # SIGINT ignored; Ctrl-C must reach the command here, so the default handler is put back for the test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        code, stdout, err = run_cli(["explore", runs["vae-z2"], "--serve", "--data-dir", runs["data"], "--device",
                                     "cpu"], capsys)
    finally:
        signal.signal(signal.SIGINT, previous)
    thread.join(30)
    assert code == 0, err
    port = servers[0].server_address[1]
    assert f"serving the explorer at http://127.0.0.1:{port}/" in stdout and "stopped" in stdout
    assert "window.vaelabDecode" in fetched[0] and '"latent_dim":2' in fetched[0]
    assert "wrote" not in stdout  # --serve without -o writes no file


# --- the report's link --------------------------------------------------------------------------------

def test_report_links_the_explorer_when_there_is_one(tmp_path):
    records = [record("vae", 2, s, valid=[150.0, 140.0 + s], test_se=30.0 + s) for s in (0, 1)]
    report.write_report(tmp_path, records, make_setup(explorer="explorer.html",
                                                      explorer_runs=("autoencoder", "VAE (paper)")), {})
    md, page = (tmp_path / "index.md").read_text(), (tmp_path / "index.html").read_text()
    assert "## Latent explorer" in md and "[explorer.html](explorer.html)" in md
    assert '<a href="explorer.html">explorer.html</a>' in page and "autoencoder, VAE (paper) runs" in page
    report.write_report(tmp_path, records, make_setup(), {})  # no explorer (no latent 2): no section
    assert "explorer" not in (tmp_path / "index.md").read_text().lower()
