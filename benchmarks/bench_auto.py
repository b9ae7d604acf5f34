"""The automatic recipe under a time budget, against its bars and against the peers.

    .venv/bin/python benchmarks/bench_auto.py CASE --time 2m [--yolo] [--no-visiondeck]
    .venv/bin/python benchmarks/bench_auto.py --setup-yolo      # benchmarks/.venv-yolo, once

CASE is a data set with no recipe at all:

- `fashion-mnist`: builtin:fashion-mnist, 60k train (val carved out), the official 10k test;
- `sample`: the bundled 4,000-image sample (15 % test carved out);
- `digits`: scikit-learn's 1,797 handwritten digits, 8×8 grey, with an SVM baseline;
- `digits-imbalanced`: the same with classes 5-9 cut to a quarter (imbalance 4), SVM too;
- `textures`: scikit-image's brick, grass and gravel photos cut into 1,200 grey crops of
  24-96 px (sizes vary), with an SVM on 16×16 pixels as the classical baseline;
- `photos`: six scikit-image colour photos cut into 1,200 crops of 48-160 px of varied
  shape; the class is the photo a crop came from.

VisionDeck runs `train_within(auto_recipe(SOURCE))` — what `visiondeck train SOURCE --time T`
runs — and scores the run's test files single view. `--yolo` also trains Ultralytics
yolo11n-cls from scratch (`time=` the same budget, its defaults otherwise, imgsz 32 for the
small images) on the very same train/val/test files, in benchmarks/.venv-yolo. Figures go to
benchmarks/results/auto-CASE-TIME.json and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WORK = Path(os.environ.get("BENCH_AUTO_DIR", "/tmp/visiondeck-bench-auto"))
YOLO_VENV = HERE / ".venv-yolo"
CASES = ("fashion-mnist", "sample", "digits", "digits-imbalanced", "textures", "photos")


# ------------------------------------------------------------------------------ data sets


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        Image.fromarray(array).save(path)


def make_source(case: str) -> str:
    """The data source of a case (folders are written once under WORK)."""
    if case == "fashion-mnist":
        return "builtin:fashion-mnist"
    if case == "sample":
        return "builtin:sample"
    folder = WORK / "data" / case
    if case.startswith("digits"):
        from sklearn.datasets import load_digits

        digits = load_digits()
        keep = np.ones(len(digits.target), bool)
        if case == "digits-imbalanced":
            rng = np.random.default_rng(0)
            keep = (digits.target < 5) | (rng.random(len(keep)) < 0.25)
        for i in np.flatnonzero(keep):
            image = (digits.images[i] * 255 / 16).round().astype(np.uint8)
            _save_png(folder / str(digits.target[i]) / f"{i:04d}.png", image)
    elif case in ("textures", "photos"):
        import skimage.data as sk

        names = (
            ("brick", "grass", "gravel")
            if case == "textures"
            else (
                "astronaut",
                "chelsea",
                "coffee",
                "rocket",
                "hubble_deep_field",
                "immunohistochemistry",
            )
        )
        rng = np.random.default_rng(1)
        for name in names:
            picture = getattr(sk, name)()
            h, w = picture.shape[:2]
            for i in range(1200 // len(names)):
                if case == "textures":
                    side = int(rng.integers(24, 97))
                    ch, cw = side, side
                else:
                    side = int(rng.integers(48, 161))
                    aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
                    ch, cw = side, min(w - 1, max(16, int(side * aspect)))
                y, x = int(rng.integers(0, h - ch)), int(rng.integers(0, w - cw))
                _save_png(folder / name / f"{i:04d}.png", picture[y : y + ch, x : x + cw])
    else:
        raise SystemExit(f"unknown case {case!r}; cases: {', '.join(CASES)}")
    return str(folder)


# ------------------------------------------------------------------------------ VisionDeck


def run_visiondeck(case: str, source: str, budget_s: float) -> dict:
    from visiondeck.evaluate.predict import predict_run_subsets
    from visiondeck.train.artifacts import load_trained
    from visiondeck.train.auto import auto_recipe
    from visiondeck.train.budget import train_within

    name = f"auto-{case}-{int(budget_s)}s"
    started = time.perf_counter()
    plan = auto_recipe(
        source,
        overrides=[
            f"name={name}",
            f"output_dir={WORK / 'runs'}",
            f"data.prepared={WORK / 'prepared' / case}",
            "tracking.enabled=false",
        ],
        progress=False,
    )
    choose_s = time.perf_counter() - started
    result, budget = train_within(
        plan.recipe, budget_s, progress=False, notes=plan.to_json(), split=plan.split
    )
    test = predict_run_subsets(load_trained(result.run_dir), names=("test",))["test"]
    accuracy = float((test.logits.argmax(1) == test.labels).mean())
    chosen = {c.key: c.value for c in plan.choices}
    return {
        "test_accuracy": round(accuracy, 4),
        "test_images": len(test.labels),
        "elapsed_s": result.extra["budget"]["elapsed_s"],
        "held_budget": result.extra["budget"]["within"],
        "stopped_early_by_guard": result.extra["budget"]["stopped_early_by_guard"],
        "epochs": result.epochs_run,
        "planned_epochs": budget.epochs if budget else None,
        "probe": budget.throughput.__dict__ if budget else None,
        "choose_s": round(choose_s, 1),
        "run_dir": str(result.run_dir),
        "model": chosen.get("model.name"),
        "image_size": chosen.get("data.image_size"),
        "channels": chosen.get("data.channels"),
        "flip": chosen.get("data.flip"),
        "balance": chosen.get("train.balance"),
        "batch_size": chosen.get("train.batch_size"),
    }


def svm_baseline(run_dir: str) -> dict:
    """An RBF SVM (scikit-learn defaults, pixels in 0..1) on the run's own train and test
    files at the images' own median size (at most 16 px a side), whatever size the network
    was given."""
    from sklearn.svm import SVC

    from visiondeck.data.cache import decode_records
    from visiondeck.data.catalog import decode_limits
    from visiondeck.train.artifacts import load_run_splits, load_trained

    trained = load_trained(run_dir)
    split, test_split = load_run_splits(run_dir)
    profile = json.loads((Path(run_dir) / "auto.json").read_text())["profile"]
    size = min(16, int(profile["median_side"]))
    arrays = {}
    for name, (root, records) in {
        "train": (split.root, split.subset("train")),
        "test": ((test_split or split).root, (test_split or split).subset("test")),
    }.items():
        decoded = decode_records(
            Path(root),
            records,
            split.classes,
            image_size=size,
            channels=trained.spec.channels,
            resize=trained.spec.resize,
            limits=decode_limits(trained.recipe.data),
        )
        arrays[name] = (decoded.images.reshape(len(decoded.images), -1) / 255.0, decoded.labels)
    started = time.perf_counter()
    model = SVC().fit(*arrays["train"])
    fit_s = time.perf_counter() - started
    accuracy = float((model.predict(arrays["test"][0]) == arrays["test"][1]).mean())
    return {"test_accuracy": round(accuracy, 4), "fit_s": round(fit_s, 3), "input": size}


# ------------------------------------------------------------------------------ Ultralytics


def setup_yolo() -> None:
    """benchmarks/.venv-yolo: ultralytics and its light dependencies; torch comes from the
    project's .venv through a .pth file (the same build on both sides, nothing to download)."""
    if not (YOLO_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(YOLO_VENV)], check=True)
    pip = [str(YOLO_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", "-r", str(HERE / "requirements-yolo.txt")], check=True)
    site = next((YOLO_VENV / "lib").glob("python3*/site-packages"))
    project = next((HERE.parent / ".venv" / "lib").glob("python3*/site-packages"))
    (site / "zz_project_torch.pth").write_text(f"{project}\n")


def yolo_folder(run_dir: str) -> Path:
    """train/val/test class folders of symlinks to exactly the run's split files."""
    from visiondeck.train.artifacts import load_run_splits

    split, test_split = load_run_splits(run_dir)
    out = WORK / "yolo" / Path(run_dir).name
    subsets = {
        "train": (split.root, split.subset("train")),
        "val": (split.root, split.subset("val")),
        "test": ((test_split or split).root, (test_split or split).subset("test")),
    }
    for subset, (root, records) in subsets.items():
        for record in records:
            link = out / subset / record.label / record.relpath.replace("/", "__")
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(Path(root) / record.relpath)
    return out


_YOLO_SCRIPT = """
import json, sys, time
from ultralytics import YOLO, settings
# no logging integrations: the project's packages (MLflow among them) are importable here
settings.update({k: False for k in ("mlflow", "tensorboard", "wandb", "clearml", "comet",
                                     "dvc", "neptune", "raytune", "hub", "sync") if k in settings})
data, hours, imgsz, out = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model = YOLO("yolo11n-cls.yaml")
started = time.perf_counter()
model.train(data=data, time=hours, imgsz=imgsz, device="cpu", pretrained=False, plots=False,
            amp=False, project=out, name="train", exist_ok=True, verbose=False)
elapsed = time.perf_counter() - started
metrics = model.val(data=data, split="test", imgsz=imgsz, device="cpu", plots=False,
                    project=out, name="test", exist_ok=True, verbose=False)
print(json.dumps({"test_accuracy": round(float(metrics.top1), 4), "elapsed_s": round(elapsed, 1),
                  "epochs": int(getattr(model.trainer, "epoch", -1)) + 1}))
"""


def run_yolo(run_dir: str, budget_s: float, imgsz: int) -> dict:
    if not (YOLO_VENV / "bin" / "python").exists():
        raise SystemExit("run `python benchmarks/bench_auto.py --setup-yolo` first")
    data = yolo_folder(run_dir)
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(WORK / "yolo-config")}
    done = subprocess.run(
        [
            str(YOLO_VENV / "bin" / "python"),
            "-c",
            _YOLO_SCRIPT,
            str(data),
            str(budget_s / 3600),
            str(imgsz),
            str(WORK / "yolo-runs"),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        return {"error": done.stderr[-1500:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["held_budget"] = result["elapsed_s"] <= budget_s * 1.10
    result["imgsz"] = imgsz
    return result


# ------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", nargs="?", choices=CASES)
    parser.add_argument("--time", default="2m", help="budget, e.g. 10m, 2m, 1m")
    parser.add_argument("--yolo", action="store_true", help="also run Ultralytics")
    parser.add_argument(
        "--no-visiondeck",
        action="store_true",
        help="Ultralytics only, on the split of an earlier VisionDeck run",
    )
    parser.add_argument("--setup-yolo", action="store_true")
    args = parser.parse_args()
    if args.setup_yolo:
        setup_yolo()
        print(f"ready: {YOLO_VENV}")
        return
    if args.case is None:
        parser.error("give a CASE (or --setup-yolo)")
    from visiondeck.train.budget import parse_duration

    budget_s = parse_duration(args.time)
    out = RESULTS / f"auto-{args.case}-{args.time}.json"
    record = json.loads(out.read_text()) if out.exists() else {}
    record.update(
        {
            "case": args.case,
            "budget_s": budget_s,
            "host": platform.node(),
            "cores": os.cpu_count(),
            "load_at_start": os.getloadavg()[0],
            "torch_threads": __import__("torch").get_num_threads(),
        }
    )
    source = make_source(args.case)
    if not args.no_visiondeck:
        record["visiondeck"] = run_visiondeck(args.case, source, budget_s)
        if args.case not in ("fashion-mnist", "sample"):
            record["svm"] = svm_baseline(record["visiondeck"]["run_dir"])
    if args.yolo:
        run = record.get("visiondeck", {}).get("run_dir")
        if not run:
            raise SystemExit(
                "no VisionDeck run to take the split from: run without --no-visiondeck first"
            )
        size = int(record["visiondeck"]["image_size"])
        record["yolo"] = run_yolo(run, budget_s, imgsz=max(32, 32 * round(size / 32)))
    record["load_at_end"] = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=str))
    _print(record)


def _print(record: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{record['case']}, budget {record['budget_s']:.0f} s (load "
        f"{record['load_at_start']:.1f} → {record['load_at_end']:.1f} on "
        f"{record['cores']} cores)",
        title_justify="left",
    )
    for column in ("system", "test accuracy", "time", "held budget", "epochs", "notes"):
        table.add_column(column)
    vd = record.get("visiondeck")
    if vd:
        table.add_row(
            "VisionDeck auto",
            f"{vd['test_accuracy']:.2%}",
            f"{vd['elapsed_s']:.0f} s",
            str(vd["held_budget"]),
            f"{vd['epochs']} (planned {vd['planned_epochs']})",
            f"{vd['model']} {vd['image_size']} px, {vd['channels']} ch, flip "
            f"{vd['flip']}, balance {vd['balance']}",
        )
    svm = record.get("svm")
    if svm:
        table.add_row(
            "SVM (RBF)",
            f"{svm['test_accuracy']:.2%}",
            f"{svm['fit_s']:.2f} s",
            "",
            "",
            f"pixels at {svm['input']} px",
        )
    yolo = record.get("yolo")
    if yolo and "error" not in yolo:
        table.add_row(
            "Ultralytics yolo11n-cls",
            f"{yolo['test_accuracy']:.2%}",
            f"{yolo['elapsed_s']:.0f} s",
            str(yolo["held_budget"]),
            str(yolo["epochs"]),
            f"from scratch, imgsz {yolo['imgsz']}",
        )
    elif yolo:
        table.add_row("Ultralytics", "error", "", "", "", yolo["error"][-200:])
    Console().print(table)


if __name__ == "__main__":
    main()
