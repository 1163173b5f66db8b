"""The repo's top-level kernels/ folder must not shadow the Hub's `kernels` package that transformers imports."""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run_from_checkout_root(code: str) -> subprocess.CompletedProcess:
    """Run ``python -c code`` with the checkout root as working directory and first on sys.path."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def _hub_kernels_installed() -> bool:
    """Whether the Hub's `kernels` distribution is installed (by metadata: a path search would find kernels/ here)."""
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _hub_kernels_installed(), reason="the Hub's `kernels` package is not installed")
def test_top_level_kernels_name_resolves_to_the_hub_package_from_the_checkout_root():
    result = _run_from_checkout_root(
        "import kernels, attnrl.kernels as ours\n"
        "from transformers import AttentionInterface\n"  # imports transformers.integrations.hub_kernels
        "print(kernels.__file__); print(ours.__file__); print(hasattr(kernels, 'CUDAProperties'))\n"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    hub_file, ours_file, has_hub_api = result.stdout.split()
    assert Path(hub_file).resolve().parent != REPO_ROOT / "kernels"
    assert Path(ours_file).resolve() == REPO_ROOT / "kernels" / "__init__.py"
    assert has_hub_api == "True"


def test_attnrl_kernels_keeps_its_api_from_the_checkout_root():
    result = _run_from_checkout_root(
        "from attnrl.kernels import attention_statistics, attention_statistics_torch, StatsSpec\n"
        "print(attention_statistics.__module__)\n"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "attnrl.kernels.dispatch"
