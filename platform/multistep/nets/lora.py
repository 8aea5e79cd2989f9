"""LoRA students (`student: {lora: {rank, alpha, target_modules}}`): low-rank adapters injected by peft into the
student's copy of the teacher's network; only the adapters train, and only they travel in trial checkpoints.

peft's `inject_adapter_in_model` wraps every Linear / Conv2d whose name ends in one of `target_modules` with
W x + (alpha / rank) B A x (A random, B zero: the student starts equal to the teacher) and freezes everything
else. Defaults name the attention projections of diffusers' UNets (to_q, to_k, to_v, to_out.0), what LCM-LoRA
adapts; our own UNet's attention is `qkv` / `proj`, the MLP's layers `net.0`, `net.2`, ...
"""

from __future__ import annotations

from torch import nn


def add_lora(net: nn.Module, rank: int, alpha: float, target_modules: list[str]) -> int:
    """Inject LoRA adapters into net in place (the rest frozen); returns the number of trainable parameters.
    ValueError (naming the targets) when no module matches."""
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules))
    try:
        inject_adapter_in_model(cfg, net)
    except ValueError as e:
        raise ValueError(f"student.lora.target_modules: {target_modules} ({' '.join(str(e).split())[:200]})") from None
    for name, p in net.named_parameters():
        p.requires_grad_("lora_" in name)
    # what TrainState checks (a student whose checkpoints hold only its adapters) and what exports describe
    net.lora_config = {"r": rank, "lora_alpha": alpha, "target_modules": list(target_modules)}
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def has_lora(net: nn.Module) -> bool:
    return any(getattr(m, "lora_config", None) for m in net.modules())


def lora_config(net: nn.Module) -> dict:
    """{r, lora_alpha, target_modules} of a LoRA student (peft's LoraConfig fields)."""
    return next(m.lora_config for m in net.modules() if getattr(m, "lora_config", None))


def adapter_weights(module: nn.Module) -> dict:
    """The adapters of `module` under peft's saved names (lora_A.default.weight -> lora_A.weight), as
    diffusers' save_lora_weights and load_lora_weights read them."""
    return {k.replace(".default", ""): v for k, v in module.state_dict().items() if "lora_" in k}


def adapter_names(net: nn.Module) -> set[str]:
    """The state-dict keys of the adapters (the trainable parameters of a LoRA student)."""
    return {name for name, p in net.named_parameters() if "lora_" in name}


def merged(net: nn.Module) -> nn.Module:
    """A copy of a LoRA student with every adapter merged into its base layer (W + (alpha / rank) B A) and the
    wrappers removed: the plain network of the teacher's architecture (what exports write)."""
    import copy

    from peft.tuners.lora import LoraLayer

    net = copy.deepcopy(net)
    for name, m in list(net.named_modules()):
        if isinstance(m, LoraLayer):
            m.merge()
            parent, _, leaf = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, leaf, m.get_base_layer())
    for m in net.modules():
        m.__dict__.pop("lora_config", None)
    return net
