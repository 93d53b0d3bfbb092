"""Data sources, the decode cache and the data module. Images arrive as uint8 (N, C, H, W);
toy data and signals as float (N, ...)."""
from .datamodule import DiffusionDataModule
from .images import DataError, Decoded, decode_folder, fit_image, to_uint8, to_unit_range
from .loaders import DeviceBatches, InMemoryDataset
from .sources import TORCHVISION_SETS, load_source, load_tensor_file
from .toy import TOY_SHAPES, make_toy2d

__all__ = ["DataError", "Decoded", "DeviceBatches", "DiffusionDataModule", "InMemoryDataset", "TORCHVISION_SETS",
           "TOY_SHAPES", "decode_folder", "fit_image", "load_source", "load_tensor_file", "make_toy2d",
           "to_uint8", "to_unit_range"]
