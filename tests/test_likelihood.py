"""Exact NLL by quadrature, IWAE, the ELBO split and active units: checked against independent
integration (scipy), against each other (exact <= IWAE_k <= -ELBO) and on trained models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import integrate

from conftest import FAKE_TEST, FAKE_VALID
from vaelab import likelihood as lk
from vaelab.checkpoint import load_trained
from vaelab.cli import main
from vaelab.config import RunConfig
from vaelab.data import load_data
from vaelab.evaluate import evaluate_run
from vaelab.models import build_model
from vaelab.objectives import bernoulli_nll, evaluate_objective
from vaelab.training import train


def tiny_vae(latent_dim: int, n_pixels: int = 5, *, seed: int = 0, objective: str = "elbo", scale: float = 3.0,
             likelihood: str = "bernoulli"):
    """An untrained VAE on a few pixels with weights scaled up so p(x|z) varies sharply with z."""
    config = RunConfig(latent_dim=latent_dim, hidden=(8,), n_pixels=n_pixels, objective=objective,
                       likelihood=likelihood)
    torch.manual_seed(seed)
    model = build_model(config).eval()
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(scale)
    return model, config


def numpy_log_joint(model, x: np.ndarray, likelihood: str = "bernoulli"):
    """An independent float64 numpy copy of the decoder: z (D,) -> log p(x|z) + log p(z) for image x (P,)."""
    layers = [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
              for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)]
    raw = model.decoder.raw_scale

    def log_joint(*z: float) -> float:
        h = np.array(z)
        for i, (w, b) in enumerate(layers):
            h = w @ h + b
            if i < len(layers) - 1:
                h = np.maximum(h, 0)
        if likelihood == "gaussian":  # N(x; sigmoid(h), (softplus(raw) + 1/256)²), written out
            sd = np.logaddexp(0, raw.detach().double().numpy()) + 1 / 256
            mean = 1 / (1 + np.exp(-h))
            log_lik = float(np.sum(-0.5 * ((x - mean) / sd) ** 2 - np.log(sd * math.sqrt(2 * math.pi))))
        else:  # Bernoulli; the continuous one adds log C(λ) = log(h / tanh(h / 2))
            log_lik = float(np.sum(x * h - np.logaddexp(0, h)))
            if likelihood == "continuous-bernoulli":
                log_lik += float(np.sum(np.log(h / np.tanh(h / 2))))
        return log_lik - 0.5 * sum(v * v + math.log(2 * math.pi) for v in z)

    return log_joint


def binary_images(n: int, n_pixels: int, seed: int = 0) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, n_pixels), 0.4), generator=torch.Generator().manual_seed(seed))


def test_joint_terms_give_the_objectives_bce_plus_the_prior_as_one_matmul():
    model, _ = tiny_vae(2, n_pixels=11)
    x = binary_images(7, 11)
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(1)) * 2
    terms = lk.joint_terms(model, z)
    assert terms.weight is not None  # the Bernoulli's log p(x|z) is affine in x: one matmul
    joint = x @ terms.weight.T + terms.bias  # (7, 5)
    assert torch.equal(joint, terms.log_joint(x))
    for g in range(5):
        reference = -bernoulli_nll(model.decode(z[g:g + 1]).expand(7, -1), x)
        reference = reference + torch.distributions.Normal(0.0, 1.0).log_prob(z[g]).sum()
        assert torch.allclose(joint[:, g], reference, atol=1e-4)


def test_quadrature_matches_scipy_in_one_dimension():
    model, _ = tiny_vae(1)
    x = binary_images(6, 5)
    exact = lk.exact_nll(model, x)
    assert exact.grid["converged"]
    # the ReLU decoder is piecewise smooth; tell quad where the pieces meet (w z + b = 0)
    first = model.decoder.to_hidden[0][0]
    crossings = (-first.bias / first.weight[:, 0]).detach()
    kinks = sorted(float(c) for c in crossings if abs(c) < 10)
    for n in range(len(x)):
        f = numpy_log_joint(model, x[n].double().numpy())
        # scale by the log-joint at a central point so quad works on numbers near 1
        shift = max(f(z) for z in np.linspace(-6, 6, 2001))
        value, _ = integrate.quad(lambda z, f=f, shift=shift: math.exp(f(z) - shift), -10, 10,
                                  epsabs=0, epsrel=1e-10, limit=500, points=kinks)
        assert float(exact.nll[n]) == pytest.approx(-(math.log(value) + shift), abs=2e-4)


@pytest.mark.parametrize("likelihood", ["continuous-bernoulli", "gaussian"])
def test_quadrature_of_continuous_likelihoods_matches_scipy(likelihood):
    # the continuous Bernoulli goes through the affine matmul, the Gaussian pair by pair: both must agree
    # with an independent numpy integrand
    model, config = tiny_vae(1, likelihood=likelihood, scale=2.0)
    x = torch.rand(4, 5, generator=torch.Generator().manual_seed(2))
    exact = lk.exact_nll(model, x)
    assert exact.grid["converged"]
    first = model.decoder.to_hidden[0][0]
    kinks = sorted(float(c) for c in (-first.bias / first.weight[:, 0]).detach() if abs(c) < 10)
    for n in range(len(x)):
        f = numpy_log_joint(model, x[n].double().numpy(), likelihood)
        shift = max(f(z) for z in np.linspace(-6, 6, 2001))
        value, _ = integrate.quad(lambda z, f=f, shift=shift: math.exp(f(z) - shift), -10, 10,
                                  epsabs=0, epsrel=1e-10, limit=500, points=kinks)
        assert float(exact.nll[n]) == pytest.approx(-(math.log(value) + shift), abs=2e-3)
    sampled = lk.importance_sampled(model, "elbo", x, k=2000, seed=0)
    # IWAE estimates the same log p(x) (an untrained q: only roughly); −ELBO >= IWAE on the same draws (Jensen)
    assert ((sampled["iwae"] - exact.nll).abs() < 1.0).all() and (sampled["neg_elbo"] >= sampled["iwae"] - 1e-6).all()
    # the ELBO's reconstruction term is the training objective's, from the same likelihood function
    measured = lk.measure(model, config, x, nll="exact", log=lambda _: None, bar=False)
    assert measured["pixel_likelihood"] == likelihood and "density" in measured["pixels"]
    assert measured["exact"]["bits_per_dim"] == pytest.approx(measured["exact"]["nll"] / (5 * math.log(2)))


def test_quadrature_matches_scipy_in_two_dimensions():
    model, _ = tiny_vae(2, scale=2.0)
    x = binary_images(2, 5, seed=3)
    exact = lk.exact_nll(model, x)
    first = model.decoder.to_hidden[0][0]
    w, b = first.weight.detach().double().numpy(), first.bias.detach().double().numpy()

    def inner_opts(y: float) -> dict:
        """For fixed y the integrand in z is smooth between the ReLU kinks w0 z + w1 y + b = 0."""
        crossings = -(w[:, 1] * y + b) / w[:, 0]
        return {"points": sorted(c for c in crossings if abs(c) < 8), "limit": 200, "epsabs": 0, "epsrel": 1e-9}

    for n in range(len(x)):
        f = numpy_log_joint(model, x[n].double().numpy())
        shift = f(0.0, 0.0)
        value, _ = integrate.nquad(lambda z, y, f=f, shift=shift: math.exp(f(z, y) - shift), [(-8, 8), (-8, 8)],
                                   opts=[inner_opts, {"limit": 200, "epsabs": 0, "epsrel": 1e-8}])
        assert float(exact.nll[n]) == pytest.approx(-(math.log(value) + shift), abs=2e-3)


def sharp_vae():
    """150 pixels and large weights: posteriors sharp enough that the scan alone is not resolved."""
    model, _ = tiny_vae(2, n_pixels=150, scale=6.0)
    return model, binary_images(30, 150)


def test_refined_tiles_equal_the_plain_rule_on_the_fine_grid():
    model, x = sharp_vae()
    s = lk.scan(model, x, dim=2, limit=3.0, step=1 / 16)
    assert torch.allclose(s.log_px, lk.quadrature(model, x, lk.Grid(2, 3.0, 1 / 16)), atol=1e-4, rtol=0)
    est = lk.refine(model, x, s, fine_step=1 / 64)
    assert est["refined_images"] == len(x)
    plain = lk.quadrature(model, x, lk.Grid(2, 3.0, 1 / 64))
    error = (est["fine"] - plain).abs()
    assert float(error.max()) < 2e-3
    # the scan alone is much further off: the refined tiles do the work
    assert float((s.log_px - plain).abs().mean()) > 5 * float(error.mean())
    # decoded a few codes at a time (a wide tile holds millions at a fine step): runs split mid-tile, same sums
    chunked = lk.refine(model, x, s, fine_step=1 / 64, node_batch=100)
    for key in ("fine", "coarse"):
        torch.testing.assert_close(chunked[key], est[key], atol=1e-4, rtol=0)  # float32 blocks, grouped otherwise


def test_exact_nll_does_not_move_when_the_grid_is_refined():
    model, x = sharp_vae()
    exact = lk.exact_nll(model, x)
    g = exact.grid
    assert g["converged"]
    assert g["change_vs_double_step"] < lk.TOLERANCE and g["mass_outside_limit_minus_1"] < lk.TOLERANCE
    finer = lk.exact_nll(model, x, limit=g["limit"] + 2, scan_step=g["scan_step"] / 2,
                         fine_step=g["fine_step"] / 2)  # half the steps, a wider square
    assert float((finer.nll - exact.nll).abs().mean()) < lk.TOLERANCE / 2


def test_refinement_goes_finer_and_wider_when_the_start_grid_is_too_coarse():
    model, _ = tiny_vae(2, n_pixels=60, scale=3.0)
    x = binary_images(40, 60)
    exact = lk.exact_nll(model, x, limit=1.0, scan_step=0.5, fine_step=0.25)
    assert exact.grid["converged"]
    assert exact.grid["fine_step"] < 0.25 and exact.grid["limit"] > 1.0
    reference = lk.exact_nll(model, x)
    assert float((exact.nll - reference.nll).abs().mean()) < lk.TOLERANCE
    capped = lk.exact_nll(model, x, limit=1.0, scan_step=0.5, fine_step=0.25, max_limit=1.0, min_fine_step=0.25)
    assert not capped.grid["converged"]
    assert float((capped.nll - reference.nll).abs().mean()) > lk.TOLERANCE  # the coarse answer really was off


def test_exact_nll_refuses_latent_dimensions_above_two():
    model, _ = tiny_vae(3)
    with pytest.raises(ValueError, match="latent dimension 1 or 2"):
        lk.exact_nll(model, binary_images(3, 5))


@pytest.mark.parametrize("objective", ["elbo", "paper"])
def test_iwae_is_non_increasing_in_k_and_approaches_the_exact_nll(objective):
    model, _ = tiny_vae(1, objective=objective)
    x = binary_images(200, 5)
    exact = float(lk.exact_nll(model, x).nll.mean())
    means = [float(lk.importance_sampled(model, objective, x, k=k, seed=k)["iwae"].mean())
             for k in (1, 10, 100, 3000)]
    assert all(a >= b - 0.005 for a, b in zip(means, means[1:], strict=False)), means
    assert means[0] - means[-1] > 0.05  # the bound does tighten
    assert means[-1] == pytest.approx(exact, abs=0.01)
    assert means[-1] >= exact - 0.005  # an upper bound on -log p(x), up to Monte Carlo error


def test_the_paper_objective_is_evaluated_with_its_own_noise():
    """q(z|x) for `paper` has standard deviation exp(σ); for `elbo`, exp(σ/2)."""
    model, _ = tiny_vae(2, n_pixels=8)
    x = binary_images(5, 8)
    m, second = model.encode(x)
    for objective, std in (("paper", second.exp()), ("elbo", (0.5 * second).exp())):
        mean, logvar = lk.posterior(model, objective, x)
        assert torch.equal(mean, m)
        assert torch.allclose((0.5 * logvar).exp(), std)
        kl = lk.importance_sampled(model, objective, x, k=3, seed=0)["kl"]
        reference = torch.distributions.kl_divergence(torch.distributions.Normal(m, std),
                                                      torch.distributions.Normal(0.0, 1.0)).sum(-1)
        assert torch.allclose(kl.float(), reference, atol=1e-5)


def test_active_units_counts_the_units_the_encoder_uses():
    model, _ = tiny_vae(2, n_pixels=8)
    with torch.no_grad():
        model.to_stats.weight[1].zero_()  # m_2 no longer depends on x
    units = lk.active_units(model, binary_images(100, 8))
    assert units["count"] == 1
    assert units["variances"][1] == pytest.approx(0.0, abs=1e-12) and units["variances"][0] > lk.ACTIVE_THRESHOLD


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory, request):
    """Small VAEs (latent 2) trained for a few epochs on fake MNIST, one per objective, plus an autoencoder."""
    from conftest import trust_files, write_fake_dataset
    from vaelab import data as vdata
    monkeypatch = pytest.MonkeyPatch()
    request.addfinalizer(monkeypatch.undo)
    root = tmp_path_factory.mktemp("fake") / "data"
    trust_files(monkeypatch, "mnist", write_fake_dataset(root, vdata.SPECS["mnist"]))
    monkeypatch.delenv(vdata.ENV_DATA, raising=False)
    runs = {}
    for name, model, objective, dim in (("paper", "vae", "paper", 2), ("elbo", "vae", "elbo", 2),
                                        ("autoencoder", "autoencoder", "reconstruction", 2),
                                        ("elbo3", "vae", "elbo", 3)):
        config = RunConfig(model=model, objective=objective, latent_dim=dim, hidden=(64, 32), epochs=8,
                           batch_size=32, valid_size=FAKE_VALID, seed=1)
        out = root.parent / name
        train(config, out, data_dir=root, device="cpu", progress=False, log=lambda _: None)
        runs[name] = out
    return root, runs


@pytest.mark.parametrize("name", ["paper", "elbo"])
def test_exact_below_iwae_below_neg_elbo_on_a_trained_model(trained_runs, name):
    root, runs = trained_runs
    model, config, _ = load_trained(runs[name], "cpu")
    x = load_data(config, root).test  # (FAKE_TEST, 784)
    exact = lk.exact_nll(model, x).nll
    sampled = lk.importance_sampled(model, config.objective, x, k=2000, seed=0)
    # 0.05 nats: Monte Carlo slack (IWAE_2000 is within a few hundredths of its mean here; the ELBO's
    # analytic KL differs from the sampled log p(z) - log q(z) by a similar amount)
    assert float(exact.mean()) <= float(sampled["iwae"].mean()) + 0.05
    assert float(sampled["iwae"].mean()) <= float(sampled["neg_elbo"].mean()) + 0.05
    assert float(sampled["neg_elbo"].mean() - exact.mean()) > 0.1  # a real posterior gap on a real model
    # the ELBO's reconstruction term is the objective's own reconstruction term (same q, more samples)
    # (the objective draws one noise sample per image: average 30 seeds and allow 4 standard errors)
    draws = torch.tensor([evaluate_objective(model, config.objective, x, seed=s)["reconstruction"]
                          for s in range(30)])
    slack = 4 * float(draws.std()) / math.sqrt(len(draws)) + 0.05
    assert float(sampled["reconstruction"].mean()) == pytest.approx(float(draws.mean()), abs=slack)


def test_measure_reports_na_for_the_autoencoder_and_refuses_exact_above_two(trained_runs):
    root, runs = trained_runs
    model, config, _ = load_trained(runs["autoencoder"], "cpu")
    result = lk.measure(model, config, load_data(config, root).test, nll="exact", k=5)
    assert result["applicable"] is False and "n/a" in result["why"]
    model, config, _ = load_trained(runs["elbo3"], "cpu")
    with pytest.raises(ValueError, match="--nll iwae"):
        lk.measure(model, config, load_data(config, root).test, nll="exact", k=5)
    iwae_only = lk.measure(model, config, load_data(config, root).test, nll="iwae", k=5)
    assert "exact" not in iwae_only and iwae_only["iwae"]["k"] == 5


def test_evaluate_cli_prints_and_saves_the_likelihoods(trained_runs, capsys):
    root, runs = trained_runs
    main(["evaluate", str(runs["paper"]), "--nll", "exact,iwae", "--k", "50", "--iwae-images", "40",
          "--data-dir", str(root), "--device", "cpu"])  # returns normally on success
    out = capsys.readouterr().out
    saved = json.loads((runs["paper"] / "evaluation.json").read_text())["likelihood"]
    assert saved["exact"]["images"] == FAKE_TEST and saved["iwae"]["images"] == 40 and saved["iwae"]["k"] == 50
    assert f"{saved['exact']['nll']:.3f}" in out and f"{saved['iwae']['nll']:.3f}" in out
    assert "exp(σ)" in saved["q"]
    # the saved numbers are a deterministic function of the run: evaluating again gives the same
    again = evaluate_run(runs["paper"], data_dir=root, device="cpu", nll="exact,iwae", k=50, iwae_images=40,
                         log=lambda _: None)
    assert again["likelihood"] == saved


def test_nll_exact_computes_what_was_asked_and_logs_each_step(trained_runs, capsys):
    root, runs = trained_runs
    main(["evaluate", str(runs["elbo"]), "--nll", "exact", "--data-dir", str(root), "--device", "cpu"])
    captured = capsys.readouterr()
    saved = json.loads((runs["elbo"] / "evaluation.json").read_text())["likelihood"]
    assert "iwae" not in saved and "IWAE" not in captured.out  # IWAE only when asked for
    # the cheap ELBO: ELBO_SAMPLES draws on every image, and the posterior gap on all of them
    assert saved["elbo"]["images"] == FAKE_TEST and saved["elbo"]["samples"] == lk.ELBO_SAMPLES
    assert saved["posterior_gap"]["images"] == FAKE_TEST and "iwae_minus_nll" not in saved["posterior_gap"]
    assert f"{saved['exact']['nll']:.3f}" in captured.out
    # stderr is not a terminal here: one line per finished step, with its wall time
    steps = [line for line in captured.err.splitlines() if " images in " in line]
    assert any(line.startswith("exact NLL") for line in steps) and any(line.startswith("ELBO") for line in steps)


@pytest.mark.parametrize("flags", [["--k", "20"], ["--iwae-images", "5"], ["--nll", "exact", "--k", "20"]])
def test_iwae_options_without_iwae_are_refused(trained_runs, capsys, flags):
    root, runs = trained_runs
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", str(runs["elbo"]), *flags, "--data-dir", str(root), "--device", "cpu"])
    assert stop.value.code == 2
    assert "only apply to IWAE" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["exact,", "exact,exact", "iwea", "", "exact iwae"])
def test_nll_is_parsed_strictly(text):
    with pytest.raises(ValueError, match="--nll takes"):
        lk.parse_estimators(text)
    assert lk.parse_estimators("iwae,exact") == ("exact", "iwae")



def test_evaluate_cli_rejects_exact_for_latent_three(trained_runs, capsys):
    root, runs = trained_runs
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", str(runs["elbo3"]), "--nll", "exact", "--data-dir", str(root), "--device", "cpu"])
    assert stop.value.code == 2
    assert "--nll iwae" in capsys.readouterr().err


# --- the report's likelihood columns and paragraphs (synthetic evaluation.json, no training) ---------

def likelihood_record(model: str, objective: str, dim: int, seed: int, *, nll: float, iwae_gap: float,
                      elbo_gap: float, confidence: float, frechet: float, preset: str | None = None):
    from vaelab.table import RunRecord

    if preset:  # a recipe's run, with the objective given (k only where it applies)
        config = RunConfig.from_preset(preset, seed=seed, objective=objective, k=5 if objective == "iwae" else 1)
    else:
        config = RunConfig(model=model, objective=objective, latent_dim=dim, seed=seed, epochs=5)
    test = {"loss": nll + elbo_gap, "reconstruction": nll, "regularizer": 3.0, "squared_error": 30.0}
    scores = {"confidence": confidence, "entropy": 0.5, "frechet": frechet, "images": 100}
    evaluation = {"epoch": 5, "test": test, "realism": {
        "classifier_test_accuracy": 0.993, "feature_dim": 128, "seed": 1234, "midpoints": scores,
        "samples": scores, "real": {"confidence": 0.99, "entropy": 0.03, "frechet": 1.5, "images": 100}}}
    if model == "vae":
        evaluation["likelihood"] = {
            "applicable": True, "iwae": {"k": 1000, "images": 500, "nll": nll + iwae_gap},
            "elbo": {"neg_elbo": nll + elbo_gap, "reconstruction": nll, "kl": elbo_gap, "images": 500,
                     "samples": 1000},
            "exact": {"images": 10000, "nll": nll,
                      "grid": {"limit": 6.0, "scan_step": 0.0625, "fine_step": 0.015625, "converged": True}},
            "posterior_gap": {"neg_elbo_minus_nll": elbo_gap, "iwae_minus_nll": iwae_gap,
                              "exact_nll_on_these_images": nll},
            "active_units": {"count": dim, "threshold": 0.01, "variances": [1.0] * dim}}
    else:
        evaluation["likelihood"] = {"applicable": False, "why": "n/a"}
    history = [{"epoch": e, "valid_loss": 150.0 - e} for e in range(1, 6)]
    return RunRecord(f"{model}-{objective}-z{dim}-s{seed}", config, history, evaluation)


def test_report_puts_the_likelihoods_next_to_the_davidson_anchor():
    from vaelab import discussion, report, table

    records = [likelihood_record(m, o, 2, s, nll=140.0 + s, iwae_gap=1.0, elbo_gap=5.0 + s, confidence=c,
                                 frechet=f)
               for s in (0, 1) for m, o, c, f in (("autoencoder", "reconstruction", 0.6, 40.0),
                                                  ("vae", "paper", 0.9, 10.0), ("vae", "elbo", 0.95, 8.0))]
    # the recipe's runs (vaelab reproduce --recipe): a row of their own, not mixed with the paper's models
    records += [likelihood_record("vae", "iwae", 2, s, nll=123.0 + s / 2, iwae_gap=0.9, elbo_gap=16.0,
                                  confidence=0.9, frechet=9.0, preset="z2-best") for s in (0, 1)]
    rows = table.results_rows(records)
    ae = next(r for r in rows if r["model"] == "autoencoder")
    assert ae["cells"]["exact_nll"] is None and ae["cells"]["midpoint_confidence"]["mean"] == pytest.approx(0.6)
    vae = next(r for r in rows if r["objective"] == "elbo")
    assert vae["cells"]["exact_nll"]["values"] == [140.0, 141.0]
    recipe = next(r for r in rows if r["preset"] == "z2-best")
    assert recipe["label"] == "VAE (z2-best recipe)" and recipe["epochs"] == 300 and recipe["seeds"] == [0, 1]
    assert recipe["cells"]["exact_nll"]["values"] == [123.0, 123.5]
    anchor = discussion.anchor_paragraph(rows, epochs=5, eval_seed=1234)
    assert "IS-500" in anchor and "seed 1234" in anchor
    header, body = discussion.published_comparison(rows, discussion.measurement_summary(records))
    recipe_label = "vaelab, VAE (z2-best recipe), 300 epochs, 2 seeds"
    assert body == [
        ["Davidson et al. 2018, Gaussian VAE", "IS-500", "135.73 ± 0.83", "all (10000)"],
        ["Davidson et al. 2018, hyperspherical S-VAE", "IS-500", "132.50 ± 0.73", "all (10000)"],
        *[[f"vaelab, {label}", *line] for label, nll in (("VAE (paper), 5 epochs, 2 seeds", "140.50 ± 0.71"),
                                                          ("VAE (ELBO), 5 epochs, 2 seeds", "140.50 ± 0.71"))
          for line in (["exact (quadrature)", nll, "10000"], ["exact (quadrature)", nll, "500"],
                       ["IWAE_1000", "141.50 ± 0.71", "500"])],
        # the integral on all test images, then the integral and the bound on the same (IWAE) images
        [recipe_label, "exact (quadrature)", "123.25 ± 0.35", "10000"],
        [recipe_label, "exact (quadrature)", "123.25 ± 0.35", "500"],
        [recipe_label, "IWAE_1000", "124.15 ± 0.35", "500"]]
    assert not any(row[0].startswith("vaelab, autoencoder") for row in body)  # no likelihood of its own
    text = " ".join(discussion.likelihood_paragraphs(rows))
    assert "holds in every run" in text
    assert "claim that the VAE's midpoints are digits and the autoencoder's are not is supported" in text
    lines = " ".join(discussion.measurement_lines(discussion.measurement_summary(records)))
    assert "k = 1000 samples per image on the first 500 test images" in lines and "99.30%" in lines
    assert "latent 2: [−L, L]^2 with L = 6, scan step 1/16, fine step 1/64" in lines

    # in the report the anchor sits under the likelihood table
    setup = report.Setup(command="vaelab reproduce", version="0", epochs=5, seeds=(0, 1), latent_dims=(2,),
                         train_images=None, split_sizes=(50000, 10000, 10000), base=RunConfig(), machine="m",
                         runs_reused=0, runs_total=6, train_seconds_total=1.0, phase_seconds={}, wall_seconds=1.0,
                         figure_seed=0, interpolation_classes=(0, 1))
    blocks = report.report_blocks(rows, setup, {}, discussion.measurement_summary(records))
    kinds = [(b[0], b[1] if b[0] in ("h2", "p") else None) for b in blocks]
    heading = kinds.index(("h2", "Likelihoods and posterior diagnostics (VAEs)"))
    assert kinds[heading + 1][0] == "table" and kinds[heading + 3][0] == "ul"  # the table, its † note, notes
    assert blocks[heading + 4] == ("table", header, body)  # the published comparison, then how to read it
    assert kinds[heading + 5] == ("p", anchor)
    setup_text = " ".join(blocks[kinds.index(("h2", "Setup")) + 1][1])
    assert "VAE (z2-best recipe): `vaelab train --preset z2-best`" in setup_text and "prior vamp:100" in setup_text
    # the paragraphs about the paper's models do not take a recipe's row for one of them
    assert discussion._find(rows, "vae", "iwae", 2) is None
    elbo_recipe = [likelihood_record("vae", "elbo", 2, 0, nll=120.0, iwae_gap=0.9, elbo_gap=16.0, confidence=0.9,
                                     frechet=9.0, preset="z2-best")]
    assert discussion._find(table.results_rows(elbo_recipe + records[:6]), "vae", "elbo", 2)["preset"] is None

    # the verdicts follow the numbers: a bound violated, the autoencoder's midpoints better
    flipped = [likelihood_record(m, o, 2, s, nll=140.0, iwae_gap=-1.0 if m == "vae" else 0.0, elbo_gap=5.0,
                                 confidence=c, frechet=f)
               for s in (0, 1) for m, o, c, f in (("autoencoder", "reconstruction", 0.95, 8.0),
                                                  ("vae", "elbo", 0.6, 40.0))]
    text = " ".join(discussion.likelihood_paragraphs(table.results_rows(flipped)))
    assert "fails beyond 0.05 nats" in text and "is not supported" in text


def test_reproduce_help_states_the_likelihood_defaults():
    import typer.main

    from vaelab import cli, reproduce

    command = typer.main.get_command(cli.app).commands["reproduce"]
    help_text = " ".join(p.help or "" for p in command.params)
    assert f"[default: {reproduce.IWAE_K}; quick: {reproduce.QUICK_IWAE_K}]" in help_text
    assert f"[default: {reproduce.IWAE_IMAGES}; quick: {reproduce.QUICK_IWAE_IMAGES}]" in help_text
    settings = reproduce.make_settings(iwae_k=5000, iwae_images=10000)
    assert settings.command(Path("r")) == (f"vaelab reproduce --epochs {reproduce.DEFAULT_EPOCHS} --seeds "
                                           f"{reproduce.DEFAULT_SEEDS} --iwae-k 5000 --iwae-images 10000 --out r")


# --- learned priors ---------------------------------------------------------------------------------

def tiny_vae_with_prior(prior: str, *, far: bool = True):
    """tiny_vae(2) with a learned prior; with `far` the mixture is moved so that one component sits far
    outside the standard prior's square [-6, 6]^2."""
    config = RunConfig(latent_dim=2, hidden=(8,), n_pixels=5, objective="elbo", prior=prior)
    torch.manual_seed(0)
    model = build_model(config).eval()
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(2.0)
        if prior.startswith("mog") and far:
            model.prior.means.copy_(torch.tensor([[0.0, 0.0], [7.0, -6.5], [-2.0, 3.0]]))
            model.prior.log_scales.copy_(torch.tensor([[0.0, 0.0], [-0.2, 0.1], [-1.0, -0.5]]))
        elif prior.startswith("mog"):  # inside the bulk of the untrained q(z|x) ≈ N(0, I)
            model.prior.means.copy_(torch.tensor([[0.0, 0.0], [0.8, -0.5], [-0.5, 0.6]]))
            model.prior.log_scales.copy_(torch.tensor([[0.0, 0.0], [-0.2, 0.1], [-0.6, -0.4]]))
    return model


