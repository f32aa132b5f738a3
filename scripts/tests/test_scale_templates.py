"""The scale-out templates: configs/slurm/extract.sbatch run as Slurm would run each array
task (its environment), and configs/k8s/extract-job.yaml parsed and its command run with
each completion index. Each shard's `tl extract --dry-run --json` must list a disjoint
part of the dataset, and together all of it."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TL = ROOT / "target" / "release" / "tl"
TINY = ROOT / "tests" / "fixtures" / "generated" / "backbones" / "tiny.json"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    if not TL.is_file() or not TINY.is_file():
        pytest.skip("build tl and the fixtures first (scripts/test.sh does)")
    data = tmp_path_factory.mktemp("data")
    png = next((ROOT / "tests" / "fixtures" / "generated" / "parity_images").glob("*.png"))
    for cls in ("a", "b", "c"):
        (data / cls).mkdir()
        for i in range(30):
            (data / cls / f"{i}.png").write_bytes(png.read_bytes())
    return data


def shard_files(stdout: str):
    report = json.loads(stdout)
    assert report["dry_run"] is True
    return report["shard"], report["files"], report["dataset_images"]


def check_partition(results, n):
    seen = []
    for shard, files, total in results:
        assert shard["count"] == n
        seen.extend(files)
    assert sorted(r[0]["index"] for r in results) == list(range(n))
    assert len(seen) == len(set(seen)) == results[0][2] == 90


def base_env(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k != "JOB_COMPLETION_INDEX"}
    env.update(TL=str(TL), TL_CACHE_DIR=str(tmp_path / "cache"),
               TL_EXTRACT_ARGS="--dry-run --json")
    return env


@pytest.mark.parametrize("first", [0, 1])
def test_sbatch_array_tasks_partition_the_dataset(dataset, tmp_path, first):
    script = ROOT / "configs" / "slurm" / "extract.sbatch"
    n = 4
    results = []
    for task in range(first, first + n):
        env = base_env(tmp_path)
        env.update(SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_MIN=str(first),
                   SLURM_ARRAY_TASK_MAX=str(first + n - 1), SLURM_ARRAY_TASK_COUNT=str(n),
                   SLURM_CPUS_PER_TASK="2")
        out = subprocess.run(["bash", str(script), str(dataset), str(TINY)], env=env,
                             capture_output=True, text=True, check=True)
        results.append(shard_files(out.stdout))
    check_partition(results, n)


def test_sbatch_refuses_an_array_with_a_step(dataset, tmp_path):
    env = base_env(tmp_path)
    # --array=0-6:2 → tasks 0, 2, 4, 6: COUNT 4, MIN 0; task 6 is not one of 4 shards.
    env.update(SLURM_ARRAY_TASK_ID="6", SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_COUNT="4")
    out = subprocess.run(["bash", str(ROOT / "configs" / "slurm" / "extract.sbatch"),
                          str(dataset), str(TINY)], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "--array=0-3" in out.stderr


def test_kubernetes_indexed_job_partitions_the_dataset(dataset, tmp_path):
    job = yaml.safe_load((ROOT / "configs" / "k8s" / "extract-job.yaml").read_text())
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    n = spec["completions"]
    container = spec["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[:2] == ["tl", "extract"]
    assert command[command.index("--shards") + 1] == str(n)
    env_names = {e["name"]: e for e in container["env"]}
    index_var = env_names["JOB_COMPLETION_INDEX"]
    assert "job-completion-index" in index_var["valueFrom"]["fieldRef"]["fieldPath"]
    assert env_names["TL_THREADS"]["valueFrom"]["resourceFieldRef"]["resource"] == "requests.cpu"
    assert "cpu" in container["resources"]["requests"]
    cache_mount = env_names["TL_CACHE_DIR"]["value"]
    assert any(m["mountPath"] == cache_mount for m in container["volumeMounts"])
    # Run the container's command as each pod would, against the test dataset.
    args = command[2:]
    args[args.index("/data/PetImages")] = str(dataset)
    args[args.index("mobilenet_v2")] = str(TINY)
    results = []
    for index in range(n):
        env = base_env(tmp_path)
        env["JOB_COMPLETION_INDEX"] = str(index)
        out = subprocess.run([str(TL), "extract", *args, "--dry-run", "--json"], env=env,
                             capture_output=True, text=True, check=True)
        results.append(shard_files(out.stdout))
    check_partition(results, n)
