"""Training the Pix2Pix standardization model on a pairs folder.

Loss (pix2pix): the discriminator minimizes the binary cross-entropy of real pairs as real and
generated pairs as fake (halved); the generator minimizes BCE(D(x, G(x)), real) +
lambda_L1 |G(x) - y|. Adam (lr 2e-4, beta1 0.5) for both. Every ``validate_every`` steps the
generator is scored on held-out pairs (L1 and PSNR in line-integral units, a PNG of input |
output | target); every ``checkpoint_every`` steps the whole state is saved so ``resume``
continues where it stopped. Batches are drawn from a generator seeded by the step number, so
a resumed run draws the same batches as an uninterrupted one.

Files written beside the model: ``log.jsonl`` (one JSON object per logged step),
``checkpoint.pt`` (weights, optimizer states, step; tensors and strings only) and
``validation/step-NNNNNN.png``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ixgs_engine.device import resolve_device
from ixgs_engine.errors import IXGSError
from ixgs_engine.io import atomic_output
from ixgs_engine.progress import ProgressCallback
from ixgs_engine.standardize.model import (
    Normalization,
    PatchDiscriminator,
    Pix2PixConfig,
    StandardizationModel,
    UNetGenerator,
    _reason,
    init_weights,
    save_model,
)
from ixgs_engine.standardize.pairs import PairSet, read_pairs

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "log.jsonl"
VALIDATION_FOLDER = "validation"
VALIDATION_EVERY_NTH = 10  # every 10th pair is held out (at least one)
TARGET_HEADROOM = 1.2  # target_scale = headroom x 99.9th percentile of the training targets
TARGET_SCALE_SAMPLE = 256  # training targets read to fix target_scale (evenly spaced)
IN_MEMORY_BYTES = 2 << 30  # pairs folders up to this size are held in memory, larger ones read per batch
LOG_EVERY = 10


@dataclass
class TrainingSummary:
    """What `ixgs standardize train` reports."""

    model_path: Path
    steps: int
    train_pairs: int
    validation_pairs: int
    seconds: float
    loss_l1: float
    validation_l1: float
    validation_psnr_db: float

    def line(self) -> str:
        return (
            f"trained {self.steps} steps on {self.train_pairs} pairs in {self.seconds:.1f} s: train L1 "
            f"{self.loss_l1:.4f}, held-out ({self.validation_pairs} pairs) L1 {self.validation_l1:.4f}, "
            f"PSNR {self.validation_psnr_db:.2f} dB -> {self.model_path}"
        )


def split_pairs(count: int) -> tuple[list[int], list[int]]:
    """(training, validation) indices: every 10th pair held out, at least one, never all."""
    if count < 2:
        raise IXGSError(f"training needs at least 2 pairs (one is held out for validation), got {count}")
    held = list(range(VALIDATION_EVERY_NTH - 1, count, VALIDATION_EVERY_NTH)) or [count - 1]
    return [i for i in range(count) if i not in held], held


def psnr_db(output: np.ndarray, target: np.ndarray) -> float:
    """PSNR (dB) with the target's maximum as the peak."""
    mse = float(np.mean((output - target) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(float(target.max()) ** 2 / mse))


def _crop_and_flip(
    pairs: list[tuple[np.ndarray, np.ndarray]], crop: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch (B, 1, h, w) of random crops with random flips (same for input and target)."""
    batch_x, batch_y = [], []
    for x, y in pairs:
        height, width = x.shape
        h, w = (min(crop, height), min(crop, width)) if crop else (height, width)
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        x, y = x[top : top + h, left : left + w], y[top : top + h, left : left + w]
        if rng.uniform() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        if rng.uniform() < 0.5:
            x, y = x[::-1], y[::-1]
        batch_x.append(np.ascontiguousarray(x))
        batch_y.append(np.ascontiguousarray(y))
    shapes = {a.shape for a in batch_x}
    if len(shapes) > 1:  # pairs of different sizes: use one per batch
        return torch.from_numpy(batch_x[0])[None, None], torch.from_numpy(batch_y[0])[None, None]
    return torch.from_numpy(np.stack(batch_x))[:, None], torch.from_numpy(np.stack(batch_y))[:, None]


class Pix2PixTrainer:
    """Generator, discriminator, optimizers and the data of one training run."""

    def __init__(
        self,
        config: Pix2PixConfig,
        pairs: PairSet,
        device: torch.device,
        seed: int = 0,
        normalization: Normalization | None = None,
    ) -> None:
        self.config = config
        self.pairs = pairs
        self.device = device
        self.seed = seed
        self.train_indices, self.validation_indices = split_pairs(len(pairs))
        size = sum(path.stat().st_size for path in [*pairs.inputs, *pairs.targets])
        self._memory: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if size <= IN_MEMORY_BYTES else None
        if normalization is None:
            sample = np.unique(np.linspace(0, len(self.train_indices) - 1, TARGET_SCALE_SAMPLE).round().astype(int))
            train_targets = np.concatenate([self.pair(self.train_indices[i])[1].ravel() for i in sample])
            scale = TARGET_HEADROOM * float(np.percentile(train_targets, 99.9))
            if not scale > 0:
                raise IXGSError(f"{pairs.folder}: the training targets are all zero; they must be DRR line integrals")
            normalization = Normalization(target_scale=scale)
        self.normalization = normalization
        torch.manual_seed(seed)
        self.generator = UNetGenerator(config).to(device)
        self.discriminator = PatchDiscriminator(config).to(device)
        self.generator.apply(init_weights)
        self.discriminator.apply(init_weights)
        betas = (config.beta1, config.beta2)
        self.optimizer_g = torch.optim.Adam(self.generator.parameters(), lr=config.learning_rate, betas=betas)
        self.optimizer_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.learning_rate, betas=betas)
        self.step = 0

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(input, target) of one pair as stored, from memory when the folder fits."""
        if self._memory is not None and index in self._memory:
            return self._memory[index]
        loaded = self.pairs.load(index)
        if self._memory is not None:
            self._memory[index] = loaded
        return loaded

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalized training batch of a step (the same for the same seed and step)."""
        rng = np.random.default_rng([self.seed, step])
        picks = rng.choice(self.train_indices, size=self.config.batch_size)
        normalized = [
            (self.normalization.normalize_input(x), self.normalization.normalize_target(y))
            for x, y in (self.pair(int(i)) for i in picks)
        ]
        x, y = _crop_and_flip(normalized, self.config.crop, rng)
        return x.to(self.device), y.to(self.device)

    def train_step(self) -> dict:
        """One discriminator and one generator update; returns the losses."""
        self.generator.train()
        self.discriminator.train()
        x, y = self.batch(self.step)
        fake = self.generator(x)
        real_logits = self.discriminator(x, y)
        fake_logits = self.discriminator(x, fake.detach())
        loss_d = 0.5 * (
            F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        )
        self.optimizer_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.optimizer_d.step()
        judged = self.discriminator(x, fake)
        loss_gan = F.binary_cross_entropy_with_logits(judged, torch.ones_like(judged))
        loss_l1 = F.l1_loss(fake, y)
        loss_g = loss_gan + self.config.lambda_l1 * loss_l1
        self.optimizer_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.optimizer_g.step()
        self.step += 1
        # L1 reported in line-integral units (the normalized range spans target_scale / 2 per unit)
        scale = 0.5 * self.normalization.target_scale
        return {"step": self.step, "loss_d": loss_d.item(), "loss_gan": loss_gan.item(), "l1": loss_l1.item() * scale}

    def model(self, info: dict | None = None) -> StandardizationModel:
        return StandardizationModel(self.config, self.normalization, self.generator, info or {})

    def validate(self, figure: Path | None = None) -> dict:
        """Held-out L1 and PSNR in line-integral units; optionally a PNG of input | output | target rows."""
        model = self.model()
        inputs = [self.pair(i)[0] for i in self.validation_indices]
        targets = [self.pair(i)[1] for i in self.validation_indices]
        outputs = [model.standardize(x[None])[0] for x in inputs]
        l1 = float(np.mean([np.mean(np.abs(o - t)) for o, t in zip(outputs, targets, strict=True)]))
        psnr = float(np.mean([psnr_db(o, t) for o, t in zip(outputs, targets, strict=True)]))
        if figure is not None:
            _write_validation_png(figure, inputs[:4], outputs[:4], targets[:4])
        return {"val_l1": l1, "val_psnr": psnr}

    def save_checkpoint(self, path: Path) -> None:
        record = {
            "config": json.dumps(self.config.to_dict()),
            "normalization": json.dumps(self.normalization.to_dict()),
            "seed": self.seed,
            "step": self.step,
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "optimizer_g": self.optimizer_g.state_dict(),
            "optimizer_d": self.optimizer_d.state_dict(),
        }
        with atomic_output(path) as temp:
            torch.save(record, temp)

    @classmethod
    def from_checkpoint(cls, path: Path, pairs: PairSet, device: torch.device) -> Pix2PixTrainer:
        try:
            record = torch.load(path, map_location=device, weights_only=True)
            config = Pix2PixConfig.from_dict(json.loads(record["config"]))
            normalization = Normalization.from_dict(json.loads(record["normalization"]))
            trainer = cls(config, pairs, device, int(record["seed"]), normalization)
            trainer.generator.load_state_dict(record["generator"])
            trainer.discriminator.load_state_dict(record["discriminator"])
            trainer.optimizer_g.load_state_dict(record["optimizer_g"])
            trainer.optimizer_d.load_state_dict(record["optimizer_d"])
            trainer.step = int(record["step"])
        except IXGSError:
            raise
        except Exception as error:
            raise IXGSError(
                f"{path}: cannot resume from this checkpoint ({_reason(error)}); delete it and train without `resume`"
            ) from None
        return trainer


def _to_byte(image: np.ndarray, low: float, high: float) -> np.ndarray:
    return (255 * np.clip((image - low) / max(high - low, 1e-8), 0, 1)).astype(np.uint8)


def _write_validation_png(path: Path, inputs: list, outputs: list, targets: list) -> None:
    rows = []
    for x, o, t in zip(inputs, outputs, targets, strict=True):
        low, high = np.percentile(x, (1, 99))
        peak = float(t.max())
        rows.append(np.concatenate([_to_byte(x, low, high), _to_byte(o, 0, peak), _to_byte(t, 0, peak)], axis=1))
    width = max(r.shape[1] for r in rows)
    picture = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]))) for r in rows], axis=0)
    with atomic_output(path) as temp:
        Image.fromarray(picture).save(temp, format="PNG")


def train_model(
    pairs_dir: str | Path,
    model_path: str | Path,
    config: Pix2PixConfig,
    steps: int | None = None,
    resume: bool = False,
    device: str = "auto",
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> TrainingSummary:
    """Train (or with ``resume`` continue) a model on a pairs folder and write the model file."""
    started = time.perf_counter()
    model_path = Path(model_path)
    if model_path.is_dir():
        raise IXGSError(f"{model_path} is a folder; give the model file to write, e.g. {model_path / 'standardize.pt'}")
    folder = model_path.parent
    checkpoint = folder / CHECKPOINT_FILE
    if steps is not None and steps < 1:  # before anything is read or the old log is deleted
        raise IXGSError("`steps` must be at least 1")
    pairs = read_pairs(pairs_dir)
    torch_device = resolve_device(device)
    if resume:
        if not checkpoint.is_file():
            raise IXGSError(f"`resume`: no {CHECKPOINT_FILE} in {folder}; run without `resume` to start")
        trainer = Pix2PixTrainer.from_checkpoint(checkpoint, pairs, torch_device)
    else:
        trainer = Pix2PixTrainer(config, pairs, torch_device, seed)
        (folder / LOG_FILE).unlink(missing_ok=True)
    total = steps if steps is not None else trainer.config.steps
    if total < 1:
        raise IXGSError("`steps` must be at least 1")
    folder.mkdir(parents=True, exist_ok=True)
    losses: list[float] = []
    validation = {"val_l1": float("nan"), "val_psnr": float("nan")}
    with (folder / LOG_FILE).open("a") as log:
        while trainer.step < total:
            entry = trainer.train_step()
            losses.append(entry["l1"])
            step = trainer.step
            if step % trainer.config.validate_every == 0 or step == total:
                figure = folder / VALIDATION_FOLDER / f"step-{step:06d}.png"
                validation = trainer.validate(figure)
                entry.update(validation)
            if step % LOG_EVERY == 0 or "val_l1" in entry:
                log.write(json.dumps(entry) + "\n")
                log.flush()
            if step % trainer.config.checkpoint_every == 0 or step == total:
                trainer.save_checkpoint(checkpoint)
            if progress is not None:
                progress(
                    step,
                    total,
                    {
                        "loss": entry["l1"],
                        "l1": entry["l1"],
                        **({"psnr": entry["val_psnr"]} if "val_psnr" in entry else {}),
                    },
                )
    if validation["val_l1"] != validation["val_l1"]:  # nothing left to train after a resume: score now
        validation = trainer.validate()
    info = {
        "pairs": str(Path(pairs_dir)),
        "steps": trainer.step,
        "bone_weight": pairs.bone_weight,
        "validation_l1": validation["val_l1"],
        "validation_psnr_db": validation["val_psnr"],
    }
    save_model(model_path, trainer.model(info))
    recent = losses[-LOG_EVERY:] if losses else [float("nan")]
    return TrainingSummary(
        model_path,
        trainer.step,
        len(trainer.train_indices),
        len(trainer.validation_indices),
        time.perf_counter() - started,
        float(np.mean(recent)),
        validation["val_l1"],
        validation["val_psnr"],
    )
