"""The template: bake option combinations, check what it writes, run what it generates."""
import json
import os
import py_compile
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, run_commands, run_in

DEFAULTS = json.loads((REPO / "cookiecutter.json").read_text())

# Every choice of every question appears at least once, in combinations that make sense.
COMBINATIONS = [
    {},
    {"dataset": "toy2d", "network": "mlp", "objective": "flow", "conditioning": "class", "logger": "csv"},
    {"dataset": "toy2d", "network": "mlp", "objective": "eps", "hardware": "colab-t4"},
    {"dataset": "image_folder", "network": "dit", "objective": "v", "conditioning": "class", "image_size": "64"},
    {"dataset": "mnist", "network": "unet", "objective": "eps", "image_size": "28", "logger": "wandb", "hardware": "a100"},
    {"dataset": "fashion_mnist", "network": "dit", "objective": "flow", "conditioning": "clusters", "image_size": "32",
     "hardware": "h100"},
    {"dataset": "cifar10", "network": "unet", "objective": "v", "conditioning": "class", "image_size": "16",
     "hardware": "multi-gpu"},
    {"dataset": "image_folder", "network": "unet", "objective": "edm", "image_size": "128", "hardware": "slurm"},
    {"dataset": "digits", "network": "mlp", "objective": "edm", "conditioning": "class", "git_init": "yes",
     "hardware": "mps"},
    {"dataset": "cifar10", "network": "dit", "objective": "eps", "conditioning": "none", "image_size": "32",
     "hardware": "gpu"},
]


def text_files(project):
    for path in project.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            yield path, path.read_text(errors="replace")


def test_the_template_spells_the_package_by_its_variable():
    """Code copied from a baked project back into the template keeps "diffusion_lab" where
    "{{ cookiecutter.package_name }}" belongs: a project of another name would import a package it
    does not have (the long-name ruff test found one only because the imports then sorted otherwise)."""
    template = REPO / "{{cookiecutter.project_slug}}"
    assert not [str(path.relative_to(template)) for path, text in text_files(template) if "diffusion_lab" in text]


def test_every_choice_is_covered():
    for question, choices in DEFAULTS.items():
        if isinstance(choices, list):
            used = {combo.get(question, choices[0]) for combo in COMBINATIONS}
            assert used == set(choices), f"{question}: {set(choices) - used} never baked"


# For each baked project in turn (its folder an argument): builds the configured model on random
# data of the configured shape, takes one training loss and draws two samples, so that the
# combination's config, model and sampler fit together. One interpreter serves every project:
# each is imported from its own src/ and forgotten before the next (torch and Lightning, ten
# seconds to import here, are imported once).
SMOKE = """
import os, sys, torch

def smoke(project):
    from diffusion_lab.config import load_config
    from diffusion_lab.module import DiffusionModule
    from diffusion_lab.runs import new_model
    # small sizes keep it quick; the configured architecture is unchanged
    cfg = load_config(["model.unet.channels=8", "model.dit.width=32", "model.dit.depth=1", "model.dit.heads=2"])
    shape = [2] if cfg.data.name == "toy2d" else [cfg.data.channels, cfg.data.image_size, cfg.data.image_size]
    module = DiffusionModule(new_model(cfg, shape, [str(i) for i in range(3)]))
    data = torch.randn(4, *shape) if cfg.data.name == "toy2d" else torch.rand(4, *shape) * 2 - 1
    loss = module.batch_loss((data, torch.tensor([0, 1, 2, 0])))
    assert torch.isfinite(loss), project
    cfg.sampling.steps = 2
    x = module.model.sample(2, torch.Generator().manual_seed(0), cfg.sampling).x
    assert x.shape == (2, *shape) and torch.isfinite(x).all(), project
    print("ok", cfg.data.name, cfg.model.name, cfg.diffusion.objective, cfg.trainer.precision, flush=True)

for project in sys.argv[1:]:
    os.chdir(project)
    sys.path.insert(0, os.path.join(project, "src"))
    smoke(project)
    sys.path.pop(0)
    for name in [name for name in sys.modules if name.split(".")[0] == "diffusion_lab"]:
        del sys.modules[name]
"""


