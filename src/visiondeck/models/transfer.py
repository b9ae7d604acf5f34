"""Transfer-learning controls: head, stages, freezing, discriminative LRs, Grad-CAM layer.

One vocabulary for every model: the *head* is the final classifier layer; the *backbone* is
everything else, split into ordered *stages* (input side first). Stages come from

1. our networks' own `backbone_stages()`;
2. timm's `group_matcher(coarse=True)` (the groups timm itself uses for layer-wise LR
   decay: stem, each stage, then a neck such as `conv_head` or a final norm);
3. torchvision ResNets: stem (conv1, bn1) and layer1..layer4;
4. otherwise a structural split of the module tree (torchvision and plain modules):
   top-level blocks, descending into a lone container such as `features`, with runs of
   single layers (conv1, bn1) merged into one stage.

Stages returned for 2-4 are views (`nn.ModuleList` over the model's own modules and
parameters), so `requires_grad_` on them acts on the model. Every parameter belongs to
exactly one stage or to the head.

Frozen BatchNorm: `freeze_backbone` stops gradients, but `model.train()` would still update
BatchNorm running statistics. Call `set_frozen_bn_eval(model)` after every `model.train()`
(for Lightning: in `on_train_epoch_start`, after the trainer has switched to train mode) so
frozen BatchNorm layers keep their pretrained statistics.
"""

from __future__ import annotations

from torch import nn

from visiondeck.models.cbam import is_resnet_family
from visiondeck.models.errors import ModelError

__all__ = [
    "backbone_stages",
    "classifier",
    "freeze_backbone",
    "gradcam_target_layer",
    "param_groups",
    "set_frozen_bn_eval",
    "unfreeze_stages",
]


def classifier(model: nn.Module) -> nn.Module:
    """The head: the final layer that maps features to class scores."""
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        head = getter()
        if isinstance(head, nn.Module):
            return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError(f"cannot find the classifier of {type(model).__name__}",
                         hint="give the model a get_classifier() method")
    return linears[-1]


class _Parameters(nn.Module):
    """Holds parameters registered directly on a parent module (ViT's `pos_embed`)."""

    def __init__(self, named: list[tuple[str, nn.Parameter]]) -> None:
        super().__init__()
        for name, param in named:
            self.register_parameter(name.replace(".", "_"), param)


def _view(modules: list[nn.Module]) -> nn.Module:
    return modules[0] if len(modules) == 1 else nn.ModuleList(modules)


def _cover(model: nn.Module, names: set[str]) -> list[nn.Module]:
    """The fewest modules (plus loose parameters) whose parameters are exactly `names`."""
    found: list[nn.Module] = []

    def visit(prefix: str, module: nn.Module) -> None:
        inside = {prefix + n for n, _ in module.named_parameters()}
        if inside and inside <= names:
            found.append(module)
            return
        loose = [(n, p) for n, p in module.named_parameters(recurse=False) if prefix + n in names]
        if loose:
            found.append(_Parameters(loose))
        for child_name, child in module.named_children():
            visit(f"{prefix}{child_name}.", child)

    visit("", model)
    return found


def _timm_stages(model: nn.Module, head_ids: set[int]) -> list[nn.Module]:
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher(coarse=True))
    params = dict(model.named_parameters())
    stages = []
    for _, names in sorted(groups.items()):
        kept = {n for n in names if id(params[n]) not in head_ids}
        if kept:
            stages.append(_view(_cover(model, kept)))
    return stages


