import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.commands.inspect_data import write_report
from {{ cookiecutter.package_name }}.commands.train import run as train
from {{ cookiecutter.package_name }}.config import ConfigError, load_config, student_config
from {{ cookiecutter.package_name }}.data import (
    TOY_SHAPES,
    DeviceBatches,
    DiffusionDataModule,
    decode_folder,
    fit_image,
    load_source,
    make_toy2d,
    sources,
)
from {{ cookiecutter.package_name }}.data.augment import center_crop, random_crop, random_flip
from {{ cookiecutter.package_name }}.data.clusters import kmeans, thumbnails
from {{ cookiecutter.package_name }}.errors import DataError
from {{ cookiecutter.package_name }}.pixels import to_uint8, to_unit_range
from {{ cookiecutter.package_name }}.runs import load_run, new_model, new_student


@pytest.mark.parametrize("shape", sorted(TOY_SHAPES))
def test_toy_shapes_are_reproducible_2d_point_clouds(shape):
    points, labels = make_toy2d(shape, 500, seed=3)
    assert points.shape == (500, 2) and points.dtype == torch.float32
    assert 0.3 < points.std() < 3                          # roughly unit scale
    assert torch.equal(points, make_toy2d(shape, 500, seed=3)[0])
    assert labels is None or (labels.shape == (500,) and labels.dtype == torch.int64)


def test_toy_points_are_drawn_with_the_runs_seed_and_labelled_where_the_shape_has_labels(project_dir):
    def toy(shape, seed):
        return load_source(load_config(["data.name=toy2d", f"data.toy_shape={shape}", "model.name=mlp",
                                        f"seed={seed}"]).data, seed)

    moons, gaussians, roll = toy("moons", 1), toy("gaussians", 1), toy("swiss_roll", 1)
    assert not torch.equal(moons.data, toy("moons", 2).data)
    assert moons.class_names == ["0", "1"] and torch.equal(moons.labels, make_toy2d("moons", len(moons.data), 1)[1])
    assert gaussians.class_names == [str(k) for k in range(8)] and roll.labels is None and roll.class_names == []


def test_gaussian_mixture_labels_name_the_nearest_mode():
    points, labels = make_toy2d("gaussians", 1000)
    angle = torch.atan2(points[:, 1], points[:, 0])
    assert torch.equal(torch.round(angle / (2 * torch.pi / 8)).long() % 8, labels)


def test_the_gaussian_mixture_has_its_modes_on_the_circle_of_radius_2_each_of_std_0_15():
    """Known answer: mode k centred at 2 (cos, sin)(2 pi k / 8), with independent N(0, 0.15^2) noise per point."""
    points, labels = make_toy2d("gaussians", 8000)
    angle = 2 * torch.pi * labels / 8
    noise = points - 2 * torch.stack([angle.cos(), angle.sin()], dim=1)
    assert (noise.mean(0).abs() < 4 * 0.15 / 8000**0.5).all()
    assert ((noise.std(0) - 0.15).abs() < 0.01).all()
    assert ((torch.bincount(labels, minlength=8) - 1000).abs() < 4 * (8000 / 8 * 7 / 8) ** 0.5).all()


def test_the_moons_are_two_interleaved_half_circles():
    """Known answer: scikit-learn's two moons (the upper half of the unit circle about (0, 0), label 0, and the lower
    half of the one about (1, 0.5), label 1), shifted by (-0.5, -0.25), scaled by 1.5, with N(0, 0.05^2) noise."""
    points, labels = make_toy2d("moons", 4000)
    assert set(labels.tolist()) == {0, 1} and abs(labels.float().mean() - 0.5) < 4 * 0.5 / 4000**0.5
    centre = torch.where(labels[:, None] == 0, torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.5]))
    offset = points / 1.5 + torch.tensor([0.5, 0.25]) - centre
    radial = (offset.norm(dim=1) - 1) * 1.5                 # the noise's radial part, in the data's units
    assert radial.mean().abs() < 4 * 0.05 / 4000**0.5 and abs(radial.std() - 0.05) < 0.005
    margin = 5 * 0.05 / 1.5
    assert (offset[labels == 0, 1] > -margin).all() and (offset[labels == 1, 1] < margin).all()    # the halves
    for moon in (0, 1):                                     # the angle uniform over the half circle
        turn = torch.atan2(offset[labels == moon, 1].abs(), offset[labels == moon, 0] * (1 - 2 * moon))
        assert abs(turn.mean() - torch.pi / 2) < 0.1 and abs(turn.std() - torch.pi / 12**0.5) < 0.05


def test_the_checkerboard_fills_its_eight_dark_squares_evenly_and_uniformly():
    """Known answer: uniform on the squares of a 4x4 board over [-2, 2]^2 whose column and row add up to an even
    number."""
    points, _ = make_toy2d("checkerboard", 8000)
    assert points.min() >= -2 and points.max() < 2
    square = points.floor().long() + 2                      # column and row, 0 to 3
    assert (square.sum(1) % 2 == 0).all()
    counts = torch.bincount(square[:, 0] * 4 + square[:, 1], minlength=16)
    assert ((counts[counts > 0] - 1000).abs() < 4 * (8000 / 8 * 7 / 8) ** 0.5).all() and (counts > 0).sum() == 8
    within = points - points.floor()
    assert ((within.mean(0) - 0.5).abs() < 0.02).all() and ((within.std(0) - 12**-0.5).abs() < 0.01).all()


def test_the_swiss_roll_is_the_spiral_t_cos_t_t_sin_t_over_5_for_t_between_1_5_pi_and_4_5_pi():
    """Known answer: t uniform on [1.5 pi, 4.5 pi], the point t (cos t, sin t) / 5 plus N(0, 0.05^2) noise. Each
    point's t is its angle, unwrapped by its radius (5 |x| is t to within the noise)."""
    points, labels = make_toy2d("swiss_roll", 4000)
    assert labels is None
    radius, angle = points.norm(dim=1), torch.atan2(points[:, 1], points[:, 0])
    t = angle + 2 * torch.pi * torch.round((5 * radius - angle) / (2 * torch.pi))
    radial = radius - t / 5                                 # the noise's radial part
    assert radial.mean().abs() < 4 * 0.05 / 4000**0.5 and abs(radial.std() - 0.05) < 0.005
    assert t.min() > 1.5 * torch.pi - 0.2 and t.max() < 4.5 * torch.pi + 0.2
    assert abs(t.mean() - 3 * torch.pi) < 0.1 and abs(t.std() - 3 * torch.pi / 12**0.5) < 0.1


