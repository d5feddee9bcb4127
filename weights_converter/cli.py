"""`gfocal-convert SRC DST --from torch|jittor|mmdet|torchvision --to torch|jittor|mmdet`.

`--to mmdet` writes the official GFocalV2 / mmdetection layout, for the official code."""
import argparse
import sys

from gfocal.runtime import configure_frameworks

from gfocal.checkpoint_io import FORMATS, TARGETS

from .convert import convert


def main(argv=None):
    configure_frameworks()
    parser = argparse.ArgumentParser(prog="gfocal-convert", description=__doc__)
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--from", dest="src_fmt", choices=FORMATS, required=True)
    parser.add_argument("--to", choices=TARGETS, required=True)
    parser.add_argument("--config", help="model config to check against (default: inferred "
                                         "from the weights; the R50 paper model for torchvision)")
    args = parser.parse_args(argv)
    from gfocal.config import load_config
    from gfocal.errors import USER_ERRORS
    try:
        model_cfg = load_config(args.config)["model"] if args.config else None
        model_cfg = convert(args.src, args.dst, args.src_fmt, args.to, model_cfg)
    except USER_ERRORS as exc:
        print(f"gfocal-convert: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst} ({args.to}; ResNet-{model_cfg['depth']}, "
          f"{model_cfg['num_classes']} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
