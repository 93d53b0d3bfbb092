"""Feature extractors for FID and KID: what turns an image into the vector the metrics compare.

* ``inception``, the standard: the 2048 pool features of Inception-v3 with the weights
  torchmetrics uses (torch-fidelity's conversion of the TensorFlow FID network). Grayscale
  images are repeated to three channels. Numbers are comparable with published FIDs only
  with these weights, at 50k samples.
* ``custom``: a network of your own, named by import path (``package.module:factory``) and
  optionally a weights file: a classifier trained on your domain, because Inception features
  say little about digits or medical scans. It is called with float images in [-1, 1] with the
  data's channels, shaped (N, C, H, W), and returns (N, D) features. Without a weights file
  the factory must build the same network every time (trained, or from a fixed seed): every
  process, and every later evaluation, must measure with the same features.

Every result names its extractor. Weights are found (or fetched) before any work starts,
never in the middle of a run.
"""
from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ConfigError, MissingPackage, OfflineWeights
from ..pixels import to_unit_range

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


class InceptionFeatures(nn.Module):
    """uint8 images (N, C, H, W) -> Inception-v3 pool features (N, 2048)."""

    def __init__(self, weights: Path):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=str(weights))
        self.name, self.key = "inception-v3 (2048 pool features)", f"inception-2048-{INCEPTION_FILE}"

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images)


class CustomFeatures(nn.Module):
    """uint8 images (N, C, H, W) -> the features of a network of your own."""

    def __init__(self, net: nn.Module, name: str, key: str):
        super().__init__()
        self.net, self.name, self.key = net.eval().requires_grad_(False), name, key

    def forward(self, images: Tensor) -> Tensor:
        return self.net(to_unit_range(images)).flatten(1).float()


def inception_weights(weights: str | None) -> Path:
    """Where Inception's weights are read from: ``weights`` (evaluation.extractor_weights), or
    else torch's hub cache, where ``fetch-weights`` and torchmetrics put them."""
    if weights:
        return Path(weights).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def fetch_inception_weights(path: Path) -> Path:
    """Download the weights (about 100 MB) to ``path``."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(URL_INCEPTION_V3, str(path), progress=True)
    return path


def inception_extractor(evaluation, program: str) -> InceptionFeatures:
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        raise MissingPackage("evaluation.extractor=inception needs torch-fidelity: pip install torch-fidelity "
                             "(or evaluation.extractor=custom)") from None
    path = inception_weights(evaluation.extractor_weights)
    if not path.is_file() and evaluation.extractor_weights:
        raise ConfigError(f"evaluation.extractor_weights={evaluation.extractor_weights}: no such file")
    if not path.is_file():
        try:
            fetch_inception_weights(path)
        except Exception as error:
            raise OfflineWeights(
                f"FID needs the Inception weights {INCEPTION_FILE}, which are not in {path.parent} and could not be "
                f"downloaded ({type(error).__name__}). Where there is internet, run `{program} fetch-weights` and copy "
                f"{path} here, or set evaluation.extractor_weights=<path to {INCEPTION_FILE}>") from None
    safe_load(path, "evaluation.extractor_weights")
    return InceptionFeatures(path)


def custom_extractor(evaluation, program: str) -> CustomFeatures:
    where = evaluation.extractor_module or ""
    module_name, _, factory_name = where.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"evaluation.extractor_module={where!r} does not name a network: give it as "
                          f"package.module:factory, importable from here ({type(error).__name__}: {error})") from None
    net = factory()
    key = where
    if evaluation.extractor_weights:
        path = Path(evaluation.extractor_weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"evaluation.extractor_weights={evaluation.extractor_weights}: no such file")
        net.load_state_dict(safe_load(path, "evaluation.extractor_weights"))
        key += "-" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return CustomFeatures(net, f"custom {where}" + (f" ({Path(evaluation.extractor_weights).name})"
                                                    if evaluation.extractor_weights else ""), key)


def safe_load(path: Path, key: str) -> dict:
    """A weights file read without running code it might hold (tensors and plain values only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConfigError(f"{key}={path} is not a weights file this project loads (tensors only; "
                          f"{type(error).__name__})") from None


EXTRACTORS = {"inception": inception_extractor, "custom": custom_extractor}


def build_extractor(evaluation, program: str) -> nn.Module:
    """The configured extractor, with ``name`` and a cache ``key``; fails at once, with one
    message saying what to do, when its weights are missing and cannot be fetched."""
    return EXTRACTORS[evaluation.extractor](evaluation, program)
