"""The OpenAI API through the official ``openai`` client, against a real server process."""

from __future__ import annotations

import openai
import pytest
from server_utils import SERVED_NAME, RemoteServer

MODEL = SERVED_NAME
GREEDY = {"temperature": 0.0}
NO_EOS = {"ignore_eos": True}


def tokenize(server: RemoteServer, **body: object) -> list[int]:
    with server.http() as http:
        response = http.post("/tokenize", json=body)
    assert response.status_code == 200, response.text
    return response.json()["tokens"]


def test_models_lists_every_served_name(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL, "other-name"]
    assert models[0].model_extra["max_model_len"] == 512
    assert client.models.retrieve("other-name").id == "other-name"


def test_completion_usage_counts_the_tokens(server: RemoteServer, client: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    result = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=7, logprobs=0, extra_body=NO_EOS, **GREEDY
    )
    choice = result.choices[0]
    assert result.object == "text_completion" and result.model == MODEL
    assert choice.finish_reason == "length"
    assert result.usage.prompt_tokens == len(tokenize(server, prompt=prompt))
    assert result.usage.completion_tokens == 7 == len(choice.logprobs.tokens)
    assert result.usage.total_tokens == result.usage.prompt_tokens + 7


def test_completion_prompt_forms(server: RemoteServer, client: openai.OpenAI) -> None:
    """A string, its token ids, a list of strings and a list of id lists give the same text."""
    texts = ["Once upon a time", "In a galaxy"]
    ids = [tokenize(server, prompt=t) for t in texts]

    def run(prompt: object, n: int = 1) -> list[str]:
        result = client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=5, n=n, extra_body=NO_EOS, **GREEDY
        )
        assert [c.index for c in result.choices] == list(range(len(result.choices)))
        return [c.text for c in result.choices]

    single = run(texts[0])
    assert run(ids[0]) == single
    both = run(texts)
    assert both[0] == single[0]
    assert run(ids) == both
    assert run(texts, n=2) == [both[0], both[0], both[1], both[1]]


def test_streaming_completion_matches_non_streaming(client: openai.OpenAI) -> None:
    args = {"model": MODEL, "prompt": "Streaming works", "max_tokens": 12, **GREEDY}
    full = client.completions.create(**args, extra_body=NO_EOS)
    chunks = list(
        client.completions.create(
            **args, stream=True, stream_options={"include_usage": True}, extra_body=NO_EOS
        )
    )
    content, usage_chunk = chunks[:-1], chunks[-1]
    assert all(c.usage is None for c in content)
    assert "".join(c.choices[0].text for c in content) == full.choices[0].text
    assert content[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in content[:-1])
    assert usage_chunk.choices == []
    assert usage_chunk.usage.completion_tokens == full.usage.completion_tokens
    assert usage_chunk.usage.total_tokens == full.usage.total_tokens
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1


def test_chat_completion_and_its_stream_agree(server: RemoteServer, client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say something."},
        {"role": "assistant", "content": "Something."},
        {"role": "user", "content": [{"type": "text", "text": "Again."}]},
    ]
    args = {"model": MODEL, "messages": messages, "max_completion_tokens": 10, **GREEDY}
    full = client.chat.completions.create(**args, extra_body=NO_EOS)
    assert full.object == "chat.completion"
    assert full.choices[0].message.role == "assistant"
    assert full.usage.prompt_tokens == len(tokenize(server, messages=messages))
    assert full.usage.completion_tokens == 10
    stream = client.chat.completions.create(
        **args, stream=True, stream_options={"include_usage": True}, extra_body=NO_EOS
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "length"
    usage, expected = chunks[-1].usage, full.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        expected.prompt_tokens,
        expected.completion_tokens,
        expected.total_tokens,
    )
    # The second request found the same prompt in the prefix cache.
    assert usage.prompt_tokens_details.cached_tokens > 0


def test_text_parts_equal_a_string_content(client: openai.OpenAI) -> None:
    def run(content: object) -> str:
        result = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=6, **GREEDY
        )
        return result.choices[0].message.content

    parts = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    assert run(parts) == run("first\nsecond")


def test_n_choices_and_usage(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Pick"}],
        n=3,
        max_tokens=4,
        temperature=1.0,
        seed=7,
        extra_body=NO_EOS,
    )
    assert sorted(c.index for c in result.choices) == [0, 1, 2]
    assert result.usage.completion_tokens == 12
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Pick"}],
            n=3,
            max_tokens=4,
            temperature=1.0,
            seed=7,
            stream=True,
            extra_body=NO_EOS,
        )
    )
    streamed = {i: "" for i in range(3)}
    for chunk in chunks:
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert streamed == {c.index: c.message.content for c in result.choices}


def test_completion_logprobs(client: openai.OpenAI) -> None:
    result = client.completions.create(
        model=MODEL, prompt="Logprobs", max_tokens=5, logprobs=3, **GREEDY
    )
    lp = result.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert value <= 0.0
        # The top 3 plus the chosen token, keyed by text: byte tokens that all print as U+FFFD
        # share one key (OpenAI's format has no way around that).
        assert 1 <= len(top) <= 4
        assert value == pytest.approx(max(top.values()))  # greedy picks the most likely
        assert top[token] == pytest.approx(value)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]


