"""heron-tpu's Pallas TPU kernels, pure JAX (no torch): the same source runs compiled on a TPU, in
Pallas's TPU interpreter on a CPU host, and through the TPU compiler ahead of time (heron_tpu.aot).
"""
