"""A trained policy outside Ray: ``load_policy(path).act(obs)``.

Reads the policy's weights from RLlib's checkpoint layout with pickle and torch only (no
Ray import): an algorithm checkpoint (``metacpo train --checkpoint-dir``,
``algo.save_to_path``) holds θ under ``learner_group/learner/rl_module/default_policy``;
that folder, or an RLModule checkpoint saved on its own (``module.save_to_path``), works
as well. ``Policy.save`` writes that RLModule layout (``metacpo adapt --save``,
``algo.as_policy``), so a saved policy loads here and with ``RLModule.from_checkpoint``.
"""
from __future__ import annotations

import dataclasses
import io
import json
import pickle
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

#: Where the policy's RLModule state lies, relative to the path given to ``load_policy``.
MODULE_DIRS = (".", "default_policy", "rl_module/default_policy",
               "learner_group/learner/rl_module/default_policy")
_PREFIX = "pi."  # GaussianMLPModule keeps its GaussianMLP as ``self.pi``
#: File names of RLlib's RLModule checkpoint layout (``Checkpointable``).
METADATA_FILE = "metadata.json"
CTOR_FILE = "class_and_ctor_args.pkl"
STATE_NAME = "module_state"


class _Placeholder:
    """Stands in for Ray / RLlib classes named in a checkpoint's pickles (never used)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state


class _RayFreeUnpickler(pickle.Unpickler):
    """Unpickles a checkpoint's constructor arguments without importing Ray: classes of
    ``ray`` and of this package's RLlib layer become placeholders."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "ray" or module.startswith(("ray.", "metacpo_rllib.rllib")):
            return type(name, (_Placeholder,), {"__module__": module})
        return super().find_class(module, name)


def _module_dir(path: Path) -> Path:
    for rel in MODULE_DIRS:
        candidate = (path / rel).resolve()
        if (candidate / METADATA_FILE).is_file() and any(candidate.glob("module_state.*")):
            return candidate
    raise FileNotFoundError(f"path: no policy weights under {path} (looked for an RLModule "
                            f"checkpoint in {', '.join(MODULE_DIRS)})")


def _read_state(module_dir: Path) -> dict[str, np.ndarray]:
    meta = json.loads((module_dir / METADATA_FILE).read_text())
    state_file = module_dir / f"{meta.get('state_file', 'module_state')}.pkl"
    if not state_file.is_file():
        raise ValueError(f"path: {module_dir} holds its state in a format other than "
                         "pickle (e.g. msgpack); load it with RLModule.from_checkpoint")
    with open(state_file, "rb") as f:
        state = pickle.load(f)
    return {k: np.asarray(v) for k, v in state.items()}


def _read_spaces(ctor: bytes, source: Path) -> tuple[Any, Any]:
    """(observation_space, action_space) from a module's pickled constructor arguments,
    or (None, None) if they cannot be read without Ray."""
    try:
        kwargs = _RayFreeUnpickler(io.BytesIO(ctor)).load()["ctor_args_and_kwargs"][1]
        return kwargs.get("observation_space"), kwargs.get("action_space")
    except Exception as err:  # noqa: BLE001 (spaces are optional: no clipping then)
        warnings.warn(f"could not read the spaces of {source} ({err}); actions are "
                      "not clipped to the action space", stacklevel=3)
        return None, None


@dataclasses.dataclass(frozen=True)
class ModuleHeader:
    """What an RLModule checkpoint holds besides the weights: its metadata and its pickled
    class and constructor arguments (kept as bytes, written back unchanged by
    ``Policy.save``, so the folder stays loadable with ``RLModule.from_checkpoint``)."""

    metadata: dict[str, Any]
    ctor: Optional[bytes] = None

    @classmethod
    def read(cls, module_dir: Path) -> "ModuleHeader":
        ctor_file = module_dir / CTOR_FILE
        return cls(json.loads((module_dir / METADATA_FILE).read_text()),
                   ctor_file.read_bytes() if ctor_file.is_file() else None)


