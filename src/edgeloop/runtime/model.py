"""One verified bundle loaded into an onnxruntime session (numpy + onnxruntime only).

``BundleModel.predict`` takes raw arrays, checks them against the manifest's
input spec (shape, dtype, finite values) and returns the outputs with a label
and a confidence per row.  Requests that do not fit raise :class:`InputError`
(the server turns it into a 4xx); bundles that do not load raise BundleError.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .bundle import MODEL, BundleError, check_bundle

DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16, "int64": np.int64,
          "int32": np.int32, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}
MAX_BATCH = 1024
MAX_IMAGE_PIXELS = 4_000_000  # default upload limit: 4 megapixels decode to at most ~16 MB (RGBA)


class InputError(Exception):
    """A request the model cannot take; ``status`` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.message = message
        self.status = status


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - np.max(x, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def uncertainty(probs: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-row confidence (top-1), margin (top-1 minus top-2) and entropy normalised to [0, 1]."""
    p = np.asarray(probs, dtype=np.float64)
    n_classes = p.shape[-1]
    if n_classes >= 2:
        top2 = np.sort(p, axis=-1)[..., -2:]
        conf, margin = top2[..., 1], top2[..., 1] - top2[..., 0]
    else:
        conf = p[..., 0]
        margin = np.ones_like(conf)
    q = np.clip(p, 1e-12, 1.0)
    ent = -np.sum(p * np.log(q), axis=-1)
    ent = ent / math.log(n_classes) if n_classes > 1 else np.zeros_like(ent)
    return {"confidence": conf, "margin": margin, "entropy": np.clip(ent, 0.0, 1.0)}


class BundleModel:
    """A bundle whose hashes verified, ready to predict."""

    def __init__(self, path: "str | Path", threads: int = 1, trust: Optional[str] = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.manifest, self.signature = check_bundle(self.path, trust)  # trust: public key file (--trust)
        m = self.manifest
        self.name = str(m.get("name", "model"))
        self.version = m.get("version", 1)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path / MODEL), opts,
                                                providers=_providers(ort))
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise BundleError(f"{self.path}: onnxruntime cannot load {MODEL}: {first}") from None
        self.inputs = m.get("inputs") or []
        self.outputs = m.get("outputs") or []
        if len(self.inputs) != 1:
            raise BundleError(f"{self.path}: the runtime serves single-input models; "
                              f"this one has {len(self.inputs)} inputs")
        self.input = self.inputs[0]
        self.input_dtype = np.dtype(DTYPES.get(self.input["dtype"], np.float32))
        self.sample_shape = list(self.input["shape"][1:])
        self.labels = m.get("labels")
        # A model shrunk by feature reduction reads only `kept_features` of the original
        # inputs. Clients may send either the kept columns or the full original vector; the
        # full vector is what gets captured, so `improve` can refit on every feature.
        self.kept_features = m.get("kept_features")
        self.n_features_original = m.get("n_features_original")
        post = m.get("postprocess") or {}
        self.scores_output = post.get("scores")
        self.scores_kind = post.get("scores_kind", "probabilities")
        self.label_output = post.get("label")
        self.preprocessing = m.get("preprocessing") or {"type": "none"}
        self.output_names = [o["name"] for o in self.outputs]

    # -- inputs ------------------------------------------------------------------------------
    @property
    def is_image(self) -> bool:
        return self.preprocessing.get("type") == "image"

    def coerce(self, data: Any) -> np.ndarray:
        """A JSON value (nested lists of numbers) to a batch array of the model's dtype and shape."""
        if isinstance(data, (str, bytes, dict)) or data is None:
            raise InputError(f"input '{self.input['name']}' must be a (nested) array of numbers")
        try:
            arr = np.asarray(data)
        except (ValueError, TypeError):
            raise InputError("input is a ragged array (rows of different lengths)") from None
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            raise InputError(f"input '{self.input['name']}' must hold only numbers "
                             f"(got {arr.dtype.kind!r}-kind values or ragged rows)")
        if arr.dtype.kind == "b":
            raise InputError("input must hold numbers, not booleans")
        want = self.input_dtype
        if want.kind in "iu" and arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise InputError(f"input '{self.input['name']}' is {want.name}: send integers")
        if arr.dtype.kind in "iu" and want.kind in "iu":
            info = np.iinfo(want)
            if arr.size and (arr.min() < info.min or arr.max() > info.max):
                raise InputError(f"input values out of range for {want.name}")
        with np.errstate(over="ignore", invalid="ignore"):
            out = arr.astype(want)
        if out.dtype.kind == "f" and not np.all(np.isfinite(out)):
            raise InputError(f"input holds NaN or infinite values (or values too large for {want.name})")
        return self._batch(out)

    def _takes_full_vector(self, arr: np.ndarray) -> bool:
        return (bool(self.kept_features) and isinstance(self.n_features_original, int)
                and len(self.input["shape"]) == 2 and arr.ndim >= 1 and arr.shape[-1] == self.n_features_original)

    def _batch(self, arr: np.ndarray) -> np.ndarray:
        spec = list(self.input["shape"])
        if self._takes_full_vector(arr):
            spec[-1] = self.n_features_original
        if arr.ndim == len(spec) - 1:
            arr = arr[None, ...]
        if arr.ndim != len(spec):
            raise InputError(f"input '{self.input['name']}' expects shape {_fmt_shape(spec)} "
                             f"(or one sample {_fmt_shape(spec[1:])}), got {list(arr.shape)}")
        for i, (got, want) in enumerate(zip(arr.shape, spec)):
            if isinstance(want, int) and want > 0 and got != want:
                also = (f"; or send all {self.n_features_original} original features"
                        if self.kept_features and isinstance(self.n_features_original, int) else "")
                raise InputError(f"input '{self.input['name']}' expects shape {_fmt_shape(spec)}, "
                                 f"got {list(arr.shape)} (dimension {i} must be {want}{also})")
        if arr.shape[0] == 0:
            raise InputError("empty batch")
        if arr.shape[0] > MAX_BATCH:
            raise InputError(f"batch of {arr.shape[0]} rows is above the limit of {MAX_BATCH}", status=413)
        return np.ascontiguousarray(arr)

    def decode_image(self, payload: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
        """Decode an uploaded image and preprocess it as the manifest says (Pillow, imported here).

        An image of more than ``max_pixels`` is refused (413) from its header, before any pixel is
        decoded: a small compressed file can otherwise expand to gigabytes (a decompression bomb)."""
        if not self.is_image:
            raise InputError("this model takes arrays, not images; POST JSON", status=415)
        try:
            from PIL import Image, UnidentifiedImageError
        except ImportError:  # pragma: no cover - image bundles list pillow in requirements.txt
            raise InputError("image upload needs Pillow on this device (pip install pillow)", status=415) from None
        pre = self.preprocessing
        # Pillow's own guard: open() raises DecompressionBombError above twice this, which the
        # header check below then never needs; a process serving one limit sets it once.
        Image.MAX_IMAGE_PIXELS = max_pixels
        too_big = f"is above the limit of {max_pixels} pixels (--max-image-pixels)"
        try:
            img = Image.open(io.BytesIO(payload))  # lazy: reads the header only
            w, h = img.size
            if w * h > max_pixels:
                raise InputError(f"a {w}x{h} image {too_big}", status=413)
            img.load()
        except Image.DecompressionBombError as e:  # Pillow's message names the pixel count
            n = re.search(r"\((\d+) pixels\)", str(e))
            raise InputError(f"an image of {n.group(1) if n else 'too many'} pixels {too_big}", status=413) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
            raise InputError(f"not a decodable image ({type(e).__name__})", status=415) from None
        channels = int(pre.get("channels", 1))
        img = img.convert("L" if channels == 1 else "RGB")
        size = (int(pre["width"]), int(pre["height"]))
        if img.size != size:
            img = img.resize(size, Image.BILINEAR)
        x = np.asarray(img, dtype=np.float32)
        if x.ndim == 2:
            x = x[:, :, None]
        x = x * np.float32(pre.get("scale", 1.0 / 255.0))
        mean = np.asarray(pre.get("mean", [0.0] * channels), dtype=np.float32)
        std = np.asarray(pre.get("std", [1.0] * channels), dtype=np.float32)
        x = (x - mean) / std
        if pre.get("layout", "NCHW") == "NCHW":
            x = np.transpose(x, (2, 0, 1))
        return self._batch(x.astype(self.input_dtype))

    # -- inference ---------------------------------------------------------------------------
    def run(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        if self._takes_full_vector(batch):
            batch = np.ascontiguousarray(batch[:, self.kept_features])
        try:
            values = self.session.run(None, {self.input["name"]: batch})
        except Exception as e:  # input the checks above let through but the graph rejects
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise InputError(f"the model rejected this input: {first[:300]}") from None
        return dict(zip(self.output_names, values))

    def probabilities(self, outputs: Dict[str, np.ndarray]) -> Optional[np.ndarray]:
        if not self.scores_output or self.scores_output not in outputs:
            return None
        s = np.asarray(outputs[self.scores_output], dtype=np.float64)
        s = s.reshape(s.shape[0], -1)
        return softmax(s) if self.scores_kind == "logits" else s

    def predict(self, batch: np.ndarray) -> Dict[str, Any]:
        """Outputs, labels and confidences for a checked batch."""
        outputs = self.run(batch)
        probs = self.probabilities(outputs)
        result: Dict[str, Any] = {"outputs": outputs, "probabilities": probs}
        if probs is not None:
            index = np.argmax(probs, axis=-1)
            u = uncertainty(probs)
            result.update(index=index, **u)
            if self.label_output and self.label_output in outputs:
                labels: Sequence[Any] = np.asarray(outputs[self.label_output]).reshape(-1).tolist()
            elif self.labels:
                labels = [self.labels[i] for i in index.tolist()]
            else:
                labels = index.tolist()
            result["label"] = list(labels)
        return result


def _providers(ort: Any) -> List[str]:
    # On a Jetson, onnxruntime-gpu offers CUDA (and TensorRT); prefer CUDA, keep CPU as fallback.
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or available


def _fmt_shape(shape: Sequence[Any]) -> str:
    return "[" + ", ".join("N" if not isinstance(d, int) or d <= 0 else str(d) for d in shape) + "]"
