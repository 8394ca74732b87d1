"""**shapes**: a procedural captioned dataset of coloured shapes, and an exact prompt scorer.

The dataset is what GenEval (Ghosh et al. 2023) measures, shrunk to a domain where the
answer is known exactly: every image is drawn from a caption's structured meaning, and
:func:`score_images` reads that meaning back from any image by plain geometry, so a
generated image is checked against its prompt without a learned detector.

Scene specification
-------------------
Image: ``size`` × ``size`` RGB (32 by default, 64 as an option), black background;
lengths below are at 32 px and scale by ``k = size / 32``.

=============  ================================================================================
colours        red (230, 30, 30), green (30, 200, 30), blue (40, 80, 255),
               yellow (240, 220, 20), purple (170, 40, 220), cyan (20, 210, 220)
shapes         circle, square, triangle (apex up), diamond (a square standing on a corner)
sizes          side/diameter s ∈ {9, …, 14}·k pixels, uniform, not named in captions
positions      anywhere inside the image with a 1-pixel margin; two objects' bounding boxes
               are at least 2k pixels apart (so they never touch, even diagonally)
relations      "A left of B": A's box ends ≥ 2k px before B's box starts horizontally and
               |Δy| ≤ |Δx|/2 between the centres (right of, above, below likewise)
=============  ================================================================================

Caption grammar (words in braces are alternatives; training captions use all of them)::

    single    {a | one} COLOUR SHAPE                                  "a red circle"
    count     two COLOUR SHAPEs                                       "two green triangles"
    pair      a COLOUR SHAPE and a COLOUR SHAPE                       "a blue square and a red diamond"
    relation  a COLOUR SHAPE RELATION a COLOUR SHAPE                  "a red circle to the left of a blue square"
    RELATION  {to the left of | left of} | {to the right of | right of} | {above | on top of} | {below | under}

Pairs and relations always name two different colours and two different shapes, so every
object in the prompt is identified by its shape and its colour binding is a real test.
Kinds are drawn with probabilities 0.2 / 0.15 / 0.25 / 0.4.

Scorer (:func:`detect_objects`, :func:`score_image`)
----------------------------------------------------
1. **Colour segmentation**: each pixel takes the nearest (Euclidean RGB) of the background
   and the six palette colours.
2. **Objects**: 8-connected components of each colour; components smaller than 12·k² pixels
   are noise and dropped, and so are components that do not stand out from the background:
   the component's mean colour must be at most half as far from its palette colour as from
   the background (a dim haze of pixels that are each marginally nearer to, say, red than to
   black is not a red object; generated objects measure ≤ 0.4, such hazes ≈ 0.8).
3. **Shape by geometry** of each component, in its bounding box of h × w pixels with area A:
   vertical asymmetry a = (A_bottom − A_top)/A over the rows below/above the box's centre line;
   ``a > 0.25`` → triangle; else fill A/(h·w) > 0.9 → square; > 0.68 → circle; else diamond.
   Rendered shapes have a ≈ 0.5 (triangle) or 0 (others) and fill ≈ 1 / 0.8 / 0.5–0.6.
4. **Checks** (the categories; each applies to the prompt kinds listed):

   ==========  ===========================  ==================================================
   object      all kinds                    every prompted shape is detected (any colour)
   colour      all kinds                    every prompted colour is detected (any shape)
   count       all kinds                    the number of detected objects equals the prompt's
   position    relation                     some object of shape A and another of shape B
                                            satisfy the relation: the dominant axis of the
                                            centres' offset is the relation's, with the right sign
   binding     pair, relation               some object is (colour₁, shape₁) and another is
                                            (colour₂, shape₂)
   overall     all kinds                    the detected multiset of (colour, shape) equals the
                                            prompt's, and the relation (if any) holds
   ==========  ===========================  ==================================================

On the dataset's own images the scorer is exact (100% in every category; tested), and
against shuffled captions it falls to chance (e.g. object 1/4, colour 1/6 for single-object
prompts against single-object images; tested).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np
import torch
from scipy import ndimage

from trilemma.errors import DataError, TrilemmaError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 30),
    "blue": (40, 80, 255),
    "yellow": (240, 220, 20),
    "purple": (170, 40, 220),
    "cyan": (20, 210, 220),
}
BACKGROUND = (0, 0, 0)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
# How each relation may be written in a caption (the first is the canonical form).
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above", "on top of"),
    "below": ("below", "under"),
}
KINDS: tuple[str, ...] = ("single", "count", "pair", "relation")
KIND_PROBS: tuple[float, ...] = (0.2, 0.15, 0.25, 0.4)
CATEGORIES: tuple[str, ...] = ("object", "colour", "count", "position", "binding")
CATEGORY_KINDS: dict[str, tuple[str, ...]] = {
    "object": KINDS, "colour": KINDS, "count": KINDS, "position": ("relation",), "binding": ("pair", "relation"),
}

SIZE_RANGE = (9, 14)          # side/diameter at 32 px, inclusive
GAP = 2                       # min pixels between two objects' boxes (at 32 px)
MIN_AREA = 12                 # smallest component kept by the scorer (at 32 px)
CONTRAST = 0.5                # an object's mean colour is at most this × as far from its colour as from black
TRAIN_SIZE, TEST_SIZE = 20_000, 2_000
NATIVE_SIZE = 32


# ----------------------------------------------------------------------------- the meaning of a caption
@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str


@dataclass(frozen=True)
class Scene:
    """What a caption says: its kind, the named objects, and the relation of objects[0] to objects[1]."""

    kind: str
    objects: tuple[Obj, ...]
    relation: str | None = None

    @property
    def count(self) -> int:
        return len(self.objects)


def caption(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """The caption of a scene; ``rng`` picks among the phrasings (``None``: the canonical one)."""

    def pick(options: Sequence[str]) -> str:
        return options[0] if rng is None else options[int(rng.integers(len(options)))]

    a, *rest = scene.objects
    if scene.kind == "single":
        return f"{pick(('a', 'one'))} {a.colour} {a.shape}"
    if scene.kind == "count":
        return f"two {a.colour} {a.shape}s"
    b = rest[0]
    link = "and" if scene.kind == "pair" else pick(RELATION_PHRASES[scene.relation])
    return f"a {a.colour} {a.shape} {link} a {b.colour} {b.shape}"


_C = "|".join(COLOURS)
_S = "|".join(SHAPES)
_R = "|".join(sorted({p for ps in RELATION_PHRASES.values() for p in ps}, key=len, reverse=True))
_PATTERNS = (
    ("single", re.compile(rf"^(?:a|an|one) ({_C}) ({_S})$")),
    ("count", re.compile(rf"^(?:two|2) ({_C}) ({_S})s$")),
    ("pair", re.compile(rf"^(?:a|an|one) ({_C}) ({_S}) and (?:a|an|one) ({_C}) ({_S})$")),
    ("relation", re.compile(rf"^(?:a|an|one) ({_C}) ({_S}) ({_R}) (?:a|an|one) ({_C}) ({_S})$")),
)
_PHRASE_TO_RELATION = {p: r for r, ps in RELATION_PHRASES.items() for p in ps}


def parse_prompt(text: str) -> Scene:
    """The :class:`Scene` a prompt of the caption grammar describes (case and spacing ignored)."""
    norm = " ".join(text.lower().replace(",", " ").strip().rstrip(".").split())
    for kind, pattern in _PATTERNS:
        m = pattern.match(norm)
        if m is None:
            continue
        g = m.groups()
        if kind == "single":
            return Scene(kind, (Obj(g[0], g[1]),))
        if kind == "count":
            return Scene(kind, (Obj(g[0], g[1]), Obj(g[0], g[1])))
        if kind == "pair":
            return Scene(kind, (Obj(g[0], g[1]), Obj(g[2], g[3])))
        return Scene(kind, (Obj(g[0], g[1]), Obj(g[3], g[4])), _PHRASE_TO_RELATION[g[2]])
    raise TrilemmaError(f"prompt {text!r} is not in the shapes grammar (e.g. 'a red circle', 'two blue squares', "
                        f"'a red circle and a blue square', 'a red circle to the left of a blue square')")


def random_scene(rng: np.random.Generator, kind: str | None = None) -> Scene:
    """A scene drawn from the caption distribution (kinds with :data:`KIND_PROBS`)."""
    kind = kind or KINDS[int(rng.choice(len(KINDS), p=KIND_PROBS))]
    colours, shapes = list(COLOURS), list(SHAPES)
    c1, c2 = (colours[i] for i in rng.choice(len(colours), 2, replace=False))
    s1, s2 = (shapes[i] for i in rng.choice(len(shapes), 2, replace=False))
    if kind == "single":
        return Scene(kind, (Obj(c1, s1),))
    if kind == "count":
        return Scene(kind, (Obj(c1, s1), Obj(c1, s1)))
    if kind == "pair":
        return Scene(kind, (Obj(c1, s1), Obj(c2, s2)))
    return Scene(kind, (Obj(c1, s1), Obj(c2, s2)), RELATIONS[int(rng.integers(len(RELATIONS)))])


# ----------------------------------------------------------------------------- rendering
def shape_mask(shape: str, s: int) -> np.ndarray:
    """Boolean (s, s) mask of a shape filling an s × s box (pixel centres at i + 0.5)."""
    return _shape_mask(shape, s).copy()


@lru_cache(maxsize=None)
def _shape_mask(shape: str, s: int) -> np.ndarray:
    c = np.arange(s) + 0.5 - s / 2                        # pixel centres relative to the box centre
    dy, dx = np.meshgrid(c, c, indexing="ij")             # (s, s)
    if shape == "square":
        m = np.ones((s, s), dtype=bool)
    elif shape == "circle":
        m = dx ** 2 + dy ** 2 <= (s / 2) ** 2
    elif shape == "diamond":
        m = np.abs(dx) + np.abs(dy) <= s / 2
    elif shape == "triangle":                             # apex at the top centre, base on the bottom row
        m = np.abs(dx) <= (dy + s / 2) / 2
    else:
        raise ValueError(f"unknown shape {shape!r}")
    m.flags.writeable = False
    return m


def _apart(a: np.ndarray, b: np.ndarray, gap: int) -> np.ndarray:
    """Whether boxes a and b (arrays of (x, y, s) rows) are at least ``gap`` pixels apart."""
    (xa, ya, sa), (xb, yb, sb) = a.T, b.T
    return (xa + sa + gap <= xb) | (xb + sb + gap <= xa) | (ya + sa + gap <= yb) | (yb + sb + gap <= ya)


def _clear_relation(relation: str, a: np.ndarray, b: np.ndarray, gap: int) -> np.ndarray:
    """A clear instance of ``a RELATION b`` for boxes (x, y, s): separated on the axis, |off-axis| ≤ half."""
    (xa, ya, sa), (xb, yb, sb) = a.T, b.T
    dx, dy = (xb + sb / 2) - (xa + sa / 2), (yb + sb / 2) - (ya + sa / 2)   # centre of b minus centre of a
    if relation == "left of":
        return (xa + sa + gap <= xb) & (np.abs(dy) <= dx / 2)
    if relation == "right of":
        return (xb + sb + gap <= xa) & (np.abs(dy) <= -dx / 2)
    if relation == "above":
        return (ya + sa + gap <= yb) & (np.abs(dx) <= dy / 2)
    return (yb + sb + gap <= ya) & (np.abs(dx) <= -dy / 2)


def place(scene: Scene, rng: np.random.Generator, size: int, tries: int = 64) -> list[tuple[int, int, int]]:
    """Boxes (x, y, side) for the scene's objects: the first valid of ``tries`` random candidates."""
    k = size / NATIVE_SIZE
    gap = max(1, round(GAP * k))
    for _ in range(100):
        s = np.round(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, size=(tries, scene.count)) * k).astype(int)
        xy = (1 + rng.random((tries, scene.count, 2)) * (size - 1 - s[..., None])).astype(int)  # 1-pixel margin
        boxes = np.concatenate([xy, s[..., None]], axis=2)                 # (tries, objects, 3)
        if scene.count == 1:
            return [tuple(int(v) for v in boxes[0, 0])]
        ok = _apart(boxes[:, 0], boxes[:, 1], gap)
        if scene.relation is not None:
            ok &= _clear_relation(scene.relation, boxes[:, 0], boxes[:, 1], gap)
        if ok.any():
            first = int(np.argmax(ok))
            return [tuple(int(v) for v in box) for box in boxes[first]]
    raise RuntimeError(f"could not place {scene} in {size} px")   # never happens for size >= 32


