"""The dataspace: versioned datasets on an object store (S3 via ``minio``, or a local folder).

    from aidi.dataspace import DataspaceConfig, open_dataspace

    ds = open_dataspace(DataspaceConfig.load())            # ~/.olympus/config.yaml (pods: .from_env())
    result = ds.upload_dataset("adasmini_4pe", "trainset", "data/rec/")   # -> result.version == "v1"
    manifest = ds.resolve("adasmini_4pe", "trainset", "latest")
    ds.download_dataset("adasmini_4pe", "trainset", "latest", "/data_space/input/adasmini_4pe/trainset/v1")
    ds.store.put_file("codepkgs/team-a/job/abc.tar.gz.enc", "pkg.enc")   # any other prefix: the raw store

Layout and guarantees: docs/architecture.md ("Dataspace layout") and docs/dataspace.md.
"""

from __future__ import annotations

from aidi.dataspace.datasets import (
    BINDING_TYPES,
    DATASET_TYPES,
    LATEST,
    DatasetSummary,
    Dataspace,
    FileEntry,
    Manifest,
    TransferProgress,
    TransferResult,
)
from aidi.dataspace.endpoint import DataspaceConfig
from aidi.dataspace.store import ObjectInfo, ObjectStore

__all__ = [
    "BINDING_TYPES",
    "DATASET_TYPES",
    "LATEST",
    "DatasetSummary",
    "Dataspace",
    "DataspaceConfig",
    "FileEntry",
    "Manifest",
    "ObjectInfo",
    "ObjectStore",
    "TransferProgress",
    "TransferResult",
    "open_dataspace",
    "open_store",
]


def open_store(config: DataspaceConfig, jobs: int = 8) -> ObjectStore:
    """The object store ``config`` names: ``LocalStore`` for ``file://``, else ``S3Store`` (minio).
    ``jobs`` sizes the connection pool for that many parallel transfers."""
    if config.is_local:
        from aidi.dataspace.local import LocalStore

        return LocalStore(config.local_root)
    from aidi.dataspace.s3 import S3Store

    return S3Store(config, jobs=jobs)


def open_dataspace(config: DataspaceConfig | None = None, jobs: int = 8, uploader: str | None = None) -> Dataspace:
    """A ``Dataspace`` on the store ``config`` names (default: ``DataspaceConfig.load()``). Nothing is
    contacted until the first call; ``ds.store.check()`` verifies the connection up front."""
    config = config or DataspaceConfig.load()
    return Dataspace(open_store(config, jobs=jobs), uploader=uploader or config.access_key or None, jobs=jobs)
