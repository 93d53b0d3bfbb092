import dataclasses
import math
import re
import typing
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.config import OBJECTIVE_DEFAULTS, ConfigError, load_config


def test_layers_merge_in_order(project_dir):
    cfg = load_config(["preset=cpu", "experiment=toy2d", "optim.lr=0.01"])
    assert cfg.trainer.accelerator == "cpu"          # from the preset
    assert cfg.data.name == "toy2d"                   # from the experiment
    assert cfg.optim.lr == 0.01                       # the command line beats the experiment's 1e-3
    assert cfg.diffusion.objective == load_config([]).diffusion.objective  # untouched keys keep config.yaml


def test_config_yaml_carries_its_objectives_defaults(project_dir):
    cfg = OmegaConf.load(project_dir / "configs" / "config.yaml")      # the file itself: presets may differ
    for key, value in OBJECTIVE_DEFAULTS[cfg.diffusion.objective].items():
        assert OmegaConf.select(cfg, key) == value, key


def test_the_cpu_preset_trains_at_higher_noise_unless_an_experiment_says_otherwise(project_dir):
    assert load_config(["preset=cpu"]).diffusion.noise_mean == 0.4
    assert load_config(["preset=cpu", "experiment=digits"]).diffusion.noise_mean == -0.4     # 8x8: EDM2's
    assert load_config(["preset=cpu", "diffusion.noise_mean=-1.2"]).diffusion.noise_mean == -1.2


@pytest.mark.parametrize("objective", sorted(OBJECTIVE_DEFAULTS))
def test_changing_the_objective_brings_its_noise_and_sampling_defaults(project_dir, objective):
    cfg = load_config([f"diffusion.objective={objective}"])
    assert cfg.sampling.schedule == ("uniform_t" if objective == "flow" else "karras")      # flows: t in [0, 1)
    assert cfg.sampling.sigma_max == (1000.0 if objective == "flow" else 80.0)
    assert cfg.diffusion.train_noise == {"eps": "ddpm", "v": "cosine"}.get(objective, "lognormal")
    kept = load_config([f"diffusion.objective={objective}", "sampling.schedule=loglinear", "sampling.sigma_max=50"])
    assert (kept.sampling.schedule, kept.sampling.sigma_max) == ("loglinear", 50)         # what you set stays


def test_the_experiment_is_named_on_the_command_line_else_in_local_yaml_else_in_config_yaml(project_dir):
    configs = project_dir / "configs"
    for experiment in ("a", "b"):
        (configs / "experiments" / f"{experiment}.yaml").write_text(f"name: from_{experiment}\n")
    base = (configs / "config.yaml").read_text()
    (configs / "config.yaml").write_text(base.replace("\nexperiment: null", "\nexperiment: a", 1))
    assert load_config([]).name == "from_a"
    with open(configs / "local.yaml", "a") as local:                 # conftest's local.yaml, if any, stays
        local.write("\nexperiment: b\n")
    assert load_config([]).name == "from_b"
    assert load_config(["experiment=a"]).name == "from_a"


def test_an_unknown_preset_or_experiment_names_the_file_looked_for_and_those_there_are(project_dir):
    configs = Path.cwd() / "configs"
    for kind, folder in (("preset", "presets"), ("experiment", "experiments")):
        with pytest.raises(ConfigError) as error:
            load_config([f"{kind}=nope"])
        there = ", ".join(sorted(path.stem for path in (configs / folder).glob("*.yaml")))
        assert str(error.value) == f"unknown {kind} 'nope': no {configs / folder / 'nope.yaml'}. Available: {there}"


def test_a_value_a_layer_asks_for_must_be_given_by_a_later_one(project_dir):
    """``???`` in an experiment (reflow's distill.teacher) asks for a value: missing until the local
    layer or the command line gives it, and every key missing is named."""
    (project_dir / "configs" / "experiments" / "ask.yaml").write_text("distill:\n  teacher: ???\nname: ???\n")
    with pytest.raises(ConfigError) as error:
        load_config(["experiment=ask"])
    assert str(error.value) == (f"no value for distill.teacher, name; set it in {Path.cwd() / 'configs/config.yaml'} "
                                "or as key=value")
    with pytest.raises(ConfigError, match=r"^no value for name; "):
        load_config(["experiment=ask", "distill.teacher=runs/t"])
    assert load_config(["experiment=ask", "distill.teacher=runs/t", "name=s"]).distill.teacher == "runs/t"
    with pytest.raises(ConfigError, match=r"^no value for distill.teacher; "):
        load_config(["experiment=reflow"])


