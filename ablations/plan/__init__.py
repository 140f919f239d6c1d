"""What to run and what it costs, Ray-free: grid specs into plans (``grids``) with their ``claims``, ``--set``
(``overrides``), the comparisons a plan holds (``compared``), each trial's resources (``resources``, ``packing``,
``gpu_memory``) and the time estimate (``estimate``, ``speeds``; the measurements in ``measured.yaml``)."""
