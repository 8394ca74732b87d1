"""The Gradio page of ``trilemma ui``: Sample, Text to image, Edit, Compare and Train (watch) tabs.

Every handler takes the page's values, checks the run path with :class:`~trilemma.ui.paths.ServedPaths`,
gets the run from the :class:`~trilemma.ui.cache.RunCache` and calls :mod:`trilemma.ui.actions`. A
:class:`~trilemma.errors.TrilemmaError` (bad input, a run that does not load) becomes the error text
shown on the page; anything unexpected is logged on the server and shown as one line, never as a
traceback. Heavy work (sampling, editing) shares a queue with two workers, evaluation has its own,
and the light handlers (run info, the training watch) are never queued behind them.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import threading
import uuid
from pathlib import Path

import gradio as gr

from trilemma.errors import TrilemmaError
from trilemma.ui import actions, watch
from trilemma.ui.cache import RunCache
from trilemma.ui.paths import ServedPaths

log = logging.getLogger("trilemma.ui")

SAMPLING_WORKERS = 2               # sampling/editing requests served at once; more wait in the queue
KEEP_OUTPUTS = 64                  # our temporary PNGs kept (Gradio copies each into its own cache)
WATCH_EVERY_S = 2.0
CSS = ".trilemma-summary p {font-size: 0.95em}"
TRACK = gr.Progress(track_tqdm=True)   # as a handler's default: Gradio shows the tqdm bars of generate/evaluate


def page_errors(fn):
    """Run a handler; turn errors into a one-line message on the page (and keep serving)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except TrilemmaError as e:
            raise gr.Error(one_line(str(e)), print_exception=False) from None
        except Exception as e:
            log.exception("trilemma ui: %s failed", fn.__name__)
            raise gr.Error(f"unexpected error ({type(e).__name__}: {one_line(str(e))}); "
                           f"the server's log has the details", print_exception=False) from None

    return wrapper


def one_line(text: str, limit: int = 400) -> str:
    line = " ".join(text.strip().splitlines()[:1]) if text.strip() else "no details"
    return line if len(line) <= limit else line[:limit - 1] + "…"