def test_config_yamls_own_values_stay_while_its_objective_does(project_dir):
    """Only a change of objective brings the new objective's defaults (follow_objective)."""
    path = project_dir / "configs" / "config.yaml"
    edited = OmegaConf.load(path)
    edited.sampling.sigma_max, edited.diffusion.noise_std = 60.0, 0.9
    OmegaConf.save(edited, path)
    cfg = load_config([])
    assert (cfg.sampling.sigma_max, cfg.diffusion.noise_std) == (60.0, 0.9)


def test_the_local_layer_sits_between_the_experiment_and_the_command_line(project_dir):
    (project_dir / "configs" / "local.yaml").write_text("preset: debug\ndata:\n  batch_size: 7\noptim:\n  lr: 0.5\n")
    cfg = load_config(["experiment=digits", "optim.lr=0.25"])
    assert cfg.preset == "debug" and cfg.trainer.max_steps == load_config(["preset=debug"]).trainer.max_steps
    assert cfg.data.batch_size == 7 and cfg.optim.lr == 0.25


def test_data_root_without_a_file_source_is_refused(project_dir):
    for name in ("digits", "toy2d"):
        with pytest.raises(ConfigError) as error:
            load_config([f"data.name={name}", "model.name=mlp", "data.root=~/pictures"])
        assert str(error.value) == (f"data.root=~/pictures is given, but data.name={name} does not read files; for "
                                    "your own images add data.name=image_folder (or tensor_file for a .pt/.npy/.npz "
                                    "file)")
    assert load_config(["data.name=image_folder", "data.root=~/pictures"]).data.root == "~/pictures"


def test_sampler_options_the_sampler_does_not_read_are_reported(project_dir, capsys):
    load_config(["sampling.sampler=heun", "sampling.gamma=2", "sampling.churn=1"])
    err = capsys.readouterr().err
    assert "sampling.gamma=2" in err and "generalized" in err and "churn" not in err
    load_config(["sampling.sampler=generalized", "sampling.gamma=2"])
    assert capsys.readouterr().err == ""
    load_config(["sampling.schedule=loglinear", "sampling.rho=5"])          # rho shapes the karras schedule only
    assert capsys.readouterr().err == "note: sampling.rho=5.0 is not used by schedule loglinear (only by karras)\n"
    load_config(["sampling.schedule=karras", "sampling.rho=5"])
    load_config(["sampling.schedule=loglinear"])
    assert capsys.readouterr().err == ""


# A misspelt key: its path, the closest valid key (if one is close) and every valid key where it sits, the schema's.
MISSPELT = [("data.nmae=x", "'data.nmae' in the command line. Did you mean 'data.name'? Valid keys in 'data'",
             "DataConfig"),
            ("model.unet.chanels=8", "'model.unet.chanels' in the command line. Did you mean 'model.unet.channels'? "
             "Valid keys in 'model.unet'", "UNetConfig"),
            ("sed=1", "'sed' in the command line. Did you mean 'seed'? Valid keys in the top level", "Config"),
            ("data.zzzzzz=1", "'data.zzzzzz' in the command line. Valid keys in 'data'", "DataConfig")]


@pytest.mark.parametrize("override, said, schema", MISSPELT, ids=[override for override, _, _ in MISSPELT])
def test_misspelt_key_names_the_path_and_the_fix(project_dir, override, said, schema):
    from {{ cookiecutter.package_name }} import config

    with pytest.raises(ConfigError) as error:
        load_config([override])
    valid = ", ".join(field.name for field in dataclasses.fields(getattr(config, schema)))
    assert str(error.value) == f"unknown key {said}: {valid}"


