"""AIDI on Kubernetes: the core library and the workstation CLIs."""

__version__ = "0.1.0"
