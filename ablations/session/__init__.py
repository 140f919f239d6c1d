"""A running run's state, Ray-free: a trial's events into the ledger, collector and progress (``events``), the
status lines and ETA (``progress``), and the rounds of ``--until-decided`` (``rounds``)."""