def test_a_misspelt_key_in_a_file_names_the_file(project_dir):
    """The machine's own layer, local.yaml, may be absent; config.yaml may not."""
    local, base = project_dir / "configs" / "local.yaml", project_dir / "configs" / "config.yaml"
    local.unlink(missing_ok=True)                                        # written by the tests' project_dir, if at all
    assert load_config([]).data.name == OmegaConf.load(base).data.name
    local.write_text("data:\n  nmae: x\n")
    with pytest.raises(ConfigError, match=r"^unknown key 'data.nmae' in \S*configs/local.yaml. Did you mean"):
        load_config([])
    local.unlink()
    base.write_text(base.read_text() + "\nmodle: {}\n")
    with pytest.raises(ConfigError, match=r"^unknown key 'modle' in \S*configs/config.yaml. Did you mean 'model'"):
        load_config([])
    base.write_text(base.read_text().replace("\nmodle: {}\n", "").replace("  max_steps: ", "  max_steps: many #", 1))
    said = r"^bad value for 'trainer.max_steps' in \S*configs/config.yaml: [^\n]*'many'"
    with pytest.raises(ConfigError, match=said):         # not an unknown key: config.yaml's keys are all missing (???)
        load_config([])
    with pytest.raises(ConfigError, match=r"^no config.yaml in \S*nowhere; run from the project folder$"):
        load_config([], config_dir=project_dir / "nowhere")


def test_bad_choice_lists_the_valid_ones(project_dir):
    with pytest.raises(ConfigError) as error:
        load_config(["model.name=resnet"])
    message = str(error.value)
    assert "model.name" in message and "unet" in message and "dit" in message


def test_wrong_type_names_the_key(project_dir):
    """OmegaConf's own first line says why; a list's item is named with its index, not as an unknown key."""
    for override, key, value in (("trainer.max_steps=many", "trainer.max_steps", "many"),
                                 ("model.unet.channel_mult=[1,x]", "model.unet.channel_mult[1]", "x")):
        said = rf"^bad value for '{re.escape(key)}' in the command line: [^\n]*'{value}'"
        with pytest.raises(ConfigError, match=said):
            load_config([override])


def test_unknown_preset_lists_the_available_ones(project_dir):
    presets = ", ".join(sorted(path.stem for path in (project_dir / "configs" / "presets").glob("*.yaml")))
    assert "colab-t4" in presets
    with pytest.raises(ConfigError) as error:
        load_config(["preset=tpu"])
    assert str(error.value) == f"unknown preset 'tpu': no {project_dir}/configs/presets/tpu.yaml. Available: {presets}"


def test_a_command_line_keeps_the_runs_section_apart_and_checks_the_commands_own_keys():
    """A command's keys (``run``, its counts from 1) in its own schema; the sampling keys given apart, for the run's
    configuration; anything else refused with the valid keys, all named as the command line's."""
    from omegaconf import MISSING

    from {{ cookiecutter.package_name }}.config import SamplingConfig, parse_command

    @dataclasses.dataclass
    class Draw:
        run: str = MISSING
        n: int = 4

    command, given = parse_command(["run=runs/a", "n=1", "steps=3"], Draw, "draw", "sampling", ("n",))
    assert (command.run, command.n, dict(given)) == ("runs/a", 1, {"steps": 3})
    valid = ", ".join(["run", "n", *(field.name for field in dataclasses.fields(SamplingConfig))])
    refused = {"n=0": "bad value for 'n': 0 (must be at least 1)",
               "colour=red": f"unknown key 'colour' in the command line. Valid keys: {valid}",
               "stpes=3": f"unknown key 'stpes' in the command line. Did you mean 'steps'? Valid keys: {valid}",
               "n=many": "bad value for 'n' in the command line: "}
    for override, said in refused.items():
        with pytest.raises(ConfigError) as error:
            parse_command(["run=runs/a", override], Draw, "draw", "sampling", ("n",))
        assert str(error.value).startswith(said), str(error.value)
    with pytest.raises(ConfigError, match=r"^draw needs run=<run directory or .ckpt file>, e.g. run=runs/digits$"):
        parse_command(["n=2"], Draw, "draw")


