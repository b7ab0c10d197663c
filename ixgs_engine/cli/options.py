"""Options and argument checks shared by the commands: the reconstruction settings
(``reconstruct``, ``demo``, ``batch``) and the config they make."""

from __future__ import annotations

import argparse
import math
import sys

from ixgs_engine.device import resolve_device
from ixgs_engine.errors import IXGSError
from ixgs_engine.reconstruct.presets import POSE_MODES


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``ixgs simulate: error: ...``, exit 2),
    like every other user error of ``ixgs``."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


# Library parameters whose command-line option has another name (the rest share theirs).
_OPTION_OF_PARAMETER = {
    "scan_dir": "scan",
    "reference_path": "reference",
    "resume_iterations": "iterations",
}


def option_names(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    """Library parameter -> the option that sets it (``voxel_size`` -> ``--voxel-size``), for
    wording the library's messages as flags. The options of the command that ran come first,
    then those of every other command (a message may point to another command's option)."""
    chain: dict[str, str] = {}
    everywhere: dict[str, str] = {}

    def walk(current: argparse.ArgumentParser, on_chain: bool) -> None:
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = getattr(args, action.dest, None)
                for name, sub in action.choices.items():
                    walk(sub, on_chain and name == chosen)
            elif action.option_strings:
                flag = max(action.option_strings, key=len)
                (chain if on_chain else everywhere).setdefault(action.dest, flag)

    walk(parser, True)
    names = {**everywhere, **chain}
    names.update({parameter: names[option] for parameter, option in _OPTION_OF_PARAMETER.items() if option in names})
    return names


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def count(text: str) -> int:
    """An argparse type: a whole number of at least 1 (views, pixels, voxels, steps)."""
    return _whole_number(text, 1)


def index(text: str) -> int:
    """An argparse type: a whole number of at least 0 (a view's index)."""
    return _whole_number(text, 0)


def finite(text: str) -> float:
    """An argparse type: a finite number (no nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive(text: str) -> float:
    """An argparse type: a finite number above 0 (sizes and distances in mm, photon counts)."""
    value = finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
    return value


def not_negative(text: str) -> float:
    """An argparse type: a finite number of at least 0 (jitters, tolerances)."""
    value = finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def add_reconstruct_options(parser: argparse.ArgumentParser, default_preset: str) -> None:
    """Options shared by ``reconstruct`` and ``demo``."""
    from ixgs_engine.reconstruct.presets import PRESET_SUMMARIES

    parser.add_argument(
        "--preset",
        choices=tuple(PRESET_SUMMARIES),
        default=default_preset,
        help=f"settings bundle (default {default_preset}): "
        + "; ".join(f"{name} = {text}" for name, text in PRESET_SUMMARIES.items()),
    )
    parser.add_argument("--iterations", type=count, help="optimization steps (overrides the preset)")
    parser.add_argument(
        "--init", choices=("random", "volume"), help="random (the paper's) or volume (a few SART iterations)"
    )
    parser.add_argument("--gaussians", type=count, help="number of Gaussians to start with")
    parser.add_argument("--seed", type=int, help="random seed (same seed, same result)")
    parser.add_argument(
        "--sart-passes",
        type=index,
        metavar="N",
        help="SART passes (each followed by TV steps) over the full-resolution views after the training, "
        "started from the Gaussians' volume (0: the Gaussians alone; default: the preset's)",
    )
    parser.add_argument(
        "--holdout-every",
        type=count,
        metavar="K",
        help="keep every K-th view out of training (recorded in summary.json) for `ixgs evaluate`",
    )
    parser.add_argument(
        "--refine-poses",
        choices=POSE_MODES,
        help="refine every view's pose (rotation + translation about the ROI centre) with the volume: on; auto "
        "keeps the given poses when the corrections come out negligible; off (default: on)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--voxel-size", type=positive, help="output voxel size in mm (default: detector pixel at the ROI centre)"
    )
    parser.add_argument("--format", choices=("nrrd", "nii.gz", "mha"), default="nrrd", help="volume file format")
    parser.add_argument("--threshold", type=finite, help="also write a label map of attenuation >= this (1/mm)")


def preset_name(args) -> str:
    """The preset ``--preset`` names on the run's device (``auto`` resolved, e.g. ``auto -> cpu``)."""
    from ixgs_engine.reconstruct.presets import resolve_preset

    resolved = resolve_preset(args.preset, resolve_device(args.device))
    return resolved if resolved == args.preset else f"{resolved} ({args.preset})"


def config_from(args):
    from ixgs_engine.reconstruct.config import preset
    from ixgs_engine.reconstruct.presets import resolve_preset

    try:
        return preset(
            resolve_preset(args.preset, resolve_device(args.device)),
            iterations=args.iterations,
            init=args.init,
            num_gaussians=args.gaussians,
            seed=args.seed,
            holdout_every=args.holdout_every,
            **{"final_passes.passes": args.sart_passes, "poses.mode": args.refine_poses},
        )
    except ValueError as error:  # e.g. --iterations 0 or --holdout-every 1
        raise IXGSError(f"invalid reconstruction options: {error}") from None
