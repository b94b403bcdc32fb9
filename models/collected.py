"""Which collected examples a retrain learns from, and which judge it.

Rows come from the examples table (one per judged feedback event, plus reviewed labels). The rules:
- one row per event id: the latest label wins (a reviewed label over the feedback it corrects), the
  first verdict decides the row's role;
- withheld rows are left out, and so is every row of a user withheld as untrusted;
- rows the feedback service held back were never learned online: they evaluate, so the champion
  (which may have learned the rest online) and the retrain are judged on rows neither trained on;
- a label the model lacks becomes a class only with enough support (examples and distinct users),
  so one user cannot invent an intent; a share of its rows, chosen by event id, evaluates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

TRAIN_VERDICTS = ("learned", "unknown_label", "reviewed")
EVAL_VERDICTS = ("held_back",)
UNTRUSTED = "untrusted_user"


@dataclass(frozen=True)
class Support:
    min_examples: int = 20
    min_users: int = 5
    eval_share: float = 0.2  # of a new label's rows, chosen by event id


@dataclass(frozen=True)
class Selection:
    train: pd.DataFrame  # text, label, truth, user_id, ts (UTC), event_id
    eval: pd.DataFrame
    admitted: dict[str, int]  # new labels that became classes, with their rows
    refused: dict[str, tuple[int, int]]  # new labels without enough support: (rows, users)
    left_out: dict[str, int]  # rows not used, by why

    @property
    def rows(self) -> int:
        return len(self.train) + len(self.eval)

    def describe(self) -> str:
        parts = [f"{len(self.train):,} collected examples train, {len(self.eval):,} evaluate"]
        if self.admitted:
            parts.append("new classes " + ", ".join(f"{k} ({v})" for k, v in sorted(self.admitted.items())))
        if self.refused:
            parts.append("too little support for " + ", ".join(
                f"{k} ({n} rows, {u} users)" for k, (n, u) in sorted(self.refused.items())))
        if self.left_out:
            parts.append("left out: " + ", ".join(f"{v:,} {k}" for k, v in sorted(self.left_out.items())))
        return "; ".join(parts)


def select(rows: pd.DataFrame, classes: Sequence[str], support: Support) -> Selection:
    """Split the examples table's `rows` into training and evaluation rows for a model over `classes` plus
    the new labels with enough support."""
    left_out: dict[str, int] = {}
    untrusted = set(rows.loc[rows["reason"] == UNTRUSTED, "user_id"].dropna())
    keep = ~rows["user_id"].isin(untrusted)
    if (~keep).any():
        left_out["rows of untrusted users"] = int((~keep).sum())
    rows = rows[keep].sort_values(["written_at", "feedback_ts", "event_id"], kind="stable")
    withheld = rows["verdict"] == "withheld"
    if withheld.any():
        left_out["withheld"] = int(withheld.sum())
    rows = rows[~withheld]
    first_verdict = rows.groupby("event_id")["verdict"].first()
    latest = rows.groupby("event_id").tail(1).set_index("event_id")
    if len(rows) > len(latest):
        left_out["superseded by a later label"] = len(rows) - len(latest)
    latest = latest.assign(role=first_verdict.reindex(latest.index).map(
        lambda v: "eval" if v in EVAL_VERDICTS else "train")).reset_index()

    known = set(classes)
    new = latest[~latest["label"].isin(known)]
    admitted: dict[str, int] = {}
    refused: dict[str, tuple[int, int]] = {}
    for label, group in new.groupby("label"):
        users = group["user_id"].nunique()
        if len(group) >= support.min_examples and users >= support.min_users:
            admitted[str(label)] = len(group)
        else:
            refused[str(label)] = (len(group), users)
    latest = latest[latest["label"].isin(known | set(admitted))]
    new_rows = ~latest["label"].isin(known)
    latest.loc[new_rows, "role"] = latest.loc[new_rows, "event_id"].map(
        lambda e: "eval" if _unit(e) < support.eval_share else "train")

    latest = latest.sort_values(["feedback_ts", "event_id"], kind="stable")
    frame = pd.DataFrame({
        "text": latest["text"].astype(str), "label": latest["label"].astype(str),
        "truth": latest["label"].astype(str), "user_id": latest["user_id"].fillna("").astype(str),
        "ts": pd.to_datetime(latest["feedback_ts"], unit="s", utc=True), "event_id": latest["event_id"],
        "role": latest["role"]})
    train, evaluate = (frame[frame["role"] == role].drop(columns="role").reset_index(drop=True)
                       for role in ("train", "eval"))
    return Selection(train, evaluate, admitted, refused, left_out)


def _unit(key: str) -> float:
    """A stable number in [0, 1) for `key`: the same event lands on the same side in every retrain."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
