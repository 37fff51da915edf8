"""Deep models on trabecular-ROI crops: Peng 2023 (3D DenseNet, three classes with focal loss; BMD regression
with MSE) and Wang 2024 (3D residual U-Net style BMD regressor).

Input (Peng 2023 "the network used the original image as a single-channel input, sampled around the ROI region",
Wang 2024 likewise): a cube of ``crop_voxels`` edge at ``CROP_SPACING_MM`` isotropic, resampled from the CT around
the centroid of the level's vertebral body, HU normalised by ``(hu - HU_CENTRE) / HU_SCALE`` and clipped. One crop
per level in ``DEEP_LEVELS`` (L1, L2: the QCT levels); a patient's prediction is the mean over its crops.

Crop sources: the CT series of a row (the node's loader + segmenter, lazily imported), or, for synthetic rows
without CT, a synthetic trabecular texture around the row's measured HU (``synthetic_crop``; SYNTHETIC only, it
exists so the deep path trains and runs end to end on the synthetic cohort).

Networks are small by default (DenseNet init_features 16, growth 8, blocks (2, 4, 4); U-Net channels (8, 16, 32)
with 2 residual units and a pooled linear head) so CPU runs stay short; the GPU is used when available.
Augmentation: random flips and ±2 voxel shifts (Peng 2023: rotation and translation).

torch and MONAI are imported inside the functions that need them (``# noqa: PLC0415``): they take seconds to
import, and the cohort commands, the feature models and the tests of this module's other parts run without them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates
from tqdm import tqdm

from service.domain.levels import VertebraLevel
from service.offline.cohort.features import series_files
from service.segmentation.settings import SegmentationSettings
from service.series.volume_loader import load_series
from service.site_models.cohort import CATEGORY_LABELS, Cohort, CohortRow, rows_hash
from service.site_models.feature_models import TARGET_LABELS, TARGETS, environment_versions, file_sha256, labels_for

logger = logging.getLogger(__name__)

DEEP_LEVELS: tuple[VertebraLevel, ...] = (VertebraLevel.L1, VertebraLevel.L2)
CROP_SPACING_MM = 1.0
HU_CENTRE = 100.0
HU_SCALE = 300.0
ARCHITECTURES: tuple[str, ...] = ("densenet", "resunet")
ARCHITECTURE_NAMES: dict[str, str] = {
    "densenet": "3D DenseNet (MONAI), Peng 2023",
    "resunet": "3D residual U-Net regressor (MONAI UNet + pooled head), Wang 2024",
}
MODEL_FILE = "model.pt"
META_FILE = "model.json"
FOCAL_GAMMA = 2.0
"""Focal loss focusing parameter (Lin 2017 default; Peng 2023 uses focal loss for class imbalance)."""


@dataclass(frozen=True)
class DeepOptions:
    epochs: int = 25
    crop_voxels: int = 24
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    device: str | None = None
    """'cpu', 'cuda', ...; None: cuda when available."""
    models: tuple[tuple[str, str], ...] = (("3class", "densenet"), ("bmd", "densenet"), ("bmd", "resunet"))
    """(target, architecture) pairs to train."""
    num_threads: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not (16 <= self.crop_voxels <= 96) or self.crop_voxels % 8:
            raise ValueError(f"crop_voxels must be a multiple of 8 within 16..96 (the DenseNet halves it four "
                             f"times), got {self.crop_voxels}")
        for target, arch in self.models:
            if target not in ("3class", "bmd") or arch not in ARCHITECTURES:
                raise ValueError(
                    f"models entries must be (3class|bmd, {'|'.join(ARCHITECTURES)}), got {(target, arch)}")


# ---------------------------------------------------------------- crops


def normalise_hu(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu - HU_CENTRE) / HU_SCALE, -3.0, 5.0).astype(np.float32)


def _row_seed(row: CohortRow, level: VertebraLevel) -> int:
    digest = hashlib.sha256(f"{row.patient_ref}|{level.name}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def synthetic_crop(trabecular_hu: float, rng: np.random.Generator, crop_voxels: int) -> np.ndarray:
    """SYNTHETIC vertebral-body crop: soft tissue, a cortical shell and trabecular texture whose ROI mean is
    ``trabecular_hu`` (the ROI being the body eroded by 3 mm, as the node measures it)."""
    c = crop_voxels
    ax = (np.arange(c) - (c - 1) / 2.0) * CROP_SPACING_MM
    x, y, _z = np.meshgrid(ax, ax, ax, indexing="ij")
    radius_mm = 0.42 * c * CROP_SPACING_MM * float(rng.uniform(0.9, 1.05))
    r = np.sqrt((x / 1.0) ** 2 + (y / 0.8) ** 2)  # elliptical body cross-section, cylinder along z
    body = r <= radius_mm
    shell = body & (r > radius_mm - 1.5)
    texture = gaussian_filter(rng.normal(0.0, 1.0, size=(c, c, c)), sigma=1.2)
    texture = texture / (texture.std() + 1e-6) * 35.0
    image = np.full((c, c, c), 40.0) + rng.normal(0.0, 12.0, size=(c, c, c))
    image[body] = trabecular_hu + texture[body]
    roi = r <= radius_mm - 3.0
    image[roi] += trabecular_hu - image[roi].mean()
    image[shell] = float(rng.uniform(450.0, 800.0)) + rng.normal(0.0, 40.0, size=int(shell.sum()))
    return image.astype(np.float32)


def crop_from_volume(volume: Any, centre_lps_mm: Sequence[float], crop_voxels: int) -> np.ndarray:
    """A cube around ``centre_lps_mm`` resampled (trilinear) at CROP_SPACING_MM along L, P, S; outside = -1000."""
    c = crop_voxels
    ax = (np.arange(c) - (c - 1) / 2.0) * CROP_SPACING_MM
    x, y, z = np.meshgrid(ax, ax, ax, indexing="ij")
    lps = np.stack([x, y, z], axis=-1) + np.asarray(centre_lps_mm, dtype=float)
    ijk = volume.lps_to_index(lps.reshape(-1, 3)).T
    values = map_coordinates(np.asarray(volume.hu, dtype=np.float32), ijk, order=1, mode="constant", cval=-1000.0)
    return values.reshape(c, c, c).astype(np.float32)


def ct_crop_source(crop_voxels: int) -> Callable[[Path], dict[VertebraLevel, np.ndarray]]:
    """Crops of DEEP_LEVELS from a CT series folder through the node's loader and segmenter (lazy imports)."""
    # the segmenter brings torch and MONAI (see the module doc): only when a row has a CT series
    from service.segmentation.inference import load_segmenter  # noqa: PLC0415

    segmenter = load_segmenter(SegmentationSettings())

    def run(folder: Path) -> dict[VertebraLevel, np.ndarray]:
        volume = load_series(series_files(folder))
        seg = segmenter.segment(volume)
        out = {}
        for level in DEEP_LEVELS:
            v = seg.vertebra(level)
            if v is None or v.cut_by_fov or v.level_uncertain:
                continue
            out[level] = crop_from_volume(volume, v.centroid_lps_mm, crop_voxels)
        return out

    return run


