# Triton for rerankd: NVIDIA's Triton 24.10 image (Triton 2.51, the release `rerankd triton`
# runs from the nvidia-pytriton wheel) plus the engines our Python-backend model.py imports.
# The model repository itself is not in the image: it is mounted (deploy/kubernetes, a PVC).
# Written, not built here (no Docker engine on the development machine). From the repo root:
#   docker build -f deploy/docker/triton.Dockerfile -t REGISTRY/rerankd/triton:24.10-0.1.0 .
# Pin the base image by digest in your registry mirror (tags can move).
FROM nvcr.io/nvidia/tritonserver:24.10-py3
# numpy 1.x: the Python-backend stub passes tensors with the numpy 1.x ABI (see pyproject.toml).
# openvino: the engine `rerankd train` exports with (openvino_int8); onnxruntime: fp32/int8.
RUN python3 -m pip install --no-cache-dir "numpy>=1.26,<2" "onnxruntime>=1.18,<2" "openvino>=2024.4,<2027"
# The image's own non-root user (uid 1000); Kubernetes runs it with runAsNonRoot.
USER 1000
EXPOSE 8000 8001 8002
ENTRYPOINT ["tritonserver"]
