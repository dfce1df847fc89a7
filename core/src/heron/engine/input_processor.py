"""From what a user passes to token ids and engine requests, with every check done before queuing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from heron.request import Request
from heron.sampling_params import SamplingParams
from heron.structured_outputs.grammar import build_grammar

PromptType = str | Sequence[int] | dict[str, Any]
ChatMessages = list[dict[str, Any]]

# generation_config.json keys that become default sampling values (vLLM's list).
_GENERATION_DEFAULTS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}


class PromptTooLongError(ValueError):
    """The prompt does not fit ``max_model_len``; carries both numbers for API error bodies."""

    def __init__(self, num_tokens: int, max_model_len: int) -> None:
        super().__init__(
            f"This model's maximum context length is {max_model_len} tokens, but the prompt has "
            f"{num_tokens} tokens; shorten the prompt (at least one token must be left to generate)"
        )
        self.num_tokens = num_tokens
        self.max_model_len = max_model_len


class InvalidPromptError(ValueError):
    pass


@dataclass(slots=True, kw_only=True)
class ProcessedPrompt:
    prompt: str | None
    prompt_token_ids: list[int]


class InputProcessor:
    def __init__(
        self,
        tokenizer: Any,
        *,
        max_model_len: int,
        vocab_size: int,
        generation_config: dict[str, Any],
        use_generation_defaults: bool,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.eos_token_ids = _eos_ids(tokenizer, generation_config)
        self.defaults = (
            {
                ours: generation_config[theirs]
                for theirs, ours in _GENERATION_DEFAULTS.items()
                if generation_config.get(theirs) is not None
            }
            if use_generation_defaults
            else {}
        )

    def process_prompt(self, prompt: PromptType) -> ProcessedPrompt:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return self._from_ids(prompt["prompt_token_ids"], prompt.get("prompt"))
            if "prompt" in prompt:
                return self.process_prompt(prompt["prompt"])
            raise InvalidPromptError("a prompt dict needs 'prompt' or 'prompt_token_ids'")
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
            return self._checked(ProcessedPrompt(prompt=prompt, prompt_token_ids=list(ids)))
        if isinstance(prompt, Sequence):
            return self._from_ids(prompt, None)
        raise InvalidPromptError(
            f"prompt must be a string, a list of token ids or a dict, got {type(prompt).__name__}"
        )

    def render_chat(
        self,
        messages: ChatMessages,
        *,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: list[dict[str, Any]] | None = None,
    ) -> ProcessedPrompt:
        if chat_template is None and not getattr(self.tokenizer, "chat_template", None):
            raise InvalidPromptError(
                "this model has no chat template; pass chat_template= (or --chat-template)"
            )
        text = self.tokenizer.apply_chat_template(
            messages,
            chat_template=chat_template,
            add_generation_prompt=add_generation_prompt and not continue_final_message,
            continue_final_message=continue_final_message,
            tools=tools,
            tokenize=False,
        )
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._checked(ProcessedPrompt(prompt=text, prompt_token_ids=list(ids)))

    def _from_ids(self, ids: Sequence[int], text: str | None) -> ProcessedPrompt:
        bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, int)]
        if bad:
            raise InvalidPromptError(f"prompt token ids must be integers, got {bad[0]!r}")
        out_of_range = [t for t in ids if not 0 <= t < self.vocab_size]
        if out_of_range:
            raise InvalidPromptError(
                f"prompt token id {out_of_range[0]} is outside the vocabulary [0, {self.vocab_size})"
            )
        return self._checked(ProcessedPrompt(prompt=text, prompt_token_ids=list(ids)))

    def _checked(self, processed: ProcessedPrompt) -> ProcessedPrompt:
        n = len(processed.prompt_token_ids)
        if n == 0:
            raise InvalidPromptError("the prompt is empty: at least one token is needed")
        if n >= self.max_model_len:
            raise PromptTooLongError(n, self.max_model_len)
        return processed

    def sampling_params(self, params: SamplingParams | None) -> SamplingParams:
        """The user's params, with unset fields taken from the model's generation config."""
        params = params or SamplingParams()
        params.check_vocab(self.vocab_size)
        if params.structured_outputs is not None:
            build_grammar(params.structured_outputs)  # a bad schema/regex/grammar fails here
        return params.with_defaults(self.defaults) if self.defaults else params

    def make_requests(
        self, request_id: str, prompt: ProcessedPrompt, params: SamplingParams
    ) -> list[Request]:
        """One engine request per generated sequence; a user request with n > 1 fans out."""
        count = params.num_sequences
        if count == 1:
            return [self._request(request_id, prompt, params)]
        requests = []
        for i in range(count):
            child = params if params.seed is None else params.clone(seed=params.seed + i)
            requests.append(self._request(child_request_id(request_id, i), prompt, child))
        return requests

    def _request(self, rid: str, prompt: ProcessedPrompt, params: SamplingParams) -> Request:
        return Request(
            request_id=rid,
            prompt_token_ids=prompt.prompt_token_ids,
            sampling_params=params,
            eos_token_ids=self.eos_token_ids,
        )


def child_request_id(request_id: str, index: int) -> str:
    return f"{index}_{request_id}"


def _eos_ids(tokenizer: Any, generation_config: dict[str, Any]) -> frozenset[int]:
    ids: set[int] = set()
    eos = generation_config.get("eos_token_id")
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(t) for t in eos)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)