class App:
    """The state behind the page: the served paths, the run cache and a folder for output PNGs."""

    def __init__(self, served: ServedPaths, device: str | None = "auto", cache_capacity: int = 4):
        from trilemma.registry import load_run
        from trilemma.utils.device import pick_device

        self.served = served
        self.device = pick_device(device)
        self.cache = RunCache(lambda path: load_run(path, device=self.device), capacity=cache_capacity)
        self.tmp = Path(tempfile.mkdtemp(prefix="trilemma-ui-"))
        self._outputs: list[Path] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ helpers
    def output_path(self, stem: str) -> Path:
        path = self.tmp / f"{stem}-{uuid.uuid4().hex[:12]}.png"
        with self._lock:
            self._outputs.append(path)
            old, self._outputs = self._outputs[:-KEEP_OUTPUTS], self._outputs[-KEEP_OUTPUTS:]
        for p in old:
            p.unlink(missing_ok=True)
        return path

    def grid(self, images, stem: str, nrow: int | None = None) -> str:
        from trilemma.viz import save_grid

        return str(save_grid(images, self.output_path(stem), nrow=nrow))

    def run(self, value: str):
        """(run, was_cached) for a run path from the page, after the path check."""
        return self.cache.get(self.served.run(value))

    def run_choices(self, kind: str | None = None) -> list[str]:
        from trilemma.run import read_run_config

        runs = self.served.runs()
        if kind is None:
            return runs
        out = []
        for r in runs:
            try:
                if read_run_config(r).get("kind") == kind:
                    out.append(r)
            except TrilemmaError:
                continue
        return out

    # ------------------------------------------------------------------ Sample
    def run_info(self, value: str | None):
        """The run's kind and step, and which sampling controls apply (read from config.json only)."""
        from trilemma.registry import RUN_KINDS
        from trilemma.run import read_run_config

        if not value:
            return "No run chosen.", gr.update(visible=False), gr.update(visible=True)
        path = self.served.run(value)
        config = read_run_config(path)
        kind = config.get("kind")
        cls = RUN_KINDS.get(kind)
        diffusion = bool(cls and cls.reports_steps)
        n_classes = int((config.get("model") or {}).get("num_classes") or 0)
        class_cond = bool((config.get("diffusion") or {}).get("class_cond")) and n_classes > 0
        data = config.get("data") or {}
        train = config.get("train") or {}
        p = watch.progress(path)
        text = (f"**{kind}** run `{Path(value).name}` · data {data.get('name', '?')} "
                f"{data.get('image_size', '?')}×{data.get('image_size', '?')}×{data.get('channels', '?')} · "
                f"step {p.checkpoint_step if p.checkpoint_step is not None else '?'}"
                + (f" / {train['steps']}" if train.get("steps") else ""))
        if not diffusion:
            text += " · one network pass per image: the sampler options do not apply"
        labels = ["any (unconditional)"] + [str(i) for i in range(n_classes)]
        return (text, gr.update(visible=class_cond, choices=labels, value=labels[0]),
                gr.update(visible=diffusion))

    def sample(self, run_value, sampler, steps, eta, guidance, label, seed, n, trajectory,
               progress=TRACK):
        progress(0, desc="loading the run")
        run, cached = self.run(run_value)
        label = None if label in (None, "") or str(label).startswith("any") else label
        options = actions.sample_options(actions.cli_args(sampler=sampler, steps=steps, eta=eta,
                                                          guidance=guidance, label=label))
        out = actions.sample(run, options, seed=seed, n=n)
        traj = None
        if trajectory:
            progress(0, desc="drawing the trajectory")
            traj = str(actions.trajectory_figure(run, options, seed=seed, n=min(actions.count(n), 4),
                                                 out=self.output_path("trajectory")))
        return (self.grid(out.images, "sample"), out.summary(cached),
                gr.update(value=traj, visible=traj is not None))

    # ------------------------------------------------------------------ Text to image, Edit
    def text_to_image(self, run_value, prompt, negative, sampler, guidance, steps, seed, n,
                      progress=TRACK):
        if not isinstance(prompt, str) or not prompt.strip():
            raise TrilemmaError("prompt: empty; type what the images should show")
        progress(0, desc="loading the run")
        run, cached = self.run(run_value)
        args = actions.cli_args(sampler=sampler, steps=steps, guidance=guidance, negative=negative)
        out = actions.text_to_image(run, args, prompt, seed=seed, n=n)
        return self.grid(out.images, "generate"), out.summary(cached)

    def edit(self, run_value, upload, prompt, negative, strength, sampler, guidance, steps, seed, n,
             progress=TRACK):
        if not isinstance(prompt, str) or not prompt.strip():
            raise TrilemmaError("prompt: empty; give a prompt describing the edited image")
        if not upload:
            raise TrilemmaError("image: upload an image to edit")
        progress(0, desc="loading the run")
        run, cached = self.run(run_value)
        args = actions.cli_args(sampler=sampler, steps=steps, guidance=guidance, negative=negative)
        out, image = actions.edit(run, args, upload, prompt, strength, seed=seed, n=n)
        return self.grid(image, "input"), self.grid(out.images, "edit"), out.summary(cached)

    # ------------------------------------------------------------------ Compare
    def compare_choices(self) -> list[str]:
        return self.served.runs() + self.served.eval_files()

    def compare(self, items, x_axis):
        paths = [self.served.item(v) for v in (items or [])]
        if not paths:
            raise TrilemmaError("choose one or more runs or eval JSON files to compare")
        rows, missing = actions.compare_rows(paths)
        note = ""
        if missing:
            note = ("Not evaluated yet (press **Evaluate**): " + ", ".join(f"`{p.name}`" for p in missing))
        if not rows:
            return "", None, note or "Nothing to show."
        table, plot = actions.comparison(rows, self.output_path("trilemma"), x_axis or "images-per-s")
        return table, str(plot), note

    def evaluate(self, items, x_axis, n, sampler, steps, seed, again, progress=TRACK):
        paths = [self.served.item(v) for v in (items or [])]
        runs = [p for p in paths if p.is_dir() and (again or not actions.eval_json(p).is_file())]
        if not paths:
            raise TrilemmaError("choose one or more runs to evaluate")
        options = actions.sample_options(actions.cli_args(sampler=sampler, steps=steps))
        for i, path in enumerate(runs):
            progress(i / max(1, len(runs)), desc=f"evaluating {path.name} ({i + 1}/{len(runs)})")
            run, _ = self.cache.get(path)
            actions.evaluate(run, options, n=n, seed=seed)
        table, plot, note = self.compare(items, x_axis)
        done = f"Evaluated {len(runs)} run{'s' * (len(runs) != 1)} ({n} samples each)." if runs else \
            "Every chosen run already had an eval.json (tick *evaluate again* to redo it)."
        return table, plot, (done + (" " + note if note else ""))

    # ------------------------------------------------------------------ Train (watch)
    def watch(self, value):
        import pandas as pd

        empty = pd.DataFrame({"step": [], "loss": [], "series": []})
        if not value:
            return "Choose a run folder to watch.", empty, None
        path = self.served.run(value)
        p = watch.progress(path)
        series = watch.loss_series(p.rows)
        frame = pd.DataFrame(series, columns=["step", "series", "loss"]) if series else empty
        return p.text(), frame, (str(p.preview) if p.preview else None)


