"""The repo's top-level kernels/ folder must not shadow the Hub's `kernels` package that transformers imports.

kernels/ has no ``__init__.py``: seen from the checkout root (first on sys.path under ``python -m pytest``,
``python -m attnrl.cli``, ``python -c``) it is only a PEP 420 namespace portion, which Python's import system never
prefers over a regular package of the same name. ``attnrl/kernels`` is a symlink to it, so that editable installs
find ``attnrl.kernels`` (setuptools' editable finder cannot map a namespace subpackage, pypa/setuptools#4943); a
wheel gets the files through pyproject.toml's package-dir.
"""

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
KERNELS = REPO_ROOT / "kernels"


def _run_from_checkout_root(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python [args] -c code`` with the checkout root as working directory and first on sys.path."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run([sys.executable, *args, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def _hub_kernels_installed() -> bool:
    """Whether the Hub's `kernels` distribution is installed (by metadata: a path search would find kernels/ here)."""
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_kernels_folder_is_no_regular_package_and_has_no_import_hook():
    assert KERNELS.is_dir() and not (KERNELS / "__init__.py").exists()
    assert not any("sys.modules[" in p.read_text() for p in KERNELS.glob("*.py"))
    assert (REPO_ROOT / "attnrl" / "kernels").resolve() == KERNELS  # the symlink editable installs rely on


@pytest.mark.skipif(not _hub_kernels_installed(), reason="the Hub's `kernels` package is not installed")
def test_this_test_process_finds_the_hub_kernels_not_the_checkout_folder():
    """pytest runs from the checkout root (its rootdir, and cwd under `python -m pytest`) with the root on sys.path."""
    assert str(REPO_ROOT) in {str(Path(p or os.getcwd()).resolve()) for p in sys.path}
    spec = importlib.util.find_spec("kernels")
    assert spec.origin is not None and KERNELS not in Path(spec.origin).resolve().parents


@pytest.mark.skipif(not _hub_kernels_installed(), reason="the Hub's `kernels` package is not installed")
def test_top_level_kernels_name_resolves_to_the_hub_package_from_the_checkout_root():
    result = _run_from_checkout_root(
        "import sys, kernels, attnrl.kernels.dispatch as ours\n"
        "from transformers import AttentionInterface\n"  # imports transformers.integrations.hub_kernels
        "from transformers.utils.import_utils import is_kernels_available\n"
        "print(sys.path[0] or '.'); print(kernels.__file__); print(ours.__file__)\n"
        "print(hasattr(kernels, 'CUDAProperties'), is_kernels_available())\n"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    first, hub_file, ours_file, has_hub_api, available = result.stdout.split()
    assert Path(first).resolve() == REPO_ROOT  # `python -c` from the root: the root is searched first
    assert KERNELS not in Path(hub_file).resolve().parents
    assert Path(ours_file).resolve() == KERNELS / "dispatch.py"
    assert has_hub_api == "True" and available == "True"


def test_without_the_hub_package_the_checkout_folder_is_an_empty_namespace_transformers_ignores(tmp_path):
    """A site directory holding everything installed except the Hub's kernels (symlinks), Python started without
    site-packages (-S) from the checkout root: `kernels` is then only our namespace portion, runs none of our code,
    and transformers reports it unavailable and loads."""
    packages = Path(importlib.util.find_spec("transformers").origin).parents[1]
    view = tmp_path / "site"
    view.mkdir()
    for entry in packages.iterdir():
        if entry.name != "kernels" and not entry.name.startswith("kernels-"):
            (view / entry.name).symlink_to(entry)
    code = (
        f"import site; site.addsitedir({str(view)!r})\n"
        "import importlib.util, kernels\n"
        "from transformers import AutoModelForCausalLM\n"
        "from transformers.utils.import_utils import is_kernels_available\n"
        "from attnrl.kernels.dispatch import attention_statistics\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "print(spec.origin, getattr(kernels, '__file__', None), hasattr(kernels, 'attention_statistics'),"
        " is_kernels_available(), *kernels.__path__)\n"
    )
    result = _run_from_checkout_root(code, "-S")
    assert result.returncode == 0, result.stderr[-3000:]
    origin, file, has_our_api, available, *path = result.stdout.split()
    assert origin == "None" and file == "None" and {Path(p).resolve() for p in path} == {KERNELS}
    assert has_our_api == "False" and available == "False"


def test_attnrl_kernels_keeps_its_api_from_the_checkout_root():
    result = _run_from_checkout_root(
        "from attnrl.kernels.dispatch import attention_statistics, attention_statistics_torch, StatsSpec\n"
        "from attnrl.kernels import reference, triton_stats\n"
        "print(attention_statistics.__module__, attention_statistics_torch is reference.attention_statistics_torch)\n",
        env={"TRITON_INTERPRET": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["attnrl.kernels.dispatch", "True"]