def test_echo_with_logprobs_scores_the_prompt(server: RemoteServer, client: openai.OpenAI) -> None:
    prompt = "Echo me"
    result = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=2, echo=True, logprobs=1, **GREEDY
    )
    choice = result.choices[0]
    assert choice.text.startswith(prompt)
    num_prompt = len(tokenize(server, prompt=prompt))
    assert len(choice.logprobs.tokens) == num_prompt + 2
    assert choice.logprobs.token_logprobs[0] is None  # nothing predicts the first token
    assert all(v is not None for v in choice.logprobs.token_logprobs[1:])


def test_chat_logprobs(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        logprobs=True,
        top_logprobs=2,
        extra_body=NO_EOS,
        **GREEDY,
    )
    content = result.choices[0].logprobs.content
    assert len(content) == 4
    for item in content:
        assert len(item.top_logprobs) == 2
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob)
        assert item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob
        assert bytes(item.bytes).decode("utf-8", errors="replace") == item.token


def test_stop_strings(client: openai.OpenAI) -> None:
    args = {"model": MODEL, "prompt": "Stop here", "max_tokens": 30, **GREEDY}
    text = client.completions.create(**args, extra_body=NO_EOS).choices[0].text
    # A printable character that first occurs after the start of the text.
    stop = next(ch for ch in text[1:] if ch.isascii() and ch.isalnum() and text.index(ch) > 0)
    expected = text[: text.index(stop)]
    stopped = client.completions.create(**args, stop=[stop], extra_body=NO_EOS).choices[0]
    assert (stopped.text, stopped.finish_reason) == (expected, "stop")
    assert stopped.model_extra["stop_reason"] == stop
    kept = client.completions.create(
        **args, stop=stop, extra_body={**NO_EOS, "include_stop_str_in_output": True}
    )
    assert kept.choices[0].text == expected + stop
    streamed = client.completions.create(**args, stop=[stop], stream=True, extra_body=NO_EOS)
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_seeds_make_sampling_reproducible(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        result = client.completions.create(
            model=MODEL,
            prompt="Random",
            max_tokens=16,
            temperature=1.0,
            seed=seed,
            extra_body=NO_EOS,
        )
        return result.choices[0].text

    assert sample(42) == sample(42)
    assert sample(42) != sample(43)


def test_vllm_extra_sampling_fields_apply(client: openai.OpenAI) -> None:
    """vLLM's extras arrive through ``extra_body``: top_k=1 is greedy at any temperature."""
    greedy = client.completions.create(model=MODEL, prompt="Extras", max_tokens=8, **GREEDY)
    top1 = client.completions.create(
        model=MODEL, prompt="Extras", max_tokens=8, temperature=1.5, extra_body={"top_k": 1}
    )
    assert top1.choices[0].text == greedy.choices[0].text


def test_tokenize_and_detokenize(server: RemoteServer) -> None:
    with server.http() as http:
        tokens = http.post("/tokenize", json={"prompt": "héllo wörld"}).json()
        assert tokens["count"] == len(tokens["tokens"]) and tokens["max_model_len"] == 512
        back = http.post("/detokenize", json={"tokens": tokens["tokens"]}).json()
        assert back == {"prompt": "héllo wörld"}


def test_health_version_and_metrics_need_no_key(server: RemoteServer) -> None:
    import httpx

    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/version").json()["version"]
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "heron:num_requests_running",
        "heron:num_requests_waiting",
        "heron:kv_cache_usage_perc",
        "heron:prefix_cache_queries_total",
        "heron:prefix_cache_hits_total",
        "heron:prompt_tokens_total",
        "heron:generation_tokens_total",
        "heron:time_to_first_token_seconds_bucket",
        "heron:time_per_output_token_seconds_bucket",
        "heron:e2e_request_latency_seconds_bucket",
        "heron:request_success_total{",
    ):
        assert name in text, name


def test_streaming_several_prompts_with_n(client: openai.OpenAI) -> None:
    prompts = ["First prompt", "Second prompt"]
    args = {"model": MODEL, "prompt": prompts, "max_tokens": 6, "n": 2, **GREEDY}
    full = client.completions.create(**args)
    streamed: dict[int, str] = {}
    finished = set()
    for chunk in client.completions.create(**args, stream=True):
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + choice.text
            if choice.finish_reason:
                finished.add(choice.index)
    assert streamed == {c.index: c.text for c in full.choices}
    assert finished == {0, 1, 2, 3}
    assert streamed[0] == streamed[1] and streamed[2] == streamed[3]


def test_best_of_returns_the_n_most_likely(client: openai.OpenAI) -> None:
    result = client.completions.create(
        model=MODEL,
        prompt="Choose",
        max_tokens=5,
        n=2,
        best_of=4,
        temperature=1.0,
        seed=1,
        logprobs=0,
        extra_body=NO_EOS,
    )
    assert [c.index for c in result.choices] == [0, 1]
    assert result.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in result.choices)
    totals = [sum(c.logprobs.token_logprobs) for c in result.choices]
    assert totals == sorted(totals, reverse=True)


def test_logit_bias_and_penalties_apply(server: RemoteServer, client: openai.OpenAI) -> None:
    [token_a] = tokenize(server, prompt="A")
    biased = client.completions.create(
        model=MODEL, prompt="Bias", max_tokens=4, logit_bias={str(token_a): 100}, **GREEDY
    )
    assert biased.choices[0].text == "AAAA"
    # A frequency penalty large enough to outweigh the bias breaks the repetition.
    penalized = client.completions.create(
        model=MODEL,
        prompt="Bias",
        max_tokens=4,
        logit_bias={str(token_a): 3},
        frequency_penalty=2.0,
        presence_penalty=2.0,
        user="someone",
        **GREEDY,
    )
    assert penalized.choices[0].text.count("A") < 4
