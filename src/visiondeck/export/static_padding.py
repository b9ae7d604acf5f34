"""TensorFlow-style "same" padding, fixed for the Bundle's input size before ONNX export.

timm's `tf_*` networks (EfficientNet-Lite among them) pad each stride-2 convolution by an
amount computed from the feature map's size at run time (`Conv2dSame`). Traced, that is a
chain of Shape → Gather → Div → Ceil → … → Pad in the graph, which ONNX Runtime cannot fold
(the batch axis is dynamic) and so cannot merge the Pad into the convolution: on
EfficientNet-Lite0 at 224 px the five Pads and their layout changes took 13 % of FP32's
time, and in INT8 each also dequantised a whole feature map, padded it in float and
quantised it again, a quarter of the INT8 model's time (ORT profile, batch 8, 1 thread).
A Bundle's image size is fixed, so the pads are too: `freeze_same_padding` computes each one
with timm's own formula for that size, and the exported graph has a constant Pad that ORT
folds into the convolution (its PadFusion; ORT's quantisation pre-pass does the same, so
the INT8 model has no Pad either).
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["freeze_same_padding"]


def freeze_same_padding(model: Any, example: Any) -> tuple[Any, int]:
    """A copy of `model` whose timm `Conv2dSame` layers pad by constants for inputs shaped
    like `example`, and how many there were; `model` itself is left as it was (its
    state_dict keys and its behaviour at other sizes)."""
    import torch
    import torch.nn.functional as F
    from timm.layers import Conv2dSame
    from timm.layers.padding import pad_same_arg

    layers = [m for m in model.modules() if isinstance(m, Conv2dSame)]
    if not layers:
        return model, 0
    frozen = copy.deepcopy(model)
    layers = [m for m in frozen.modules() if isinstance(m, Conv2dSame)]
    sizes: dict[int, list[int]] = {}

    def record(module: Any, args: tuple) -> None:  # (a hook's return value replaces args)
        sizes.setdefault(id(module), list(args[0].shape[-2:]))

    hooks = [layer.register_forward_pre_hook(record) for layer in layers]
    try:
        with torch.no_grad():
            frozen(example[:1])
    finally:
        for hook in hooks:
            hook.remove()

    def constant_pad(layer: Any, pads: list[int]) -> Any:
        def forward(x: Any) -> Any:
            # an explicit value: torch's exporter otherwise leaves Pad's constant_value
            # input empty, and ORT's PadFusion only fuses a Pad whose inputs are constants
            padded = F.pad(x, pads, value=0.0)
            return F.conv2d(padded, layer.weight, layer.bias, layer.stride, layer.padding,
                            layer.dilation, layer.groups)

        return forward

    count = 0
    for layer in layers:
        if id(layer) not in sizes:  # not on the path of this input
            continue
        pads = pad_same_arg(sizes[id(layer)], list(layer.kernel_size), list(layer.stride),
                            list(layer.dilation))
        layer.forward = constant_pad(layer, pads)
        count += 1
    return frozen, count
