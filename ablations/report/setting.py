"""The setting a comparison was measured in (backbone, resolution, training images, epochs), and the wording of a
verdict for it: a verdict measured at another setting than its seed's says which ("contradicted at 3 epochs on
10,000 images (EfficientNet-Lite0, 96 px)"), because it holds for what was run, not for the seed's setting."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ablations.plan.claims import SETTING_KEYS

BACKBONE_NAMES = {"efficientnet_lite0": "EfficientNet-Lite0", "resnet18": "ResNet-18", "resnet34": "ResNet-34",
                  "resnet50": "ResNet-50", "resnet101": "ResNet-101", "small_cnn": "4-block CNN"}
NOT_STATED = "not stated"


@dataclass(frozen=True)
class Setting:
    """Each value as text; where the two sides of a comparison differ, 'a vs b' (better side first)."""

    backbone: str
    resolution: str
    train_images: str
    epochs: str

    def text(self) -> str:
        return f"{self.backbone}, {self.resolution} px, {self.train_images} training images, {self.epochs} epochs"

    def scope(self) -> str:
        """'at 3 epochs on 10,000 images (EfficientNet-Lite0, 96 px)'."""
        return f"at {self.epochs} epochs on {self.train_images} images ({self.backbone}, {self.resolution} px)"

    def values(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in SETTING_KEYS}


def _norm(value: str) -> str:
    return re.sub(r"[\s,_-]+", "", str(value).lower())


def differs(here: Setting, seed: dict[str, str]) -> bool:
    """Whether the seed's setting differs from this one in any value the seed states (a seed without a stated
    setting, a claim of the grid's own, differs from nothing)."""
    return any(_norm(v) != _norm(getattr(here, k)) for k, v in seed.items() if _norm(v) != _norm(NOT_STATED))


def seed_text(seed: dict[str, str]) -> str:
    if not seed:
        return ""
    s = {k: seed.get(k, NOT_STATED) for k in SETTING_KEYS}
    res = s["resolution"] + ("" if s["resolution"] == NOT_STATED else " px")
    return f"{s['backbone']}, {res}, {s['train_images']} training images, {s['epochs']} epochs"


def _side(values: dict[str, Any], parent_epochs: Callable[[str], Any]) -> dict[str, str]:
    epochs = f"{values.get('epochs')}"
    if values.get("init_from"):  # a child continues its parent: its parent's epochs, then its own
        epochs = f"{parent_epochs(str(values['init_from']))} + {epochs}"
    backbone = str(values.get("backbone"))
    return {"backbone": BACKBONE_NAMES.get(backbone, backbone), "resolution": f"{values.get('resolution')}",
            "epochs": epochs}


def of_sides(sides: Iterable[dict[str, Any]], train_images: int | None,
             parent_epochs: Callable[[str], Any]) -> Setting:
    """The setting of a comparison from its sides' config values (better side first)."""
    parts = [_side(v, parent_epochs) for v in sides]
    merged = {k: " vs ".join(dict.fromkeys(p[k] for p in parts)) for k in ("backbone", "resolution", "epochs")}
    images = f"{train_images:,}" if train_images else "?"
    return Setting(merged["backbone"], merged["resolution"], images, merged["epochs"])
