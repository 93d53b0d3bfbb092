"""Sample quality: FID (Heusel et al. 2017) and KID (Binkowski et al. 2018), pure torch and
torchmetrics, no Lightning.

    features.py   the feature extractors: Inception-v3 (the standard) or a network of your own
    quality.py    reference statistics (computed once, cached), samples drawn in shares that do
                  not depend on the batch size or the number of processes, FID and KID

Both the training callback (``callbacks/quality.py``) and the ``evaluate`` command use these.
"""
