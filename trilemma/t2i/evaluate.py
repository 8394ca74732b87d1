"""Prompt accuracy: how well a text-to-image run obeys its prompts (in the spirit of GenEval).

    trilemma eval RUN --prompts shapes                  (or fashion-mnist-captions, mnist-5k-captions)

**shapes**: :func:`~trilemma.data.shapes.benchmark_prompts` (n prompts, the four kinds in turn)
are drawn once per guidance weight w from the same noise, and every image is checked by the
exact scorer of :mod:`trilemma.data.shapes` per category (object, colour, count, position,
binding) and overall. Two references come with it:

- **w = 0** is the same network's unconditional prediction ε̃ = ε(∅) (the formula at w = 0):
  the model's own chance level, images that ignore the prompt;
- **data, shuffled** scores real test images against the same prompts, which they were not
  drawn for: the chance level of a *perfect* unconditional generator.

**fashion-mnist-captions / mnist-5k-captions**: prompts are every class through the seen
templates and, separately, the held-out templates (never trained on); the metrics' classifier
(:func:`trilemma.metrics.get_feature_network`) labels each image, and the score is the share
assigned to the prompted class (chance 10%).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from trilemma.errors import TrilemmaError
from trilemma.run import SampleOptions

BENCHMARKS = ("shapes", "fashion-mnist-captions", "mnist-5k-captions")
DEFAULT_GUIDANCES = (0.0, 1.0, 3.0, 5.0, 7.0)
DEFAULT_PROMPTS = 200


def sample_prompts(run, prompts: Sequence[str], guidance: float, options: SampleOptions, *, seed: int = 0,
                   batch_size: int = 100, bar=None) -> torch.Tensor:
    """One image per prompt as uint8 (N, C, H, W); the noise depends only on ``seed`` and the batch size.

    ``guidance == 0`` samples the unconditional model ε(∅) (prompts replaced by ∅, one pass per step).
    """
    from trilemma.data import to_uint8

    g = run.generator(seed)
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = tuple(prompts[start:start + batch_size])
        if guidance == 0.0:
            opts = dataclasses.replace(options, prompt=("",) * len(chunk), guidance=1.0)
        else:
            opts = dataclasses.replace(options, prompt=chunk, guidance=guidance)
        callback = (lambda *_: bar.update(len(chunk))) if bar is not None else None
        images = run.sample_batch(len(chunk), g, opts, callback=callback)
        out.append(to_uint8(images.float().cpu()))
    return torch.cat(out)


def evaluate_prompts(run, benchmark: str = "shapes", *, n: int | None = None,
                     guidances: Sequence[float] = DEFAULT_GUIDANCES, options: SampleOptions | None = None,
                     seed: int = 0, batch_size: int = 100, progress: bool = True,
                     log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Prompt accuracy of ``run`` (a t2i run) on ``benchmark`` at each guidance weight; see the module docstring.

    ``n``: prompts (shapes; default 200) or images per template set (captioned classes; default 200).
    Returns a JSON-able dict; :func:`format_prompt_table` prints it.
    """
    from trilemma.t2i.run import TextDiffusionRun

    if not isinstance(run, TextDiffusionRun):
        raise TrilemmaError(f"--prompts: {run.path} is a {run.kind!r} run, not a text-to-image (t2i) run")
    if benchmark not in BENCHMARKS:
        raise TrilemmaError(f"--prompts: unknown benchmark {benchmark!r} (choose from {', '.join(BENCHMARKS)})")
    if not guidances:
        raise TrilemmaError("--guidance: give at least one guidance weight")
    if any(w < 0 for w in guidances):
        raise TrilemmaError(f"--guidance: weights must be >= 0, got {list(guidances)}")
    n = DEFAULT_PROMPTS if n is None else n
    if n <= 0:
        raise TrilemmaError(f"--n: the prompt list is empty; need at least one prompt, got {n}")
    options = options or SampleOptions()
    t0 = time.perf_counter()
    if benchmark == "shapes":
        result = _shapes(run, n, guidances, options, seed, batch_size, progress)
    else:
        result = _classes(run, benchmark, n, guidances, options, seed, batch_size, progress, log)
    sampling = {k: v for k, v in options.to_dict().items() if k in ("sampler", "steps", "eta", "spacing")}
    result.update(run=str(run.path), benchmark=benchmark, seed=seed, sampling=sampling,
                  nfe_per_image={str(w): run.nfe(dataclasses.replace(options, guidance=1.0 if w in (0, 1) else w))
                                 for w in guidances},
                  seconds=round(time.perf_counter() - t0, 1))
    return result


def _bar(total: int, desc: str, progress: bool):
    return tqdm(total=total, desc=desc, unit="img·step", disable=not progress, leave=False, dynamic_ncols=True)


