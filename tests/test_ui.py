"""`trilemma ui` served for real (a thread, a free port) and driven through gradio_client: every tab,
the CLI's images for the same seed, the model cache, bad input and paths outside the served folders."""

import json
import socket
import time

import numpy as np
import pytest
from helpers import cli, small_shapes
from PIL import Image

from trilemma.errors import RunError
from trilemma.ui import watch
from trilemma.ui.cache import RunCache
from trilemma.ui.paths import ServedPaths

gr = pytest.importorskip("gradio", reason="the `ui` extra (gradio) is not installed")
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from trilemma.ddpm.train import train_ddpm
from trilemma.diffusion.schedule import ScheduleConfig
from trilemma.t2i import train as t2i
from trilemma.ui.app import launch

ANY = "any (unconditional)"
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),   # inside Gradio's plots
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def runs(cache, tmp_path_factory):
    """A runs folder: a class-conditional tiny DDPM on digits and a tiny t2i run on shapes (a few steps each)."""
    root = tmp_path_factory.mktemp("runs")
    train_ddpm(root / "ddpm", data="digits", preset="tiny", steps=2, batch_size=8, device="cpu", progress=False,
               class_cond=True, schedule=ScheduleConfig(T=100))
    with small_shapes(96, 32, 2):
        t2i.train_t2i(root / "t2i", data="shapes", steps=4, preset="tiny", batch_size=8,
                      schedule=ScheduleConfig(T=100), progress=False, device="cpu")
    (root / "broken").mkdir()                                     # a run that fails to load: no weights
    (root / "broken" / "config.json").write_text((root / "ddpm" / "config.json").read_text())
    return root


@pytest.fixture(scope="module")
def outside(tmp_path_factory, runs):
    """A run folder outside the served paths, and a symlink to it from inside them."""
    other = tmp_path_factory.mktemp("elsewhere") / "secret-run"
    other.mkdir()
    (other / "config.json").write_text((runs / "ddpm" / "config.json").read_text())
    (runs / "link-out").symlink_to(other, target_is_directory=True)
    return other


@pytest.fixture(scope="module")
def server(runs, outside, monkeypatch_module):
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    demo, url = launch(ServedPaths.from_args([], str(runs)), port=free_port(), device="cpu", block=False,
                       quiet=True)
    yield demo, Client(url, verbose=False)
    demo.close()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def call(client, api, *args):
    return client.predict(*args, api_name=api)


def refused(client, api, *args) -> str:
    with pytest.raises(AppError) as info:
        client.predict(*args, api_name=api)
    message = str(info.value)
    assert "Traceback" not in message and "File \"" not in message, message
    return message


# ------------------------------------------------------------------------------------ Sample
def test_sample_tab_gives_the_cli_images_for_the_same_seed(server, runs, tmp_path, capsys):
    _, client = server
    run = str(runs / "ddpm")
    info = call(client, "/run_info", run)
    assert "ddpm" in info[0] and info[1]["visible"] is True                      # class picker shown
    assert [c[0] for c in info[1]["choices"]] == [ANY] + [str(i) for i in range(10)]

    grid, summary, _ = call(client, "/sample", run, "ddim", 5, "", 1.0, ANY, 3, 6, False)
    code, _, err = cli(capsys, "sample", run, "--seed", 3, "--n", 6, "--sampler", "ddim", "--steps", 5,
                       "--out", tmp_path / "cli.png", "--quiet", "--device", "cpu")
    assert code == 0, err
    ours, theirs = pixels(grid), pixels(tmp_path / "cli.png")
    # 6 digits of 8×8 in 3 columns, 2 px padding, upscaled ×12 as save_grid does
    assert ours.shape == ((2 * 10 + 2) * 12, (3 * 10 + 2) * 12, 3)
    np.testing.assert_array_equal(ours, theirs)
    assert "6 images" in summary and "NFE 5" in summary

    # a class label with guidance: NFE doubles, images are the CLI's `--label 7 --guidance 3`
    grid, summary, _ = call(client, "/sample", run, "ddim", 5, "", 3.0, "7", 1, 4, False)
    cli(capsys, "sample", run, "--seed", 1, "--n", 4, "--steps", 5, "--label", 7, "--guidance", 3,
        "--out", tmp_path / "label.png", "--quiet", "--device", "cpu")
    np.testing.assert_array_equal(pixels(grid), pixels(tmp_path / "label.png"))
    assert "NFE 10" in summary
    other, _, _ = call(client, "/sample", run, "ddim", 5, "", 3.0, "7", 2, 4, False)
    assert not np.array_equal(pixels(other), pixels(grid))                       # another seed, other images