def brute_force_nll(model, x: torch.Tensor, *, limit: float, step: float) -> torch.Tensor:
    """−log Σ_g p(x|z_g) p(z_g) h² on a fine square grid, all in float64, p(z) from torch.distributions
    (mog) or straight through the encoder (vamp): independent of joint_terms / scan / refine."""
    import copy

    double = copy.deepcopy(model).double()
    axis = torch.arange(-limit, limit + step / 2, step, dtype=torch.float64)
    z = torch.cartesian_prod(axis, axis)  # (G, 2)
    if double.prior.kind == "mog":
        p_z = torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(logits=torch.zeros(len(double.prior.means), dtype=torch.float64)),
            torch.distributions.Independent(torch.distributions.Normal(
                double.prior.means.detach(), double.prior.log_scales.detach().exp()), 1))
        log_p_z = p_z.log_prob(z)
    else:
        m, logvar = double.encode(torch.sigmoid(double.prior.raw_inputs))
        q = torch.distributions.Normal(m.detach(), (0.5 * logvar.detach()).exp())  # (K, 2)
        log_p_z = torch.logsumexp(q.log_prob(z[:, None, :]).sum(-1), 1) - math.log(len(m))
    with torch.no_grad():
        logits = double.decode(z)  # (G, P)
        log_lik = x.double() @ logits.T - torch.nn.functional.softplus(logits).sum(-1)  # (N, G)
    return -(torch.logsumexp(log_lik + log_p_z, 1) + 2 * math.log(step))


