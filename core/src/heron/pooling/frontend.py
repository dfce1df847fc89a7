"""From embedding inputs to engine requests, and from pooled vectors to outputs.

The pooling counterpart of the input and output processors: it tokenizes (with optional
truncation), checks lengths against ``max_model_len`` (a pooled prompt may use all of it: nothing
is generated after it), remembers each request's :class:`PoolingParams`, and turns the
scheduler's pooled vectors into :class:`EmbeddingRequestOutput` s.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from heron.engine.input_processor import InvalidPromptError, ProcessedPrompt, PromptTooLongError
from heron.pooling.config import PoolerConfig
from heron.pooling.outputs import EmbeddingOutput, EmbeddingRequestOutput
from heron.pooling.params import PoolingParams
from heron.pooling.pooler import finish_embedding
from heron.pooling.text_ids import TextIds
from heron.request import Request
from heron.sampling_params import SamplingParams
from heron.sched.output import RequestUpdate


class InputTooLongError(PromptTooLongError):
    """An embedding input longer than ``max_model_len``; carries both numbers."""

    def __init__(self, num_tokens: int, max_model_len: int) -> None:
        super().__init__(num_tokens, max_model_len)
        self.args = (
            f"This model's maximum context length is {max_model_len} tokens, but the input has "
            f"{num_tokens} tokens; shorten it, or set truncate_prompt_tokens to truncate it",
        )


@dataclass(slots=True, kw_only=True)
class PreparedPooling:
    """A validated pooling request, ready to join the engine (possibly from another thread)."""

    request_id: str
    prompt: ProcessedPrompt
    params: PoolingParams
    request: Request


PoolingWire = tuple[str, str | None, list[int], PoolingParams, float]
"""A prepared pooling request as a data-parallel front sends it to a replica: its id, text, token
ids, params and arrival time. Plain values unpickle several times faster than the dataclasses
(a ``Request`` carries its ``SamplingParams``), and the replica rebuilds the rest
(:meth:`PoolingFrontend.from_wire`)."""

PackedEmbedding = tuple[str, bytes | None]
"""A finished embedding as a replica sends it to its front: the request id and the vector's
float32 bytes (None: aborted). The front, which holds the prompt, builds the output
(:func:`unpack_embedding`): no prompt or token ids travel back, and unpacking 384 floats from
bytes is cheaper than pickling and unpickling them as a list."""


def to_wire(prepared: PreparedPooling) -> PoolingWire:
    """What a replica needs to rebuild ``prepared`` (see :data:`PoolingWire`)."""
    prompt = prepared.prompt
    return (
        prepared.request_id,
        prompt.prompt,
        prompt.prompt_token_ids,
        prepared.params,
        prepared.request.arrival_time,
    )


def unpack_embedding(
    request_id: str, prompt: ProcessedPrompt, data: bytes | None
) -> EmbeddingRequestOutput:
    """The output a replica's :meth:`PoolingFrontend.outputs` would have built, from its
    :data:`PackedEmbedding` (the same floats: float32 values widened to Python floats)."""
    return _embedding_output(
        request_id, prompt, None if data is None else array("f", data).tolist()
    )


def _embedding_output(
    request_id: str, prompt: ProcessedPrompt, embedding: list[float] | None
) -> EmbeddingRequestOutput:
    """An embedding request's output (``embedding`` None: it was aborted)."""
    return EmbeddingRequestOutput(
        request_id=request_id,
        prompt=prompt.prompt,
        prompt_token_ids=prompt.prompt_token_ids,
        outputs=None if embedding is None else EmbeddingOutput(embedding=embedding),
    )