def test_the_model_is_loaded_once_and_a_second_generation_is_as_fast_as_the_cli(server, runs, capsys):
    demo, client = server
    app = demo.trilemma_app
    run = str(runs / "ddpm")
    call(client, "/sample", run, "ddim", 20, "", 1.0, ANY, 0, 64, False)            # loaded (or cached)
    loads = app.cache.loads
    t0 = time.perf_counter()
    _, summary, _ = call(client, "/sample", run, "ddim", 20, "", 1.0, ANY, 0, 64, False)
    page_s = time.perf_counter() - t0
    assert app.cache.loads == loads and "model from the cache" in summary
    t0 = time.perf_counter()
    code, _, _ = cli(capsys, "sample", run, "--n", 64, "--steps", 20, "--out", runs / "x.png", "--quiet",
                     "--device", "cpu")
    cli_s = time.perf_counter() - t0
    assert code == 0
    assert page_s < cli_s + 1.0, (page_s, cli_s)         # the CLI loads the run each time; the page does not


def test_trajectory_shows_x_t_and_x0_hat(server, runs):
    _, client = server
    _, _, traj = call(client, "/sample", str(runs / "ddpm"), "ddpm", 10, "", 1.0, ANY, 0, 2, True)
    assert traj["visible"] is True
    image = pixels(traj["value"])
    assert image.shape[0] > 100 and image.shape[1] > 300                        # 2 panels × 10 columns


def test_class_picker_is_hidden_for_unconditional_runs(server, runs):
    _, client = server
    text, label = call(client, "/run_info", str(runs / "t2i"))
    assert "t2i" in text and label["visible"] is False


# ------------------------------------------------------------------------------------ text, edit
def test_text_to_image_gives_the_cli_generate_images(server, runs, tmp_path, capsys):
    _, client = server
    run = str(runs / "t2i")
    grid, summary = call(client, "/text_to_image", run, "a red circle", "", "ddim", 4.0, 3, 1, 4)
    code, _, err = cli(capsys, "generate", run, "a red circle", "--n", 4, "--seed", 1, "--steps", 3, "--sampler", "ddim",
                       "--out", tmp_path / "gen.png", "--quiet", "--device", "cpu")
    assert code == 0, err
    ours = pixels(grid)
    assert ours.shape == ((2 * 34 + 2) * 3, (2 * 34 + 2) * 3, 3)                  # 4 of 32×32 RGB, ×3
    np.testing.assert_array_equal(ours, pixels(tmp_path / "gen.png"))
    assert "NFE 6" in summary                                                     # 3 steps × 2 (guidance)


def test_edit_gives_the_cli_edit_images(server, runs, tmp_path, capsys):
    _, client = server
    run = str(runs / "t2i")
    source = tmp_path / "input.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(source)
    given, edited, summary = call(client, "/edit", run, handle_file(str(source)), "a blue square", "", 0.5,
                                  "ddim", 4.0, 4, 0, 2)
    code, _, err = cli(capsys, "edit", run, source, "a blue square", "--strength", 0.5, "--steps", 4, "--n", 2,
                       "--sampler", "ddim",
                       "--out", tmp_path / "edit.png", "--quiet", "--device", "cpu")
    assert code == 0, err
    np.testing.assert_array_equal(pixels(edited), pixels(tmp_path / "edit.png"))
    assert pixels(given).shape == (36 * 3, 36 * 3, 3)                            # centre-cropped to 32×32
    assert "SDEdit strength 0.5" in summary


