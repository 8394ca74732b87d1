"""Compute the reference rows of docs/metrics.md: what real data and trivial baselines score.

    python scripts/reference_rows.py [--data fashion-mnist] [--n 10000] [--docs docs/metrics.md]

Rows, each with the same number of images as the default `trilemma eval` (10,000):

- **test vs train (floor)**: the real test split scored against the train split
  (a fixed 10,000-image subset) — the best a model can hope for;
- **exact copies of training images**: 10,000 random training images scored like any
  sample set (against the test split) — as good as the floor on quality and coverage,
  caught only by the memorisation columns;
- **per-pixel Gaussian**: each pixel drawn independently from a Gaussian with that
  pixel's training mean and standard deviation (blurry, structureless averages);
- **Gaussian noise**: N(0, 1) in the [-1, 1] pixel scale, clipped.

The table is written between the ``reference-rows`` markers of ``--docs``, every
row's full result as JSON into ``--json-dir`` (so `trilemma compare` can show them
beside a run), and the test accuracy of each dataset's feature network between the
``feature-net-accuracy`` markers. Nothing in these tables is typed by hand.
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
ROWS_MARKER = "reference-rows"
ACCURACY_MARKER = "feature-net-accuracy"
ACCURACY_DATA = ("fashion-mnist", "mnist-5k", "digits")


def gaussian_noise(n: int, shape, generator: torch.Generator) -> torch.Tensor:
    from trilemma.data import to_uint8

    return to_uint8(torch.randn((n, *shape), generator=generator).clamp(-1, 1))  # (n, C, H, W)


def per_pixel_gaussian(train: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Independent N(mean_p, std_p) per pixel p, fitted to the training images in [-1, 1]."""
    from trilemma.data import to_float, to_uint8

    x = to_float(train).double()  # (N, C, H, W)
    mean, std = x.mean(0), x.std(0)  # (C, H, W) each
    z = torch.randn((n, *mean.shape), generator=generator, dtype=torch.float64)
    return to_uint8((mean + std * z).clamp(-1, 1))


def reference_rows(data_name: str, n: int, progress: bool = True) -> list[tuple[str, dict]]:
    from trilemma.cli.common import say
    from trilemma.data import DataConfig, load_dataset
    from trilemma.metrics import evaluate_images, get_feature_network

    config = DataConfig(data_name).resolved()
    fn = get_feature_network(config, progress=progress, log=say)
    train = load_dataset(config, split="train").images
    test = load_dataset(config, split="test").images
    g = torch.Generator().manual_seed(0)
    copies = train[torch.randperm(len(train), generator=g)[:n]]
    shape = tuple(train.shape[1:])
    rows = []
    plan = [
        ("test vs train (floor)", test[:n], "train"),
        ("exact copies of training images", copies, "test"),
        ("per-pixel Gaussian fitted to train", per_pixel_gaussian(train, n, g), "test"),
        ("Gaussian noise", gaussian_noise(n, shape, g), "test"),
    ]
    for label, images, reference in plan:
        say(f"{data_name}: scoring '{label}' ({len(images)} images against the {reference} split)")
        t0 = time.perf_counter()
        result = evaluate_images(images, config, reference=reference, feature_net=fn,
                                 source={"kind": "baseline", "path": label}, progress=progress)
        say(f"  FID {result['quality']['fid']:.2f} in {time.perf_counter() - t0:.1f} s")
        rows.append((label, result))
    return rows


def threads(n) -> str:
    return f"{n} CPU thread{'' if n == 1 else 's'}"


def fmt(value, digits=3):
    if value is None:
        return "–"
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(rows: list[tuple[str, dict]]) -> str:
    header = ["row", "n", "against", "FID ↓", "KID ↓", "precision", "density", "class. score",
              "recall", "coverage", "modes hit", "class KL", "class JS", "class TV", "NN ratio",
              "copy frac.", "exact copies"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for label, r in rows:
        q, c, m = r["quality"], r["coverage"], r["memorisation"]
        modes = f"{c['modes_hit']}/{c['num_classes']}" if c["modes_hit"] is not None else "–"
        cells = [label, str(r["n"]), f"{r['reference']['split']} ({r['reference']['n']})",
                 fmt(q["fid"], 2), fmt(q["kid_mean"], 3), fmt(q["precision"]),
                 fmt(q["density"]), fmt(q["classifier_score_mean"], 2), fmt(c["recall"]),
                 fmt(c["coverage"]), modes, fmt(c["class_kl"], 4), fmt(c["class_js"], 4),
                 fmt(c["class_tv"], 4), fmt(m["nn_ratio"]), fmt(m["copy_fraction"]),
                 fmt(m["exact_copy_fraction"])]
        lines.append("| " + " | ".join(cells) + " |")
    fn = rows[0][1]["feature_net"]
    times = ", ".join(f"{label}: {r['timing']['total_s']:.0f} s" for label, r in rows)
    lines += [
        "",
        f"Dataset `{fn['dataset']}`; feature network `{fn['name']}` ({fn['objective']}, test accuracy "
        f"{100 * fn['test_accuracy']:.2f}% on {fn['test_n']} test images, trained in "
        f"{fn['train_seconds']:.0f} s). Generated by `python scripts/reference_rows.py` with "
        f"trilemma {rows[0][1]['trilemma_version']}, torch {torch.__version__}, on "
        f"{platform.machine()} ({threads(torch.get_num_threads())}); scoring times: {times}.",
    ]
    return "\n".join(lines)


def accuracy_table(names) -> str:
    """The feature network of each dataset (trained now unless cached) and its test accuracy."""
    from trilemma.cli.common import say
    from trilemma.metrics import get_feature_network

    lines = ["| dataset | feature network | test accuracy | test images | training time |",
             "|---|---|---|---|---|"]
    for name in names:
        info = get_feature_network(name, log=say).info
        lines.append(f"| {name} | `{info['name']}` | {100 * info['test_accuracy']:.2f}% | {info['test_n']} "
                     f"| {info['train_seconds']:.0f} s on {threads(info.get('train_threads'))} |")
    lines += ["", f"Recipe: `{info['recipe']}`. Times are as measured when each network was trained "
              f"(torch {torch.__version__}, on a 2-core machine shared with other jobs)."]
    return "\n".join(lines)


def write_into_docs(docs: Path, marker: str, body: str) -> None:
    """Replace what lies between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` in ``docs``."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = docs.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{docs}: no {start} ... {end} markers to write the table between")
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    docs.write_text(pattern.sub(lambda _: f"{start}\n{body}\n{end}", text))


def main(argv: list[str] | None = None) -> int:
    from trilemma.metrics import DEFAULT_N
    from trilemma.utils.io import write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", help="dataset (repeatable; default fashion-mnist)")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="images per row")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "metrics.md")
    parser.add_argument("--json-dir", type=Path, default=ROOT / "docs" / "reference-rows")
    parser.add_argument("--accuracy-data", nargs="*", default=list(ACCURACY_DATA),
                        help="datasets whose feature-network accuracy goes into the docs")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest on a CPU shared with other jobs)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    blocks = []
    for data in args.data or ["fashion-mnist"]:
        rows = reference_rows(data, args.n, progress=not args.quiet)
        blocks.append(f"**{data}**\n\n" + markdown(rows))
        for label, result in rows:
            slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
            write_json(args.json_dir / data / f"{slug}.json", result)
    write_into_docs(args.docs, ROWS_MARKER, "\n\n".join(blocks))
    print("\n\n".join(blocks))
    if args.accuracy_data:
        table = accuracy_table(args.accuracy_data)
        write_into_docs(args.docs, ACCURACY_MARKER, table)
        print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