def test_an_adapted_runs_base_gives_its_network_noise_and_sampling_and_the_layers_above_still_apply(project_dir):
    """lora.base: the base's BASE_KEYS replace config.yaml's; its other keys (optim) do not; the command line changes
    them as it would config.yaml's; a bad key in the base's configuration is named as the base's."""
    base = OmegaConf.to_container(load_config(["diffusion.sigma_data=0.7", "sampling.rho=5", "sampling.steps=7",
                                               "optim.lr=0.01"]))
    cfg = load_config(["sampling.steps=9"], base=base)
    assert (cfg.diffusion.sigma_data, cfg.sampling.rho, cfg.sampling.steps) == (0.7, 5.0, 9)
    assert cfg.optim.lr == load_config([]).optim.lr != 0.01
    base["model"]["unet"]["chanels"] = 8
    with pytest.raises(ConfigError, match=r"^unknown key 'model.unet.chanels' in the configuration of lora.base\."):
        load_config([], base=base)


def test_a_student_takes_its_teachers_network_data_and_objective_and_keeps_this_machines_batches(project_dir):
    """distill.teacher: TEACHER_KEYS from the teacher, MACHINE_KEYS and everything else from the student's own
    configuration, all the examples (data.train_size and train_part 0); a pipeline's student keeps its own data."""
    from {{ cookiecutter.package_name }}.config import student_config

    teacher = load_config(["experiment=digits", "model.unet.channels=24", "diffusion.objective=v",
                           "diffusion.sigma_data=0.6", "diffusion.train_noise=cosine", "data.batch_size=64",
                           "data.num_workers=3", "data.gpu_cache_gb=2", "data.train_size=100", "data.train_part=1"])
    cfg = load_config(["experiment=toy2d", "data.batch_size=16", "data.num_workers=0", "optim.lr=0.002",
                       "diffusion.train_noise=lognormal"])
    student = student_config(cfg, OmegaConf.to_container(teacher))
    assert student.model == teacher.model and student.codec == teacher.codec
    assert (student.diffusion.objective, student.diffusion.sigma_data, student.data.name) == ("v", 0.6, "digits")
    machine = (student.data.batch_size, student.data.num_workers, student.data.gpu_cache_gb)
    assert machine == (16, 0, cfg.data.gpu_cache_gb) != (16, 0, 2)
    assert (student.data.train_size, student.data.train_part, student.optim.lr) == (0, 0, 0.002)
    assert student.diffusion.train_noise == cfg.diffusion.train_noise != teacher.diffusion.train_noise   # its own
    of_pipeline = student_config(cfg, OmegaConf.to_container(teacher), teacher_data=False)
    assert of_pipeline.data.name == "toy2d" and of_pipeline.model == teacher.model


def test_a_runs_sampling_takes_the_command_lines_keys_checked_and_notes_those_its_sampler_ignores(project_dir, capsys):
    from {{ cookiecutter.package_name }}.config import run_config

    cfg = load_config(["sampling.sampler=heun", "sampling.steps=7"])
    capsys.readouterr()
    run = run_config(cfg, "sampling", OmegaConf.create({"steps": 3, "eta": 0.5}))
    assert (run.sampling.sampler, run.sampling.steps, cfg.sampling.steps) == ("heun", 3, 7)   # the run's own untouched
    assert capsys.readouterr().err == "note: sampling.eta=0.5 is not used by sampler heun (only by ddim)\n"
    with pytest.raises(ConfigError, match=r"^bad value for 'sampling.steps': 0 \(must be at least 1\)$"):
        run_config(cfg, "sampling", OmegaConf.create({"steps": 0}))
    with pytest.raises(ConfigError, match=r"^bad value for 'steps' in the command line: "):
        run_config(cfg, "sampling", OmegaConf.create({"steps": "many"}))
    saved = OmegaConf.create(OmegaConf.to_container(cfg))
    saved.sampling.steps = "many"
    with pytest.raises(ConfigError, match=r"^bad value for 'steps' in the run's config: "):
        run_config(saved, "sampling", OmegaConf.create({}))


