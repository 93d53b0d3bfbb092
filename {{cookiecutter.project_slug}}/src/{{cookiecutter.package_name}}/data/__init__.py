"""Data sources, the decode cache and the data module. Images arrive as uint8 (N, C, H, W);
toy data and signals as float (N, ...)."""
from .datamodule import DiffusionDataModule, PairedDataModule
from .decode import Decoded, decode_folder, fit_image
from .loaders import DeviceBatches, InMemoryDataset
from .sources import SOURCES, TORCHVISION_SETS, load_source, load_tensor_file
from .toy import TOY_SHAPES, make_toy2d

__all__ = ["Decoded", "DeviceBatches", "DiffusionDataModule", "InMemoryDataset", "PairedDataModule", "SOURCES",
           "TORCHVISION_SETS", "TOY_SHAPES", "decode_folder", "fit_image", "load_source", "load_tensor_file",
           "make_toy2d"]
