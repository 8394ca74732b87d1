"""The measured tables of docs/text_to_image.md: prompt accuracy on shapes, class agreement on Fashion-MNIST.

    OMP_NUM_THREADS=1 python scripts/t2i_benchmark.py --shapes runs/t2i/shapes --fashion runs/t2i/fashion \
        --n 200 --fashion-n 100 --steps 25 --json runs/t2i/benchmark.json --img docs/img

- shapes: :func:`trilemma.t2i.evaluate_prompts` at w ∈ {1, 3, 5, 7}, with two chance baselines:
  w = 0 (the same network's unconditional ε(∅)) and real test images scored against the prompts;
- Fashion-MNIST captions: the share of images the metrics' classifier assigns to the prompted class,
  for seen and held-out templates, at the same weights;
- pictures: a prompt grid per run (one row per prompt, one column per seed, at the best w) and an
  SDEdit strip (one input, strengths 0 … 1).

Prints Markdown tables (stdout) and writes every number to --json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from trilemma.registry import load_run
from trilemma.run import SampleOptions
from trilemma.t2i import evaluate_prompts, format_prompt_table
from trilemma.t2i.evaluate import best_guidance
from trilemma.utils.io import write_json
from trilemma.viz import save_grid

SHAPES_GRID_PROMPTS = ["a red circle", "two green triangles", "a blue square and a yellow diamond",
                       "a red circle to the left of a blue square", "a purple triangle above a cyan circle",
                       "a yellow square below a green diamond", "two cyan diamonds",
                       "a green circle to the right of a red triangle"]
FASHION_GRID_PROMPTS = ["a photo of a T-shirt", "a pair of trousers", "a pullover", "a picture of a dress",
                        "a coat", "a sandal", "this is a shirt", "an image showing a sneaker", "a bag",
                        "a low-resolution photo of an ankle boot"]


def markdown(result: dict) -> str:
    cols = list(result["columns"])
    rows = ["| | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    names = {"seen": "seen templates", "held_out": "held-out templates"}
    for row in result["rows"]:
        cells = []
        for c in cols:
            v = result["columns"][c]["accuracy"].get(row)
            cells.append("n/a" if v is None else f"{100 * v:.1f}%")
        rows.append(f"| {names.get(row, row)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def by_kind_markdown(result: dict) -> str:
    cols = [c for c in result["columns"]]
    rows = ["| overall, by prompt kind | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for kind in ("single", "count", "pair", "relation"):
        cells = [f"{100 * result['columns'][c]['by_kind'][kind]:.1f}%" for c in cols]
        rows.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def prompt_grid(run, prompts: list[str], guidance: float, steps: int, path: Path, seeds: int = 6) -> None:
    rows = [p for p in prompts for _ in range(seeds)]
    options = SampleOptions(sampler="ddim", steps=steps, guidance=guidance, prompt=tuple(rows))
    images = run.sample_batch(len(rows), run.generator(0), options)
    save_grid(images, path, nrow=seeds)
    path.with_suffix(".txt").write_text(f"rows (w = {guidance:g}, DDIM {steps} steps, seeds 0..{seeds - 1} "
                                        f"along each row):\n" + "".join(p + "\n" for p in prompts))


def edit_strip(run, prompt: str, steps: int, path: Path, guidance: float) -> None:
    from trilemma.data import load_dataset, to_float
    from trilemma.t2i import edit_images

    test = load_dataset(run.data_config, "test")
    x = to_float(test.images[:1])
    strengths = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    outs = [edit_images(run, x, prompt, s, SampleOptions(sampler="ddim", steps=steps, guidance=guidance), run.generator(0)).cpu()
            for s in strengths]
    save_grid(torch.cat(outs), path, nrow=len(strengths))
    path.with_suffix(".txt").write_text(f"input caption: {test.captions[0]!r}; prompt {prompt!r}; "
                                        f"strengths {strengths}; w = {guidance:g}\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", help="t2i run trained on shapes")
    p.add_argument("--fashion", help="t2i run trained on fashion-mnist-captions")
    p.add_argument("--n", type=int, default=200, help="shapes prompts")
    p.add_argument("--fashion-n", type=int, default=100, help="Fashion-MNIST images per template set")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--guidances", default="0,1,3,5,7", help="comma-separated w (0 = the unconditional ε(∅))")
    p.add_argument("--json", default=None)
    p.add_argument("--img", default=None, help="folder for the prompt-grid and edit pictures")
    args = p.parse_args(argv)
    guidances = tuple(float(w) for w in args.guidances.split(","))
    options = SampleOptions(sampler="ddim", steps=args.steps)          # the documented numbers are DDIM's
    results = {}
    for name, path, n in (("shapes", args.shapes, args.n), ("fashion-mnist-captions", args.fashion, args.fashion_n)):
        if not path:
            continue
        run = load_run(path)
        result = evaluate_prompts(run, name, n=n, guidances=guidances, options=options,
                                  log=lambda m: print(m, file=sys.stderr))
        results[name] = result
        print(format_prompt_table(result), file=sys.stderr)
        print(f"\n### {name} ({result['seconds']:.0f} s)\n")
        print(markdown(result))
        if name == "shapes":
            print()
            print(by_kind_markdown(result))
        best = best_guidance(result, "overall" if name == "shapes" else "held_out")
        print(f"\nbest w: {best}")
        if args.img:
            img = Path(args.img)
            img.mkdir(parents=True, exist_ok=True)
            w = float(best.split("=")[1]) if best else 3.0
            stem = "t2i_shapes" if name == "shapes" else "t2i_fashion"
            prompt_grid(run, SHAPES_GRID_PROMPTS if name == "shapes" else FASHION_GRID_PROMPTS, w, args.steps,
                        img / f"{stem}_grid.png")
            edit_strip(run, "a blue square" if name == "shapes" else "a photo of a sneaker", args.steps,
                       img / f"{stem}_edit.png", w)
        if args.json:
            write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
