"""Where a model's recall comes from: its samples on the data manifold, or the ones off it.

    python bench/recall_sources.py RUN [RUN ...] --n 2000 [--floor] [--per-class] [--json OUT]

Recall (Kynkäänniemi et al. 2019) counts a test image as covered when it lies in the k-NN ball of
*any* sample, and an off-manifold sample (one that precision does not count) can have a large ball;
Naeem et al. 2020 built coverage because of this. For each run this samples ``--n`` images with the
seed and batch size ``trilemma eval RUN --n N`` uses (so the precision and recall printed are
``eval``'s), and splits its recall with :func:`trilemma.metrics.prdc.recall_breakdown` into what the
in-manifold samples cover and what only the off-manifold ones do, beside the median k-NN radius of
each group (in units of the test images' median radius).

``--floor`` adds two rows scored the same way: ``--n`` training images (a perfect model at this n), and
``--n`` training images of all classes but the last two (a model that drops two modes). ``--per-class``
(labelled datasets) adds a table per row: for each class, the share of samples the feature network's
classifier puts in it and the recall on that class's test images, which tells dropped modes (a class
with few samples and low recall) from thin variety within classes (low recall everywhere).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from trilemma.data import load_dataset
from trilemma.errors import TrilemmaError
from trilemma.metrics import get_feature_network, prdc, recall_breakdown, reference_stats
from trilemma.metrics.evaluate import canonical_data_config
from trilemma.metrics.prdc import knn_radii, squared_distance_chunks
from trilemma.registry import load_run

COLUMNS = ("precision", "recall", "recall_from_inliers", "recall_from_outliers_only", "coverage",
           "outlier_share", "radius_inliers", "radius_outliers")
HEADER = ("row", "precision ↑", "recall ↑", "recall from inliers", "from outliers only", "coverage ↑",
          "outlier share", "inlier radius", "outlier radius")


def score(features, ref) -> dict[str, float]:
    """``trilemma eval``'s precision, recall and coverage, and the recall split by where the balls sit."""
    return {**prdc(ref.features, features, real_radii=ref.radii),
            **recall_breakdown(ref.features, features, real_radii=ref.radii)}


def floor_images(data_config, n: int, seed: int) -> dict[str, torch.Tensor]:
    """``n`` training images (all classes), and ``n`` of every class but the last two."""
    train = load_dataset(data_config, split="train")
    g = torch.Generator().manual_seed(seed)
    rows = {f"{n} training images": train.images[torch.randperm(len(train.images), generator=g)[:n]]}
    if train.labels is not None and int(train.labels.max()) >= 2:
        keep = torch.nonzero(train.labels < int(train.labels.max()) - 1).squeeze(1)
        rows[f"{n} training images, last two classes dropped"] = \
            train.images[keep[torch.randperm(len(keep), generator=g)[:n]]]
    return rows


def per_class(features, probs, ref, test_labels) -> dict[str, list[float]]:
    """Per class c: the share of samples classified as c, and the recall on the test images of class c."""
    r2_fake = torch.as_tensor(knn_radii(features, 3)[3]) ** 2
    covered = torch.zeros(len(ref.features), dtype=torch.bool)
    for rows, d2 in squared_distance_chunks(features, ref.features):
        covered |= (d2 <= r2_fake[rows, None]).any(0)
    predicted = torch.as_tensor(probs).argmax(1)
    classes = range(int(test_labels.max()) + 1)
    return {"sample_share": [float((predicted == c).double().mean()) for c in classes],
            "recall": [float(covered[test_labels == c].double().mean()) for c in classes]}


def class_table(name: str, r: dict[str, list[float]]) -> str:
    lines = [f"{name}:", "", "| class | " + " | ".join(str(c) for c in range(len(r["recall"]))) + " |",
             "|" + "---|" * (len(r["recall"]) + 1)]
    lines += [f"| {label} | " + " | ".join(f"{v:.3f}" for v in r[key]) + " |"
              for key, label in (("sample_share", "share of samples"), ("recall", "recall on its test images"))]
    return "\n".join(lines)


def table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:.3f}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders, all on the same dataset")
    ap.add_argument("--n", type=int, default=2000, help="samples per run (as trilemma eval --n)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (as trilemma eval --seed)")
    ap.add_argument("--batch-size", type=int, default=256, help="sampling batch (as trilemma eval --batch-size)")
    ap.add_argument("--floor", action="store_true", help="add training-image rows: all classes, two dropped")
    ap.add_argument("--per-class", action="store_true", help="per class: share of samples, recall on its test images")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)

    runs = [load_run(path, device="cpu") for path in args.runs]
    data_config = canonical_data_config(runs[0].data_config)
    for path, run in zip(args.runs, runs):
        if canonical_data_config(run.data_config) != data_config:
            raise TrilemmaError(f"{path}: trained on {run.data_config.name}, "
                                f"not {data_config.name} like {args.runs[0]}")
    fn = get_feature_network(data_config)
    test_labels = load_dataset(data_config, split="test").labels if args.per_class else None
    if args.per_class and (test_labels is None or not fn.has_classes):   # before minutes of sampling
        raise TrilemmaError(f"--per-class: {data_config.name} has no class labels")
    ref = reference_stats(fn, data_config, "test")
    images = {path: run.generate(args.n, seed=args.seed, batch_size=args.batch_size)
              for path, run in zip(args.runs, runs)}
    if args.floor:
        images.update(floor_images(data_config, args.n, args.seed))
    rows, classes = {}, {}
    for name, batch in images.items():
        features, probs = fn.embed(batch, desc=f"featurising {name}")
        rows[name] = score(features, ref)
        if args.per_class:
            classes[name] = per_class(features, probs, ref, test_labels)
    print(f"{data_config.name}, n = {args.n} per row against the {ref.n} test images, k = 3 (coverage: k = 5)")
    print(table(rows))
    for name, r in classes.items():
        print()
        print(class_table(name, r))
        rows[name]["per_class"] = r
    if args.json:
        args.json.write_text(json.dumps({"n": args.n, "seed": args.seed, "rows": rows}, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    try:
        main()
    except TrilemmaError as e:
        sys.exit(f"recall_sources: {e}")
