"""Which GPU architectures a compiled module carries, read from the file itself.

``cuobjdump`` and ``roc-obj-ls`` answer this too, but they are not always installed (the CUDA
compiler packages ship without cuobjdump), so the tests read the two container formats directly:

* nvcc embeds one *fatbin* per translation unit: a 16-byte header (magic ``0xBA55ED50``, version,
  header size, payload size) followed by entries whose header gives the kind (1 = PTX, 2 = ELF/SASS)
  and the ``sm_XY`` number at byte 28.
* clang's HIP offload embeds *offload bundles*: ``__CLANG_OFFLOAD_BUNDLE__``, an entry count, then
  per entry an offset, a size and a target id such as ``hipv4-amdgcn-amd-amdhsa--gfx90a``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
OFFLOAD_BUNDLE_MAGIC = b"__CLANG_OFFLOAD_BUNDLE__"
COMPRESSED_BUNDLE_MAGIC = b"CCOB"


@dataclass
class CudaArchs:
    sass: set[int] = field(default_factory=set)
    ptx: set[int] = field(default_factory=set)


def cuda_fatbin_archs(path: Path) -> CudaArchs:
    """SASS and PTX architectures (as 80, 89, ...) in every fatbin embedded in ``path``."""
    data = path.read_bytes()
    found = CudaArchs()
    pos = data.find(FATBIN_MAGIC)
    while pos >= 0:
        _, version, header_size, payload = struct.unpack_from("<IHHQ", data, pos)
        if version == 1 and header_size == 16 and pos + 16 + payload <= len(data):
            entry, end = pos + header_size, pos + header_size + payload
            while entry + 32 <= end:
                kind, _, entry_header, size = struct.unpack_from("<HHIQ", data, entry)
                arch = struct.unpack_from("<I", data, entry + 28)[0]
                if kind == 1:
                    found.ptx.add(arch)
                elif kind == 2:
                    found.sass.add(arch)
                else:
                    break
                entry += entry_header + size
        pos = data.find(FATBIN_MAGIC, pos + 4)
    return found


def hip_offload_targets(path: Path) -> set[str] | None:
    """AMD GPU targets (``gfx90a``, ...) of the offload bundles in ``path``.

    ``None`` when the bundles are compressed (ROCm 6 ``CCOB``), which this reader does not unpack.
    """
    data = path.read_bytes()
    targets: set[str] = set()
    pos = data.find(OFFLOAD_BUNDLE_MAGIC)
    while pos >= 0:
        cursor = pos + len(OFFLOAD_BUNDLE_MAGIC)
        (count,) = struct.unpack_from("<Q", data, cursor)
        cursor += 8
        for _ in range(min(count, 64)):
            _, _, id_len = struct.unpack_from("<QQQ", data, cursor)
            cursor += 24
            target_id = data[cursor : cursor + id_len].decode("ascii", "replace")
            cursor += id_len
            if target_id.startswith("hip") and "--" in target_id:
                targets.add(target_id.rsplit("--", 1)[1].split(":")[0])
        pos = data.find(OFFLOAD_BUNDLE_MAGIC, pos + 1)
    if not targets and COMPRESSED_BUNDLE_MAGIC in data:
        return None
    return targets