@dataclass
class CropProvider:
    """Crops for cohort rows: CT when the row has a series, synthetic texture for synthetic rows with HU."""

    crop_voxels: int
    _ct: Callable[[Path], dict[VertebraLevel, np.ndarray]] | None = None
    _cache: dict[str, dict[VertebraLevel, np.ndarray]] = field(default_factory=dict)

    def crops(self, row: CohortRow) -> dict[VertebraLevel, np.ndarray]:
        if row.patient_ref in self._cache:
            return self._cache[row.patient_ref]
        if row.ct_series_dir is not None:
            if self._ct is None:
                self._ct = ct_crop_source(self.crop_voxels)
            out = self._ct(row.ct_series_dir)
        elif row.synthetic:
            out = {lv: synthetic_crop(row.hu_by_level[lv], np.random.default_rng(_row_seed(row, lv)),
                                      self.crop_voxels)
                   for lv in DEEP_LEVELS if lv in row.hu_by_level}
        else:
            raise ValueError(f"row {row.row} ({row.patient_ref}): deep models need ct_series_dir (image crops)")
        self._cache[row.patient_ref] = out
        return out


# ---------------------------------------------------------------- networks


def build_network(architecture: str, out_channels: int) -> Any:
    import torch  # noqa: PLC0415
    from monai.networks.nets import DenseNet, UNet  # noqa: PLC0415

    if architecture == "densenet":
        return DenseNet(spatial_dims=3, in_channels=1, out_channels=out_channels, init_features=16, growth_rate=8,
                        block_config=(2, 4, 4), bn_size=2)
    if architecture == "resunet":
        unet = UNet(spatial_dims=3, in_channels=1, out_channels=8, channels=(8, 16, 32), strides=(2, 2),
                    num_res_units=2)
        return torch.nn.Sequential(unet, torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(),
                                   torch.nn.Linear(8, out_channels))
    raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")


