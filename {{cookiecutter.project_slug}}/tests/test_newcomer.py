"""What a newcomer meets: exported models that sample anywhere, labels by class name, pictures
and folders that say what made them, and `doctor`."""
import shutil
from datetime import datetime

import pytest
import torch
import yaml
from safetensors.torch import load_file

from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.errors import ConfigError
from {{ cookiecutter.package_name }}.runs import load_run


def test_an_export_samples_on_another_machine_as_the_run_does(digits_run, tmp_path, monkeypatch, capsys):
    from PIL import Image

    samples = tmp_path / digits_run / "samples"
    Image.new("L", (8, 8)).save(samples / "step_0000005.png")          # an earlier grid than the last one
    assert main(["export", f"run={digits_run}"]) == 0
    folder = tmp_path / "exports" / "digits"
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "model.json", "config.yaml", "README.md"}
    assert (folder / "preview.png").read_bytes() == (samples / "step_0000010.png").read_bytes()   # the latest grid
    assert "Trained 10 steps on digits data of shape [1, 8, 8] of 10 classes." in (folder / "README.md").read_text()
    model, _ = load_run(digits_run)
    weights = load_file(folder / "model.safetensors")
    assert weights.keys() == model.denoiser.state_dict().keys()                # the EMA weights, tensors only
    assert all(torch.equal(weights[k], v) for k, v in model.denoiser.state_dict().items())
    assert main(["sample", f"run={digits_run}", "n=6", "steps=3", "out=mine/from_run"]) == 0   # and its parent made

    elsewhere = tmp_path / "elsewhere"                       # no runs/, no checkpoint: only the folder
    shutil.copytree(folder, elsewhere / "model")
    shutil.copytree(tmp_path / "configs", elsewhere / "configs")
    monkeypatch.chdir(elsewhere)
    assert main(["sample", "run=model", "n=6", "steps=3", "out=from_export"]) == 0
    assert torch.equal(torch.load("from_export/samples.pt"), torch.load(tmp_path / "mine/from_run/samples.pt"))
    assert main(["guidance-grid", "run=model", "steps=2", "labels=[1,2]", "weights=[0,1]"]) == 0
    made_by = yaml.safe_load(open("from_export/made_by.yaml"))
    assert made_by["model"]["export"] == "model" and made_by["model"]["step"] == 10
    assert made_by["model"]["trained_in"] == f"{digits_run}/checkpoints/last.ckpt"
    assert main(["export", "run=model"]) == 2
    assert "already a folder to share" in capsys.readouterr().err
    (elsewhere / "model" / "config.yaml").write_text(folder.joinpath("config.yaml").read_text().replace(
        "    channels: 8\n", "    channels: 16\n", 1))                       # model.unet.channels, as trained
    with pytest.raises(ConfigError, match=r"^model/model.safetensors does not fit the model its config.yaml "
                                          r"describes: Error\(s\) in loading state_dict"):
        load_run("model")


def test_samples_record_what_made_them(digits_run):
    assert main(["sample", f"run={digits_run}", "n=4", "steps=2", "sampler=euler", "seed=7", "guidance=2.5"]) == 0
    made_by = yaml.safe_load(open(f"{digits_run}/generated/made_by.yaml"))
    assert made_by["model"] == {"checkpoint": f"{digits_run}/checkpoints/last.ckpt", "step": 10}
    assert made_by["sampling"]["sampler"] == "euler" and made_by["sampling"]["steps"] == 2
    assert made_by["sampling"]["guidance"] == 2.5 and made_by["settings"]["seed"] == 7
    assert made_by["command"] == "{{ cookiecutter.package_name }} sample"
    made = datetime.fromisoformat(made_by["made"])                     # when, in the machine's own time zone
    assert made.tzinfo is not None and abs(datetime.now().astimezone() - made).total_seconds() < 600
    for command in (["visualize", "n=2"], ["interpolate", "between=noise", "frames=3"]):
        assert main([command[0], f"run={digits_run}", "steps=2", *command[1:]]) == 0
        assert yaml.safe_load(open(f"{digits_run}/{command[0]}/made_by.yaml"))["sampling"]["steps"] == 2


def test_labels_are_given_by_class_name_or_number(digits_run, capsys, monkeypatch):
    import json

    classes = json.loads(open(f"{digits_run}/classes.json").read())
    assert classes[:3] == ["0", "1", "2"]               # the digits' names are their numbers
    assert main(["sample", f"run={digits_run}", "n=4", "steps=2", "labels=[7,'3']", "out=a"]) == 0
    assert main(["sample", f"run={digits_run}", "n=4", "steps=2", "labels=[7,3]", "out=b"]) == 0
    assert torch.equal(torch.load("a/samples.pt"), torch.load("b/samples.pt"))
    capsys.readouterr()
    assert main(["sample", f"run={digits_run}", "labels=[rose]"]) == 2
    err = capsys.readouterr().err
    assert "label rose is not one of the model's classes: give a class number from 0 to 9" in err


def test_class_names_resolve_by_name_first():
    from omegaconf import OmegaConf

    from {{ cookiecutter.package_name }}.errors import ConfigError
    from {{ cookiecutter.package_name }}.model import Model
    from {{ cookiecutter.package_name }}.models.conditioning import ClassLabels
    from {{ cookiecutter.package_name }}.runs import resolve_labels

    command = OmegaConf.create({"run": "r", "labels": ["tulip", 0, "2"], "conditions": [["rose", 1.5]]})
    names = ["rose", "tulip", "2", "daisy"]
    model = Model(None, None, (1,), None, ClassLabels(len(names)), names)
    resolve_labels(command, model)
    assert list(command.labels) == [1, 0, 2] and [list(c) for c in command.conditions] == [[0, 1.5]]
    with pytest.raises(ConfigError, match=r"label 4 is not one of the model's classes: give a class number from "
                                          r"0 to 3 or a name \(0=rose, 1=tulip, 3=daisy\)$"):
        resolve_labels(OmegaConf.create({"run": "r", "labels": [4]}), model)     # 4 would be the null label


