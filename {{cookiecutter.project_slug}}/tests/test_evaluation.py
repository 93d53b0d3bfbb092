"""FID and KID against independent implementations on the same features, the reference cache,
the sharing of samples among processes, and the offline path. Tests use a small feature
extractor of their own, never Inception's weights (no network, ever)."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.evaluation import features as features_module
from {{ cookiecutter.package_name }}.evaluation.memorisation import (
    copy_share,
    memorisation,
    nearest_examples,
    same_noise_similarity,
)
from {{ cookiecutter.package_name }}.evaluation.quality import fid_kid, reference_statistics, sample_features, shares

from test_modalities import randomised


def statistics_of(features: torch.Tensor) -> dict:
    """Reference statistics as reference_statistics stores them, with every feature kept for KID."""
    f = features.double()
    return {"sum": f.sum(0), "outer": f.T @ f, "count": len(f), "kid_features": features.float()}


def independent_fid(a: np.ndarray, b: np.ndarray) -> float:
    """Heusel et al. 2017, eq. 6, with scipy's matrix square root in float64."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def independent_kid(a: np.ndarray, b: np.ndarray) -> float:
    """Binkowski et al. 2018: the unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, on the full sets."""
    d = a.shape[1]
    k = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    m, n = len(a), len(b)
    kaa, kbb = k(a, a), k(b, b)
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                 - 2 * k(a, b).mean())


@pytest.fixture
def two_sets():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(400, 8, generator=g) @ torch.randn(8, 8, generator=g)
    fake = 0.8 * torch.randn(400, 8, generator=g) @ torch.randn(8, 8, generator=g) + 0.3
    return real, fake


def test_fid_of_a_set_with_itself_is_zero(two_sets):
    real, _ = two_sets
    assert abs(fid_kid(statistics_of(real), real, 1000, seed=0)["fid"]) < 1e-3


def test_fid_and_kid_equal_independent_implementations(two_sets):
    real, fake = two_sets
    result = fid_kid(statistics_of(real), fake, kid_subset_size=len(fake), seed=0, kid_subsets=1)
    assert result["fid"] == pytest.approx(independent_fid(real.double().numpy(), fake.double().numpy()), rel=1e-4)
    assert result["kid"] == pytest.approx(independent_kid(real.double().numpy(), fake.double().numpy()), rel=1e-3)


class Given(torch.nn.Module):
    """Features given as they are (torchmetrics' metrics take a feature network)."""

    def forward(self, features):
        return features


@pytest.mark.filterwarnings("ignore:.*will save all extracted features")
@pytest.mark.parametrize("n_real, n_fake", [(1500, 1200), (1500, 300), (300, 1200)])
def test_kid_follows_the_standard_protocol_of_100_subsets_of_at_most_1000(n_real, n_fake):
    """Binkowski et al. 2018 (and clean-fid): 100 subsets of 1000 from each set, or of the smaller
    set's size when one has fewer; torchmetrics' KID, seeded the same, is the reference."""
    from torchmetrics.image.kid import KernelInceptionDistance

    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(n_real, 8, generator=g), 0.9 * torch.randn(n_fake, 8, generator=g) + 0.1
    theirs = KernelInceptionDistance(feature=Given(), subsets=100, subset_size=min(1000, n_real, n_fake))
    theirs.update(real, real=True)
    theirs.update(fake, real=False)
    torch.manual_seed(5)
    mean, std = theirs.compute()
    ours = fid_kid(statistics_of(real), fake, 1000, seed=5)
    assert (ours["kid"], ours["kid_std"]) == pytest.approx((mean.item(), std.item()), rel=1e-6)


def test_kid_does_not_touch_the_global_random_state(two_sets):
    real, fake = two_sets
    state = torch.get_rng_state()
    first = fid_kid(statistics_of(real), fake, kid_subset_size=100, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert first == fid_kid(statistics_of(real), fake, kid_subset_size=100, seed=0)


class MeanAndSpread(torch.nn.Module):
    """A tiny feature extractor: per-channel means and standard deviations of a 4x4 pooling."""

    name, key = "test features", "test-features"

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1), requires_grad=False)
        self.calls = 0

    def forward(self, images):
        self.calls += 1
        x = torch.nn.functional.adaptive_avg_pool2d(images.float() / 255, 4).flatten(1)
        return self.scale * torch.cat([x, x.square()], dim=1)


def draw_from_indices(indices):
    """Deterministic 'samples' fixed by their index, as DiffusionModule.sample_numbered is."""
    return torch.stack([torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(int(i))) * 2 - 1 for i in indices])


def test_samples_are_shared_out_disjointly_and_do_not_depend_on_batch_size_or_processes():
    extractor = MeanAndSpread()
    single = sample_features(draw_from_indices, extractor, 23, batch_size=5)
    assert torch.equal(single, sample_features(draw_from_indices, extractor, 23, batch_size=7))
    parts = [list(shares(23, 5, rank, 2)) for rank in range(2)]
    indices = [torch.cat(p).tolist() for p in parts]
    assert not set(indices[0]) & set(indices[1]) and sorted(indices[0] + indices[1]) == list(range(23))
    ranked = [sample_features(draw_from_indices, extractor, 23, 5, rank, 2) for rank in range(2)]
    order = torch.tensor(indices[0] + indices[1]).argsort()
    assert torch.equal(torch.cat(ranked)[order], single)                 # the union is the single-process set