def test_the_digits_are_scikit_learns_17_grey_levels_spread_over_0_to_255_and_cached_per_channel_count(project_dir):
    """Level v of 0..16 becomes round(255 v / 16) (integer arithmetic here, half up: 8 -> 128); grey images asked
    for three channels are three equal ones, cached apart from the one-channel ones."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = load_source(load_config(["data.name=digits", "data.image_size=8", "data.channels=1"]).data)
    expected = (torch.from_numpy(digits.images).long() * 255 + 8) // 16
    assert grey.data.shape == (1797, 1, 8, 8) and torch.equal(grey.data[:, 0].long(), expected)
    assert torch.equal(grey.labels, torch.from_numpy(digits.target).long())
    colour = load_source(load_config(["data.name=digits", "data.image_size=8", "data.channels=3"]).data)
    assert colour.data.shape == (1797, 3, 8, 8) and torch.equal(colour.data, grey.data.expand(-1, 3, -1, -1))


def test_uint8_round_trip_is_exact():
    images = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(to_uint8(to_unit_range(images)), images)


def png_bytes(array, mode=None):
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def write_messy_folder(root):
    """A folder as users have them: modes L, RGB, RGBA, P; sizes and aspect ratios mixed; a 1x1
    image; a duplicate; a corrupt file, a truncated one, a text file; class subfolders."""
    rng = np.random.default_rng(0)
    (root / "cats").mkdir(parents=True)
    (root / "dogs" / "puppies").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(root / "cats" / "a.jpg")
    gray = png_bytes(rng.integers(0, 255, (20, 20), dtype=np.uint8))
    (root / "cats" / "b.png").write_bytes(gray)
    (root / "cats" / "b copy.png").write_bytes(gray)
    Image.new("L", (1, 1), 200).save(root / "cats" / "tiny.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 4), dtype=np.uint8), "RGBA").save(root / "dogs" / "c.png")
    palette = Image.fromarray(rng.integers(0, 255, (16, 32, 3), dtype=np.uint8)).convert("P")
    palette.save(root / "dogs" / "puppies" / "d.gif")
    (root / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    whole = png_bytes(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    (root / "dogs" / "cut.png").write_bytes(whole[: len(whole) // 2])
    (root / "cats" / "notes.txt").write_text("not an image")


def folder_config(root, *overrides):
    return load_config(["data.name=image_folder", f"data.root={root}", "data.image_size=8", "data.channels=3",
                        "data.labels_from_subfolders=true", *overrides]).data


def test_messy_folder_decodes_converts_labels_and_lists_every_problem(tmp_path):
    write_messy_folder(tmp_path)
    decoded = decode_folder(tmp_path, 8, 3, labels_from_subfolders=True)
    assert decoded.data.shape == (6, 3, 8, 8) and decoded.data.dtype == torch.uint8
    assert decoded.class_names == ["cats", "dogs"]
    assert decoded.labels.tolist() == [0, 0, 0, 0, 1, 1]                 # puppies/ belongs to dogs
    assert sorted(b["path"] for b in decoded.bad) == ["dogs/broken.png", "dogs/cut.png"]
    errors = {b["path"]: b["error"] for b in decoded.bad}
    assert errors["dogs/broken.png"].startswith("UnidentifiedImageError: ")        # the kind of error, then why
    assert errors["dogs/cut.png"].startswith("OSError: ") and "truncated" in errors["dogs/cut.png"]
    assert decoded.others == ["cats/notes.txt"]


def test_hidden_files_and_folders_are_neither_decoded_nor_reported(tmp_path):
    """macOS leaves "._name.png" files (not images) and tools leave hidden folders of thumbnails: left alone."""
    Image.new("L", (8, 8), 255).save(tmp_path / "a.png")
    (tmp_path / "._a.png").write_bytes(b"AppleDouble")
    (tmp_path / ".thumbnails").mkdir()
    Image.new("L", (8, 8), 0).save(tmp_path / ".thumbnails" / "a.png")
    decoded = decode_folder(tmp_path, 8, 1, labels_from_subfolders=False)
    assert [f["path"] for f in decoded.files] == ["a.png"] and decoded.bad == [] and decoded.others == []


def test_skipped_files_are_reported_or_fatal_as_configured(project_dir, tmp_path):
    write_messy_folder(tmp_path / "pics")
    data = DiffusionDataModule(folder_config(tmp_path / "pics"))
    with pytest.warns(UserWarning, match=r"(?s)skipped 2 unreadable.*broken\.png"):
        data.setup()
    strict = DiffusionDataModule(folder_config(tmp_path / "pics", "data.on_bad_file=fail"))
    with pytest.raises(DataError, match=r"(?s)broken\.png.*on_bad_file=skip"):
        strict.setup()


def captioned_folder(root: Path, captions=("a red square", "a blue circle")) -> Path:
    """Six 20x20 RGB images, each with a caption file beside it, the captions in turn."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(captions[i % len(captions)] + "\n")
    return root


def test_captions_label_the_images_and_a_missing_or_empty_one_is_named(project_dir, tmp_path):
    """Each distinct caption is a class (white space does not count), numbered in sorted order; data.prompt gives all
    one class. The caption files are not reported as stray files, others are; a changed caption is not served from
    the cache."""
    images = captioned_folder(tmp_path / "images")
    (images / "0.txt").write_text("  a red\n  square ")
    (images / "notes.md").write_text("not a caption")
    keys = ["data.name=image_folder", f"data.root={images}", "data.labels_from_subfolders=false",
            "data.image_size=16", "data.channels=3", "data.val_fraction=0", "data.clusters=0"]
    with pytest.warns(UserWarning, match=r"ignored 1 non-image file\(s\) .*\(\.md x1\)"):
        data = DiffusionDataModule.of_run(load_config([*keys, "data.captions=true"]))
    assert data.class_names == ["a blue circle", "a red square"]
    assert data.train_set.labels.tolist() == [1, 0, 1, 0, 1, 0]          # 0.png: "a red square", ...
    with pytest.warns(UserWarning, match=r"ignored 7 non-image file\(s\) .*\(\.txt x6, \.md x1\)"):
        data = DiffusionDataModule.of_run(load_config([*keys, "data.prompt=a photo of sks dog"]))
    assert data.class_names == ["a photo of sks dog"] and data.train_set.labels.tolist() == [0] * 6
    (images / "3.txt").write_text("a green triangle")
    data = DiffusionDataModule.of_run(load_config([*keys, "data.captions=true"]))
    assert data.class_names == ["a blue circle", "a green triangle", "a red square"]
    assert data.train_set.labels.tolist() == [2, 0, 2, 1, 2, 0]
    (images / "5.txt").write_text(" \n")
    with pytest.raises(DataError, match="5.txt is empty: write the caption of 5.png in it"):
        DiffusionDataModule.of_run(load_config([*keys, "data.captions=true"]))
    (images / "5.txt").unlink()
    with pytest.raises(DataError, match="5.png has no readable caption 5.txt"):
        DiffusionDataModule.of_run(load_config([*keys, "data.captions=true"]))
    with pytest.raises(ConfigError, match="only one of the three"):
        load_config([*keys, "data.captions=true", "data.labels_from_subfolders=true"])


def test_transparent_pixels_become_white_and_grayscale_is_one_channel():
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert fit_image(clear, 4, 1).shape == (1, 4, 4)
    assert np.all(fit_image(clear, 4, 3) == 255)


def test_centre_crop_keeps_the_middle():
    wide = np.zeros((10, 30), dtype=np.uint8)
    wide[:, 10:20] = 255                                    # a white middle third
    assert np.all(fit_image(Image.fromarray(wide), 10, 1) == 255)


