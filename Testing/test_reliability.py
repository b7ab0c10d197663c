"""Nothing lost, nothing silent: an interrupt delivered inside a step (Ctrl-C, SIGTERM, a cancel
file) then --resume reproduces the uninterrupted run bit for bit; a finished run is not replaced
without --overwrite; run folders are self-contained; too-large outputs and bad sizes are refused
before the long work; user errors are one line with exit code 2; images that cannot be line
integrals and non-finite volumes are refused instead of turning into garbage."""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from tiny_settings import TINY

from ixgs_engine.cli import main
from ixgs_engine.errors import IXGSError
from ixgs_engine.io.scan import load_projections, read_scan
from ixgs_engine.io.volumes import read_volume, write_volume
from ixgs_engine.reconstruct import pipeline
from ixgs_engine.reconstruct.data import TrainingData
from ixgs_engine.reconstruct.run_files import read_log, read_summary
from ixgs_engine.reconstruct.trainer import ReconstructionCancelled, Trainer
from ixgs_engine.render.backend import get_backend
from ixgs_engine.simulate import simulate_phantom_scan

PROGRESS_BAR = re.compile(r"\d+/\d+ \[")
RUN = ["--preset", "fast", "--iterations", "24", "--gaussians", "500", "--device", "cpu", "--voxel-size", "8"]


@pytest.fixture(scope="module")
def tiny_scan(tmp_path_factory) -> tuple[Path, Path]:
    """A 6-view scan of a 24^3 spine phantom and its truth (as a volume file)."""
    folder = tmp_path_factory.mktemp("scan")
    truth = simulate_phantom_scan(folder / "scan", "spine", 24, 8.0, 6, 40, 8.0)
    write_volume(folder / "truth.nrrd", truth)
    return folder / "scan", folder / "truth.nrrd"


@pytest.fixture(scope="module")
def uninterrupted(tiny_scan, tmp_path_factory) -> Path:
    """``ixgs reconstruct`` run to the end without a stop: the reference the resumed runs equal."""
    out = tmp_path_factory.mktemp("whole") / "run"
    assert main(["reconstruct", str(tiny_scan[0]), "-o", str(out), *RUN]) == 0
    return out


class SignalInsideRender:
    """A render backend that sends ``signum`` to this process from inside its ``at``-th render
    (the forward pass of a step, before the loss, the backward pass and the optimizer step)."""

    def __init__(self, backend, at: int, signum: int) -> None:
        self.backend, self.at, self.signum, self.calls = backend, at, signum, 0
        self.name = backend.name

    def render(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        return self.backend.render(*args, **kwargs)

    def voxelize(self, *args, **kwargs):
        return self.backend.voxelize(*args, **kwargs)


def _steps(run_dir: Path) -> list[dict]:
    """The log without its wall-clock times."""
    return [{k: v for k, v in entry.items() if k != "elapsed_s"} for entry in read_log(run_dir)]


@pytest.fixture(scope="module")
def tiny_data(tiny_scan) -> TrainingData:
    return TrainingData.from_projections(load_projections(read_scan(tiny_scan[0])), 1.0, torch.device("cpu"))


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (getattr(signal, "SIGTERM", None), 143)])
def test_a_signal_inside_a_step_checkpoints_that_step_and_resume_reproduces_the_run(tiny_data, tmp_path, signum, code):
    if signum is None:
        pytest.skip("no SIGTERM on this platform")
    backend = get_backend("torch")
    whole = Trainer(tiny_data, TINY, backend, tmp_path / "whole").run()
    # The first render is the density calibration of the start; render 13 is inside step 12.
    with pytest.raises(ReconstructionCancelled, match="at iteration 12; resume with `resume`") as stopped:
        Trainer(tiny_data, TINY, SignalInsideRender(backend, 13, signum), tmp_path / "cut").run()
    assert stopped.value.exit_code == code
    assert len(read_log(tmp_path / "cut")) == 12
    resumed = Trainer(tiny_data, TINY, backend, tmp_path / "cut").run(resume=True)
    assert _steps(tmp_path / "cut") == _steps(tmp_path / "whole")
    for name, value in whole.model.parameters().items():
        assert torch.equal(value, resumed.model.parameters()[name]), name
    # The handlers are the process's own again.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_inside_a_step_then_resume_gives_the_same_volume_bit_for_bit(
    tiny_scan, uninterrupted, tmp_path, monkeypatch, capsys
):
    if not hasattr(signal, "SIGTERM"):
        pytest.skip("no SIGTERM on this platform")
    out = tmp_path / "run"
    torch_backend = get_backend("torch")
    monkeypatch.setattr(pipeline, "select_backend", lambda device: SignalInsideRender(torch_backend, 9, signal.SIGTERM))
    assert main(["reconstruct", str(tiny_scan[0]), "-o", str(out), *RUN]) == 143
    err = capsys.readouterr().err
    assert "interrupted (SIGTERM) at iteration" in err and "resume with --resume" in err and "Traceback" not in err
    monkeypatch.undo()
    assert main(["reconstruct", str(tiny_scan[0]), "-o", str(out), *RUN, "--resume"]) == 0
    assert _steps(out) == _steps(uninterrupted)
    assert np.array_equal(read_volume(out / "volume.nrrd").array, read_volume(uninterrupted / "volume.nrrd").array)