@pytest.mark.parametrize("sampler", ["ddpm", "heun", "dpmpp_2m"])
def test_numbered_samples_do_not_depend_on_the_batch_even_from_a_stochastic_sampler(project_dir, sampler):
    """Sample i draws all its noise, a stochastic sampler's steps included, from its own
    generator, and takes the label of its number: the same samples in one batch of 6 or in
    batches of 2 and 4, and different samples for different numbers. The float rounding of the
    network's batched arithmetic stays below 2e-5 here; another label moves a sample by 1e-2 or
    more."""
    from {{ cookiecutter.package_name }}.config import load_config, run_config
    from {{ cookiecutter.package_name }}.runs import new_model

    cfg = load_config(["experiment=digits", "model.conditional=true", "model.unet.channels=8"])
    model = new_model(cfg, [1, 8, 8], [str(k) for k in range(10)])
    randomised(model.denoiser)                          # undo the zero initialisations: the labels then count
    sampling = run_config(model.config, "sampling", {"sampler": sampler, "steps": 4, "churn": 10.0}).sampling
    whole = model.sample_numbered(torch.arange(6), 7, sampling)
    parts = torch.cat([model.sample_numbered(torch.arange(0, 2), 7, sampling),
                       model.sample_numbered(torch.arange(2, 6), 7, sampling)])
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-3)
    assert (whole[0] - whole[1]).abs().max() > 0.1
    labels = torch.tensor([3, 1, 4])                                     # labels given: sample i takes labels[i % 3]
    whole = model.sample_numbered(torch.arange(6), 7, sampling, labels)
    parts = torch.cat([model.sample_numbered(torch.arange(0, 2), 7, sampling, labels),
                       model.sample_numbered(torch.arange(2, 6), 7, sampling, labels)])
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-3)


def test_reference_statistics_are_cached_and_rebuilt_when_the_data_changes(project_dir, tmp_path):
    from PIL import Image

    from {{ cookiecutter.package_name }}.config import load_config
    from {{ cookiecutter.package_name }}.data import DiffusionDataModule
    from {{ cookiecutter.package_name }}.evaluation.quality import reference_file

    pics = tmp_path / "pics"
    pics.mkdir()
    for k in range(6):
        Image.new("L", (8, 8), 40 * k).save(pics / f"{k}.png")
    cfg = load_config(["data.name=image_folder", f"data.root={pics}", "data.image_size=8", "data.channels=1",
                       "data.labels_from_subfolders=false", "data.val_fraction=0"]).data
    extractor = MeanAndSpread()

    def statistics():
        data = DiffusionDataModule(cfg)
        data.setup()
        path = reference_file(str(tmp_path / "fid"), data.fingerprint, 8, 1, extractor)
        return reference_statistics(data.reference_images(), extractor, path, 4, 100, torch.device("cpu"))

    first = statistics()
    calls = extractor.calls
    assert torch.equal(statistics()["sum"], first["sum"]) and extractor.calls == calls       # reused
    Image.new("L", (8, 8), 255).save(pics / "0.png")                                         # one image changes
    assert not torch.equal(statistics()["sum"], first["sum"]) and extractor.calls > calls     # rebuilt


@pytest.mark.parametrize("batch_size", [1, 7, 64, 10_000])
def test_reference_statistics_are_the_features_of_the_training_data_computed_directly(project_dir, tmp_path,
                                                                                       batch_size):
    """What the FID callback and evaluate compare with: the sum and the sum of outer products of
    the extractor's features of every training image, un-augmented (the digits' own pixels,
    rebuilt here from scikit-learn), and for KID a sample of those features; whatever the batch."""
    from sklearn.datasets import load_digits

    from {{ cookiecutter.package_name }}.config import load_config
    from {{ cookiecutter.package_name }}.data import DiffusionDataModule

    data = DiffusionDataModule(load_config(["experiment=digits", "data.val_fraction=0"]).data)
    data.setup()
    extractor = MeanAndSpread()
    stats = reference_statistics(data.reference_images(), extractor, tmp_path / "reference.pt", batch_size, 50,
                                 torch.device("cpu"))
    pixels = torch.from_numpy(load_digits().images).round().mul(255 / 16).round().to(torch.uint8)[:, None]
    direct = extractor(pixels).double()
    assert stats["count"] == len(pixels) == 1797
    torch.testing.assert_close(stats["sum"], direct.sum(0), rtol=1e-9, atol=1e-6)
    torch.testing.assert_close(stats["outer"], direct.T @ direct, rtol=1e-9, atol=1e-6)
    kept = stats["kid_features"].double()
    assert len(kept) == 50 and all(((direct - row).abs().max(1).values < 1e-6).any() for row in kept)


EXTRACTOR_FILE = '''
import torch

class Features(torch.nn.Module):
    """A fixed random projection: the same features in every process, like trained weights."""

    def __init__(self):
        super().__init__()
        self.project = torch.nn.Linear(64, 16)
        fixed = torch.Generator().manual_seed(0)
        self.project.weight.data = torch.randn(16, 64, generator=fixed) / 8
        self.project.bias.data = torch.zeros(16)

    def forward(self, images):                       # floats in [-1, 1], (N, 1, 8, 8)
        return self.project(torch.nn.functional.adaptive_avg_pool2d(images, 8).flatten(1))
'''