class PoolingFrontend:
    def __init__(
        self,
        tokenizer: Any,
        *,
        pooler: PoolerConfig,
        max_model_len: int,
        vocab_size: int,
        hidden_size: int,
    ) -> None:
        self.tokenizer = tokenizer
        self._text_ids = TextIds(tokenizer)
        """Texts' ids straight from the fast tokenizer's Rust backend (the same ids)."""
        self.pooler = pooler
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self._pending: dict[str, PreparedPooling] = {}
        self._sampling = SamplingParams(max_tokens=1)
        """Every pooled request's placeholder sampling params (nothing samples; nothing writes
        them), one object: building one per request cost ~13 us, and pickling it more."""

    @classmethod
    def for_core(cls, core: Any) -> PoolingFrontend | None:
        """The frontend of an engine core that pools, or ``None`` for a generating one."""
        if core.pooler is None:
            return None
        return cls(
            core.source.tokenizer,
            pooler=core.pooler,
            max_model_len=core.max_model_len,
            vocab_size=core.runner.vocab_size,
            hidden_size=int(core.runner.model.hidden_size),
        )

    # -- input -----------------------------------------------------------------------------------
    def check_params(self, params: PoolingParams) -> None:
        """Raise :class:`PoolingParamsError` for options this model cannot honour."""
        params.check(
            hidden_size=self.hidden_size,
            matryoshka=self.pooler.matryoshka,
            max_model_len=self.max_model_len,
        )

    def process(self, prompt: Any, params: PoolingParams) -> ProcessedPrompt:
        """Token ids of one input: a string, token ids, or a ``{"prompt"|"prompt_token_ids"}`` dict.

        ``truncate_prompt_tokens=k`` truncates as vLLM does: a text through the tokenizer
        (``max_length=k``, its truncation side, special tokens kept: what sentence-transformers
        does at ``max_seq_length``), token ids to their last ``k``.
        """
        self.check_params(params)
        k = self._truncation(params)
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return self._from_ids(prompt["prompt_token_ids"], prompt.get("prompt"), k)
            if "prompt" in prompt:
                return self.process(prompt["prompt"], params)
            raise InvalidPromptError("an input dict needs 'prompt' or 'prompt_token_ids'")
        if isinstance(prompt, str):
            ids = self._text_ids.ids([prompt], k)[0]
            return self._checked(ProcessedPrompt(prompt=prompt, prompt_token_ids=ids))
        if isinstance(prompt, Sequence):
            return self._from_ids(prompt, None, k)
        raise InvalidPromptError(
            f"input must be a string, a list of token ids or a dict, got {type(prompt).__name__}"
        )

    def process_many(self, prompts: Sequence[Any], params: Sequence[PoolingParams]) -> list[Any]:
        """:meth:`process` of every text input, each batch of texts in one tokenizer call.

        A fast tokenizer encodes a list in one pass; one call per text (its Python around the
        Rust encoder) cost ~5 % of an offline embedding run; :class:`TextIds` then takes only the
        ids from the Rust backend. Texts are grouped by truncation length; other inputs come
        back as they are, for :meth:`prepare` to process.
        """
        out = list(prompts)
        groups: dict[int | None, list[int]] = {}
        for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
            if isinstance(prompt, str):
                self.check_params(p)
                groups.setdefault(self._truncation(p), []).append(i)
        for k, indices in groups.items():
            texts = [prompts[i] for i in indices]
            encoded = self._text_ids.ids(texts, k)
            for i, text, ids in zip(indices, texts, encoded, strict=True):
                out[i] = self._checked(ProcessedPrompt(prompt=text, prompt_token_ids=ids))
        return out

    def _truncation(self, params: PoolingParams) -> int | None:
        """The tokens a text or token list is cut to (``-1``: the model's length), or None."""
        k = params.truncate_prompt_tokens
        return self.max_model_len if k == -1 else k

    def _from_ids(self, ids: Sequence[int], text: str | None, k: int | None) -> ProcessedPrompt:
        bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, int)]
        if bad:
            raise InvalidPromptError(f"input token ids must be integers, got {bad[0]!r}")
        out_of_range = [t for t in ids if not 0 <= t < self.vocab_size]
        if out_of_range:
            raise InvalidPromptError(
                f"input token id {out_of_range[0]} is outside the vocabulary [0, {self.vocab_size})"
            )
        ids = list(ids)
        if k is not None:
            ids = ids[-k:]
        return self._checked(ProcessedPrompt(prompt=text, prompt_token_ids=ids))

    def _checked(self, processed: ProcessedPrompt) -> ProcessedPrompt:
        n = len(processed.prompt_token_ids)
        if n == 0:
            raise InvalidPromptError("the input is empty: at least one token is needed")
        if n > self.max_model_len:
            raise InputTooLongError(n, self.max_model_len)
        return processed

    def prepare(
        self,
        request_id: str,
        prompt: Any,
        params: PoolingParams | None,
        check_request: Callable[[Request], None],
    ) -> PreparedPooling:
        """Every check a request must pass, without touching engine state (safe off-thread)."""
        params = params or PoolingParams()
        self.check_params(params)
        processed = prompt if isinstance(prompt, ProcessedPrompt) else self.process(prompt, params)
        request = Request(
            request_id=request_id,
            prompt_token_ids=processed.prompt_token_ids,
            sampling_params=self._sampling,
        )
        check_request(request)
        return PreparedPooling(
            request_id=request_id, prompt=processed, params=params, request=request
        )

    def from_wire(self, wire: PoolingWire) -> PreparedPooling:
        """Rebuild a request the front prepared (and checked) from :func:`to_wire`'s values."""
        request_id, text, ids, params, arrival_time = wire
        return PreparedPooling(
            request_id=request_id,
            prompt=ProcessedPrompt(prompt=text, prompt_token_ids=ids),
            params=params,
            request=Request(
                request_id=request_id,
                prompt_token_ids=ids,
                sampling_params=self._sampling,
                arrival_time=arrival_time,
            ),
        )

    def add(self, prepared: PreparedPooling) -> None:
        self._pending[prepared.request_id] = prepared

    def forget(self, request_id: str) -> bool:
        """Drop a request (an abort); whether it was known."""
        return self._pending.pop(request_id, None) is not None

    # -- output ----------------------------------------------------------------------------------
    def _finished(self, updates: list[RequestUpdate]) -> Iterator[tuple[PreparedPooling, Any]]:
        """Each finished request still waited for, with its final vector (None: an abort's)."""
        for update in updates:
            prepared = self._pending.pop(update.request.request_id, None)
            if prepared is None:
                continue  # aborted by its caller: nobody waits for it
            vector = None
            if update.pooled is not None:
                vector = finish_embedding(update.pooled, self.pooler, prepared.params)
            yield prepared, vector

    def packed_outputs(self, updates: list[RequestUpdate]) -> list[PackedEmbedding]:
        """Finished requests' embeddings as a replica sends them (see :data:`PackedEmbedding`)."""
        return [
            (prepared.request_id, None if vector is None else vector.float().numpy().tobytes())
            for prepared, vector in self._finished(updates)
        ]

    def outputs(self, updates: list[RequestUpdate]) -> list[EmbeddingRequestOutput]:
        """Finished requests' embeddings (an update without a vector is an abort's)."""
        return [
            _embedding_output(
                prepared.request_id, prepared.prompt, None if vector is None else vector.tolist()
            )
            for prepared, vector in self._finished(updates)
        ]
