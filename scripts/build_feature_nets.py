"""Train the builtin datasets' feature networks once, for shipping inside the package.

    OMP_NUM_THREADS=2 python scripts/build_feature_nets.py [--data NAME ...] [--threads 2]
    OMP_NUM_THREADS=2 python scripts/build_feature_nets.py --check   # retrain, compare, write nothing

For each builtin dataset (fashion-mnist, mnist-5k, digits) at its canonical config
(native image size and channels, default split), this trains the feature network
with ``DEFAULT_RECIPE`` exactly as :func:`trilemma.metrics.get_feature_network`
would (same loop: CPU, ``torch.use_deterministic_algorithms``, one seeded
generator), measures its test accuracy, and writes into
``trilemma/metrics/feature_nets/``:

- ``<dataset>.safetensors``: the weights (float32 state dict; no pickle);
- ``manifest.json``: per dataset the file's sha256 and size, the recipe, the data
  config, the fingerprint of the training images and labels, the objective, the
  number and names of classes, the test accuracy, the training time and thread
  count, and the torch/numpy/Python versions it was trained with;
- ``expected_features.json``: the shipped network's features of the first 16 test
  images of each dataset (and the sha256 of those uint8 images), which
  ``tests/test_feature_nets.py`` checks every installation reproduces to 1e-5.

With ``--data`` only those datasets are rebuilt; the others' entries are kept;
``--features-only`` rewrites ``expected_features.json`` from the shipped weights.

Reproducibility: the manifest records the torch version and thread count, and
``--check`` retrains with that thread count and compares the sha256 (and reports
the largest weight and feature differences) instead of writing anything. On an
idle machine with the recorded torch version and threads, ``--check`` reproduced
the shipped fashion-mnist weights bit for bit; two checks run while other jobs
loaded the 2-core CPU (load 4-6) gave other bits (same 92.28% test accuracy):
oneDNN's multithreaded float reductions are not bit-stable under contention. A
retrained network is therefore the same only under controlled conditions, which
is why the weights are shipped rather than retrained on every installation.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from trilemma.data import BUILTIN_DATASETS, load_dataset
from trilemma.metrics import features as F
from trilemma.utils.io import atomic_write, write_json
from trilemma.utils.paths import stable_hash

EXPECTED_FEATURES = "expected_features.json"
CHECK_IMAGES = 16  # first test images whose features tests/test_feature_nets.py checks
COMMAND = "OMP_NUM_THREADS=2 python scripts/build_feature_nets.py"


def train_builtin(name: str, progress: bool = True) -> tuple[F.FeatureNetwork, str]:
    """Train the network of builtin ``name`` with ``DEFAULT_RECIPE``; return it and the data fingerprint."""
    config = F.canonical_data_config(name)
    recipe = F.resolve_recipe(None)
    train = load_dataset(config, split="train")
    fingerprint = F.dataset_fingerprint(train.images, train.labels)
    key = {"data": config.to_dict(), "fingerprint": fingerprint, "recipe": recipe, "objective": "classifier",
           "code_version": F.FEATURE_CODE_VERSION}
    fn = F.train_feature_network(config, recipe, train, train.labels, stable_hash(key), progress=progress)
    return fn, fingerprint


def weights_bytes(fn: F.FeatureNetwork, name: str) -> bytes:
    """The safetensors bytes of ``fn``'s weights (deterministic: no timestamps in the metadata)."""
    state = {k: v.detach().cpu().contiguous() for k, v in fn.net.state_dict().items()}
    return save(state, metadata={"format": "trilemma-feature-net", "dataset": name,
                                 "code_version": str(F.FEATURE_CODE_VERSION)})


def manifest_entry(fn: F.FeatureNetwork, name: str, fingerprint: str, blob: bytes) -> dict:
    import hashlib

    info = fn.info
    return {
        "file": f"{name}.safetensors",
        "sha256": hashlib.sha256(blob).hexdigest(),
        "bytes": len(blob),
        "objective": info["objective"],
        "data_config": info["data_config"],
        "data_fingerprint": fingerprint,
        "recipe": info["recipe"],
        "code_version": info["code_version"],
        "feature_dim": info["feature_dim"],
        "num_classes": info["num_classes"],
        "class_names": info["class_names"],
        "test_accuracy": info["test_accuracy"],
        "test_n": info["test_n"],
        "train_seconds": info["train_seconds"],
        "train_threads": info["train_threads"],
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "machine": platform.machine(),
    }


def expected_features(name: str, folder: Path) -> dict:
    """Features of the first :data:`CHECK_IMAGES` test images under the shipped (just written) network."""
    import hashlib

    fn = F.load_shipped_network(name, folder=folder)
    images = load_dataset(F.canonical_data_config(name), split="test").images[:CHECK_IMAGES]
    features = fn.features(images)  # (16, 128) float64 of float32 activations
    return {"images": f"the first {CHECK_IMAGES} images of the test split",
            "input_sha256": hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest(),
            "features": [[round(float(v), 7) for v in row] for row in features]}