# ------------------------------------------------------------------------------------ bad input
def test_bad_input_is_a_message_on_the_page_and_the_server_keeps_serving(server, runs, tmp_path):
    _, client = server
    t2i_run, ddpm_run = str(runs / "t2i"), str(runs / "ddpm")
    assert "prompt: empty" in refused(client, "/text_to_image", t2i_run, "   ", "", "ddim", 4.0, 3, 0, 2)
    assert "text-to-image run" in refused(client, "/text_to_image", ddpm_run, "a circle", "", "ddim", 4.0, 3, 0, 2)
    garbage = tmp_path / "photo.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 50)
    message = refused(client, "/edit", t2i_run, handle_file(str(garbage)), "a square", "", 0.5, "ddim", 4.0, 3, 0, 1)
    assert message.startswith("image:") and str(tmp_path) not in message
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 11_000_000)
    with pytest.raises(Exception, match="(?i)too large|size|413"):               # refused at upload
        client.predict(t2i_run, handle_file(str(big)), "a square", "", 0.5, "ddim", 4.0, 3, 0, 1, api_name="/edit")
    assert "no model.safetensors" in refused(client, "/sample", str(runs / "broken"), "ddim", 3, "", 1.0, ANY, 0, 2,
                                           False)
    assert "--label" in refused(client, "/sample", ddpm_run, "ddim", 3, "", 1.0, "12", 0, 2, False)
    assert "minimum value 1" in refused(client, "/sample", ddpm_run, "ddim", 3, "", 1.0, ANY, 0, 0, False)
    assert "whole number" in refused(client, "/sample", ddpm_run, "ddim", 3, "", 1.0, ANY, 0, 2.5, False)
    assert "--eta" in refused(client, "/sample", ddpm_run, "ddim", 3, "2", 1.0, ANY, 0, 2, False)
    grid, _, _ = call(client, "/sample", ddpm_run, "ddim", 3, "", 1.0, ANY, 0, 2, False)   # still serving
    assert pixels(grid).ndim == 3


def test_paths_outside_the_served_folders_are_refused(server, runs, outside):
    _, client = server
    crafted = ["../../etc", "/etc", str(runs / ".." / ".."), str(outside), str(runs / "link-out"),
               str(runs / "ddpm" / ".." / ".." / outside.parent.name / outside.name)]
    for value in crafted:
        assert "outside the folders this app serves" in refused(
            client, "/sample", value, "ddim", 3, "", 1.0, ANY, 0, 2, False), value
    for value in crafted[::3]:
        assert "outside" in refused(client, "/watch", value)
        assert "outside" in refused(client, "/compare", [value], "images-per-s")
    assert "not a run folder" in refused(client, "/sample", str(runs / "ddpm" / "state"), "ddim", 3, "", 1.0, ANY,
                                         0, 2, False)
    served = ServedPaths.from_args([], str(runs))
    assert str(runs / "link-out") not in served.runs()                          # discovery does not list it
    with pytest.raises(RunError):
        served.run(str(runs / "link-out"))


# ------------------------------------------------------------------------------------ Compare
def test_compare_evaluates_then_shows_the_table_and_plot(server, runs, tmp_path):
    _, client = server
    run = str(runs / "ddpm")
    table, plot, note = call(client, "/compare", [run], "images-per-s")
    assert "Not evaluated yet" in note and "ddpm" in note and plot is None
    table, plot, note = call(client, "/evaluate", [run], "nfe", 40, "ddim", 3, 0, False)
    assert "Evaluated 1 run" in note
    assert table.startswith("| model |") and "| ddpm | ddim 3 steps | 40 |" in table
    assert pixels(plot).shape[2] == 3
    result = json.loads((runs / "ddpm" / "eval.json").read_text())
    assert result["n"] == 40 and result["speed"]["nfe"] == 3
    # an eval JSON file picked directly gives the same row (labelled by its run)
    copy = runs / "ddpm-eval.json"
    copy.write_text(json.dumps(result))
    table2, _, _ = call(client, "/compare", [str(copy)], "nfe")
    assert table2.splitlines()[2] == table.splitlines()[2]
    assert "schema" in refused(client, "/compare", [str(runs / "ddpm" / "config.json")], "nfe")


