"""Captions for labelled datasets: class names written through varied templates.

Fashion-MNIST and mnist-5k have labels, not captions; ``fashion-mnist-captions`` and
``mnist-5k-captions`` give every image a caption made from its class through one of
several templates ("a photo of a sneaker", "an ankle boot", "a handwritten seven", …).
Templates come in two disjoint sets:

- **seen**: the training (and test-split) captions use these;
- **held out**: never used for training, to test generalisation to unseen phrasings.

The template of image i of a split is drawn from ``numpy.random.default_rng([split_seed, split])``,
so the captions are deterministic.
"""

from __future__ import annotations

import numpy as np

from trilemma.errors import DataError

# What each class is called in a caption (a noun phrase with its article).
FASHION_PHRASES = ("a T-shirt", "a pair of trousers", "a pullover", "a dress", "a coat",
                   "a sandal", "a shirt", "a sneaker", "a bag", "an ankle boot")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Fashion: {x} is the noun phrase with its article ("an ankle boot").
# Digits: {word} ("eight"), {a_word} ("an eight"), {digit} ("8").
FASHION_TEMPLATES = {
    "seen": ("{x}", "a photo of {x}", "a picture of {x}", "a black and white photo of {x}",
             "a small image of {x}", "a grayscale picture of {x}", "{x} on a black background",
             "a product photo of {x}"),
    "held_out": ("an image showing {x}", "a low-resolution photo of {x}", "this is {x}",
                 "a tiny greyscale image of {x}"),
}
DIGIT_TEMPLATES = {
    "seen": ("a handwritten {word}", "the digit {digit}", "the number {word}", "{a_word}",
             "a handwritten digit {digit}", "a picture of the digit {word}", "{word}",
             "the handwritten number {digit}"),
    "held_out": ("someone wrote the digit {word}", "a scan of a handwritten {digit}", "the numeral {digit}",
                 "a sketch of the number {word}"),
}
TEMPLATE_SETS = ("seen", "held_out")

CAPTIONED_BUILTINS = ("fashion-mnist-captions", "mnist-5k-captions")


def _article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def fill(template: str, source: str, label: int) -> str:
    """A template filled in for class ``label`` of ``source`` ("fashion-mnist" or "mnist-5k")."""
    if source == "fashion-mnist":
        return template.format(x=FASHION_PHRASES[label])
    word = DIGIT_WORDS[label]
    return template.format(word=word, a_word=_article(word), digit=label)


def templates_for(source: str, which: str = "seen") -> tuple[str, ...]:
    if which not in TEMPLATE_SETS:
        raise DataError(f"template set must be one of {', '.join(TEMPLATE_SETS)}, got {which!r}")
    table = FASHION_TEMPLATES if source == "fashion-mnist" else DIGIT_TEMPLATES
    return table[which]


def source_of(name: str) -> str:
    """The labelled dataset behind a captioned name: "fashion-mnist-captions" -> "fashion-mnist"."""
    if name not in CAPTIONED_BUILTINS:
        raise DataError(f"unknown captioned dataset {name!r}: use one of {', '.join(CAPTIONED_BUILTINS)}")
    return name[: -len("-captions")]


def class_captions(labels: np.ndarray, source: str, seed: int, split: str, which: str = "seen") -> list[str]:
    """One caption per label, the template drawn per image (deterministic in seed and split)."""
    templates = templates_for(source, which)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    choice = rng.integers(len(templates), size=len(labels))
    return [fill(templates[t], source, int(y)) for t, y in zip(choice, labels)]


def class_prompts(source: str, which: str = "seen") -> list[tuple[str, int]]:
    """Every (prompt, class) pair of a template set: all templates × all classes."""
    names = FASHION_PHRASES if source == "fashion-mnist" else DIGIT_WORDS
    return [(fill(t, source, c), c) for t in templates_for(source, which) for c in range(len(names))]


def load_captioned(config, split: str):
    """``fashion-mnist-captions`` / ``mnist-5k-captions``: the builtin dataset plus template captions."""
    import dataclasses

    from trilemma.data.builtin import load_builtin
    from trilemma.data.dataset import ImageDataset

    source = source_of(config.name)
    base = load_builtin(dataclasses.replace(config, name=source), split)
    captions = class_captions(base.labels.numpy(), source, config.split_seed, split)
    return ImageDataset(base.images, base.labels, base.class_names, config, split, config.name, captions)
