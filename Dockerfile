# rtk with its GPU stack: PyTorch, TensorRT and CUDA from an NVIDIA NGC PyTorch image.
#
#   docker build -t rtk .
#   docker run --rm --gpus all --ipc=host -v "$PWD:/work" -w /work rtk finetune data --out runs/x
#   docker run --rm --gpus all -v "$PWD:/work" -w /work rtk export runs/x --fp16
#   docker run --rm -v "$PWD:/work" -w /work rtk triton runs/x --platform tensorrt --kind gpu
#
# A TensorRT plan only loads on the TensorRT release that built it: build plans with the
# same NGC release as the Triton image that serves them (NGC_RELEASE here and in compose.yaml).
ARG NGC_RELEASE=25.10
FROM nvcr.io/nvidia/pytorch:${NGC_RELEASE}-py3

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /opt/rtk
COPY pyproject.toml README.md ./
COPY toolkit ./toolkit
# torch, torchvision and tensorrt come with the base image; [gpu] adds onnxruntime-gpu.
RUN pip install --no-cache-dir ".[gpu,triton,sample]" "onnx>=1.16" "onnxscript>=0.1" \
        "onnxconverter-common>=1.14"

WORKDIR /work
ENTRYPOINT ["rtk"]
CMD ["--help"]