def differences(a: F.FeatureNetwork, b: F.FeatureNetwork, name: str) -> tuple[float, float]:
    """Largest absolute difference of two networks' float weights, and of their test-image features."""
    sb = b.net.state_dict()
    weights = max(float((v - sb[k]).abs().max()) for k, v in a.net.state_dict().items() if v.is_floating_point())
    images = load_dataset(F.canonical_data_config(name), split="test").images[:CHECK_IMAGES]
    return weights, float(np.abs(a.features(images) - b.features(images)).max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", choices=BUILTIN_DATASETS,
                        help="dataset to (re)build (repeatable; default all builtins)")
    parser.add_argument("--out", type=Path, default=F.SHIPPED_DIR, help="folder of the shipped networks")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch CPU threads to train with (recorded; the weights depend on it)")
    parser.add_argument("--check", action="store_true",
                        help="retrain with the manifest's thread count and compare sha256s; write nothing")
    parser.add_argument("--features-only", action="store_true",
                        help=f"only rewrite {EXPECTED_FEATURES} from the shipped weights (no training)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    names = args.data or list(BUILTIN_DATASETS)
    manifest_path = args.out / F.SHIPPED_MANIFEST
    old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    networks = dict(old.get("networks", {}))

    if args.check:
        failures = 0
        for name in names:
            shipped = networks.get(name)
            if shipped is None:
                print(f"{name}: not in {manifest_path}")
                failures += 1
                continue
            torch.set_num_threads(shipped["train_threads"])
            if shipped["torch_version"] != torch.__version__:
                print(f"{name}: note: shipped with torch {shipped['torch_version']}, checking with "
                      f"{torch.__version__}: the weights may differ in float rounding")
            fn, fingerprint = train_builtin(name, progress=not args.quiet)
            entry = manifest_entry(fn, name, fingerprint, weights_bytes(fn, name))
            same = entry["sha256"] == shipped["sha256"]
            failures += not same
            weights, features = differences(fn, F.load_shipped_network(name, folder=args.out), name)
            print(f"{name}: {'identical' if same else 'DIFFERENT'} weights (sha256 {entry['sha256'][:16]}, "
                  f"shipped {shipped['sha256'][:16]}; max |weight difference| {weights:.2e}, max |feature "
                  f"difference| {features:.2e} on the first {CHECK_IMAGES} test images); test accuracy "
                  f"{100 * entry['test_accuracy']:.2f}% (shipped {100 * shipped['test_accuracy']:.2f}%)")
        return 1 if failures else 0

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in [] if args.features_only else names:
        t0 = time.perf_counter()
        fn, fingerprint = train_builtin(name, progress=not args.quiet)
        blob = weights_bytes(fn, name)
        atomic_write(args.out / f"{name}.safetensors", blob)
        networks[name] = manifest_entry(fn, name, fingerprint, blob)
        print(f"{name}: test accuracy {100 * fn.info['test_accuracy']:.2f}% on {fn.info['test_n']} images, "
              f"{len(blob) / 1024:.0f} KiB, sha256 {networks[name]['sha256'][:16]}, "
              f"{time.perf_counter() - t0:.0f} s on {args.threads} thread(s)", flush=True)
        # Written after every network, so an interrupted build keeps what it finished.
        manifest = {"schema": F.SHIPPED_SCHEMA,
                    "built_by": f"{COMMAND} (trains with trilemma.metrics.features.DEFAULT_RECIPE)",
                    "networks": {k: networks[k] for k in BUILTIN_DATASETS if k in networks}}
        write_json(manifest_path, manifest)

    expected_path = args.out / EXPECTED_FEATURES
    expected = json.loads(expected_path.read_text()) if expected_path.is_file() else {}
    checks = dict(expected.get("networks", {}))
    for name in names:
        checks[name] = expected_features(name, args.out)
    write_expected(expected_path, {
        "about": "features of the shipped networks on fixed real images; tests/test_feature_nets.py "
                 "checks them to 1e-5 (float32 kernels differ across CPUs in the last bits only)",
        "networks": {k: checks[k] for k in BUILTIN_DATASETS if k in checks}})
    return 0


def write_expected(path: Path, obj: dict) -> None:
    """JSON with one feature row per line (indenting every number would triple the size)."""
    rows = {}

    def placeholder(name: str, features: list) -> str:
        rows[name] = ",\n        ".join(json.dumps(row, separators=(",", ":")) for row in features)
        return f"@@{name}@@"

    shallow = {**obj, "networks": {k: {**v, "features": placeholder(k, v["features"])}
                                   for k, v in obj["networks"].items()}}
    text = json.dumps(shallow, indent=2)
    for name, body in rows.items():
        text = text.replace(f'"@@{name}@@"', f"[\n        {body}\n      ]")
    json.loads(text)  # still valid JSON
    atomic_write(path, (text + "\n").encode())


if __name__ == "__main__":
    sys.exit(main())