def _structural_stages(model: nn.Module, head: nn.Module) -> list[nn.Module]:
    def owns_params(module: nn.Module) -> bool:
        return any(True for _ in module.parameters())

    def contains(module: nn.Module, target: nn.Module) -> bool:
        return any(m is target for m in module.modules())

    def split(module: nn.Module) -> list[nn.Module]:
        parts: list[nn.Module] = []
        loose = list(module.named_parameters(recurse=False))
        if loose:
            parts.append(_Parameters(loose))
        for child in module.children():
            if child is head or not owns_params(child):
                continue
            parts += split(child) if contains(child, head) else [child]
        return parts

    def size(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    def units(module: nn.Module) -> int:
        loose = any(True for _ in module.parameters(recurse=False))
        return int(loose) + sum(1 for c in module.children() if owns_params(c))

    # A container holding most of the weights (`features`, a transformer `encoder`) is not
    # a useful stage: replace it by its parts until no such container is left.
    parts = split(model)
    while True:
        total = sum(size(p) for p in parts)
        big = next((i for i, p in enumerate(parts)
                    if size(p) > 0.6 * total and units(p) >= 3), None)
        if big is None:
            break
        parts[big:big + 1] = split(parts[big])
    stages: list[nn.Module] = []
    run: list[nn.Module] = []  # consecutive single layers (conv1, bn1) form one stage
    for part in parts:
        if not any(True for _ in part.children()):
            run.append(part)
            continue
        if run:
            stages.append(_view(run))
            run = []
        stages.append(part)
    if run:
        stages.append(_view(run))
    return stages


def backbone_stages(model: nn.Module) -> list[nn.Module]:
    """The backbone as ordered stages, input side first (for progressive unfreezing)."""
    own = getattr(model, "backbone_stages", None)
    if callable(own):
        return list(own())
    head = classifier(model)
    head_ids = {id(p) for p in head.parameters()}
    if callable(getattr(model, "group_matcher", None)):
        stages = _timm_stages(model, head_ids)
    elif is_resnet_family(model):  # torchvision ResNet: the canonical stem + 4 layers
        stages = [nn.ModuleList([model.conv1, model.bn1]),
                  *(getattr(model, f"layer{i}") for i in range(1, 5))]
    else:
        stages = _structural_stages(model, head)
    covered = head_ids | {id(p) for s in stages for p in s.parameters()}
    leftover = [(n, p) for n, p in model.named_parameters() if id(p) not in covered]
    if leftover:  # e.g. a norm between stages that no rule named: keep it with the last
        stages.append(_Parameters(leftover))
    return stages


def freeze_backbone(model: nn.Module) -> None:
    """Only the head trains; frozen BatchNorm layers are put in eval mode (see module doc)."""
    model.requires_grad_(False)
    classifier(model).requires_grad_(True)
    set_frozen_bn_eval(model)


def unfreeze_stages(model: nn.Module, n: int) -> None:
    """Let the last `n` backbone stages train too (`n >= len(stages)`: the whole model)."""
    if n < 0:
        raise ModelError(f"cannot unfreeze {n} stages", hint="give a count of 0 or more")
    stages = backbone_stages(model)
    if n >= len(stages):
        model.requires_grad_(True)
        return
    for stage in stages[len(stages) - n:]:
        stage.requires_grad_(True)
    classifier(model).requires_grad_(True)


def set_frozen_bn_eval(model: nn.Module) -> int:
    """Put BatchNorm layers whose parameters are all frozen in eval mode; returns how many.

    Call after every `model.train()`; a frozen layer then normalises with its pretrained
    running statistics instead of re-estimating them from small fine-tuning batches.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
                count += 1
    return count


def param_groups(
    model: nn.Module, lr: float, *, backbone_lr_mult: float = 0.1, weight_decay: float = 0.0
) -> list[dict]:
    """Optimizer parameter groups with discriminative learning rates.

    The head trains at `lr`; the last backbone stage at `lr * backbone_lr_mult` and earlier
    stages geometrically less, down to `lr * backbone_lr_mult**2` for the first one (as
    fastai's `slice(lr*m**2, lr*m)`): early, generic features move least. Biases and norm
    weights (1-d tensors) and timm's `no_weight_decay()` names get no weight decay.

    Frozen parameters are included on purpose: build the optimizer once, and stages that
    `unfreeze_stages` opens later are already in it (torch optimizers skip tensors
    without a gradient). Each group carries a `name` ("head", "stage0", ...).
    """
    if lr <= 0 or backbone_lr_mult < 0:
        raise ModelError(f"invalid learning rates: lr={lr}, backbone_lr_mult={backbone_lr_mult}",
                         hint="lr must be > 0 and backbone_lr_mult >= 0")
    stages = backbone_stages(model)
    count = len(stages)
    names = {id(p): n for n, p in model.named_parameters()}
    skip = getattr(model, "no_weight_decay", None)
    no_decay_names = set(skip()) if callable(skip) else set()
    plan: list[tuple[str, float, nn.Module]] = []
    for index, stage in enumerate(stages):
        depth = 1.0 + (count - 1 - index) / (count - 1) if count > 1 else 1.0
        plan.append((f"stage{index}", lr * backbone_lr_mult**depth, stage))
    plan.append(("head", lr, classifier(model)))

    seen: set[int] = set()
    groups: list[dict] = []
    for name, group_lr, module in plan:
        decay, no_decay = [], []
        for param in module.parameters():
            if id(param) in seen:
                continue
            seen.add(id(param))
            exempt = param.ndim <= 1 or names.get(id(param), "") in no_decay_names
            (no_decay if exempt else decay).append(param)
        if decay:
            groups.append({"params": decay, "lr": group_lr, "weight_decay": weight_decay,
                           "name": name})
        if no_decay:
            groups.append({"params": no_decay, "lr": group_lr, "weight_decay": 0.0,
                           "name": name})
    return groups


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def gradcam_target_layer(model: nn.Module) -> nn.Module:
    """The last convolutional block, whose activations Grad-CAM weighs.

    Ours: the last stage. ResNet family (timm and torchvision): `layer4`. timm models: the
    last module of `feature_info` (EfficientNet/Lite, MobileNet, ConvNeXt, RegNet blocks;
    for DenseNet, whose last entry is a norm, the dense block before it). torchvision
    `features` models: its last block with a convolution. With attention blocks added
    (`attention.add_attention`), the layer is one whose output has passed the last block:
    the stage it was appended to, or the block itself when it follows the layer.
    """
    own = getattr(model, "gradcam_layer", None)
    if callable(own):
        return own()
    layer4 = getattr(model, "layer4", None)
    if isinstance(layer4, nn.Module) and _has_conv(layer4):
        return layer4
    info = getattr(model, "feature_info", None)
    if info:
        path = info[-1]["module"] if isinstance(info, list) else info.module_name()[-1]
        found = _with_conv(model, path)
        if found is not None:
            return _attended(model, found)
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        blocks = [m for m in features.children() if _has_conv(m)]
        if blocks:
            return blocks[-1]
    raise ModelError(
        f"no default Grad-CAM layer for {type(model).__name__}",
        hint="pass the target layer explicitly (e.g. target_layer=model.blocks[-1]); "
        "transformers also need a reshape transform",
    )


def _attended(model: nn.Module, layer: nn.Module) -> nn.Module:
    """The attention block inserted right after `layer` (`stages.3_cbam`), else `layer`."""
    from visiondeck.models.attention import attention_blocks

    blocks = dict(attention_blocks(model))
    path = next((n for n, m in model.named_modules() if m is layer), None)
    if path is None:
        return layer
    return next((block for name, block in blocks.items()
                 if name.rpartition(".")[0] == path.rpartition(".")[0]
                 and name.rpartition(".")[2].startswith(path.rpartition(".")[2] + "_")),
                layer)


def _with_conv(model: nn.Module, path: str) -> nn.Module | None:
    """The module at `path` if it has a conv, else its nearest earlier sibling that has."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    if _has_conv(module):
        return module
    parent_path, _, _ = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    siblings = list(parent.children())
    earlier = siblings[: next(i for i, m in enumerate(siblings) if m is module)]
    return next((m for m in reversed(earlier) if _has_conv(m)), None)
