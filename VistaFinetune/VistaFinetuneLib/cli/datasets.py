"""``synthetic`` and ``tiny-bundle``: the data and the model the demo and the tests run on."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from VistaFinetuneLib.bundle import tiny_bundle
from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.errors import UserError


def cmd_synthetic(args: argparse.Namespace) -> int:
    """Write a synthetic CT dataset (imagesTr/ + labelsTr/)."""
    spec = synthetic.MICRO_SPEC if args.micro else synthetic.PhantomSpec()
    out_dir = Path(args.out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir}: the folder is not empty; choose a new folder for the synthetic dataset")
    items = synthetic.write_dataset(out_dir, args.cases, seed=args.seed, spec=spec)
    print(f"Wrote {len(items)} synthetic CT cases ({'x'.join(map(str, spec.shape))} voxels) to {out_dir}")
    return 0


def cmd_tiny_bundle(args: argparse.Namespace) -> int:
    """Print the shipped tiny bundle's folder (weights checked); ``--rebuild DIR`` pretrains it again there."""
    if args.rebuild is None:
        print(tiny_bundle.ensure_tiny_bundle())
        return 0
    dest = Path(args.rebuild).absolute()
    if dest.exists():
        raise UserError(f"{dest}: already exists; --rebuild needs a new folder")
    from VistaFinetuneLib import tiny_pretraining

    record = tiny_pretraining.build_tiny_bundle(dest, log=lambda m: print(m, file=sys.stderr))
    print(f"rebuilt {dest / 'models' / 'model.pt'} in {record['seconds']} s")
    print(f"best pretraining val_mean_dice {record['best_val_mean_dice']:.4f}")
    shipped = tiny_bundle.TEMPLATE_DIR / "docs" / "pretraining.json"
    if shipped.is_file():
        expected = tiny_bundle.pretraining_record(tiny_bundle.TEMPLATE_DIR).get("weights_sha256")
        same = "the same as" if record["weights_sha256"] == expected else "differs from"
        print(f"SHA-256 {record['weights_sha256']} ({same} the shipped {expected})")
    return 0


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add this group's commands, each with its handler."""
    synth = commands.add_parser("synthetic", help="write a synthetic CT-like dataset")
    synth.add_argument("out_dir")
    synth.add_argument("--cases", type=int, default=8)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--micro", action="store_true", help="small volumes for smoke runs")
    synth.set_defaults(handler=cmd_synthetic)

    tiny = commands.add_parser("tiny-bundle", help="print the shipped tiny reference bundle's folder")
    tiny.add_argument("--rebuild", metavar="DIR", help="pretrain the tiny bundle again into the new folder DIR")
    tiny.set_defaults(handler=cmd_tiny_bundle)
