"""A stand-in feature extractor for GPU checks where Inception's weights cannot be fetched: a
fixed random projection of 8x8-pooled images. It checks the FID plumbing, not quality."""
import torch


class Features(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.project = torch.nn.Linear(3 * 64, 64)

    def forward(self, images):
        return self.project(torch.nn.functional.adaptive_avg_pool2d(images, 8).flatten(1))