def _shapes(run, n, guidances, options, seed, batch_size, progress) -> dict[str, Any]:
    from trilemma.data import load_dataset, shapes

    if run.data_config.name != "shapes":
        raise TrilemmaError(f"--prompts shapes: {run.path} was trained on {run.data_config.name}, not shapes")
    prompts = shapes.benchmark_prompts(n)
    steps = run.steps_per_batch(options)
    columns: dict[str, dict] = {}
    test = load_dataset(run.data_config, "test")
    real = test.images[torch.arange(n) % len(test)]
    columns["data, shuffled"] = _strip(shapes.score_images(real, prompts))
    with _bar(len(guidances) * n * steps, f"sampling {n} prompts at w = {', '.join(f'{w:g}' for w in guidances)}",
              progress) as bar:
        for w in guidances:
            images = sample_prompts(run, prompts, w, options, seed=seed, batch_size=batch_size, bar=bar)
            columns[_wname(w)] = _strip(shapes.score_images(images, prompts))
    return {"n": n, "kind": "shapes", "rows": (*shapes.CATEGORIES, "overall"), "columns": columns,
            "prompts_per_kind": {k: sum(1 for i in range(n) if shapes.KINDS[i % 4] == k) for k in shapes.KINDS}}


def _classes(run, benchmark, n, guidances, options, seed, batch_size, progress, log) -> dict[str, Any]:
    from trilemma.data import DataConfig
    from trilemma.data import captions as caps
    from trilemma.metrics import get_feature_network

    if run.data_config.name != benchmark:
        raise TrilemmaError(f"--prompts {benchmark}: {run.path} was trained on {run.data_config.name}")
    source = caps.source_of(benchmark)
    dc = run.data_config
    classifier = get_feature_network(DataConfig(source, image_size=dc.image_size, channels=dc.channels),
                                     progress=progress, log=log)
    if not classifier.has_classes:
        raise TrilemmaError(f"the feature network of {source} is not a classifier")
    sets = {which: caps.class_prompts(source, which) for which in caps.TEMPLATE_SETS}
    steps = run.steps_per_batch(options)
    columns: dict[str, dict] = {}
    with _bar(len(guidances) * len(sets) * n * steps, f"sampling {len(sets)}×{n} prompts", progress) as bar:
        for w in guidances:
            column = {}
            for which, pairs in sets.items():
                chosen = [pairs[i % len(pairs)] for i in range(n)]
                images = sample_prompts(run, [p for p, _ in chosen], w, options, seed=seed, batch_size=batch_size,
                                        bar=bar)
                predicted = classifier.probs(images).argmax(1)
                labels = np.array([c for _, c in chosen])
                column[which] = float((predicted == labels).mean())
            columns[_wname(w)] = {"accuracy": column}
    return {"n": n, "kind": "classes", "rows": caps.TEMPLATE_SETS, "columns": columns,
            "classifier": classifier.info.get("name"), "classifier_test_accuracy": classifier.info.get("test_accuracy"),
            "chance": 1.0 / len(caps.FASHION_PHRASES)}


def _wname(w: float) -> str:
    return "w=0 (∅)" if w == 0 else f"w={w:g}"


def _strip(score: dict) -> dict:
    return {"accuracy": score["accuracy"], "n": score["n"], "by_kind": score["by_kind"]}


def best_guidance(result: dict[str, Any], row: str = "overall") -> str | None:
    """The column (w) with the highest accuracy in ``row`` among the sampled weights w > 0."""
    cols = {k: v["accuracy"].get(row) for k, v in result["columns"].items() if k.startswith("w=") and "∅" not in k}
    cols = {k: v for k, v in cols.items() if v is not None}
    return max(cols, key=cols.get) if cols else None


def format_prompt_table(result: dict[str, Any]) -> str:
    """The accuracy table: one row per category (or template set), one column per guidance weight."""
    cols = list(result["columns"])
    names = {"held_out": "held-out templates", "seen": "seen templates"}
    width = max(len(names.get(r, r)) for r in result["rows"]) + 2
    head = f"{'':<{width}}" + "".join(f"{c:>16}" for c in cols)
    lines = [f"prompt accuracy of {result['run']} on {result['benchmark']} "
             f"({result['n']} {'prompts' if result['kind'] == 'shapes' else 'images per template set'}, "
             f"seed {result['seed']}, {result['sampling']['sampler']} {result['sampling']['steps'] or 'default'} steps)",
             head]
    for row in result["rows"]:
        cells = []
        for c in cols:
            value = result["columns"][c]["accuracy"].get(row)
            cells.append(f"{'n/a' if value is None else f'{100 * value:.1f}%':>16}")
        lines.append(f"{names.get(row, row):<{width}}" + "".join(cells))
    if result["kind"] == "shapes":
        n = result["columns"][cols[0]]["n"]
        lines.append(f"(images per category: {', '.join(f'{k} {v}' for k, v in n.items())}; "
                     f"'data, shuffled' = real test images against these prompts: a perfect unconditional model)")
    else:
        lines.append(f"(share of images the classifier {result['classifier']} assigns to the prompted class; "
                     f"chance {100 * result['chance']:.0f}%)")
    return "\n".join(lines)