def test_missing_empty_and_unreadable_folders_get_clear_errors(project_dir, tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        load_source(folder_config(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"no images found .*\(1 other files\)"):
        load_source(folder_config(tmp_path / "empty"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"none of the 1 image files .*x\.png"):
        load_source(folder_config(tmp_path / "junk", "data.labels_from_subfolders=false"))


def test_loose_images_with_class_labels_requested_are_refused(tmp_path):
    write_messy_folder(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "loose.png")
    with pytest.raises(DataError, match="loose.png"):
        decode_folder(tmp_path, 8, 3, labels_from_subfolders=True)


def test_cache_is_reused_rebuilt_on_change_and_never_left_half_written(project_dir, tmp_path, monkeypatch):
    pics = tmp_path / "pics"
    write_messy_folder(pics)
    cfg = folder_config(pics)
    first = load_source(cfg)
    entry = project_dir / cfg.cache_dir / f"image_folder-{first.fingerprint}.pt"
    assert entry.is_file()

    def no_decoding(*args):
        raise AssertionError("decoded again although the folder did not change")

    monkeypatch.setattr(sources, "decode_folder", no_decoding)
    again = load_source(cfg)
    assert torch.equal(again.data, first.data) and again.bad == first.bad

    Image.new("RGB", (12, 12), "red").save(pics / "cats" / "new.png")       # the folder changed
    monkeypatch.setattr(sources, "decode_folder", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):                                 # interrupted mid-build
        load_source(cfg)
    assert list(entry.parent.iterdir()) == [entry]                         # no new entry, no partial file
    monkeypatch.undo()
    changed = load_source(cfg)
    assert len(changed.data) == len(first.data) + 1 and changed.fingerprint != first.fingerprint


def test_an_image_moved_to_another_class_is_decoded_again(project_dir, tmp_path):
    """One cat, one dog; the cat moved among the dogs keeps its size and date, and the files' order."""
    (tmp_path / "pets" / "cats").mkdir(parents=True)
    (tmp_path / "pets" / "dogs").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "pets" / "cats" / "a.png")
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "pets" / "dogs" / "b.png")
    assert load_source(folder_config(tmp_path / "pets")).labels.tolist() == [0, 1]
    (tmp_path / "pets" / "cats" / "a.png").rename(tmp_path / "pets" / "dogs" / "a.png")
    assert load_source(folder_config(tmp_path / "pets")).labels.tolist() == [0, 0]


def test_an_image_behind_a_symbolic_link_is_decoded_again_when_the_file_it_points_at_changes(project_dir, tmp_path):
    """A folder of links to images kept elsewhere (a common way to pick a subset): the cache follows the links."""
    (tmp_path / "pics" / "a").mkdir(parents=True)
    target = tmp_path / "elsewhere.png"
    Image.new("RGB", (8, 8), "red").save(target)
    (tmp_path / "pics" / "a" / "0.png").symlink_to(target)
    assert load_source(folder_config(tmp_path / "pics")).data[0, :, 0, 0].tolist() == [255, 0, 0]
    Image.new("RGB", (12, 12), "blue").save(target)                        # the link itself is unchanged
    assert load_source(folder_config(tmp_path / "pics")).data[0, :, 0, 0].tolist() == [0, 0, 255]


def test_two_folders_alike_in_every_file_name_size_and_date_are_cached_apart(project_dir, tmp_path):
    """Same-sized BMP files of the same names and dates, unpacked into two folders: told apart by the folder."""
    for root, shade in (("black", 0), ("white", 255)):
        (tmp_path / root / "a").mkdir(parents=True)
        Image.new("RGB", (8, 8), (shade,) * 3).save(tmp_path / root / "a" / "0.bmp")
        os.utime(tmp_path / root / "a" / "0.bmp", ns=(10**18, 10**18))
    black, white = (load_source(folder_config(tmp_path / root)) for root in ("black", "white"))
    assert black.data.max() == 0 and white.data.min() == 255


def test_two_tensor_files_alike_in_name_size_and_date_have_their_own_fingerprints(tmp_path):
    """The fingerprint keys the caches of what is computed from the data (FID's statistics, latents)."""
    for folder, value in (("a", 0.0), ("b", 1.0)):
        (tmp_path / folder).mkdir()
        torch.save(torch.full((4, 2), value), tmp_path / folder / "data.pt")
        os.utime(tmp_path / folder / "data.pt", ns=(10**18, 10**18))
    a, b = (load_source(load_config(["data.name=tensor_file", f"data.root={tmp_path / f / 'data.pt'}"]).data)
            for f in ("a", "b"))
    assert a.fingerprint != b.fingerprint


def test_offline_torchvision_download_names_dataset_folder_and_fix(tmp_path, monkeypatch):
    import torchvision

    class Offline:
        def __init__(self, root, download, **split):
            raise RuntimeError("Dataset not found") if not download else OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    with pytest.raises(DataError) as error:
        sources.load_torchvision("mnist", str(tmp_path / "data"), 32, 1)
    message = str(error.value)
    assert "MNIST" in message and str(tmp_path / "data") in message and "download=True" in message


class PublishedSet:
    """A stand-in for a torchvision dataset class (nothing is downloaded in the tests): not found until asked to
    download, then two 6x4 grey images, the first black with label 2, the second white with label 0."""
    calls = []

    def __init__(self, root, download, **split):
        PublishedSet.calls.append((root, download, split))
        if not download:
            raise RuntimeError("Dataset not found")            # as torchvision says; nothing is fetched

    def __iter__(self):
        yield Image.fromarray(np.zeros((4, 6), np.uint8)), 2
        yield Image.fromarray(np.full((4, 6), 255, np.uint8)), 0


@pytest.mark.parametrize("name, torchvision_class, split, classes", [
    ("mnist", "MNIST", {"train": True}, ["zero", "one", "two"]),
    ("flowers102", "Flowers102", {"split": "train"}, None),
    ("celeba", "CelebA", {"split": "train", "target_type": []}, None),
])
def test_published_sets_are_decoded_from_their_training_split_downloading_if_missing(tmp_path, monkeypatch, name,
                                                                                    torchvision_class, split, classes):
    """What torchvision's class yields, decoded as any image (resized and centre-cropped to 4x4, grey): the labels
    named by the class's ``classes`` (by number where it has none); CelebA unlabelled."""
    import torchvision

    stand_in = type(torchvision_class, (PublishedSet,), {} if classes is None else {"classes": classes})
    monkeypatch.setattr(torchvision.datasets, torchvision_class, stand_in)
    PublishedSet.calls = []
    decoded = sources.load_torchvision(name, str(tmp_path / "sets"), 4, 1)
    assert PublishedSet.calls == [(tmp_path / "sets", False, split), (tmp_path / "sets", True, split)]
    assert decoded.data.dtype == torch.uint8 and decoded.data.shape == (2, 1, 4, 4)
    assert decoded.data[0].max() == 0 and decoded.data[1].min() == 255
    if name == "celeba":
        assert decoded.labels is None and decoded.class_names == []
    else:
        assert decoded.labels.dtype == torch.int64 and decoded.labels.tolist() == [2, 0]
        assert decoded.class_names == (classes or ["0", "1", "2"])


def test_tensor_files_images_and_signals(project_dir, tmp_path):
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    torch.save({"data": images, "labels": torch.arange(10) % 2}, tmp_path / "images.pt")
    signals = np.random.default_rng(0).standard_normal((20, 1, 64)).astype(np.float32)
    np.save(tmp_path / "signals.npy", signals)
    decoded = load_source(load_config(["data.name=tensor_file", f"data.root={tmp_path / 'images.pt'}"]).data)
    assert torch.equal(decoded.data, images) and decoded.class_names == ["0", "1"]
    decoded = load_source(load_config(["data.name=tensor_file", f"data.root={tmp_path / 'signals.npy'}"]).data)
    assert decoded.data.shape == (20, 1, 64) and decoded.labels is None
    floats = torch.rand(4, 1, 8, 8) * 2.02 - 1.01                   # float images in [-1, 1], give or take rounding
    torch.save(floats, tmp_path / "floats.pt")
    assert torch.equal(sources.load_tensor_file(tmp_path / "floats.pt").data, floats)
    for outside, found in ((-1.5, r"\[-1.5, "), (1.5, r", 1.5\]")):
        torch.save(torch.cat([floats, torch.full((1, 1, 8, 8), outside)]), tmp_path / "outside.pt")
        with pytest.raises(DataError, match="holds float images in .*" + found):
            sources.load_tensor_file(tmp_path / "outside.pt")


@pytest.mark.parametrize("content, message", [
    (torch.zeros(5), r"shape \(N, ...\) with N >= 2 examples .*; found Tensor of shape \(5,\)$"),
    (torch.zeros(1, 3), r"found Tensor of shape \(1, 3\)$"),
    ({"labels": torch.zeros(3)}, "dict with key 'data'\\); found NoneType$"),
    (torch.full((4, 1, 8, 8), 255.0), "float images in"),
    ({"data": torch.zeros(4, 2), "labels": torch.zeros(3)}, "4 non-negative integers"),
])
def test_bad_tensor_files_are_explained(tmp_path, content, message):
    torch.save(content, tmp_path / "bad.pt")
    with pytest.raises(DataError, match=message):
        sources.load_tensor_file(str(tmp_path / "bad.pt"))


def test_augmentations_act_per_image():
    torch.manual_seed(0)
    x = torch.arange(64 * 2 * 10 * 10, dtype=torch.float32).reshape(64, 2, 10, 10)
    flipped = random_flip(x)
    is_flipped = [torch.equal(f, o.flip(-1)) for f, o in zip(flipped, x)]
    assert all(torch.equal(f, o) or s for f, o, s in zip(flipped, x, is_flipped)) and 10 < sum(is_flipped) < 54
    crops = random_crop(x, 8)
    windows = [(i, j) for i in range(3) for j in range(3)]
    found = [next(w for w in windows if torch.equal(c, o[:, w[0]:w[0] + 8, w[1]:w[1] + 8])) for c, o in zip(crops, x)]
    assert len(set(found)) > 4                                   # positions differ between images
    assert torch.equal(center_crop(x, 8), x[..., 1:9, 1:9])


def test_device_batches_shuffle_and_shard_like_a_distributed_sampler():
    data, labels = torch.arange(100)[:, None], torch.arange(100)
    seen = []
    for rank in range(2):
        batches = list(DeviceBatches(data, labels, batch_size=10, rank=rank, world_size=2, seed=1))
        assert len(batches) == 5 and all(torch.equal(x[:, 0], y) for x, y in batches)
        seen += torch.cat([y for _, y in batches]).tolist()
    assert sorted(seen) == list(range(100))                     # every example once per epoch
    for world_size, batches in ((1, 2), (2, 1)):                # 25 examples: whole batches of 10 only
        served = [y for rank in range(world_size) for _, y in DeviceBatches(data[:25], labels[:25], 10, rank,
                                                                            world_size)]
        assert len(served) == world_size * batches and all(len(y) == 10 for y in served)
    loader = DeviceBatches(data, labels, batch_size=10)
    assert not torch.equal(next(iter(loader))[1], next(iter(loader))[1])   # a new order each epoch


def test_paired_data_keeps_each_example_with_its_noise_through_shuffling_and_splitting():
    """Reflow's pairs (data, labels, noise): every batch, from the training device or through a
    DataLoader, and both splits of the data module, serve each example with its own noise; the
    quality metrics see the pairs decoded by the teacher's codec."""
    from types import SimpleNamespace

    from torch.utils.data import DataLoader

    from {{ cookiecutter.package_name }}.codecs import FeatureRange
    from {{ cookiecutter.package_name }}.config import load_config
    from {{ cookiecutter.package_name }}.data import PairedDataModule
    from {{ cookiecutter.package_name }}.data.loaders import InMemoryDataset, keep_batch

    data, labels = torch.arange(100.0)[:, None], torch.arange(100)
    noise = -10 * data
    batches = [*DeviceBatches(data, labels, batch_size=10, seed=1, noise=noise),
               *DataLoader(InMemoryDataset(data, labels, noise), batch_size=8, shuffle=True, collate_fn=keep_batch)]
    assert all(torch.equal(n, -10 * x) and torch.equal(x[:, 0].long(), y) for x, y, n in batches)
    pairs = SimpleNamespace(x0=data, noise=noise, labels=labels, class_names=["a"], cluster_sizes=None,
                            fingerprint="f")
    scaling = FeatureRange("vector")                 # the teacher's: its data spanned [0, 200]
    scaling.normalise({"low": [0.0], "high": [200.0]})
    cfg = load_config(["data.val_fraction=0.2", "data.batch_size=16"]).data
    module, reseeded = (PairedDataModule(cfg, seed, pairs, scaling) for seed in (0, 1))
    module.setup()
    assert (len(module.train_set), len(module.val_set)) == (80, 20) and module.class_names == ["a"]
    for x, y, n in [*module.train_dataloader(), *module.val_dataloader()]:
        assert torch.equal(n, -10 * x) and torch.equal(x[:, 0].long(), y)
    reseeded.setup()                                        # the run's seed shuffles, the split stays
    assert torch.equal(reseeded.val_set.data, module.val_set.data)
    assert not torch.equal(next(iter(reseeded.train_dataloader()))[0], next(iter(module.train_dataloader()))[0])
    others = PairedDataModule(cfg, 0, SimpleNamespace(**{**vars(pairs), "fingerprint": "g"}), scaling)
    others.setup()                                          # other pairs: caches of their statistics apart
    assert module.fingerprint and others.fingerprint and others.fingerprint != module.fingerprint
    assert torch.equal(module.reference_images(held_out=True), module.val_set.data * 100 + 100)   # in data units


def take(loader, count: int) -> list[int]:
    """Labels of the next ``count`` batches, walking epochs as Lightning does (a new iter() per
    epoch) and stopping mid-epoch like an interrupted run."""
    served = []
    while len(served) < count:
        for _, labels in loader:
            served.append(labels.tolist())
            if len(served) == count:
                break
    return served


@pytest.mark.parametrize("stop", [3, 5, 7])          # mid-epoch, at the end of an epoch, in the second epoch
def test_device_batches_resume_with_the_batch_where_they_stopped(stop):
    data, labels = torch.arange(50)[:, None], torch.arange(50)
    uninterrupted = take(DeviceBatches(data, labels, batch_size=10, seed=3), 13)
    first = DeviceBatches(data, labels, batch_size=10, seed=3)
    before = take(first, stop)
    resumed = DeviceBatches(data, labels, batch_size=10, seed=3)
    resumed.load_state_dict(first.state_dict())
    assert before + take(resumed, 13 - stop) == uninterrupted
    assert uninterrupted[0] != uninterrupted[5]                   # each epoch has its own order


def test_dreambooths_batches_resume_with_the_subjects_and_the_class_images_where_they_stopped():
    """Two subject batches an epoch, three of class images: their places differ, and both are kept."""
    from {{ cookiecutter.package_name }}.data.loaders import PriorBatches

    def batches():
        return PriorBatches(DeviceBatches(torch.arange(4)[:, None], torch.arange(4), batch_size=2, seed=3),
                            DeviceBatches(torch.arange(10, 16)[:, None], torch.arange(10, 16), batch_size=2, seed=4))

    uninterrupted = take(batches(), 9)
    first = batches()
    before = take(first, 4)
    resumed = batches()
    resumed.load_state_dict(first.state_dict())
    assert before + take(resumed, 5) == uninterrupted


def test_dreambooths_class_images_must_fill_a_batch(project_dir):
    data = DiffusionDataModule.of_run(load_config(["data.name=digits", "data.image_size=8", "data.channels=1",
                                                   "data.batch_size=32"]))
    with pytest.raises(DataError, match="31 class images cannot fill batches of 32: raise lora.class_images"):
        data.add_prior(torch.zeros(31, 1, 8, 8, dtype=torch.uint8), 3)
    data.add_prior(torch.zeros(32, 1, 8, 8, dtype=torch.uint8), 3)
    assert data.prior.labels.tolist() == [3] * 32


def test_an_interrupted_run_trains_on_the_same_batches_as_an_uninterrupted_one(project_dir):
    """Through Lightning: the data position and the random state travel in last.ckpt, so the
    weights after 7 + 6 steps equal those after 13 straight steps (5 batches an epoch)."""
    common = ["experiment=toy2d", "data.toy_samples=200", "data.batch_size=36", "logger=csv",
              "trainer.sample_every_n_steps=1000", "trainer.val_every_n_steps=1000",
              "trainer.checkpoint_every_n_steps=1000"]
    train([*common, "name=straight", "trainer.max_steps=13"])
    train([*common, "name=resumed", "trainer.max_steps=7"])
    train([*common, "name=resumed", "trainer.max_steps=13"])
    straight, resumed = (torch.load(f"runs/{name}/checkpoints/last.ckpt", weights_only=False)
                         for name in ("straight", "resumed"))
    weights = [key for key in straight["state_dict"] if key.startswith("denoiser.")]
    assert weights and all(torch.equal(straight["state_dict"][k], resumed["state_dict"][k]) for k in weights)


def test_datamodule_splits_crops_and_serves_uint8_batches(project_dir):
    cfg = load_config(["data.name=digits", "data.image_size=8", "data.channels=1", "data.batch_size=32",
                       "data.random_crop=true"])
    data = DiffusionDataModule(cfg.data, seed=0)
    data.setup()
    assert len(data.train_set) + len(data.val_set) == 1797
    assert len(data.val_set) == round(0.05 * 1797)
    assert data.data_shape == (1, 8, 8) and data.num_classes == 10      # stored at 9x9, cropped to 8
    n = len(data.train_set)
    for indices in ([], [-1], [0, n]):
        with pytest.raises(DataError, match=re.escape(f"images={indices}: the training data has {n} images")):
            data.training_examples(indices)
    loader = data.train_dataloader()
    assert isinstance(loader, DeviceBatches)              # on the CPU, batches come straight from the tensor
    images, labels = next(iter(loader))
    assert images.shape == (32, 1, 9, 9) and images.dtype == torch.uint8 and labels.shape == (32,)
    small = DiffusionDataModule.of_run(OmegaConf.merge(cfg, {"data": {"train_size": 20}}))
    assert [len(labels) for _, labels in small.train_dataloader()] == [20]        # small data: one batch an epoch
    reseeded = DiffusionDataModule.of_run(OmegaConf.merge(cfg, {"seed": 1}))        # the run's seed shuffles
    assert torch.equal(reseeded.train_set.data, data.train_set.data)                # the same split
    assert not torch.equal(next(iter(reseeded.train_dataloader()))[0], images)


def test_training_batches_are_cropped_at_random_and_flipped_and_validation_batches_centre_cropped(project_dir):
    """On the device, per image: in training a random 8x8 window of the stored 9x9 image, mirrored or not; in
    validation the centre window (the top-left one of 9x9, as (9 - 8) // 2 = 0), never mirrored; both in [-1, 1]."""
    from types import SimpleNamespace

    cfg = load_config(["data.name=digits", "data.image_size=8", "data.channels=1", "data.random_crop=true",
                       "data.hflip=true"])
    data = DiffusionDataModule.of_run(cfg)
    images, labels = data.train_set.data[:64], data.train_set.labels[:64]
    windows = [[to_unit_range(image[:, r:r + 8, c:c + 8]) for r in (0, 1) for c in (0, 1)] for image in images]
    for trainer in (None, SimpleNamespace(training=False)):          # no trainer (sampling), or validating
        data.trainer = trainer
        served, same_labels = data.on_after_batch_transfer((images, labels))
        assert same_labels is labels and torch.equal(served, to_unit_range(images[:, :, :8, :8]))
    data.trainer = SimpleNamespace(training=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(4):
        served = data.on_after_batch_transfer((images, labels))[0]
        for image, options in zip(served, windows):
            kinds = [(k, mirrored) for k, window in enumerate(options) for mirrored in (False, True)
                     if torch.equal(image, window.flip(-1) if mirrored else window)]
            assert kinds, "not a window of its image"
            seen.update(kinds)
    assert seen == {(k, mirrored) for k in range(4) for mirrored in (False, True)}
    data.cfg.hflip = False                                  # then never mirrored
    served = data.on_after_batch_transfer((images, labels))[0]
    assert all(any(torch.equal(image, window) for window in options) for image, options in zip(served, windows))
    assert not all(any(torch.equal(image, window.flip(-1)) for window in options)
                   for image, options in zip(served, windows))


def test_training_parts_are_disjoint_subsets_of_the_training_split_and_never_move_the_held_out_set(project_dir):
    """data.train_size=N data.train_part=k: N training examples, no two parts sharing one, none
    of them held out; the held-out examples are the same whatever the part, the size or the seed."""
    def split(*overrides, seed=0):
        data = DiffusionDataModule(load_config(["data.name=digits", *overrides]).data, seed=seed)
        return data.split(1797), data

    full, _ = split()
    parts = [split("data.train_size=300", f"data.train_part={k}")[0] for k in range(5)]
    for part in parts:
        assert len(part["train"]) == 300 and torch.equal(part["val"], full["val"])
        assert set(part["train"].tolist()) <= set(full["train"].tolist())
    chosen = torch.cat([part["train"] for part in parts])
    assert len(set(chosen.tolist())) == 5 * 300                       # no example in two parts
    assert torch.equal(split(seed=7)[0]["val"], full["val"])
    assert not torch.equal(parts[0]["train"], full["train"][:300])    # a random subset, not the first examples
    served = [split("data.train_size=300", f"data.train_part={k}")[1] for k in (0, 1)]
    for data in served:
        data.setup()
    everything = load_source(served[1].cfg).data
    assert torch.equal(served[1].train_set.data, everything[parts[1]["train"]])
    assert served[0].fingerprint != served[1].fingerprint         # caches of training-set statistics tell them apart
    with pytest.raises(DataError, match=r"data.train_size=900 data.train_part=1 needs 1800 training examples, and "
                                        r"the data has 1707 .* data.train_size=853"):
        split("data.train_size=900", "data.train_part=1")


def test_inspect_reports_counts_problems_and_writes_a_preview(project_dir, tmp_path):
    write_messy_folder(tmp_path / "pics")
    report = write_report(folder_config(tmp_path / "pics"), tmp_path / "out")
    for expected in ["examples: 6", "2 unreadable", "dogs/broken.png", ".txt x1",
                     "duplicates: cats/b copy.png, cats/b.png", "classes: 2 (cats: 4, dogs: 2)", "RGBA x1",
                     "will be upscaled (smallest: cats/tiny.png, 1x1)",
                     "aspect ratios range from 1.00 to 2.00 (2 not square)", "only 6 images"]:
        assert expected in report, expected
    assert Image.open(tmp_path / "out" / "preview.png").size[0] > 8
    assert (tmp_path / "out" / "report.txt").read_text().strip() == report


def test_inspect_describes_a_folders_files_line_by_line():
    """The report of a folder described by hand, each number counted by hand: 13 images in 9 resolutions (two of them
    smaller than image_size=8 on their short side: one 8 px side is not), duplicates in two groups, 21 unreadable
    files (20 listed) and two that are not images."""
    from {{ cookiecutter.package_name }}.data.decode import Decoded
    from {{ cookiecutter.package_name }}.data.inspect import describe_files

    def image(path, width, height, mode, sha1):
        return {"path": path, "width": width, "height": height, "mode": mode, "sha1": sha1}

    files = [image("a/0.png", 8, 8, "L", "x"), image("a/1.png", 8, 8, "L", "x"), image("a/2.png", 8, 8, "RGB", "y"),
             image("a/3.png", 8, 8, "RGB", "y"), image("a/4.png", 8, 8, "RGB", "y"),
             *(image(f"a/{n}.png", n, n, "RGB", str(n)) for n in range(9, 14)),
             image("b/wide.png", 16, 8, "RGB", "w"), image("b/tiny.png", 4, 4, "L", "t"),
             image("b/tall.png", 3, 6, "RGBA", "h")]
    bad = [{"path": f"c/{i}.png", "error": "OSError: truncated"} for i in range(21)]
    said = []
    lines = describe_files(Decoded(torch.zeros(0), files=files, bad=bad, others=["notes.txt", "README"]), 8, said)
    assert lines == ["files: 13 images decoded, 21 unreadable, 2 not images",
                     *(f"  unreadable: c/{i}.png (OSError: truncated)" for i in range(20)),
                     "  not images: .txt x1, (none) x1",
                     "resolutions: 8x8 x5, 9x9 x1, 10x10 x1, 11x11 x1, 12x12 x1, 13x13 x1, 16x8 x1, 4x4 x1, ... "
                     "(9 distinct)",
                     "modes: RGB x9, L x3, RGBA x1",
                     "  duplicates: a/0.png, a/1.png",
                     "  duplicates: a/2.png, a/3.png, a/4.png"]
    assert said == [
        "21 unreadable image file(s) are skipped (listed above); data.on_bad_file=fail stops instead",
        "2 image(s) are smaller than image_size=8 and will be upscaled (smallest: b/tiny.png, 4x4)",
        "aspect ratios range from 0.50 to 2.00 (2 not square): images are centre-cropped to a square; check "
        "preview.png for cut-off subjects",
        "3 exact duplicate file(s) in 2 group(s): they count several times in training"]
    eight = [image(f"{n}.png", n + 1, n, "L", str(n)) if n == 10 else image(f"{n}.png", n, n, "L", str(n))
             for n in range(8, 16)]                          # 8 resolutions, all shown; aspects 1 to 1.1
    said = []
    assert describe_files(Decoded(torch.zeros(0), files=eight), 8, said)[1] == (
        "resolutions: 8x8 x1, 9x9 x1, 11x10 x1, 11x11 x1, 12x12 x1, 13x13 x1, 14x14 x1, 15x15 x1")
    assert said == []


def test_inspect_describes_each_feature_of_vectors_sequences_and_sets():
    """Reports worked out by hand: feature j of the vectors takes the values j and j + 2 (mean j + 1, std sqrt 2);
    a sequence's channel gathers its values over every example and step; a set's coordinate over every point."""
    from {{ cookiecutter.package_name }}.data.decode import Decoded
    from {{ cookiecutter.package_name }}.data.inspect import describe_values

    vectors = torch.arange(10.0)[None] + torch.tensor([[0.0], [2.0]])
    assert describe_values(Decoded(vectors), "vector") == [
        "kind: vectors of 10 numbers", *(f"  coordinate {j}: from {j} to {j + 2}, mean {j + 1}, std 1.414"
                                        for j in range(8)), "  ... and 2 more"]
    assert describe_values(Decoded(vectors[:, :8]), "vector")[-1] == "  coordinate 7: from 7 to 9, mean 8, std 1.414"
    nine = describe_values(Decoded(vectors[:, :9], conditions=vectors[:, :9]), "vector")
    assert nine[9:] == ["  ... and 1 more", "conditions: 9 per example",
                        *(f"  condition {j}: from {j} to {j + 2}, mean {j + 1}, std 1.414" for j in range(8))]
    sequences = torch.tensor([[[0.0, 1.0, 2.0], [10.0, 10.0, 10.0]], [[3.0, 4.0, 5.0], [10.0, 10.0, 10.0]]])
    assert describe_values(Decoded(sequences, conditions=torch.tensor([[1.0], [3.0]])), "sequence") == [
        "kind: sequences of 2 channel(s) over 3 steps", "  channel 0: from 0 to 5, mean 2.5, std 1.871",
        "  channel 1: from 10 to 10, mean 10, std 0", "conditions: 1 per example",
        "  condition 0: from 1 to 3, mean 2, std 1.414"]
    sets = torch.tensor([[[0.0, 5.0], [1.0, 5.0], [2.0, 5.0]], [[3.0, 5.0], [4.0, 5.0], [5.0, 5.0]]])
    assert describe_values(Decoded(sets), "set") == [
        "kind: sets of up to 3 points of 2 numbers", "  coordinate 0: from 0 to 5, mean 2.5, std 1.871",
        "  coordinate 1: from 5 to 5, mean 5, std 0", "points per set: 3 to 3, median 3 (all the same size: no mask)"]
    sets[0, 2] = torch.nan                                  # a missing point
    assert describe_values(Decoded(sets), "set")[-1] == "points per set: 2 to 3, median 2"


def test_the_preview_shows_a_row_of_eight_per_class_up_to_16_classes_else_64_spread_evenly():
    """Image n is filled with the value n, so each tile says which image it is. With labels and up to 16 classes,
    row k holds the first 8 images of class k, blank (0) after the last; else 64 images evenly spread, the first and
    the last among them. 2D points: up to 2000; other vectors: none; sequences and sets: the first 16."""
    from {{ cookiecutter.package_name }}.data.decode import Decoded
    from {{ cookiecutter.package_name }}.data.inspect import preview

    images = torch.arange(200, dtype=torch.uint8)[:, None, None, None].expand(200, 1, 6, 6).clone()
    images[:, :, 0] = 255                                   # a border that the centre crop to 4 cuts off
    labels = torch.tensor([0, 2] * 5 + [1] * 190)           # class 0: images 0, 2, ..., 8; class 2: 1, 3, ..., 9
    tiles, names = preview(Decoded(images, labels), 4)
    assert names == ["0", "1", "2"] and tiles.shape == (24, 1, 4, 4) and tiles.dtype == torch.uint8
    assert tiles[:, 0, 0, 0].tolist() == [0, 2, 4, 6, 8, 0, 0, 0, *range(10, 18), 1, 3, 5, 7, 9, 0, 0, 0]
    assert (tiles == tiles[:, :, :1, :1]).all()             # each tile one value: the border is cropped off
    assert preview(Decoded(images, labels, ["cat", "dog", "owl"]), 4)[1] == ["cat", "dog", "owl"]
    assert len(preview(Decoded(images, torch.arange(200) % 16), 4)[0]) == 16 * 8
    for data in (Decoded(images[:127], torch.arange(127) % 17), Decoded(images[:127])):
        tiles, names = preview(data, 4)
        assert names == [] and tiles[:, 0, 0, 0].tolist() == list(range(0, 127, 2))    # 0, 2, ..., 126
    assert preview(Decoded(images[:10]), 4)[0][:, 0, 0, 0].tolist() == list(range(10))
    points = torch.randn(2500, 2)
    assert torch.equal(preview(Decoded(points), 4)[0], points[:2000]) and preview(Decoded(points[:, :1]), 4)[0] is None
    sequences = torch.randn(20, 2, 5)
    assert torch.equal(preview(Decoded(sequences), 4)[0], sequences[:16])
    floats = images.float() / 127.5 - 1                     # a tensor file's images in [-1, 1]: shown as the same
    for labelled in (labels, None):
        (tiles, names), (expected, expected_names) = (preview(Decoded(data, labelled), 4) for data in (floats, images))
        assert torch.equal(tiles, expected) and names == expected_names


def test_the_class_counts_are_listed_and_imbalance_over_ten_to_one_is_warned():
    from {{ cookiecutter.package_name }}.data.decode import Decoded
    from {{ cookiecutter.package_name }}.data.inspect import describe_labels

    def described(labels, names=()):
        said = []
        return describe_labels(Decoded(torch.zeros(0), torch.tensor(labels), list(names)), said), said

    assert described([0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]) == (["classes: 2 (0: 10, 1: 2)"], [])
    assert described([0] * 20 + [1] * 2)[1] == []           # ten to one
    assert described([0] * 21 + [1] * 2)[1] == ["classes are unbalanced: 21 images in the largest, 2 in the smallest"]
    assert described([0, 1], ["cat", "dog", "owl"]) == (
        ["classes: 3 (cat: 1, dog: 1, owl: 0)"], ["classes are unbalanced: 1 images in the largest, 0 in the smallest"])
    assert described(list(range(20)))[0] == [f"classes: 20 ({', '.join(f'{k}: 1' for k in range(20))})"]
    assert described(list(range(21)))[0] == [f"classes: 21 ({', '.join(f'{k}: 1' for k in range(20))}, ...)"]
    assert describe_labels(Decoded(torch.zeros(0)), []) == ["labels: none"]


def test_a_feature_summary_skips_missing_values_and_gives_one_value_a_spread_of_0():
    from {{ cookiecutter.package_name }}.data.inspect import feature_summary

    assert feature_summary(torch.tensor([1.0, torch.nan, 3.0])) == "from 1 to 3, mean 2, std 1.414"
    assert feature_summary(torch.tensor([torch.nan, 2.5])) == "from 2.5 to 2.5, mean 2.5, std 0"
    assert feature_summary(torch.tensor([torch.nan, torch.inf])) == "no finite values"


@pytest.mark.parametrize("content, kind, expected, absent", [
    (torch.zeros(1000, 1, 2, 2, dtype=torch.uint8), "auto", ["stored as (1, 2, 2) torch.uint8"], ["only"]),
    (torch.zeros(999, 1, 2, 2, dtype=torch.uint8), "auto", ["only 999 images: diffusion models need thousands"], []),
    (torch.zeros(999, 1, 2, 2), "auto", ["stored as (1, 2, 2) torch.float32", "only 999 images"], []),
    (torch.randn(999, 8), "auto", ["kind: vectors of 8 numbers"], ["only"]),
    (torch.randn(4, 8, 3), "auto", ["the sequences are read as 8 channels over 3 steps"], ["only 4 images"]),
    ({"data": torch.randn(4, 3, 2), "mask": torch.tensor([[1, 1, 0]] * 4)}, "set", ["no warnings"], []),
    (torch.tensor([[0.0, 1.0], [torch.nan, 2.0], [1.0, 1.0]]), "auto", ["1 example(s) hold NaN or Inf values"], []),
    ({"data": torch.zeros(23, 2), "labels": torch.tensor([0] * 21 + [1] * 2)}, "auto",
     ["classes are unbalanced: 21 images in the largest, 2 in the smallest"], []),
])
def test_the_data_report_names_the_file_and_warns_of_what_training_would_do(tmp_path, content, kind, expected,
                                                                          absent):
    from {{ cookiecutter.package_name }}.data.inspect import data_report

    torch.save(content, tmp_path / "data.pt")
    cfg = load_config(["data.name=tensor_file", f"data.root={tmp_path / 'data.pt'}", f"data.kind={kind}"]).data
    report = data_report(cfg)[0]
    assert report.startswith(f"data.name=tensor_file  data.root={tmp_path / 'data.pt'}\nexamples: ")
    assert all(line in report for line in expected) and not any(line in report for line in absent), report


def test_the_data_report_of_built_in_data_names_no_folder(project_dir):
    from {{ cookiecutter.package_name }}.data.inspect import data_report

    assert data_report(load_config(["data.name=toy2d", "model.name=mlp"]).data)[0].startswith(
        "data.name=toy2d\nexamples: ")


def test_inspect_data_command(project_dir, capsys):
    assert main(["inspect-data", "experiment=toy2d"]) == 0
    assert "examples: 20000" in capsys.readouterr().out
    assert (project_dir / "runs" / "toy2d" / "inspect" / "preview.png").is_file()


def test_lightning_trains_across_epochs_from_device_batches(project_dir):
    """The loader as Lightning sees it: an iterable of batches with a length and a new
    shuffle each epoch, no DataLoader (on a GPU the same object holds GPU tensors)."""
    run = train(["experiment=digits", "name=device", "model.unet.channels=8", "trainer.max_steps=120",
                 "trainer.val_every_n_steps=60", "trainer.sample_every_n_steps=1000", "sampling.steps=2",
                 "data.batch_size=16"])
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 120  # > 1 epoch of 106


def test_the_host_memory_loader_fetches_whole_batches():
    from torch.utils.data import DataLoader

    from {{ cookiecutter.package_name }}.data.loaders import InMemoryDataset, keep_batch

    data, labels = torch.arange(10)[:, None], torch.arange(10) * 2
    batches = list(DataLoader(InMemoryDataset(data, labels), batch_size=4, collate_fn=keep_batch))
    assert [len(x) for x, _ in batches] == [4, 4, 2] and torch.equal(batches[1][1], torch.tensor([8, 10, 12, 14]))


def test_a_large_photo_is_decoded_small_but_reported_at_its_size(tmp_path):
    from sklearn.datasets import load_sample_images

    photo = Image.fromarray(load_sample_images().images[1]).resize((2400, 1800))
    photo.save(tmp_path / "big.jpg", quality=90)
    decoded = decode_folder(tmp_path, 32, 3, labels_from_subfolders=False)
    assert decoded.data.shape == (1, 3, 32, 32)
    assert (decoded.files[0]["width"], decoded.files[0]["height"]) == (2400, 1800)
    full = fit_image(photo, 32, 3).astype(int)                # decoded at full size, then resized
    assert np.abs(decoded.data[0].numpy().astype(int) - full).mean() < 6   # JPEG draft decoding: same picture


def test_only_uint8_images_are_converted():
    with pytest.raises(TypeError, match="uint8"):
        to_unit_range(torch.zeros(1, 1, 2, 2))


def test_camera_orientation_is_applied(tmp_path):
    """A wide picture, left half white, stored with EXIF orientation 6 ("rotate 90 degrees
    clockwise to display"): shown upright it is tall with the white half on top."""
    pixels = np.zeros((8, 16), dtype=np.uint8)
    pixels[:, :8] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    decoded = decode_folder(tmp_path, 8, 1, labels_from_subfolders=False)
    assert (decoded.files[0]["width"], decoded.files[0]["height"]) == (8, 16)
    image = decoded.data[0, 0].float()
    assert image[:2].mean() > 200 and image[-2:].mean() < 50      # white above, black below


@pytest.mark.parametrize("orientation, upright", [(1, (16, 8)), (3, (16, 8)), (5, (8, 16)), (6, (8, 16)),
                                                  (7, (8, 16)), (8, (8, 16))])
def test_a_picture_is_reported_at_its_upright_size(tmp_path, orientation, upright):
    """EXIF orientations 5 to 8 store the picture on its side (TIFF 6.0's Orientation tag): shown upright, a
    16x8 picture is 8 wide and 16 tall; 1 and 3 (upside down) keep it 16 wide."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.zeros((8, 16), dtype=np.uint8)).save(tmp_path / "phone.jpg", exif=exif)
    files = decode_folder(tmp_path, 8, 1, labels_from_subfolders=False).files
    assert (files[0]["width"], files[0]["height"]) == upright


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "scan.png")
    decoded = decode_folder(tmp_path, 64, 1, labels_from_subfolders=False)
    assert decoded.files[0]["mode"] == "I;16"
    assert abs(decoded.data.float().mean().item() - 127.5) < 2           # a full ramp, not a white image


@pytest.mark.parametrize("mode, values, expected", [
    ("I;16", np.arange(65536).reshape(256, 256), (np.arange(65536).reshape(256, 256) * 255 + 32767) // 65535),
    ("I;16", np.array([[0, 1000]]), np.array([[0, 4]])),                 # a dark scan stays dark: 16 bits' range
    ("I", np.array([[0, 250, 500, 1000]]), np.array([[0, 64, 128, 255]])),
    ("F", np.array([[-0.25, 0.0, 0.125, 0.5]]), np.array([[0, 0, 64, 255]])),
    ("F", np.zeros((2, 2)), np.zeros((2, 2))),
])
def test_deep_grayscale_is_scaled_to_8_bits_by_its_range(mode, values, expected):
    """Known answers: 16-bit values v become round(255 v / 65535) (integer arithmetic here); 32-bit integers and
    floats are scaled by 255 over their largest value, with negative values at 0 and an all-zero image black."""
    from {{ cookiecutter.package_name }}.data.decode import to_8_bit

    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    image = Image.fromarray(values.astype(dtype))
    assert image.mode == mode
    eight = to_8_bit(image)
    assert eight.mode == "L" and np.array_equal(np.asarray(eight), expected)


@pytest.mark.parametrize("content, message", [
    (torch.zeros(4, 2, dtype=torch.complex64), "complex64"),
    (torch.zeros(4, 2, dtype=torch.bool), "bool"),
    ({"data": torch.zeros(4, 2), "labels": torch.tensor([0.0, 1.5, 2.0, 0.0])}, "whole class numbers"),
    ({"data": torch.zeros(4, 2), "labels": torch.tensor([0, 1, 10**9, 2])}, "from 0 to 1000000000"),
])
def test_tensor_files_of_the_wrong_kind_are_refused(tmp_path, content, message):
    torch.save(content, tmp_path / "bad.pt")
    with pytest.raises(DataError, match=message):
        sources.load_tensor_file(str(tmp_path / "bad.pt"))


@pytest.mark.parametrize("labels, message", [
    (torch.tensor([True, False, True, False]), "4 non-negative integers"),
    (torch.tensor([0, -1, 1, 2]), "from -1 to 2"),
    (torch.tensor([0, 1, 2, 4]), "K at most the 4 examples; found labels from 0 to 4"),
    (torch.tensor([0.0, 0.5, 1.25, 2.75, 3.5, 1.0]), r"whole class numbers 0, 1, 2, ...; found \[0.5, 1.25, 2.75\]$"),
])
def test_labels_that_are_not_class_numbers_are_refused(tmp_path, labels, message):
    torch.save({"data": torch.zeros(len(labels), 2), "labels": labels}, tmp_path / "bad.pt")
    with pytest.raises(DataError, match=message):
        sources.load_tensor_file(tmp_path / "bad.pt")


def test_two_examples_are_data_enough(tmp_path):
    torch.save(torch.zeros(2, 3), tmp_path / "two.pt")
    assert sources.load_tensor_file(tmp_path / "two.pt").data.shape == (2, 3)


def test_whole_float_labels_become_class_numbers(tmp_path):
    torch.save({"data": torch.zeros(4, 2), "labels": torch.tensor([0.0, 1.0, 2.0, 1.0])}, tmp_path / "ok.pt")
    labels = sources.load_tensor_file(tmp_path / "ok.pt").labels
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 1, 2, 1]


def test_nonfinite_values_are_reported_by_inspect_and_refused_by_training(project_dir, tmp_path):
    signals = torch.randn(10, 2)
    signals[3, 1] = float("nan")
    torch.save(signals, tmp_path / "signals.pt")
    overrides = ["data.name=tensor_file", f"data.root={tmp_path / 'signals.pt'}", "model.name=mlp"]
    report = write_report(load_config(overrides).data, tmp_path / "out")
    assert "1 example(s) hold NaN or Inf values" in report
    with pytest.raises(DataError, match="index 3"):
        DiffusionDataModule(load_config(overrides).data).setup()


def test_images_smaller_than_the_training_size_are_refused(project_dir, tmp_path):
    torch.save(torch.zeros(6, 1, 4, 4, dtype=torch.uint8), tmp_path / "tiny.pt")
    cfg = load_config(["data.name=tensor_file", f"data.root={tmp_path / 'tiny.pt'}", "data.image_size=8"]).data
    with pytest.raises(DataError, match="data.image_size=4"):
        DiffusionDataModule(cfg).setup()
    torch.save(torch.zeros(6, 1, 8, 10, dtype=torch.uint8), tmp_path / "wide.pt")      # large enough, not square
    cfg = load_config(["data.name=tensor_file", f"data.root={tmp_path / 'wide.pt'}", "data.image_size=8"]).data
    with pytest.raises(DataError, match="the images are 8x10, but training crops squares"):
        DiffusionDataModule(cfg).setup()


@pytest.mark.parametrize("largest, refused", [(1e6, False), (-1.5e6, True), (2e6, True)])
def test_values_far_beyond_the_noise_levels_scale_are_refused_whatever_their_sign(largest, refused):
    from {{ cookiecutter.package_name }}.data.datamodule import value_problem

    data = torch.tensor([[0.0, 1.0], [largest, 0.5]])
    assert value_problem(data) == (f"values reach {abs(largest):.3g}: scale the data to about unit size (the noise "
                                   "levels and the networks assume a standard deviation near diffusion.sigma_data)"
                                   if refused else None)


def test_broken_links_loops_and_pipes_in_a_folder_are_listed_not_fatal(project_dir, tmp_path):
    import os

    pics = tmp_path / "pics"
    write_messy_folder(pics)
    (pics / "cats" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (pics / "cats" / "loop.png").symlink_to(pics / "cats" / "loop.png")
    os.mkfifo(pics / "cats" / "pipe.png")                     # reading it would block forever
    decoded = load_source(folder_config(pics))
    bad = {b["path"]: b["error"] for b in decoded.bad}
    assert "symbolic link" in bad["cats/gone.png"] and "symbolic link" in bad["cats/loop.png"]
    assert "named pipe" in bad["cats/pipe.png"] and len(decoded.data) == 6
    with pytest.raises(DataError, match="pipe.png"):
        DiffusionDataModule(folder_config(pics, "data.on_bad_file=fail")).setup()


def planted_clusters(sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffled 8x8 images of three patterns (left half bright, top half bright, all dark), each
    with pixel noise far smaller than the distance between patterns, and the pattern of each."""
    generator = torch.Generator().manual_seed(0)
    patterns = torch.zeros(3, 1, 8, 8)
    patterns[0, :, :, :4] = 200
    patterns[1, :, :4, :] = 200
    which = torch.cat([torch.full((n,), k) for k, n in enumerate(sizes)])
    which = which[torch.randperm(len(which), generator=generator)]
    noise = torch.randint(0, 20, (len(which), 1, 8, 8), generator=generator)
    return (patterns[which] + noise).to(torch.uint8), which


def test_kmeans_finds_planted_clusters_and_numbers_them_from_the_largest():
    images, which = planted_clusters([50, 30, 20])
    assert torch.equal(kmeans(thumbnails(images), 3), which)        # pattern 0 is the largest: cluster 0
    images, which = planted_clusters([20, 30, 50])
    assert torch.equal(kmeans(thumbnails(images), 3), 2 - which)
    as_floats = images.float() / 127.5 - 1                          # a tensor file's float images, in [-1, 1]
    assert torch.allclose(thumbnails(as_floats), thumbnails(images), atol=1e-6)


def test_kmeans_takes_one_cluster_or_as_many_as_examples_and_its_seed_alone_decides():
    x = torch.randn(6, 2)
    assert kmeans(x, 1).tolist() == [0] * 6 and sorted(kmeans(x, 6).tolist()) == list(range(6))
    points = torch.randn(60, 2, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    first = kmeans(points, 4, seed=3)
    torch.manual_seed(2)
    assert torch.equal(kmeans(points, 4, seed=3), first)


def test_a_cluster_that_lloyds_algorithm_empties_keeps_its_centre_and_is_numbered_last(monkeypatch):
    """Six points and k-means++ seeds at (2, 1), (5, 3) and (6, 2), worked by hand. The first pass gives
    A = {(2, 1), (1, 5), (2, 4)}, B = {(5, 3), (2, 5)}, C = {(6, 2)}; the means (5/3, 10/3), (3.5, 4), (6, 2). The
    second takes (5, 3) to C and (2, 5) to A, which empties B: its centre stays at (3.5, 4), where it wins no point
    (at the origin it would take (2, 1)). A holds 4 points, C 2 and B none: numbered 0, 1 and 2."""
    from {{ cookiecutter.package_name }}.data import clusters

    points = torch.tensor([[2.0, 1.0], [1.0, 5.0], [5.0, 3.0], [2.0, 4.0], [6.0, 2.0], [2.0, 5.0]])
    monkeypatch.setattr(clusters, "kmeans_plus_plus", lambda x, k, generator: x[[0, 2, 4]])
    assert kmeans(points, 3).tolist() == [0, 0, 1, 0, 1, 0]


def test_kmeans_refuses_more_clusters_than_distinct_examples():
    with pytest.raises(DataError, match="at least 5 examples"):
        kmeans(torch.rand(4, 2), 5)
    with pytest.raises(DataError, match="only 2 distinct"):
        kmeans(torch.tensor([[0.0, 0.0], [1.0, 1.0]]).repeat(5, 1), 3)


def test_k_means_plus_plus_draws_each_next_centre_in_proportion_to_its_squared_distance():
    """Arthur & Vassilvitskii's D^2 weighting, to the nearest centre so far: 98 points at 0, one at 1 and one at 3.
    With the first centre at 0 the second is 3 with probability 9 / (1 + 9) = 0.9 (0.75 in proportion to the
    distance); the global seed plays no part."""
    from {{ cookiecutter.package_name }}.data.clusters import kmeans_plus_plus

    x = torch.tensor([[0.0]] * 98 + [[1.0], [3.0]])
    seconds = [kmeans_plus_plus(x, 2, torch.Generator().manual_seed(seed))[:, 0].tolist() for seed in range(2000)]
    after_zero = [second for first, second in seconds if first == 0]
    assert abs(after_zero.count(3.0) / len(after_zero) - 0.9) < 4 * (0.9 * 0.1 / len(after_zero)) ** 0.5
    # The third centre: 97 points at 0, one each at 3, 20 and 23. Drawn after 0 and then 20 or 23, the other of the
    # two is 3 away from its nearest centre and the point at 3 is 3 away from 0: each is third with probability 1/2
    # (2/5 if the newest centre's distances were doubled rather than squared, 3/4 if they were cubed).
    x = torch.tensor([[0.0]] * 97 + [[3.0], [20.0], [23.0]])
    draws = [kmeans_plus_plus(x, 3, torch.Generator().manual_seed(seed))[:, 0].tolist() for seed in range(2000)]
    thirds = [third for first, second, third in draws if first == 0 and second in (20.0, 23.0)]
    assert abs(thirds.count(3.0) / len(thirds) - 0.5) < 4 * (0.25 / len(thirds)) ** 0.5
    spread = torch.randn(50, 2)
    torch.manual_seed(1)
    first = kmeans_plus_plus(spread, 3, torch.Generator().manual_seed(7))
    torch.manual_seed(2)
    assert torch.equal(kmeans_plus_plus(spread, 3, torch.Generator().manual_seed(7)), first)


def test_points_are_clustered_as_they_are_and_numbered_from_the_largest_cluster():
    """Three blobs of 2D points, 50, 30 and 20 of them, far apart: the clusters are the blobs."""
    from {{ cookiecutter.package_name }}.data.clusters import cluster_labels

    blob = torch.tensor([0] * 20 + [1] * 50 + [2] * 30)
    spread = 0.3 * torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    points = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])[blob] + spread
    labels, names = cluster_labels(points, 3, seed=0)
    assert torch.equal(labels, torch.tensor([2, 0, 1])[blob]) and names == ["cluster 0", "cluster 1", "cluster 2"]


def test_small_data_is_clustered_into_one_cluster_per_20_examples_or_one():
    from {{ cookiecutter.package_name }}.data.clusters import cluster_count

    with pytest.warns(UserWarning, match="10 examples fill only 1 cluster"):
        assert cluster_count(5, 10) == 1
    with pytest.warns(UserWarning, match="59 examples fill only 2 cluster"):
        assert cluster_count(5, 59) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cluster_count(3, 60) == 3 and cluster_count(3, 1000) == 3


def test_data_clusters_replace_the_labels_for_a_conditional_model(project_dir, tmp_path):
    images, which = planted_clusters([40, 25, 15])
    torch.save({"data": images, "labels": torch.arange(80) % 10}, tmp_path / "images.pt")
    source = ["data.name=tensor_file", f"data.root={tmp_path / 'images.pt'}", "data.image_size=8",
              "data.channels=1", "data.val_fraction=0"]
    data = DiffusionDataModule(load_config([*source, "data.clusters=3", "model.conditional=true"]).data)
    data.setup()
    assert data.num_classes == 3 and data.class_names == ["cluster 0", "cluster 1", "cluster 2"]
    assert torch.equal(data.train_set.labels, which) and data.cluster_sizes == [40, 25, 15]
    with pytest.raises(ConfigError, match="model.conditional=true"):
        load_config([*source, "data.clusters=3", "model.conditional=false"])


def test_small_data_gets_fewer_clusters_than_asked_with_a_warning(project_dir, tmp_path):
    images, which = planted_clusters([40, 25, 15])                     # 80 examples: at most 4 clusters of 20
    torch.save({"data": images}, tmp_path / "images.pt")
    data = DiffusionDataModule(load_config(["data.name=tensor_file", f"data.root={tmp_path / 'images.pt'}",
                                            "data.image_size=8", "data.channels=1", "data.val_fraction=0",
                                            "data.clusters=50", "model.conditional=true"]).data)
    with pytest.warns(UserWarning, match="data.clusters=50, but 80 examples fill only 4 cluster"):
        data.setup()
    assert data.num_classes == 4 and len(data.cluster_sizes) == 4 and sum(data.cluster_sizes) == 80
    for k in range(4):                                                 # a fourth cluster splits a pattern
        assert len(set(which[data.train_set.labels == k].tolist())) == 1


def test_a_cluster_guided_run_keeps_its_cluster_sizes_in_checkpoint_and_export(project_dir, tmp_path):
    images, _ = planted_clusters([40, 25, 15])
    torch.save({"data": images}, tmp_path / "images.pt")               # no labels at all
    train(["experiment=digits", "name=clusters", "data.name=tensor_file", f"data.root={tmp_path / 'images.pt'}",
           "data.val_fraction=0", "data.clusters=3", "model.conditional=true", "model.unet.channels=8",
           "logger=csv", "trainer.max_steps=2", "trainer.sample_every_n_steps=1000"])
    assert main(["export", "run=runs/clusters", "out=exported"]) == 0
    for saved in ("runs/clusters", "exported"):
        model, _ = load_run(saved)
        assert model.draws_clusters and model.cluster_sizes == [40, 25, 15]
    cfg = student_config(load_config(["experiment=ect", "distill.teacher=exported"]), model.config)
    student = new_student(cfg, model)                                      # and so do its students
    assert student.draws_clusters and student.cluster_sizes == [40, 25, 15]


def test_samples_of_a_cluster_guided_model_draw_each_cluster_as_often_as_the_data_holds_it(project_dir):
    cfg = load_config(["experiment=digits", "model.conditional=true", "model.unet.channels=8", "data.clusters=3"])
    config = OmegaConf.to_container(cfg, resolve=True)
    clusters = new_model(config, [1, 8, 8], ["cluster 0", "cluster 1", "cluster 2"], [40, 25, 15])
    labels, shares = clusters.default_labels(torch.arange(800)), torch.tensor([40, 25, 15]) / 80
    for start, n in [(0, 800), *((start, 20) for start in range(0, 780, 7))]:   # all, and any run of 20 samples
        counts = torch.bincount(labels[start:start + n], minlength=3)
        assert (counts - n * shares).abs().max() <= 2
    classes = new_model(config, [1, 8, 8], ["a", "b", "c"])    # class labels: in turn
    assert torch.equal(classes.default_labels(torch.arange(7)), torch.tensor([0, 1, 2, 0, 1, 2, 0]))
