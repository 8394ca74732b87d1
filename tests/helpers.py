"""Helpers shared by the tests."""

import contextlib

import pytest

from trilemma.cli.main import main

# A feature network that trains in seconds (the real recipe takes minutes): for tests of the metrics' plumbing.
TINY_RECIPE = {"width": 8, "feature_dim": 32, "steps": 150, "batch_size": 64, "warmup_steps": 10, "lr": 5e-3}


def cli(capsys, *args):
    """Run `trilemma ARGS` in-process; return (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:                       # argparse errors and --help
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str, *words):
    """``err`` is exactly one line that says "error", has no traceback and contains every word."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "error" in lines[0] and "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


@contextlib.contextmanager
def small_shapes(train_size: int, test_size: int, previews: int, cache=None):
    """A shapes dataset of ``train_size``/``test_size`` images and t2i preview grids of ``previews`` prompts ×
    seeds × steps, the text encoder offline and (given) a private cache: the world of a tiny t2i run."""
    from trilemma.data import shapes
    from trilemma.t2i import train as t2i

    with pytest.MonkeyPatch.context() as mp:
        if cache is not None:
            mp.setenv("TRILEMMA_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(shapes, "TRAIN_SIZE", train_size)
        mp.setattr(shapes, "TEST_SIZE", test_size)
        for name in ("PREVIEW_PROMPTS", "PREVIEW_SEEDS", "PREVIEW_STEPS"):
            mp.setattr(t2i, name, previews)
        yield


def subcommands(parser) -> dict:
    """The subcommand parsers of an argparse parser by name ({} when it has none)."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a process group's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(fn, args: tuple, nprocs: int, seconds: float) -> None:
    """Spawn ``fn(rank, *args)`` in ``nprocs`` processes; kill them and fail the test if they run past
    ``seconds`` (a hung rank fails, it does not block the suite)."""
    import torch.multiprocessing as mp

    context = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    for _ in range(int(seconds * 2)):
        if context.join(timeout=0.5):
            return
    for p in context.processes:
        p.kill()
    pytest.fail(f"the {nprocs} processes did not finish within {seconds:g} s (a rank hung)")


def trained_run(tmp_path_factory, args: list[str], name: str):
    """A run folder made by ``trilemma ARGS --out <new folder>/<name>`` (for module-scoped fixtures)."""
    out = tmp_path_factory.mktemp("runs") / name
    assert main([*args, "--out", str(out)]) == 0
    return out


def clone(run, dest):
    """A copy of the run folder ``run`` at ``dest`` (to damage without touching the fixture)."""
    import shutil

    shutil.copytree(run, dest)
    return dest
