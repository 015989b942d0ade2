# Training image for GPU hosts and Kubeflow TFJobs (`allen-sr launch --image ...`).
#
#   docker build -t REGISTRY/allen-sr:TAG .
#   docker run --gpus all REGISTRY/allen-sr:TAG train --problem=... --data_dir=gs://... ...
#
# Base: python:3.11-slim, not tensorflow/tensorflow:2.15.0-gpu. That image carries TF 2.15.0 (we pin
# 2.15.1, so TF would be reinstalled anyway) on Ubuntu's Python (the TF images' Python 3.11 is
# Ubuntu 22.04's 3.11.0rc1 pre-release, tensorflow/tensorflow#82529); allen-sr needs exactly
# Python 3.11 (README). TensorFlow 2.15.1's [and-cuda] extra installs CUDA 12.2 and cuDNN 8.9 as pip
# wheels pinned with == by TF itself, so no CUDA base image is needed: only the host's NVIDIA driver
# (>= 525, CUDA 12), which the NVIDIA container runtime / Kubernetes device plugin mounts in.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /opt/allen-sr

# Dependencies first, in their own layer: they change far less often than the code.
# The same steps as scripts/make_venv.sh: every package pinned by requirements/lock.txt, then
# tensor2tensor without its stale pins (tensorflow-probability==0.7.0 does not work with TF 2.15).
COPY requirements/lock.txt requirements/lock.txt
RUN pip install -r requirements/lock.txt -c requirements/lock.txt "tensorflow[and-cuda]==2.15.1" \
 && pip install --no-deps tensor2tensor==1.15.7

# TF 2.15.1 dlopen()s CUDA through its RUNPATH, which lists only some of the folders the [and-cuda]
# wheels install into (cudart, cublas, cudnn, cufft, cusolver, cusparse; not curand, nccl, cupti,
# nvjitlink): register every site-packages/nvidia/*/lib with the dynamic loader.
RUN python -c "import glob, site; dirs = sorted(glob.glob(site.getsitepackages()[0] + '/nvidia/*/lib')); open('/etc/ld.so.conf.d/nvidia-pip.conf', 'w').write(''.join(d + '\n' for d in dirs)); print(*dirs, sep='\n')" \
 && ldconfig

COPY setup.py pyproject.toml README.md ./
COPY allen_sr allen_sr
COPY problems problems
COPY hparams hparams
RUN pip install --no-deps . \
 && allen-sr --help >/dev/null \
 && python -c "import allen_sr.problems"

ENTRYPOINT ["allen-sr"]
CMD ["--help"]
