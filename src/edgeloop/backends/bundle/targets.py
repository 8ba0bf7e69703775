"""Per-board packaging: Docker base image, Python version and the onnxruntime build to install.

Raspberry Pi boards run the official multi-arch ``python:3.11-slim-bookworm``
image (arm64 variant, the same Debian release as Raspberry Pi OS), and get the
onnxruntime/numpy versions the exporting machine tested with, which PyPI ships
as aarch64 wheels.  Jetson boards need NVIDIA's L4T base matching their
JetPack release and NVIDIA's onnxruntime-gpu build for it (PyPI's
onnxruntime-gpu is x86_64 only), with the numpy it was built against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class Packaging:
    family: str                      # "raspberry-pi" | "jetson" | "generic"
    base_image: str
    python: str                      # the Python the image runs
    ort_package: str = "onnxruntime"
    ort_version: Optional[str] = None  # None: the exporting host's tested version
    fixed_pins: dict = field(default_factory=dict)  # package -> version, overriding the host's
    jetpack: Optional[str] = None
    l4t: Optional[str] = None
    ort_note: str = ""
    extra_index_url: Optional[str] = None
    ort_wheel: Optional[str] = None  # a wheel file the user downloads beside the Dockerfile
    gpu: bool = False
    max_opset: Optional[int] = None  # newest ai.onnx opset the board's onnxruntime build runs
    max_ir: Optional[int] = None     # newest ONNX IR version it reads
    base_image_size: str = ""        # what the base image weighs on the board (NVIDIA's NGC listing)
    apt_packages: tuple = ()         # extra NVIDIA libraries the base image lacks (TensorRT, cuDNN)


RASPBERRY_PI = Packaging(
    family="raspberry-pi", base_image="python:3.11-slim-bookworm", python="3.11",
    base_image_size="about 0.15 GB (arm64)",
    ort_note="onnxruntime's aarch64 wheel from PyPI (CPU execution provider).")

# Jetson images: the smallest NVIDIA base that runs onnxruntime-gpu's TensorRT and CUDA execution
# providers, never the full JetPack SDK image (l4t-jetpack, 10+ GB with compilers and samples).
JETSON_NANO = Packaging(
    family="jetson", base_image="nvcr.io/nvidia/l4t-base:r32.7.1", python="3.8",
    ort_package="onnxruntime-gpu", ort_version="1.11.0", jetpack="4.6.1", l4t="r32.7.1",
    # Python 3.8 is the newest Python with NVIDIA onnxruntime-gpu builds for JetPack 4.6;
    # these are the last numpy/starlette/uvicorn releases that support it.
    fixed_pins={"numpy": "1.24.4", "starlette": "0.44.0", "uvicorn": "0.33.0",
                "pillow": "10.4.0", "python-multipart": "0.0.20",
                "cryptography": "45.0.7"},  # the last with a Python 3.8 aarch64 wheel whose cffi installs there
    ort_wheel="onnxruntime_gpu-1.11.0-cp38-cp38-linux_aarch64.whl",
    # r32 l4t-base carries no CUDA itself: the NVIDIA container runtime mounts the board's CUDA,
    # cuDNN and TensorRT into it, so the image stays small.
    base_image_size="about 0.7 GB (CUDA, cuDNN and TensorRT are mounted from the board by the NVIDIA "
                    "container runtime)",
    max_opset=16, max_ir=8,  # onnxruntime 1.11 (ONNX 1.11)
    ort_note=("JetPack 4.6 (L4T r32.7, CUDA 10.2, TensorRT 8.2): PyPI has no onnxruntime-gpu for it. "
              "Download NVIDIA's onnxruntime-gpu 1.11.0 wheel for JetPack 4.6 / Python 3.8 from the "
              "Jetson Zoo (https://elinux.org/Jetson_Zoo#ONNX_Runtime) into this folder before "
              "`docker compose build`."),
    gpu=True)

JETSON_ORIN_NANO = Packaging(
    family="jetson", base_image="nvcr.io/nvidia/l4t-cuda:12.6.11-runtime", python="3.10",
    ort_package="onnxruntime-gpu", ort_version="1.20.0", jetpack="6.1", l4t="r36.4.0",
    fixed_pins={"numpy": "1.26.4", "starlette": "0.46.2", "uvicorn": "0.34.0",
                "pillow": "11.1.0", "python-multipart": "0.0.20"},
    extra_index_url="https://pypi.jetson-ai-lab.dev/jp6/cu126",
    max_opset=21, max_ir=10,  # onnxruntime 1.20 (ONNX 1.16)
    # from r36 the container runtime no longer mounts CUDA libraries: the CUDA runtime image plus
    # the TensorRT and cuDNN runtime libraries (NVIDIA's Jetson apt repository) instead of l4t-jetpack
    base_image_size="about 2.5 GB with the TensorRT 10 and cuDNN 9 runtime libraries (the full "
                    "l4t-jetpack:r36.4.0 SDK image is about 10 GB)",
    apt_packages=("libnvinfer10", "libnvinfer-plugin10", "libnvonnxparsers10", "libcudnn9-cuda-12"),
    ort_note=("JetPack 6 (L4T r36, CUDA 12.6): onnxruntime-gpu comes from NVIDIA's Jetson AI Lab "
              "package index for JetPack 6 (cu126), built against numpy 1.x; check the index for the "
              "build matching your JetPack 6.x release if 1.20.0 is gone."),
    gpu=True)

GENERIC = Packaging(family="generic", base_image="python:3.11-slim-bookworm", python="3.11",
                    base_image_size="about 0.15 GB",
                    ort_note="onnxruntime's wheel from PyPI (CPU execution provider).")

BY_TARGET = {
    "raspberry-pi-3b-plus": RASPBERRY_PI,
    "raspberry-pi-4": RASPBERRY_PI,
    "raspberry-pi-5": RASPBERRY_PI,
    "jetson-nano": JETSON_NANO,
    "jetson-orin-nano": JETSON_ORIN_NANO,
}


def packaging_for(target_id: str) -> Packaging:
    return BY_TARGET.get(target_id, GENERIC)
