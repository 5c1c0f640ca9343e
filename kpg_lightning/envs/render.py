"""Frames of one episode and the video made of them: VMAS renders headless (its own ``rgb_array`` mode), MaMuJoCo
through MuJoCo's offscreen GL (``MUJOCO_GL=egl``, or ``osmesa``), SMAX through JaxMARL's matplotlib drawing; SMAC's
game renders in its own window only.

:class:`EpisodeFrames` is a TorchRL transform appended to an evaluation env: it records the first env's first episode
(at reset and after every step, until that env is done).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
from tensordict import TensorDictBase
from torchrl.envs import EnvBase, Transform

from kpg_lightning.envs.info import ACTION, DONE
from kpg_lightning.files import replace_atomically

__all__ = [
    "RENDER_UNSUPPORTED",
    "VIDEO_SUFFIXES",
    "EpisodeFrames",
    "prepare_render",
    "render_overrides",
    "save_video",
    "video_problem",
]

RENDER_UNSUPPORTED = {
    "smac": "StarCraft II draws in its own game window only; SMAC cannot render headless (render SMAX instead)",
}
"""Families that cannot render here, and why."""

VIDEO_SUFFIXES = (".gif", ".mp4")


def prepare_render(family: str) -> None:
    """Before the simulator is imported: MuJoCo's offscreen GL backend (EGL unless ``MUJOCO_GL`` says otherwise)."""
    if family == "mamujoco":
        os.environ.setdefault("MUJOCO_GL", "egl")


def render_overrides(family: str) -> dict[str, Any]:
    """Factory arguments of a rendering env of ``family``."""
    return {"render_mode": "rgb_array"} if family == "mamujoco" else {}


class EpisodeFrames(Transform):
    """Records the first env's first episode as RGB frames ``[H, W, 3]`` (uint8) in :attr:`frames` (SMAX: the
    states, drawn by :meth:`finish`)."""

    def __init__(self, family: str):
        super().__init__()
        self.family = family
        self.frames: list[np.ndarray] = []
        self._states: list[tuple[Any, Any, dict[str, Any]]] = []  # SMAX: (key, state before, actions) per step
        self._last: Any = None
        self.recording: bool | None = None  # None: not started; False: the episode has ended

    def _sim(self) -> Any:
        return self.parent.base_env

    def _grab(self, action: Any = None) -> None:
        base = self._sim()
        if self.family == "vmas":
            self.frames.append(np.asarray(base._env.render(mode="rgb_array", env_index=0)).copy())
        elif self.family == "mamujoco":
            self.frames.append(np.asarray(base._env.render()).copy())
        elif self.family == "smax":
            import jax

            state = jax.tree.map(lambda x: x[0], base._state)
            if action is not None:
                first = action.reshape(-1, action.shape[-1])[0].tolist()
                actions = dict(zip(base._env.agents, first, strict=True))
                self._states.append((jax.random.PRNGKey(len(self._states)), self._last, actions))
            self._last = state
        else:
            raise ValueError(f"render: {self.family} cannot render")

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        if self.recording is None:
            self.recording = True
            self._grab()
        return tensordict_reset

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        if self.recording:
            action = tensordict.get(ACTION) if self.family == "smax" else None
            self._grab(action.cpu().reshape(-1, *action.shape[-1:]) if action is not None else None)
            if bool(next_tensordict.get(DONE).reshape(-1)[0]):
                self.recording = False
        return next_tensordict

    def finish(self, env: EnvBase, max_frames: int = 400) -> list[np.ndarray]:
        """The frames (SMAX: its recorded states drawn by JaxMARL, at most ``max_frames``)."""
        if self.family == "smax" and self._states:
            self.frames = _draw_smax(env.base_env._env, self._states, max_frames)
        return self.frames


def _draw_smax(smax: Any, states: list[tuple[Any, Any, dict[str, Any]]], max_frames: int) -> list[np.ndarray]:
    """JaxMARL's SMAX drawing (``init_render``) of the expanded world steps, on an offscreen matplotlib figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    expanded = smax.expand_state_seq(states)
    per_step = smax.world_steps_per_env_step
    stride = max(1, -(-len(expanded) // max_frames))
    fig = Figure(figsize=(5, 5), dpi=80)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    frames = []
    for i in range(0, len(expanded), stride):
        smax.init_render(ax, expanded[i], i % per_step, i // per_step)
        canvas.draw()
        frames.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    return frames


def save_video(frames: list[np.ndarray], path: Path, fps: int = 20) -> None:
    """``frames`` as a GIF (Pillow) or MP4 (imageio with ffmpeg), written atomically."""

    def write(tmp: Path) -> None:
        if path.suffix == ".mp4":
            import imageio.v2 as imageio

            imageio.mimwrite(tmp, frames, fps=fps)
        else:
            from PIL import Image

            images = [Image.fromarray(frame) for frame in frames]
            images[0].save(tmp, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)

    replace_atomically(path, write)


def video_problem(path: Path) -> str | None:
    """Why ``path`` cannot be written as a video here, or None."""
    if path.suffix not in VIDEO_SUFFIXES:
        return f"a .gif or .mp4 path (got suffix {path.suffix!r})"
    if path.suffix == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        return "a .gif path here (.mp4 needs imageio with imageio-ffmpeg, not installed)"
    return None
