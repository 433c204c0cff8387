"""A TrainJob's run, shared by both runners (the operator and the local cluster): the pods it becomes
(``podspec``), the steps those pods run around the trainer (``podsteps``), the code package they fetch
(``codepkg``) and the lifecycle that decides what happens next (``lifecycle``)."""
