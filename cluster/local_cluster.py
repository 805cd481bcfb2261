"""A head + worker Ray cluster on one machine, with an MLflow server; jobs; teardown by pgid."""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
RUNTIME_ENV = REPO / "cluster" / "runtime_env.yaml"
#: Short default root: Ray's Unix sockets live under it (path length limit ~107 chars).
DEFAULT_ROOT = Path(os.environ.get("METACPO_CLUSTER_ROOT", f"/tmp/metacpo-cluster-{os.getuid()}"))
#: A custom resource on every node (``node:<role>`` would be Ray-internal): tells the nodes
#: apart in ``ray status`` / the state API and lets tasks or actors be pinned to one of them.
ROLE_RESOURCE = "metacpo_{role}"
ENV_RUNNER_CLASS = "SingleAgentEnvRunner"
STATE_FILE = "state.json"


# -- small helpers ---------------------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that are free right now on 127.0.0.1."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def venv_tool(name: str) -> str:
    """Absolute path of a console script of the project's venv (else the one on PATH)."""
    path = VENV_BIN / name
    return str(path) if path.exists() else name


def python_exe() -> str:
    """The venv's python if there is one, else the running interpreter."""
    path = VENV_BIN / "python"
    return str(path) if path.exists() else sys.executable


class State:
    """The cluster's state file: addresses, ports, token path, and every process started
    (name, pid = pgid, log), written after each start so ``down`` always finds them."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / STATE_FILE
        self.data: dict[str, Any] = (json.loads(self.path.read_text())
                                     if self.path.exists() else {"procs": []})

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.data['dashboard_port']}"

    @property
    def mlflow_uri(self) -> Optional[str]:
        port = self.data.get("mlflow_port")
        return f"http://127.0.0.1:{port}" if port else None

    def token(self) -> str:
        return Path(self.data["token_path"]).read_text().strip()


def ray_env(state: State) -> dict[str, str]:
    """Environment of every Ray process and client: token auth on with this cluster's
    token file, the venv first on PATH (the job's ``python``/``metacpo`` resolve through the
    PATH of the shell that ran ``ray start``), no inherited RAY_ADDRESS."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update({
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": state["token_path"],
        "RAY_USAGE_STATS_ENABLED": "0",
        # A node drains for up to 30 s on SIGTERM (Ray 2.60); nothing here needs that.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "2",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(VENV_BIN.parent),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def http_json(state: State, path: str, timeout: float = 10.0) -> Any:
    """GET ``path`` of the dashboard with the cluster's bearer token; parsed JSON."""
    req = urllib.request.Request(state.dashboard + path,
                                 headers={"Authorization": f"Bearer {state.token()}"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def _spawn(state: State, name: str, cmd: Sequence[str], env: dict[str, str]) -> int:
    """Start ``cmd`` in its own session (process group id = pid), log to logs/<name>.log,
    and record it in the state file at once."""
    log_path = state.root / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(list(cmd), env=env, cwd=state.root, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    state.data["procs"].append({"name": name, "pid": proc.pid, "start": _start_time(proc.pid),
                                "log": str(log_path), "cmd": list(cmd)})
    state.save()
    return proc.pid


def _start_time(pid: int) -> Optional[str]:
    """The process's start time (clock ticks since boot): with the pid, its identity."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _wait(predicate, timeout: float, what: str, state: State, proc: Optional[str] = None,
          interval: float = 0.5) -> Any:
    """Poll ``predicate()`` until it returns a truthy value; fail with the log's tail if
    the process ``proc`` died or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    last_err: Any = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError, urllib.error.URLError) as err:
            last_err = err
        if proc is not None:
            entry = next(p for p in state["procs"] if p["name"] == proc)
            _reap(entry["pid"])
            if not _alive(entry["pid"]):
                raise RuntimeError(f"{proc} exited while waiting for {what}:\n"
                                   + tail(entry["log"]))
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f} s ({last_err})")
        time.sleep(interval)


def tail(path: str, chars: int = 3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# -- up ----------------------------------------------------------------------------------------
def up(root: Path = DEFAULT_ROOT, workers: int = 1, cpus_per_node: int = 1,
       object_store_mb: int = 200, mlflow: bool = True, timeout: float = 180.0) -> State:
    """Start the head, ``workers`` worker nodes and (optionally) an MLflow server.

    Every node is a ``ray start --block`` in its own process group with its own temp dir
    and ports, ``--num-cpus cpus_per_node`` (1 per node makes RLlib's 1-CPU EnvRunners land
    one per node) and a role resource ``metacpo_<role>: 1``. On any failure everything
    already started is stopped again.
    """
    root = Path(root)
    if (root / STATE_FILE).exists() and State(root)["procs"]:
        raise RuntimeError(f"{root} already holds a cluster (state.json); run `down` first")
    root.mkdir(parents=True, exist_ok=True)
    state = State(root)
    token_path = root / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    state.data.update({"token_path": str(token_path), "storage": str(root / "storage"),
                       "workers": workers, "cpus_per_node": cpus_per_node})
    (root / "storage").mkdir(exist_ok=True)
    state.save()
    try:
        _start_head(state, cpus_per_node, object_store_mb, timeout)
        for i in range(1, workers + 1):
            _start_worker(state, i, cpus_per_node, object_store_mb)
        _wait(lambda: len(alive_nodes(state)) == workers + 1, timeout,
              f"{workers + 1} alive nodes", state)
        if mlflow:
            start_mlflow(state, timeout)
    except BaseException:
        down(root)
        raise
    return state


def _node_cmd(state: State, role: str, cpus: int, object_store_mb: int) -> list[str]:
    node_dir = state.root / role
    node_dir.mkdir(exist_ok=True)
    agent, grpc, rte, metrics, nm, om = free_ports(6)
    # (no --node-ip-address: Ray 2.60 replaces 127.0.0.1 by the host's reachable IP anyway)
    return [venv_tool("ray"), "start", "--block", "--num-cpus", str(cpus), "--num-gpus", "0",
            "--object-store-memory", str(object_store_mb * 1024 * 1024),
            "--resources", json.dumps({ROLE_RESOURCE.format(role=role): 1}),
            "--temp-dir", str(node_dir),
            "--dashboard-agent-listen-port", str(agent),
            "--dashboard-agent-grpc-port", str(grpc),
            "--runtime-env-agent-port", str(rte), "--metrics-export-port", str(metrics),
            "--node-manager-port", str(nm), "--object-manager-port", str(om),
            "--disable-usage-stats", "--log-style", "record"]


def _start_head(state: State, cpus: int, object_store_mb: int, timeout: float) -> None:
    gcs, dashboard, client = free_ports(3)
    state.data.update({"gcs_port": gcs, "dashboard_port": dashboard,
                       "gcs_address": f"127.0.0.1:{gcs}"})
    cmd = _node_cmd(state, "head", cpus, object_store_mb) + [
        "--head", "--port", str(gcs), "--include-dashboard=true",
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
        "--ray-client-server-port", str(client)]
    _spawn(state, "ray-head", cmd, ray_env(state))
    _wait(lambda: http_json(state, "/api/version", timeout=3), timeout,
          "the head's dashboard", state, proc="ray-head")


def _start_worker(state: State, index: int, cpus: int, object_store_mb: int) -> None:
    role = f"worker{index}"
    cmd = _node_cmd(state, role, cpus, object_store_mb) + ["--address", state["gcs_address"]]
    _spawn(state, f"ray-{role}", cmd, ray_env(state))


def start_mlflow(state: State, timeout: float = 180.0) -> str:
    """A real ``mlflow server`` on 127.0.0.1 (1 worker, sqlite store and proxied artifact
    folder under the root), in its own process group."""
    mdir = state.root / "mlflow"
    mdir.mkdir(exist_ok=True)
    (port,) = free_ports(1)
    state.data["mlflow_port"] = port
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    cmd = [venv_tool("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{mdir / 'mlflow.db'}",
           "--artifacts-destination", str(mdir / "artifacts")]
    _spawn(state, "mlflow", cmd, env)

    def healthy() -> bool:
        with urllib.request.urlopen(f"{state.mlflow_uri}/health", timeout=3) as resp:
            return resp.status == 200

    _wait(healthy, timeout, "the MLflow server", state, proc="mlflow")
    return state.mlflow_uri


# -- queries -------------------------------------------------------------------------------------
def alive_nodes(state: State) -> list[dict[str, Any]]:
    """The cluster's alive nodes (state API): node_id, is_head_node, resources_total."""
    data = http_json(state, "/api/v0/nodes?limit=100&detail=1")
    nodes = data["data"]["result"]["result"]
    return [n for n in nodes if n.get("state") == "ALIVE"]


def node_roles(state: State) -> dict[str, str]:
    """node id -> role (head, worker1, ...) from each node's role resource."""
    roles = {}
    for node in alive_nodes(state):
        for key in node.get("resources_total", {}):
            if key.startswith("metacpo_"):
                roles[node["node_id"]] = key[len("metacpo_"):]
    return roles


def job_info(state: State, submission_id: str) -> dict[str, Any]:
    """The job's details (status, job_id, driver_node_id, ...) from the jobs API."""
    return http_json(state, f"/api/jobs/{urllib.parse.quote(submission_id)}")


def job_actors(state: State, job_id: str, class_name: str = ENV_RUNNER_CLASS
               ) -> list[dict[str, Any]]:
    """Actors of class ``class_name`` that the Ray job ``job_id`` created, dead or alive
    (actor_id, node_id, state, pid), from the state API."""
    query = urllib.parse.urlencode(
        {"filter_keys": ["job_id", "class_name"], "filter_predicates": ["=", "="],
         "filter_values": [job_id, class_name], "limit": 1000, "detail": 1}, doseq=True)
    data = http_json(state, f"/api/v0/actors?{query}")
    return [{k: a.get(k) for k in ("actor_id", "class_name", "node_id", "state", "pid")}
            for a in data["data"]["result"]["result"]]


# -- jobs -------------------------------------------------------------------------------------
def submit_command(state: State, entrypoint: Sequence[str], submission_id: str,
                   no_wait: bool = False) -> list[str]:
    """The ``ray job submit`` command line for ``entrypoint`` (working dir: the repo)."""
    cmd = [venv_tool("ray"), "job", "submit", "--address", state.dashboard,
           "--submission-id", submission_id, "--runtime-env", str(RUNTIME_ENV),
           "--working-dir", str(REPO)]
    if no_wait:
        cmd.append("--no-wait")
    return cmd + ["--", *entrypoint]


def submit(state: State, entrypoint: Sequence[str], submission_id: str,
           timeout: float = 600.0) -> subprocess.CompletedProcess:
    """Run ``ray job submit`` (waits for the job, streams its logs) as a client with the
    cluster's token; returns the completed client process (stdout = the job's logs)."""
    return subprocess.run(submit_command(state, entrypoint, submission_id), env=ray_env(state),
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def train_entrypoint(state: State, submission_id: str, iterations: int = 2,
                     env_runners: int = 2, family: str = "PointNav",
                     experiment: str = "cluster-demo") -> tuple[list[str], dict[str, str]]:
    """The job entrypoint of a short Meta-CPO training that logs to the cluster's MLflow
    server and checkpoints into the storage path; also returns where things go."""
    storage = Path(state["storage"])
    where = {"checkpoint": str(storage / submission_id / "checkpoint"),
             "report": str(storage / submission_id / "report.json"),
             "experiment": experiment}
    Path(where["checkpoint"]).parent.mkdir(parents=True, exist_ok=True)
    cmd = [python_exe(), "cluster/job_entry.py", "train", "--family", family,
           "--algo", "meta-cpo", "--iterations", str(iterations),
           "--num-env-runners", str(env_runners), "--seed", "0",
           "--checkpoint-dir", where["checkpoint"], "--json", where["report"],
           "--mlflow-uri", state.mlflow_uri, "--mlflow-experiment", experiment]
    return cmd, where


# -- down -------------------------------------------------------------------------------------
def _ancestors() -> set[int]:
    """This process and its ancestors (never to be stopped, whatever their command line)."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _ours(pid: int, markers: list[bytes], pgids: set[int]) -> bool:
    """A process of this cluster: in one of its process groups, or one of ours (same uid)
    whose command line names a node's temp dir (Ray workers carry their session dir)."""
    try:
        if os.getpgid(pid) in pgids:
            return True
        if os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return False
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        return any(m in cmdline for m in markers)
    except (OSError, ProcessLookupError):
        return False


def _markers(root: Path) -> list[bytes]:
    """Command-line markers of this cluster's processes: its node and MLflow dirs."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [f"{d}/".encode() for d in root.iterdir() if d.is_dir()
            and (d.name == "head" or d.name.startswith("worker") or d.name == "mlflow")]


def _group_is_ours(proc: dict[str, Any], markers: list[bytes]) -> bool:
    """Whether the recorded process group still is this cluster's (pids get reused): its
    leader alive with the recorded start time, or a member naming a node dir."""
    pgid = proc["pid"]
    if _alive(pgid) and _start_time(pgid) == proc.get("start"):
        return True
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid and _ours(int(entry.name), markers, set()):
                    return True
            except OSError:
                continue
    return False


def leftovers(root: Path, pgids: set[int]) -> list[int]:
    """PIDs of this cluster's processes still running (zombies excluded)."""
    markers = _markers(root)
    skip = _ancestors()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in skip:
            pid = int(entry.name)
            if _ours(pid, markers, pgids) and _alive(pid):
                pids.append(pid)
    return pids


def down(root: Path = DEFAULT_ROOT, grace: float = 20.0) -> list[int]:
    """Stop every process of the cluster by process group (SIGTERM, then SIGKILL after
    ``grace`` s), last started first; then any stray process of it by PID. Returns the
    PIDs still alive afterwards (empty on success). The state file is kept only if some
    survived."""
    root = Path(root)
    state = State(root)
    markers = _markers(root)
    procs = [p for p in reversed(state.get("procs", [])) if _group_is_ours(p, markers)]
    pgids = {p["pid"] for p in procs}
    for p in procs:  # workers and the MLflow server first, the head last (a node drains
        _signal_group(p["pid"], signal.SIGTERM)  # for up to 30 s on SIGTERM: all at once)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        for p in procs:
            _reap(p["pid"])
        if not any(_alive(p["pid"]) for p in procs):
            break
        time.sleep(0.2)
    for p in procs:
        _signal_group(p["pid"], signal.SIGKILL)
        _reap(p["pid"])
    # Whatever escaped the groups (e.g. a worker that called setsid): by PID.
    deadline = time.monotonic() + grace
    stray = leftovers(root, pgids)
    for pid in stray:
        _signal(pid, signal.SIGTERM)
    while stray and time.monotonic() < deadline:
        time.sleep(0.2)
        stray = leftovers(root, pgids)
    for pid in stray:
        _signal(pid, signal.SIGKILL)
    time.sleep(0.2)
    remaining = leftovers(root, pgids)
    if not remaining and state.path.exists():
        state.data["procs"] = []
        state.data["stopped"] = time.time()
        state.save()
    return remaining


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# -- demo -------------------------------------------------------------------------------------
def demo(root: Path = DEFAULT_ROOT, iterations: int = 2, env_runners: int = 2,
         keep: bool = False) -> int:
    """Up, submit the short training job, report (job status, EnvRunner nodes, MLflow run,
    checkpoint), down (unless ``keep``). Exit code 0 iff the job SUCCEEDED."""
    state = up(root)
    try:
        print(f"cluster up: dashboard {state.dashboard}, MLflow {state.mlflow_uri}, "
              f"storage {state['storage']}", flush=True)
        sid = f"metacpo-demo-{int(time.time())}"
        entry, where = train_entrypoint(state, sid, iterations, env_runners)
        print("$ " + shlex.join(submit_command(state, entry, sid)), flush=True)
        out = submit(state, entry, sid)
        print(out.stdout[-6000:], out.stderr[-3000:], sep="\n", flush=True)
        info = job_info(state, sid)
        roles = node_roles(state)
        runners = job_actors(state, info["job_id"]) if info.get("job_id") else []
        print(f"job {sid}: {info['status']}")
        for r in runners:
            print(f"  EnvRunner {r['actor_id'][:8]} on node {r['node_id'][:8]} "
                  f"({roles.get(r['node_id'], '?')})")
        print(f"  checkpoint: {where['checkpoint']} "
              f"({'present' if Path(where['checkpoint']).is_dir() else 'MISSING'})")
        print(f"  MLflow experiment {where['experiment']!r} at {state.mlflow_uri}")
        return 0 if info["status"] == "SUCCEEDED" else 1
    finally:
        if not keep:
            left = down(root)
            print("cluster down" + (f"; still alive: {left}" if left else ""))


# -- CLI --------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help=f"state, logs, temp dirs, storage (default {DEFAULT_ROOT})")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start head + workers + MLflow server (background)")
    p_up.add_argument("--workers", type=int, default=1)
    p_up.add_argument("--cpus-per-node", type=int, default=1)
    p_up.add_argument("--object-store-mb", type=int, default=200)
    p_up.add_argument("--no-mlflow", action="store_true")
    sub.add_parser("down", help="stop everything `up` started (by process group)")
    sub.add_parser("status", help="nodes and processes")
    p_env = sub.add_parser("env", help="print `export` lines for a client shell")
    p_env.add_argument("--shell", default="sh")
    p_demo = sub.add_parser("demo", help="up, a short Meta-CPO job on both nodes, down")
    p_demo.add_argument("--iterations", type=int, default=2)
    p_demo.add_argument("--num-env-runners", type=int, default=2)
    p_demo.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = parser.parse_args(argv)

    if args.command == "up":
        state = up(args.root, args.workers, args.cpus_per_node, args.object_store_mb,
                   mlflow=not args.no_mlflow)
        print(f"cluster up in {args.root}: dashboard {state.dashboard}, GCS "
              f"{state['gcs_address']}, MLflow {state.mlflow_uri}, storage {state['storage']}")
        print(f"client: eval \"$({python_exe()} cluster/local_cluster.py --root {args.root} env)\"")
        return 0
    if args.command == "down":
        left = down(args.root)
        print(f"stopped; still alive: {left}" if left else "stopped")
        return 1 if left else 0
    if args.command == "status":
        state = State(args.root)
        for p in state.get("procs", []):
            print(f"{p['name']:<12} pgid {p['pid']:<8} {'up' if _alive(p['pid']) else 'gone'}")
        if state.get("procs"):
            for node_id, role in node_roles(state).items():
                print(f"node {node_id} {role}")
        return 0
    if args.command == "env":
        state = State(args.root)
        env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": state["token_path"],
               "RAY_API_SERVER_ADDRESS": state.dashboard,
               "MLFLOW_TRACKING_URI": state.mlflow_uri or "",
               "METACPO_STORAGE": state["storage"]}
        print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items()))
        return 0
    return demo(args.root, args.iterations, args.num_env_runners, args.keep)


if __name__ == "__main__":
    sys.exit(main())