@pytest.mark.parametrize("prior", ["mog:3", "vamp:4"])
def test_exact_nll_with_a_learned_prior_matches_a_brute_force_fine_grid(prior):
    model = tiny_vae_with_prior(prior)
    x = binary_images(8, 5, seed=4)
    exact = lk.exact_nll(model, x)
    assert exact.grid["converged"]
    assert exact.grid["limit"] >= lk.prior_extent(model)  # the square covers the prior's components
    reference = brute_force_nll(model, x, limit=exact.grid["limit"] + 4, step=1 / 64)
    torch.testing.assert_close(exact.nll, reference, atol=2e-3, rtol=0)


def test_the_square_follows_the_prior():
    mog = tiny_vae_with_prior("mog:3")
    # the far component's second axis: |-6.5| + 6 scales of exp(0.1)
    assert lk.prior_extent(mog) == pytest.approx(6.5 + 6 * math.exp(0.1))
    assert lk.exact_nll(mog, binary_images(2, 5)).grid["limit"] == 14  # rounded up, not the standard 6
    assert lk.exact_nll(mog, binary_images(2, 5)).grid["scan_step"] == 2 / 16  # 13.1 / 6 = 2.2 times N(0, I)
    standard, _ = tiny_vae(2)
    grid = lk.exact_nll(standard, binary_images(2, 5)).grid
    assert lk.prior_extent(standard) == 6.0 and (grid["limit"], grid["scan_step"]) == (6, 1 / 16)


