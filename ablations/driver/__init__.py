"""The Ray layer: everything that runs a plan's trials on a Ray cluster, and only that.

* ``cluster``: resources per trial, connecting to Ray, the autoscaler's demand (and its keeper);
* ``preflight``: a node that can run a trial, CUDA, NCCL and the storage checked there before anything starts;
* ``trainable``: what runs inside Ray (a trial in its Tune actor, or as a Ray Train run) and ``TrialStore``;
* ``torch_backend``: Ray Train's torch set-up without torch in the controller;
* ``session``: Tune's events into the ``ledger`` (incremental rows), the ``collector`` (final artifacts into the
  results folder) and ``progress`` (status lines, ETA); ``trackers``: TensorBoard, MLflow, W&B;
* ``adaptive``: the rounds of ``--until-decided``.

The only package of ``ablations`` that imports Ray (with the entry points run, check and bench).
"""
