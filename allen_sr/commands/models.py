"""`allen-sr models`: the pretrained models shipped with allen-sr, what each is for, its size, its
training data and the quality measured on images it never saw (gain over bicubic, x4 from the
area average, and from the same input saved as JPEG quality 75). Each has a MODEL_CARD.md.

Use one with `allen-sr upscale --image IN --out OUT` (the default) or `--pretrained NAME`, or from
Python: `allen_sr.Upscaler.open("NAME")`.
"""
from __future__ import annotations

import argparse
import json
import sys

from allen_sr import pretrained
from allen_sr.commands import args as shared


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="allen-sr models", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print models.json's entries as JSON")
    return p


def gain(model: pretrained.Pretrained, image: str, kind: str) -> str:
    value = model.gain_db(image, kind)
    return "-" if value is None else f"{value:+.2f} dB"


def table(models: list[pretrained.Pretrained]) -> str:
    rows = [("name", "size", "brain clean", "brain JPEG 75", "unseen stain JPEG 75", "what for")]
    for m in models:
        rows.append((m.name + (" (default)" if m.default else ""), f"{m.size_bytes / 1e6:.1f} MB",
                     gain(m, "brain", "clean"), gain(m, "brain", "JPEG 75"), gain(m, "IHC DAB", "JPEG 75"),
                     m.purpose))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(f"{c:<{w}}" for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    by_data: dict[str, list[str]] = {}
    for m in models:
        by_data.setdefault(", ".join(m.info.get("train_images", [])) or "?", []).append(m.name)
    lines += ["", "gain over bicubic on whole images never trained on, x4 from their area average (the model "
              "cards name them); trained on, in allen_sr/sample_data:"]
    lines += [f"  {', '.join(names)}: {data}" for data, names in by_data.items()]
    lines += [
              f"model cards: {pretrained.MODELS_DIR}/NAME/MODEL_CARD.md",
              "another stain: fine-tune one on your images (allen-sr train --init_from NAME ...; not conv-fast)"]
    return "\n".join(lines)


def models_main(argv: list[str] | None = None) -> int:
    args = shared.parse(build_parser(), argv)

    def body() -> None:
        models = pretrained.available()
        if args.json:
            print(json.dumps({m.name: {**m.info, "size_bytes": m.size_bytes, "folder": str(m.folder)}
                              for m in models}, indent=2))
        elif not models:
            print(f"no pretrained models in this install ({pretrained.MODELS_DIR}); `make pretrained` makes them")
        else:
            print(table(models))

    return shared.run_command("models", body)


if __name__ == "__main__":
    sys.exit(models_main())
