"""Which segmentation model the benchmarks run: the trained bundle when there is one, else an untrained network
of the same architecture (same sizes, same compute; its output is useless, so bench.pipeline falls back to the
phantom's true labels for the later stages)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench import REPO_ROOT

TRAINED_BUNDLE = REPO_ROOT / "models" / "vertebra_seg"


@dataclass(frozen=True)
class ModelChoice:
    bundle_dir: Path
    trained: bool

    @property
    def description(self) -> str:
        if self.trained:
            return f"trained bundle {self.bundle_dir}"
        return ("no trained model (models/vertebra_seg/models/model.pt missing): untrained network of the same "
                "architecture, timed; later stages on the phantom's true labels")


def choose_model(work_dir: Path) -> ModelChoice:
    if (TRAINED_BUNDLE / "models" / "model.pt").is_file() and (TRAINED_BUNDLE / "configs" / "inference.json").is_file():
        return ModelChoice(TRAINED_BUNDLE, True)
    bundle = work_dir / "untrained_bundle"
    if not (bundle / "models" / "model.pt").is_file():
        # torch and the training code load only when there is no trained bundle (bench.run imports this module)
        import torch  # noqa: PLC0415

        from service.offline.training.segmentation import write_bundle  # noqa: PLC0415
        from service.segmentation.model import build_network  # noqa: PLC0415

        torch.manual_seed(0)
        write_bundle(bundle, build_network().state_dict(), {"note": "untrained, benchmark timing only"})
    return ModelChoice(bundle, False)
