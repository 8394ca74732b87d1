"""``trilemma ui``: a local web app (Gradio) over run folders: sample, text-to-image, edit, compare, watch.

- ``paths.py``   which folders the page may open (real paths under the given roots only) and run discovery
- ``cache.py``   loaded runs, cached per run folder and keyed by the weights' checksum
- ``actions.py`` what each button does, without Gradio: the same code paths as the CLI commands
  (``load_run``, ``SampleOptions``, ``GeneratorRun.generate``, ``save_grid``, ``edit_images``, ``evaluate_run``)
- ``watch.py``   a training run's progress read from its folder (metrics.jsonl, state/, samples/)
- ``app.py``     the Gradio page wiring them together

It sits at the CLI layer (docs/ARCHITECTURE.md); only ``trilemma/cli/ui.py`` imports it. Gradio is an
optional dependency, imported by ``app.py`` alone.
"""
