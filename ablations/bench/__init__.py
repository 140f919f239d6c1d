"""``python -m ablations.bench``: measurements side by side in one run (``sections``: the sections and their
Markdown; ``gpu``: the sections that need a GPU)."""
