"""torchvision's published weights as a numpy ``.npz`` (run in its own process, without TensorFlow).

    python -m helpers.train.torch_export MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1 out.npz
    python -m helpers.train.torch_export MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1 out.npz --file maskrcnn.pth

torch is kept out of the TensorFlow process on purpose: with tensorflow 2.20 imported first,
importing torchvision (which loads triton) crashed the process with a segmentation fault
here, and a notebook kernel would die the same way. So :mod:`helpers.train.torch_convert`
runs this module as a subprocess; it imports no TensorFlow and nothing of ``helpers`` that
does. The download is torchvision's own (``Weights.get_state_dict``, its cache under
``$TORCH_HOME``, the file's hash checked); a damaged download is removed and downloaded once
more. ``--file`` reads a copy of the weights instead (a download made elsewhere).

The file is loaded into torchvision's own model of those weights (``load_state_dict``), and
that model's ``state_dict()`` is what is written: torchvision's loading hooks rename the keys of
files saved by older versions (the FPN's and the RPN head's), as they do when torchvision loads
the file itself. The ``.npz`` is written to a temp file and renamed.

Exit codes (the parent turns them into messages, with the last line this prints on stdout):
0 done, 2 bad arguments, 3 no torch/torchvision, 4 no route to the server, 5 the download is
damaged twice, 6 the download was cut off, 7 the server refused it, 8 the file does not fit
torchvision's model. torchvision's download progress goes to stderr, which the parent shows.
"""
from __future__ import annotations

import http.client
import inspect
import os
import sys
import urllib.error
from pathlib import Path

NO_TORCH, NO_DOWNLOAD, DAMAGED, CUT, REFUSED, MISFIT = 3, 4, 5, 6, 7, 8


def _cached_file(weights) -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def load_state_dict(name: str) -> dict:
    """The state dict of torchvision's ``name`` (e.g. ``ResNet101_Weights.IMAGENET1K_V2``), as the
    file holds it: downloaded (or read from torchvision's cache), its hash checked."""
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
        except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:  # a bad hash, a corrupt file
            cached = _cached_file(weights)
            cached.unlink(missing_ok=True)
            if attempt:
                raise DamagedDownload(f"{weights.url}: {type(e).__name__}: {e}") from e
            print(f"the download of {weights.url} is damaged ({e}); downloading it again", file=sys.stderr)
    raise AssertionError("unreachable")


def model_state_dict(name: str, state_dict: dict) -> dict:
    """``state_dict`` loaded into torchvision's model of the weights ``name`` (its loading hooks
    rename older files' keys), and that model's ``state_dict()``."""
    import torchvision

    weights = torchvision.models.get_weight(name)
    builders = [m for m in torchvision.models.list_models() if torchvision.models.get_model_weights(m) is type(weights)]
    if len(builders) != 1:
        raise MisfitFile(f"{name}: torchvision has {len(builders)} models for these weights, not one")
    kwargs = {"weights": None, "num_classes": len(weights.meta["categories"])}
    if "weights_backbone" in inspect.signature(torchvision.models.get_model_builder(builders[0])).parameters:
        kwargs["weights_backbone"] = None
    model = torchvision.models.get_model(builders[0], **kwargs)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:  # missing or unexpected keys, other shapes
        raise MisfitFile(f"it does not fit torchvision's {builders[0]}: {str(e)[:600]}") from e
    return model.state_dict()


class MisfitFile(ValueError):
    pass


def read_file(path: str) -> dict:
    """A state dict saved by ``torch.save`` (tensors only: nothing in it is run)."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise MisfitFile(f"{path} could not be read as torch weights ({type(e).__name__}: {e})") from e


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
    if len(argv) not in (2, 4) or (len(argv) == 4 and argv[2] != "--file"):
        print(__doc__, file=sys.stderr)
        return 2
    name, out = argv[:2]
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except Exception as e:
        print(f"torch/torchvision not importable: {type(e).__name__}: {e}")
        return NO_TORCH
    try:
        if len(argv) == 4:
            raw = read_file(argv[3])
        else:
            raw = load_state_dict(name)
        state = model_state_dict(name, raw)
    except DamagedDownload as e:
        print(str(e))
        return DAMAGED
    except MisfitFile as e:
        print(str(e))
        return MISFIT
    except http.client.HTTPException as e:  # IncompleteRead: the connection dropped mid-file
        print(f"the download was cut off ({type(e).__name__}: {e})")
        return CUT
    except urllib.error.HTTPError as e:  # an OSError too, but the server was reached
        print(f"the server answered HTTP {e.code} {e.reason} for {e.url}")
        return REFUSED
    except OSError as e:  # URLError, timeouts, DNS: no network to torchvision's server
        print(f"download failed: {type(e).__name__}: {e}")
        return NO_DOWNLOAD
    write_npz(state, Path(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
