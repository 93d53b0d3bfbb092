import numpy as np
import pytest
import torch
from PIL import Image

from {{ cookiecutter.package_name }}.data import DataError, DiffusionDataModule, TOY_SHAPES, load_image_folder, make_toy2d
from {{ cookiecutter.package_name }}.data.images import fit_image, load_torchvision, to_uint8, to_unit_range


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


def write_images(root):
    """A small folder as users have them: modes L, RGB, RGBA, P; sizes and aspect ratios mixed;
    one corrupt file, one text file, class subfolders."""
    rng = np.random.default_rng(0)
    (root / "cats").mkdir(parents=True)
    (root / "dogs" / "puppies").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(root / "cats" / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(root / "cats" / "b.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 4), dtype=np.uint8), "RGBA").save(root / "dogs" / "c.png")
    Image.fromarray(rng.integers(0, 255, (16, 32, 3), dtype=np.uint8)).convert("P").save(root / "dogs" / "puppies" / "d.gif")
    (root / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "cats" / "notes.txt").write_text("not an image")


def test_image_folder_converts_resizes_labels_and_reports_bad_files(tmp_path):
    write_images(tmp_path)
    with pytest.warns(UserWarning, match=r"(?s)skipped 1 unreadable image.*broken\.png"):
        images, labels, names = load_image_folder(str(tmp_path), 8, 3, labels_from_subfolders=True)
    assert images.shape == (4, 3, 8, 8) and images.dtype == torch.uint8
    assert names == ["cats", "dogs"]
    assert labels.tolist() == [0, 0, 1, 1]                 # puppies/ belongs to dogs


def test_transparent_pixels_become_white_and_grayscale_is_one_channel():
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert fit_image(clear, 4, 1).shape == (1, 4, 4)
    assert np.all(fit_image(clear, 4, 3) == 255)


def test_centre_crop_keeps_the_middle():
    wide = np.zeros((10, 30), dtype=np.uint8)
    wide[:, 10:20] = 255                                    # a white middle third
    assert np.all(fit_image(Image.fromarray(wide), 10, 1) == 255)


def test_missing_or_empty_folder_gets_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        load_image_folder(str(tmp_path / "nowhere"), 8, 3, labels_from_subfolders=False)
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"no images found .*\(1 other files\)"):
        load_image_folder(str(tmp_path), 8, 3, labels_from_subfolders=False)


def test_folder_of_only_broken_images_gets_a_clear_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="none of the 1 image files"), pytest.warns(UserWarning, match="x.png"):
        load_image_folder(str(tmp_path), 8, 3, labels_from_subfolders=False)


def test_loose_images_with_class_labels_requested_are_refused(tmp_path):
    write_images(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "loose.png")
    with pytest.raises(DataError, match="loose.png"), pytest.warns(UserWarning):
        load_image_folder(str(tmp_path), 8, 3, labels_from_subfolders=True)


def test_offline_torchvision_download_names_dataset_folder_and_fix(tmp_path, monkeypatch):
    import torchvision

    class Offline:
        def __init__(self, root, train, download):
            raise RuntimeError("Dataset not found") if not download else OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    with pytest.raises(DataError) as error:
        load_torchvision("mnist", str(tmp_path / "data"), 32, 1)
    message = str(error.value)
    assert "MNIST" in message and str(tmp_path / "data") in message and "download=True" in message


def test_datamodule_splits_and_serves_uint8_batches(project_dir):
    from omegaconf import OmegaConf

    from {{ cookiecutter.package_name }}.config import load_config

    cfg = load_config(["data.name=digits", "data.image_size=8", "data.channels=1", "data.batch_size=32"])
    data = DiffusionDataModule(cfg.data, seed=0)
    data.setup()
    assert len(data.train_set) + len(data.val_set) == 1797
    assert len(data.val_set) == round(0.05 * 1797)
    assert data.data_shape == (1, 8, 8) and data.num_classes == 10
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (32, 1, 8, 8) and images.dtype == torch.uint8 and labels.shape == (32,)
    assert OmegaConf.is_config(cfg)
