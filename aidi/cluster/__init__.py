"""The cluster side of `traincli`: ``gpucluster.yaml`` (``config``), the Kubernetes calls (``kube``), submit,
follow and stop (``submit``, ``jobs``), and failure reasons in plain words (``explain``)."""