# Settings each valid alone that do not work together (check_values), and a neighbour of each that does.
CLASHES = [
    ("data.name=toy2d model.name=unet", "model.name=unet has no network for vectors, but data.name=toy2d is 2D points: "
     "use model.name=mlp or ideal", "data.name=toy2d model.name=mlp"),
    ("model.name=pretrained", "model.name=pretrained needs model.pretrained.source=<a diffusers pipeline folder or hub "
     "id>, e.g. google/ddpm-cifar10-32", "model.name=pretrained model.pretrained.source=p"),
    ("data.name=image_folder data.labels_from_subfolders=true model.conditional=true data.clusters=10",
     "data.labels_from_subfolders=true gives class labels, but data.clusters=10 would replace them by cluster "
     "numbers: set data.clusters=0 to train on the classes",
     "data.name=image_folder data.labels_from_subfolders=true model.conditional=true data.clusters=0"),
    ("sampling.schedule=trailing diffusion.train_noise=lognormal", "sampling.schedule=trailing needs a discrete "
     "training schedule (diffusion.train_noise=ddpm or cosine); use karras or loglinear",
     "sampling.schedule=trailing diffusion.train_noise=cosine"),
    ("sampling.schedule=trailing diffusion.train_noise=uniform_t", "sampling.schedule=trailing needs a discrete",
     "sampling.schedule=trailing diffusion.train_noise=ddpm"),
    ("data.name=digits data.clusters=10 model.conditional=false", "data.clusters=10 labels the data by its clusters "
     "for a conditional model to be guided by: add model.conditional=true (or set data.clusters=0)",
     "data.name=digits data.clusters=10 model.conditional=true"),
    ("data.name=digits data.prompt=a", "data.captions and data.prompt label the images of a folder "
     "(data.name=image_folder) in place of data.labels_from_subfolders: set data.name=image_folder and only one of "
     "the three", "data.name=image_folder data.labels_from_subfolders=false data.prompt=a"),
    ("data.name=image_folder data.labels_from_subfolders=false data.captions=true data.prompt=a",
     "data.captions and data.prompt label the images", "data.name=image_folder data.labels_from_subfolders=false "
     "data.captions=true"),
    ("data.name=image_folder data.labels_from_subfolders=true data.captions=true", "data.captions and data.prompt",
     "data.name=image_folder data.labels_from_subfolders=true"),
    ("lora.class_prompt=a", "lora.class_prompt (DreamBooth's prior preservation) needs lora.base: the text-to-image "
     "pipeline whose own images of the class are kept", "lora.class_prompt=a lora.base=runs/a"),
    ("lora.base=runs/a distill.teacher=runs/b", "lora.base and distill.teacher are both set", "lora.base=runs/a"),
    ("codec.source=runs/ae model.name=ideal", "codec.source=runs/ae makes a latent model of this project's networks, "
     "and model.name=ideal memorises images", "codec.source=runs/ae"),
    ("codec.source=runs/ae model.name=pretrained model.pretrained.source=p", "and model.name=pretrained brings its "
     "own autoencoder", "model.name=pretrained model.pretrained.source=p"),
    ("evaluation.extractor=custom", "evaluation.extractor=custom needs evaluation.extractor_module",
     "evaluation.extractor=custom evaluation.extractor_module=a:b"),
    ("sampling.sigma_min=1 sampling.sigma_max=1", "need sampling.sigma_min < sampling.sigma_max, got 1.0 and 1.0",
     "sampling.sigma_min=0.99 sampling.sigma_max=1"),
]


@pytest.mark.parametrize("clash, said, fine", CLASHES, ids=[clash for clash, _, _ in CLASHES])
def test_settings_that_do_not_work_together_are_refused_and_their_neighbours_are_not(project_dir, clash, said, fine):
    with pytest.raises(ConfigError) as error:
        load_config(clash.split())
    assert str(error.value).startswith(said) or f" {said}" in str(error.value), str(error.value)
    load_config(fine.split())


