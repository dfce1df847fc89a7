"""Lazy iteration over the tensors of a Hugging Face checkpoint folder.

Tensors are read one at a time (safetensors memory-maps its files) so that loading never holds a
second full copy of the model in host memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from heron.loader.lazy import LazyTensor

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


def _indexed_files(folder: Path, index_name: str) -> list[Path] | None:
    index = folder / index_name
    if not index.is_file():
        return None
    weight_map = json.loads(index.read_text())["weight_map"]
    return [folder / name for name in sorted(set(weight_map.values()))]


def safetensors_files(folder: Path) -> list[Path]:
    """The safetensors shards of a checkpoint: the index's shards, else ``model.safetensors``,
    else every ``*.safetensors`` (``consolidated*`` duplicates of Mistral repos excluded)."""
    indexed = _indexed_files(folder, SAFETENSORS_INDEX)
    if indexed is not None:
        return indexed
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    return sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith("consolidated"))


def bin_files(folder: Path) -> list[Path]:
    """PyTorch ``*.bin`` shards, the fallback for checkpoints without safetensors."""
    indexed = _indexed_files(folder, BIN_INDEX)
    if indexed is not None:
        return indexed
    return sorted(folder.glob("pytorch_model*.bin")) or sorted(folder.glob("*.bin"))


def has_weights(folder: Path) -> bool:
    return bool(safetensors_files(folder) or bin_files(folder))


# safetensors' dtype names
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def iter_checkpoint(
    folder: str | Path, *, lazy: bool = False
) -> Iterator[tuple[str, torch.Tensor | LazyTensor]]:
    """Yield ``(name, tensor)`` for every tensor of the checkpoint in ``folder``.

    ``lazy``: safetensors tensors come as :class:`~heron.loader.lazy.LazyTensor` s that read only
    the slices a rank keeps (tensor and pipeline parallelism); use each before the next is
    yielded, since its file closes after its last tensor. ``*.bin`` checkpoints load whole.
    """
    from safetensors import safe_open

    folder = Path(folder)
    shards = safetensors_files(folder)
    if shards:
        for shard in shards:
            with safe_open(str(shard), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 - safe_open is not a Mapping
                    if lazy:
                        part = handle.get_slice(name)
                        dtype = _SAFETENSORS_DTYPES.get(part.get_dtype())
                        if dtype is not None:
                            yield name, LazyTensor(name, part.get_shape(), dtype, part.__getitem__)
                            continue
                    yield name, handle.get_tensor(name)
        return
    bins = bin_files(folder)
    if not bins:
        raise FileNotFoundError(f"no *.safetensors or *.bin weights in {folder}")
    for shard in bins:
        state = torch.load(shard, map_location="cpu", weights_only=True, mmap=True)
        yield from state.items()
        del state
