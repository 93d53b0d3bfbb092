"""Bad input as a new user gives it, to every command and every data source: each ends in one
`ERROR:` line that names what is wrong (exit status 2), never a traceback, never silence."""
import numpy as np
import pytest
import torch

from {{ cookiecutter.package_name }}.cli import main

DIGITS = ["experiment=digits", "model.unet.channels=8", "logger=csv", "trainer.max_steps=2",
          "trainer.sample_every_n_steps=1000", "trainer.val_every_n_steps=1000"]


class Payload:
    """A pickled object: loading one can run code, so it must never load."""


@pytest.fixture(scope="module")
def workplace(tmp_path_factory):
    """A project folder with one tiny class-conditional run, one unconditional run, and bad files."""
    import os
    import shutil

    from conftest import PROJECT

    folder = tmp_path_factory.mktemp("bad-input")
    shutil.copytree(PROJECT / "configs", folder / "configs")
    (folder / "configs" / "local.yaml").write_text("data:\n  clusters: 0\n")
    before = os.getcwd()
    os.chdir(folder)
    assert main(["train", *DIGITS, "name=classes"]) == 0
    assert main(["train", *DIGITS, "name=plain", "model.conditional=false"]) == 0
    (folder / "text.pt").write_text("not a tensor")
    (folder / "empty.pt").write_bytes(b"")
    np.save(folder / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    torch.save({"data": [Payload()]}, folder / "pickled.pt")
    torch.save({"data": torch.full((50, 2), 1e30)}, folder / "huge.pt")
    torch.save({"data": torch.rand(50, 2), "labels": torch.arange(50) % 3 - 1}, folder / "negative-labels.pt")
    (folder / "no-images").mkdir()
    (folder / "notes.txt").write_text("not data")
    torch.save({"weights": torch.zeros(2)}, folder / "other.ckpt")
    (folder / "broken-export").mkdir()
    (folder / "broken-export" / "model.safetensors").write_bytes(b"not weights")
    (folder / "photos" / "images").mkdir(parents=True)
    (folder / "photos" / "images" / "holiday.jpg").write_bytes(b"")
    os.chdir(before)
    return folder


# (command line, what the one ERROR line must say)
BAD = [
    # every data source, through train and inspect-data
    (["train", "data.name=tensor_file", "data.root=text.pt"], "'text.pt' is not a readable tensor file"),
    (["inspect-data", "data.name=tensor_file", "data.root=empty.pt"], "'empty.pt' is not a readable tensor file"),
    (["train", "data.name=tensor_file", "data.root=objects.npy"], "'objects.npy' is not a readable tensor file"),
    (["inspect-data", "data.name=tensor_file", "data.root=pickled.pt"], "holds a Python object"),
    (["train", "data.name=tensor_file", "data.root=huge.pt", "model.name=mlp"], "values reach 1e+30"),
    (["train", "data.name=tensor_file", "data.root=negative-labels.pt", "model.name=mlp"], "labels must number"),
    (["train", "data.name=tensor_file", "data.root=missing.pt"], "missing.pt"),
    (["train", "data.name=tensor_file", "data.root=notes.txt"], "must end in .pt, .npy or .npz"),
    (["train", "data.name=image_folder", "data.root=no-images", "data.channels=1"], "no-images"),
    (["inspect-data", "data.name=image_folder", "data.root=nowhere"], "nowhere"),
    (["train", "data.name=mnist", "data.root=offline"], "MNIST"),
    (["train", "data.name=toy2d", "model.name=unet"], "use model.name=mlp"),
    (["train", "data.name=digits", "data.root=mine"], "does not read files"),
    (["train", "data.nmae=digits"], "Did you mean 'data.name'"),
    (["train", "trainer.max_steps=-1"], "trainer.max_steps"),
    (["bench", "model.name=resnet"], "model.name"),
    (["bench", "model.name=ideal"], "model.name=ideal has no network to train or time"),
    (["train", "experiment=toy2d", "model.name=ideal", "model.ideal.smoothing=-1"], "model.ideal.smoothing"),
    (["train", "experiment=digits", "data.train_size=1000", "data.train_part=1"], "needs 2000 training examples"),
    (["train", "data.train_part=-1"], "data.train_part"),
    (["doctor", "preset=tpu"], None),                            # doctor reports the error and goes on
    # the commands that draw from a run
    (["sample"], "sample needs run="),
    (["sample", "run=runs/nothing"], "no checkpoint at runs/nothing"),
    (["sample", "run=runs/classes", "n=0"], "'n'"),
    (["sample", "run=runs/classes", "labels=[12]"], "label 12 is not one of the model's classes"),
    (["sample", "run=runs/classes", "conditions=[[3,1.0],[99,1.0]]"], "label 99 is not one of the model's classes"),
    (["sample", "run=runs/classes", "conditions=[[3]]"], "[label, weight] pair"),
    (["sample", "run=runs/classes", "conditions=[[3,true]]"], "[label, weight] pair with a finite weight"),
    (["sample", "run=runs/plain", "labels=[1]"], "need a class-conditional model; runs/plain was trained with "
                                                 "model.conditional=false"),
    (["sample", "run=runs/classes", "precision=16-mixed", "device=cpu"], "needs a CUDA GPU"),
    (["sample", "run=runs/classes", "steps=3", "sampler=rk4"], "sampler"),
    (["sample", "run=runs/classes", "steps=2", "n=1000000000000", "batch_size=1000000000000"],
     "does not fit in memory"),
    (["sample", "run=runs/classes", "steps=2", "n=10000000000000", "batch_size=2"], "GiB available"),
    (["evaluate", "run=runs/classes", "sweep_samplers=[rk4]"], "unknown: rk4"),
    (["evaluate", "run=runs/classes", "teacher_steps=[5]"], "teacher's line in the sweep's plot: add sweep=true"),
    (["evaluate", "run=runs/classes", "sweep=true", "teacher_steps=[5]"], "runs/classes is no student"),
    (["evaluate", "run=runs/classes", "samples=1"], "evaluation.samples"),
    (["evaluate", "run=runs/plain", "twin=runs/classes"], "compares the samples of the memorisation check: add "
                                                           "memorisation=N"),
    (["evaluate", "run=runs/plain", "twin=runs/classes", "memorisation=4", "fid=false", "features=false"],
     "the twin must be trained the same way on other examples of the same data"),
    (["sample", "run=other.ckpt"], "other.ckpt is a torch file, but not a checkpoint of this project"),
    (["sample", "run=broken-export"], "broken-export is not a readable export folder (model.safetensors, model.json "
     "and config.yaml; FileNotFoundError: [Errno 2] No such file or directory: 'broken-export/model.json')"),
    (["sample", "run=runs/classes", "out=photos"], "photos/images holds files that sample did not write (holiday.jpg"),
    (["train", "experiment=toy2d", "data.toy_shape=swiss_roll", "model.conditional=true"],
     "model.conditional=true needs class labels or conditions, but data.name=toy2d provides none"),
    (["train", *DIGITS, "lora.base=runs/nothing"], "no config.yaml in runs/nothing"),
    (["export", "run=runs/nothing"], "no checkpoint"),
    (["visualize", "run=runs/classes", "columns=0"], "'columns'"),
    (["interpolate", "run=runs/classes", "sampler=ddpm"], "deterministic sampler"),
    (["interpolate", "run=runs/classes", "between=images", "images=[0,99999]"], "the training data has"),
    (["interpolate", "run=runs/plain", "between=labels", "labels=[1,2]"], "class-conditional"),
    (["guidance-grid", "run=runs/plain"], "class-conditional"),
    (["illusion", "run=runs/classes", "labels=[1,2]", "views=[identity,spin]"],
     "unknown view 'spin': use one of identity, hflip, vflip, rot90, rot180, rot270, transpose, negate, jigsaw"),
    (["illusion", "run=runs/classes", "labels=[1]"], "needs 2 labels"),
    (["restore", "run=runs/classes"], "method="),
    (["restore", "run=runs/classes", "method=colorize"], "RGB model"),
    (["restore", "run=runs/classes", "method=dps", "degradation=nowhere:blur"], "does not name a function"),
    (["fetch-weights", "colour=red"], "unknown key 'colour'"),
]


@pytest.mark.parametrize("args, said", BAD, ids=[" ".join(args)[:60] for args, _ in BAD])
def test_bad_input_is_one_error_line(workplace, monkeypatch, capsys, args, said):
    monkeypatch.chdir(workplace)
    status = main(args)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("ERROR:")]
    if said is None:
        assert status == 0 and "Traceback" not in err
        return
    assert status == 2 and len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert said in errors[0], errors[0]
