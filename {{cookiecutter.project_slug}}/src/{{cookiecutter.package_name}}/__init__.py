"""Train, sample and steer diffusion and flow models on your own data."""
__version__ = "0.1.0"
