"""ray_configs/ without a cluster: job specs parse with their recipe's parser (the one behind the example scripts
and `attnrl train`), the cluster launcher config passes Ray's own autoscaler validation, the runtime environments
pass Ray's RuntimeEnv validation, and the KubeRay RayJob runs an entrypoint that exists with a config that parses."""

import copy
import shlex
from pathlib import Path

import pytest
import yaml

from attnrl import cli
from attnrl.distributed.launcher import check_devices
from attnrl.recipes import recipe_module
from attnrl.recipes.config import parse_config

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray  # a local Ray cluster or Ray's own validators

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "ray_configs"


def load(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


@pytest.fixture
def gpu_node(monkeypatch):
    """bf16 configs build on this CPU machine as they would on a GPU node."""
    monkeypatch.setattr("transformers.training_args.is_torch_bf16_gpu_available", lambda: True)


def parse_example_args(argv: list[str], recipe: str = "grpo"):
    """What the recipe's example script and `attnrl train --recipe RECIPE` parse from ``argv``."""
    return parse_config(recipe_module(recipe).make_parser(), argv, recipe=recipe, exit_on_error=False)


def check_job(argv: list[str], recipe: str = "grpo"):
    job, args, ray_args = parse_example_args(argv, recipe)
    job.validate()
    ray_args.validate()
    check_devices(args, ray_args)
    assert ray_args.scaling_config().num_workers == ray_args.workers
    assert ray_args.run_config(Path(args.output_dir).resolve()).storage_path
    return job, args, ray_args


def test_local_job_spec_runs_two_cpu_workers():
    job, args, ray_args = check_job(["--config", str(CONFIGS / "local.yaml")])
    assert ray_args.use_ray and ray_args.workers == 2 and not ray_args.use_gpu
    assert args.use_cpu and args.save_strategy == "steps" and args.max_steps <= 10


def test_local_ppo_job_spec_runs_two_cpu_workers():
    path = str(CONFIGS / "local_ppo.yaml")
    assert cli.recipe_of([path]) == "ppo"  # `attnrl train ray_configs/local_ppo.yaml` picks the PPO recipe
    job, args, ray_args = check_job(["--config", path], recipe="ppo")
    assert type(args).__name__ == "AttnPPOConfig" and ray_args.workers == 2 and not ray_args.use_gpu
    assert args.use_cpu and args.save_strategy == "steps" and args.max_steps <= 10
    args.validate_ppo()


def test_gpu_job_spec_runs_gpu_workers_with_shared_storage(gpu_node):
    job, args, ray_args = check_job(["--config", str(CONFIGS / "gpu.yaml")])
    assert ray_args.use_gpu and ray_args.workers > 1 and ray_args.scaling_config().use_gpu
    assert not args.use_cpu and args.bf16 and args.save_strategy == "steps"
    assert ray_args.max_failures > 0 and ray_args.storage_path


def test_example_without_ray_flags_runs_locally_and_flags_switch_to_ray():
    config = str(ROOT / "examples" / "configs" / "grpo_arithmetic_coupled.yaml")
    assert not parse_example_args(["--config", config])[2].use_ray
    ray_args = parse_example_args(["--config", config, "--ray_address", "auto"])[2]
    assert ray_args.use_ray and ray_args.workers == 1


def test_gpu_run_configured_for_cpu_is_refused():
    _, args, ray_args = parse_example_args(["--config", str(CONFIGS / "local.yaml"), "--use_gpu", "true"])
    with pytest.raises(ValueError, match="--use_cpu false"):
        check_devices(args, ray_args)


def test_cluster_launcher_config_passes_ray_autoscaler_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load("cluster.yaml")
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands"):
        assert key in config
    assert config["head_node_type"] in config["available_node_types"]
    validate_config(prepare_config(copy.deepcopy(config)))
    assert any("/home/ubuntu/attnrl" in command for command in config["setup_commands"])
    assert config["file_mounts"]["/home/ubuntu/attnrl"] == "."

    config["available_node_types"]["head"]["typo"] = 1
    with pytest.raises(Exception, match="typo"):
        validate_config(prepare_config(config))


def test_runtime_env_passes_ray_validation_and_installs_the_uploaded_project():
    from ray.runtime_env import RuntimeEnv

    env = load("runtime_env.yaml")
    RuntimeEnv(**env)
    assert env["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"
    assert "-e ${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}[ray]" in env["pip"]["packages"]


def test_kuberay_rayjob_runs_the_example_with_a_config_that_parses(gpu_node):
    from ray.runtime_env import RuntimeEnv

    manifest = load("rayjob.yaml")
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    python, script, *argv = shlex.split(spec["entrypoint"])
    assert python == "python" and (ROOT / script).is_file()
    _, _, ray_args = check_job(argv)

    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    RuntimeEnv(**runtime_env)
    assert {k: v for k, v in runtime_env.items() if k != "working_dir"} == load("runtime_env.yaml")

    cluster = spec["rayClusterSpec"]
    version = cluster["rayVersion"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    workers = cluster["workerGroupSpecs"]
    assert head["image"].startswith(f"rayproject/ray:{version}")
    gpus = sum(g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
               for g in workers)
    assert gpus >= ray_args.workers * ray_args.gpus_per_worker
    mounts = [m["mountPath"] for g in workers for m in g["template"]["spec"]["containers"][0]["volumeMounts"]]
    assert all(ray_args.storage_path.startswith(m) for m in mounts)
