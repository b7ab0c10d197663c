"""Pix2Pix for one-channel radiographs (Isola et al., "Image-to-Image Translation with
Conditional Adversarial Networks", CVPR 2017): a U-Net generator with skip connections and a
PatchGAN discriminator, sized by a named config, and the model file that stores them.

Intensity normalization (stored in the model file, so inference needs nothing else):
- input: each radiograph on its own, its ``input_percentiles`` (1st, 99th) mapped to -1 and 1,
  so any scale, offset or bit depth is accepted;
- output: tanh in [-1, 1] maps linearly to line integrals in [0, ``target_scale``], where
  ``target_scale`` is fixed from the training targets; the standardized image is therefore a line
  integral (of the bone-enhanced attenuation map) in absolute units.
Images of any size are padded (edge replication) to a multiple of 2^depth and cropped back.

The model file is a ``torch.save`` of a dict holding only strings and tensors (JSON config and
normalization, generator state dict), read back with ``weights_only=True``: no pickled code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ixgs_engine.errors import IXGSError
from ixgs_engine.io import atomic_output

MODEL_FORMAT = "ixgs-standardize/1"


@dataclass(frozen=True)
class Pix2PixConfig:
    """Network sizes and training settings (pix2pix's defaults for the ``paper`` config)."""

    name: str
    base_channels: int  # generator filters at full resolution (ngf)
    depth: int  # down-sampling levels of the U-Net; 8 = pix2pix's unet_256
    max_channels: int
    disc_channels: int  # ndf
    disc_layers: int  # 3 = the 70x70 PatchGAN
    dropout: float  # in the three innermost decoder levels
    batch_size: int
    steps: int  # default training length (generator updates)
    crop: int  # training crops (pixels); 0 trains on whole images
    lambda_l1: float = 100.0
    learning_rate: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    validate_every: int = 250
    checkpoint_every: int = 250

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Pix2PixConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown model settings: {', '.join(sorted(unknown))}")
        return cls(**values)


CONFIGS: dict[str, Pix2PixConfig] = {
    # Trains on a laptop CPU in minutes on 128x128 views (1.0 M generator weights).
    "light": Pix2PixConfig(
        "light",
        base_channels=16,
        depth=5,
        max_channels=128,
        disc_channels=16,
        disc_layers=2,
        dropout=0.0,
        batch_size=4,
        steps=1500,
        crop=0,
    ),
    # pix2pix's unet_256 + 70x70 PatchGAN (54 M generator weights): a GPU job on real pairs.
    "paper": Pix2PixConfig(
        "paper",
        base_channels=64,
        depth=8,
        max_channels=512,
        disc_channels=64,
        disc_layers=3,
        dropout=0.5,
        batch_size=1,
        steps=100_000,
        crop=256,
        validate_every=2000,
        checkpoint_every=2000,
    ),
}


def get_config(name: str) -> Pix2PixConfig:
    if name not in CONFIGS:
        raise IXGSError(f"unknown model config {name!r}; choose one of {', '.join(CONFIGS)}")
    return CONFIGS[name]


@dataclass(frozen=True)
class Normalization:
    """How images enter and leave the network (see module)."""

    target_scale: float
    input_percentiles: tuple[float, float] = (1.0, 99.0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Normalization:
        return cls(float(values["target_scale"]), tuple(float(p) for p in values["input_percentiles"]))

    def normalize_input(self, image: np.ndarray) -> np.ndarray:
        low, high = np.percentile(image, self.input_percentiles)
        return (2.0 * (image - low) / max(float(high - low), 1e-8) - 1.0).astype(np.float32)

    def normalize_target(self, line_integral: np.ndarray) -> np.ndarray:
        return (2.0 * np.asarray(line_integral) / self.target_scale - 1.0).astype(np.float32)

    def denormalize_output(self, output: np.ndarray) -> np.ndarray:
        return ((np.asarray(output) + 1.0) * 0.5 * self.target_scale).astype(np.float32)


def _channels(config: Pix2PixConfig, level: int) -> int:
    return min(config.base_channels * 2**level, config.max_channels)


def _norm(channels: int) -> nn.Module:
    # Instance normalization: pix2pix's batch norm at batch size 1, and the same at inference.
    return nn.InstanceNorm2d(channels, affine=True)


class UNetGenerator(nn.Module):
    """U-Net: ``depth`` stride-2 4x4 convolutions down, transposed convolutions up, each decoder
    level concatenated with the encoder level of the same size; tanh output."""

    def __init__(self, config: Pix2PixConfig) -> None:
        super().__init__()
        depth = config.depth
        self.multiple = 2**depth
        self.down = nn.ModuleList()
        for level in range(depth):
            out = _channels(config, level)
            if level == 0:
                self.down.append(nn.Conv2d(1, out, 4, 2, 1))
                continue
            previous = _channels(config, level - 1)
            layers: list[nn.Module] = [nn.LeakyReLU(0.2), nn.Conv2d(previous, out, 4, 2, 1, bias=False)]
            if level < depth - 1:  # the innermost feature map may be 1x1: no normalization there
                layers.append(_norm(out))
            self.down.append(nn.Sequential(*layers))
        self.up = nn.ModuleList()
        for level in range(depth - 1, 0, -1):
            into = _channels(config, level) * (1 if level == depth - 1 else 2)
            out = _channels(config, level - 1)
            layers = [nn.ReLU(), nn.ConvTranspose2d(into, out, 4, 2, 1, bias=False), _norm(out)]
            if config.dropout > 0 and level >= depth - 3:
                layers.append(nn.Dropout(config.dropout))
            self.up.append(nn.Sequential(*layers))
        self.last = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(2 * _channels(config, 0), 1, 4, 2, 1), nn.Tanh())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        pad_h = (-height) % self.multiple
        pad_w = (-width) % self.multiple
        x = F.pad(image, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else image
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = torch.cat([block(x), skip], dim=1)
        return self.last(x)[..., :height, :width]


class PatchDiscriminator(nn.Module):
    """PatchGAN: a grid of real/fake logits, each judging one patch of (input, output) pairs."""

    def __init__(self, config: Pix2PixConfig) -> None:
        super().__init__()
        width = config.disc_channels
        layers: list[nn.Module] = [nn.Conv2d(2, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        for layer in range(1, config.disc_layers + 1):
            previous, width = width, config.disc_channels * min(2**layer, 8)
            stride = 2 if layer < config.disc_layers else 1
            layers += [nn.Conv2d(previous, width, 4, stride, 1, bias=False), _norm(width), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, source: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([source, output], dim=1))


def init_weights(module: nn.Module) -> None:
    """pix2pix's initialization: N(0, 0.02) convolutions, N(1, 0.02) normalization scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.InstanceNorm2d) and module.weight is not None:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


@dataclass
class StandardizationModel:
    """A trained generator with its config and normalization."""

    config: Pix2PixConfig
    normalization: Normalization
    generator: UNetGenerator
    info: dict

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @torch.no_grad()
    def standardize(self, images: np.ndarray) -> np.ndarray:
        """Line integrals (V, H, W) of the bone-enhanced map from radiographs (V, H, W), one view at a time."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3:
            raise IXGSError(f"standardization needs images shaped (views, height, width), got {images.shape}")
        self.generator.eval()
        outputs = []
        for image in images:
            x = torch.from_numpy(self.normalization.normalize_input(image))[None, None].to(self.device)
            outputs.append(self.normalization.denormalize_output(self.generator(x)[0, 0].cpu().numpy()))
        return np.stack(outputs)


def save_model(path: str | Path, model: StandardizationModel) -> Path:
    """Write the model file atomically (dict of strings and tensors; see module)."""
    state = {k: v.detach().cpu() for k, v in model.generator.state_dict().items()}
    record = {
        "format": MODEL_FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "normalization": json.dumps(model.normalization.to_dict()),
        "info": json.dumps(model.info),
        "generator": state,
    }
    path = Path(path)
    with atomic_output(path) as temp:
        torch.save(record, temp)
    return path


def _reason(error: Exception) -> str:
    """``Type: first line of the message`` (the message may be empty, e.g. torch on an empty file)."""
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0][:160]}" if lines else type(error).__name__


def _bad_model(path: Path, problem: str) -> IXGSError:
    return IXGSError(
        f"{path}: {problem}; it is not a usable IXGS standardization model. Train one with "
        "`ixgs standardize train PAIRS_DIR -o MODEL` (docs/standardization.md)"
    )


def load_model(path: str | Path, device: str | torch.device = "cpu") -> StandardizationModel:
    """Read a model file (``weights_only``: tensors and strings only); clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise IXGSError(f"{path}: model file not found; train one with `ixgs standardize train`")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for damaged or foreign files
        raise _bad_model(path, f"cannot be read ({_reason(error)})") from None
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise _bad_model(path, f'expected format "{MODEL_FORMAT}", found {found!r}')
    try:
        config = Pix2PixConfig.from_dict(json.loads(record["config"]))
        normalization = Normalization.from_dict(json.loads(record["normalization"]))
        info = json.loads(record.get("info", "{}"))
        if not isinstance(info, dict):
            raise TypeError(f"info must be a JSON object, got {type(info).__name__}")
        generator = UNetGenerator(config)
        generator.load_state_dict(record["generator"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise _bad_model(path, f"damaged contents ({_reason(error)})") from None
    return StandardizationModel(config, normalization, generator.to(device).eval(), info)
