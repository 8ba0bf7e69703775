"""Train the demo model: a small MLP on scikit-learn's bundled digits (8x8 images, 10 classes).

Usage: python examples/train_digits.py OUT.joblib
"""

from __future__ import annotations

import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler


def main(out: str) -> None:
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    model = make_pipeline(MinMaxScaler(), MLPClassifier(hidden_layer_sizes=(32,), max_iter=1000, random_state=0))
    model.fit(x_train, y_train)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out)
    print(f"trained {out}: MinMaxScaler + MLPClassifier(64-32-10) on digits, "
          f"test accuracy {model.score(x_test, y_test):.3f} ({len(y_test)} held-out images)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