@pytest.fixture
def custom_extractor(tmp_path, monkeypatch):
    (tmp_path / "tiny_features.py").write_text(EXTRACTOR_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return ["evaluation.extractor=custom", "evaluation.extractor_module=tiny_features:Features"]


DIGITS = ["experiment=digits", "logger=csv", "model.unet.channels=8", "data.batch_size=16", "sampling.guidance=1",
          "evaluation.samples=40", "evaluation.batch_size=16", "evaluation.steps=2", "evaluation.kid_subset_size=20",
          "trainer.val_every_n_steps=1000", "trainer.sample_every_n_steps=1000"]


def test_fid_during_training_is_logged_with_its_sample_count_and_never_changes_training(project_dir, custom_extractor,
                                                                                          capsys):
    assert main(["train", *DIGITS, *custom_extractor, "name=plain", "trainer.max_steps=4"]) == 0
    assert main(["train", *DIGITS, *custom_extractor, "name=measured", "trainer.max_steps=4",
                 "evaluation.every_n_steps=2"]) == 0
    out = capsys.readouterr().out
    assert "quality: FID and KID with custom tiny_features:Features: 40 samples x (2 NFE + features)" in out
    history = [json.loads(line) for line in (project_dir / "runs/measured/fid/history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 4]
    assert history[0]["samples"] == 40 and history[0]["sampler"] == "dpmpp_2m, 2 steps" and history[0]["nfe"] == 2
    assert np.isfinite(history[1]["fid"]) and history[1]["extractor"] == "custom tiny_features:Features"
    metrics = (project_dir / "runs/measured/csv/version_0/metrics.csv").read_text()
    assert "val/fid@40" in metrics and "val/kid@40" in metrics
    plain, measured = (torch.load(f"runs/{name}/checkpoints/last.ckpt", weights_only=True)["state_dict"]
                       for name in ("plain", "measured"))
    assert all(torch.equal(plain[k], measured[k]) for k in plain)        # evaluation leaves training as it was
    assert not any("extractor" in k or "project" in k for k in measured)  # nor enters the checkpoint


def test_evaluate_runs_the_protocol_with_seeds_a_sweep_and_kept_images(project_dir, custom_extractor, capsys,
                                                                       monkeypatch):
    """Seeds draw disjoint numbered sets (the second seed's samples are numbered after the
    first's); every measurement takes kid_subset_size; the kept images are the first seed's
    samples with the evaluation sampler, not a sweep's; the sweep and a student's teacher line
    take every sampler and step count asked for."""
    from PIL import Image

    from {{ cookiecutter.package_name }}.commands import evaluate
    from {{ cookiecutter.package_name }}.config import run_config
    from {{ cookiecutter.package_name }}.pixels import to_uint8
    from {{ cookiecutter.package_name }}.runs import load_run

    subsets, measure = [], evaluate.fid_kid
    monkeypatch.setattr(evaluate, "fid_kid", lambda reference, features, subset, **rest: subsets.append(subset) or
                        measure(reference, features, subset, **rest))
    assert main(["train", *DIGITS, "name=done", "trainer.max_steps=2"]) == 0
    assert main(["evaluate", "run=runs/done", *[o.split(".", 1)[1] for o in custom_extractor], "samples=40",
                 "batch_size=16", "kid_subset_size=20", "steps=2", "seeds=2", "sweep=true",
                 "sweep_samplers=[euler,heun]", "sweep_steps=[1,2]", "keep_images=true"]) == 0
    out = capsys.readouterr().out
    assert "about" in out and "min (timed on one batch)" in out
    folder = project_dir / "runs/done/fid"
    summary = json.loads((folder / "evaluation.json").read_text())
    assert [run["seed"] for run in summary["runs"]] == [0, 40] and subsets == [20] * 6
    assert summary["fid@40_std"] > 0 and summary["extractor"] == "custom tiny_features:Features"
    sweep = json.loads((folder / "sweep.json").read_text())["results"]
    assert [(r["sampler"], r["nfe"]) for r in sweep] == [("euler", 1), ("euler", 2), ("heun", 1), ("heun", 3)]
    assert (folder / "sweep.png").is_file() and len(list((folder / "images").glob("*.png"))) == 40
    model, _ = load_run("runs/done")
    sampling = run_config(model.config, "sampling", {"sampler": model.config.evaluation.sampler, "steps": 2}).sampling
    first = to_uint8(model.sample_numbered(torch.arange(3), 0, sampling))[:, 0]
    kept = torch.stack([torch.from_numpy(np.array(Image.open(folder / f"images/{i:06d}.png"))) for i in range(3)])
    assert torch.equal(kept, first)
    assert main(["evaluate", "run=runs/done", *[o.split(".", 1)[1] for o in custom_extractor], "samples=20",
                 "batch_size=16", "kid_subset_size=10", "steps=2", "keep_images=true"]) == 0
    assert len(list((folder / "images").glob("*.png"))) == 20                  # the earlier 40 are not mixed in

    # a student's sweep, with its teacher's line beside it
    assert main(["train", "experiment=ect", "distill.teacher=runs/done", "name=student", "logger=csv",
                 "data.batch_size=16", "trainer.max_steps=2", "trainer.val_every_n_steps=1000",
                 "trainer.sample_every_n_steps=1000"]) == 0
    assert main(["evaluate", "run=runs/student", *[o.split(".", 1)[1] for o in custom_extractor], "samples=20",
                 "batch_size=16", "kid_subset_size=10", "steps=1", "sweep=true", "sweep_samplers=[consistency]",
                 "sweep_steps=[1,2]", "teacher_steps=[3,4]"]) == 0
    sweep = json.loads((project_dir / "runs/student/fid/sweep.json").read_text())["results"]
    assert [(r["model"], r["sampler"], r["nfe"]) for r in sweep] == [("student", "consistency", 1),
                                                                     ("student", "consistency", 2),
                                                                     ("done", "dpmpp_2m", 3),
                                                                     ("done", "dpmpp_2m", 4)]
    assert all(np.isfinite(r["fid"]) for r in sweep) and (project_dir / "runs/student/fid/sweep.png").is_file()


def test_offline_inception_weights_stop_training_before_it_starts(project_dir, monkeypatch, tmp_path, capsys):
    pytest.importorskip("torch_fidelity")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(path):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(features_module, "fetch_inception_weights", offline)
    assert main(["train", *DIGITS, "name=offline", "evaluation.every_n_steps=2", "trainer.max_steps=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR: FID needs the Inception weights weights-inception-2015-12-05-6726825d.pth")
    assert str(tmp_path / "hub" / "checkpoints") in err
    assert "could not be downloaded (OSError)" in err and "evaluation.extractor_weights" in err
    assert "run `{{ cookiecutter.package_name }} fetch-weights`" in err
    assert "\n" not in err and not (project_dir / "runs" / "offline").exists()       # nothing started


def test_a_missing_inception_weights_file_is_named_and_not_fetched(project_dir, monkeypatch, tmp_path, capsys):
    pytest.importorskip("torch_fidelity")
    monkeypatch.setattr(features_module, "fetch_inception_weights", lambda path: pytest.fail("fetched"))
    missing = tmp_path / "inception.pth"
    assert main(["train", *DIGITS, "name=missing", "evaluation.every_n_steps=2", "trainer.max_steps=2",
                 f"evaluation.extractor_weights={missing}"]) == 2
    assert capsys.readouterr().err.strip() == f"ERROR: evaluation.extractor_weights={missing}: no such file"


def test_inception_without_torch_fidelity_says_what_to_install(project_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)            # import torch_fidelity fails
    assert main(["train", *DIGITS, "name=bare", "evaluation.every_n_steps=2", "trainer.max_steps=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR: evaluation.extractor=inception needs torch-fidelity: pip install torch-fidelity")
    assert err.endswith("(or evaluation.extractor=custom)")


def test_fetch_weights_offline_is_one_error_line(monkeypatch, tmp_path, capsys):
    pytest.importorskip("torch_fidelity")

    def offline(url, destination, progress=True):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert main(["fetch-weights", f"path={tmp_path / 'w.pth'}"]) == 2
    assert capsys.readouterr().err.startswith("ERROR: could not download weights-inception")


def test_fetch_weights_saves_torch_fidelitys_file_where_asked_or_in_torchs_cache(monkeypatch, tmp_path, capsys):
    """The download stood in for: torch-fidelity's URL, saved to path= (its folders made) or, by
    default, into torch's hub cache, where FID then finds it; the line says where to copy it."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    fetched = []

    def download(url, destination, progress=True):
        fetched.append(url)
        Path(destination).write_bytes(b"weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    asked, cache = tmp_path / "new" / "folder" / "w.pth", tmp_path / "hub" / "checkpoints"
    assert main(["fetch-weights", f"path={asked}"]) == 0
    assert main(["fetch-weights"]) == 0
    assert fetched == [URL_INCEPTION_V3] * 2
    assert asked.read_bytes() == (cache / features_module.INCEPTION_FILE).read_bytes() == b"weights"
    assert features_module.inception_weights(None) == cache / features_module.INCEPTION_FILE
    out = capsys.readouterr().out
    assert f"saved {asked}. On another machine, put it in {cache} or set evaluation.extractor_weights" in out


def test_points_are_judged_by_distances_to_the_held_out_data_in_training_and_evaluate(project_dir, capsys):
    """No feature extractor is built for points: training logs the sliced Wasserstein distance
    and MMD against the held-out data, and evaluate reports them beside the training data's own."""
    assert main(["train", "experiment=toy2d", "name=points", "trainer.max_steps=4", "evaluation.every_n_steps=2",
                 "evaluation.samples=60", "evaluation.steps=2", "logger=csv", "data.toy_samples=400",
                 "model.conditional=false", "data.clusters=0"]) == 0
    history = [json.loads(line) for line in (project_dir / "runs/points/fid/history.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in history] == [2, 4]
    assert all(entry["swd"] > 0 and "mmd" in entry and entry["extractor"] == "held-out data" for entry in history)
    assert "swd@60" in capsys.readouterr().out
    assert main(["evaluate", "run=runs/points", "samples=60", "steps=2"]) == 0
    report = json.loads((project_dir / "runs/points/fid/distances.json").read_text())
    assert report["kind"] == "vector" and report["against"] == "20 held-out examples"          # 5% of 400
    assert report["swd@60"] > 0 and report["training_data"]["swd"] > 0 and len(report["runs"]) == 1


@pytest.mark.parametrize("module, message", [("nowhere:Net", "does not name a network"),
                                             ("tiny_features:Missing", "does not name a network")])
def test_a_custom_extractor_that_cannot_be_found_is_one_error_line(project_dir, custom_extractor, capsys, module,
                                                                   message):
    assert main(["train", *DIGITS, *custom_extractor, f"evaluation.extractor_module={module}",
                 "evaluation.every_n_steps=2"]) == 2
    assert message in capsys.readouterr().err


def test_a_custom_extractor_computes_with_its_weights_file_and_its_cache_key_follows_the_file(custom_extractor,
                                                                                              tmp_path):
    """The weights file replaces the factory's initial weights; cached reference statistics are
    keyed by the module and the file's content, so new weights never reuse old statistics."""
    from types import SimpleNamespace

    from tiny_features import Features

    def extractor(weights):
        return features_module.custom_extractor(SimpleNamespace(extractor_module="tiny_features:Features",
                                                                extractor_weights=weights), "train")

    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    plain = extractor(None)
    assert plain.key == "tiny_features:Features" and plain.name == "custom tiny_features:Features"
    keys = []
    for scale in (2.0, 3.0):
        trained = Features()
        trained.project.weight.data *= scale
        torch.save(trained.state_dict(), tmp_path / "weights.pt")
        loaded = extractor(str(tmp_path / "weights.pt"))
        torch.testing.assert_close(loaded(images), scale * plain(images))
        assert loaded.name == "custom tiny_features:Features (weights.pt)"
        assert not loaded.net.project.weight.requires_grad
        keys.append(loaded.key)
    assert keys[0].startswith("tiny_features:Features-") and len(set(keys + [plain.key])) == 3


@pytest.mark.parametrize("extractor", ["custom", "inception"])
def test_planted_extractor_weights_are_refused(project_dir, custom_extractor, tmp_path, capsys, extractor):
    if extractor == "inception":
        pytest.importorskip("torch_fidelity")

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "ran"), "w"))

    torch.save({"project.weight": Payload()}, tmp_path / "weights.pt")
    chosen = custom_extractor if extractor == "custom" else []
    assert main(["train", *DIGITS, *chosen, f"evaluation.extractor_weights={tmp_path / 'weights.pt'}",
                 "evaluation.every_n_steps=2"]) == 2
    err = capsys.readouterr().err
    weights = tmp_path / "weights.pt"
    assert f"ERROR: evaluation.extractor_weights={weights} is not a weights file this project loads" in err
    assert "(tensors only; UnpicklingError)" in err and not (tmp_path / "ran").exists()


def test_the_cost_model_counts_each_sample_step_and_feature_pass_and_three_per_trained_image():
    """10 samples of 4 NFE: 40 evaluations and 10 feature passes; 100 steps of 8 images: 800
    forward passes and their backward passes at twice the cost."""
    from {{ cookiecutter.package_name }}.evaluation.quality import evaluation_cost

    assert evaluation_cost(samples=10, nfe=4, every_n_steps=100, batch_size=8) == (50, 2400)


def test_sample_counts_in_metric_names_are_whole_thousands_or_the_number():
    from {{ cookiecutter.package_name }}.evaluation.quality import count_name

    names = {n: count_name(n) for n in (999, 1000, 1500, 5000, 50000, 1234, 40)}
    assert names == {999: "999", 1000: "1k", 1500: "1500", 5000: "5k", 50000: "50k", 1234: "1234", 40: "40"}


def test_the_default_cadence_costs_at_most_a_tenth_of_training():
    """In network evaluations, at each GPU preset's defaults (the CPU preset does not evaluate)."""
    from {{ cookiecutter.package_name }}.config import load_config
    from {{ cookiecutter.package_name }}.evaluation.quality import evaluation_cost
    from {{ cookiecutter.package_name }}.runs import new_model
    from {{ cookiecutter.package_name }}.trainer import evaluation_sampling

    for preset in ("colab-t4", "a100", "h100"):
        cfg = load_config([f"preset={preset}", "evaluation.every_n_steps=10000", "model.unet.channels=8",
                           "model.dit.width=32", "model.mlp.width=8"])
        shape = [2] if cfg.data.name == "toy2d" else [cfg.data.channels, cfg.data.image_size, cfg.data.image_size]
        model = new_model(cfg, shape, [str(k) for k in range(cfg.data.clusters or 10)])
        nfe = model.nfe(evaluation_sampling(cfg))
        evaluating, training = evaluation_cost(cfg.evaluation.samples, nfe, cfg.evaluation.every_n_steps,
                                               cfg.data.batch_size)
        assert evaluating <= 0.1 * training, preset


@pytest.mark.once
def test_the_inception_path_runs_offline_from_a_weights_file(project_dir, tmp_path, monkeypatch):
    """The real extractor end to end (grayscale repeated to RGB, resized to 299, 2048 features),
    from a local weights file: random weights of the right shapes, since tests never download."""
    pytest.importorskip("torch_fidelity")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with monkeypatch.context() as patch:
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        patch.setattr("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", lambda *a, **k: None)
        random_inception = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(random_inception.state_dict(), tmp_path / "inception.pth")
    digits = torch.randint(0, 256, (24, 1, 8, 8), dtype=torch.uint8)       # few: Inception is slow on a CPU
    torch.save(digits, tmp_path / "digits.pt")
    assert main(["train", *DIGITS, "name=inception", "data.name=tensor_file", f"data.root={tmp_path / 'digits.pt'}",
                 "data.val_fraction=0", "model.conditional=false", "trainer.max_steps=2", "evaluation.every_n_steps=2",
                 "evaluation.samples=12", "evaluation.kid_subset_size=10", "evaluation.kid_reference=20",
                 f"evaluation.extractor_weights={tmp_path / 'inception.pth'}", "evaluation.cache_dir=fid-cache"]) == 0
    history = json.loads((project_dir / "runs/inception/fid/history.jsonl").read_text())
    assert history["extractor"] == "inception-v3 (2048 pool features)" and np.isfinite(history["fid"])
    reference = torch.load(next((project_dir / "fid-cache").glob("reference-*.pt")), weights_only=True)
    assert reference["sum"].shape == (2048,) and reference["kid_features"].shape == (20, 2048)


@pytest.mark.subprocess
@pytest.mark.slow
def test_two_ddp_processes_measure_the_fid_of_one_process(project_dir, tmp_path):
    """Each of two CPU processes (gloo) draws its share; the gathered FID equals `evaluate`'s
    single-process FID of the same checkpoint, samples and seed."""
    import os
    import subprocess
    import sys

    from conftest import PROJECT

    (tmp_path / "tiny_features.py").write_text(EXTRACTOR_FILE)
    env = {**os.environ, "PYTHONPATH": f"{PROJECT / 'src'}{os.pathsep}{tmp_path}", "OMP_NUM_THREADS": "1"}
    extractor = ["evaluation.extractor=custom", "evaluation.extractor_module=tiny_features:Features"]
    args = [*DIGITS, *extractor, "name=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=2",
            "evaluation.every_n_steps=2", "evaluation.samples=45"]
    result = subprocess.run([sys.executable, "-m", "{{ cookiecutter.package_name }}", "train", *args], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    history = [json.loads(line) for line in (project_dir / "runs/ddp/fid/history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["samples"] == 45             # one record, all 45 samples gathered
    result = subprocess.run([sys.executable, "-m", "{{ cookiecutter.package_name }}", "evaluate", "run=runs/ddp",
                             *[o.split(".", 1)[1] for o in extractor], "samples=45", "batch_size=16",
                             "kid_subset_size=20", "steps=2"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    single = json.loads((project_dir / "runs/ddp/fid/evaluation.json").read_text())["runs"][0]
    assert history[0]["fid"] == pytest.approx(single["fid"], rel=1e-4)


# -- memorisation -----------------------------------------------------------------------------------
def test_nearest_examples_are_those_of_brute_force():
    generator = torch.Generator().manual_seed(0)
    examples, queries = torch.randn(230, 1, 3, 3, generator=generator), torch.randn(17, 1, 3, 3, generator=generator)
    distances, indices = nearest_examples(queries, examples, k=3, chunk=50)     # 50 does not divide 230
    full = np.sqrt(((queries.flatten(1).double().numpy()[:, None] - examples.flatten(1).double().numpy()[None]) ** 2)
                   .sum(-1))
    order = np.argsort(full, axis=1)[:, :3]
    assert indices.dtype == torch.long                                           # they index the training set
    np.testing.assert_array_equal(indices.numpy(), order)
    np.testing.assert_allclose(distances.numpy(), np.take_along_axis(full, order, 1), rtol=1e-6)


def test_training_images_are_all_copies_and_fresh_draws_of_the_same_distribution_almost_never():
    """Every training example is its own nearest (d1 = 0): 100% copies. Held-out draws from the
    distribution of the training set are copies only by chance: in 20 dimensions, never."""
    generator = torch.Generator().manual_seed(1)
    training, fresh = torch.randn(500, 20, generator=generator), torch.randn(200, 20, generator=generator)
    samples = training[:100] + 1e-4 * torch.randn(100, 20, generator=generator)
    found = memorisation(samples, fresh, training)
    assert found["copy_share"] == 1.0 and found["held_out_copy_share"] == 0.0
    assert torch.equal(found["nearest_index"], torch.arange(100))
    own = (samples - training[:100]).double().norm(dim=1)           # each sample's distance to its example
    held_out = torch.cdist(fresh.double(), training.double()).min(1).values
    torch.testing.assert_close(found["nearest"].double(), own, rtol=1e-5, atol=0)
    torch.testing.assert_close(found["held_out_nearest"].double(), held_out, rtol=1e-6, atol=0)
    assert found["median_nearest"] == pytest.approx(own.median().item(), rel=1e-5)
    assert found["held_out_median_nearest"] == pytest.approx(held_out.median().item(), rel=1e-6)
    # d1 < d2 / 3, strictly (Yoon et al. 2023): a third exactly is not a copy
    assert copy_share(torch.tensor([[1.0, 3.1], [1.0, 2.9], [0.0, 0.5], [1.0, 3.0]])) == pytest.approx(2 / 4)


def test_evaluate_finds_that_the_ideal_model_copies_every_time(project_dir, custom_extractor, capsys):
    """The known answer: the ideal denoiser's samples are training images, so all are copies,
    in pixels and in features, while held-out images are copies of none."""
    assert main(["train", *DIGITS, "name=ideal", "model.name=ideal", "data.val_fraction=0.1"]) == 0
    assert main(["evaluate", "run=runs/ideal", *[o.split(".", 1)[1] for o in custom_extractor], "fid=false",
                 "memorisation=24", "batch_size=16", "steps=8"]) == 0
    folder = project_dir / "runs/ideal/memorisation"
    summary = json.loads((folder / "memorisation.json").read_text())
    assert summary["samples"] == 24 and summary["pixels"]["copy_share"] == 1.0
    assert summary["pixels"]["median_nearest"] == 0.0 and summary["pixels"]["held_out_copy_share"] < 0.1
    assert summary["features (custom tiny_features:Features)"]["copy_share"] == 1.0
    assert (folder / "nearest.png").is_file() and (folder / "distances.png").is_file()
    assert ("copies of a training image (nearest < 1/3 of the second nearest) among 24 samples: 100% in pixels, "
            "100% in features (custom tiny_features:Features)") in capsys.readouterr().out
    assert not (project_dir / "runs/ideal/fid/evaluation.json").exists()


def test_same_noise_similarity_is_the_cosine_of_centred_pairs():
    """Against numpy: the cosine similarity of pairs, less the mean of all the images; and the
    known answers 1 for the same images and -1 for images mirrored through their mean."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, 1, 4, 4, generator=generator), torch.randn(30, 1, 4, 4, generator=generator)
    b = 0.6 * a + 0.4 * b + 3.0                                    # alike, and all shifted
    x, y = a.flatten(1).numpy().astype(np.float64), b.flatten(1).numpy().astype(np.float64)
    mean = np.concatenate([x, y]).mean(0)
    x, y = x - mean, y - mean
    cosines = (x @ y.T) / np.outer(np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1))
    found = same_noise_similarity(a, b)
    assert found["same_noise"] == pytest.approx(np.diag(cosines).mean(), abs=1e-12)
    assert found["different_noise"] == pytest.approx(cosines[~np.eye(30, dtype=bool)].mean(), abs=1e-12)
    assert torch.allclose(found["pairs"], torch.tensor(np.diag(cosines)).float())
    assert same_noise_similarity(a, a)["same_noise"] == pytest.approx(1.0, abs=1e-12)
    assert same_noise_similarity(a, 2 * a.mean(0) - a)["same_noise"] == pytest.approx(-1.0, abs=1e-12)


def test_a_twin_trained_on_other_examples_is_sampled_from_the_same_noise(project_dir, capsys):
    """Ideal models of two disjoint parts of the digits: each draws its own examples, so their
    samples from the same noise differ; a run compared with itself is alike to 1. In pixels
    only (features=false), no feature extractor is needed."""
    for part in (0, 1):
        assert main(["train", *DIGITS, f"name=part{part}", "model.name=ideal", "model.conditional=false",
                     "data.clusters=0", "data.train_size=200", f"data.train_part={part}"]) == 0
    judge = ["fid=false", "features=false", "memorisation=16", "batch_size=16", "steps=8"]
    assert main(["evaluate", "run=runs/part0", "twin=runs/part1", *judge]) == 0
    folder = project_dir / "runs/part0/memorisation"
    summary = json.loads((folder / "memorisation.json").read_text())
    assert summary["training"] == 200 and summary["pixels"]["copy_share"] == 1.0
    assert list(summary) == ["samples", "held_out", "training", "copy", "pixels", "twin"]       # no features
    assert summary["twin"]["twin"]["checkpoint"].endswith("part1/checkpoints/last.ckpt")
    assert summary["twin"]["same_noise"] < 0.9 and (folder / "twins.png").is_file()
    assert "from the same noise as part1's: cosine similarity" in capsys.readouterr().out
    assert main(["evaluate", "run=runs/part0", "twin=runs/part0", *judge]) == 0
    assert json.loads((folder / "memorisation.json").read_text())["twin"]["same_noise"] == pytest.approx(1.0)


# -- distances for data of any kind (evaluation/distances.py) -----------------------------------
def test_sliced_wasserstein_agrees_with_pot_on_unequal_samples():
    import ot

    from {{ cookiecutter.package_name }}.evaluation import distances as d

    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(37, 3, generator=generator, dtype=torch.float64), torch.rand(23, 3, generator=generator,
                                                                                   dtype=torch.float64) * 2
    assert torch.allclose(d.wasserstein_1d(x, y), torch.tensor(ot.wasserstein_1d(x.numpy(), y.numpy(), p=2)))
    directions = d.random_directions(3, 50, generator)
    ours = d.sliced_wasserstein(x, y, directions)
    theirs = ot.sliced_wasserstein_distance(x.numpy(), y.numpy(), projections=directions.numpy(), p=2)
    assert abs(ours - theirs) < 1e-10


def test_sliced_wasserstein_of_a_shift_is_its_length_over_the_root_of_the_dimension():
    """y = x + mu: along a unit direction t the projections shift by t.mu, so W_2^2 = (t.mu)^2,
    and over directions uniform on the sphere E[(t.mu)^2] = |mu|^2 / D: SW_2 = |mu| / sqrt(D).
    The directions are unit vectors, and the same seed draws the same ones."""
    from {{ cookiecutter.package_name }}.evaluation import distances as d

    generator = torch.Generator().manual_seed(0)
    x, mu = torch.randn(50, 4, generator=generator, dtype=torch.float64), torch.tensor([3.0, 0.0, -1.0, 2.0])
    directions = d.random_directions(4, 20000, generator)
    assert torch.allclose(directions.norm(dim=0), torch.ones(20000, dtype=torch.float64))
    assert d.sliced_wasserstein(x, x + mu, directions) == pytest.approx(mu.norm().item() / 2, rel=0.02)
    torch.manual_seed(1)
    first = d.random_directions(4, 3, torch.Generator().manual_seed(7))
    torch.manual_seed(2)
    assert torch.equal(first, d.random_directions(4, 3, torch.Generator().manual_seed(7)))


def test_distances_follow_their_seed_whatever_torchs_global_random_state():
    from {{ cookiecutter.package_name }}.evaluation.distances import distances

    generator = torch.Generator().manual_seed(0)
    samples, reference = torch.randn(40, 6, generator=generator), torch.randn(50, 6, generator=generator)
    torch.manual_seed(1)
    first = distances(samples, reference, "vector", seed=3, directions=20)
    torch.manual_seed(2)
    assert distances(samples, reference, "vector", seed=3, directions=20) == first
    assert distances(samples, reference, "vector", seed=4, directions=20)["swd"] != first["swd"]


def test_the_kernel_width_is_the_median_distance_between_two_distinct_rows():
    """The median heuristic over every pair once (scipy's pdist; 6 rows make 15 pairs, an odd
    count, so that the median is one of them), however small; sqrt(2 D) only where the rows
    mostly coincide."""
    from scipy.spatial.distance import pdist

    from {{ cookiecutter.package_name }}.evaluation.distances import bandwidth

    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.1
    assert bandwidth(x) == pytest.approx(float(np.median(pdist(x.numpy()))), rel=1e-12)
    assert bandwidth(torch.zeros(5, 3)) == pytest.approx(math.sqrt(6))


def test_a_sets_feature_is_the_histogram_of_its_pairwise_distances_and_its_share_of_points():
    """Worked by hand, with the range 3 cut into 16 bins: points at 0, 0.1 and 3 on a line make
    pairs at 0.1 (bin 0), 2.9 and 3 (bin 15, which also takes what lies beyond); a set of two real
    points of four has its one pair, at 1, in bin 5, and half its points."""
    from {{ cookiecutter.package_name }}.evaluation.distances import pairwise_distances, pairwise_histograms

    nan = math.nan
    sets = torch.tensor([[[0.0, 0.0], [0.1, 0.0], [3.0, 0.0], [nan, nan]],
                         [[0.0, 0.0], [1.0, 0.0], [nan, nan], [nan, nan]]])
    histograms = pairwise_histograms(sets, *pairwise_distances(sets), top=3.0)
    expected = torch.zeros(2, 17, dtype=torch.float64)
    expected[0, 0], expected[0, 15], expected[0, 16] = 1 / 3, 2 / 3, 3 / 4
    expected[1, 5], expected[1, 16] = 1.0, 2 / 4
    torch.testing.assert_close(histograms, expected)


def test_set_features_are_standardised_by_the_reference_in_any_units():
    """The same sets in millimetres or in metres have the same features (the histograms' range
    follows the reference), standardised to mean 0 and spread 1 over the reference; sets of one
    point each (no pair anywhere) are features too."""
    from {{ cookiecutter.package_name }}.evaluation.distances import features

    generator = torch.Generator().manual_seed(3)
    samples, reference = torch.randn(30, 5, 2, generator=generator), torch.randn(60, 5, 2, generator=generator)
    ours, theirs = features(samples, reference, "set")
    small = features(samples / 1000, reference / 1000, "set")
    assert torch.allclose(ours, small[0]) and torch.allclose(theirs, small[1])
    varying = theirs.std(0) > 0
    assert torch.allclose(theirs.mean(0), torch.zeros(theirs.shape[1], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(theirs.std(0)[varying], torch.ones(int(varying.sum()), dtype=torch.float64))
    alone = features(samples[:, :1], reference[:, :1], "set")[0]
    assert alone.shape == (30, 17) and torch.isfinite(alone).all()


def test_mmd_is_the_written_out_u_statistic_and_the_closed_form_for_two_gaussians():
    from {{ cookiecutter.package_name }}.evaluation.distances import mmd

    rng = np.random.default_rng(0)
    x, y, h = rng.normal(size=(7, 2)), rng.normal(size=(5, 2)) + 1, 0.8
    k = lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * h * h))    # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / 42
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    xy = sum(k(a, b) for a in x for b in y) / 35
    assert abs(mmd(torch.tensor(x), torch.tensor(y), h) - (xx + yy - 2 * xy)) < 1e-12
    # N(0, I) against N(mu, I) in d dimensions: MMD^2 = 2 (h^2 / (h^2 + 2))^(d/2) (1 - exp(-|mu|^2 / 2 (h^2 + 2)))
    d, h, mu = 3, 1.5, torch.tensor([0.7, 0.0, -0.4])
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(3000, d, generator=generator), torch.randn(3000, d, generator=generator) + mu
    exact = 2 * (h**2 / (h**2 + 2)) ** (d / 2) * (1 - math.exp(-mu.square().sum().item() / (2 * (h**2 + 2))))
    assert abs(mmd(a, b, h) - exact) < 0.1 * exact


def test_set_features_ignore_order_place_and_turn_and_the_distances_vanish_against_itself():
    from {{ cookiecutter.package_name }}.evaluation.distances import distances, features
    from {{ cookiecutter.package_name }}.sets import rotated

    generator = torch.Generator().manual_seed(0)
    sets = torch.randn(200, 6, 3, generator=generator)
    sets[::3, 4:] = math.nan
    moved = rotated(sets, generator)[:, torch.randperm(6, generator=generator)] + torch.tensor([5.0, -1.0, 2.0])
    assert torch.allclose(features(moved, sets, "set")[0], features(sets, sets, "set")[0], atol=1e-9)
    same = distances(sets, sets, "set")
    assert same["swd"] < 1e-12 and abs(same["mmd"]) < 0.01
    stretched = sets * torch.tensor([2.0, 1.0, 1.0])
    other = distances(stretched, sets, "set")
    assert other["swd"] > 0.3 and other["mmd"] > 0.05


def test_distances_rank_samples_of_the_data_above_samples_of_something_else():
    from {{ cookiecutter.package_name }}.evaluation.distances import distances

    generator = torch.Generator().manual_seed(0)
    data = torch.randn(1000, 2, 8, generator=generator).cumsum(-1)         # random walks
    fresh = torch.randn(1000, 2, 8, generator=generator).cumsum(-1)
    shuffled = fresh[..., torch.randperm(8, generator=generator)]          # the same values out of order
    good, bad = distances(fresh, data, "sequence"), distances(shuffled, data, "sequence")
    assert good["swd"] < bad["swd"] / 3 and good["mmd"] < bad["mmd"] / 5


def test_sets_far_from_the_origin_with_missing_points_have_the_features_of_the_same_sets_centred():
    """The histograms' range is the largest distance between two real points of the reference:
    a missing point (a NaN row) is nowhere, not at the origin, so moving every set far away
    changes nothing."""
    from {{ cookiecutter.package_name }}.evaluation.distances import distances, features

    generator = torch.Generator().manual_seed(2)
    sets = torch.randn(100, 6, 3, generator=generator)
    sets[::2, 3:] = math.nan
    far = sets + 1000.0
    assert torch.allclose(features(far, far, "set")[0], features(sets, sets, "set")[0], atol=1e-6)
    assert distances(far, far, "set")["swd"] < 1e-9


def test_sets_whose_points_are_all_alike_apart_differ_by_their_size():
    """Regular triangles and regular tetrahedra with edges of 1 have the same histogram of
    pairwise distances (every pair at 1): only the number of points tells them apart."""
    from {{ cookiecutter.package_name }}.evaluation.distances import distances, features

    tetrahedron = torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / math.sqrt(8)
    triangle = tetrahedron.clone()
    triangle[3] = math.nan
    tetrahedra, triangles = tetrahedron.expand(50, 4, 3), triangle.expand(50, 4, 3)
    mixed = torch.cat([tetrahedra, triangles])
    ours, _ = features(mixed, mixed, "set")
    assert torch.allclose(ours[:50, :-1], ours[50:, :-1]) and (ours[:50, -1] > ours[50:, -1]).all()
    apart, alike = distances(triangles, mixed, "set"), distances(mixed, mixed, "set")
    assert apart["swd"] > 0.1 and apart["mmd"] > 0.1 and alike["swd"] < 1e-9


def test_a_feature_the_reference_never_varies_does_not_blow_the_distance_up():
    """Rings of one size leave most histogram bins empty in the reference: samples that reach
    them are farther, by an amount of the order of the shares, not divided by a zero spread.
    Here every reference set is the same square, so no two reference features differ and the
    median heuristic has no width to give: the kernel's width is then sqrt(2 D), and MMD^2
    between two point masses at distance |v| is 2 (1 - exp(-|v|^2 / (4 D)))."""
    from {{ cookiecutter.package_name }}.evaluation.distances import distances, features

    square = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    reference = square.expand(100, 4, 2)
    stretched = square * torch.tensor([1.3, 1.0])
    result = distances(stretched.expand(100, 4, 2), reference, "set")
    assert 0.1 < result["swd"] < 10
    ours, theirs = features(stretched.expand(100, 4, 2), reference, "set")
    v, dimension = ours[0] - theirs[0], ours.shape[1]
    assert result["mmd"] == pytest.approx(2 * (1 - math.exp(-v.square().sum().item() / (4 * dimension))), rel=1e-9)
    assert distances(reference, reference, "set")["mmd"] == 0