def _device(requested: str | None) -> str:
    import torch  # noqa: PLC0415

    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- model


@dataclass
class DeepModel:
    name: str
    region: str
    target: str
    algorithm: str
    network: Any
    crop_voxels: int
    target_mean: float = 0.0
    target_sd: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)
    provider: CropProvider | None = None
    device: str = "cpu"

    @property
    def task(self) -> str:
        return TARGETS[self.target]

    @property
    def labels(self) -> tuple[str, ...]:
        return TARGET_LABELS.get(self.target, ())

    def _provider(self) -> CropProvider:
        if self.provider is None:
            self.provider = CropProvider(self.crop_voxels)
        return self.provider

    def predict_crops(self, crops: np.ndarray) -> np.ndarray:
        """(n, c, c, c) HU crops -> probabilities (n, classes) or BMD (n,)."""
        import torch  # noqa: PLC0415

        self.network.eval()
        outs = []
        with torch.no_grad():
            for start in range(0, len(crops), 64):
                x = torch.from_numpy(normalise_hu(crops[start:start + 64]))[:, None].to(self.device)
                y = self.network(x)
                if self.task == "classification":
                    outs.append(torch.softmax(y, dim=1).cpu().numpy())
                else:
                    outs.append(y[:, 0].cpu().numpy() * self.target_sd + self.target_mean)
        return np.concatenate(outs, axis=0) if outs else np.zeros((0,))

    def predict_rows(self, rows: Sequence[CohortRow]) -> tuple[np.ndarray, list[int]]:
        crops, owner = [], []
        for i, r in enumerate(rows):
            for crop in self._provider().crops(r).values():
                crops.append(crop)
                owner.append(i)
        if not crops:
            empty = np.zeros((0, len(self.labels))) if self.task == "classification" else np.zeros(0)
            return empty, []
        pred = self.predict_crops(np.stack(crops))
        owner_a = np.array(owner)
        kept = sorted(set(owner))
        per_row = np.stack([pred[owner_a == i].mean(axis=0) for i in kept])
        return per_row, kept

    def save(self, folder: Path) -> Path:
        import torch  # noqa: PLC0415

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MODEL_FILE
        torch.save({k: v.cpu() for k, v in self.network.state_dict().items()}, path)
        self.meta["model_sha256"] = file_sha256(path)
        (folder / META_FILE).write_text(json.dumps(self.meta, indent=2, sort_keys=True), encoding="utf-8")
        return folder


def load_deep_model(folder: Path, device: str | None = None) -> DeepModel:
    import torch  # noqa: PLC0415

    folder = Path(folder)
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    if meta.get("kind") != "deep":
        raise ValueError(f"{folder}: not a deep model (kind={meta.get('kind')!r})")
    path = folder / MODEL_FILE
    if file_sha256(path) != meta.get("model_sha256"):
        raise ValueError(f"{path}: sha256 does not match model.json")
    out_channels = len(CATEGORY_LABELS) if meta["target"] == "3class" else 1
    network = build_network(meta["algorithm"], out_channels)
    network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    dev = _device(device)
    network.to(dev)
    return DeepModel(meta["name"], meta["region"], meta["target"], meta["algorithm"], network,
                     int(meta["crop_voxels"]), float(meta["target_mean"]), float(meta["target_sd"]), meta,
                     device=dev)


def _augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = batch.copy()
    for i in range(len(out)):
        for axis in (1, 2, 3):
            if rng.random() < 0.5:
                out[i] = np.flip(out[i], axis=axis - 1)
        shift = rng.integers(-2, 3, size=3)
        out[i] = np.roll(out[i], tuple(int(s) for s in shift), axis=(0, 1, 2))
    return out