def test_a_cancel_file_stops_the_run_and_resume_finishes_it_identically(tiny_scan, uninterrupted, tmp_path, capsys):
    out, cancel = tmp_path / "run", tmp_path / "cancel"
    cancel.touch()
    assert main(["reconstruct", str(tiny_scan[0]), "-o", str(out), *RUN, "--cancel-file", str(cancel)]) == 130
    assert "cancelled at iteration 0" in capsys.readouterr().err
    # Started again without --resume: refused, with the way to continue.
    assert main(["reconstruct", str(tiny_scan[0]), "-o", str(out), *RUN]) == 2
    assert "holds an unfinished run; continue it (--resume)" in capsys.readouterr().err
    cancel.unlink()
    assert main(["reconstruct", str(tiny_scan[0]), "-o", str(out), *RUN, "--resume", "--cancel-file", str(cancel)]) == 0
    assert np.array_equal(read_volume(out / "volume.nrrd").array, read_volume(uninterrupted / "volume.nrrd").array)


def _files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_no_tool_writes_its_run_into_the_scan_it_reads(tiny_scan, tmp_path, capsys):
    scan = tmp_path / "scan"
    shutil.copytree(tiny_scan[0], scan)
    before = _files_under(scan)
    for command in (
        ["reconstruct", str(scan), "-o", str(scan), *RUN],
        ["reconstruct", str(scan / "scan.json"), "-o", str(scan / "."), *RUN, "--overwrite"],
        ["baseline", "sart", str(scan), "-o", str(scan)],
    ):
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is the scan folder" in err and "give another folder" in err, err
        assert str(scan.parent / "scan-run") in err  # a folder beside it is suggested
    assert _files_under(scan) == before  # not a file added, changed or removed