# ------------------------------------------------------------------------------------ Train (watch)
def test_watch_reads_step_eta_losses_and_the_latest_preview(server, runs):
    _, client = server
    run = runs / "training"
    run.mkdir()
    config = json.loads((runs / "ddpm" / "config.json").read_text())
    config["train"]["steps"] = 100
    (run / "config.json").write_text(json.dumps(config))
    rows = [{"step": s, "loss": 1.0 / s, "elapsed_s": 5.0 + 0.5 * s} for s in range(10, 50, 10)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 50, "lo')
    (run / "samples").mkdir()
    for s in (20, 40):
        Image.new("L", (8, 8), s).save(run / "samples" / f"step_{s:07d}.png")
    text, plot, preview = call(client, "/watch", str(run))
    assert "step 40 / 100" in text and "40 %" in text
    assert "ETA 30 s" in text                                 # 60 steps left × 0.5 s a step
    assert [r[0] for r in plot["data"]] == [10, 20, 30, 40]   # the cut-off line being written is skipped
    assert pixels(preview)[0, 0, 0] == 40                     # the newest preview


def test_eta_uses_the_recent_pace_or_the_minutes_budget():
    rows = [{"step": 0, "elapsed_s": 0.0}, {"step": 10, "elapsed_s": 100.0}, {"step": 20, "elapsed_s": 110.0}]
    assert watch.eta(20, rows, 120, None) == pytest.approx(100 * 5.5)          # over the logged window
    assert watch.eta(20, rows[-11:][-2:], 120, None) == pytest.approx(100 * 1.0)
    assert watch.eta(20, rows, None, 3.0) == pytest.approx(180 - 110)
    assert watch.eta(20, [], 120, None) is None


# ------------------------------------------------------------------------------------ cache, CLI
def test_the_cache_is_keyed_by_the_weights_checksum(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"a" * 100)
    loaded = []
    cache = RunCache(lambda p: loaded.append(p) or object(), capacity=2)
    first, cached = cache.get(run)
    again, cached2 = cache.get(run)
    assert again is first and (cached, cached2) == (False, True) and len(loaded) == 1
    (run / "model.safetensors").write_bytes(b"b" * 100)                          # a new checkpoint
    newer, cached3 = cache.get(run)
    assert newer is not first and not cached3 and len(loaded) == 2
    assert len(cache._runs) == 1                                                 # the stale entry is dropped


def test_cli_binds_loopback_by_default_and_warns_for_other_hosts(runs, monkeypatch, capsys):
    import trilemma.ui.app as app_mod

    seen = {}
    monkeypatch.setattr(app_mod, "launch", lambda served, **kw: seen.update(kw, served=served))
    code, _, err = cli(capsys, "ui", "--runs-dir", runs)
    assert code == 0 and seen["host"] == "127.0.0.1" and seen["share"] is False and "warning" not in err
    code, _, err = cli(capsys, "ui", runs / "ddpm", "--runs-dir", runs / "nowhere", "--host", "0.0.0.0")
    assert code == 0 and seen["host"] == "0.0.0.0" and "warning: --host 0.0.0.0" in err
    assert seen["served"].roots == [(runs / "ddpm").resolve()]
    code, _, err = cli(capsys, "ui", "--runs-dir", runs / "nowhere")
    assert code == 2 and "no run folders to serve" in err


def test_other_tabs_answer_while_a_long_generation_runs(server, runs):
    _, client = server
    job = client.submit(str(runs / "ddpm"), "ddpm", 0, "", 1.0, ANY, 0, 96, False, api_name="/sample")
    time.sleep(0.3)
    t0 = time.perf_counter()
    text, _, _ = call(client, "/watch", str(runs / "ddpm"))
    quick = time.perf_counter() - t0
    assert "step 2 / 2" in text
    busy = not job.done()
    job.result()
    assert busy, "the generation finished before the watch call returned"
    assert quick < 5.0

