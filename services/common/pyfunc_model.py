"""The MLflow pyfunc flavor of a loopline bundle, logged as "model from code".

MLflow stores this file's source next to the bundle and runs it on load, so no
Python object is pickled into the registry: loading a version executes
reviewed code and reads numpy/ONNX files whose sha256 the manifest vouches for.

    model = mlflow.pyfunc.load_model("models:/loopline-intent@champion")
    model.predict(pd.DataFrame({"text": ["turn on wifi"]}))
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from models.features import USER_FIELDS
from models.predict import Predictor
from services.common.registry import resolve_links


class LooplineModel(PythonModel):
    """DataFrame with a `text` column (and optionally user attributes) -> intent, confidence and fallback (the
    model is unsure: answer "not understood", as serving does)."""

    def load_context(self, context: PythonModelContext) -> None:
        bundle = Path(context.artifacts["bundle"])
        resolve_links(bundle)  # a version registered by online learning shares its encoder with its base
        self.predictor = Predictor(bundle)

    # No type hints here: MLflow would try to derive a schema from them; the logged signature says it.
    def predict(self, context, model_input, params=None):
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame({"text": model_input})
        if "text" not in frame.columns:
            if frame.shape[1] != 1:
                raise ValueError("input needs a 'text' column")
            frame = frame.set_axis(["text"], axis=1)
        texts = [str(t) for t in frame["text"]]
        present = [f for f in USER_FIELDS if f in frame.columns]
        users = None
        if present:
            users = [{k: v for k, v in row.items() if pd.notna(v)} or None
                     for row in frame[present].to_dict(orient="records")]
        proba = self.predictor.predict_proba(texts, users)
        classes = self.predictor.classes
        best = proba.argmax(axis=1)
        fallback = ~self.predictor.manifest.fallback_policy.answered(proba, classes)
        return pd.DataFrame({"intent": [classes[i] for i in best],
                             "confidence": proba[range(len(best)), best], "fallback": fallback}, index=frame.index)


mlflow.models.set_model(LooplineModel())