def test_library_messages_name_parameters_and_the_cli_words_them_as_flags(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    scan = tmp_path / "scan"
    simulate_phantom_scan(scan, "spine", 24, 8.0, 3, 40, 8.0)
    with pytest.raises(IXGSError, match="`resume`: no checkpoint in .*; run without `resume` to start"):
        pipeline.reconstruct_scan(scan, out, TINY, "cpu", resume=True)
    assert main(["reconstruct", str(scan), "-o", str(out), *RUN, "--resume"]) == 2
    assert "--resume: no checkpoint in" in capsys.readouterr().err
    with pytest.raises(IXGSError, match="`voxel_size` must be a positive number of mm"):
        pipeline.reconstruct_scan(scan, tmp_path / "other", TINY, "cpu", voxel_size=float("nan"))
    # A front end (IXGS_PROGRESS=jsonl) gets the parameters' names, to word them as its controls.
    monkeypatch.setenv("IXGS_PROGRESS", "jsonl")
    assert main(["reconstruct", str(scan), "-o", str(out), *RUN, "--resume"]) == 2
    assert "`resume`: no checkpoint in" in capsys.readouterr().err


def test_a_finished_run_is_not_replaced_without_overwrite(tiny_scan, uninterrupted, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    before = (out / "volume.nrrd").read_bytes()
    assert main(["reconstruct", str(tiny_scan[0]), "-o", str(out), *RUN]) == 2
    err = capsys.readouterr().err
    assert "holds a finished run: replace it (--overwrite)" in err and len(err.strip().splitlines()) == 1
    assert (out / "volume.nrrd").read_bytes() == before
    # --resume keeps the checkpoint's settings and says which given ones it ignores; more
    # --iterations extend the run.
    assert (
        main(
            [
                "reconstruct",
                str(tiny_scan[0]),
                "-o",
                str(out),
                "--resume",
                "--seed",
                "5",
                "--iterations",
                "30",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "ignored: --seed 5" in err
    assert read_summary(out)["iterations"] == 30 and len(read_log(out)) == 30
    assert (
        main(["reconstruct", str(tiny_scan[0]), "-o", str(out), "--resume", "--iterations", "10", "--device", "cpu"])
        == 2
    )
    assert "has already done 30; give more" in capsys.readouterr().err
    assert main(["reconstruct", str(tiny_scan[0]), "-o", str(out), *RUN, "--overwrite"]) == 0
    assert read_summary(out)["iterations"] == 24


def test_a_copied_run_folder_evaluates_the_same_from_any_working_directory(tiny_scan, tmp_path, monkeypatch, capsys):
    scan, truth = tiny_scan
    monkeypatch.chdir(tmp_path)
    assert main(["reconstruct", str(scan), "-o", "run", *RUN]) == 0
    summary = read_summary(tmp_path / "run")
    assert summary["volume_path"] == "volume.nrrd" and summary["gaussians_path"] == "gaussians.npz"
    assert Path(summary["scan"]).is_absolute()
    shutil.copytree(tmp_path / "run", tmp_path / "elsewhere" / "copy")
    (tmp_path / "elsewhere" / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere" / "cwd")
    assert main(["evaluate", str(tmp_path / "run"), "--reference", str(truth), "-o", "original.json"]) == 0
    # The original's volume is gone: the copy must read its own.
    (tmp_path / "run" / "volume.nrrd").unlink()
    assert main(["evaluate", "../copy", "--reference", str(truth), "-o", "copy.json"]) == 0
    original, copy = (json.loads(Path(name).read_text()) for name in ("original.json", "copy.json"))
    for key in ("psnr_3d_db", "ssim_3d", "psnr_2d_db_mean"):
        assert original[key] == copy[key], key
    assert main(["report", "../copy", "--reference", str(truth), "--max-views", "1"]) == 0
    assert (tmp_path / "elsewhere" / "copy" / "report.html").is_file()
    capsys.readouterr()


def test_an_output_too_large_for_memory_is_refused_before_training(tiny_scan, tmp_path, capsys):
    scan = tmp_path / "scan"
    shutil.copytree(tiny_scan[0], scan)
    document = json.loads((scan / "scan.json").read_text())
    document["roi"] = {"center": [0.0, 0.0, 0.0], "size": [5000.0, 5000.0, 5000.0]}
    (scan / "scan.json").write_text(json.dumps(document))
    assert main(["reconstruct", str(scan), "-o", str(tmp_path / "out"), *RUN[:-2], "--voxel-size", "1"]) == 2
    err = capsys.readouterr().err
    assert "5000x5000x5000 voxels" in err and "GiB of memory" in err and "larger --voxel-size" in err
    assert not (tmp_path / "out" / "log.jsonl").exists() and not (tmp_path / "out" / "checkpoint.pt").exists()


def _one_line_error(capsys, code: int) -> str:
    """The one message line of a failed command (progress bars, redrawn with carriage returns,
    are not messages)."""
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not PROGRESS_BAR.search(line)]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["demo", "--views", "0"], "argument --views: must be at least 1"),
        (["demo", "--phantom-size", "-3"], "argument --phantom-size: must be at least 1"),
        (["simulate", "-o", "{tmp}/s", "--views", "0"], "argument --views: must be at least 1"),
        (["simulate", "-o", "{tmp}/s", "--detector-pixels", "0", "64"], "must be at least 1"),
        (["simulate", "-o", "{tmp}/s", "--phantom-spacing", "-1"], "must be above 0"),
        (["simulate", "-o", "{tmp}/s", "--views", "1000000000"], "GiB of memory"),
        (["experiment", "views", "-o", "{tmp}/e", "--size", "0"], "argument --size: must be at least 1"),
        (["reconstruct", "{scan}", "-o", "{tmp}/r", "--voxel-size", "0"], "argument --voxel-size: must be above 0"),
        (["reconstruct", "{scan}", "-o", "{tmp}/r", "--voxel-size", "-2"], "must be above 0"),
        (["reconstruct", "{scan}", "-o", "{tmp}/r", "--voxel-size", "nan"], "must be a finite number"),
        (["reconstruct", "{scan}", "-o", "{tmp}/r", "--threshold", "nan"], "must be a finite number"),
        (["reconstruct", "{scan}", "-o", "{tmp}/file"], "is a file; give a folder"),
        (["reconstruct", "{scan}", "-o", "{tmp}/file/under"], "Not a directory"),
        (["evaluate", "{truth}", "--reference", "{truth}", "-o", "{tmp}/file/m.json"], "a file stands where a folder"),
        (["report", "{tmp}/file"], "file is not a folder; give the output folder"),
        (["poses", "make-phantom", "-o", "{tmp}/file/p.json"], "a file stands where a folder"),
        (["standardize", "preview", "{tmp}/m.pt", "{scan}", "--view", "99", "-o", "{tmp}/v.tif"], "has views 0 to 5"),
        (["standardize", "preview", "{tmp}/m.pt", "{scan}", "--view", "-1", "-o", "{tmp}/v.tif"], "must be at least 0"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(tiny_scan, tmp_path, capsys, argv, expected):
    (tmp_path / "file").write_text("a file, not a folder")
    values = {"tmp": str(tmp_path), "scan": str(tiny_scan[0]), "truth": str(tiny_scan[1])}
    try:
        code = main([part.format(**values) for part in argv])
    except SystemExit as exit_:  # argparse's errors
        code = exit_.code
    assert expected in _one_line_error(capsys, code)


@contextmanager
def _read_only(folder: Path):
    """``folder`` made unwritable: by its permissions, or for root (whom permissions do not bind)
    with the immutable attribute; skips where neither is possible."""
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    if os.geteuid() != 0:
        folder.chmod(0o500)
        try:
            yield
        finally:
            folder.chmod(0o700)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("running as root on a file system without the immutable attribute")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.parametrize("command", ["simulate", "reconstruct"])
def test_a_read_only_output_folder_is_one_line(tiny_scan, tmp_path, capsys, command):
    locked = tmp_path / "locked"
    locked.mkdir()
    argv = {
        "simulate": ["simulate", "-o", str(locked / "out"), "--phantom-size", "16", "--views", "2"],
        "reconstruct": ["reconstruct", str(tiny_scan[0]), "-o", str(locked / "out"), *RUN],
    }[command]
    with _read_only(locked):
        line = _one_line_error(capsys, main(argv))
    assert (
        "Permission denied" in line or "Operation not permitted" in line
    ) and "choose a folder you can write to" in line
    assert not (locked / "out").exists()


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    import ixgs_engine.io as io

    def disk_full(source, target):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(io.os, "replace", disk_full)
    code = main(
        [
            "simulate",
            "-o",
            str(tmp_path / "scan"),
            "--phantom-size",
            "16",
            "--views",
            "2",
            "--detector-pixels",
            "16",
            "16",
            "--pixel-size",
            "16",
        ]
    )
    line = _one_line_error(capsys, code)
    assert "No space left on device" in line and "free some space" in line
    left = [p for p in (tmp_path / "scan").rglob("*") if p.is_file()] if (tmp_path / "scan").exists() else []
    assert left == []


def _damaged_scan(tiny_scan, tmp_path: Path, view: int, pixels) -> Path:
    scan = tmp_path / "scan"
    shutil.copytree(tiny_scan[0], scan)
    image = scan / read_scan(scan).views[view].image
    tifffile.imwrite(image, pixels(tifffile.imread(image)).astype(np.float32))
    return scan


@pytest.mark.parametrize(
    ("pixels", "expected"),
    [
        (np.zeros_like, "is zero everywhere"),
        (lambda p: 4000.0 + 1000.0 * p, "look like raw detector counts or intensities"),
    ],
    ids=["all-zero", "raw-counts"],
)
def test_images_that_are_not_line_integrals_are_named_by_info_and_refused(
    tiny_scan, tmp_path, capsys, pixels, expected
):
    scan = _damaged_scan(tiny_scan, tmp_path, 3, pixels)
    assert main(["info", str(scan)]) == 1
    out = capsys.readouterr().out
    assert "view 3" in out and expected in out
    code = main(["reconstruct", str(scan), "-o", str(tmp_path / "out"), *RUN])
    line = _one_line_error(capsys, code)
    assert "view 3" in line and expected in line


def test_a_volume_with_nan_voxels_is_refused_by_simulate(tmp_path, capsys):
    volume = np.full((8, 8, 8), -1000.0, dtype=np.float32)
    volume[2, 3, 4] = np.nan
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(volume), str(tmp_path / "ct.nrrd"))
    code = main(["simulate", str(tmp_path / "ct.nrrd"), "-o", str(tmp_path / "scan"), "--views", "2"])
    line = _one_line_error(capsys, code)
    assert "1 voxels are NaN or infinite (the first at index i,j,k = (4, 3, 2))" in line
    assert not (tmp_path / "scan").exists()


def test_a_diverged_or_empty_reconstruction_is_not_written(tiny_scan, tmp_path, monkeypatch):
    from ixgs_engine.errors import IXGSError
    from ixgs_engine.reconstruct import output

    real = output.voxelize_volume
    monkeypatch.setattr(
        output, "voxelize_volume", lambda *a: real(*a).with_array(np.full(real(*a).shape, np.nan, np.float32))
    )
    with pytest.raises(IXGSError, match="diverged"):
        pipeline.reconstruct_scan(tiny_scan[0], tmp_path, replace(TINY, iterations=2), "cpu", voxel_size=8.0)
    assert not (tmp_path / "volume.nrrd").exists() and not (tmp_path / "summary.json").exists()


def test_batch_names_the_failed_scan_and_still_writes_the_others(tiny_scan, tmp_path, capsys):
    broken = _damaged_scan(tiny_scan, tmp_path / "broken", 0, np.zeros_like)
    out = tmp_path / "batch"
    code = main(
        [
            "batch",
            str(tiny_scan[0]),
            str(broken),
            "-o",
            str(out),
            "--preset",
            "fast",
            "--iterations",
            "6",
            "--gaussians",
            "300",
            "--voxel-size",
            "8",
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "case scan-1: view 0" in err and "is zero everywhere" in err
    table = (out / "batch.md").read_text()
    assert "| scan-0 | 6 | 6 |" in table and "| scan-1 | failed: view 0" in table
    assert list(json.loads((out / "batch.json").read_text())["rows"]) == ["scan-0"]


def test_a_loss_that_turns_nan_stops_the_training_with_the_last_checkpoint_kept(tiny_data, tmp_path):
    """Values that overflow (NaN loss) stop the run at once, instead of training on garbage."""
    from ixgs_engine.errors import IXGSError

    class NaNAfter:
        def __init__(self, backend, after: int) -> None:
            self.backend, self.after, self.calls, self.name = backend, after, 0, backend.name

        def render(self, *args, **kwargs):
            self.calls += 1
            image = self.backend.render(*args, **kwargs)
            return image * float("nan") if self.calls > self.after else image

        def voxelize(self, *args, **kwargs):
            return self.backend.voxelize(*args, **kwargs)

    with pytest.raises(IXGSError, match="diverged at iteration 15"):
        Trainer(tiny_data, TINY, NaNAfter(get_backend("torch"), 15), tmp_path).run()
    assert len(read_log(tmp_path)) == 14
    assert all(np.isfinite(entry["loss"]) for entry in read_log(tmp_path))
