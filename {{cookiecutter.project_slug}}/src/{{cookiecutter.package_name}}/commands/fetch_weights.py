"""``fetch-weights``: download the Inception weights FID needs, on a machine with internet, to
copy to one without (a cluster node, say)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import parse_command
from ..errors import OfflineWeights
from ..evaluation.features import INCEPTION_FILE, fetch_inception_weights, inception_weights

USAGE = f"""\
fetch-weights [path=FILE] download {INCEPTION_FILE} (about 100 MB, for FID) into torch's cache,
                          or to FILE; offline machines then read it from there or evaluation.extractor_weights"""


@dataclass
class FetchWeightsCommand:
    path: Optional[str] = None           # where to save the file; default: torch's cache


def run(overrides: list[str]) -> Path:
    options, _ = parse_command(overrides, FetchWeightsCommand, "fetch-weights")
    path = inception_weights(options.path)
    try:
        fetch_inception_weights(path)
    except Exception as error:
        raise OfflineWeights(f"could not download {INCEPTION_FILE} to {path} ({type(error).__name__}: {error}); "
                             "run fetch-weights on a machine with internet") from None
    print(f"saved {path}. On another machine, put it in {inception_weights(None).parent} "
          f"or set evaluation.extractor_weights=<its path>")
    return path
