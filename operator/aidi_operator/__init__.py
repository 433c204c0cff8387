"""The kopf operator that turns TrainJobs into pods. Importing it registers the handlers."""

import sys

if "kopf" not in sys.modules and "kubernetes" not in sys.modules:
    # kopf imports the kubernetes client whenever it is installed: to recognise the client's model classes,
    # which we never pass it, and (its default registry) to offer the client's login, which our own login
    # handler replaces: ~12 MB of the operator's memory for nothing. Hidden while kopf is imported and its
    # registry made; a kubeconfig that only the client understands (exec plugins) still imports it when it
    # logs in (startup.connection_info).
    sys.modules["kubernetes"] = None  # type: ignore[assignment]  # an ImportError for kopf's optional import
    try:
        import kopf

        kopf.get_default_registry()
    finally:
        del sys.modules["kubernetes"]

from aidi_operator import health, pods, startup, trainjobs  # noqa: F401
