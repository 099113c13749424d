"""What a model was trained on: the training collection's name, kind, structure set, size and fingerprint.

Every checkpoint stores the description of its training cache (:func:`training_collection`) in its
``training_data`` field (:mod:`dermogaze.training.checkpoint`); ``explain``, ``predict``, the viewer and the
demo report show it (:func:`describe`). The fields:

===============  =================================================================================================
``name``         the cache folder's name (``data/isic2017-256``: ``isic2017-256``)
``source``       the collection folder the cache was prepared from (``info["source"]``), or None
``kind``         ``"synthetic"`` (the built-in synthetic data, :mod:`dermogaze.data.synth`), ``"real"`` (any other
                 collection) or ``"unknown"`` (a checkpoint written before the field existed, or an old cache whose
                 collection is gone)
``structure_set`` ``"isic2017"``, ``"isic2018"`` or ``"custom"``; ``structures``: the names, in index order
``size``         images per split, ``{"train": n, "val": n, "test": n}``
``fingerprint``  16 hex digits: SHA-256 of the cache's image ids per split, its size, structures and
                 normalisation (:func:`fingerprint`). Two preparations of the same collection with the same options
                 get the same fingerprint; another collection, split or size gets another.
===============  =================================================================================================

Decisions: ``prepare`` records the kind in ``info["kind"]`` (from the synthetic generator's sidecar files,
:func:`~dermogaze.data.synth.write.is_synthetic_collection`); a cache prepared before that is judged from its
``source`` folder when it still exists. A model trained on synthetic images and shown an image that is not
synthetic (a user's file, or a cache of a real collection) gets :data:`DEMONSTRATION_NOTE`
(:func:`demonstration_note`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..structures import STRUCTURE_SETS

#: Values of ``kind``.
KINDS = ("synthetic", "real", "unknown")
#: The line shown when a model trained on synthetic images diagnoses an image that is not synthetic.
DEMONSTRATION_NOTE = "trained on synthetic images: this diagnosis is a demonstration"
#: Keys of a ``training_data`` mapping (the module docstring says what each is).
FIELDS = ("name", "source", "kind", "structure_set", "structures", "size", "fingerprint")


def structure_set_name(structures: Sequence[str]) -> str:
    """``"isic2017"`` or ``"isic2018"`` when ``structures`` is that set in its order, else ``"custom"``."""
    return next((name for name, names in STRUCTURE_SETS.items() if tuple(structures) == names), "custom")


def collection_kind(info: Mapping[str, Any]) -> str:
    """``"synthetic"``, ``"real"`` or ``"unknown"``: the kind of collection a cache was prepared from.

    Args:
        info: the cache's ``info.json`` (:func:`~dermogaze.data.cache.load_info`).
    """
    kind = info.get("kind")
    if kind in KINDS:
        return kind
    source = info.get("source")  # a cache prepared before the kind was recorded: ask its collection
    if not source or not Path(source).is_dir():
        return "unknown"
    from .synth.write import is_synthetic_collection

    return "synthetic" if is_synthetic_collection(source) else "real"


def fingerprint(cache: str | Path, info: Mapping[str, Any]) -> str:
    """16 hex digits identifying a cache's content: SHA-256 of its image ids per split, size, structures and
    training normalisation (canonical JSON). Reads each split's ``ids.json`` only: cheap, deterministic, and
    independent of the random token and the file dates of a preparation.
    """
    ids = {}
    for split in info["splits"]:
        meta = json.loads((Path(cache) / split / "ids.json").read_text())
        ids[split] = list(meta["ids"])
    content = {"size": int(info["size"]), "structures": list(info["structures"]), "ids": ids,
               "mean": [round(float(v), 8) for v in info["mean"]], "std": [round(float(v), 8) for v in info["std"]]}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def training_collection(cache: str | Path, info: Mapping[str, Any]) -> dict[str, Any]:
    """The ``training_data`` of a model trained on ``cache`` (the fields of the module docstring).

    Args:
        cache: the prepared cache folder.
        info: its ``info.json`` (:func:`~dermogaze.data.cache.load_info`).
    """
    structures = [str(s) for s in info["structures"]]
    return {
        "name": Path(cache).resolve().name,
        "source": None if info.get("source") is None else str(info["source"]),
        "kind": collection_kind(info),
        "structure_set": structure_set_name(structures),
        "structures": structures,
        "size": {str(k): int(v) for k, v in info["counts"].items()},
        "fingerprint": fingerprint(cache, info),
    }


def unknown_training_data(structures: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``training_data`` of a checkpoint that does not record it: every field ``"unknown"`` or None, except the
    structures, which every checkpoint knows."""
    names = None if structures is None else [str(s) for s in structures]
    return {"name": "unknown", "source": None, "kind": "unknown",
            "structure_set": None if names is None else structure_set_name(names), "structures": names, "size": None,
            "fingerprint": None}


def check_training_data(value: Any) -> str | None:
    """What is wrong with a ``training_data`` mapping (read from a checkpoint), or None when it is well formed."""
    if not isinstance(value, dict) or set(value) != set(FIELDS):
        return f"must be a mapping of {', '.join(FIELDS)}, got {value!r}"[:300]
    if value["kind"] not in KINDS:
        return f"kind must be one of {', '.join(KINDS)}, got {value['kind']!r}"
    for key in ("name", "source", "structure_set", "fingerprint"):
        if not (value[key] is None or isinstance(value[key], str)) or (key == "name" and not value[key]):
            return f"{key} must be {'a non-empty' if key == 'name' else 'a'} string, got {value[key]!r}"
    names = value["structures"]
    if names is not None and (not isinstance(names, list) or not all(isinstance(s, str) and s for s in names)):
        return f"structures must be a list of names, got {names!r}"
    size = value["size"]
    if size is not None and (not isinstance(size, dict) or not all(
            isinstance(k, str) and isinstance(n, int) and not isinstance(n, bool) and n >= 0 for k, n in size.items())):
        return f"size must map split names to image counts, got {size!r}"
    return None


def describe(training_data: Mapping[str, Any] | None) -> str:
    """One line: ``synthetic collection 'cache' (isic2017 structures; 320 train / 80 val / 160 test images;
    fingerprint 0123456789abcdef)``, or ``unknown (...)`` for a checkpoint that does not record it."""
    if not training_data or training_data.get("kind") == "unknown" and training_data.get("fingerprint") is None:
        return "unknown (a checkpoint written before dermogaze recorded its training data)"
    size = training_data.get("size") or {}
    counts = " / ".join(f"{n} {split}" for split, n in size.items())
    parts = [f"{training_data.get('structure_set') or 'custom'} structures"]
    if counts:
        parts.append(f"{counts} images")
    if training_data.get("fingerprint"):
        parts.append(f"fingerprint {training_data['fingerprint']}")
    return f"{training_data['kind']} collection '{training_data['name']}' ({'; '.join(parts)})"


def demonstration_note(training_data: Mapping[str, Any] | None, image_kind: str | None) -> str | None:
    """:data:`DEMONSTRATION_NOTE` when a model trained on synthetic images is shown an image that is not synthetic.

    Args:
        training_data: the checkpoint's ``training_data``.
        image_kind: the kind of collection the image comes from (:func:`collection_kind` of its cache), or None for
            a user's image file (a photograph, as far as dermogaze can tell).
    """
    if training_data and training_data.get("kind") == "synthetic" and image_kind != "synthetic":
        return DEMONSTRATION_NOTE
    return None
