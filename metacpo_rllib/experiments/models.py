"""Policies as MLflow models: a pyfunc flavour around the Ray-free ``load_policy``.

A logged model holds the policy folder (``Policy.save``: an RLModule checkpoint) as its
``policy`` artifact, this package's code (``code_paths``) and a signature: observations
float32 ``(-1, obs_dim)`` -> actions float32 ``(-1, act_dim)``, with an optional
``deterministic`` param (default True: the mean action). Loading it needs numpy, torch and
gymnasium, not Ray: ``mlflow.pyfunc.load_model(uri).predict(obs)`` or ``mlflow models serve``.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import mlflow.pyfunc
import numpy as np

import metacpo_rllib

#: The artifact key of the policy folder inside a logged model.
POLICY_ARTIFACT = "policy"
#: What a logged policy model needs at load time (pinned to the versions it was logged with).
REQUIREMENTS = ("mlflow", "numpy", "torch", "gymnasium")
#: The model's code (MLflow "models from code": no pickled Python object in the model).
MODEL_CODE = """\
import mlflow.models
from metacpo_rllib.experiments.models import PolicyModel

mlflow.models.set_model(PolicyModel())
"""


class PolicyModel(mlflow.pyfunc.PythonModel):
    """pyfunc model of a policy: ``predict(obs)`` -> ``load_policy(...).act(obs,
    deterministic=True)`` for a batch of observations (``params={"deterministic": False}``:
    sampled actions)."""

    def load_context(self, context: Any) -> None:
        from metacpo_rllib.policy import load_policy

        self.policy = load_policy(context.artifacts[POLICY_ARTIFACT])

    def predict(self, context: Any, model_input: np.ndarray,
                params: Optional[dict[str, Any]] = None) -> np.ndarray:
        obs = np.asarray(model_input, dtype=np.float32).reshape(-1, self.policy.obs_dim)
        deterministic = bool((params or {}).get("deterministic", True))
        return self.policy.act(obs, deterministic=deterministic).reshape(
            -1, self.policy.act_dim)


def signature(obs_dim: int, act_dim: int) -> Any:
    """observations float32 (-1, obs_dim) -> actions float32 (-1, act_dim), and the
    ``deterministic`` param."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, obs_dim))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, act_dim))]),
        params=ParamSchema([ParamSpec("deterministic", "boolean", True)]))


def pip_requirements() -> list[str]:
    """The packages a logged policy needs, pinned to the installed versions (local build
    tags such as ``+cpu`` dropped); Ray is not among them."""
    out = []
    for dist in REQUIREMENTS:
        try:
            out.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            out.append(dist)
    return out


def package_dir() -> str:
    """This package's source folder (``code_paths`` of a logged model)."""
    return str(Path(metacpo_rllib.__file__).resolve().parent)


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API (which ``log_model`` uses) pointed at ``uri`` for the block,
    without artifact progress bars (logging validates the model by loading it) unless
    ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` is set."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    quiet = key not in os.environ
    if quiet:
        os.environ[key] = "false"
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if quiet:
            os.environ.pop(key, None)


def log_policy_model(policy_dir: str, *, tracking_uri: str, run_id: str,
                     name: str = "policy", registered_model_name: Optional[str] = None,
                     tags: Optional[Mapping[str, str]] = None) -> Any:
    """Log the policy folder ``policy_dir`` (anything ``load_policy`` reads) as an MLflow
    model ``name`` of run ``run_id`` (in the run's experiment), with the pyfunc flavour,
    the signature and an input example; with ``registered_model_name`` also as a new
    version of that registered model (``tags`` go on the logged model and the version).
    Returns MLflow's ``ModelInfo`` (``model_uri``,
    ``registered_model_version``)."""
    from mlflow.models import Model
    from mlflow.tracking import MlflowClient

    from metacpo_rllib.policy import load_policy

    policy = load_policy(policy_dir)
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(run_id)
    # The logged model is created here, in the run's experiment: log_model alone would put
    # it in the fluent API's active (else default) experiment.
    model = client.create_logged_model(
        run.info.experiment_id, name=name, source_run_id=run_id,
        tags={"flavor": "pyfunc", **(tags or {})}, params=dict(run.data.params))
    example = np.zeros((1, policy.obs_dim), dtype=np.float32)
    with _tracking_uri(tracking_uri), tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "policy_model.py"
        code.write_text(MODEL_CODE)
        return Model.log(
            artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id,
            model_id=model.model_id, python_model=str(code),
            artifacts={POLICY_ARTIFACT: policy.source},  # the RLModule folder only
            code_paths=[package_dir()], signature=signature(policy.obs_dim, policy.act_dim),
            input_example=example, pip_requirements=pip_requirements(),
            registered_model_name=registered_model_name, await_registration_for=60,
            tags=dict(tags or {}), metadata={"source": policy.source})
