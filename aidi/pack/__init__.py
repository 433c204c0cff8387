"""Packing raw adas_mini scenes into MXNet RecordIO (docs/packing.md)."""

from aidi.pack.pack_config import PackConfig, load_config
from aidi.pack.packer import MANIFEST, REJECTS, PackFailed, PackResult, pack_scene, read_manifest

__all__ = ["MANIFEST", "REJECTS", "PackConfig", "PackFailed", "PackResult", "load_config", "pack_scene",
           "read_manifest"]
