"""The Ray layer: everything that runs a plan's trials on a Ray cluster, and the only code that imports Ray.

* ``cluster``: connecting, what Ray says of the cluster, the autoscaler's demand (and its keeper);
* ``preflight``: a node that can run a trial, CUDA, NCCL and the storage checked there before anything starts;
* ``tune``: Tune runs a session's trials in waves along ``init_from`` lineage (``TuneRun``); ``recorder``: the Tune
  callback that feeds the session (``ablations.session.events``); ``spec``: what crosses the Tune boundary;
* ``trainable``: what runs inside Ray (a trial in its Tune actor, or as a Ray Train run) and ``TrialStore``;
* ``torch_backend``: Ray Train's torch set-up without torch in the controller; ``trackers``: TensorBoard, MLflow, W&B;
* ``checks``: the cluster checks of ``python -m ablations.check``; ``measure``: the bench's measurements of Ray.
"""