def build(app: App) -> gr.Blocks:
    """The page. ``app`` holds its state; every event has an ``api_name`` (the tests drive them)."""
    from trilemma.diffusion.samplers import AUTO, SAMPLERS

    runs = app.served.runs()
    t2i_runs = app.run_choices("t2i")
    first = runs[0] if runs else None
    heavy = {"concurrency_id": "models", "concurrency_limit": SAMPLING_WORKERS}
    light = {"concurrency_limit": None, "show_progress": "hidden"}

    def run_dropdown(choices, label="run folder"):
        return gr.Dropdown(choices=choices, value=choices[0] if choices else None, label=label,
                           allow_custom_value=True, scale=4,
                           info="folders with a config.json under the served paths")

    with gr.Blocks(title="trilemma", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# trilemma\nSample, prompt, edit, compare and watch the runs in "
                    + (", ".join(f"`{r}`" for r in app.served.roots) or "no folder")
                    + ". Same code paths and seeds as the `trilemma` commands.")
        with gr.Tabs():
            # ---------------------------------------------------------- Sample
            with gr.Tab("Sample", id="sample"):
                with gr.Row():
                    s_run = run_dropdown(runs)
                    s_refresh = gr.Button("↻ rescan", scale=1, size="sm")
                s_info = gr.Markdown(elem_classes="trilemma-summary")
                with gr.Row():
                    with gr.Column(scale=1):
                        with gr.Group(visible=True) as s_diffusion:
                            s_sampler = gr.Dropdown([AUTO, *SAMPLERS], value=AUTO, label="sampler")
                            s_steps = gr.Number(value=0, precision=0, minimum=0, label="steps",
                                                info="0: the sampler's default (DDIM 50, DDPM all T)")
                            s_eta = gr.Textbox(value="", label="η", placeholder="default",
                                               info="empty: the sampler's default (0 = deterministic)")
                            s_guidance = gr.Number(value=1.0, label="guidance w")
                        s_label = gr.Dropdown(["any (unconditional)"], value="any (unconditional)", label="class",
                                              visible=False, allow_custom_value=True)
                        with gr.Row():
                            s_seed = gr.Number(value=0, precision=0, minimum=0, label="seed")
                            s_n = gr.Slider(1, actions.MAX_N, value=16, step=1, label="n images", elem_id="sample-n")
                        s_traj = gr.Checkbox(False, label="show trajectory (x_t and x̂₀ along the reverse process)")
                        s_go = gr.Button("Generate", variant="primary", elem_id="sample-generate")
                    with gr.Column(scale=2):
                        s_grid = gr.Image(label="samples", type="filepath", format="png", interactive=False,
                                          elem_id="sample-grid")
                        s_summary = gr.Markdown(elem_id="sample-summary", elem_classes="trilemma-summary")
                        s_traj_img = gr.Image(label="trajectory", type="filepath", format="png",
                                              interactive=False, visible=False)
                s_run.change(page_errors(app.run_info), [s_run], [s_info, s_label, s_diffusion],
                             api_name="run_info", **light)
                s_go.click(page_errors(app.sample),
                           [s_run, s_sampler, s_steps, s_eta, s_guidance, s_label, s_seed, s_n, s_traj],
                           [s_grid, s_summary, s_traj_img], api_name="sample", **heavy)

            # ---------------------------------------------------------- Text to image
            with gr.Tab("Text to image", id="text"):
                t_run = run_dropdown(t2i_runs, "text-to-image run folder")
                with gr.Row():
                    with gr.Column(scale=1):
                        t_prompt = gr.Textbox(label="prompt", placeholder="a red circle left of a blue square",
                                              elem_id="t2i-prompt")
                        t_negative = gr.Textbox(label="negative prompt (replaces ∅ in guidance)")
                        t_sampler = gr.Dropdown([AUTO, *SAMPLERS], value=AUTO, label="sampler")
                        with gr.Row():
                            t_guidance = gr.Number(value=4.0, label="guidance w")
                            t_steps = gr.Number(value=0, precision=0, minimum=0, label="steps",
                                                info="0: the default, 50")
                        with gr.Row():
                            t_seed = gr.Number(value=0, precision=0, minimum=0, label="seed")
                            t_n = gr.Slider(1, actions.MAX_N, value=8, step=1, label="n images")
                        t_go = gr.Button("Generate", variant="primary", elem_id="t2i-generate")
                    with gr.Column(scale=2):
                        t_grid = gr.Image(label="images", type="filepath", format="png", interactive=False,
                                          elem_id="t2i-grid")
                        t_summary = gr.Markdown(elem_id="t2i-summary", elem_classes="trilemma-summary")
                t_go.click(page_errors(app.text_to_image),
                           [t_run, t_prompt, t_negative, t_sampler, t_guidance, t_steps, t_seed, t_n],
                           [t_grid, t_summary], api_name="text_to_image", **heavy)

            # ---------------------------------------------------------- Edit
            with gr.Tab("Edit (SDEdit)", id="edit"):
                e_run = run_dropdown(t2i_runs, "text-to-image run folder")
                with gr.Row():
                    with gr.Column(scale=1):
                        e_file = gr.File(label=f"image (PNG, JPEG, WebP; at most "
                                               f"{actions.MAX_UPLOAD_BYTES / 1e6:g} MB)",
                                         file_types=["image"], type="filepath")
                        e_prompt = gr.Textbox(label="prompt: what the image should become")
                        e_negative = gr.Textbox(label="negative prompt")
                        e_strength = gr.Slider(0, 1, value=0.6, step=0.05, label="strength",
                                               info="t₀ = strength·T: 0 keeps the input, 1 ignores it")
                        e_sampler = gr.Dropdown([AUTO, *SAMPLERS], value=AUTO, label="sampler")
                        with gr.Row():
                            e_guidance = gr.Number(value=4.0, label="guidance w")
                            e_steps = gr.Number(value=0, precision=0, minimum=0, label="steps",
                                                info="0: the default, 50 (× strength)")
                        with gr.Row():
                            e_seed = gr.Number(value=0, precision=0, minimum=0, label="seed")
                            e_n = gr.Slider(1, 64, value=4, step=1, label="variations")
                        e_go = gr.Button("Edit", variant="primary", elem_id="edit-go")
                    with gr.Column(scale=2):
                        e_input = gr.Image(label="input, as the run sees it", type="filepath", format="png",
                                           interactive=False)
                        e_grid = gr.Image(label="edited", type="filepath", format="png", interactive=False)
                        e_summary = gr.Markdown(elem_classes="trilemma-summary")
                e_go.click(page_errors(app.edit),
                           [e_run, e_file, e_prompt, e_negative, e_strength, e_sampler, e_guidance, e_steps,
                            e_seed, e_n],
                           [e_input, e_grid, e_summary], api_name="edit", **heavy)

            # ---------------------------------------------------------- Compare
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    c_items = gr.Dropdown(app.compare_choices(), multiselect=True, allow_custom_value=True,
                                          label="runs (their eval.json) or eval JSON files", scale=4)
                    c_refresh = gr.Button("↻ rescan", scale=1, size="sm")
                c_x = gr.Radio(["images-per-s", "nfe"], value="images-per-s", label="speed axis")
                c_show = gr.Button("Show table and plot", variant="primary")
                with gr.Accordion("Evaluate the chosen runs (writes RUN/eval.json)", open=False):
                    with gr.Row():
                        c_n = gr.Number(value=1000, precision=0, minimum=1, label="samples n",
                                        info="the CLI's default is 10000; fewer is faster and noisier")
                        c_sampler = gr.Dropdown([AUTO, *SAMPLERS], value=AUTO, label="sampler")
                        c_steps = gr.Number(value=0, precision=0, minimum=0, label="steps", info="0: the default")
                        c_seed = gr.Number(value=0, precision=0, minimum=0, label="seed")
                    c_again = gr.Checkbox(False, label="evaluate again (runs that have an eval.json too)")
                    c_eval = gr.Button("Evaluate")
                c_note = gr.Markdown()
                c_table = gr.Markdown(elem_id="compare-table")
                c_plot = gr.Image(label="the trilemma: quality vs speed", type="filepath", format="png",
                                  interactive=False)
                c_show.click(page_errors(app.compare), [c_items, c_x], [c_table, c_plot, c_note],
                             api_name="compare", concurrency_limit=None)
                c_eval.click(page_errors(app.evaluate), [c_items, c_x, c_n, c_sampler, c_steps, c_seed, c_again],
                             [c_table, c_plot, c_note], api_name="evaluate", concurrency_id="evaluate",
                             concurrency_limit=1)

            # ---------------------------------------------------------- Train (watch)
            with gr.Tab("Train (watch)", id="watch"):
                with gr.Row():
                    w_run = run_dropdown(runs, "run folder being trained")
                    w_live = gr.Checkbox(True, label=f"refresh every {WATCH_EVERY_S:g} s", scale=1)
                w_text = gr.Markdown(elem_id="watch-status")
                with gr.Row():
                    w_plot = gr.LinePlot(x="step", y="loss", color="series", label="training loss (metrics.jsonl)",
                                         height=320)
                    w_preview = gr.Image(label="latest preview (samples/step_*.png)", type="filepath",
                                         interactive=False)
                timer = gr.Timer(WATCH_EVERY_S, active=True)
                watch_fn = page_errors(app.watch)
                timer.tick(watch_fn, [w_run], [w_text, w_plot, w_preview], api_name="watch_tick", api_visibility="private",
                           **light)
                w_run.change(watch_fn, [w_run], [w_text, w_plot, w_preview], api_name="watch", **light)
                w_live.change(lambda live: gr.Timer(active=live), [w_live], [timer], api_name="watch_live",
                              api_visibility="private", **light)

        def rescan():
            runs_now, t2i_now = app.served.runs(), app.run_choices("t2i")
            return (gr.update(choices=runs_now), gr.update(choices=t2i_now), gr.update(choices=t2i_now),
                    gr.update(choices=runs_now))

        s_refresh.click(page_errors(rescan), [], [s_run, t_run, e_run, w_run], api_name="rescan", **light)
        c_refresh.click(page_errors(lambda: gr.update(choices=app.compare_choices())), [], [c_items],
                        api_name="rescan_compare", api_visibility="private", **light)
        if first:
            demo.load(page_errors(app.run_info), [s_run], [s_info, s_label, s_diffusion], api_name="load_info",
                      api_visibility="private", **light)
            demo.load(watch_fn, [w_run], [w_text, w_plot, w_preview], api_name="load_watch",
                      api_visibility="private", **light)
    return demo


def launch(served: ServedPaths, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           device: str | None = "auto", block: bool = True, quiet: bool = False):
    """Start the server; with ``block=False`` return ``(demo, url)`` at once (tests, notebooks)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = App(served, device=device)
    demo = build(app)
    demo.queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(server_name=host, server_port=port, share=share, show_error=False, quiet=quiet,
                            max_file_size=actions.MAX_UPLOAD_BYTES, ssr_mode=False, prevent_thread_lock=not block,
                            css=CSS, footer_links=["api"])
    demo.trilemma_app = app
    return demo, url
