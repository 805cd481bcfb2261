"""Cluster configs parse, have their required keys and install the project as the Makefile does."""
from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
AWS = CLUSTER / "aws.yaml"
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob.yaml"
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"
SHARED = "/mnt/shared"

#: pip options that change where packages come from or how loud pip is, not what is installed.
PIP_NOISE = {"--quiet", "-q", "--disable-pip-version-check"}
PIP_OPTS_WITH_VALUE = {"--index-url", "-i", "--extra-index-url", "--find-links", "-f"}


# -- what the Makefile installs ------------------------------------------------------------------
def makefile_install_steps() -> tuple[list[list[str]], str]:
    """The pip steps of the Makefile's $(STAMP) recipe, in order, as argument lists without
    pip's noise options, and the code of its final import check."""
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^\$\(STAMP\):.*\n((?:\t.*\n)+)", text, re.M)
    assert recipe, "Makefile: no $(STAMP) recipe"
    steps, check = [], None
    for line in recipe.group(1).splitlines():
        line = line.strip().split("$(QUIET)")[0]
        if line.startswith("$(PIP)"):
            steps.append(normalize_pip(shlex.split(line[len("$(PIP)"):])))
        elif line.startswith("$(PY) -c"):
            check = shlex.split(line)[2]
    assert steps and check, "Makefile: pip steps or import check not found"
    return steps, check


def normalize_pip(args: list[str]) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in PIP_OPTS_WITH_VALUE:
            skip = True
        elif arg.split("=", 1)[0] in PIP_OPTS_WITH_VALUE:
            continue
        elif arg not in PIP_NOISE:
            out.append(arg)
    return out


def shell_commands(script: str) -> list[list[str]]:
    """Simple commands of a shell script: one per line and per ``;``, ``&&``, ``||``, ``|``
    (quotes respected)."""
    commands = []
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for token in lexer:
            if token in (";", "&&", "||", "|", "&"):
                commands.append(words)
                words = []
            else:
                words.append(token)
        commands.append(words)
    return [c for c in commands if c]


def config_install_steps(commands: list[str]) -> tuple[list[list[str]], list[str]]:
    """The `pip install` steps (normalised) and `python -c` checks of shell commands."""
    steps, checks = [], []
    for command in commands:
        for words in shell_commands(command):
            if "pip" in words and "install" in words[words.index("pip"):]:
                steps.append(normalize_pip(words[words.index("install") + 1:]))
            elif words[:2] in (["python", "-c"], ["python3", "-c"]):
                checks.append(words[2])
    return steps, checks


def assert_installs_like_makefile(commands: list[str], where: str) -> None:
    expected, check = makefile_install_steps()
    steps, checks = config_install_steps(commands)
    assert steps == expected, f"{where}: pip steps {steps} != the Makefile's {expected}"
    assert checks == [check], f"{where}: import check {checks} != the Makefile's {check!r}"


def test_makefile_install_steps_are_the_documented_ones():
    steps, check = makefile_install_steps()
    assert steps == [["--upgrade", "pip", "wheel", "setuptools"], ["torch==2.13.0"],
                     ["--no-deps", "safety-gymnasium==1.0.0"], ["-e", ".[dev]"]]
    assert "import torch, ray" in check


def pinned(name: str) -> str:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    for line in cfg["options"]["install_requires"].splitlines():
        match = re.match(rf"{re.escape(name)}(\[.*\])?==(\S+)", line.strip())
        if match:
            return match.group(2)
    raise AssertionError(f"setup.cfg pins no {name}")


# -- the cluster launcher ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def aws() -> dict:
    return yaml.safe_load(AWS.read_text())


def test_launcher_config_passes_rays_schema(aws):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(yaml.safe_load(AWS.read_text())))


def test_launcher_config_has_head_and_cpu_workers(aws):
    assert aws["provider"]["type"] == "aws" and aws["provider"]["region"]
    types = aws["available_node_types"]
    assert aws["head_node_type"] in types
    workers = {k: v for k, v in types.items() if k != aws["head_node_type"]}
    assert workers, "no worker node type"
    for name, spec in workers.items():
        assert 1 <= spec["min_workers"] <= spec["max_workers"] <= aws["max_workers"], name
        assert spec.get("resources", {}).get("GPU", 0) == 0, name
    assert f"rayproject/ray:{pinned('ray')}-py311-cpu" == aws["docker"]["image"]
    assert any(SHARED in opt for opt in aws["docker"]["run_options"])
    assert any("RAY_AUTH_MODE=token" in opt for opt in aws["docker"]["run_options"])
    head = " ".join(aws["head_start_ray_commands"])
    worker = " ".join(aws["worker_start_ray_commands"])
    assert "ray start --head" in head and "RAY_AUTH_MODE=token" in head
    assert "--address=$RAY_HEAD_IP:6379" in worker and "RAY_AUTH_MODE=token" in worker
    assert "mlflow server" in head and "--workers 1" in head
    assert aws["file_mounts"]["/home/ray/metacpo_rllib"] == "."
    assert ".venv" in aws["rsync_exclude"]


