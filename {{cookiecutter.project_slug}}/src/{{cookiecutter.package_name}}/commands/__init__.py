"""One module per command. Each has ``USAGE`` (its line of ``--help``) and ``run(overrides)``,
which reads ``key=value`` pairs, calls the library and saves what it made."""
from . import bench, doctor, evaluate, export, fetch_weights, guidance_grid, illusion, inspect_data, interpolate, restore, sample, train, visualize

COMMANDS = {"train": train, "sample": sample, "evaluate": evaluate, "inspect-data": inspect_data,
            "fetch-weights": fetch_weights, "bench": bench, "visualize": visualize,
            "interpolate": interpolate, "guidance-grid": guidance_grid, "illusion": illusion,
            "restore": restore, "export": export, "doctor": doctor}
