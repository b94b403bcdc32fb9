"""What a demo run does: the scenario it replays, who gives feedback and when, how the stack is tuned.

Two sizes: `full` (the README's run: MiniLM, 18,000 requests, a retrain on drift) and
`small` (a few thousand requests, for CI with the tiny encoder). Everything is
seeded, so a plan fixes the requests, who answers them and after what delay; what
the stack does with them is measured.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd

from flows.config import TrainConfig
from models.traffic import TrafficConfig

Size = Literal["full", "small"]
SCENARIO = "new_phrasing"
N_USERS = 2_000


@dataclass(frozen=True)
class FeedbackModel:
    """Who gives feedback and how late: some users never do; those who do, answer most of their requests.

    Feedback is the intent the user reports (a correction when the assistant got it
    wrong, a confirmation such as not undoing the action when it got it right), so
    it does not depend on whether the answer was right: the feedback service's
    progressive accuracy and the drift monitor's window accuracy stay unbiased.
    """

    user_share: float = 0.5  # share of users who ever give feedback
    event_share: float = 0.7  # share of their requests they give feedback on
    delay_median_s: float = 2.0  # seconds from the answer to the feedback (log-normal)
    delay_sigma: float = 0.75
    delay_max_s: float = 20.0

    def gives_feedback(self, user_id: str, seed: int) -> bool:
        """Whether this user ever gives feedback (fixed per user and seed)."""
        return zlib.crc32(f"{seed}:{user_id}".encode()) % 10_000 < self.user_share * 10_000

    def plan(self, user_ids: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
        """For each request: does its feedback come, and how many seconds after the answer."""
        rng = np.random.default_rng([seed, 7])
        givers = np.array([self.gives_feedback(u, seed) for u in user_ids], dtype=bool)
        answered = givers & (rng.random(len(user_ids)) < self.event_share)
        delays = np.minimum(rng.lognormal(math.log(self.delay_median_s), self.delay_sigma, len(user_ids)),
                            self.delay_max_s)
        return answered, delays

    def describe(self) -> str:
        return (f"{self.user_share:.0%} of users give feedback, on {self.event_share:.0%} of their requests, "
                f"{self.delay_median_s:g} s after the answer (median; log-normal, at most {self.delay_max_s:g} s)")


@dataclass(frozen=True)
class DemoPlan:
    size: Size
    encoder: str  # minilm or tiny
    seed: int
    events: int  # predict requests in the replay
    rate: float  # requests per second the replay aims at
    onset: float  # drift starts at this share of the requests
    strength: float  # share of requests worded in the new way after the onset
    train_events: int
    retrain: bool
    rolling: int  # requests per accuracy window (plot, worst stretch)
    budget_s: float  # a retrain still running when the whole demo has taken this long is not waited for
    workers: int = 4  # concurrent HTTP clients
    feedback: FeedbackModel = field(default_factory=FeedbackModel)
    stack_env: dict[str, str] = field(default_factory=dict)  # LOOPLINE_* for serving and the feedback service
    data: str | None = None  # your own dataset: a few-shot champion, the rest replayed (loopline/demo/your_data.py)
    test: str | None = None  # scored through serving before and after the replay
    shots: int = 10

    @classmethod
    def make(cls, size: Size, encoder: str = "minilm", seed: int = 0, events: int | None = None,
             rate: float | None = None, retrain: bool = True, data: str | None = None, test: str | None = None,
             shots: int = 10) -> DemoPlan:
        if encoder not in ("minilm", "tiny"):
            raise ValueError(f"encoder must be minilm or tiny, got {encoder!r}")
        if data is not None:
            return cls._on_data(size, encoder, seed, events, rate, retrain, data, test, shots)
        if test is not None:
            raise ValueError("--test scores a model trained with --data: give --data too")
        tiny = encoder == "tiny"
        if size == "full":
            plan = cls(size, encoder, seed, events=18_000, rate=60.0, onset=0.25, strength=0.75,
                       train_events=2_000 if tiny else 10_000, retrain=retrain,
                       rolling=400, budget_s=14 * 60,
                       stack_env={"LOOPLINE_UPDATE_INTERVAL_S": "2", "LOOPLINE_REGISTRY_INTERVAL_S": "90",
                                  "LOOPLINE_DRIFT_WINDOW_EVENTS": "400", "LOOPLINE_DRIFT_MIN_EVENTS": "200",
                                  "LOOPLINE_DRIFT_WINDOW_S": "30"})
        elif size == "small":
            plan = cls(size, encoder, seed, events=3_000, rate=50.0, onset=0.35, strength=0.8,
                       train_events=2_000 if tiny else 6_000, retrain=retrain,
                       rolling=150, budget_s=8 * 60,
                       stack_env={"LOOPLINE_UPDATE_INTERVAL_S": "2", "LOOPLINE_REGISTRY_INTERVAL_S": "30",
                                  "LOOPLINE_DRIFT_WINDOW_EVENTS": "200", "LOOPLINE_DRIFT_MIN_EVENTS": "100",
                                  "LOOPLINE_DRIFT_WINDOW_S": "15", "LOOPLINE_MIN_HOLDOUT": "20"})
        else:
            raise ValueError(f"size must be full or small, got {size!r}")
        if events is not None:
            plan = replace(plan, events=events)
        if rate is not None:
            plan = replace(plan, rate=rate)
        if plan.events < 4 * plan.rolling:
            raise ValueError(f"{plan.events} requests are too few for {plan.rolling}-request accuracy windows "
                             f"(need at least {4 * plan.rolling})")
        if plan.rate <= 0:
            raise ValueError("rate must be positive")
        return plan.with_runner()

    @classmethod
    def _on_data(cls, size: Size, encoder: str, seed: int, events: int | None, rate: float | None, retrain: bool,
                 data: str, test: str | None, shots: int) -> DemoPlan:
        from loopline.demo.your_data import replay_requests

        if shots < 1:
            raise ValueError(f"shots must be at least 1, got {shots}")
        rolling = 800 if size == "full" else 150
        n = len(replay_requests(data, shots, seed, events))
        plan = cls(size, encoder, seed, events=n, rate=rate or (60.0 if size == "full" else 80.0), onset=1.0,
                   strength=0.0, train_events=0, retrain=retrain, rolling=rolling,
                   budget_s=(14 if size == "full" else 8) * 60, data=data, test=test, shots=shots,
                   stack_env={"LOOPLINE_UPDATE_INTERVAL_S": "2", "LOOPLINE_REGISTRY_INTERVAL_S": "90",
                              "LOOPLINE_DRIFT_WINDOW_EVENTS": "400", "LOOPLINE_DRIFT_MIN_EVENTS": "200",
                              "LOOPLINE_DRIFT_WINDOW_S": "30", "LOOPLINE_MIN_HOLDOUT": "20"})
        if plan.events < 2 * plan.rolling:
            raise ValueError(f"{data}: {plan.events} rows are left after the {shots}-shot draw; the demo compares "
                             f"the first and last {rolling} requests, so it needs at least {2 * rolling}")
        if plan.rate <= 0:
            raise ValueError("rate must be positive")
        return plan.with_runner()

    @property
    def on_data(self) -> bool:
        return self.data is not None

    @property
    def onset_index(self) -> int:
        """Request index where drift starts (the end of the replay on your data: no drift is staged)."""
        return self.events if self.on_data else self.traffic().onset_index

    def requests(self) -> pd.DataFrame:
        """The predict requests of the replay: text, user_id, label (reported), true_label (meant), after_onset."""
        if self.data is not None:
            from loopline.demo.your_data import replay_requests

            return replay_requests(self.data, self.shots, self.seed, self.events)
        from models.traffic import generate

        return generate(self.traffic()).events

    def traffic(self) -> TrafficConfig:
        """The replayed requests: another seed than training, the same users (so Feast knows them)."""
        return TrafficConfig(seed=self.seed + 1, user_seed=self.seed, n_users=N_USERS, n_events=self.events,
                             scenario=SCENARIO, onset=self.onset, strength=self.strength)

    def with_runner(self) -> DemoPlan:
        """The stack's runner (`loopline flows serve`) is the retrain: on with --retrain, with the demo's encoder.
        It trains on the champion's data plus the feedback the loop collected (the examples table)."""
        env = {"LOOPLINE_RUNNER_ENABLED": "true" if self.retrain else "false", "LOOPLINE_RUNNER_ENCODER": self.encoder}
        return replace(self, stack_env={**self.stack_env, **env})

    def train_config(self) -> TrainConfig:
        if self.data is not None:
            return TrainConfig(data_path=self.data, shots=self.shots, encoder=self.encoder, seed=self.seed)
        return TrainConfig(encoder=self.encoder, n_events=self.train_events, n_users=N_USERS, seed=self.seed)

