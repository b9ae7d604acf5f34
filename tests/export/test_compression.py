"""INT8 that keeps its accuracy, pruning that shrinks, and the sweep's choice of variant.

Tiny networks and the shared tiny run; every check compares against a second computation
(the FP32 graph, the pruned PyTorch model, a hand-made table).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from visiondeck.export.bundle import load_bundle
from visiondeck.export.sweep import SweepRow, choose_default, mark_pareto

# ------------------------------------------------------------------------------- INT8


def _same_padding_module(seed: int = 0):
    """A net with TensorFlow-style "same" padding (timm's Conv2dSame), as in Lite0: two
    stride-2 layers, a 3x3 conv and a depthwise 5x5."""
    import torch
    from timm.layers import create_conv2d
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = create_conv2d(3, 8, 3, stride=2, padding="same")
            self.b = create_conv2d(8, 8, 5, stride=2, padding="same", depthwise=True)
            self.fc = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.b(torch.relu(self.a(x))))
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(seed)
    return Net().eval()


def _same_padding_net(path: Path, seed: int = 0) -> None:
    """`_same_padding_module` exported as is: its pads computed in the graph at run time."""
    import torch

    torch.onnx.export(
        _same_padding_module(seed),
        (torch.zeros(2, 3, 64, 64),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "b"}, "logits": {0: "b"}},
    )


@pytest.fixture(scope="module")
def same_net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("same") / "fp32.onnx"
    _same_padding_net(path)
    return path


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 64, 64)).astype(np.float32)


def test_shape_arithmetic_is_never_quantised(same_net: Path, tmp_path: Path) -> None:
    import onnx

    from visiondeck.export.checks import ort_session
    from visiondeck.export.quantize import quantize_static_int8, shape_arithmetic_nodes

    fp32 = onnx.load(str(same_net))
    shape_nodes = set(shape_arithmetic_nodes(fp32))
    by_name = {n.name: n for n in fp32.graph.node}
    # the padding arithmetic of both same-padded convs: Shape → ... → Ceil → ... → Concat
    assert {by_name[n].op_type for n in shape_nodes} >= {"Shape", "Ceil", "Concat"}
    assert (
        not {n.name for n in fp32.graph.node if n.op_type in ("Conv", "Pad", "Gemm")} & shape_nodes
    )
    shape_tensors = {t for n in shape_nodes for t in by_name[n].output}

    out = tmp_path / "int8.onnx"
    images = _images(32)
    done = quantize_static_int8(same_net, out, [images[:16], images[16:]])
    # counted after ORT's pre-pass, which folds some of them into constants
    assert 0 < done.settings["shape_nodes_kept_float"] <= len(shape_nodes)
    int8 = onnx.load(str(out))
    quantised = {n.input[0] for n in int8.graph.node if n.op_type == "QuantizeLinear"}
    assert quantised and not quantised & shape_tensors  # activations yes, sizes no
    assert {n.op_type for n in int8.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    y32 = ort_session(same_net).run(["logits"], {"input": images})[0]
    y8 = ort_session(out).run(["logits"], {"input": images})[0]
    assert np.abs(y8 - y32).max() < 0.02 * np.abs(y32).max()


def test_layer_losses_compare_every_shared_activation(same_net: Path, tmp_path: Path) -> None:
    from visiondeck.export.quantize import layer_losses, quantize_static_int8

    out = tmp_path / "int8.onnx"
    images = _images(16)
    quantize_static_int8(same_net, out, [images])
    losses = dict(layer_losses(same_net, out, images[:4]))
    assert "logits" in losses and np.isfinite(losses["logits"])
    # the network's own tensors are compared, with SNR well above noise (>15 dB)
    assert all(db > 15 for db in losses.values()), losses


@pytest.mark.parametrize(
    ("groups", "expected"),
    [(("stem",), ["Conv"]), (("head",), ["Conv", "Gemm"]), (("depthwise",), ["Conv"])],
)
def test_layers_kept_float_have_float_weights(
    same_net: Path, tmp_path: Path, groups: tuple[str, ...], expected: list[str]
) -> None:
    import onnx

    from visiondeck.export.quantize import Int8Settings, quantize_static_int8

    out = tmp_path / "int8.onnx"
    images = _images(16)
    done = quantize_static_int8(same_net, out, [images], settings=Int8Settings(keep_float=groups))
    assert done.settings["keep_float"] == list(groups)
    graph = onnx.load(str(out)).graph
    initializers = {t.name for t in graph.initializer}
    float_weight = [
        n for n in graph.node if n.op_type in ("Conv", "Gemm") and n.input[1] in initializers
    ]  # no DequantizeLinear in front
    # "head" is the classifier and the conv before the pool (EfficientNet's conv_head)
    assert sorted(n.op_type for n in float_weight) == expected
    if groups == ("depthwise",):
        assert next(a.i for a in float_weight[0].attribute if a.name == "group") == 8


def _conv_net(path: Path, widths: tuple[int, ...], classes: int) -> None:
    """3x3 convs of `widths`, a global pool and a classifier, exported to ONNX."""
    import torch
    from torch import nn

    layers, inputs = [], 3
    for width in widths:
        layers += [nn.Conv2d(inputs, width, 3, padding=1), nn.ReLU()]
        inputs = width
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inputs, classes)]
    model = nn.Sequential(*layers, *head)
    torch.onnx.export(model.eval(), (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["logits"])


def test_the_head_stays_float_unless_it_is_most_of_the_network(tmp_path: Path) -> None:
    """Lite0-like proportions keep export's candidates (head float); a small CNN whose last
    conv holds most weights gets the same settings with the head quantised, or its INT8
    model would be nearly FP32's size."""
    import onnx

    from visiondeck.export.quantize import CANDIDATES, default_candidates, head_share

    deep, shallow = tmp_path / "deep.onnx", tmp_path / "shallow.onnx"
    _conv_net(deep, (32, 64, 64, 8), 3)  # head: the 64->8 conv and an 8->3 classifier
    _conv_net(shallow, (8, 128), 3)  # head: the 8->128 conv and a 128->3 classifier
    # weights: 3*32*9 + 32*64*9 + 64*64*9 + 64*8*9 + 8*3 = 60,792, of which 4,632 the head's
    assert head_share(onnx.load(str(deep))) == pytest.approx(4632 / 60792)
    assert default_candidates(deep) == CANDIDATES
    assert head_share(onnx.load(str(shallow))) > 0.9
    quantised = default_candidates(shallow)
    assert [c.keep_float for c in quantised] == [()] * len(CANDIDATES)
    assert [c.saturation_repair for c in quantised] == [c.saturation_repair for c in CANDIDATES]


def test_closeness_of_a_model_with_itself_and_with_another(same_net: Path, tmp_path: Path) -> None:
    from visiondeck.export.checks import ort_session
    from visiondeck.export.int8_choice import closeness

    images = _images(64)
    same = closeness(ort_session(same_net), ort_session(same_net), images)
    assert same == {"n_images": 64, "top1_agreement": 1.0}  # no embedding output here
    other = tmp_path / "other.onnx"
    _same_padding_net(other, seed=1)  # same graph, other weights
    score = closeness(ort_session(same_net), ort_session(other), images)
    a = ort_session(same_net).run(["logits"], {"input": images})[0].argmax(1)
    b = ort_session(other).run(["logits"], {"input": images})[0].argmax(1)
    assert score["top1_agreement"] == pytest.approx(float((a == b).mean()))
    assert score["top1_agreement"] < 1.0


# ------------------------------------------------------------- the recommendation, served


def test_recommendation_is_one_point_of_accuracy_and_agreement() -> None:
    from visiondeck.export.onnx_export import _recommendation

    def rec(fp32: float, int8: float, agreement: float) -> dict:
        return _recommendation(
            {
                "fp32": {"accuracy": fp32},
                "int8": {"accuracy": int8, "agreement_with_fp32": agreement},
            },
            0.01,
        )

    assert rec(0.90, 0.895, 0.995) == {
        "accuracy_lost": 0.005,
        "recommended": True,
        "max_loss": 0.01,
    }
    assert rec(0.90, 0.88, 0.999)["recommended"] is False  # 2 points lost
    assert rec(0.90, 0.90, 0.97)["recommended"] is False  # same accuracy, other answers
    assert rec(0.90, 0.89, 0.99)["recommended"] is True  # exactly on the bound


def test_exported_int8_records_settings_selection_and_default(exported) -> None:
    from visiondeck.export.quantize import default_candidates

    bundle = exported.bundle
    int8 = bundle.variants["int8"]
    tried = int8["selection"]["candidates"]
    assert [c["settings"] for c in tried] == [
        c.name for c in default_candidates(bundle.onnx_path("fp32"))]
    # int8_choice's rule, recomputed from the recorded figures: the closest candidate is
    # always in the pool, and the kept one is the closest of those within 5 % of the
    # pool's least CPU time
    closest = max(tried, key=lambda c: (c["top1_agreement"], c["embedding_cosine"]))
    pool = [c for c in tried if c["as_close_as_closest"]]
    assert closest in pool and all(c["cpu_ms_per_image"] > 0 for c in tried)
    fastest = min(c["cpu_ms_per_image"] for c in pool)
    quick = [c for c in pool if c["cpu_ms_per_image"] <= fastest * 1.05 + 1e-3]
    kept = max(quick, key=lambda c: (c["top1_agreement"], c["embedding_cosine"]))
    assert int8["settings"]["name"] == kept["settings"]
    assert int8["selection"]["rule"].startswith("fastest by CPU time")
    lost = bundle.variants["fp32"]["accuracy"] - int8["accuracy"]
    assert int8["accuracy_lost"] == pytest.approx(lost, abs=1e-6)
    expected = lost <= 0.01 + 1e-9 and int8["agreement_with_fp32"] >= 0.99 - 1e-9
    assert int8["recommended"] is expected
    assert bundle.info["default_variant"] == ("int8" if expected else "fp32")


@pytest.mark.parametrize(
    ("recorded", "recommended", "served"),
    [("int8", True, "int8"), ("int8", False, "fp32"), ("fp32", True, "fp32"), (None, True, "fp32")],
)
def test_the_server_default_respects_the_recommendation(
    bundle_copy, recorded: str | None, recommended: bool, served: str
) -> None:
    from visiondeck.serve.inference.engine import load_model

    info = json.loads((bundle_copy() / "bundle.json").read_text())
    variants = info["variants"]
    variants["int8"]["recommended"] = recommended
    folder = bundle_copy(variants=variants, default_variant=recorded)
    assert load_bundle(folder).default_variant == served
    model = load_model(str(folder))  # the settings' default: variant "auto"
    assert model.variant == served
    assert Path(model.session._model_path).name == variants[served]["file"]
    assert load_model(str(folder), variant="int8").variant == "int8"  # asked for: honoured


def test_a_default_variant_the_bundle_lacks_is_refused(bundle_copy) -> None:
    from visiondeck.export.errors import BundleError

    with pytest.raises(BundleError, match="default_variant"):
        load_bundle(bundle_copy(default_variant="pruned-50"))


# ------------------------------------------------------------------------------ pruning


def test_removed_channels_rebuild_from_weights_alone() -> None:
    import torch

    from visiondeck.export.prune import (
        conv_channels,
        fit_to_state,
        parameter_count,
        remove_channels,
    )
    from visiondeck.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet_small_t", num_classes=4, in_chans=1, pretrained=False).eval()
    before = parameter_count(model)
    x = torch.randn(3, 1, 28, 28)
    remove_channels(model, 0.5, x[:1])
    # half of every conv's channels, the residual blocks' two sides kept equal
    assert conv_channels(model) == {
        name: width // 2
        for name, width in conv_channels(
            create_model("resnet_small_t", num_classes=4, in_chans=1, pretrained=False)
        ).items()
    }
    assert parameter_count(model) < before / 3
    fresh = create_model("resnet_small_t", num_classes=4, in_chans=1, pretrained=False).eval()
    state = model.state_dict()
    fit_to_state(fresh, state)
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_structured_pruning_exports_a_smaller_network(
    exported, trained_run: Path, tmp_path: Path
) -> None:
    import onnx
    import torch
    from onnx import numpy_helper
    from safetensors.numpy import load_file

    from visiondeck.export.onnx_export import export_run
    from visiondeck.export.predictor import Predictor
    from visiondeck.export.torch_model import load_torch_model

    result = export_run(
        trained_run,
        tmp_path / "b",
        prune=0.5,
        prune_method="structured",
        prune_steps=3,
        parity_images=4,
        reference_images=0,
    )
    pruning = result.bundle.info["pruning"]
    weights = load_file(str(result.path / "weights.safetensors"))
    learned = sum(
        w.size
        for name, w in weights.items()
        if name.endswith(("weight", "bias")) and "running" not in name
    )
    assert pruning["parameters_after"] == learned < pruning["parameters_before"] / 2

    def onnx_parameters(path: Path) -> int:
        return sum(numpy_helper.to_array(t).size for t in onnx.load(str(path)).graph.initializer)

    assert (
        onnx_parameters(result.path / "model.onnx")
        < onnx_parameters(exported.path / "model.onnx") / 2
    )
    convs = {n: w.shape[0] for n, w in weights.items() if w.ndim == 4}
    assert {f"{k}.weight": v for k, v in pruning["channels"].items()} == convs
    # the Bundle's network rebuilt from bundle.json + weights (fit_to_state) = its ONNX model
    images = np.random.default_rng(0).random((4, *result.bundle.input.shape), np.float32)
    with torch.no_grad():
        expected = load_torch_model(result.bundle)(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(Predictor(result.bundle).logits(images), expected, atol=1e-4)


# ------------------------------------------------------------------------------- sweep


def _row(
    variant: str,
    accuracy: float | None,
    speed: float,
    agreement: float = 1.0,
    engine: str = "onnxruntime",
) -> SweepRow:
    return SweepRow(
        variant, engine, f"{variant}.onnx", 1000, accuracy, agreement, images_per_s=speed
    )


def test_pareto_front_of_a_known_table() -> None:
    rows = [
        _row("fp32", 0.90, 100),
        _row("int8", 0.895, 180),
        _row("slow-worse", 0.89, 90),
        _row("pruned-25", 0.90, 150),
        _row("pruned-50", 0.85, 300),
        _row("tie", 0.85, 300),
        _row("unknown", None, 50),
    ]
    mark_pareto(rows)
    front = {r.variant for r in rows if r.pareto}
    # fp32 is beaten by pruned-25 (as accurate, faster); equal rows do not dominate each other
    assert front == {"int8", "pruned-25", "pruned-50", "tie"}


def test_default_is_the_fastest_recommended_front_row_the_bundle_can_serve() -> None:
    rows = [
        _row("fp32", 0.90, 100),
        _row("int8", 0.895, 180, agreement=0.995),
        _row("pruned-25", 0.90, 150),
        _row("pruned-50", 0.85, 300),
        _row("int8-entropy", 0.899, 400, agreement=0.97),
        _row("int8", 0.895, 500, engine="openvino"),
        _row("pruned-10", 0.91, 120, agreement=0.95),
    ]
    mark_pareto(rows)
    chosen = choose_default(rows, 0.01, servable={"fp32", "int8", "pruned-25", "pruned-50"})
    assert chosen == "int8"
    status = {(r.variant, r.engine): r.recommended for r in rows}
    assert status[("pruned-50", "onnxruntime")] is False  # 5 points lost
    assert status[("int8-entropy", "onnxruntime")] is False  # 97 % agreement
    assert status[("pruned-10", "onnxruntime")] is True  # retrained: judged on accuracy
    assert [r.variant for r in rows if r.default] == ["int8"]
    # nothing qualifies: FP32
    assert choose_default(rows, 0.01, servable={"fp32"}) == "fp32"


def test_sweep_measures_every_variant_and_the_bundle_serves_its_choice(
    trained_run: Path, tmp_path: Path
) -> None:
    from visiondeck.export.quantize import CANDIDATES
    from visiondeck.export.sweep import SWEEP_FILE, sweep_run
    from visiondeck.serve.inference.engine import load_model

    report = sweep_run(
        trained_run,
        tmp_path / "b",
        prune_ratios=(0.5,),
        prune_steps=2,
        int8_candidates=CANDIDATES[:2],
        rounds=1,
        seconds=0.01,
        batch_size=4,
        threads=1,
        openvino=False,
    )
    names = [r.variant for r in report.rows]
    best = load_bundle(report.bundle).variants["int8"]["settings"]["name"]
    other = next(c.name for c in CANDIDATES[:2] if c.name != best)
    assert sorted(names) == sorted(["fp32", "int8", f"int8-{other}", "pruned-50", "pruned-50-int8"])
    fp32 = next(r for r in report.rows if r.variant == "fp32")
    pruned = next(r for r in report.rows if r.variant == "pruned-50")
    assert pruned.bytes < fp32.bytes and fp32.agreement == 1.0
    assert all(r.p50_ms > 0 and r.images_per_s > 0 for r in report.rows)
    # the table's marks follow the rules, recomputed here from its own figures
    for row in report.rows:
        beaten = any(
            (o.accuracy >= row.accuracy and o.images_per_s >= row.images_per_s)
            and (o.accuracy > row.accuracy or o.images_per_s > row.images_per_s)
            for o in report.rows
        )
        assert row.pareto is not beaten
        lost = fp32.accuracy - row.accuracy
        agrees = row.variant.startswith("pruned") or row.agreement >= 0.99 - 1e-9
        assert row.recommended is (lost <= 0.01 + 1e-9 and agrees)
    served = [r for r in report.rows if r.default]
    assert len(served) == 1 and served[0].variant == report.default_variant
    assert served[0].images_per_s == max(r.images_per_s for r in report.rows if r.recommended)
    bundle = load_bundle(report.bundle)
    assert bundle.info["default_variant"] == report.default_variant == bundle.default_variant
    assert bundle.info["sweep"]["rows"] == [r.to_dict() for r in report.rows]
    saved = json.loads((Path(report.bundle) / SWEEP_FILE).read_text())
    assert saved["default_variant"] == report.default_variant
    assert load_model(report.bundle).variant == report.default_variant


def test_model_card_shows_the_sweep_table(bundle_copy, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from visiondeck.serve.app import create_app
    from visiondeck.serve.settings import ServeSettings

    rows = [
        _row("fp32", 0.90, 100),
        _row("int8", 0.895, 180, agreement=0.995),
        _row("pruned-50", 0.85, 300),
    ]
    mark_pareto(rows)
    choose_default(rows, 0.01, servable={"fp32", "int8", "pruned-50"})
    variants = json.loads((bundle_copy() / "bundle.json").read_text())["variants"]
    variants["int8"]["recommended"] = True
    folder = bundle_copy(
        sweep={"rows": [r.to_dict() for r in rows], "default_variant": "int8"},
        default_variant="int8",
        variants=variants,
    )
    settings = ServeSettings(
        bundle=str(folder),
        data_dir=tmp_path / "data",
        watch_interval_s=0,
        preprocess_threads=1,
        intra_op_threads=1,
    )
    with TestClient(create_app(settings)) as client:
        html = client.get("/model-card").text
        described = client.get("/model").json()
    table = html[
        html.index('id="card-sweep"') : html.index("</table>", html.index('id="card-sweep"'))
    ]
    body = table.split("<tbody>")[1]
    assert body.count("<tr") == 3
    int8_row = body.split("<tr")[2]
    assert "int8" in int8_row and "0.8950" in int8_row and "180" in int8_row
    assert "★" in int8_row and "served by default" in int8_row
    assert "not recommended" in body.split("<tr")[3]  # pruned-50 loses 5 points
    assert described["variant"] == "int8"


@pytest.mark.parametrize("ratios", ["2", "0.5,x"])
def test_sweep_command_refuses_bad_pruning_ratios(tmp_path: Path, ratios: str) -> None:
    from typer.testing import CliRunner

    from visiondeck.cli import app

    result = CliRunner().invoke(app, ["export", str(tmp_path), "--sweep", "--sweep-prune", ratios])
    assert result.exit_code != 0
    assert "--sweep-prune" in " ".join(result.output.split())
