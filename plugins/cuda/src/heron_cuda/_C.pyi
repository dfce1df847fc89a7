# Type stub of the compiled kernel module; see csrc/heron_ops.h for the conventions.
RUNTIME: str
ARCHS: str
PARTITION_SIZE: int
HEAD_SIZES: list[int]
DTYPE_FLOAT32: int
DTYPE_FLOAT16: int
DTYPE_BFLOAT16: int

def write_kv(
    key: int,
    key_stride: int,
    value: int,
    value_stride: int,
    key_cache: int,
    value_cache: int,
    slot_mapping: int,
    num_tokens: int,
    num_kv_heads: int,
    head_size: int,
    block_size: int,
    num_blocks: int,
    dtype: int,
    device: int,
    stream: int,
) -> None: ...
def paged_attention(
    out: int,
    out_stride: int,
    query: int,
    query_stride: int,
    key_cache: int,
    value_cache: int,
    query_start_loc: int,
    seq_lens: int,
    block_tables: int,
    block_table_stride: int,
    num_seqs: int,
    num_heads: int,
    num_kv_heads: int,
    head_size: int,
    block_size: int,
    scale: float,
    max_query_len: int,
    max_partitions: int,
    tmp_out: int,
    max_logits: int,
    exp_sums: int,
    dtype: int,
    device: int,
    stream: int,
    causal: int = 1,
    window: int = 0,
    softcap: float = 0.0,
) -> None: ...
def rms_norm(
    out: int,
    out_stride: int,
    x: int,
    x_stride: int,
    weight: int,
    num_tokens: int,
    hidden_size: int,
    eps: float,
    dtype: int,
    device: int,
    stream: int,
) -> None: ...
def rotary_embedding(
    positions: int,
    query: int,
    query_stride: int,
    key: int,
    key_stride: int,
    cos_sin_cache: int,
    max_position: int,
    rot_dim: int,
    num_tokens: int,
    num_heads: int,
    num_kv_heads: int,
    head_size: int,
    dtype: int,
    device: int,
    stream: int,
) -> None: ...
def silu_and_mul(
    out: int,
    out_stride: int,
    x: int,
    x_stride: int,
    num_tokens: int,
    d: int,
    dtype: int,
    device: int,
    stream: int,
) -> None: ...

MOE_MAX_EXPERTS: int
MOE_MAX_TOP_K: int
MOE_BLOCK_M: int

def moe_workspace_size(num_slots: int, num_experts: int) -> list[int]: ...
def moe_align(
    topk_ids: int,
    num_slots: int,
    num_experts: int,
    workspace: int,
    workspace_ints: int,
    device: int,
    stream: int,
) -> None: ...
def fused_moe(
    out: int,
    out_stride: int,
    x: int,
    x_stride: int,
    w13: int,
    w2: int,
    topk_ids: int,
    topk_weights: int,
    weights_float32: int,
    num_tokens: int,
    top_k: int,
    hidden: int,
    intermediate: int,
    num_experts: int,
    workspace: int,
    workspace_ints: int,
    act: int,
    expert_out: int,
    dtype: int,
    device: int,
    stream: int,
) -> None: ...
def moe_topk_softmax(
    weights: int,
    ids: int,
    logits: int,
    logits_stride: int,
    num_tokens: int,
    num_experts: int,
    top_k: int,
    renormalize: int,
    dtype: int,
    device: int,
    stream: int,
) -> None: ...
