"""Low-rank adapters (LoRA; Hu et al. 2022) on any network, through the peft library.

A chosen linear map W (a linear layer or a 1x1 convolution) is frozen and given a trainable
update of low rank r:

    W x  ->  W x + (alpha / r) B A x,        A: r x in,  B: out x r,  r << in, out.

B starts at zero, so the adapted network starts out computing exactly what the network it adapts
computes; only A and B are trained: a small share of the weights, kept in float32 even where the
frozen ones are half precision (a gradient scaler cannot unscale float16 gradients), and saved
alone. As Hu et al. did for transformers and diffusers' LoRA scripts do for Stable Diffusion, the
adapters go on the attention projections by default (``ATTENTION_PROJECTIONS``).

``add_adapters`` adapts a network in place; ``merged_weights`` folds the update into W, for a
network without adapters; ``save_diffusers_adapters`` writes a pipeline's adapters in the file
format that diffusers' ``load_lora_weights`` reads. peft is imported when adapters are asked for:
``pip install -e '.[lora]'``.
"""
from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from ..errors import ConfigError, MissingPackage

ADAPTER = "default"             # peft's name for the one adapter a network carries here
ADAPTER_KEY = ".lora_"          # in the names of the adapter weights (lora_A, lora_B), and only there
# The attention projections of each family of networks, by the names of their modules: diffusers'
# Attention blocks, and this project's U-Net (1x1 convolutions) and DiT (linear layers).
ATTENTION_PROJECTIONS = {"diffusers": ["to_q", "to_k", "to_v", "to_out.0"], "this project's": ["qkv", "proj"]}
DIFFUSERS_ADAPTERS = "pytorch_lora_weights.safetensors"     # the file diffusers' load_lora_weights looks for


def import_peft():
    try:
        import peft
    except ImportError:
        raise MissingPackage("lora.base needs the peft library: pip install -e '.[lora]'") from None
    return peft


def adapted_module(net: nn.Module) -> nn.Module:
    """The network that carries the adapters: a diffusers UNet inside its wrapper, else ``net``."""
    return getattr(net, "unet", net)


def attention_projections(net: nn.Module) -> list[str]:
    """The names that pick ``net``'s attention projections, from the first family it has."""
    names = [name for name, _ in net.named_modules()]
    has = lambda target: any(name == target or name.endswith("." + target) for name in names)   # noqa: E731 (peft's rule)
    for targets in ATTENTION_PROJECTIONS.values():
        if all(map(has, targets)):
            return targets
    raise ConfigError(f"{type(net).__name__} has no attention projections that lora.targets knows "
                      f"({'; '.join(' '.join(t) for t in ATTENTION_PROJECTIONS.values())}): name the layers to adapt, "
                      "e.g. lora.targets=[to_q,to_v], or lora.targets=[conv1,conv2] for this project's U-Net")


def add_adapters(net: nn.Module, rank: int, alpha: float, targets: list[str] = ()) -> list[str]:
    """Freeze ``net`` and give the layers named by ``targets`` (the end of a module's name;
    default: its attention projections) adapters of rank ``rank`` scaled by alpha / rank, which
    start at zero. Returns the targets used."""
    peft = import_peft()
    module = adapted_module(net)
    targets = list(targets) or attention_projections(module)
    module.requires_grad_(False)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=True)
    try:
        peft.inject_adapter_in_model(config, module)
    except ValueError as error:           # peft's NoMatchingPeftModuleError, and layers it cannot adapt
        raise ConfigError(f"lora.targets={targets}: {str(error).splitlines()[0]}") from None
    return targets


def adapter_layers(net: nn.Module) -> dict[str, nn.Module]:
    """The adapted layers of ``net``, by their names in ``net``."""
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in net.named_modules() if isinstance(module, LoraLayer)}


def is_adapter_weight(key: str) -> bool:
    return ADAPTER_KEY in key


def merged_weights(net: nn.Module) -> dict[str, Tensor]:
    """The weights of ``net`` without its adapters, each adapted W replaced by W + (alpha / r) B A:
    the state dict of the network that computes what the adapted one does (``net`` is unchanged)."""
    layers = adapter_layers(net)
    deltas = {f"{name}.base_layer.weight": layer.get_delta_weight(ADAPTER) for name, layer in layers.items()}
    merged = {}
    for key, value in net.state_dict().items():
        if is_adapter_weight(key):
            continue
        if key in deltas:
            value = value + deltas[key].to(value.dtype)
        merged[key.replace(".base_layer.", ".")] = value.detach()
    return merged


def save_diffusers_adapters(pipeline, unet: nn.Module, folder: Path, rank: int, alpha: float) -> Path:
    """``unet``'s adapters as diffusers saves them (``save_lora_weights``): one small safetensors
    file, with the adapters' rank and alpha, so that ``pipeline.load_lora_weights(folder)`` scales
    them as trained (without them diffusers would take alpha = rank)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    saver = getattr(type(pipeline), "save_lora_weights", None)
    if saver is None:
        raise ConfigError(f"{type(pipeline).__name__} cannot load LoRA weights in diffusers; export with merge=true "
                          "for a whole pipeline with the adapters folded in")
    weights = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    config = next(iter(unet.peft_config.values())) if hasattr(unet, "peft_config") else None
    targets = sorted(config.target_modules) if config is not None else []
    metadata = {"r": rank, "lora_alpha": alpha, "target_modules": targets}
    saver(folder, unet_lora_layers={key: value.detach().float().contiguous() for key, value in weights.items()},
          unet_lora_adapter_metadata=metadata, weight_name=DIFFUSERS_ADAPTERS)
    return folder / DIFFUSERS_ADAPTERS

