"""The kopf operator that turns TrainJobs into pods. Importing it registers the handlers."""

from aidi_operator import health, pods, startup, trainjobs  # noqa: F401
