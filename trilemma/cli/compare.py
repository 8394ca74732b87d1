"""``trilemma compare``: one table and one trilemma plot for several runs or eval results.

    trilemma compare RUN_OR_JSON ... --out DIR [--n 10000 --sampler ddim --steps 50]

Each argument is an eval JSON (from ``trilemma eval --json``) or a run folder. A
run folder's ``eval.json`` (written by ``trilemma eval RUN``) is reused when it
scored this run at its current step with the ``--n`` and sampling options given
here (:func:`stale`), unless ``--reeval``; otherwise the run is evaluated now, with
``--n`` and the sampling options, and ``eval.json`` is written. Writes ``DIR/compare.md`` (a
markdown table, with a warning when rows were scored differently: another
feature network, dataset or n) and ``DIR/trilemma.png`` (quality against speed,
coverage as colour and size).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from trilemma.cli.common import batch_size_int, positive_int, say, seed_int, subparser
from trilemma.cli.sample import add_sampler_args, sample_options
from trilemma.errors import TrilemmaError
from trilemma.metrics.report import SPEED_AXES, check_result, markdown_table, plot_trilemma


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(sub, "compare", "compare runs or eval results: markdown table + trilemma plot")
    p.add_argument("items", nargs="+", metavar="RUN_OR_JSON", help="run folders or eval JSON files")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for compare.md and trilemma.png")
    p.add_argument("--n", type=positive_int, default=None, help="images per run when a run is evaluated "
                   "here (default 10000)")
    add_sampler_args(p)  # for runs evaluated here
    p.add_argument("--seed", type=seed_int, default=0, help="sampling seed for runs evaluated here")
    p.add_argument("--repeats", type=positive_int, default=None, metavar="K",
                   help="runs evaluated here: score K sets of --n samples (seeds --seed, --seed + 1, …) and "
                        "show mean ± sd (default 1; a cached eval.json is reused whatever its K unless this is given)")
    p.add_argument("--batch-size", type=batch_size_int, default=256, help="sampling batch size")
    p.add_argument("--reeval", action="store_true", help="evaluate runs even if they have eval.json")
    p.add_argument("--x", choices=tuple(SPEED_AXES), default="images-per-s",
                   help="speed axis of the plot")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from trilemma.utils.io import write_json
    from trilemma.utils.outputs import output_dir

    out = output_dir(args.out, "--out")                        # before any run is evaluated
    for item in args.items:
        check_item(item, args)
    rows = [(label_for(item, result), result) for item in args.items for result in [load_result(item, args)]]
    rows = unique_labels(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(markdown_table(rows))
    plot_trilemma(rows, out / "trilemma.png", args.x)
    write_json(out / "compare.json", {label: result for label, result in rows})
    print(markdown_table(rows))
    say(f"wrote {out / 'compare.md'}, {out / 'trilemma.png'} and {out / 'compare.json'}")
    return 0


def label_for(item: str, result: dict | None = None) -> str:
    """A run folder's name; for a JSON file, the name of the run it scored (else the file's stem)."""
    p = Path(item)
    source = (result or {}).get("source", {})
    if p.is_file() and source.get("kind") == "run" and source.get("path"):
        return Path(source["path"]).name
    name = p.name if p.is_dir() else p.stem
    return name or str(p)


def unique_labels(rows: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    seen: dict[str, int] = {}
    out = []
    for label, result in rows:
        seen[label] = seen.get(label, 0) + 1
        out.append((label if seen[label] == 1 else f"{label} ({seen[label]})", result))
    return out


def check_item(item: str, args: argparse.Namespace) -> None:
    """An argument is an eval JSON file or a run folder (whose eval.json can be written): checked up front."""
    from trilemma.cli.eval import EVAL_FILE
    from trilemma.run import read_run_config
    from trilemma.utils.outputs import output_file

    p = Path(item)
    if p.is_dir():
        read_run_config(p)
        if args.reeval or not (p / EVAL_FILE).is_file():
            output_file(p / EVAL_FILE, item, suffixes=None, run_file=True)
        return
    if not p.exists():
        raise TrilemmaError(f"{item}: no such run folder or JSON file")
    if not p.is_file():
        raise TrilemmaError(f"{item}: not a run folder or a JSON file")
    try:
        with open(p, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise TrilemmaError(f"{item}: cannot read ({e.strerror or e})") from None
    if magic.startswith((b"PK", b"\x93NUMPY")):
        raise TrilemmaError(f"{item}: an array file, not an eval result; score images with "
                            f"`trilemma eval --samples {item} --data DATASET --json FILE.json` and compare that")


def load_result(item: str, args: argparse.Namespace) -> dict[str, Any]:
    """An eval result from a JSON file, a run's ``eval.json``, or by evaluating the run now."""
    from trilemma.cli.eval import EVAL_FILE, load_run_for_eval
    from trilemma.metrics import DEFAULT_N, SCHEMA_VERSION, evaluate_run
    from trilemma.utils.io import read_json, write_json

    p = Path(item)
    if p.is_file():
        result = read_json(p)
        if not isinstance(result, dict) or result.get("schema") != SCHEMA_VERSION:
            raise TrilemmaError(f"{item}: not a trilemma eval result (expected \"schema\": "
                                f"\"{SCHEMA_VERSION}\"; write one with trilemma eval --json)")
        return check_result(result, item)
    if not p.is_dir():
        raise TrilemmaError(f"{item}: no such run folder or JSON file")
    cached = p / EVAL_FILE
    if cached.is_file() and not args.reeval:
        result = read_json(cached)
        if not isinstance(result, dict) or result.get("schema") != SCHEMA_VERSION:
            raise TrilemmaError(f"{cached}: not a trilemma eval result of this version (pass --reeval to "
                                f"evaluate the run again)")
        check_result(result, str(cached))
        why = stale(result, p, args)
        if why is None:
            say(f"{item}: using {cached} (step {result['source']['step']}; --reeval to evaluate again)")
            return result
        say(f"{item}: not reusing {cached}: {why}; evaluating the run again")
    from trilemma.cli.eval import check_sampling_memory

    run = load_run_for_eval(item, args.device)
    options = sample_options(args)
    check_sampling_memory(run, args.n or DEFAULT_N, args.batch_size)
    say(f"{item}: evaluating {args.n or DEFAULT_N} samples")
    result = evaluate_run(run, args.n or DEFAULT_N, options, seed=args.seed, repeats=args.repeats or 1,
                          batch_size=args.batch_size, progress=not args.quiet, log=say)
    write_json(cached, result)
    return result