def test_a_pipelines_configuration_is_accepted_beside_toy_data_and_any_training_noise(project_dir):
    """A toy project samples pipelines too (``runs.pretrained_config`` keeps the project's data section): a pipeline
    is not looked up among this project's networks, and refuses 2D points itself when trained on them
    (test_pretrained). Its scheduler is discrete, whatever diffusion.train_noise says: trailing steps fit it."""
    pipeline = ["model.name=pretrained", "model.pretrained.source=p"]
    assert load_config(["data.name=toy2d", *pipeline]).model.name == "pretrained"
    assert load_config(["sampling.schedule=trailing", "diffusion.train_noise=lognormal", *pipeline]).sampling.schedule \
        == "trailing"


def test_a_command_line_item_must_be_key_equals_value_in_yaml(project_dir):
    for item in ("steps", "=5"):
        with pytest.raises(ConfigError, match=rf"^'{item}' is not key=value \(e.g. trainer.max_steps=1000\)$"):
            load_config([item])
    with pytest.raises(ConfigError, match=r"^cannot read 'model.unet.channel_mult=\[1,2': did not find expected ','"):
        load_config(["trainer.max_steps=5", "model.unet.channel_mult=[1,2"])           # one line, not a traceback
    with pytest.raises(ConfigError) as error:                                           # OmegaConf's own grammar
        load_config(["name=${x"])
    assert str(error.value) == ("cannot read 'name=${x': no viable alternative at input '${x'; values are YAML (close "
                                "their brackets, and quote text that holds ': ' or ' #')")


def test_outside_the_project_folder_the_projects_own_configs_are_read(tmp_path, monkeypatch):
    from {{ cookiecutter.package_name }}.config import default_config_dir

    from conftest import PROJECT

    monkeypatch.chdir(tmp_path)                                          # no configs/ here
    assert default_config_dir() == PROJECT / "configs"
    assert load_config([]) == load_config([], config_dir=PROJECT / "configs")   # its local.yaml included