def render(scene: Scene, boxes: Sequence[tuple[int, int, int]], size: int) -> np.ndarray:
    """uint8 (3, size, size) image of the scene with objects in ``boxes``."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for obj, (x, y, s) in zip(scene.objects, boxes):
        region = image[y:y + s, x:x + s]
        region[_shape_mask(obj.shape, s)] = COLOURS[obj.colour]
    return image.transpose(2, 0, 1)


def make_shapes(n: int, seed: int, size: int = NATIVE_SIZE, stream: int = 0) -> tuple[np.ndarray, list[str]]:
    """``n`` images (n, 3, size, size) uint8 and their captions, deterministic in (seed, stream)."""
    if size < NATIVE_SIZE:
        raise DataError(f"--image-size {size}: the shapes dataset needs at least {NATIVE_SIZE} px")
    rng = np.random.default_rng([seed, stream])
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    captions = []
    for i in range(n):
        scene = random_scene(rng)
        images[i] = render(scene, place(scene, rng, size), size)
        captions.append(caption(scene, rng))
    return images, captions


def benchmark_prompts(n: int = 200, seed: int = 1234) -> list[str]:
    """The shapes prompt benchmark: ``n`` canonical prompts, the four kinds in turn (balanced)."""
    if n <= 0:
        raise TrilemmaError(f"--n: need at least one prompt, got {n}")
    rng = np.random.default_rng([seed, 99])
    return [caption(random_scene(rng, KINDS[i % len(KINDS)])) for i in range(n)]


CACHE_VERSION = 1    # bump when rendering or captions change


@lru_cache(maxsize=4)
def _split(seed: int, size: int, split: str, n: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """A split, from the disk cache ``cache_dir("datasets")`` or generated (~0.5 ms an image) and cached."""
    import json

    from trilemma.utils.io import atomic_path
    from trilemma.utils.paths import cache_dir, stable_hash

    path = cache_dir("datasets") / f"shapes-{split}-{size}px-{stable_hash([seed, n, CACHE_VERSION])}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            images, captions = f["images"], json.loads(str(f["captions"]))
    else:
        images, captions = make_shapes(n, seed, size, stream=0 if split == "train" else 1)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, images=images, captions=np.array(json.dumps(captions)))
    images.flags.writeable = False
    return images, tuple(captions)


def load_shapes(config, split: str):
    """One split of the shapes dataset as an :class:`ImageDataset` (20,000 train / 2,000 test images).

    ``config.split_seed`` seeds the generator; ``image_size`` ≥ 32; RGB only; no flips
    (a mirror image would contradict "left of").
    """
    from trilemma.data.dataset import ImageDataset

    if config.channels != 3:
        raise DataError("data option 'channels': shapes is an RGB dataset (colours are in the captions)")
    if config.hflip:
        raise DataError("--hflip: flipping shapes images would swap 'left of' and 'right of' in the captions")
    images, captions = _split(config.split_seed, config.image_size, split,
                              TRAIN_SIZE if split == "train" else TEST_SIZE)
    x = torch.from_numpy(images.copy())
    return ImageDataset(x, torch.full((len(x),), -1, dtype=torch.int64), (), config, split, "shapes",
                        list(captions))


# ----------------------------------------------------------------------------- the scorer
@dataclass(frozen=True)
class Detection:
    colour: str
    shape: str
    cx: float        # centre of mass, pixels
    cy: float
    area: int


_PALETTE = np.array([BACKGROUND, *COLOURS.values()], dtype=np.float32)       # (1 + colours, 3)
_EIGHT = np.ones((3, 3), dtype=bool)


def classify_shape(mask: np.ndarray) -> str:
    """Shape of one component (a boolean mask cropped to its bounding box); see the module docstring."""
    h, w = mask.shape
    area = int(mask.sum())
    rows = mask.sum(axis=1)                                                      # (h,)
    centre = (h - 1) / 2
    r = np.arange(h)
    asym = (rows[r > centre].sum() - rows[r < centre].sum()) / area
    if asym > 0.25:
        return "triangle"
    fill = area / (h * w)
    if fill > 0.9:
        return "square"
    return "circle" if fill > 0.68 else "diamond"


def detect_objects(image: np.ndarray | torch.Tensor) -> list[Detection]:
    """The objects in one uint8 image (3, H, W) (or float in [-1, 1]); see the module docstring."""
    x = torch.as_tensor(image)
    if x.dtype != torch.uint8:
        x = ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    if x.ndim != 3 or x.shape[0] != 3:
        raise TrilemmaError(f"the shapes scorer needs RGB images (3, H, W), got {tuple(x.shape)}")
    pixels = x.permute(1, 2, 0).numpy().astype(np.float32)                       # (H, W, 3)
    d2 = ((pixels[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)          # (H, W, 1 + colours)
    nearest = d2.argmin(-1)                                                      # 0 = background
    min_area = max(1, round(MIN_AREA * (x.shape[-1] / NATIVE_SIZE) ** 2))
    found = []
    for ci, colour in enumerate(COLOURS, start=1):
        labels, count = ndimage.label(nearest == ci, structure=_EIGHT)
        if count == 0:
            continue
        for j, box in enumerate(ndimage.find_objects(labels), start=1):
            mask = labels[box] == j
            area = int(mask.sum())
            if area < min_area:
                continue
            mean = pixels[box][mask].mean(0)                                      # the component's mean colour
            if np.linalg.norm(mean - _PALETTE[ci]) > CONTRAST * np.linalg.norm(mean - _PALETTE[0]):
                continue                                                         # a dim haze, not an object
            ys, xs = np.nonzero(mask)
            found.append(Detection(colour, classify_shape(mask), float(xs.mean() + box[1].start + 0.5),
                                   float(ys.mean() + box[0].start + 0.5), area))
    return found


def _satisfies(relation: str, a: Detection, b: Detection) -> bool:
    dx, dy = b.cx - a.cx, b.cy - a.cy                     # b relative to a; y grows downwards
    if relation in ("left of", "right of"):
        return abs(dx) > abs(dy) and (dx > 0 if relation == "left of" else dx < 0)
    return abs(dy) > abs(dx) and (dy > 0 if relation == "above" else dy < 0)


def check(detections: Sequence[Detection], scene: Scene) -> dict[str, bool]:
    """Each applicable category's verdict, plus "overall", for one image's detections."""
    shapes = {d.shape for d in detections}
    colours = {d.colour for d in detections}
    out = {
        "object": all(o.shape in shapes for o in scene.objects),
        "colour": all(o.colour in colours for o in scene.objects),
        "count": len(detections) == scene.count,
    }
    pairs = [(a, b) for i, a in enumerate(detections) for j, b in enumerate(detections) if i != j]
    if scene.kind in CATEGORY_KINDS["binding"]:
        o1, o2 = scene.objects
        out["binding"] = any((a.colour, a.shape, b.colour, b.shape) == (o1.colour, o1.shape, o2.colour, o2.shape)
                             for a, b in pairs)
    relation_ok = True
    if scene.relation is not None:
        o1, o2 = scene.objects
        out["position"] = any(a.shape == o1.shape and b.shape == o2.shape and _satisfies(scene.relation, a, b)
                              for a, b in pairs)
        relation_ok = any((a.colour, a.shape, b.colour, b.shape) == (o1.colour, o1.shape, o2.colour, o2.shape)
                          and _satisfies(scene.relation, a, b) for a, b in pairs)
    same = Counter((d.colour, d.shape) for d in detections) == Counter((o.colour, o.shape) for o in scene.objects)
    out["overall"] = same and relation_ok
    return out


def score_image(image, prompt: str | Scene) -> dict[str, bool]:
    scene = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    return check(detect_objects(image), scene)


def score_images(images: torch.Tensor | np.ndarray, prompts: Sequence[str]) -> dict:
    """Prompt accuracy of ``images`` (N, 3, H, W) against ``prompts``: per category, per kind, overall.

    Returns ``{"accuracy": {category: share or None, ..., "overall": share}, "n": {category: count},
    "by_kind": {kind: overall share}, "verdicts": [per-image dicts]}``.
    """
    if len(images) != len(prompts):
        raise TrilemmaError(f"{len(images)} images for {len(prompts)} prompts")
    if len(prompts) == 0:
        raise TrilemmaError("no prompts to score")
    scenes = [parse_prompt(p) for p in prompts]
    verdicts = [check(detect_objects(im), sc) for im, sc in zip(images, scenes)]
    return summarise(verdicts, [sc.kind for sc in scenes])


def summarise(verdicts: Sequence[dict[str, bool]], kinds: Iterable[str]) -> dict:
    kinds = list(kinds)
    accuracy, counts = {}, {}
    for cat in (*CATEGORIES, "overall"):
        values = [v[cat] for v in verdicts if cat in v]
        counts[cat] = len(values)
        accuracy[cat] = float(np.mean(values)) if values else None
    by_kind = {}
    for kind in KINDS:
        values = [v["overall"] for v, k in zip(verdicts, kinds) if k == kind]
        by_kind[kind] = float(np.mean(values)) if values else None
    return {"accuracy": accuracy, "n": counts, "by_kind": by_kind, "verdicts": list(verdicts)}
