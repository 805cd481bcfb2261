"""Ray-job entrypoint: join the job's cluster, run a `metacpo` subcommand, log EnvRunner nodes."""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

ENV_RUNNER_CLASS = "SingleAgentEnvRunner"


def connect() -> None:
    """Join the cluster the job runs in. ``metacpo``'s embedded ``local_ray`` then sees an
    initialised Ray and uses it instead of starting a private one."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS", "auto"))


def env_runner_placement() -> list[dict[str, str]]:
    """EnvRunner actors this job created (dead or alive) and the node each ran on, with the
    node's metacpo_<role> resource when it has one."""
    import ray
    from ray.util.state import list_actors

    job_id = ray.get_runtime_context().get_job_id()
    actors = list_actors(filters=[("job_id", "=", job_id), ("class_name", "=", ENV_RUNNER_CLASS)],
                         limit=1000, detail=True, raise_on_missing_output=False)
    roles = {}
    for node in ray.nodes():
        names = [k[len("metacpo_"):] for k in node.get("Resources", {}) if k.startswith("metacpo_")]
        roles[node["NodeID"]] = names[0] if names else ("head" if node.get("IsHead") else "")
    return [{"actor_id": a.actor_id, "node_id": a.node_id, "role": roles.get(a.node_id, ""),
             "state": a.state} for a in actors]


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    connect()
    import ray

    print(f"metacpo job on cluster {ray.get_runtime_context().gcs_address}: "
          f"{len(ray.nodes())} nodes, resources {ray.cluster_resources()}", flush=True)
    from metacpo_rllib import cli

    code = cli.main(argv)
    try:
        placement = env_runner_placement()
    except Exception as err:  # noqa: BLE001 (reporting only)
        print(f"EnvRunner placement unavailable: {err}", flush=True)
        placement = []
    for p in placement:
        print(f"EnvRunner actor {p['actor_id']} ran on node {p['node_id']} "
              f"({p['role'] or '?'}, {p['state']})", flush=True)
    if placement:
        nodes = sorted({p["node_id"] for p in placement})
        print(f"EnvRunners ran on {len(nodes)} node(s): {', '.join(nodes)}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
