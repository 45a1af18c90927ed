"""A heads stage's starting weights, downloaded (and converted) once into ``<workspace>/pretrained/``.

Model Garden's ImageNet ResNet checkpoints are fetched as published (a ``.tar.gz``); torchvision's
weights go through :mod:`helpers.train.torch_convert`.
"""
from __future__ import annotations

import os
import socket
import tarfile
import urllib.parse
import urllib.request
from pathlib import Path

from helpers.atomic import atomic_path
from helpers.train import config as cfglib
from helpers.train.torch_convert import PretrainedWeightsUnavailable
from helpers.workspace import Workspace


def resolve_pretrained(profile: cfglib.Profile, ws: Workspace, timeout_s: float = 20.0, cfg=None) -> str:
    """Local checkpoint prefix of the profile's start (downloaded, and converted, once).

    Cached in ``<workspace>/pretrained/``: Model Garden's ImageNet ResNet (``imagenet``), or
    torchvision's weights converted for ``cfg``'s model (``coco``, ``imagenet-torchvision``:
    :func:`helpers.train.torch_convert.resolve_start`). Raises
    :class:`PretrainedWeightsUnavailable` quickly (never hangs) when the weights cannot be
    reached.
    """
    import tensorflow as tf

    if profile.pretrained is None:
        raise ValueError(f"profile {profile.name} has no pretrained weights")
    if profile.pretrained in cfglib.TORCHVISION_STARTS:
        from helpers.train import torch_convert

        return torch_convert.resolve_start(ws.root, profile.pretrained, cfg.task.model,
                                           cfg.task.init_checkpoint_modules)
    url = (cfglib.IMAGENET_RESNET_URLS.get(profile.resnet_depth)
           if profile.pretrained == "imagenet" else profile.pretrained)
    if url is None:
        raise PretrainedWeightsUnavailable(
            f"no ImageNet checkpoint is published for {profile.backbone}; pass "
            "from_scratch=True or init_checkpoint='<path to a checkpoint with a `backbone`>'")
    if "://" not in url or url.startswith("file://"):
        local = url.replace("file://", "")
        return tf.train.latest_checkpoint(local) if Path(local).is_dir() else local
    name = Path(urllib.parse.urlparse(url).path).name.replace(".tar.gz", "")
    cache = ws.root / "pretrained" / name
    found = _find_prefix(cache)
    if found:
        return found
    offer = ("Re-run with from_scratch=True to train from random weights (much weaker "
             "results), or download it yourself and pass init_checkpoint='<checkpoint prefix>'.")
    host = urllib.parse.urlparse(url).hostname
    try:
        socket.create_connection((host, 443), timeout=min(timeout_s, 5.0)).close()
        tmp_tar = cache.parent / f".{name}.tar.gz"
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(tmp_tar) as tmp, urllib.request.urlopen(url, timeout=timeout_s) as resp:
            from helpers.progress import tqdm

            total = int(resp.headers.get("Content-Length") or 0) or None
            with open(tmp, "wb") as f, tqdm(total=total, unit="B", unit_scale=True,
                                            desc=f"downloading {name}") as bar:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        extract = cache.parent / f".{name}.extracting"
        with tarfile.open(tmp_tar) as tar:
            tar.extractall(extract, filter="data")
        os.replace(extract, cache)
        tmp_tar.unlink()
    except (OSError, tarfile.TarError) as e:
        raise PretrainedWeightsUnavailable(
            f"pretrained weights for {profile.backbone} could not be reached at {url} "
            f"({type(e).__name__}: {e}). {offer}") from e
    found = _find_prefix(cache)
    if not found:
        raise PretrainedWeightsUnavailable(f"{url} held no TensorFlow checkpoint. {offer}")
    return found


def _find_prefix(folder: Path) -> str | None:
    if not folder.is_dir():
        return None
    idx = sorted(folder.rglob("*.index"))
    return str(idx[-1].with_suffix("")) if idx else None
