"""One module per command, a leaf: no command imports another. Each has ``USAGE`` (its lines of
``--help``) and ``run(overrides)``, which reads ``key=value`` pairs, loads what it needs, calls
the library and saves what it made. A new command is a module here and a line in ``COMMANDS``."""
from . import (
    autoencoder,
    bench,
    doctor,
    evaluate,
    export,
    fetch_weights,
    guidance_grid,
    illusion,
    inspect_data,
    interpolate,
    restore,
    sample,
    score_distill,
    train,
    visualize,
)

COMMANDS = {"train": train, "sample": sample, "evaluate": evaluate, "inspect-data": inspect_data,
    "fetch-weights": fetch_weights, "bench": bench, "visualize": visualize,
    "interpolate": interpolate, "guidance-grid": guidance_grid, "illusion": illusion,
    "restore": restore, "score-distill": score_distill, "export": export, "autoencoder": autoencoder, "doctor": doctor}
