"""LLM providers for agent steps: OpenAI-compatible endpoints, a scripted offline model, limits, retries,
fallback chains, structured output, per-attempt records and embeddings.

Usage::

    router = LlmRouter(LlmConfig.load("llm.toml"))
    result = await router.chat(ChatRequest(messages=[ChatMessage(role="user", content="hi")]), chain="default")
    result.text, result.tool_calls, result.parsed, result.usage, result.cost_usd
    result.attempts          # one LlmAttempt per request sent, failed ones included
    # every model failed → AllModelsFailed(attempts), whose message lists each model and why it failed

Configuration (``LlmConfig.load(path_or_dict)``; TOML shown, JSON has the same shape)::

    [[providers]]
    name = "groq"
    base_url = "https://api.groq.com/openai/v1"   # any OpenAI-compatible endpoint
    api_key_env = "GROQ_API_KEY"                  # the *name* of the variable; omit for keyless local servers
    timeout_s = 30                                # per request (default 60)
    structured_output = "json_schema"             # or "json_object" for servers with JSON mode only
    max_tokens_param = "max_tokens"               # or "max_completion_tokens" (newer OpenAI models)
    stream = true                                 # stream replies to the tokens topic (false: servers that can't)
    [providers.limits]                            # all optional; waiting for a limit is not an error; they hold
                                                  # for a pool, split over its workers by task partitions
    max_concurrency = 8
    requests_per_minute = 30
    tokens_per_minute = 6000
    burst_window_s = 60                           # bucket size, in seconds of the rate
    [providers.retry]                             # per model of the chain, before falling back
    max_attempts = 3
    base_delay_s = 0.5
    max_delay_s = 20
    multiplier = 2
    max_retry_after_s = 30                        # a server's Retry-After is honoured up to this

    [[providers]]
    name = "offline"
    kind = "offline"                              # the in-process scripted model, no network
    [providers.offline]
    latency_ms = [50, 500]                        # uniform simulated latency
    failure_rate = 0.02                           # simulated 503s
    seed = 7                                      # seeds latency/failures only; replies depend on the request

    [[models]]
    id = "llama-70b"                              # the name chains use
    provider = "groq"
    model = "llama-3.3-70b-versatile"             # the provider's name for it (default: id)
    timeout_s = 20                                # overrides the provider's
    max_tokens = 1024                             # default when the request sets none

    [[models]]
    id = "offline/tool-then-answer"               # offline model ids must start with "offline/"
    provider = "offline"

    [prices."llama-70b"]                          # USD per 1M tokens; a model missing here costs 0, flagged
    input_per_m = 0.59                            # (price_known = false on its attempts: unknown, not free);
    output_per_m = 0.79                           # an unpriced offline model is free (price known, $0)

    [prices."offline/tool-then-answer"]           # a sample price for a model that bills nothing, so cost views
    input_per_m = 0.5                             # have figures: its attempts carry price_illustrative = true
    output_per_m = 1.5                            # and every view labels the cost "illustrative"
    illustrative = true

    [chains]
    default = ["llama-70b", "offline/tool-then-answer"]

API keys are read from the environment when a provider's client is first built and are never stored in these
objects, the attempt records, raised errors or log lines (error texts are scrubbed of key values and key-shaped
strings). Offline replies carry ``label = OFFLINE_LABEL`` and ``offline=True`` on their attempts.
"""

from tickflow.llm.config import (
    OFFLINE_LABEL,
    OFFLINE_SCRIPTS,
    LlmConfig,
    LlmConfigError,
    ModelConfig,
    ModelPrice,
    OfflineSettings,
    ProviderConfig,
    ProviderLimits,
    RetryPolicy,
)
from tickflow.llm.embeddings import Embedder, EmbeddingFailed, HashedBagOfWordsEmbedder, OpenAICompatibleEmbedder
from tickflow.llm.limits import LimitShare, ProviderLimiter, TokenBucket
from tickflow.llm.offline import OfflineModel
from tickflow.llm.router import LlmRouter
from tickflow.llm.scrub import count_tokens, scrub
from tickflow.llm.streaming import TokenListener, TokenStream, listening
from tickflow.llm.types import (
    AllModelsFailed,
    ChatMessage,
    ChatRequest,
    ChatResult,
    LlmAttempt,
    Outcome,
    ProviderFailure,
    ToolCall,
    ToolSpec,
    Usage,
)

__all__ = [
    "OFFLINE_LABEL",
    "OFFLINE_SCRIPTS",
    "AllModelsFailed",
    "ChatMessage",
    "ChatRequest",
    "ChatResult",
    "Embedder",
    "EmbeddingFailed",
    "HashedBagOfWordsEmbedder",
    "LimitShare",
    "LlmAttempt",
    "LlmConfig",
    "LlmConfigError",
    "LlmRouter",
    "ModelConfig",
    "ModelPrice",
    "OfflineModel",
    "OfflineSettings",
    "OpenAICompatibleEmbedder",
    "Outcome",
    "ProviderConfig",
    "ProviderFailure",
    "ProviderLimiter",
    "ProviderLimits",
    "RetryPolicy",
    "TokenBucket",
    "TokenListener",
    "TokenStream",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "count_tokens",
    "listening",
    "scrub",
]
