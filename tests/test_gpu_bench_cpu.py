"""The GPU measurement scripts, checked on CPU: their --cpu-check modes at toy sizes (Triton interpreted), the
eager / paper-approach statistics against the reference, the goal marks, the one-command plan and the wheels."""

import importlib
import json
import re
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from attnrl.kernels.reference import StatsSpec, attention_statistics_torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def load(name: str):
    """benchmarks/<name>.py as the module ``benchmarks.<name>`` (the repository root is on pytest's path)."""
    return importlib.import_module(f"benchmarks.{name}")


@pytest.fixture(scope="module")
def stats_bench():
    return load("bench_attention_stats")


@pytest.fixture(scope="module")
def step_bench():
    return load("bench_gpu_grpo_step")


def test_attention_bench_cpu_check_measures_every_method_and_marks_goals(stats_bench, tmp_path):
    rc = stats_bench.main(["--cpu-check", "--lengths", "24", "--model-batches", "2", "--out", str(tmp_path)])
    assert rc == 0
    results = json.loads((tmp_path / "attention_stats_cpu_check.json").read_text())
    markdown = (tmp_path / "attention_stats_cpu_check.md").read_text()
    (row,) = results["layer"]
    assert row["T"] == 24 and isinstance(row["goal_met"], bool) and row["triton_full"]["x_baseline"] > 0
    assert "goal: full stats <= 1.5x SDPA" in markdown
    (batch,) = results["model_forward"]["batches"]
    assert batch["batch"] == 2 and batch["layers"] == [1, 2]  # default_layers(4)
    for key, _ in stats_bench.MODEL_METHODS:
        entry = batch[key]
        assert entry["device_ms"] > 0 and entry["x_sdpa"] > 0 and entry["x_paper"] > 0, key
    assert batch["paper"]["x_paper"] == pytest.approx(1.0) and batch["paper"]["micro_batch"] == 2
    assert set(batch["max_abs_diff_vs_torch"]) == {"triton", "eager", "paper"}
    for name, diffs in batch["max_abs_diff_vs_torch"].items():
        assert set(diffs) == {"dist_sum", "waad", "fai_sum"} and max(diffs.values()) < 1e-3, name
    assert isinstance(batch["goal_met"], bool) and "goal: Triton statistics <= 1.03x plain by device time" in markdown
    assert results["torch"] == torch.__version__ and results["triton"]


def test_eager_statistics_match_the_reference_with_per_row_response_starts(stats_bench):
    gen = torch.Generator().manual_seed(0)
    q, k = 2 * torch.randn(2, 6, 30, 8, generator=gen), torch.randn(2, 2, 30, 8, generator=gen)
    resp = torch.tensor([5, 17])
    spec = StatsSpec(4, 2, 9)
    ref = attention_statistics_torch(q, k, torch.zeros(2, dtype=torch.long), torch.full((2,), 30), resp, spec)
    lse, dist_sum, waad, fai_sum = stats_bench.eager_statistics(q, k, resp, spec, heads_per_chunk=4)
    for got, want in ((lse, ref.lse), (dist_sum, ref.dist_sum), (waad, ref.waad), (fai_sum, ref.fai_sum)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_paper_approach_statistics_match_the_captured_ones(stats_bench):
    from attnrl.attention.capture import capture_statistics

    shape = stats_bench.TOY_MODEL
    model = stats_bench.build_model(shape, torch.device("cpu"), torch.float32)
    case = stats_bench.ModelForwardCase(model, shape, 3, torch.device("cpu"))
    with torch.inference_mode():
        paper = stats_bench.paper_statistics(model, case.ids, case.mask, case.layers, case.resp_start,
                                             stats_bench.CREDIT_SPEC, micro_batch=2)  # rows 0-1, then 2
        with capture_statistics(model, case.layers, case.mask, case.resp_start, stats_bench.CREDIT_SPEC,
                                backend="torch") as cap:
            case.forward()
    assert model.config._attn_implementation != "eager" and len(model.model.layers) == shape.layers  # restored
    for layer in case.layers:
        for f in stats_bench.STAT_FIELDS:
            torch.testing.assert_close(paper[layer][f], getattr(cap.stats[layer], f), atol=1e-5, rtol=1e-5)


def test_layer_table_marks_the_goal_at_each_length(stats_bench):
    def row(T, x):
        entry = {"ms": x, "x_baseline": x, "extra_mib": None}
        return {"T": T, **{key: dict(entry) for key, _ in stats_bench.LAYER_METHODS}, "flash_lse": {"ms": 1.0},
                "goal_met": x <= stats_bench.LAYER_GOAL_X, "triton_full_extra_mib_per_1k_tokens": None}

    table = stats_bench.layer_table([row(2048, 2.0), row(8192, 1.2)])
    goal = next(line for line in table.splitlines() if "goal" in line)
    assert "NOT met (2.00x)" in goal and "| met (1.20x)" in goal


def test_grpo_step_bench_cpu_check_same_rollouts_and_backends_agree(step_bench, tmp_path):
    assert step_bench.main(["--cpu-check", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "grpo_step_cpu_check.json").read_text())
    assert results["rollouts_identical"] is True
    trl_run, attn = results["trainers"]["trl"], results["trainers"]["attnrl"]
    assert len(trl_run["step_s"]) == len(attn["step_s"]) == 1 and trl_run["fingerprints"] == attn["fingerprints"]
    assert results["ratio_step"] == pytest.approx(attn["mean_step_s"] / trl_run["mean_step_s"])
    backends = attn["backends"]
    assert backends["amplified_tokens"] > 0  # the comparison is not of all-ones weights
    assert backends["gamma_triton_vs_torch_max_abs_diff"] == 0.0
    assert backends["gamma_loss_forward_vs_triton_max_abs_diff"] == 0.0
    markdown = (tmp_path / "grpo_step_cpu_check.md").read_text()
    assert "goal: AttnGRPOTrainer step <= 1.03x GRPOTrainer" in markdown and "rollouts identical" in markdown


def test_grpo_step_bench_rejects_a_bad_configuration_before_building(step_bench):
    with pytest.raises(ValueError, match="multiple of generations"):
        step_bench.StepBenchConfig(batch=12, generations=8).validate()
    with pytest.raises(ValueError, match="below the character tokenizer"):
        step_bench.StepBenchConfig(vocab=50).validate()
    with pytest.raises(SystemExit):
        step_bench.main(["--cpu-check", "--batch", "3"])


def test_run_gpu_checks_plan_fits_a_ten_minute_call():
    script = BENCH / "run_gpu_checks.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    plan = subprocess.run(["bash", str(script)], env={"PLAN": "1", "PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True, check=True).stdout.split("\n")
    limits = {name: int(s) for name, s in (line.split() for line in plan if line and not line.startswith("total"))}
    assert list(limits) == ["wheels", "layer", "model", "grpo", "tests", "profile"]
    cap = int(re.search(r"cap (\d+)", plan[-2]).group(1))
    assert sum(limits.values()) <= cap <= 570  # + 5 s kill grace per step at most: inside 600 s


