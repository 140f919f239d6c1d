"""The plan a command's flags make, checked once: shared by the dry run and a run's ``prepare``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError

from ablations.plan import grids
from ablations.plan.overrides import parse_overrides
from ablations.session import rounds as A


def split_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


@dataclass(frozen=True)
class Planned:
    """The grid's plan for this command, the seeds it plans per config, and ``--until-decided``'s settings."""

    plan: grids.Plan
    seeds: dict[str, int]
    settings: A.Settings | None


def planned(args, adaptive_before: dict | None = None) -> Planned:
    """The plan of the command's flags, checked once (``adaptive_before``: the run folder's adaptive record, which
    --until-decided must agree with)."""
    name, spec = grids.load_spec(args.grid)
    plan = grids.expand(name, spec, seeds=args.seeds, levels=split_list(args.levels),
                        axes=split_list(args.axes), overrides=parse_overrides(args.overrides))
    if args.retries < 0:
        raise ConfigError(f"--retries must be 0 or more, got {args.retries}")
    for cfg in plan.trials().values():
        if cfg.batch_size < 2 * args.workers:
            raise ConfigError(f"batch_size={cfg.batch_size} gives fewer than 2 images per worker with --workers "
                              f"{args.workers}")
        if cfg.weights and not Path(cfg.weights).expanduser().is_file():
            raise ConfigError(f"weights={cfg.weights}: file not found (it must exist on every node)")
    seeds = A.planned_seeds(plan)
    settings = A.settings_from_args(args, min(seeds.values()))
    if settings is not None:
        settings.check(max(seeds.values()), adaptive_before)
    return Planned(plan, seeds, settings)
