"""Shared fixtures. Data that CI must have (../shared/data) is required when CI is set."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.abspath(os.path.join(ROOT, "..", "shared", "data"))


def require_shared(relpath: str) -> str:
    """Path of a file under ../shared/data; skips locally if absent, fails under CI."""
    path = os.path.join(SHARED_DATA, relpath)
    if not os.path.isfile(path):
        if os.environ.get("CI"):
            pytest.fail(f"CI needs {path} (../shared/data beside the checkout)")
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture
def shared_data_dir():
    return SHARED_DATA


def require_minilm() -> str:
    """all-MiniLM-L6-v2's folder (scripts/setup.sh installs it); skips locally if absent, fails
    under CI."""
    from jaxmia import pretrained
    from jaxmia.errors import UserError

    try:
        return pretrained.minilm_dir()
    except UserError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the pretrained text model: {e}")
        pytest.skip(str(e))
