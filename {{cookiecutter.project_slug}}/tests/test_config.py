import pytest

from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.config import ConfigError, load_config


def test_layers_merge_in_order(project_dir):
    cfg = load_config(["preset=cpu", "experiment=toy2d", "optim.lr=0.01"])
    assert cfg.trainer.accelerator == "cpu"          # from the preset
    assert cfg.data.name == "toy2d"                   # from the experiment
    assert cfg.optim.lr == 0.01                       # the command line beats the experiment's 1e-3
    assert cfg.diffusion.objective == load_config([]).diffusion.objective  # untouched keys keep config.yaml


def test_misspelt_key_names_the_path_and_the_fix(project_dir):
    with pytest.raises(ConfigError) as error:
        load_config(["data.nmae=x"])
    assert "data.nmae" in str(error.value)
    assert "Did you mean 'data.name'" in str(error.value)


def test_bad_choice_lists_the_valid_ones(project_dir):
    with pytest.raises(ConfigError) as error:
        load_config(["model.name=resnet"])
    message = str(error.value)
    assert "model.name" in message and "unet" in message and "dit" in message


def test_wrong_type_names_the_key(project_dir):
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        load_config(["trainer.max_steps=many"])


def test_unknown_preset_lists_the_available_ones(project_dir):
    with pytest.raises(ConfigError, match="colab-t4"):
        load_config(["preset=tpu"])


def test_inconsistent_combination_is_refused(project_dir):
    with pytest.raises(ConfigError, match="model.name=mlp"):
        load_config(["data.name=toy2d", "model.name=unet"])


@pytest.mark.parametrize("override, named", [("data.nmae=x", "data.nmae"), ("model.name=resnet", "model.name")])
def test_command_line_error_is_one_line_and_exit_code_2(project_dir, capsys, override, named):
    assert main(["train", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR:") and named in err and "\n" not in err
