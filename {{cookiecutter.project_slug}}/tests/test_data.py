import io

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.commands.inspect_data import write_report
from {{ cookiecutter.package_name }}.commands.train import run as train
from {{ cookiecutter.package_name }}.config import ConfigError, load_config
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
from {{ cookiecutter.package_name }}.runs import load_run, new_model


@pytest.mark.parametrize("shape", sorted(TOY_SHAPES))
def test_toy_shapes_are_reproducible_2d_point_clouds(shape):
    points, labels = make_toy2d(shape, 500, seed=3)
    assert points.shape == (500, 2) and points.dtype == torch.float32
    assert 0.3 < points.std() < 3                          # roughly unit scale
    assert torch.equal(points, make_toy2d(shape, 500, seed=3)[0])
    assert labels is None or (labels.shape == (500,) and labels.dtype == torch.int64)


def test_gaussian_mixture_labels_name_the_nearest_mode():
    points, labels = make_toy2d("gaussians", 1000)
    angle = torch.atan2(points[:, 1], points[:, 0])
    assert torch.equal(torch.round(angle / (2 * torch.pi / 8)).long() % 8, labels)


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
    assert "truncated" in next(b["error"] for b in decoded.bad if b["path"] == "dogs/cut.png")
    assert decoded.others == ["cats/notes.txt"]


def test_skipped_files_are_reported_or_fatal_as_configured(project_dir, tmp_path):
    write_messy_folder(tmp_path / "pics")
    data = DiffusionDataModule(folder_config(tmp_path / "pics"))
    with pytest.warns(UserWarning, match=r"(?s)skipped 2 unreadable.*broken\.png"):
        data.setup()
    strict = DiffusionDataModule(folder_config(tmp_path / "pics", "data.on_bad_file=fail"))
    with pytest.raises(DataError, match=r"(?s)broken\.png.*on_bad_file=skip"):
        strict.setup()


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


def test_tensor_files_images_and_signals(project_dir, tmp_path):
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    torch.save({"data": images, "labels": torch.arange(10) % 2}, tmp_path / "images.pt")
    signals = np.random.default_rng(0).standard_normal((20, 1, 64)).astype(np.float32)
    np.save(tmp_path / "signals.npy", signals)
    decoded = load_source(load_config(["data.name=tensor_file", f"data.root={tmp_path / 'images.pt'}"]).data)
    assert torch.equal(decoded.data, images) and decoded.class_names == ["0", "1"]
    decoded = load_source(load_config(["data.name=tensor_file", f"data.root={tmp_path / 'signals.npy'}"]).data)
    assert decoded.data.shape == (20, 1, 64) and decoded.labels is None


@pytest.mark.parametrize("content, message", [
    (torch.zeros(5), "shape \\(N, ...\\)"),
    ({"labels": torch.zeros(3)}, "dict with key 'data'"),
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
    module = PairedDataModule(load_config(["data.val_fraction=0.2", "data.batch_size=16"]).data, 0, pairs, scaling)
    module.setup()
    assert (len(module.train_set), len(module.val_set)) == (80, 20) and module.class_names == ["a"]
    for x, y, n in [*module.train_dataloader(), *module.val_dataloader()]:
        assert torch.equal(n, -10 * x) and torch.equal(x[:, 0].long(), y)
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
    loader = data.train_dataloader()
    assert isinstance(loader, DeviceBatches)              # on the CPU, batches come straight from the tensor
    images, labels = next(iter(loader))
    assert images.shape == (32, 1, 9, 9) and images.dtype == torch.uint8 and labels.shape == (32,)


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


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "scan.png")
    decoded = decode_folder(tmp_path, 64, 1, labels_from_subfolders=False)
    assert decoded.files[0]["mode"] == "I;16"
    assert abs(decoded.data.float().mean().item() - 127.5) < 2           # a full ramp, not a white image


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


def test_whole_float_labels_become_class_numbers(tmp_path):
    torch.save({"data": torch.zeros(4, 2), "labels": torch.tensor([0.0, 1.0, 2.0, 1.0])}, tmp_path / "ok.pt")
    assert sources.load_tensor_file(tmp_path / "ok.pt").labels.tolist() == [0, 1, 2, 1]


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


def test_kmeans_refuses_more_clusters_than_distinct_examples():
    with pytest.raises(DataError, match="at least 5 examples"):
        kmeans(torch.rand(4, 2), 5)
    with pytest.raises(DataError, match="only 2 distinct"):
        kmeans(torch.tensor([[0.0, 0.0], [1.0, 1.0]]).repeat(5, 1), 3)


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
