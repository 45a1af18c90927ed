"""torchvision's published weights as a numpy ``.npz`` (run in its own process, without TensorFlow).

    python -m helpers.train.torch_export MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1 out.npz

torch is kept out of the TensorFlow process on purpose: with tensorflow 2.20 imported first,
importing torchvision (which loads triton) crashed the process with a segmentation fault
here, and a notebook kernel would die the same way. So :mod:`helpers.train.torch_convert`
runs this module as a subprocess; it imports no TensorFlow and nothing of ``helpers`` that
does. The download is torchvision's own (``Weights.get_state_dict``, its cache under
``$TORCH_HOME``, the file's hash checked); a cached file that fails to load is removed and
downloaded once more. The ``.npz`` is written to a temp file and renamed.

Exit codes (the parent turns them into messages, with the last line this prints on stdout):
0 done, 3 no torch/torchvision, 4 download failed, 5 the download is damaged twice, 2 bad
arguments. torchvision's download progress goes to stderr, which the parent shows.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

NO_TORCH, NO_DOWNLOAD, DAMAGED = 3, 4, 5


def _cached_file(weights) -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def load_state_dict(name: str) -> dict:
    """The state dict of torchvision's ``name`` (e.g. ``ResNet101_Weights.IMAGENET1K_V2``)."""
    import pickle
    import socket
    import urllib.parse

    import torchvision

    weights = torchvision.models.get_weight(name)
    if not _cached_file(weights).exists():  # fail fast without a network, never hang
        socket.create_connection((urllib.parse.urlparse(weights.url).hostname, 443), timeout=10).close()
        socket.setdefaulttimeout(60)
    for attempt in range(2):
        try:
            return weights.get_state_dict(progress=True, check_hash=True)
        except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:  # a cut or corrupt download
            cached = _cached_file(weights)
            if attempt or not cached.exists():
                raise DamagedDownload(f"{cached}: {type(e).__name__}: {e}") from e
            print(f"the cached download {cached} is damaged ({e}); downloading it again", file=sys.stderr)
            cached.unlink()
    raise AssertionError("unreachable")


class DamagedDownload(RuntimeError):
    pass


def write_npz(state_dict: dict, out: Path) -> None:
    import numpy as np

    out = Path(out)
    tmp = out.with_name(f".{out.name}.partial.npz")
    arrays = {k: v.detach().cpu().numpy() for k, v in state_dict.items() if hasattr(v, "detach")}
    np.savez(tmp, **arrays)
    os.replace(tmp, out)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    name, out = argv
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except Exception as e:
        print(f"torch/torchvision not importable: {type(e).__name__}: {e}")
        return NO_TORCH
    try:
        state = load_state_dict(name)
    except DamagedDownload as e:
        print(str(e))
        return DAMAGED
    except OSError as e:  # URLError, timeouts, DNS: no network to torchvision's server
        print(f"download failed: {type(e).__name__}: {e}")
        return NO_DOWNLOAD
    write_npz(state, Path(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