@pytest.mark.parametrize("prior", ["mog:3", "vamp:4"])
def test_iwae_uses_the_learned_prior_and_brackets_the_exact_nll(prior):
    # (a component far in the untrained q's tails would make the weights heavy-tailed: IWAE's spread huge)
    model = tiny_vae_with_prior(prior, far=False)
    x = binary_images(8, 5, seed=4)
    exact = lk.exact_nll(model, x).nll
    many = lk.importance_sampled(model, "elbo", x, k=20000, seed=0)
    few = lk.importance_sampled(model, "elbo", x, k=10, seed=0)
    assert float((many["iwae"] - exact).mean()) == pytest.approx(0, abs=0.02)  # consistent: → NLL as k grows
    assert float(few["iwae"].mean()) >= float(many["iwae"].mean()) - 1e-3
    assert float(few["neg_elbo"].mean()) >= float(few["iwae"].mean())
    # the KL of a learned prior is estimated from the draws: the ELBO split still adds up
    torch.testing.assert_close(many["neg_elbo"], many["reconstruction"] + many["kl"])


def test_a_gaussian_likelihood_vae_with_a_vamp_prior_trains_and_is_measured(fake_mnist, tmp_path):
    """Issue 12 x issue 13 end to end: iwae + vamp prior + warm-up + cosine with the Gaussian pixel likelihood;
    exact NLL (quadrature with the Gaussian's pair-by-pair terms and the learned prior) <= IWAE_k <= -ELBO.
    (MLP: the quadrature decodes ~10^5 codes, minutes through the conv decoder on a loaded CPU.)"""
    config = RunConfig(objective="iwae", k=3, prior="vamp:5", warmup=1, lr_schedule="cosine",
                       likelihood="gaussian", hidden=(16,), epochs=2, batch_size=50, valid_size=FAKE_VALID)
    train(config, tmp_path / "run", data_dir=fake_mnist, progress=False, log=lambda _: None)
    result = evaluate_run(tmp_path / "run", data_dir=fake_mnist, nll="exact,iwae", k=200, nll_images=10,
                          log=lambda _: None, bar=False)["likelihood"]
    assert result["prior"] == "vamp:5" and result["exact"]["grid"]["converged"]
    gap = result["posterior_gap"]
    assert gap["iwae_minus_nll"] > -0.05 and gap["neg_elbo_minus_nll"] >= gap["iwae_minus_nll"]
    model, _, _ = load_trained(tmp_path / "run", "cpu")
    assert model.prior.raw_inputs.shape == (5, 784) and model.decoder.raw_scale is not None