@pytest.mark.parametrize("answers", COMBINATIONS, ids=lambda a: "-".join(a.values()) or "defaults")
def test_bake_renders_completely(bake, answers):
    project = bake(**answers)
    for path, text in text_files(project):
        assert "{{" not in text and "{%" not in text and "{#" not in text, f"unrendered template in {path}"
        if path.suffix == ".py":
            py_compile.compile(str(path), doraise=True)
    recorded = json.loads((project / "cookiecutter-answers.json").read_text())
    assert all(recorded[key] == value for key, value in answers.items())
    assert (project / ".git").is_dir() == (answers.get("git_init") == "yes")


def test_every_combination_builds_its_model_takes_a_loss_and_samples(bake):
    projects = [bake(**answers) for answers in COMBINATIONS]
    result = run_in(projects[0], "-c", SMOKE, *map(str, projects))
    assert result.stdout.count("ok ") == len(COMBINATIONS), result.stdout


# Tests of a baked project that the template's CI lets skip, each with why: none. A test that
# skips because an optional package is missing here means this environment lacks what the tests
# need (a broken import would skip every pretrained test with CI green): that fails the run.
EXPECTED_SKIPS: dict[str, str] = {}


def unexpected_skips(output: str) -> list[str]:
    """The "SKIPPED [n] file:line: reason" lines of a pytest run with -rs not on EXPECTED_SKIPS."""
    return [line for line in output.splitlines()
            if line.startswith("SKIPPED") and not any(test in line for test in EXPECTED_SKIPS)]


def passes_its_tests(project, marks: str) -> None:
    """The baked ``project``'s tests selected by ``marks`` pass, and none skips unless
    EXPECTED_SKIPS says why."""
    result = run_in(project, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", marks, timeout=1200)
    assert " passed" in result.stdout and "failed" not in result.stdout
    assert not unexpected_skips(result.stdout), unexpected_skips(result.stdout)


@pytest.mark.parametrize("answers", [COMBINATIONS[0], COMBINATIONS[1], COMBINATIONS[3]],
                         ids=["defaults", "toy2d-flow-class", "folder-dit-v-class"])
def test_baked_project_passes_its_own_tests(bake, answers):
    """Every test but the slow ones in the default project; in the others, those that the answers
    can change: the tests that start other processes (the same DDP, signal and fresh-interpreter
    checks in every project), the pretrained-model tests and the known answers marked ``once``
    run once, to keep CI within its time."""
    marks = "not slow" if answers == COMBINATIONS[0] else "not subprocess and not pretrained and not once and not slow"
    passes_its_tests(bake(**answers), marks)


@pytest.mark.slow
def test_the_default_projects_slow_tests_pass(bake):
    """The long end-to-end runs (several-process resume and FID, SLURM requeue, kill -9, a
    compiled run): `make test-all`, not CI."""
    passes_its_tests(bake(), "slow")


def test_a_skip_in_a_baked_project_fails_the_template(bake):
    """Made unimportable, an optional package skips tests in the baked project: caught."""
    project = bake()
    hidden = project / "hide"
    hidden.mkdir()
    (hidden / "diffusers.py").write_text("raise ModuleNotFoundError('hidden for this test')\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                             "tests/test_pretrained.py"], cwd=project, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": f"{hidden}:{project / 'src'}"})
    assert unexpected_skips(result.stdout), result.stdout[-2000:]


@pytest.mark.parametrize("answers, message", [
    ({"project_slug": "My Project"}, "project_slug"),
    ({"project_slug": "1-thing"}, "project_slug"),
    ({"package_name": "class"}, "package_name"),
    ({"package_name": "torch"}, "shadow"),
    ({"package_name": "my-pkg"}, "package_name"),
    ({"dataset": "toy2d", "network": "unet"}, "network"),
    ({"description": "two\nlines"}, "description contains a control character"),
    ({"project_name": "x" * 150}, "under 100 characters"),
])
def test_bad_answers_stop_with_one_error_line(cookies, capfd, answers, message):
    result = cookies.bake(extra_context=answers)
    assert result.exit_code != 0
    errors = [line for line in capfd.readouterr().out.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and message in errors[0], errors


def test_a_name_with_no_letters_is_refused_by_the_command_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cookiecutter", str(REPO), "--no-input",
                             "--output-dir", str(tmp_path / "new"), 'project_name="""'], capture_output=True, text=True)
    assert result.returncode != 0
    errors = [line for line in result.stdout.splitlines() if line.startswith("ERROR:")]
    assert "project_slug ''" in errors[0]        # ours first; cookiecutter then adds its own


