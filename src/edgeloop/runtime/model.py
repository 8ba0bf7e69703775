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
from typing import Any, Dict, List, Optional, Sequence, Tuple

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
        wanted = _providers(ort)
        self.provider_note: Optional[str] = None
        try:
            try:
                self.session = ort.InferenceSession(str(self.path / MODEL), opts, providers=wanted)
            except Exception as e:
                if wanted == ["CPUExecutionProvider"]:
                    raise
                # a GPU provider listed by the wheel whose libraries are missing on this device
                self.provider_note = f"{wanted[0]} failed to start ({_first_line(e)[:200]}); running on the CPU"
                self.session = ort.InferenceSession(str(self.path / MODEL), opts,
                                                    providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"{self.path}: onnxruntime cannot load {MODEL}: {_first_line(e)}") from None
        self.providers = list(self.session.get_providers())
        family = (m.get("target") or {}).get("family")
        if family == "jetson" and self.provider_note is None and self.providers == ["CPUExecutionProvider"]:
            self.provider_note = ("no TensorRT or CUDA execution provider in this onnxruntime "
                                  f"({ort.__version__}, {ort.get_device()}); running on the CPU")
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
        self.head: Optional[Dict[str, Any]] = None
        if isinstance(m.get("head"), dict):
            from .detect import parse_head  # numpy only

            self.head = parse_head(m["head"])  # check_bundle validated it

    # -- inputs ------------------------------------------------------------------------------
    @property
    def is_image(self) -> bool:
        """Takes image uploads (classifier images or detector frames)."""
        return self.preprocessing.get("type") in ("image", "detection")

    @property
    def is_detector(self) -> bool:
        return self.head is not None

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

    def open_image(self, payload: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Any:
        """Decode an uploaded image with Pillow (imported here), checking its size first.

        An image of more than ``max_pixels`` is refused (413) from its header, before any pixel is
        decoded: a small compressed file can otherwise expand to gigabytes (a decompression bomb)."""
        if not self.is_image:
            raise InputError("this model takes arrays, not images; POST JSON", status=415)
        try:
            from PIL import Image, UnidentifiedImageError
        except ImportError:  # pragma: no cover - image bundles list pillow in requirements.txt
            raise InputError("image upload needs Pillow on this device (pip install pillow)", status=415) from None
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
        return img

    def detector_input(self, payload: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Tuple[np.ndarray, Any, str]:
        """An uploaded frame as the detector's input tensor, the letterbox mapping boxes back, and
        the frame's media type (``image/png``, ...)."""
        from .detect import preprocess

        img = self.open_image(payload, max_pixels)
        media = "image/" + str(img.format or "unknown").lower()
        x, box = preprocess(img.convert("RGB"), self.head, self.input_dtype)
        return self._batch(x), box, media

    def decode_image(self, payload: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
        """Decode an uploaded image and preprocess it as the manifest says (see :meth:`open_image`)."""
        return self.image_batch(self.open_image(payload, max_pixels))

    def image_batch(self, img: Any) -> np.ndarray:
        """A decoded (PIL) image as a batch of one, preprocessed as the manifest says."""
        from PIL import Image

        pre = self.preprocessing
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

    def detect(self, outputs: Dict[str, np.ndarray], box: Any,
               min_score: Optional[float] = None) -> List[Dict[str, Any]]:
        """Boxes of one frame (edgeloop_runtime.detect), in the uploaded image's pixels. Outputs that
        are not finite are refused (InputError) rather than silently decoding to no box."""
        from .detect import decode

        bad = [k for k, v in outputs.items() if np.asarray(v).dtype.kind == "f" and not np.all(np.isfinite(v))]
        if bad:
            raise InputError(f"the model's output '{bad[0]}' holds NaN or infinite values for this input; "
                             "no boxes can be decoded")
        return decode(self.head, outputs, box, min_score)

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
    # On a Jetson, onnxruntime-gpu offers TensorRT and CUDA: prefer them in that order, CPU last.
    available = ort.get_available_providers()
    order = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    return [p for p in order if p in available] or available


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _fmt_shape(shape: Sequence[Any]) -> str:
    return "[" + ", ".join("N" if not isinstance(d, int) or d <= 0 else str(d) for d in shape) + "]"