@pytest.mark.parametrize("limit, step", [(6, 1 / 16), (6, 1 / 64), (14, 1 / 8), (31, 1 / 4), (114, 1 / 4), (7, 1 / 3)])
def test_tiles_cover_the_square_exactly_and_stay_few(limit, step):
    tile = lk.tile_side(limit, step)
    per_tile, tiles = round(tile / step), round(2 * limit / tile)
    assert per_tile * step == pytest.approx(tile) and tiles * per_tile == round(2 * limit / step)  # no remainder
    assert tile >= lk.TILE - 1e-12 and tiles <= lk.MAX_TILES_PER_AXIS
    if 2 * limit / lk.TILE <= lk.MAX_TILES_PER_AXIS and (lk.TILE / step).is_integer():
        assert tile == lk.TILE  # the standard squares keep their tiles


def test_a_wide_learned_prior_is_integrated_with_wider_tiles():
    """A component of scale 5 at (7, -6.5) (a VampPrior's stray pseudo-input can be wider still) puts the
    square at ±37: 296 tiles of TILE per axis; the tiles widen to keep at most MAX_TILES_PER_AXIS, and the
    answer still matches the brute-force grid."""
    model = tiny_vae_with_prior("mog:3")
    with torch.no_grad():
        model.prior.log_scales[1] = math.log(5.0)
    x = binary_images(6, 5, seed=4)
    exact = lk.exact_nll(model, x)
    assert exact.grid["converged"] and exact.grid["limit"] == 37
    assert exact.grid["tile"] > lk.TILE and 2 * exact.grid["limit"] / exact.grid["tile"] <= lk.MAX_TILES_PER_AXIS
    reference = brute_force_nll(model, x, limit=exact.grid["limit"] + 2, step=1 / 48)
    torch.testing.assert_close(exact.nll, reference, atol=3e-3, rtol=0)


