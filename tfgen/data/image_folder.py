"""Folders of image files: ``folder/<split>/[<class>/]*.png``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from tfgen.data.checks import tf_message
from tfgen.errors import DataFileError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


def has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*"))


def read_image_folder(folder: Path, resize: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``folder/<split>/[<class>/]*.png`` -> splits; a folder without split folders is "train".

    Class subfolders (sorted by name) give the labels.  Alpha channels are dropped, and a
    split mixing grey and colour images is read as RGB (grey repeated), so only sizes can
    differ; they may only with ``data.resize`` (images are then resized on read).
    ``data.color`` converts the result as it does for every source.
    """
    subdirs = [d for d in sorted(folder.iterdir()) if d.is_dir()]
    split_dirs = {d.name: d for d in subdirs if d.name in {"train", "val", "validation", "test"}}
    if not split_dirs:
        split_dirs = {"train": folder}
    splits = {}
    for split, root in split_dirs.items():
        classes = [d for d in sorted(root.iterdir()) if d.is_dir()]
        files = ([(p, i) for i, d in enumerate(classes) for p in sorted(d.rglob("*"))
                  if p.suffix.lower() in IMAGE_SUFFIXES]
                 or [(p, -1) for p in sorted(root.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES])
        if not files:
            raise DataFileError(root, f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))})",
                                "put images in <split>/[<class>/] folders")
        images = []
        for path, _ in files:
            try:
                img = tf.io.decode_image(tf.io.read_file(str(path)), expand_animations=False).numpy()
            except tf.errors.OpError as err:  # unreadable, truncated or not an image
                raise DataFileError(path, f"cannot be decoded as an image ({tf_message(err)})",
                                    "replace or remove the file") from None
            img = img[..., :3] if img.shape[-1] == 4 else img[..., :1] if img.shape[-1] == 2 else img
            if resize and img.shape[:2] != (resize, resize):
                h, w = img.shape[:2]
                side = min(h, w)
                img = img[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
                img = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(
                    img, (resize, resize), antialias=True)), 0, 255), tf.uint8).numpy()
            images.append(img)
        if any(im.shape[-1] == 3 for im in images):
            images = [np.repeat(im, 3, axis=-1) if im.shape[-1] == 1 else im for im in images]
        sizes = [im.shape[:2] for im in images]
        if len(set(sizes)) > 1:
            other = next(i for i, s in enumerate(sizes) if s != sizes[0])
            raise DataFileError(root, f"images differ in size ({files[0][0].name} is "
                                f"{sizes[0][0]}x{sizes[0][1]}, {files[other][0].name} is "
                                f"{sizes[other][0]}x{sizes[other][1]})",
                                "set data.resize to read them all at one size")
        splits[split] = (np.stack(images), np.array([label for _, label in files], np.int64))
    return splits
