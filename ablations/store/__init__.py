"""The results folder, Ray-free: its format (``results``), a run's plan and run.json (``runfolder``), the ledger of
trial events, the collector of final artifacts, the best-config rule (``best``), its mirror under a remote storage
and portable paths."""
