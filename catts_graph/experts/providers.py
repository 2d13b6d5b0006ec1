"""Expert chat models by name, and resolving the graph's ``expert=`` argument into one per role.

Provider packages (``langchain-google-genai``, ``langchain-openai``; the ``providers`` extra) are
imported only when a model of theirs is asked for. Provider-side retries are turned off: the one
retry policy is :func:`catts_graph.experts.base.call_expert`'s, which records every failure in the
trace; the provider's request timeout is set to the expert timeout so that an abandoned call ends.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from langchain_core.language_models import BaseChatModel

ROLES = ("planner", "voter", "critic")
GEMINI_PREFIXES = ("gemini",)
OPENAI_PREFIXES = ("gpt", "o1", "o3", "o4", "chatgpt")
GEMINI_KEYS = ("GOOGLE_API_KEY", "GEMINI_API_KEY")
OPENAI_KEYS = ("OPENAI_API_KEY",)


class ExpertConfigError(ValueError):
    """An expert cannot be built as asked: unknown name, missing API key, wrong type or role."""


def _supported() -> str:
    return (
        f"names starting with {', '.join(repr(p) for p in GEMINI_PREFIXES)} (Gemini, needs "
        f"{' or '.join(GEMINI_KEYS)}), names starting with "
        f"{', '.join(repr(p) for p in OPENAI_PREFIXES)} (OpenAI, needs {OPENAI_KEYS[0]}), "
        "'google_genai:<model>' or 'openai:<model>' for any other model of those providers, "
        "or 'self' (the base model)"
    )


def _key(variables: tuple[str, ...], name: str) -> str:
    for variable in variables:
        value = os.environ.get(variable, "").strip()
        if value:
            return value
    raise ExpertConfigError(f"expert {name!r} needs an API key: set {' or '.join(variables)}")


def _import_error(package: str, err: ImportError) -> ExpertConfigError:
    return ExpertConfigError(
        f"{package} is not installed ({err}); install it with: pip install 'catts-graph[providers]'"
    )


def make_chat_model(name: str, *, timeout: float = 120.0, temperature: float | None = None) -> BaseChatModel:
    """A chat model for ``name``: Gemini (``gemini-*``) or OpenAI (``gpt-*``, ``o1/o3/o4*``, ...).

    ``google_genai:<model>`` and ``openai:<model>`` pick the provider explicitly (an
    ``OPENAI_BASE_URL`` server, for example). ``temperature=None`` keeps the provider's default
    (reasoning models accept no other). Raises :class:`ExpertConfigError` for an unknown name or a
    missing API key.
    """
    if not isinstance(name, str) or not name.strip():
        raise ExpertConfigError(f"expert model name must be a non-empty string, got {name!r}")
    name = name.strip()
    provider, _, model = name.partition(":")
    if provider not in ("google_genai", "openai") or not model:
        provider, model = "", name
    lowered = model.lower()
    extra: dict[str, Any] = {} if temperature is None else {"temperature": temperature}
    if provider == "google_genai" or (not provider and lowered.startswith(GEMINI_PREFIXES)):
        key = _key(GEMINI_KEYS, name)
        try:
            from langchain_google_genai import ChatGoogleGenerativeAI
        except ImportError as err:
            raise _import_error("langchain-google-genai", err) from None
        return ChatGoogleGenerativeAI(
            model=model, google_api_key=key, timeout=timeout, max_retries=0, **extra
        )
    if provider == "openai" or (not provider and lowered.startswith(OPENAI_PREFIXES)):
        key = _key(OPENAI_KEYS, name)
        try:
            from langchain_openai import ChatOpenAI
        except ImportError as err:
            raise _import_error("langchain-openai", err) from None
        return ChatOpenAI(model=model, api_key=key, timeout=timeout, max_retries=0, **extra)
    raise ExpertConfigError(f"unknown expert model {name!r}; supported: {_supported()}")


def plays(model: BaseChatModel | None, role: str) -> bool:
    """Whether ``model`` plays ``role``: every chat model plays every role, unless it declares the
    roles it plays in a ``supported_roles`` attribute (the organism expert has no Planner)."""
    roles = getattr(model, "supported_roles", None)
    return model is not None and (roles is None or role in roles)


def resolve_experts(
    expert: Any, base_model: Any = None, *, timeout: float = 120.0
) -> dict[str, BaseChatModel | None]:
    """One chat model (or None) per role: ``{"planner": ..., "voter": ..., "critic": ...}``.

    ``expert`` is None (no expert), ``"self"`` (the base model as its own expert, via
    :class:`~catts_graph.models.chat_adapter.BaseModelChat`), a model name for
    :func:`make_chat_model`, a BaseChatModel, or a dict from role to any of those (missing roles get
    None). Roles given the same name or "self" share one instance. A shared model that does not
    play a role (:func:`plays`) leaves it None, so it is never asked; naming such a model for that
    role in the dict is an error.
    """
    built: dict[str, BaseChatModel] = {}

    def one(spec: Any, where: str) -> BaseChatModel | None:
        if spec is None:
            return None
        if isinstance(spec, BaseChatModel):
            return spec
        if isinstance(spec, str):
            if spec not in built:
                if spec.strip().lower() == "self":
                    if base_model is None:
                        raise ExpertConfigError(f"{where}: 'self' needs a base model, got None")
                    from catts_graph.models.chat_adapter import BaseModelChat

                    built[spec] = BaseModelChat(vlm=base_model)
                else:
                    built[spec] = make_chat_model(spec, timeout=timeout)
            return built[spec]
        raise ExpertConfigError(
            f"{where}: got {type(spec).__name__}, expected None, 'self', a model name or a "
            "LangChain BaseChatModel"
        )

    if isinstance(expert, Mapping):
        unknown = sorted(str(k) for k in expert if k not in ROLES)
        if unknown:
            raise ExpertConfigError(f"expert: unknown roles {unknown}; the roles are {list(ROLES)}")
        roles = {role: one(expert.get(role), f"expert[{role!r}]") for role in ROLES}
        for role, model in roles.items():
            if model is not None and not plays(model, role):
                raise ExpertConfigError(
                    f"expert[{role!r}]: {type(model).__name__} does not play the {role}; it plays "
                    f"{list(getattr(model, 'supported_roles', ()))}"
                )
        return roles
    shared = one(expert, "expert")
    return {role: shared if plays(shared, role) else None for role in ROLES}
