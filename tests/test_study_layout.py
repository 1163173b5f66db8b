"""Study and library apart: the installed package holds what a user calls; the model organism, the sweeps and their
harness live in the study package ``benchmarks`` (a source checkout only), which attnrl never imports."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# what the wheel is built from: the checkout without its virtual environment, results and build leftovers
_SKIP = {".git", ".venv", ".whl", "build", "results", "checkpoint", "__pycache__", ".pytest_cache", ".ruff_cache",
         ".hypothesis", "runs"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel of this checkout (``pip wheel --no-deps``), built from a copy so that the checkout stays untouched."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    shutil.copytree(REPO, source, ignore=lambda folder, names: [n for n in names
                                                                  if n in _SKIP or n.endswith(".egg-info")])
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source),
                          "-w", str(root / "dist")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (path,) = (root / "dist").glob("attnrl-*.whl")
    return path


def test_the_wheel_holds_no_study_code_and_no_path_into_benchmarks(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        sources = {n: archive.read(n).decode() for n in names if n.endswith(".py")}
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert packages == {"attnrl"}, packages  # no top-level benchmarks/ (nor kernels/, rewards/)
    assert not [n for n in names if n.startswith("attnrl/organism/")]
    assert "attnrl/kernels/dispatch.py" in names and "attnrl/rewards/__init__.py" in names
    assert "attnrl/analysis/causal.py" in names  # the premise test stays a user feature
    # no installed module names the study's folder: no default path into benchmarks/, no import of the study
    assert not [n for n, text in sources.items() if "benchmarks" in text]
    assert not [n for n in names if "organism" in n]


def test_the_installed_wheel_imports_and_answers_help_outside_the_checkout(wheel, tmp_path):
    """The wheel installed into a bare folder (dependencies from this environment), run from outside the checkout:
    ``import attnrl`` comes from there, ``attnrl --help`` and ``attnrl premise --help`` work, and the study is never
    imported."""
    site = tmp_path / "site"
    run = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target",
                          str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    code = ("import sys, attnrl, attnrl.cli, attnrl.analysis.causal, attnrl.recipes.grpo\n"
            "print(attnrl.__file__)\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'benchmarks'], 'study imported'\n"
            "from attnrl.rewards import TASKS\n"
            "assert 'organism_countdown' not in TASKS\n"
            "try:\n    attnrl.cli.main(['premise', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n")
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert Path(run.stdout.splitlines()[0]).resolve().is_relative_to(site.resolve())
    assert "--task" in run.stdout and "--model" in run.stdout


def test_the_package_sources_name_no_study_path():
    """The checkout's package folders (what the wheel ships) never name benchmarks/ (``grep -rn benchmarks attnrl/
    kernels/ rewards/`` finds nothing)."""
    hits = [f"{p.relative_to(REPO)}:{i}" for folder in ("attnrl", "kernels", "rewards")
            for p in (REPO / folder).rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
            if "benchmarks" in line]
    assert not hits, hits


def test_the_study_registers_its_task_on_import_and_attnrl_does_not_import_it():
    code = ("import sys\nimport attnrl.cli, attnrl.recipes.grpo, attnrl.analysis.causal\n"
            "from attnrl.rewards import TASKS\nfrom attnrl.analysis.causal import PREMISE_TASKS\n"
            "assert 'organism_countdown' not in TASKS and not [m for m in sys.modules if m.startswith('benchmarks')]\n"
            "import benchmarks.organism\n"
            "assert 'organism_countdown' in TASKS and 'organism_countdown' in PREMISE_TASKS\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]


def test_study_code_and_tests_use_no_path_hacks():
    hack = re.compile(r"spec_from_file_location|sys\.path\.(insert|append)")
    files = [*(REPO / "benchmarks").rglob("*.py"), *(REPO / "tests").rglob("*.py")]
    hits = [str(p.relative_to(REPO)) for p in files if "results" not in p.parts and p != Path(__file__).resolve()
            and hack.search(p.read_text())]
    assert not hits, hits
