"""Run logs and run folders of the studies stay out of git: .gitignore catches them at any depth under
benchmarks/results/, and none is tracked."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = "benchmarks/results"


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def _in_git_checkout() -> bool:
    return shutil.which("git") is not None and _git("rev-parse", "--is-inside-work-tree").stdout.strip() == "true"


pytestmark = pytest.mark.skipif(not _in_git_checkout(), reason="not a git checkout (no git or no .git)")


def test_no_tracked_file_under_benchmarks_results_lies_in_a_logs_or_runs_folder():
    tracked = _git("ls-files", "-z", "--", RESULTS).stdout.split("\0")
    offenders = [p for p in tracked if p and {"logs", "runs"} & set(Path(p).parts[:-1])]
    assert offenders == [], f"{len(offenders)} run logs tracked by git, e.g. {offenders[:3]}: git rm -r --cached them"


@pytest.mark.parametrize("path", [
    f"{RESULTS}/logs/cell.log", f"{RESULTS}/organism_sampled/logs/base.log", f"{RESULTS}/a/b/c/logs/x.log",
    f"{RESULTS}/runs/cell/adapter_config.json", f"{RESULTS}/learning/runs/x/trainer_state.json",
    f"{RESULTS}/new_study/arm/runs/seed0/log.txt",
])
def test_gitignore_catches_run_logs_at_any_depth(path):
    """`git check-ignore --no-index` asks the ignore rules only (the files need not exist)."""
    result = _git("check-ignore", "--no-index", "-q", path)
    assert result.returncode == 0, f"{path} is not ignored by .gitignore"


def test_gitignore_keeps_result_tables_and_summaries():
    for path in (f"{RESULTS}/learning/summary.md", f"{RESULTS}/learning/cells/x.json"):
        assert _git("check-ignore", "--no-index", "-q", path).returncode == 1, f"{path} would be ignored"