def test_fetch_wheels_pins_the_tested_versions_and_the_folder_is_ignored():
    pins = subprocess.run(["bash", str(BENCH / "fetch_gpu_wheels.sh"), "--list"], capture_output=True, text=True,
                          check=True).stdout.split()
    names = {pin.split("==")[0] for pin in pins}
    assert {"trl", "datasets", "math-verify"} <= names
    for pin in pins:
        name, want = pin.split("==")
        assert version(name) == want, f"{name}: fetch_gpu_wheels.sh pins {want}, the tests run {version(name)}"
    ignored = subprocess.run(["git", "check-ignore", "-q", ".whl/trl-1.16.0-py3-none-any.whl"], cwd=ROOT)
    assert ignored.returncode == 0, ".whl/ must be git-ignored (the wheels travel untracked, 64 MiB at most)"


def _run_organism_gpu_sweep(out: Path, **env) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(["bash", str(BENCH / "organism" / "run_gpu_sweep.sh"), str(out)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "CPU_CHECK": "1", **env})


@pytest.mark.slow
def test_organism_gpu_sweep_cpu_check_packs_finished_cells(tmp_path):
    """The prepared GPU sweep in its CPU form: two 2-step cells of the real checkpoint, packed into one archive."""
    import tarfile

    run = _run_organism_gpu_sweep(tmp_path / "out")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with tarfile.open(tmp_path / "out" / "organism_sampled_gpu.tar.gz") as archive:
        names = archive.getnames()
        cell = json.load(archive.extractfile("organism_sampled_gpu/cells/organism__coupled__s0.json"))
        budget = json.load(archive.extractfile("organism_sampled_gpu/budget.json"))
    assert "organism_sampled_gpu/cells/organism__uniform__s0.json" in names
    assert not any("/runs/" in n for n in names)  # no training runs travel back
    assert budget["eval_samples"] == 2 and budget["device"] == "cpu"
    assert 0 <= cell["final_sampled_accuracy"] <= 1 and len(cell["accuracy_curve"]) == 2
    assert (tmp_path / "out" / "gpu_sweep.log").read_text().count("packed 2 finished cells") == 1


@pytest.mark.slow
def test_organism_gpu_sweep_stops_at_its_deadline_and_still_packs(tmp_path):
    run = _run_organism_gpu_sweep(tmp_path / "out", TOTAL_S="48")  # about 5 s for the sweep: no cell finishes
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "sweep rc=124" in run.stdout and "packed 0 finished cells" in run.stdout
    assert (tmp_path / "out" / "organism_sampled_gpu.tar.gz").stat().st_size > 0
