"""The kopf operator that turns TrainJobs into pods. Importing it registers the handlers."""

import sys

if "kopf" not in sys.modules and "kubernetes" not in sys.modules:
    # kopf imports the kubernetes client whenever it is installed, only to recognise the client's model
    # classes, which we never pass it: ~12 MB of the operator's memory for nothing. Hidden while kopf is
    # imported; a kubeconfig that only the client understands (exec plugins) still imports it when it
    # logs in (startup.connection_info).
    sys.modules["kubernetes"] = None  # type: ignore[assignment]  # an ImportError for kopf's optional import
    try:
        import kopf  # noqa: F401
    finally:
        del sys.modules["kubernetes"]

from aidi_operator import health, pods, startup, trainjobs  # noqa: F401
