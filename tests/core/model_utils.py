"""Helpers to build tiny random Hugging Face models and run Heron models on them.

Reused by engine tests: :func:`make_tiny_model_dir` writes a complete model folder (config,
safetensors, tokenizer with a chat template, generation config) in milliseconds, and
:class:`ReferenceAttention` / :class:`Harness` run a model over paged KV caches without core's
engine. No network: the tokenizer is a byte-level BPE built in code (259 tokens: 256 bytes plus
``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``), so any text round-trips.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from heron.models import ModelContext
from heron_interfaces import AttentionBackend, AttentionMetadata
from heron_interfaces.kernel_ops import KernelOps
from heron_interfaces.reference import ReferenceAttention

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TINY_VOCAB = 256 + len(SPECIAL_TOKENS)
PAD_ID, IM_START_ID, EOS_ID = 256, 257, 258

_TINY_DEFAULTS: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": TINY_VOCAB,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "bos_token_id": None,
    "eos_token_id": EOS_ID,
    "pad_token_id": PAD_ID,
}
ARCHS = ("llama", "mistral", "qwen2", "qwen3")

# Overrides for tests that run on every backend: head size 64: the smallest that every backend's kernels accept.
KERNEL_FRIENDLY = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 512,
}

# SmolLM2-135M's shapes, for benchmarks on machines the bundled GGUF cannot be carried to.
SMOLLM2_SHAPE = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}

# Prompts of very different lengths, batched together by the engine-vs-HF equality tests.
EQUALITY_PROMPTS = [
    "Herons wade.",
    "The quick brown fox jumps over the lazy dog, then naps in the warm afternoon sun",
    "a",
    "Paged attention stores keys and values in fixed-size blocks; a block table maps them.",
]
# Engine modes that must all give HF's greedy ids on the tiny models.
ENGINE_MODES = {
    "default": {},
    "no-prefix-caching": {"enable_prefix_caching": False},
    "small-chunks": {"max_num_batched_tokens": 16, "max_num_seqs": 3},
    "preemption": {"num_gpu_blocks_override": 8, "max_model_len": 112},
}


def kernel_friendly_overrides(arch: str) -> dict[str, Any]:
    """KERNEL_FRIENDLY for ``arch``; Qwen3's explicit head_dim is raised to the same 64."""
    overrides = dict(KERNEL_FRIENDLY)
    if arch == "qwen3":
        overrides["head_dim"] = 64
    return overrides


def build_tokenizer() -> Any:
    """A byte-level BPE tokenizer without merges, special tokens and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_config(arch: str = "llama", **overrides: Any) -> Any:
    """A tiny config of ``arch`` (one of :data:`ARCHS`); ``overrides`` set any config field."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    classes = {
        "llama": LlamaConfig,
        "mistral": MistralConfig,
        "qwen2": Qwen2Config,
        "qwen3": Qwen3Config,
    }
    kwargs = dict(_TINY_DEFAULTS)
    if arch == "mistral":
        kwargs["sliding_window"] = None
    if arch == "qwen3":
        kwargs["head_dim"] = 32  # differs from hidden/heads = 16 on purpose
    kwargs.update(overrides)
    return classes[arch](**kwargs)


def tiny_hf_model(config: Any, seed: int = 0) -> Any:
    """A random HF model for ``config`` whose every weight matters (no all-ones norms, no
    zero biases), so that a mis-mapped tensor changes the logits."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.2)
    return model.eval()


def make_tiny_model_dir(
    tmp_path: Path,
    arch: str = "llama",
    *,
    seed: int = 0,
    max_shard_size: str | None = None,
    name: str | None = None,
    **overrides: Any,
) -> Path:
    """Write a tiny random ``arch`` model folder under ``tmp_path`` and return its path.

    ``max_shard_size`` (e.g. ``"40KB"``) produces a sharded checkpoint with an index.
    """
    from transformers import GenerationConfig

    folder = Path(tmp_path) / (name or f"tiny-{arch}")
    model = tiny_hf_model(tiny_config(arch, **overrides), seed)
    model.generation_config = GenerationConfig(eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    build_tokenizer().save_pretrained(folder)
    return folder


def make_equality_model(tmp_path: Path, arch: str) -> tuple[Path, list[list[int]]]:
    """The engine-vs-HF equality tests' tiny ``arch`` model and EQUALITY_PROMPTS as its token ids."""
    from transformers import AutoTokenizer

    folder = make_tiny_model_dir(tmp_path, arch, **kernel_friendly_overrides(arch))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return folder, [tokenizer(p)["input_ids"] for p in EQUALITY_PROMPTS]


def make_context(
    dtype: torch.dtype = torch.float32,
    block_size: int = 4,
    attention_cls: type[AttentionBackend] = ReferenceAttention,
    ops: KernelOps | None = None,
) -> ModelContext:
    """A CPU :class:`ModelContext`; small blocks so that short prompts span several blocks."""
    return ModelContext(
        dtype=dtype,
        device=torch.device("cpu"),
        attention_cls=attention_cls,
        block_size=block_size,
        ops=ops or KernelOps(),
    )


