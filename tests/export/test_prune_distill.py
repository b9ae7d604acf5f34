"""The pruned network's fine-tune: distillation from the unpruned one, its schedule, rounds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from visiondeck.export.prune import (
    LEGACY_FINETUNE,
    FinetuneConfig,
    finetune_lrs,
)
from visiondeck.export.samples import LabelledBatch


def _model(seed: int = 0):
    """A random network with confident, image-dependent answers (a teacher worth copying)."""
    import torch

    from visiondeck.models import create_model

    torch.manual_seed(seed)
    model = create_model("resnet_small_t", num_classes=4, in_chans=1, pretrained=False)
    # BatchNorm statistics of the images it will see, as after training: fine-tuning then
    # does not move them, and what changes in the student is what it learned
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        for batch in _batches()():
            model(torch.from_numpy(batch.images))
        model.fc.weight.mul_(10.0)
    return model.eval()


def _batches(seed: int = 0, n: int = 4, size: int = 16):
    """Fixed batches whose labels are noise: only a teacher has anything to teach."""
    rng = np.random.default_rng(seed)
    data = [
        LabelledBatch(
            rng.standard_normal((size, 1, 16, 16)).astype(np.float32),
            rng.integers(0, 4, size).astype(np.int64),
        )
        for _ in range(n)
    ]
    return lambda: iter(data)


def _kl_to(teacher, student, x) -> float:
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        return float(
            F.kl_div(
                F.log_softmax(student(x), 1), F.log_softmax(teacher(x), 1),
                reduction="batchmean", log_target=True,
            )
        )


# ------------------------------------------------------------------------- the schedule


def test_cosine_warms_up_then_decays_to_zero() -> None:
    rates = finetune_lrs(0.01, 100, FinetuneConfig(warmup=0.1))
    assert len(rates) == 100
    assert rates[0] == pytest.approx(0.001)  # starts small
    assert rates[:10] == sorted(rates[:10]) and rates[9] == pytest.approx(0.01)  # warm-up
    assert max(rates) == pytest.approx(0.01)
    assert rates[10:] == sorted(rates[10:], reverse=True)  # cosine down
    assert rates[55] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert rates[-1] < 0.0001


def test_constant_schedule_and_no_steps() -> None:
    assert finetune_lrs(0.02, 5, LEGACY_FINETUNE) == [0.02] * 5
    assert finetune_lrs(0.02, 0, FinetuneConfig()) == []
    assert finetune_lrs(0.02, 1, FinetuneConfig()) == [0.02]


@pytest.mark.parametrize(
    "bad", [{"schedule": "step"}, {"alpha": 1.5}, {"temperature": 0}, {"rounds": 0}]
)
def test_bad_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        FinetuneConfig(**bad)


# --------------------------------------------------------------------------- the loss


def test_distillation_loss_is_hinton_s() -> None:
    import torch
    import torch.nn.functional as F

    from visiondeck.export.prune import distillation_loss

    torch.manual_seed(0)
    student, teacher = torch.randn(8, 5), torch.randn(8, 5)
    labels = torch.randint(0, 5, (8,))
    ce = F.cross_entropy(student, labels)
    assert torch.allclose(distillation_loss(student, teacher, labels, alpha=0.0, temperature=3),
                          ce)
    # the student already answering as the teacher: only the labels' share is left
    same = distillation_loss(teacher, teacher, labels, alpha=0.7, temperature=3)
    assert torch.allclose(same, 0.3 * F.cross_entropy(teacher, labels), atol=1e-6)
    t = 3.0
    kl = (F.softmax(teacher / t, 1) * (F.log_softmax(teacher / t, 1)
                                       - F.log_softmax(student / t, 1))).sum(1).mean()
    assert torch.allclose(distillation_loss(student, teacher, labels, alpha=1.0, temperature=t),
                          kl * t * t, atol=1e-5)


# ----------------------------------------------------------------------- the fine-tune


def _prune(config: FinetuneConfig, *, steps: int = 12, lr: float = 0.02):
    from visiondeck.export.prune import prune_and_finetune

    model = _model()
    report = prune_and_finetune(
        model, amount=0.5, method="structured", train_batches=_batches(),
        evaluate=lambda _m: None, steps=steps, lr=lr, optimizer="sgd", finetune=config,
    )
    return model, report


def test_distillation_pulls_the_pruned_network_toward_the_teacher() -> None:
    import torch

    from visiondeck.export.prune import remove_channels

    teacher = _model()
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((32, 1, 16, 16),
                                                                  dtype=np.float32))
    cut = _model()
    remove_channels(cut, 0.5, x[:1])
    distilled, report = _prune(FinetuneConfig(alpha=1.0, temperature=2.0))
    labelled, _ = _prune(FinetuneConfig(distill=False))
    assert report.finetune["distill"] and report.steps == 12
    # on unseen images the distilled copy answers more like the teacher than right after the
    # cut, and more than the copy fine-tuned on the (noise) labels alone
    assert _kl_to(teacher, distilled, x) < 0.5 * _kl_to(teacher, cut, x)
    assert _kl_to(teacher, distilled, x) < _kl_to(teacher, labelled, x)


def test_legacy_fine_tune_is_the_labels_only_constant_rate_loop() -> None:
    import torch

    from visiondeck.export.prune import remove_channels

    model, report = _prune(LEGACY_FINETUNE, steps=5, lr=0.01)
    assert report.finetune == {**FinetuneConfig().__dict__, "distill": False,
                               "schedule": "constant", "warmup": 0.0}
    # the loop of before, written out: one cut, SGD at a constant rate, cross-entropy
    reference = _model()
    batches = _batches()
    remove_channels(reference, 0.5, torch.from_numpy(next(batches()).images[:1]))
    opt = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    reference.train()
    done = 0
    while done < 5:
        for batch in batches():
            if done == 5:
                break
            opt.zero_grad()
            logits = reference(torch.from_numpy(batch.images))
            torch.nn.functional.cross_entropy(logits, torch.from_numpy(batch.labels)).backward()
            opt.step()
            done += 1
    reference.eval()
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.allclose(ours[key].float(), theirs[key].float(), atol=1e-6), key


def test_export_s_default_fine_tune_is_recorded() -> None:
    from dataclasses import asdict

    from visiondeck.export.prune import DEFAULT_FINETUNE, prune_and_finetune

    report = prune_and_finetune(
        _model(), amount=0.5, method="structured", train_batches=_batches(),
        evaluate=lambda _m: None, steps=2, lr=0.01, optimizer="sgd",
    )
    assert report.finetune == asdict(DEFAULT_FINETUNE)


def test_rounds_end_on_the_widths_of_one_cut() -> None:
    _, report_one = _prune(FinetuneConfig(), steps=4)
    _, report_two = _prune(FinetuneConfig(rounds=2), steps=5)
    assert report_two.channels == report_one.channels
    assert report_two.parameters_after == report_one.parameters_after
    assert report_two.steps == 5 and report_two.finetune["rounds"] == 2


def test_distilled_pruned_network_exports_smaller(tmp_path: Path) -> None:
    import onnxruntime as ort
    import torch

    def export(model, name: str) -> Path:
        path = tmp_path / name
        torch.onnx.export(model, (torch.zeros(2, 1, 16, 16),), str(path), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        return path

    full = export(_model(), "full.onnx")
    pruned_model, report = _prune(FinetuneConfig(), steps=4)
    pruned = export(pruned_model, "pruned.onnx")
    assert pruned.stat().st_size < full.stat().st_size / 2
    assert report.parameters_after < report.parameters_before / 2
    x = np.random.default_rng(2).standard_normal((3, 1, 16, 16), dtype=np.float32)
    (logits,) = ort.InferenceSession(str(pruned)).run(None, {"input": x})
    with torch.no_grad():
        expected = pruned_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