@pytest.mark.parametrize("override, named", [("data.nmae=x", "data.nmae"), ("model.name=resnet", "model.name")])
def test_command_line_error_is_one_line_and_exit_code_2(project_dir, capsys, override, named):
    assert main(["train", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR:") and named in err and "\n" not in err


def schema_leaves(schema, prefix=""):
    """Every key of the config schema with its type."""
    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            yield from schema_leaves(kind, f"{prefix}{field.name}.")
        else:
            yield f"{prefix}{field.name}", kind


def test_every_choice_in_the_schema_has_exactly_one_implementation():
    """A config choice is a key of a name table: a choice listed without an implementation (or
    an implementation that cannot be chosen) fails here, not in a user's run."""
    from {{ cookiecutter.package_name }}.commands.train import METHODS
    from {{ cookiecutter.package_name }}.config import Config
    from {{ cookiecutter.package_name }}.data import SOURCES, TOY_SHAPES
    from {{ cookiecutter.package_name }}.diffusion.parameterizations import LOSS_WEIGHTS, PARAMETERIZATIONS
    from {{ cookiecutter.package_name }}.diffusion.samplers import SAMPLERS
    from {{ cookiecutter.package_name }}.diffusion.schedules import SCHEDULES, TRAINING_NOISE
    from {{ cookiecutter.package_name }}.evaluation.features import EXTRACTORS
    from {{ cookiecutter.package_name }}.kinds import DECLARED
    from {{ cookiecutter.package_name }}.models import MODELS
    from {{ cookiecutter.package_name }}.trainer import LOGGERS

    tables = {"logger": LOGGERS, "data.name": SOURCES, "data.toy_shape": TOY_SHAPES,
              "model.name": {**MODELS, "pretrained": "adapters"}, "diffusion.objective": PARAMETERIZATIONS,
              "diffusion.train_noise": TRAINING_NOISE, "diffusion.loss_weight": LOSS_WEIGHTS,
              "sampling.sampler": SAMPLERS, "sampling.schedule": SCHEDULES, "evaluation.sampler": SAMPLERS,
              "evaluation.extractor": EXTRACTORS, "distill.method": METHODS,
              "data.kind": {"auto": "the shape", **DECLARED}}
    plain_switches = {"data.on_bad_file", "trainer.precision", "trainer.accelerator",   # used as they are,
                      "trainer.strategy", "trainer.compile"}                           # or by Lightning
    literals = {key: set(typing.get_args(kind)) for key, kind in schema_leaves(Config)
                if typing.get_origin(kind) is typing.Literal}
    assert set(literals) == set(tables) | plain_switches
    for key, table in tables.items():
        assert literals[key] == set(table), key


def test_every_number_in_the_schema_has_a_valid_range():
    """A new numeric key without a rule in VALUE_RULES would enter unchecked: refuse that here."""
    from {{ cookiecutter.package_name }}.config import VALUE_RULES, Config

    numeric = {key for key, kind in schema_leaves(Config)
               if kind in (int, float, typing.Any) or typing.get_origin(kind) is list}
    assert numeric <= set(VALUE_RULES)


BAD_VALUES = [
    ("optim.lr=0", "optim.lr"), ("optim.lr=inf", "optim.lr"), ("optim.betas=[1.5,0.9]", "optim.betas"),
    ("optim.weight_decay=-1", "optim.weight_decay"), ("optim.ema_decay=1.0", "optim.ema_decay"),
    ("data.batch_size=0", "data.batch_size"), ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps"),
    ("trainer.val_every_n_steps=0", "trainer.val_every_n_steps"),
    ("trainer.checkpoint_every_n_steps=0", "trainer.checkpoint_every_n_steps"),
    ("trainer.sample_every_n_steps=0", "trainer.sample_every_n_steps"), ("trainer.max_steps=-5", "trainer.max_steps"),
    ("seed=-1", "seed"), ("trainer.devices=0", "trainer.devices"), ("trainer.accelerator=tpu9", "trainer.accelerator"),
    ("sampling.sigma_max=inf", "sampling.sigma_max"), ("sampling.sigma_max=nan", "sampling.sigma_max"),
    ("diffusion.sigma_data=0", "diffusion.sigma_data"), ("diffusion.p_uncond=1.5", "diffusion.p_uncond"),
    ("model.unet.channels=0", "model.unet.channels"), ("model.mlp.depth=0", "model.mlp.depth"),
    ("model.dit.patch_size=0", "model.dit.patch_size"), ("data.channels=2", "data.channels"),
    ("name=../escape", "name"), ("name=/tmp/abs", "name"), ("sampling.rho=0", "sampling.rho"),
    ("sampling.guidance=nan", "sampling.guidance"), ("data.toy_samples=1", "data.toy_samples"),
]


# The edges of the numeric ranges, by what the values mean (configs/config.yaml): 0 turns a feature off or means
# none or all; a statistic needs two samples; every other count is at least 1; every other number that is
# neither a location nor a weight that may be negative is a size, above 0; shares and decays lie below 1.
FROM_ZERO = ["seed", "data.clusters", "data.val_fraction", "data.train_size", "data.train_part", "data.num_workers",
             "data.gpu_cache_gb", "model.unet.dropout", "model.ideal.smoothing", "diffusion.p_uncond",
             "sampling.eta", "sampling.churn", "sampling.mu", "evaluation.every_n_steps", "evaluation.seed",
             "optim.weight_decay", "optim.warmup_steps", "optim.grad_clip", "optim.ema_decay",
             "trainer.first_grid_minutes", "lora.prior_weight", "autoencoder.kl_weight"]
FROM_TWO = ["data.toy_samples", "evaluation.samples", "evaluation.kid_subset_size", "evaluation.kid_reference",
            "distill.pairs", "distill.levels"]
ANY_SIGN = ["diffusion.noise_mean", "sampling.gamma", "sampling.guidance"]
BELOW_ONE = ["data.val_fraction", "model.unet.dropout", "sampling.mu", "optim.ema_decay"]


def test_each_range_takes_its_edge_and_refuses_the_next_number_out():
    from {{ cookiecutter.package_name }}.config import VALUE_RULES, Config

    def passes(key, value):
        test, _ = VALUE_RULES[key]
        return test(value)

    leaves = dict(schema_leaves(Config))
    other = [*FROM_ZERO, *FROM_TWO, *ANY_SIGN, "data.channels"]
    counts = [key for key, kind in leaves.items() if kind is int and key not in other]
    sizes = [key for key, kind in leaves.items() if kind is float and key not in other]
    for keys, edge, outside in ((FROM_ZERO, 0, -1e-9), (FROM_TWO, 2, 1), (counts, 1, 0), (sizes, 1e-9, 0)):
        assert [key for key in keys if not passes(key, edge) or passes(key, outside)] == [], edge
    assert [key for key in BELOW_ONE if passes(key, 1) or not passes(key, 1 - 1e-9)] == []
    assert passes("diffusion.p_uncond", 1) and not passes("diffusion.p_uncond", 1 + 1e-9)       # all dropped
    assert passes("seed", 2**32 - 1) and not passes("seed", 2**32) and passes("evaluation.seed", 2**32 - 1)
    assert all(passes(key, -5.0) for key in ANY_SIGN) and not any(passes(key, math.inf) for key in ANY_SIGN)
    assert passes("trainer.val_batches", None) and passes("trainer.val_batches", 1) and not passes(
        "trainer.val_batches", 0)


def test_a_time_budget_is_days_hours_minutes_and_seconds_and_devices_are_a_count_or_indices():
    """trainer.max_time=DD:HH:MM:SS: 01:02:03:04 is 86,400 + 7,200 + 180 + 4 = 93,784 seconds. trainer.devices is
    auto, a count from 1, or a list of device indices from 0."""
    from {{ cookiecutter.package_name }}.config import VALUE_RULES, duration_seconds

    assert duration_seconds("01:02:03:04") == 93_784 and duration_seconds(None) is None
    budget, _ = VALUE_RULES["trainer.max_time"]
    assert budget("00:02:00:00") and budget(None) and not budget("02:00:00") and not budget("00:2:00:00")
    devices, _ = VALUE_RULES["trainer.devices"]
    assert devices("auto") and devices(1) and devices(OmegaConf.create([0, 1]))
    assert not any(devices(v) for v in ("gpu", 0, 1.5, *map(OmegaConf.create, ([], [-1], [0.5]))))


@pytest.mark.parametrize("override, key", BAD_VALUES, ids=[override for override, _ in BAD_VALUES])
def test_a_bad_value_is_one_error_line_naming_its_key(project_dir, capsys, override, key):
    assert main(["train", "experiment=toy2d", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR:") and key in err and "\n" not in err


@pytest.mark.parametrize("override", ["data.image_size=7", "model.unet.attention_levels=[5]",
                                      "model.name=dit model.dit.heads=3"])
def test_a_network_that_cannot_take_the_data_is_one_error_line(project_dir, capsys, override):
    args = ["experiment=digits", "model.unet.channels=8", "model.dit.width=32", *override.split()]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR: model.name=") and "cannot be built" in err and "\n" not in err


def config_reference_script():
    import importlib.util

    from conftest import PROJECT

    spec = importlib.util.spec_from_file_location("config_reference", PROJECT / "scripts" / "config_reference.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script, PROJECT


def test_the_readme_reference_config_yaml_and_the_schema_agree():
    from {{ cookiecutter.package_name }}.config import Config

    script, project = config_reference_script()
    config_text = (project / "configs" / "config.yaml").read_text()
    readme = (project / "README.md").read_text()
    assert script.updated_readme(readme, config_text) == readme, "run python scripts/config_reference.py"
    documented = {key for key, value, _ in script.entries(config_text) if value}
    assert documented == {key for key, _ in schema_leaves(Config)}


def test_the_reference_catches_a_drifted_readme():
    script, project = config_reference_script()
    config_text = (project / "configs" / "config.yaml").read_text()
    readme = (project / "README.md").read_text()
    drifted = config_text.replace("seed: 0 ", "seed: 1 ", 1)
    assert drifted != config_text and script.updated_readme(readme, drifted) != readme
