"""The presets' names, what each is for, and which one a plain ``ixgs reconstruct`` runs; the pose
refinement's modes.

Torch-free, so the Slicer module's parameter node can offer these names when it loads in a fresh
Slicer; the settings of each preset are ``config.PRESETS``, which must name the same presets."""

from __future__ import annotations

DEFAULT_PRESET = "auto"
# One line per preset, for the command line's help and the Slicer module's tooltip.
PRESET_SUMMARIES = {
    DEFAULT_PRESET: "cpu on a CPU, default on a CUDA GPU",
    "cpu": "minutes on a CPU (tuned on a real CT)",
    "fast": "the demo's, a few minutes",
    "default": "R2-Gaussian's recipe",
    "quality": "SART start + 2 views a step, for a GPU",
}
# The pose refinement's modes (``reconstruct.pose_refinement``), and what a run does unless told.
POSE_MODES = ("off", "on", "auto")
DEFAULT_POSE_MODE = "on"
# What ``auto`` becomes on each device type.
DEVICE_PRESETS = {"cpu": "cpu", "cuda": "default"}


def resolve_preset(name: str, device) -> str:
    """``auto`` becomes the preset for the device's type (``cpu`` on a CPU, R^2-Gaussian's full
    recipe on a CUDA GPU, ``cpu`` elsewhere); any other name is returned as is."""
    if name != DEFAULT_PRESET:
        return name
    return DEVICE_PRESETS.get(getattr(device, "type", str(device)), "cpu")
