"""Which INT8 candidate export keeps: the fastest of those as close to FP32 as the closest."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest


def _score(agrees: list[bool], cosine: float | None = None) -> dict:
    score = {"top1_agreement": float(np.mean(agrees)), "agrees": np.array(agrees)}
    return score | ({} if cosine is None else {"embedding_cosine": cosine})


def test_mcnemar_counts_only_the_images_where_the_two_differ() -> None:
    from visiondeck.export.int8_choice import significantly_worse

    best = np.ones(40, bool)

    def other(lost: int, gained: int = 0) -> tuple[np.ndarray, np.ndarray]:
        b, o = best.copy(), best.copy()
        o[:lost] = False
        b[lost : lost + gained] = False
        return b, o

    # 5 of 5 discordant images lost: p = 1/32 < 0.05; 4 of 4: p = 1/16
    assert significantly_worse(*other(5))
    assert not significantly_worse(*other(4))
    # 5 lost, 1 gained: p = 7/64 - not evidence, though 4 images net
    assert not significantly_worse(*other(5, 1))
    assert math.isclose(sum(math.comb(6, k) for k in range(5, 7)) / 64, 7 / 64)
    assert not significantly_worse(*other(1, 3))  # the other one agrees more often
    assert not significantly_worse(best, best)


def test_the_fastest_as_close_candidate_is_kept() -> None:
    from visiondeck.export.int8_choice import pick

    agree = [True] * 60 + [False] * 4
    scores = {
        "exact": _score(agree, 0.9917),
        # one more image lost (not significant) and an embedding error 1.1x the best's
        "seven-bit": _score([True] * 59 + [False] * 5, 0.99087),
        # as many images, but an embedding error 2x: less faithful
        "rough": _score(agree, 0.9834),
        # 10 images lost: significant, though it is the fastest
        "fast": _score([True] * 50 + [False] * 14, 0.9917),
    }
    ms = {"exact": 20.0, "seven-bit": 16.0, "rough": 12.0, "fast": 10.0}
    kept, pool = pick(scores, ms)
    assert sorted(pool) == ["exact", "seven-bit"]
    assert kept == "seven-bit"
    # within the speed margin (5 %) the closer one wins: timing noise trades nothing away
    kept, _ = pick(scores, ms | {"exact": 16.5})
    assert kept == "exact"
    # without embeddings, agreement alone decides who is as close
    bare = {n: {k: v for k, v in s.items() if k != "embedding_cosine"} for n, s in scores.items()}
    kept, pool = pick(bare, ms)
    assert sorted(pool) == ["exact", "rough", "seven-bit"] and kept == "rough"
    with pytest.raises(ValueError, match="no INT8 candidate"):
        pick({}, {})


def test_a_candidate_at_rounding_distance_is_as_close_as_a_perfect_one() -> None:
    from visiondeck.export.int8_choice import pick

    agree = [True] * 16
    scores = {"perfect": _score(agree, 1.0), "rounded": _score(agree, 0.99995)}
    kept, pool = pick(scores, {"perfect": 10.0, "rounded": 5.0})
    assert sorted(pool) == ["perfect", "rounded"] and kept == "rounded"


def _net(path: Path, weights: tuple[np.ndarray, np.ndarray], burn: int) -> None:
    """input (n, 8) -> Gemm -> "embedding" (n, 16) -> Gemm -> "logits" (n, 4), plus `burn`
    512x512 MatMuls on a side branch multiplied by 0: the same answers at another cost."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1, w2 = weights
    rng = np.random.default_rng(9)
    nodes = [
        helper.make_node("Gemm", ["input", "w1"], ["embedding"], name="fc1"),
        helper.make_node("Gemm", ["embedding", "w2"], ["head"], name="fc2"),
    ]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    if burn:
        inits += [numpy_helper.from_array(rng.standard_normal((8, 512)).astype(np.float32), "up"),
                  numpy_helper.from_array(
                      (rng.standard_normal((512, 512)) / 23).astype(np.float32), "sq"),
                  numpy_helper.from_array(np.zeros((1, 4), np.float32), "zero")]
        nodes.append(helper.make_node("MatMul", ["input", "up"], ["side0"]))
        for i in range(burn):
            nodes.append(helper.make_node("MatMul", [f"side{i}", "sq"], [f"side{i + 1}"]))
        nodes += [
            helper.make_node("ReduceSum", [f"side{burn}"], ["total"], keepdims=1),
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("Add", ["head", "nothing"], ["logits"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["head"], ["logits"]))
    graph = helper.make_graph(
        nodes, "net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", 16])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_choose_measures_real_models_and_keeps_the_fast_faithful_one(tmp_path: Path) -> None:
    """Real ORT sessions: an exact copy that is slow, a nearly exact one 3x cheaper, and an
    unrelated network cheaper still. The nearly exact one is kept; the table says why."""
    from visiondeck.export.int8_choice import choose

    rng = np.random.default_rng(0)
    weights = (rng.standard_normal((8, 16)).astype(np.float32),
               rng.standard_normal((16, 4)).astype(np.float32))
    near = tuple((w * (1 + 1e-4 * rng.standard_normal(w.shape))).astype(np.float32)
                 for w in weights)
    other = tuple(rng.standard_normal(w.shape).astype(np.float32) for w in weights)
    paths = {name: tmp_path / f"{name}.onnx" for name in ("fp32", "slow", "near", "other")}
    _net(paths["fp32"], weights, 0)
    _net(paths["slow"], weights, 24)
    _net(paths["near"], near, 8)
    _net(paths["other"], other, 0)
    images = rng.standard_normal((64, 8)).astype(np.float32)
    kept, rows = choose(paths["fp32"], {n: paths[n] for n in ("slow", "near", "other")}, images)
    table = {row["settings"]: row for row in rows}
    assert kept == "near", table
    assert table["slow"]["top1_agreement"] == 1.0 and table["near"]["top1_agreement"] >= 0.98
    assert table["other"]["top1_agreement"] < 0.7
    assert [table[n]["as_close_as_closest"] for n in ("slow", "near", "other")] == [
        True, True, False]
    assert table["slow"]["cpu_ms_per_image"] > 2 * table["near"]["cpu_ms_per_image"]
    assert table["near"]["cpu_ms_per_image"] > table["other"]["cpu_ms_per_image"]
    assert all("agrees" not in row for row in rows)  # bundle.json gets plain figures
