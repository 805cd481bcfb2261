"""Episode videos on a headless machine: MuJoCo's offscreen renderer and video files.

MuJoCo picks its OpenGL backend from ``MUJOCO_GL`` when it is first imported, so
:func:`select_gl_backend` runs before any env is built: it keeps a ``MUJOCO_GL`` set by the
user, else tries EGL, then OSMesa (each in a short child process, as a failed backend can
abort the process that tries it) and sets ``MUJOCO_GL`` / ``PYOPENGL_PLATFORM``. Videos are
mp4 (H.264 through imageio's ffmpeg plugin, ``imageio-ffmpeg``), or gif when no ffmpeg
is available.

``python -m metacpo_rllib.render`` prints the backend that works (exit 1: none), as
``make install`` uses it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import gymnasium as gym
import numpy as np

#: Backends tried in turn when ``MUJOCO_GL`` is not set.
GL_BACKENDS = ("egl", "osmesa")

_PROBE = ("import mujoco; ctx = mujoco.GLContext(16, 16); ctx.make_current(); "
          "m = mujoco.MjModel.from_xml_string('<mujoco/>'); "
          "mujoco.MjrContext(m, mujoco.mjtFontScale.mjFONTSCALE_100); ctx.free()")


class RenderError(RuntimeError):
    """No offscreen OpenGL backend works here (or one cannot be chosen any more)."""


def probe_backend(backend: str, timeout: float = 60.0) -> Optional[str]:
    """None if MuJoCo can make an offscreen context with ``backend``, else why not."""
    env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f}s"
    if proc.returncode == 0:
        return None
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {proc.returncode}"


def select_gl_backend() -> str:
    """The OpenGL backend MuJoCo renders with in this process: ``$MUJOCO_GL`` if set, else
    the first of :data:`GL_BACKENDS` that works (set in the environment). Raises
    :class:`RenderError` saying what was tried when none works, or when MuJoCo was
    imported already without a backend chosen."""
    chosen = os.environ.get("MUJOCO_GL")
    if chosen:
        return chosen
    if "mujoco" in sys.modules:
        raise RenderError("MuJoCo was imported before an OpenGL backend was chosen; set "
                          "MUJOCO_GL=egl (or osmesa) in the environment")
    failures = []
    for backend in GL_BACKENDS:
        why = probe_backend(backend)
        if why is None:
            os.environ["MUJOCO_GL"] = backend
            os.environ.setdefault("PYOPENGL_PLATFORM", backend)
            return backend
        failures.append(f"{backend}: {why}")
    raise RenderError("no offscreen OpenGL backend works (" + "; ".join(failures) + "); on "
                      "Debian/Ubuntu install libegl1 or libosmesa6 (make install does so as "
                      "root)")


# -- video files --------------------------------------------------------------------------------
def has_ffmpeg() -> bool:
    """Whether imageio can write mp4 (``imageio-ffmpeg`` and its ffmpeg binary)."""
    try:
        import imageio_ffmpeg

        return bool(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError):
        return False


def write_video(frames: Sequence[np.ndarray], path: Path, fps: int = 30) -> Path:
    """Write RGB ``frames`` (uint8 ``[H, W, 3]``) to ``path`` with the suffix ``.mp4``, or
    ``.gif`` without ffmpeg; returns the file written."""
    import imageio.v2 as imageio

    if not frames:
        raise ValueError("frames: no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if has_ffmpeg():
        out = path.with_suffix(".mp4")
        with imageio.get_writer(out, fps=fps, codec="libx264", quality=7,
                                pixelformat="yuv420p", macro_block_size=16,
                                ffmpeg_log_level="error") as writer:
            for frame in frames:
                writer.append_data(np.asarray(frame, dtype=np.uint8))
        return out
    out = path.with_suffix(".gif")
    imageio.mimsave(out, [np.asarray(f, dtype=np.uint8) for f in frames],
                    duration=1000.0 / fps, loop=0)
    return out


def read_frames(path: Path) -> list[np.ndarray]:
    """The frames of a video written by :func:`write_video` (for checks)."""
    import imageio.v2 as imageio

    reader = imageio.get_reader(path)
    try:
        return [np.asarray(frame) for frame in reader]
    finally:
        reader.close()


class EpisodeRecorder(gym.Wrapper):
    """Renders every step of the first ``episodes`` episodes (counted by ``reset``) and
    hands each finished episode's frames to ``on_video(episode_index, frames)``; later
    episodes are not rendered. The env must render ``rgb_array`` frames."""

    def __init__(self, env: gym.Env, episodes: int,
                 on_video: Callable[[int, list[np.ndarray]], None]) -> None:
        super().__init__(env)
        self.episodes = int(episodes)
        self.on_video = on_video
        self._index = -1
        self._frames: list[np.ndarray] = []

    @property
    def recording(self) -> bool:
        return 0 <= self._index < self.episodes

    def reset(self, **kwargs: Any) -> Any:
        self._flush()
        self._index += 1
        out = self.env.reset(**kwargs)
        if self.recording:
            self._frames = [self.env.render()]
        return out

    def step(self, action: Any) -> Any:
        out = self.env.step(action)
        if self.recording:
            self._frames.append(self.env.render())
            if out[2] or out[3]:  # terminated or truncated
                self._flush()
        return out

    def _flush(self) -> None:
        if self._frames:
            frames, self._frames = self._frames, []
            self.on_video(self._index, frames)


def main() -> int:
    """Print the OpenGL backend MuJoCo can render with here (exit 1 if none; a
    ``MUJOCO_GL`` set in the environment is checked too)."""
    try:
        backend = select_gl_backend()
        why = probe_backend(backend)
        if why is not None:
            raise RenderError(f"MUJOCO_GL={backend} does not work here ({why})")
    except RenderError as err:
        print(f"metacpo render: {err}", file=sys.stderr)
        return 1
    print(backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
