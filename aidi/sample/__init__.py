"""Synthetic sample data: ``generate`` writes a small adas_mini for all 8 scenes (docs/packing.md)."""

from aidi.sample.adas_mini import DEFAULT_IMAGES, DEFAULT_SIZE, SampleSummary, generate
from aidi.sample.scenes import SCENE_NAMES, SCENES, Scene

__all__ = ["DEFAULT_IMAGES", "DEFAULT_SIZE", "SCENES", "SCENE_NAMES", "SampleSummary", "Scene", "generate"]
