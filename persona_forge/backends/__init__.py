"""Chat backends behind one interface; `build_backend` picks one from the recipe."""

from __future__ import annotations

from ..config import BackendConfig, FakeBackendConfig, LocalBackendConfig, OpenAIBackendConfig
from .base import ChatBackend, ChatRequest, Completion, OptionProbs, UsageTotals
from .fake import ScriptedBackend
from .session import BackendSession

__all__ = ["ChatBackend", "ChatRequest", "Completion", "OptionProbs", "UsageTotals", "ScriptedBackend", "BackendSession",
           "build_backend"]


def build_backend(config: BackendConfig, progress: bool = True) -> ChatBackend:
    if isinstance(config, OpenAIBackendConfig):
        from .openai_compat import OpenAIBackend

        return OpenAIBackend(config)
    if isinstance(config, LocalBackendConfig):
        from .local import LocalBackend

        return LocalBackend(config, progress=progress)
    if isinstance(config, FakeBackendConfig):
        return ScriptedBackend(replies=config.replies, default=config.default_reply, delay_s=config.delay_s,
                               model=config.model, sampling=config.sampling)
    raise TypeError(f"not a backend section: {config!r}")
