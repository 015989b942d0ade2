"""allen-sr: the tensor2tensor Image Transformer for brain-microscopy super-resolution.

Install through `make venv` (see README): TensorFlow and tensor2tensor need pinned versions that
pip's resolver cannot find on its own, so this file lists no install requirements; the pins live
in requirements/lock.txt. Training and the checkpoint decoders need Python 3.11 (TensorFlow 2.15);
prediction with exported models (`--exported`) runs on 3.11-3.13 without TensorFlow:
`pip install -r requirements/predict.txt && pip install --no-deps .` (README).
"""
from setuptools import find_packages, setup

setup(
    name="allen-sr",
    version="0.1.0",
    description="Super-resolve Allen Institute brain microscopy with the tensor2tensor Image Transformer",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    # 3.11 for the full stack (make venv checks it); 3.12/3.13 for the TF-free prediction install.
    python_requires=">=3.11,<3.14",
    # problems/ and hparams/ hold the tensor2tensor registrations; they install as
    # allen_sr.problems and allen_sr.hparams so the names stay inside our namespace.
    packages=find_packages(include=["allen_sr", "allen_sr.*"]) + ["allen_sr.problems", "allen_sr.hparams"],
    package_dir={"allen_sr": "allen_sr", "allen_sr.problems": "problems", "allen_sr.hparams": "hparams"},
    # The sample images `allen-sr demo` tiles by default, so the demo runs from any install.
    # The pretrained models (`allen-sr models`), so a plain install enhances images without training.
    package_data={"allen_sr.sample_data": ["*.png", "*.jpg", "LICENSES.md"],
                  "allen_sr.pretrained": ["models.json", "*/config.json", "*/model.onnx", "*/distribution.onnx",
                                          "*/weights.npz", "*/MODEL_CARD.md"]},
    entry_points={"console_scripts": ["allen-sr = allen_sr.cli:main"]},
    license="Apache-2.0",
)
