"""Export a vitssl encoder (or classifier) as a folder timm and the Hugging Face Hub load by themselves.

    python -m vitssl.export SOURCE --format timm|hf --out DIR

SOURCE: anything finetune.pretrained accepts (a run or checkpoint folder, runs:/<id>, models:/..., a
run id; also timm / mae weights). timm: model.safetensors + config.json; hf: the same plus README.md,
the model card generated from the run. The written folder is loaded back with timm and its outputs
compared to vitssl's before the command succeeds.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from vitssl.config import ConfigError
from vitssl.export.card import class_names, model_card, run_facts
from vitssl.export.timm_layout import NoTimmEquivalent, to_timm
from vitssl.export.write import FORMATS, verify_with_timm, write_folder

TOLERANCE = 1e-5


def export(source: str, fmt: str, out: Path, tracking_uri: str | None = None, overwrite: bool = False) -> dict:
    """Write the folder; returns {file name: bytes} after timm reproduced vitssl's outputs."""
    from vitssl.engine.pretrained import resolve_pretrained

    found = resolve_pretrained(source, tracking_uri, key="SOURCE")
    exp = found.export
    if exp is None:
        raise ConfigError("SOURCE none: nothing to export")
    card = model_card(exp, to_timm(exp), run_facts(found.run_id, tracking_uri)) if fmt == "hf" else None
    written = write_folder(exp, out, card, class_names(exp), overwrite)
    diff = verify_with_timm(exp, written.folder)
    if not diff <= TOLERANCE:
        shutil.rmtree(written.folder)
        raise ConfigError(f"timm's {written.timm.architecture} does not reproduce this encoder (largest output "
                          f"difference {diff:.2e} > {TOLERANCE}); nothing written")
    print(f"{written.folder}: timm.create_model('local-dir:{written.folder}', pretrained=True) reproduces the "
          f"vitssl outputs (largest difference {diff:.1e} on random images)")
    for note in written.timm.notes:
        print(note)
    return written.files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitssl.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="SOURCE")
    parser.add_argument("--format", choices=FORMATS, default="hf")
    parser.add_argument("--out", required=True, type=Path, help="folder to write (must not exist or be empty)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default $MLFLOW_TRACKING_URI or "
                                                             "sqlite:///mlflow.db)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    try:
        files = export(args.source, args.format, args.out, args.tracking_uri, args.overwrite)
    except (ConfigError, NoTimmEquivalent, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, size in files.items():
        print(f"  {name}: {size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
