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


def literal_fields(schema, prefix=""):
    """Every key of the schema whose type is a Literal, with its choices."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            yield from literal_fields(kind, f"{prefix}{field.name}.")
        elif typing.get_origin(kind) is typing.Literal:
            yield f"{prefix}{field.name}", set(typing.get_args(kind))


def test_every_choice_in_the_schema_has_exactly_one_implementation():
    """A config choice is a key of a name table: a choice listed without an implementation (or
    an implementation that cannot be chosen) fails here, not in a user's run."""
    from {{ cookiecutter.package_name }}.config import Config
    from {{ cookiecutter.package_name }}.data import SOURCES, TOY_SHAPES
    from {{ cookiecutter.package_name }}.diffusion.parameterizations import LOSS_WEIGHTS, PARAMETERIZATIONS
    from {{ cookiecutter.package_name }}.diffusion.samplers import SAMPLERS
    from {{ cookiecutter.package_name }}.diffusion.schedules import SCHEDULES, TRAINING_NOISE
    from {{ cookiecutter.package_name }}.models import MODELS
    from {{ cookiecutter.package_name }}.trainer import LOGGERS

    tables = {"logger": LOGGERS, "data.name": SOURCES, "data.toy_shape": TOY_SHAPES, "model.name": MODELS,
              "diffusion.objective": PARAMETERIZATIONS, "diffusion.train_noise": TRAINING_NOISE,
              "diffusion.loss_weight": LOSS_WEIGHTS, "sampling.sampler": SAMPLERS, "sampling.schedule": SCHEDULES}
    plain_switches = {"data.on_bad_file", "trainer.precision"}        # handled where used, or by Lightning
    literals = dict(literal_fields(Config))
    assert set(literals) == set(tables) | plain_switches
    for key, table in tables.items():
        assert literals[key] == set(table), key