def test_a_stray_prior_component_of_huge_scale_does_not_blow_up_the_square():
    """Issue 12's latent-1 ablation: one VampPrior component encoded with a huge variance put the square at
    ±156 029 (hours, 24 GB). The square stops at PRIOR_LIMIT_CAP, says how much prior mass it leaves out
    (here the stray component's third: its density is ~1e-11 inside), and the answer still matches the
    brute-force grid where the integrand lives."""
    model = tiny_vae_with_prior("mog:3")
    with torch.no_grad():
        model.prior.log_scales[1] = math.log(1e5)
    x = binary_images(6, 5, seed=4)
    config = RunConfig(latent_dim=2, hidden=(8,), n_pixels=5, objective="elbo", prior="mog:3")
    result = lk.measure(model, config, x, nll="exact", log=lambda _: None, bar=False)
    grid = result["exact"]["grid"]
    assert lk.prior_extent(model) > 5e5 and grid["converged"] and grid["limit"] == lk.PRIOR_LIMIT_CAP[2]
    assert grid["prior_mass_outside"] == pytest.approx(1 / 3, abs=1e-4)
    assert "the prior's mass outside the square: 0.333" in "\n".join(lk.summary_lines(result))
    reference = brute_force_nll(model, x, limit=16, step=1 / 64)
    assert result["exact"]["nll"] == pytest.approx(float(reference.mean()), abs=2e-3)


