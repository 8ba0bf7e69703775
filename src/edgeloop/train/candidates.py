"""The candidate models, smallest family first.

Each candidate is a name, the tasks and data kinds it applies to, and a
builder returning an unfitted scikit-learn estimator (or, for ``cnn``, the
marker that the PyTorch trainer handles it). Configurations are kept small on
purpose: the point is the smallest model that is good enough on a device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Candidate:
    name: str
    family: str  # "sklearn" or "torch"
    tasks: tuple[str, ...]
    kinds: tuple[str, ...] = ("table", "image", "series")
    build: Callable[..., Any] | None = field(default=None, compare=False)
    description: str = ""


def _linear(task: str, seed: int):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if task == "classification":
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=300, random_state=seed))
    return make_pipeline(StandardScaler(), Ridge(alpha=1.0))


def _tree(task: str, seed: int):
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    cls = DecisionTreeClassifier if task == "classification" else DecisionTreeRegressor
    return cls(max_depth=6, min_samples_leaf=2, random_state=seed)


def _forest(task: str, seed: int):
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    cls = RandomForestClassifier if task == "classification" else RandomForestRegressor
    return cls(n_estimators=10, max_depth=8, min_samples_leaf=2, random_state=seed, n_jobs=1)


def _mlp(task: str, seed: int):
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if task == "classification":
        net = MLPClassifier(hidden_layer_sizes=(32,), alpha=1e-3, max_iter=200, early_stopping=True,
                            random_state=seed)
    else:
        net = MLPRegressor(hidden_layer_sizes=(32,), alpha=1e-3, max_iter=2000, learning_rate_init=0.01,
                           early_stopping=True, random_state=seed)
    return make_pipeline(StandardScaler(), net)


def _stats(inner):
    def build(task: str, seed: int, channels: int = 1):
        from sklearn.pipeline import Pipeline

        from edgeloop.train.features import SeriesStats

        est = inner(task, seed)
        steps = est.steps if hasattr(est, "steps") else [(type(est).__name__.lower(), est)]
        return Pipeline([("seriesstats", SeriesStats(channels))] + list(steps))

    return build


CANDIDATES: list[Candidate] = [
    # time series: per-channel mean/std/min/max (computed inside the graph), then a small model
    Candidate("stats+linear", "sklearn", ("classification", "regression"), kinds=("series",),
              build=_stats(_linear), description="per-channel mean/std/min/max + linear model"),
    Candidate("stats+tree", "sklearn", ("classification", "regression"), kinds=("series",),
              build=_stats(_tree), description="per-channel mean/std/min/max + decision tree, depth <= 6"),
    Candidate("stats+forest", "sklearn", ("classification", "regression"), kinds=("series",),
              build=_stats(_forest), description="per-channel mean/std/min/max + random forest, 10 x depth <= 8"),
    Candidate("linear", "sklearn", ("classification", "regression"), build=_linear,
              description="standardize + logistic regression (classes) or ridge regression"),
    Candidate("tree", "sklearn", ("classification", "regression"), build=_tree,
              description="decision tree, depth <= 6"),
    Candidate("forest", "sklearn", ("classification", "regression"), build=_forest,
              description="random forest, 10 trees of depth <= 8"),
    Candidate("mlp", "sklearn", ("classification", "regression"), build=_mlp,
              description="standardize + MLP with one hidden layer of 32"),
    Candidate("cnn", "torch", ("classification",), kinds=("image",),
              description="small CNN: 2 conv (8, 16 filters) + max-pool + linear, PyTorch on CPU"),
]


# Rough flash cost of a tree node (feature index, threshold, two child ids as stored by ONNX's
# TreeEnsemble attributes), used only to order candidates before any is trained.
_NODE_BYTES = 20


def estimate_weight_bytes(name: str, n_features: int, n_classes: int, sample_shape: list[int]) -> int:
    """Upper-bound float32 weight bytes of a candidate for this data, to try the smallest first.

    Trees count their worst case (a full tree of the depth cap) with a class
    distribution per leaf; the statistics front end reduces a series to 4 numbers
    per channel.
    """
    outputs = max(n_classes, 1)
    f = n_features
    if name.startswith("stats+"):
        f = 4 * int(sample_shape[0])
        name = name.split("+", 1)[1]

    def tree(depth: int) -> int:
        return (2 ** (depth + 1) - 1) * _NODE_BYTES + 2 ** depth * outputs * 4

    if name == "linear":
        return 4 * (f * outputs + outputs + 2 * f)
    if name == "tree":
        return tree(6)
    if name == "forest":
        return 10 * tree(8)
    if name == "mlp":
        return 4 * (f * 32 + 32 + 32 * outputs + outputs + 2 * f)
    if name == "cnn":
        c, h, w = (list(sample_shape) + [1, 1, 1])[:3]
        return 4 * ((c * 9 + 1) * 8 + (8 * 9 + 1) * 16 + 16 * (h // 4) * (w // 4) * outputs + outputs)
    return 0


def candidates_for(task: str, kind: str, names: list[str] | None = None) -> list[Candidate]:
    from edgeloop.errors import UsageError

    known = {c.name: c for c in CANDIDATES}
    if names is not None:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UsageError(f"unknown candidate '{unknown[0]}'; choose from {', '.join(known)}")
    pool = [c for c in CANDIDATES if task in c.tasks and kind in c.kinds]
    if names is not None:
        pool = [c for c in pool if c.name in names]
        if not pool:
            raise UsageError(f"none of the candidates {', '.join(names)} applies to a {kind} {task} dataset")
    return pool