def stale(result: dict[str, Any], run_dir: Path, args: argparse.Namespace) -> str | None:
    """Why a run's cached ``eval.json`` does not answer this ``compare`` (``None``: it does).

    It must have scored this run folder, at the step its weights are at now, with the ``--n``,
    ``--repeats`` and sampling options given on this command line (options left at their defaults
    accept the cached ones).
    """
    from trilemma.cli.sample import SAMPLING_DEFAULTS
    from trilemma.run import weights_step

    src = result.get("source")
    if not isinstance(src, dict) or src.get("kind") != "run":
        return "it does not hold the score of a run"
    try:
        same_run = Path(str(src.get("path"))).resolve() == run_dir.resolve()
    except (OSError, RuntimeError):
        same_run = False
    if not same_run:
        return f"it scored {src.get('path')!r}, not this run folder"
    now = weights_step(run_dir)
    if src.get("step") != now:
        return f"it scored the weights of step {src.get('step')}, the run is at step {now}"
    if args.n is not None and result.get("n") != args.n:
        return f"it scored {result.get('n')} images, not --n {args.n}"
    from trilemma.metrics.evaluate import repeat_sets

    sets = repeat_sets(result)
    if getattr(args, "repeats", None) is not None and sets != args.repeats:
        return f"it scored {sets} set{'s' if sets > 1 else ''} of samples, not --repeats {args.repeats}"
    cached = src.get("sampling") or {}                 # {}: a run that uses no sampling options (GAN, VAE, …)
    given = {k: getattr(args, k) for k, default in SAMPLING_DEFAULTS.items()
             if getattr(args, k, default) != default}
    differ = [k for k, v in given.items() if cached and cached.get(k) != v]
    if differ:
        return f"it was sampled with other {', '.join('--' + k for k in differ)}"
    return None


# --- the table -------------------------------------------------------------------------------


# --- the plot --------------------------------------------------------------------------------
