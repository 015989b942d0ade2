"""How well `allen-sr upscale`'s input check reads an input: the JPEG quality it reads and the
noise it estimates (allen_sr.inference.input_check), against what was done to the image, and
whether the default model (`conv-cpu`) is warned about.

    python benchmarks/bench_input_check.py [--images DIR]

Protocol (also printed with the results):

1. Images: every image in `allen_sr/sample_data/` (brain, H&E, IHC DAB), each reduced 4x by its
   area average as `allen-sr evaluate --degrade` makes an input (allen_sr.data.degrade), the
   degradation's noise seeded.
2. Inputs: clean; Gaussian noise of 3 to 16 grey levels; JPEG files of quality 95 to 30 (the last
   step written by Pillow at that quality, 4:2:0, as a user's JPEG would be); blur 1.5, noise 3,
   JPEG 85. Each is written to a file and checked from the file, as `allen-sr upscale` checks it.
3. The check: `check_input` with the degradation `conv-cpu` recorded (noise 0-10 grey levels,
   JPEG 50-95): a warning is given when the read quality is below 50 or the estimate above 10.

Prints a markdown section: per input, the read JPEG quality, the noise estimate on each image and
how many of the images gave a warning. Takes seconds.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from allen_sr import pretrained  # noqa: E402
from allen_sr.data.degrade import degrade_image, parse_fixed  # noqa: E402
from allen_sr.data.images import load_image  # noqa: E402
from allen_sr.inference.input_check import check_input  # noqa: E402
from allen_sr.inference.sources import open_image  # noqa: E402

FACTOR = 4
INPUTS = ("clean", "noise=3", "noise=6", "noise=8", "noise=10", "noise=12", "noise=16",
          "jpeg=95", "jpeg=75", "jpeg=50", "jpeg=40", "jpeg=30", "blur=1.5,noise=3,jpeg=85")
MODEL = "conv-cpu"


def input_file(image: np.ndarray, spec: str, folder: Path, stem: str) -> Path:
    """The low-resolution input of ``image`` under ``spec``, written as a file: a final jpeg=Q
    step is the file's own compression (JPEG at Q), anything else a PNG."""
    steps = [] if spec == "clean" else parse_fixed(spec)
    quality = None
    if steps and steps[-1].key == "jpeg":
        quality = int(steps[-1].value)
        steps = steps[:-1]
    h, w = image.shape[0] // FACTOR * FACTOR, image.shape[1] // FACTOR * FACTOR
    small = degrade_image(image[:h, :w], FACTOR, steps, seed=0)
    path = folder / f"{stem}-{spec.replace('=', '').replace(',', '-')}.{'jpg' if quality else 'png'}"
    if quality:
        Image.fromarray(small).save(path, quality=quality)
    else:
        Image.fromarray(small).save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default=str(HERE.parent / "allen_sr" / "sample_data"),
                   help="folder of images (default: allen_sr/sample_data)")
    args = p.parse_args(argv)
    if not Path(args.images).is_dir():
        p.error(f"--images {args.images}: no such folder; give a folder of .png, .jpg or .tif images")
    paths = sorted(q for q in Path(args.images).iterdir() if q.suffix.lower() in (".png", ".jpg", ".tif"))
    if not paths:
        p.error(f"--images {args.images}: no .png, .jpg or .tif images in that folder")
    trained = pretrained.find(MODEL).info.get("degradation")
    names = [q.stem.replace("other_", "") for q in paths]
    images = [load_image(str(path)) for path in paths]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in INPUTS:
            qualities, noises, warned = set(), [], 0
            for path, image in zip(paths, images):
                source = open_image(str(input_file(image, spec, Path(tmp), path.stem)))
                try:
                    found = check_input(source, trained)
                finally:
                    source.close()
                qualities.add("-" if found.jpeg_quality is None else str(found.jpeg_quality))
                noises.append("-" if found.noise is None else f"{found.noise:.1f}")
                warned += bool(found.warnings)
            rows.append(f"| {spec} | {', '.join(sorted(qualities))} | " + " | ".join(noises)
                        + f" | {warned} of {len(paths)} |")
    print("Protocol: every image of the folder reduced 4x by its area average (allen_sr.data.degrade, noise "
          "seeded), degraded as named, written to a file (a final JPEG step as the file's own compression, "
          "Pillow, 4:2:0) and checked from it by allen_sr.inference.input_check.check_input against "
          f"`{MODEL}`'s recorded degradation (`{trained}`): a warning when the read quality is below the "
          "trained lowest or the noise estimate above the trained highest.\n")
    print("| input | JPEG quality read | " + " | ".join(f"noise estimate (grey levels): {n}" for n in names)
          + " | warned |")
    print("|:---|---:|" + "---:|" * len(names) + "---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