def test_code_in_the_name_is_only_text(bake):
    project = bake(project_name='"""; import os; os.remove("x") #')
    assert project.name == "import-os-os-remove-x"
    assert 'os.remove("x")' in (project / "README.md").read_text()


def test_quotes_and_spaces_in_names_give_a_clean_project(bake):
    name = 'Ann\'s "Quoted" Diffusion & Co'
    project = bake(project_name=name, author='O\'Brien "Bob" 🦊', description='Says "hi" \\ bye 🎨')
    assert project.name == "ann-s-quoted-diffusion-co"
    assert (project / "src" / "ann_s_quoted_diffusion_co").is_dir()
    import tomllib
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    assert meta["description"] == 'Says "hi" \\ bye 🎨' and meta["authors"][0]["name"] == 'O\'Brien "Bob" 🦊'
    assert name in (project / "README.md").read_text()


def test_ruff_is_clean_in_a_project_with_a_long_package_name(bake):
    """Line length and import order hold whatever the package's name, up to 32 characters (the
    tests import the package by its name; wrapped imports keep a trailing comma, so a short
    name does not fold them either)."""
    name = "my_research_diffusion_project_v2"
    assert len(name) == 32
    for package in (name, "dl"):
        project = bake(package_name=package)
        result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(project)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def test_pip_install_gives_a_console_script_that_names_a_bad_key(bake, tmp_path):
    project = bake()
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(project)], check=True, capture_output=True, timeout=300)
    result = subprocess.run([str(target / "bin" / "diffusion_lab"), "train", "data.nmae=x"], cwd=project,
                            env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("ERROR: unknown key 'data.nmae'") and "data.name" in result.stderr


def test_train_is_killed_then_resumes_and_samples(bake):
    """The whole user story in processes: a run is interrupted, rerun, finished, sampled."""
    project = bake(dataset="toy2d", network="mlp")
    args = ["-m", "diffusion_lab", "train", "name=killed", "trainer.max_steps=100000",
            "trainer.checkpoint_every_n_steps=100000", "trainer.sample_every_n_steps=100000",
            "trainer.val_every_n_steps=100000", "data.toy_samples=2000"]
    process = subprocess.Popen([sys.executable, *args], cwd=project, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONPATH": str(project / "src")})
    deadline = time.time() + 120
    metrics = project / "runs" / "killed" / "tensorboard"
    while time.time() < deadline and not any(metrics.glob("events.*")):
        time.sleep(0.5)
    time.sleep(8)                                       # let it take some steps
    process.send_signal(signal.SIGINT)                  # Ctrl-C
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 128 + signal.SIGINT, output[-2000:]      # not 0: `train && sample` stops here
    assert "STOPPED: SIGINT at step" in output and "Resume with: diffusion_lab train name=killed" in output
    checkpoint = project / "runs" / "killed" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file(), f"no checkpoint after Ctrl-C:\n{output[-2000:]}"
    interrupted_at = torch.load(checkpoint, weights_only=False)["global_step"]
    assert interrupted_at > 0

    output = run_commands(project, [[*args[2:4], f"trainer.max_steps={interrupted_at + 20}", *args[5:]],
                                    ["sample", "run=runs/killed", "n=100", "steps=5", "trajectory=true"]])
    assert f"(resuming from step {interrupted_at})" in output
    assert torch.load(checkpoint, weights_only=False)["global_step"] == interrupted_at + 20
    assert (project / "runs" / "killed" / "generated" / "samples.png").is_file()
    assert (project / "runs" / "killed" / "generated" / "trajectory.png").is_file()


def test_your_own_images_example_trains_on_a_folder(bake):
    """The examples/your-own-images recipe, copied into a project as its README says."""
    import shutil

    import numpy as np
    from PIL import Image

    project = bake()
    shutil.copy(REPO / "examples" / "your-own-images" / "experiment.yaml",
                project / "configs" / "experiments" / "your-own-images.yaml")
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (project / "pictures" / label).mkdir(parents=True)
        for k in range(6):
            pixels = rng.integers(0, 255, (rng.integers(20, 50), rng.integers(20, 50), 3), dtype=np.uint8)
            Image.fromarray(pixels).save(project / "pictures" / label / f"{k}.jpg")
    common = ["experiment=your-own-images", "data.root=pictures"]
    output = run_commands(project, [["inspect-data", *common],
                                    ["train", *common, "model.unet.channels=8", "trainer.max_steps=3",
                                     "data.batch_size=4", "trainer.log_every_n_steps=1"],
                                    ["sample", "run=runs/my-images", "n=2", "steps=3", "labels=[1]"]])
    assert "classes: 2 (cats: 6, dogs: 6)" in output
    assert (project / "runs" / "my-images" / "generated" / "samples.png").is_file()


def example_commands(folder: str) -> list[list[str]]:
    """The `<package> ...` command lines of an example's README, in order, split as the shell does."""
    import re
    import shlex

    text = (REPO / "examples" / folder / "README.md").read_text()
    return [shlex.split(line) for line in re.findall(r"<package> ([^`\n]+)", text)]


def test_the_task_examples_run_as_their_readmes_say(bake):
    """Tiny versions of the course-task recipes: every command their READMEs show, in order,
    with the training cut to a few steps and the sampling to a few steps."""
    import shutil

    project = bake()
    for folder, name in (("toy-2d-trajectories", "moons"), ("digits-guidance-and-illusions", "digits-class")):
        shutil.copy(REPO / "examples" / folder / "experiment.yaml", project / "configs" / "experiments" / f"{name}.yaml")
    tiny = {"train": ["trainer.max_steps=5", "trainer.val_every_n_steps=1000", "trainer.sample_every_n_steps=1000",
                      "logger=csv"]}
    lines = []
    for folder in ("toy-2d-trajectories", "digits-guidance-and-illusions", "restoration"):
        commands = example_commands(folder)
        assert commands, folder
        lines += [[*args, *tiny.get(args[0], ["steps=3"])] for args in commands]
    run_commands(project, lines)
    for picture in ("moons/visualize/vector_fields.png", "moons/visualize/particles.gif",
                    "digits-class/visualize/denoising.png", "digits-class/guidance/grid.png",
                    "digits-class/interpolate/labels.png", "digits-class/illusion/anagram.png",
                    "digits-class/restore/repaint.png", "digits-class/restore/superres.png",
                    "digits-class/restore/sdedit.png"):
        assert (project / "runs" / picture).is_file(), picture
    for folder in ("toy-2d-trajectories", "digits-guidance-and-illusions", "restoration"):     # the README's pictures exist
        import re
        for picture in re.findall(r"\]\(([^)]+\.(?:png|gif))\)", (REPO / "examples" / folder / "README.md").read_text()):
            assert (REPO / "examples" / folder / picture).is_file(), f"{folder}/{picture}"


def test_the_latent_examples_run_as_their_readmes_say(bake):
    """examples/latent-mnist on the digits (8x8, an autoencoder of two levels) and
    examples/latent-your-images on a folder of pictures with a tiny saved AutoencoderKL in place
    of Stable Diffusion's VAE: every command of their READMEs, in order, for a few steps."""
    import re
    import shutil

    import numpy as np
    from PIL import Image

    project = bake()
    for folder, name in (("latent-mnist", "latent-mnist"), ("latent-your-images", "latent-your-images")):
        shutil.copy(REPO / "examples" / folder / "experiment.yaml", project / "configs" / "experiments" / f"{name}.yaml")
    rng = np.random.default_rng(0)
    (project / "pictures").mkdir()
    for k in range(12):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(project / "pictures" / f"{k}.png")
    subprocess.run([sys.executable, "-c", TINY_VAE], cwd=project, check=True)
    short = ["trainer.max_steps=3", "trainer.val_every_n_steps=1000", "trainer.sample_every_n_steps=1000",
             "trainer.sample_count=4", "logger=csv", "autoencoder.max_steps=3", "data.batch_size=8",
             "autoencoder.batch_size=8", "distill.pairs=16", "distill.shard_size=16",
             "distill.teacher_sampling.steps=2"]
    tiny = {"latent-mnist": ["data.name=digits", "data.image_size=8", "autoencoder.channels=[8,16]",
                             "model.unet.channels=8"],
            "latent-your-images": ["data.root=pictures", "data.image_size=32", "model.unet.channels=8",
                                   "model.unet.blocks_per_level=1"]}
    lines = []
    for folder in ("latent-mnist", "latent-your-images"):
        commands = example_commands(folder)
        assert commands, folder
        lines += [[*args, *tiny[folder], *short] if args[0] in ("train", "autoencoder", "inspect-data") else
                  [*args, "steps=3"] for args in commands]
    run_commands(project, lines)
    for path in ("mnist-ae/reconstructions.png", "latent-mnist/generated/samples.png",
                 "latent-mnist/interpolate/images.png", "latent-mnist/visualize/denoising.gif",
                 "latent-mnist/restore/dps.png", "latent-reflow/generated/samples.png",
                 "latent-images/generated/samples.png"):
        assert (project / "runs" / path).is_file(), path
    for folder in ("latent-mnist", "latent-your-images"):
        for picture in re.findall(r"\]\(([^)]+\.(?:png|gif))\)", (REPO / "examples" / folder / "README.md").read_text()):
            assert (REPO / "examples" / folder / picture).is_file(), f"{folder}/{picture}"


TINY_VAE = """
import diffusers
diffusers.AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4,
                        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2).save_pretrained("models/sd-vae")
"""


def test_the_memorisation_example_runs_as_its_readme_says(bake):
    """examples/memorisation, tiny: the README's transition command with two small sizes, a few
    training steps and few samples; the table, the figure and each size's pictures."""
    import json
    import re
    import shutil

    project = bake()
    folder = REPO / "examples" / "memorisation"
    shutil.copy(folder / "experiment.yaml", project / "configs" / "experiments" / "memorisation.yaml")
    shutil.copy(folder / "transition.py", project / "transition.py")
    line = re.search(r"python transition.py ([^`\n]*)", (folder / "README.md").read_text()).group(1).split()
    tiny = [argument for argument in line if not argument.startswith(("sizes=", "samples="))]
    run_in(project, "transition.py", *tiny, "sizes=10,20", "samples=6", "trainer.max_steps=3",
           "trainer.sample_every_n_steps=1000", "trainer.val_every_n_steps=1000", "logger=csv")
    table = json.loads((project / "runs" / "memorisation-transition" / "transition.json").read_text())
    assert [row["size"] for row in table] == [10, 20]
    assert all(0 <= row["copy_share"] <= 1 and -1 <= row["same_noise"] <= 1 for row in table)
    for picture in ("transition.png", "nearest-10.png", "twins-20.png"):
        assert (project / "runs" / "memorisation-transition" / picture).is_file(), picture
    for picture in re.findall(r"\]\(([^)]+\.png)\)", (folder / "README.md").read_text()):
        assert (folder / picture).is_file(), picture


def test_the_reflow_example_runs_as_its_readme_says(bake):
    """examples/reflow, tiny: the teacher, its reflow student (few pairs of a few teacher steps),
    its consistency students and the sampling commands of the README, in order, then
    few_steps.py: its table and figure."""
    import json
    import re
    import shutil

    project = bake()
    folder = REPO / "examples" / "reflow"
    shutil.copy(folder / "few_steps.py", project / "few_steps.py")
    tiny = {"train": ["trainer.max_steps=3", "trainer.val_every_n_steps=1000", "trainer.sample_every_n_steps=1000",
                      "logger=csv"],
            "reflow": ["distill.pairs=16", "distill.shard_size=8", "distill.teacher_sampling.steps=3"]}
    commands = example_commands("reflow")
    assert [args[0] for args in commands] == ["train", "train", "train", "train", "sample"]
    run_commands(project, [[*args, *tiny.get(args[0], []), *(tiny["reflow"] if "experiment=reflow" in args else [])]
                           for args in commands])
    line = re.search(r"python few_steps.py ([^`\n]*)", (folder / "README.md").read_text()).group(1).split()
    run_in(project, "few_steps.py", *line, "n=4", "steps=1,2")
    out = project / "runs" / "digits" / "few_steps"
    rows = json.loads((out / "few_steps.json").read_text())
    students = ["reflow student", "cd student", "ect student"]
    assert [(row["model"], row["steps"]) for row in rows] == [("teacher", 20), ("teacher", 1), ("teacher", 2),
                                                              *[(name, k) for name in students for k in (1, 2)]]
    assert rows[0]["rms_from_teacher"] == 0 and (out / "few_steps.png").is_file()
    assert [row["nfe"] for row in rows[3:]] == [1, 2] * 3              # the students sample without guidance
    assert [row["sampler"] for row in rows[3::2]] == ["euler", "consistency", "consistency"]
    for picture in re.findall(r"\]\(([^)]+\.png)\)", (folder / "README.md").read_text()):
        assert (folder / picture).is_file(), picture


def test_the_score_distillation_example_runs_as_its_readme_says(bake):
    """examples/score-distillation-3d, tiny: the views rendered small and few, the view-conditioned
    model trained a few steps, SDS and SDI on a small voxel grid for a few steps each, and the
    comparison with the true shape, every line of the README in order."""
    import json
    import re
    import shutil

    project = bake()
    folder = REPO / "examples" / "score-distillation-3d"
    shutil.copy(folder / "experiment.yaml", project / "configs" / "experiments" / "views.yaml")
    for script in ("make_views.py", "compare.py"):
        shutil.copy(folder / script, project / script)
    readme = (folder / "README.md").read_text()
    scripts = re.findall(r"python ((?:make_views|compare)\.py[^`\n]*)", readme)
    assert [line.split()[0] for line in scripts] == ["make_views.py", "compare.py", "compare.py"]
    run_in(project, *scripts[0].split(), "--images", "48", "--size", "16")
    tiny = {"train": ["data.image_size=16", "trainer.max_steps=3", "trainer.val_every_n_steps=1000",
                      "trainer.sample_every_n_steps=1000", "logger=csv"],
            "score-distill": ["steps=2", "n=2", "resolution=8", "samples=8", "inversion_steps=2"]}
    commands = example_commands("score-distillation-3d")
    assert [args[0] for args in commands] == ["train", "score-distill", "score-distill"]
    run_commands(project, [[*args, *tiny[args[0]]] for args in commands])
    for line in scripts[1:]:
        run_in(project, *line.split())
        out = (project / line.split()[1]).parent
        report = json.loads((out / "comparison.json").read_text())
        assert 0 <= report["iou"] <= 1 and (out / "comparison.png").is_file()
        assert (out / "turntable.gif").is_file() and (out / "field.ply").is_file()
    for picture in re.findall(r"\]\(([^)]+\.(?:png|gif))\)", readme):
        assert (folder / picture).is_file(), picture


def test_the_modality_examples_run_as_their_readmes_say(bake):
    """examples/planner-2d and examples/point-sets, tiny: their data made small by their own
    scripts, every command of their READMEs in order for a few steps, and their judges."""
    import json
    import re
    import shutil

    project = bake()
    tiny = {"train": ["trainer.max_steps=3", "trainer.val_every_n_steps=1000", "trainer.sample_every_n_steps=1000",
                      "evaluation.every_n_steps=2", "evaluation.samples=20", "evaluation.steps=2", "logger=csv",
                      "data.batch_size=16", "distill.pairs=64", "distill.shard_size=64",
                      "distill.teacher_sampling.steps=2"],
            "sample": ["steps=2"], "restore": ["steps=2", "resample=2"], "interpolate": ["steps=2", "frames=3"],
            "evaluate": ["samples=20", "steps=2"], "inspect-data": []}
    made = {"planner-2d": ("planner", "make_paths.py", ["--paths", "60", "--steps", "16"], "judge.py",
                           ["--pairs", "6"]),
            "point-sets": ("rings", "make_rings.py", ["--rings", "60"], "check_rings.py", ["--samples", "12"])}
    for folder, (name, maker, small, judge, few) in made.items():
        source = REPO / "examples" / folder
        shutil.copy(source / "experiment.yaml", project / "configs" / "experiments" / f"{name}.yaml")
        for script in (maker, judge):
            shutil.copy(source / script, project / script)
        readme = (source / "README.md").read_text()
        scripts = re.findall(r"python ((?:make_\w+|judge|check_rings)\.py[^`\n]*)", readme)
        assert [line.split()[0] for line in scripts[:2]] == [maker, judge]      # the steps; later lines vary them
        run_in(project, *scripts[0].split(), *small)
        commands = example_commands(folder)
        assert commands[:2] == [["inspect-data", f"experiment={name}"], ["train", f"experiment={name}"]]
        run_commands(project, [[*args, *tiny[args[0]]] for args in commands])
        run_in(project, *scripts[1].split(), *few)
        history = (project / "runs" / name / "fid" / "history.jsonl").read_text().splitlines()
        assert "swd" in json.loads(history[-1])
        assert (project / "runs" / name / ("judge.json" if folder == "planner-2d" else "check.json")).is_file()
        for picture in re.findall(r"\]\(([^)]+\.(?:png|gif))\)", readme):
            assert (source / picture).is_file(), picture
