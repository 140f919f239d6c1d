"""The orchestration of ``python -m ablations.run``: the plan of the flags (``planned``), the dry run (``dryrun``),
and a run's three steps (``run``: prepare, execute, finalize)."""