def test_the_square_holds_every_posterior():
    """Posteriors far outside the prior's components (a latent-1 code spread over ±200 was measured): the
    square reaches them."""
    model, _ = tiny_vae(2)
    with torch.no_grad():
        model.to_stats.weight.zero_()
        model.to_stats.bias.copy_(torch.tensor([9.5, -2.0, 0.0, 0.0]))  # m = (9.5, -2), sd = 1
    assert lk.exact_nll(model, binary_images(2, 5)).grid["limit"] == math.ceil(9.5 + lk.POSTERIOR_SCALES)


def test_an_integrand_narrower_than_the_scan_step_is_found_and_resolved():
    """A 1-D decoder that turns 500 times faster than tiny_vae's (peaks of width ~1e-3, as the latent-1
    ablation's posteriors of sd 3e-4 to 8e-3) and an encoder whose posterior says so (sd 2e-4 at 0): the
    images are refined around their posterior, below the usual finest step 2^-10, to scipy's answer."""
    model, _ = tiny_vae(1)
    first = model.decoder.to_hidden[0][0]
    with torch.no_grad():
        first.weight.mul_(500)
        model.to_stats.weight.zero_()
        model.to_stats.bias.copy_(torch.tensor([0.0, 2 * math.log(2e-4)]))
    x = binary_images(6, 5)
    exact = lk.exact_nll(model, x)
    assert exact.grid["converged"] and exact.grid["narrow_posteriors"] == len(x)
    assert exact.grid["fine_step"] < 2.0 ** -10
    # (scipy's quad misses the narrow pieces here: a float64 grid 1e-7 fine where they are, 1e-4 elsewhere)
    double = tiny_vae(1)[0].double()
    double.load_state_dict(model.state_dict())

    def log_sum(lo: float, hi: float, step: float) -> torch.Tensor:
        z = torch.arange(lo, hi, step, dtype=torch.float64)[:, None]
        with torch.no_grad():
            logits = double.decode(z)
        log_joint = x.double() @ logits.T - torch.nn.functional.softplus(logits).sum(-1) - 0.5 * z[:, 0] ** 2
        return torch.logsumexp(log_joint, 1) + math.log(step) - 0.5 * math.log(2 * math.pi)

    reference = -torch.logsumexp(torch.stack([log_sum(-12, -0.1, 1e-4), log_sum(-0.1, 0.1, 1e-7),
                                              log_sum(0.1, 12, 1e-4)]), 0)
    torch.testing.assert_close(exact.nll, reference, atol=2e-3, rtol=0)


