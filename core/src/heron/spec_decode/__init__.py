"""Speculative decoding: cheap proposals of the next few tokens, verified by the target model.

The target model scores a decoding request's last token plus ``k`` draft tokens in one batched
step (a short multi-token query, as in chunked prefill); the longest acceptable prefix of the
draft is kept together with one token of the target's own, so each step yields 1 to ``k + 1``
tokens for one read of the weights. Modules: ``config`` (the user's ``speculative_config``),
``ngram`` (prompt-lookup proposer), ``proposer`` (what the scheduler asks), ``verify`` (greedy
verification and rejection sampling), ``sampling`` (the runner's speculative sampling step),
``metrics`` (acceptance counters).
"""

from heron.spec_decode.config import SpeculativeConfig, parse_speculative_config

__all__ = ["SpeculativeConfig", "parse_speculative_config"]
