"""The transition from memorisation to generalisation on your own data.

For each training-set size N, the same recipe is trained twice, on two disjoint sets of N
examples (data.train_size=N with data.train_part=0 and 1) and from different initial weights
(seed=0 and 1), and `evaluate` measures

* the copy share: how many of the first model's samples are near copies of one of its
  training examples (nearest < 1/3 of the second nearest; Yoon et al. 2023), beside the same
  share for held-out real images, the rate a model that generalises comes down to;
* how alike the two models' samples from the same noise are (cosine similarity; Kadkhodaie
  et al. 2024): models that memorise draw their own, different examples, models that
  generalise draw nearly the same new image.

It writes runs/<name>-transition/: transition.json, transition.png (both curves against N),
and per size the samples beside their nearest training images (nearest-N.png) and the two
models' samples from the same noise (twins-N.png). Run it in the project folder; it resumes:
finished runs and evaluations are kept, an interrupted one goes on where it stopped.

    python transition.py experiment=memorisation sizes=10,100,853 [samples=200] [key=value ...]

Other key=value pairs go to every `train` (e.g. trainer.max_steps=500 for a quick look).
"""
import json
import shutil
import sys
from importlib import import_module
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def project_package() -> str:
    """The package of the project in the current folder."""
    found = sorted(Path("src").glob("*/cli.py"))
    if not found:
        sys.exit("run transition.py in your project's folder (the one holding src/ and configs/)")
    return found[0].parent.name


PACKAGE = project_package()
sys.path.insert(0, "src")           # the project's package, installed or not


def command(*args: str) -> None:
    """Run `<package> args...` through the project's command line, in this process (torch and
    Lightning are imported once), stopping here if it fails."""
    print("$", PACKAGE, *args, flush=True)
    if import_module(f"{PACKAGE}.cli").main(list(args)):
        sys.exit(f"failed: {PACKAGE} {' '.join(args)}")


def measure(experiment: str, name: str, size: int, samples: int, train_overrides: list[str]) -> dict:
    """Train both parts at ``size`` examples (resuming where they stopped), then judge part 0's
    samples against its training examples and part 1's samples from the same noise."""
    runs = [f"{name}-n{size}-{part}" for part in (0, 1)]
    for part, run in enumerate(runs):
        command("train", f"experiment={experiment}", f"name={run}", *train_overrides, f"data.train_size={size}",
                f"data.train_part={part}", f"seed={part}")
    result = Path("runs") / runs[0] / "memorisation" / "memorisation.json"
    checkpoints = [Path("runs") / run / "checkpoints" / "last.ckpt" for run in runs]
    if not judged(result, checkpoints, samples):
        command("evaluate", f"run=runs/{runs[0]}", f"twin=runs/{runs[1]}", f"memorisation={samples}", "fid=false",
                "features=false")
    return json.loads(result.read_text())


def judged(result: Path, checkpoints: list[Path], samples: int) -> bool:
    """Whether ``result`` judged these checkpoints (it is newer) with this many samples."""
    return (result.is_file() and result.stat().st_mtime > max(c.stat().st_mtime for c in checkpoints)
            and json.loads(result.read_text())["samples"] == samples)


def plot(sizes: list[int], results: list[dict], path: Path) -> None:
    """Copy share (with the held-out rate) and same-noise similarity against the data size."""
    figure, (copies, alike) = plt.subplots(1, 2, figsize=(10, 3.8))
    copies.plot(sizes, [100 * r["pixels"]["copy_share"] for r in results], "o-", label="samples")
    copies.plot(sizes, [100 * r["pixels"]["held_out_copy_share"] for r in results], "s--", color="gray",
                label="held-out real images")
    copies.set(ylabel="near copies of a training image (%)", ylim=(-5, 105),
               title="copies: nearest < 1/3 of the second nearest")
    alike.plot(sizes, [r["twin"]["same_noise"] for r in results], "o-", color="C2", label="same noise")
    alike.plot(sizes, [r["twin"]["different_noise"] for r in results], "s--", color="gray", label="different noise")
    alike.set(ylabel="cosine similarity of the two models' samples", ylim=(-0.1, 1.05),
              title="two models on disjoint examples")
    for axes in (copies, alike):
        axes.set(xscale="log", xlabel="training examples per model")
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(arguments: list[str]) -> None:
    options = {"experiment": "memorisation", "sizes": "10,100,853", "samples": "200"}
    overrides = []
    for argument in arguments:
        key, _, value = argument.partition("=")
        if key in options:
            options[key] = value
        else:
            overrides.append(argument)
    sizes = [int(size) for size in options["sizes"].split(",")]
    name = next((o.split("=", 1)[1] for o in overrides if o.startswith("name=")), options["experiment"])
    overrides = [o for o in overrides if not o.startswith("name=")]
    results = [measure(options["experiment"], name, size, int(options["samples"]), overrides) for size in sizes]
    folder = Path("runs") / f"{name}-transition"
    folder.mkdir(parents=True, exist_ok=True)
    for size in sizes:
        for picture in ("nearest", "twins"):
            shutil.copy(Path("runs") / f"{name}-n{size}-0" / "memorisation" / f"{picture}.png",
                        folder / f"{picture}-{size}.png")
    table = [{"size": size, "copy_share": r["pixels"]["copy_share"],
              "held_out_copy_share": r["pixels"]["held_out_copy_share"], "same_noise": r["twin"]["same_noise"],
              "different_noise": r["twin"]["different_noise"]} for size, r in zip(sizes, results)]
    (folder / "transition.json").write_text(json.dumps(table, indent=1))
    plot(sizes, results, folder / "transition.png")
    print(f"\n{'examples':>9} {'copies':>7} {'held-out':>9} {'same noise':>11} {'different':>10}")
    for row in table:
        print(f"{row['size']:>9} {100 * row['copy_share']:>6.0f}% {100 * row['held_out_copy_share']:>8.0f}% "
              f"{row['same_noise']:>11.2f} {row['different_noise']:>10.2f}")
    print(f"{folder}/transition.json, transition.png, nearest-<size>.png, twins-<size>.png")


if __name__ == "__main__":
    main(sys.argv[1:])
