"""Fixtures shared by several test modules."""

import pytest
from helpers import TINY_RECIPE

import trilemma.metrics.features as features_mod


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A temporary TRILEMMA_CACHE for the module, with the tiny feature-network recipe as the default."""
    path = tmp_path_factory.mktemp("trilemma-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("TRILEMMA_CACHE", str(path))
    for key, value in TINY_RECIPE.items():
        mp.setitem(features_mod.DEFAULT_RECIPE, key, value)
    yield path
    mp.undo()