def test_launcher_installs_like_makefile(aws):
    assert_installs_like_makefile(aws["setup_commands"], "cluster/aws.yaml setup_commands")
    assert all("cd /home/ray/metacpo_rllib" in c for c in aws["setup_commands"])


# -- KubeRay -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kuberay() -> dict:
    docs = [d for d in yaml.safe_load_all(RAYCLUSTER.read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"PersistentVolumeClaim", "RayCluster"}
    return {**kinds, "RayJob": yaml.safe_load(RAYJOB.read_text())}


def _groups(spec: dict) -> list[tuple[str, dict]]:
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g)
                                                 for g in spec["workerGroupSpecs"]]


def check_cluster_spec(spec: dict, annotations: dict, where: str) -> None:
    assert spec["rayVersion"] == pinned("ray"), where
    assert spec["authOptions"]["mode"] == "token", where
    assert annotations.get("ray.io/overwrite-container-cmd") == "true", where
    workers = spec["workerGroupSpecs"]
    assert workers, f"{where}: no worker group"
    for group in workers:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], where
    for name, group in _groups(spec):
        pod = group["template"]["spec"]
        container = pod["containers"][0]
        assert container["image"] == f"rayproject/ray:{pinned('ray')}-py311-cpu", (where, name)
        assert "nvidia.com/gpu" not in container["resources"]["limits"], (where, name)
        script = container["args"][0]
        assert script.rstrip().endswith("exec $KUBERAY_GEN_RAY_START_CMD"), (where, name)
        assert_installs_like_makefile([script], f"{where} {name} container")
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert SHARED in mounts and "/home/ray/metacpo_rllib" in mounts, (where, name)
        volumes = {v["name"]: v for v in pod["volumes"]}
        claim = volumes[mounts[SHARED]]["persistentVolumeClaim"]["claimName"]
        assert claim == "metacpo-shared", (where, name)
        assert pod["initContainers"][0]["volumeMounts"][0]["mountPath"] == \
            "/home/ray/metacpo_rllib", (where, name)
    head_env = {e["name"]: e.get("value") for e in
                spec["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert head_env["MLFLOW_TRACKING_URI"].startswith("http"), where


def test_raycluster_manifest(kuberay):
    rc, pvc = kuberay["RayCluster"], kuberay["PersistentVolumeClaim"]
    assert rc["apiVersion"] == "ray.io/v1" and rc["metadata"]["name"]
    check_cluster_spec(rc["spec"], rc["metadata"].get("annotations", {}), "RayCluster")
    assert pvc["metadata"]["name"] == "metacpo-shared"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_rayjob_manifest(kuberay):
    job = kuberay["RayJob"]
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["entrypoint"].strip()
    check_cluster_spec(spec["rayClusterSpec"], job["metadata"].get("annotations", {}), "RayJob")
    assert spec["rayClusterSpec"] == kuberay["RayCluster"]["spec"], \
        "rayjob.yaml's rayClusterSpec drifted from raycluster.yaml's spec"
    yaml.safe_load(spec["runtimeEnvYAML"])
    argv = shlex.split(spec["entrypoint"].split("&&", 1)[1])
    assert argv[:2] == ["python", "cluster/job_entry.py"] and (ROOT / argv[1]).is_file()
    args = parse_metacpo(argv[2:])
    assert args.command == "train" and args.checkpoint_dir.startswith(SHARED)


# -- runtime_env and the README's commands -----------------------------------------------------
def test_runtime_env_is_valid():
    from ray.runtime_env import RuntimeEnv

    spec = yaml.safe_load(RUNTIME_ENV.read_text())
    RuntimeEnv(**spec)  # Ray's own validation of the fields
    assert {".git", ".venv"} <= set(spec["excludes"])
    assert "pip" not in spec and "conda" not in spec  # nodes are installed once, not per job


def parse_metacpo(argv: list[str]):
    from metacpo_rllib import cli

    parser = cli.build_parser()
    return parser.parse_args(argv)


def readme_submissions() -> list[list[str]]:
    """The entrypoints (after ``--``) of every ``ray job submit`` in the README's cluster section."""
    text = (CLUSTER.parent / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("#", 1)[0] if not line.lstrip().startswith("ray") else line
            if "ray job submit" in line:
                commands.append(line)
    return commands


def test_readme_commands_parse():
    commands = readme_submissions()
    assert len(commands) >= 3
    seen = set()
    for command in commands:
        words = shlex.split(command)
        options, entry = words[:words.index("--")], words[words.index("--") + 1:]
        assert "--working-dir" in options and options[options.index("--working-dir") + 1] == "."
        assert "cluster/runtime_env.yaml" in options
        if Path(entry[0]).name == "metacpo":  # on the PATH, or the venv's absolute path
            args = parse_metacpo(entry[1:])
        else:
            assert entry[1] == "cluster/job_entry.py"
            args = parse_metacpo(entry[2:])
        seen.add(args.command)
        if args.command == "sweep":
            assert (ROOT / args.file).is_file() and args.storage_path.startswith(SHARED)
        elif entry[0] == "metacpo":
            assert args.checkpoint_dir.startswith(SHARED)
    assert {"train", "sweep"} <= seen
