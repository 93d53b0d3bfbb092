"""Data sources and the data module. Images arrive as uint8 (N, C, H, W); toy data as float (N, D)."""
from .datamodule import DiffusionDataModule, InMemoryDataset, load_source
from .images import DataError, fit_image, load_image_folder
from .toy import TOY_SHAPES, make_toy2d

__all__ = ["DataError", "DiffusionDataModule", "InMemoryDataset", "TOY_SHAPES", "fit_image",
           "load_image_folder", "load_source", "make_toy2d"]