class Harness:
    """Runs a Heron model over paged KV caches: a minimal stand-in for core's runner.

    Each sequence reserves enough consecutive blocks for ``max_len`` tokens when added; blocks of
    different sequences are interleaved in the pool, so block-table bugs show.
    """

    def __init__(self, model: Any, ctx: ModelContext, *, num_blocks: int = 64) -> None:
        self.model = model
        self.block_size = ctx.block_size
        shape = ctx.attention_cls.kv_cache_shape(
            num_blocks, ctx.block_size, model.num_kv_heads, model.head_size
        )
        self.kv_caches = [torch.zeros(shape, dtype=ctx.dtype) for _ in range(model.num_layers)]
        self.free = list(range(num_blocks - 1, -1, -1))
        self.tables: list[list[int]] = []
        self.lens: list[int] = []

    def add(self, max_len: int) -> int:
        """Reserve blocks for a new sequence; returns its index."""
        needed = -(-max_len // self.block_size)
        self.tables.append([self.free.pop() for _ in range(needed)])
        self.lens.append(0)
        return len(self.tables) - 1

    @torch.no_grad()
    def step(self, chunks: dict[int, list[int]]) -> dict[int, torch.Tensor]:
        """Feed each sequence its next tokens; returns float32 logits ``[len(chunk), vocab]``."""
        seqs = list(chunks)
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        starts = [0]
        seq_lens = []
        for s in seqs:
            start = self.lens[s]
            for offset, token in enumerate(chunks[s]):
                pos = start + offset
                ids.append(token)
                positions.append(pos)
                block = self.tables[s][pos // self.block_size]
                slots.append(block * self.block_size + pos % self.block_size)
            self.lens[s] = start + len(chunks[s])
            starts.append(len(ids))
            seq_lens.append(self.lens[s])
        width = max(len(self.tables[s]) for s in seqs)
        tables = [self.tables[s] + [0] * (width - len(self.tables[s])) for s in seqs]
        q_lens = [len(chunks[s]) for s in seqs]
        decode = sum(1 for q, n in zip(q_lens, seq_lens) if q == 1 and n > 1)
        metadata = AttentionMetadata(
            query_start_loc=torch.tensor(starts, dtype=torch.int32),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            block_tables=torch.tensor(tables, dtype=torch.int32),
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            max_query_len=max(q_lens),
            max_seq_len=max(seq_lens),
            num_prefill_tokens=len(ids) - decode,
            num_decode_tokens=decode,
            num_seqs=len(seqs),
        )
        hidden = self.model(
            torch.tensor(ids, dtype=torch.long),
            torch.tensor(positions, dtype=torch.long),
            self.kv_caches,
            metadata,
        )
        logits = self.model.compute_logits(hidden)
        return {s: logits[starts[i] : starts[i + 1]] for i, s in enumerate(seqs)}


@torch.no_grad()
def hf_greedy(hf_model: Any, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Exactly ``new_tokens`` greedy ids of ``generate()`` after each prompt, one at a time."""
    outputs = []
    for ids in prompts:
        generated = hf_model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
        )
        outputs.append(generated[0, len(ids) :].tolist())
    return outputs


@torch.no_grad()
def hf_logits(hf_model: Any, token_ids: list[int]) -> torch.Tensor:
    """Float32 logits ``[len(token_ids), vocab]`` of a transformers model on one sequence."""
    return hf_model(torch.tensor([token_ids])).logits[0].float()


_GGUF_BLOCK_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _gguf_name(hf_name: str) -> str:
    top = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    stem, _, kind = hf_name.rpartition(".")
    if stem in top:
        return f"{top[stem]}.{kind}"
    _, _, layer, module = stem.split(".", 3)
    return f"blk.{layer}.{_GGUF_BLOCK_NAMES[module]}.{kind}"


def _llama_cpp_permute(weights: Any, n_head: int) -> Any:
    """``convert_hf_to_gguf.py``'s permutation of Q/K rows for the llama architecture."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_tiny_gguf(path: Path, hf_model: Any, qtypes: dict[str, Any] | None = None) -> dict:
    """Write ``hf_model`` as a GGUF file the way llama.cpp's converter does.

    ``qtypes`` maps a substring of the HF tensor name (``"q_proj"``, ``"embed_tokens"``) to a
    ``GGMLQuantizationType``; 1-D tensors stay F32 as in llama.cpp, the rest default to F32.
    Returns the HF state dict as the file holds it after quantization (decoded with gguf-py),
    the reference for comparing logits. The tokenizer is :func:`build_tokenizer`'s.
    """
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import dequantize, quantize

    config = hf_model.config
    arch = config.model_type
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer = GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    tokenizer = build_tokenizer()
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([3 if token in SPECIAL_TOKENS else 1 for token, _ in vocab])
    # No merges: transformers then derives them from scores, which for bytes-only is none.
    writer.add_token_scores([0.0] * len(vocab))
    writer.add_eos_token_id(EOS_ID)
    writer.add_pad_token_id(PAD_ID)
    writer.add_chat_template(CHATML_TEMPLATE)
    reference = {}
    for name, tensor in hf_model.state_dict().items():
        if config.tie_word_embeddings and name == "lm_head.weight":
            continue
        data = tensor.float().numpy()
        qtype = GGMLQuantizationType.F32
        if data.ndim > 1:
            qtype = next((t for key, t in (qtypes or {}).items() if key in name), qtype)
        encoded = quantize(data, qtype) if qtype != GGMLQuantizationType.F32 else data
        reference[name] = torch.from_numpy(np.array(dequantize(encoded, qtype), np.float32))
        if arch == "llama" and ".q_proj." in name:
            encoded = _llama_cpp_permute(encoded, config.num_attention_heads)
        elif arch == "llama" and ".k_proj." in name:
            encoded = _llama_cpp_permute(encoded, config.num_key_value_heads)
        writer.add_tensor(_gguf_name(name), encoded, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return reference