class Policy:
    """A diagonal-Gaussian MLP policy (``GaussianMLP``) in plain torch.

    ``act(obs)`` samples ``mean + exp(log_std) * noise`` (``deterministic=True``: the
    mean) and clips it to the action space's bounds, as RLlib's EnvRunners do before
    ``env.step``. Observations are the env's raw float32 observations: a policy trained
    with ``normalize_observations`` carries its filter's statistics in its weights
    (``pi.obs_filter.*``) and normalises inside ``net``, as it did in training.
    """

    def __init__(self, net: Any, observation_space: Any = None, action_space: Any = None,
                 source: str = "", seed: Optional[int] = None,
                 header: Optional[ModuleHeader] = None) -> None:
        self.net = net.eval()
        self.header = header
        self.observation_space = observation_space
        self.action_space = action_space
        self.source = source
        self.obs_dim = int(net.body[0].in_features if len(net.body) else
                           net.mean.in_features)
        self.act_dim = int(net.mean.out_features)
        low = getattr(action_space, "low", None)
        high = getattr(action_space, "high", None)
        self._low = None if low is None else np.asarray(low, np.float32).reshape(-1)
        self._high = None if high is None else np.asarray(high, np.float32).reshape(-1)
        self.rng = np.random.default_rng(seed)

    def distribution(self, obs: Any) -> tuple[np.ndarray, np.ndarray]:
        """(mean, log_std) for a batch of observations ``[B, *obs_shape]``."""
        import torch

        batch = np.asarray(obs, dtype=np.float32).reshape(-1, self.obs_dim)
        with torch.no_grad():
            mean, log_std = self.net(torch.from_numpy(batch))
        return mean.detach().numpy(), log_std.detach().numpy()

    def act(self, obs: Any, deterministic: bool = False) -> np.ndarray:
        """An action for one observation (shape ``[act_dim]``), or a batch of actions for
        a batch of observations (``[B, act_dim]``), as float32."""
        obs = np.asarray(obs, dtype=np.float32)
        single = obs.size == self.obs_dim
        mean, log_std = self.distribution(obs)
        action = mean
        if not deterministic:
            action = mean + np.exp(log_std) * self.rng.standard_normal(mean.shape)
        if self._low is not None and self._high is not None:
            action = np.clip(action, self._low, self._high)
        action = action.astype(np.float32)
        return action[0] if single else action

    def weights(self) -> dict[str, np.ndarray]:
        """The weights as an RLModule state dict (``pi.<name>`` -> array)."""
        return {_PREFIX + k: v.detach().cpu().numpy().copy()
                for k, v in self.net.state_dict().items()}

    def save(self, path: Union[str, Path]) -> Path:
        """Write the policy as an RLModule checkpoint folder (created if missing; its files
        are overwritten), which :func:`load_policy` and ``RLModule.from_checkpoint`` load.
        Without a header (a Policy built by hand) only :func:`load_policy` can load it, and
        without the action space's bounds. Returns the folder, absolute."""
        folder = Path(path).expanduser().resolve()
        folder.mkdir(parents=True, exist_ok=True)
        header = self.header or ModuleHeader({})
        metadata = {k: v for k, v in header.metadata.items()
                    if k != "class_and_ctor_args_file"}
        metadata["state_file"] = STATE_NAME
        if header.ctor is not None:
            (folder / CTOR_FILE).write_bytes(header.ctor)
            metadata["class_and_ctor_args_file"] = CTOR_FILE
        with open(folder / f"{STATE_NAME}.pkl", "wb") as f:
            pickle.dump(self.weights(), f)
        (folder / METADATA_FILE).write_text(json.dumps(metadata))
        return folder

    def __repr__(self) -> str:
        return (f"Policy(obs_dim={self.obs_dim}, act_dim={self.act_dim}, "
                f"source={self.source!r})")


def policy_from_weights(weights: Mapping[str, Any], observation_space: Any = None,
                        action_space: Any = None, *, header: Optional[ModuleHeader] = None,
                        source: str = "", seed: Optional[int] = None) -> Policy:
    """A :class:`Policy` from an RLModule state dict (``pi.<name>`` -> array), e.g. the
    Learner's θ or a task's adapted weights."""
    import torch

    from metacpo_rllib.optim.policy import GaussianMLP

    state = {k[len(_PREFIX):]: np.asarray(v) for k, v in weights.items()
             if k.startswith(_PREFIX)}
    if "mean.weight" not in state or "log_std" not in state:
        raise ValueError(f"weights: not a Gaussian MLP policy (weights: {sorted(state)})")
    layers = sorted(int(k.split(".")[1]) for k in state
                    if k.startswith("body.") and k.endswith(".weight"))
    hidden = [int(state[f"body.{i}.weight"].shape[0]) for i in layers]
    first = state[f"body.{layers[0]}.weight"] if layers else state["mean.weight"]
    net = GaussianMLP(int(first.shape[1]), int(state["mean.weight"].shape[0]), hidden=hidden,
                      obs_filter=any(k.startswith("obs_filter.") for k in state))
    net.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    return Policy(net, observation_space, action_space, source=source, seed=seed,
                  header=header)


def load_policy(path: Union[str, Path], seed: Optional[int] = None) -> Policy:
    """The policy of an algorithm or RLModule checkpoint at ``path`` (or a folder
    ``Policy.save`` wrote) as a :class:`Policy` (no Ray needed). ``seed`` seeds the action
    noise of ``act``."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"path: {root} is not a directory")
    module_dir = _module_dir(root)
    header = ModuleHeader.read(module_dir)
    obs_space, act_space = (None, None)
    if header.ctor is not None:
        obs_space, act_space = _read_spaces(header.ctor, module_dir)
    else:
        warnings.warn(f"{module_dir} has no {CTOR_FILE}; actions are not clipped to the "
                      "action space", stacklevel=2)
    try:
        return policy_from_weights(_read_state(module_dir), obs_space, act_space,
                                   header=header, source=str(module_dir), seed=seed)
    except ValueError as err:
        raise ValueError(f"path: {module_dir}: {err}") from None
