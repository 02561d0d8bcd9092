"""Options the built-in provider stages share beyond the stage contract's own."""

from __future__ import annotations

from pydantic import Field

from tollbridge.stage import BrainOptions, ProviderOptions, did_you_mean


class LLMOptions(ProviderOptions, BrainOptions):
    """A cascaded LLM stage: its client, the agent's prompt and tools, and sampling."""

    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int = Field(300, gt=0)


def check_llm_model(provider: str, kind: str, model: str) -> str:
    """Reject a model genai-prices does not know: we could not price its calls."""
    from genai_prices import data_snapshot

    snapshot = data_snapshot.get_snapshot()
    try:
        snapshot.find_provider_model(model, None, provider, None)
    except LookupError:
        known = [m.id for p in snapshot.providers if p.id == provider for m in p.models]
        raise ValueError(f'unknown model "{model}" for {kind}{did_you_mean(model, known)}') from None
    return model
