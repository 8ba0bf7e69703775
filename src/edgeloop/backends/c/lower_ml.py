"""ONNX-ML operators (scikit-learn models): linear models, scalers, tree ensembles."""

from __future__ import annotations

import numpy as np

from edgeloop.backends.c import kernel_lib
from edgeloop.backends.c.lower_base import ints


class MLOps:
    def _post(self, node, name, at):
        p = at.get("post_transform", b"NONE")
        p = p.decode() if isinstance(p, bytes) else p
        post = kernel_lib.enum("post_transform", "EL_POST_")
        if p not in post:
            self.unsupported(node, name, f"post_transform {p} is not supported")
        return post[p]

    def _rows(self, x):
        xs = self.shape(x)
        return (int(np.prod(xs[:-1])) if len(xs) > 1 else 1), xs[-1]

    def op_Scaler(self, node, name):
        self._check_float(node, name, [node.input[0]])
        at = self.attrs(node)
        rows, F = self._rows(node.input[0])
        off = np.broadcast_to(np.asarray(at.get("offset", [0.0]), np.float32), (F,))
        sc = np.broadcast_to(np.asarray(at.get("scale", [1.0]), np.float32), (F,))
        self.emit("scaler", name, node.op_type, x=("in", node.input[0]), y=("out", node.output[0]),
                  offset=("const", np.ascontiguousarray(off)), scale=("const", np.ascontiguousarray(sc)),
                  **ints(rows=rows, F=F))

    def op_Normalizer(self, node, name):
        self._check_float(node, name, [node.input[0]])
        norm = self.attrs(node).get("norm", b"MAX")
        norm = norm.decode() if isinstance(norm, bytes) else norm
        rows, F = self._rows(node.input[0])
        self.emit("normalizer", name, node.op_type, x=("in", node.input[0]), y=("out", node.output[0]),
                  **ints(rows=rows, F=F, norm=kernel_lib.constant("normalizer", f"EL_NORM_{norm}")))

    def _labels(self, node, name, at):
        if "classlabels_strings" in at:
            self.unsupported(node, name, "string class labels are not supported (use integer labels)")
        return np.asarray(at.get("classlabels_ints", at.get("classlabels_int64s", [])), np.int64)

    def op_LinearClassifier(self, node, name):
        self._check_float(node, name, [node.input[0]])
        at = self.attrs(node)
        classes = self._labels(node, name, at)
        rows, F = self._rows(node.input[0])
        coef = np.asarray(at["coefficients"], np.float32).reshape(-1, F)
        R = coef.shape[0]
        icpt = np.asarray(at.get("intercepts", [0.0] * R), np.float32)
        binary = int(R == 1 and len(classes) == 2)
        if not binary and R != len(classes):
            self.unsupported(node, name, "LinearClassifier with classes != coefficient rows")
        if at.get("multi_class", 0) and binary:
            self.unsupported(node, name, "multi_class binary LinearClassifier is not supported")
        self.emit("linear_classifier", name, node.op_type, x=("in", node.input[0]),
                  label=("out", node.output[0]), scores=("out", node.output[1]), coef=("const", coef),
                  icpt=("const", icpt), classes=("const", classes),
                  **ints(rows=rows, F=F, R=R, n_classes=len(classes), mode=self._post(node, name, at),
                         binary=binary))

    def op_LinearRegressor(self, node, name):
        self._check_float(node, name, [node.input[0]])
        at = self.attrs(node)
        rows, F = self._rows(node.input[0])
        T = int(at.get("targets", 1))
        coef = np.asarray(at["coefficients"], np.float32).reshape(T, F)
        icpt = np.asarray(at.get("intercepts", [0.0] * T), np.float32)
        self.emit("linear_regressor", name, node.op_type, x=("in", node.input[0]),
                  y=("out", node.output[0]), coef=("const", coef), icpt=("const", icpt),
                  **ints(rows=rows, F=F, T=T, mode=self._post(node, name, at)))

    def _trees(self, node, name, at, prefix):
        for k in ("nodes_values_as_tensor", "base_values_as_tensor", f"{prefix}_weights_as_tensor"):
            if k in at:
                self.unsupported(node, name, f"attribute {k} is not supported")
        tids = list(at["nodes_treeids"])
        nids = list(at["nodes_nodeids"])
        index = {(t, n): i for i, (t, n) in enumerate(zip(tids, nids))}
        modes = [m.decode() if isinstance(m, bytes) else m for m in at["nodes_modes"]]
        codes = kernel_lib.enum("tree_ensemble", "EL_TREE_")
        for m in modes:
            if m not in codes:
                self.unsupported(node, name, f"tree node mode {m} is not supported")
        n = len(nids)
        tchild = np.zeros(n + 1, np.int32)
        fchild = np.zeros(n + 1, np.int32)
        for i in range(n):
            if modes[i] != "LEAF":
                tchild[i] = index[(tids[i], at["nodes_truenodeids"][i])]
                fchild[i] = index[(tids[i], at["nodes_falsenodeids"][i])]
        roots, seen = [], set()
        for i, t in enumerate(tids):
            if t not in seen:
                seen.add(t)
                children = {int(at["nodes_truenodeids"][j]) for j in range(n) if tids[j] == t and modes[j] != "LEAF"} | \
                           {int(at["nodes_falsenodeids"][j]) for j in range(n) if tids[j] == t and modes[j] != "LEAF"}
                root = next(j for j in range(n) if tids[j] == t and nids[j] not in children)
                roots.append(root)
        # leaf weights grouped by node
        wt = list(at[f"{prefix}_treeids"])
        wn = list(at[f"{prefix}_nodeids"])
        wid = list(at[f"{prefix}_ids"])
        ww = list(at[f"{prefix}_weights"])
        per: dict[int, list] = {}
        for t, nn, c, w in zip(wt, wn, wid, ww):
            per.setdefault(index[(t, nn)], []).append((c, w))
        first = np.zeros(n + 2, np.int32)
        targets, weights = [], []
        for i in range(n + 1):
            first[i] = len(targets)
            for c, w in per.get(i, []):
                targets.append(c)
                weights.append(w)
        first[n + 1] = len(targets)
        mvt = at.get("nodes_missing_value_tracks_true", [0] * n)
        feat = np.asarray(list(at["nodes_featureids"]) + [0], np.int32)
        thr = np.asarray(list(at["nodes_values"]) + [0.0], np.float32)
        mode = np.asarray([codes[m] for m in modes] + [codes["LEAF"]], np.uint8)
        return dict(roots=np.asarray(roots, np.int32), feat=feat, thr=thr, mode=mode,
                    tchild=tchild, fchild=fchild, mvt=np.asarray(list(mvt) + [0], np.uint8),
                    first=first, targets=np.asarray(targets or [0], np.int32),
                    weights=np.asarray(weights or [0.0], np.float32), n_targets=len(set(wid)),
                    ids=set(wid))

    def _tree_call(self, node, name, tr, label, scores, T, base, aggregate, post, binary, classes):
        rows, F = self._rows(node.input[0])
        base_arg = ("const", np.asarray(base, np.float32)) if base is not None else ("null",)
        self.emit("tree_ensemble", name, node.op_type, x=("in", node.input[0]), label=label,
                  scores=("out", scores), acc=("scratch", "double", max(T, 1)),
                  roots=("const", tr["roots"]), feat=("const", tr["feat"]), thr=("const", tr["thr"]),
                  mode=("const", tr["mode"]), tchild=("const", tr["tchild"]),
                  fchild=("const", tr["fchild"]), mvt=("const", tr["mvt"]),
                  leaf_first=("const", tr["first"]), leaf_target=("const", tr["targets"]),
                  leaf_weight=("const", tr["weights"]), base=base_arg, classes=classes,
                  **ints(rows=rows, F=F, n_roots=len(tr["roots"]), T=T, aggregate=aggregate,
                         post=post, binary=binary))

    def op_TreeEnsembleClassifier(self, node, name):
        self._check_float(node, name, [node.input[0]])
        at = self.attrs(node)
        classes = self._labels(node, name, at)
        tr = self._trees(node, name, at, "class")
        post = self._post(node, name, at)
        C = len(classes)
        binary = int(C == 2 and tr["ids"] <= {0, 1} and len(tr["ids"]) == 1)
        if binary and tr["ids"] != {1} and tr["ids"] != {0}:
            binary = 0
        if binary and tr["ids"] == {0}:
            tr["targets"][:] = 0
        base = at.get("base_values")
        if base is not None and binary and len(base) == 2:
            self.unsupported(node, name, "binary trees with two base values are not supported")
        if binary and post not in (0, 2):
            self.unsupported(node, name, "binary TreeEnsembleClassifier with this post_transform")
        self._tree_call(node, name, tr, ("out", node.output[0]), node.output[1], C if not binary else 1,
                        base, 0, post, binary, ("const", classes))

    def op_TreeEnsembleRegressor(self, node, name):
        self._check_float(node, name, [node.input[0]])
        at = self.attrs(node)
        tr = self._trees(node, name, at, "target")
        agg = at.get("aggregate_function", b"SUM")
        agg = agg.decode() if isinstance(agg, bytes) else agg
        aggs = kernel_lib.enum("tree_ensemble", "EL_AGG_")
        if agg not in aggs:
            self.unsupported(node, name, f"aggregate_function {agg} is not supported")
        T = int(at.get("n_targets", 1))
        self._tree_call(node, name, tr, ("null",), node.output[0], T, at.get("base_values"),
                        aggs[agg], self._post(node, name, at), 0, ("null",))