def train_deep_model(
    target: str, architecture: str, train_rows: Sequence[CohortRow], *, options: DeepOptions, seed: int = 0,
    version: str = "", provider: CropProvider | None = None, synthetic: bool = False,
) -> DeepModel:
    import torch  # noqa: PLC0415
    from monai.losses import FocalLoss  # noqa: PLC0415

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, options.num_threads))
    rng = np.random.default_rng(seed)
    provider = provider or CropProvider(options.crop_voxels)
    crops, labels_rows = [], []
    for r in train_rows:
        for crop in provider.crops(r).values():
            crops.append(crop)
            labels_rows.append(r)
    if len(crops) < 4:
        raise ValueError(f"deep {target}/{architecture}: only {len(crops)} training crops")
    X = normalise_hu(np.stack(crops))
    y = labels_for(target, labels_rows)
    classification = TARGETS[target] == "classification"
    mean = 0.0 if classification else float(np.mean(y))
    sd = 1.0 if classification else float(np.std(y) or 1.0)
    device = _device(options.device)
    network = build_network(architecture, len(CATEGORY_LABELS) if classification else 1).to(device)
    loss_fn: Any = (FocalLoss(to_onehot_y=True, use_softmax=True, gamma=FOCAL_GAMMA) if classification
                    else torch.nn.MSELoss())
    optimiser = torch.optim.AdamW(network.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=options.epochs)
    n = len(X)
    history = []
    for epoch in tqdm(range(options.epochs), desc=f"training {architecture}", unit="epoch", disable=None):
        network.train()
        order = rng.permutation(n)
        total = 0.0
        for start in range(0, n, options.batch_size):
            idx = order[start:start + options.batch_size]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            xb = torch.from_numpy(_augment(X[idx], rng))[:, None].to(device)
            if classification:
                yb = torch.from_numpy(y[idx].astype(np.int64))[:, None].to(device)
            else:
                yb = torch.from_numpy(((y[idx] - mean) / sd).astype(np.float32))[:, None].to(device)
            optimiser.zero_grad()
            loss = loss_fn(network(xb), yb)
            loss.backward()
            optimiser.step()
            total += float(loss.item()) * len(idx)
        scheduler.step()
        history.append(total / n)
        logger.info("deep %s/%s epoch %d/%d loss %.4f", target, architecture, epoch + 1, options.epochs, history[-1])
    name = f"abdomen-{target}-{architecture}"
    meta = {
        "schema_version": 1, "kind": "deep", "name": name, "version": version, "region": "abdomen",
        "task": TARGETS[target], "target": target, "labels": list(TARGET_LABELS.get(target, ())),
        "algorithm": architecture,
        "algorithm_name": ARCHITECTURE_NAMES[architecture],
        "loss": f"focal (gamma {FOCAL_GAMMA})" if classification else "MSE on z-scored BMD",
        "crop_voxels": options.crop_voxels, "crop_spacing_mm": CROP_SPACING_MM,
        "levels": [lv.name for lv in DEEP_LEVELS],
        "hu_normalisation": {"centre": HU_CENTRE, "scale": HU_SCALE},
        "target_mean": mean, "target_sd": sd, "options": asdict(options), "loss_history": history,
        "versions": {**environment_versions(), "torch": torch.__version__}, "device": device,
        "training_data_sha256": rows_hash(train_rows), "n_train_rows": len(train_rows), "n_train_crops": n,
        "seed": seed, "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "synthetic": synthetic,
        "synthetic_crops": any(r.synthetic and r.ct_series_dir is None for r in train_rows),
    }
    return DeepModel(name, "abdomen", target, architecture, network, options.crop_voxels, mean, sd, meta,
                     provider, device)


def train_deep_models(
    cohort: Cohort, *, options: DeepOptions, seed: int = 0, version: str = ""
) -> list[DeepModel]:
    provider = CropProvider(options.crop_voxels)
    train_rows = cohort.split("train")
    return [train_deep_model(target, arch, train_rows, options=options, seed=seed, version=version,
                             provider=provider, synthetic=cohort.synthetic)
            for target, arch in options.models]
