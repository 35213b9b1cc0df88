"""Data: TFDS names (with a local-file fallback offline), IDX folders, .npz files, image folders.

Every source is read into uint8 arrays per named split ("train", "test", ...),
the TFDS split syntax of ``[data]`` (``train[:50000]``, ``train[50000:]``,
``test``) selects from them, and the transforms are applied once:
colour, resize, [0,1] scaling, static binarization or k-level quantization,
the [-1,1] range.  Dynamic binarization is the one per-batch transform: the
compiled train steps call :meth:`DataBundle.transform_batch`.

The modules, from the bottom up:

* ``checks``: what every reader checks (image shapes and pixel ranges, labels, the
  one-line messages of unreadable files);
* ``idx``, ``npz``, ``image_folder``, ``tfds``: one reader per source;
* ``splits``: the TFDS split syntax on local arrays;
* ``transforms``: colour, resize, pixel range, binarization, quantization;
* ``bundle``: :class:`Split`, :class:`DataBundle` and the tf.data pipelines;
* ``loader``: :func:`load_data`, which picks the source (and falls back to local files where
  TFDS has no prepared copy), selects, checks the memory and transforms.
"""
from tfgen.data.bundle import DataBundle, Split, eval_dataset, train_dataset
from tfgen.data.idx import read_idx, read_idx_folder
from tfgen.data.image_folder import IMAGE_SUFFIXES, read_image_folder
from tfgen.data.loader import ENV_DATA_DIR, KNOWN_LOCAL_DIRS, load_data
from tfgen.data.npz import read_npz

__all__ = ["DataBundle", "ENV_DATA_DIR", "IMAGE_SUFFIXES", "KNOWN_LOCAL_DIRS", "Split",
           "eval_dataset", "load_data", "read_idx", "read_idx_folder", "read_image_folder",
           "read_npz", "train_dataset"]
