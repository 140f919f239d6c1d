"""The rows of a results folder's trials table that a decision reads: ``finished`` trials, ``normalise_trials``
(the columns an older trials.parquet lacks), and ``best_config_ids``, the rule that picks each level's best config
on validation accuracy only. The collector keeps the best configs' weights by it, the report shows them by it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def finished(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of finished trials."""
    if not len(df) or "status" not in df:
        return df.iloc[0:0]
    return df[df["status"] == "finished"]


def best_config_ids(df: pd.DataFrame) -> dict[str, str]:
    """Each level's best config: highest mean validation accuracy over its finished seeds (never test).

    Ties go to the level's reference config, then to the config with more finished seeds, then plan order.
    Rows of axes that do not compete (``competes`` False: the seed recipes) are not candidates.
    """
    df = normalise_trials(df)
    fin = finished(df)
    if len(fin):
        fin = fin[fin["competes"]]
    if not len(fin) or "val_acc" not in fin:
        return {}
    fin = fin[np.isfinite(pd.to_numeric(fin["val_acc"], errors="coerce"))]
    if not len(fin):
        return {}
    fin = fin.assign(_order=np.arange(len(fin)), val_acc=pd.to_numeric(fin["val_acc"]))
    per_seed = fin.drop_duplicates(["level", "config_id", "seed"])
    g = per_seed.groupby(["level", "config_id"], sort=False)
    cand = pd.DataFrame({"val": g["val_acc"].mean(), "n": g["seed"].nunique(), "order": g["_order"].min()})
    refs = fin.groupby(["level", "config_id"], sort=False)["is_reference"].any()
    cand["ref"] = refs.reindex(cand.index).fillna(False).astype(bool)
    cand = cand.reset_index().sort_values(["level", "val", "ref", "n", "order"],
                                          ascending=[True, False, False, False, True])
    return {lv: str(g_.iloc[0]["config_id"]) for lv, g_ in cand.groupby("level", sort=False)}


def normalise_trials(df: pd.DataFrame) -> pd.DataFrame:
    """Fill columns an older or partial trials.parquet may lack."""
    if not len(df):
        return df
    df = df.copy()
    for col, default in (("level", "?"), ("axis", "reference"), ("arm", "reference"), ("seed", 0),
                         ("status", "pending"), ("error", None), ("competes", True)):
        if col not in df:
            df[col] = default
    if "is_reference" not in df:
        df["is_reference"] = df["axis"] == "reference"
    df["is_reference"] = df["is_reference"].fillna(False).astype(bool)
    df["competes"] = df["competes"].fillna(True).astype(bool)
    if "config_id" not in df:
        df["config_id"] = [_config_id_of(r) for r in df.to_dict("records")]
    df["config_id"] = df["config_id"].fillna(df["trial_id"])
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").fillna(0).astype(int)
    return df


def _config_id_of(row: dict) -> str:
    """For rows written before trials.parquet had a config_id column (or rows that cannot be parsed)."""
    try:
        from pipeline.config import TrialConfig

        return TrialConfig.from_row(row).config_id
    except Exception:
        return str(row["trial_id"])
