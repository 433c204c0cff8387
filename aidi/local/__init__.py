"""The local cluster: run a TrainJob on this machine from the pods the operator would create (docs/local.md).

A ``type: local`` entry in ``gpucluster.yaml`` makes :func:`aidi.cluster.client.connect` return a
:class:`~aidi.local.client.LocalJobClient`: the :class:`aidi.cluster.client.JobClient` interface backed by a work
folder (``store``) and one detached supervisor process per job (``supervisor``) that runs the pods' steps as
local processes (``pods``) and decides what happens next with the operator's lifecycle (``aidi.jobs.lifecycle``).
"""