def test_tiles_around_a_posterior_are_the_scan_tiles_that_hold_it():
    """In 2-D, off the diagonal: the tile numbering is the scan's (row-major, first axis first)."""
    s = lk.Scan(dim=2, limit=3.0, step=1 / 16, log_px=torch.zeros(2), log_px_inner=torch.zeros(2),
                log_px_double=torch.zeros(2), best_in_tile=torch.zeros(2, 24 * 24), tile=0.25)
    m, sd = torch.tensor([[1.3, -2.1], [1.3, -2.1]]), torch.tensor([[1e-4, 1e-4], [0.2, 1e-4]])
    around = lk.tiles_around(s, m, sd)
    assert torch.nonzero(around[0]).flatten().tolist() == [17 * 24 + 3]  # (1.3 + 3) / 0.25 = 17.2, (-2.1 + 3) / 0.25
    assert torch.nonzero(around[1]).flatten().tolist() == [a * 24 + 3 for a in range(14, 20)]  # [0.7, 1.9]: 14..19
    # the scan itself puts a node at (1.3, -2.1)'s nearest grid point in that tile
    model, _ = tiny_vae(2)
    x = binary_images(1, 5)
    scanned = lk.scan(model, x, dim=2, limit=3.0, step=1 / 16)
    with torch.no_grad():
        log_joint = lk.joint_terms(model, torch.tensor([[1.3125, -2.125]])).log_joint(x)  # nodes 21/16, -34/16
    assert float(scanned.best_in_tile[0, 17 * 24 + 3]) >= float(log_joint[0, 0]) - 1e-5


def test_exact_nll_refuses_empty_and_non_finite_input():
    model, _ = tiny_vae(2)
    with pytest.raises(ValueError, match="no images"):
        lk.exact_nll(model, torch.zeros(0, 5))
    with torch.no_grad():
        model.to_stats.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite posterior"):
        lk.exact_nll(model, binary_images(2, 5))