def test_a_grid_has_a_column_per_class_when_its_labels_cycle_with_a_period_of_at_most_16():
    """Labels that come in turn fill the columns of a grid of n samples when the cycle, repeated
    round(sqrt(n) / period) times (at least once), is its width; clusters drawn in proportion do not."""
    from {{ cookiecutter.package_name }}.model import Model
    from {{ cookiecutter.package_name }}.models.conditioning import ClassLabels

    names = [f"c{i}" for i in range(20)]
    model = Model(None, None, (1,), None, ClassLabels(20), names)
    assert model.column_names(64) is None                                  # 20 classes in turn: no
    assert model.column_names(64, list(range(16))) == names[:16]           # a period of 16: yes, once
    assert model.column_names(36, [0, 1, 2, 3]) == ["c0", "c1", "c2", "c3"] * 2       # 6 / 4 rounds to 2
    assert model.column_names(9, [5]) == ["c5"] * 3
    assert Model(None, None, (1,), None, ClassLabels(3), names[:3]).column_names(100) == names[:3] * 3
    clusters = Model(None, None, (1,), None, ClassLabels(3), names[:3], cluster_sizes=[5, 1, 1])
    assert clusters.column_names(16) is None and clusters.column_names(16, [2, 0]) == ["c2", "c0"] * 2


def test_doctor_reports_a_machine_without_a_gpu_or_weights(project_dir, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "no-hub"))
    assert main(["doctor", "experiment=digits"]) == 0
    out = capsys.readouterr().out
    assert f"torch       {torch.__version__}" in out and "cuda        not available" in out
    assert "precision   trainer.precision=" in out and "-> 32-true here" in out
    assert "Inception weights missing" in out and "fetch-weights" in out
    assert "examples: 1797" in out and "classes: 10" in out
    assert main(["doctor", "data.name=image_folder", "data.root=nowhere"]) == 0
    assert "data        ERROR:" in capsys.readouterr().out            # a report, not a traceback


def test_doctor_reports_each_gpu_and_what_training_would_use_there(project_dir, capsys, monkeypatch, tmp_path):
    """Two T4s as torch would see them: each listed with its compute capability and free memory,
    precision=auto resolved as training would resolve it there (fp16 with a scaler: compute 7.5),
    and the FID weights looked for where evaluation.extractor_weights says."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: ((index + 10) * 2**30, 15 * 2**30))
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"weights")
    assert main(["doctor", "preset=gpu", "experiment=digits", f"evaluation.extractor_weights={weights}"]) == 0
    out = capsys.readouterr().out
    assert "cuda:0      Tesla T4 (compute 7.5), 10.0 of 15.0 GiB free" in out
    assert "cuda:1      Tesla T4 (compute 7.5), 11.0 of 15.0 GiB free" in out
    assert "precision   trainer.precision=auto -> 16-mixed here" in out
    assert f"fid         Inception weights present: {weights}" in out


def test_the_data_preview_has_a_row_per_class_named(project_dir, monkeypatch):
    from PIL import Image

    from {{ cookiecutter.package_name }}.commands import inspect_data

    drawn, draw = {}, inspect_data.save_labelled_grid

    def recording(tiles, rows, columns, path, title=""):
        drawn.update(tiles=len(tiles), rows=rows, columns=len(columns))
        return draw(tiles, rows, columns, path, title)

    monkeypatch.setattr(inspect_data, "save_labelled_grid", recording)
    assert main(["inspect-data", "experiment=digits", "name=look"]) == 0
    assert drawn["rows"] == [str(k) for k in range(10)] and drawn["tiles"] == 10 * drawn["columns"]
    preview = Image.open("runs/look/inspect/preview.png")
    assert preview.width > 300 and preview.height > 300        # a matplotlib figure with its labels, not a bare grid


def test_sample_grids_say_what_made_them_and_name_their_classes(project_dir, monkeypatch):
    from {{ cookiecutter.package_name }} import visualize

    drawn, draw = [], visualize.labelled_grid_figure
    monkeypatch.setattr(visualize, "labelled_grid_figure",
                        lambda tiles, rows, columns, title="": drawn.append((len(tiles), columns, title)) or
                        draw(tiles, rows, columns, title))
    assert main(["train", "experiment=digits", "logger=csv", "name=digits", "model.conditional=true",
                 "sampling.guidance=1", "model.unet.channels=8", "data.batch_size=32", "trainer.max_steps=4",
                 "trainer.sample_count=20", "trainer.val_every_n_steps=1000", "trainer.sample_every_n_steps=1000"]) == 0
    assert drawn[-1] == (20, [str(k) for k in range(10)], "step 4, digits: dpmpp_2m, 20 steps, 20 NFE, guidance 1")
    assert main(["sample", "run=runs/digits", "n=6", "steps=3", "sampler=euler", "labels=[4,9]", "guidance=2"]) == 0
    assert drawn[-1] == (6, ["4", "9"], "digits: euler, 3 steps, 6 NFE, guidance 2")   # guided: two evaluations a step
