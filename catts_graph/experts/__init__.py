"""The three expert roles of CA-TTS (Planner, Voter, Critic) over any LangChain chat model."""

from catts_graph.experts.base import (
    ExpertRequest,
    ExpertResult,
    ExpertRole,
    MalformedAnswer,
    acall_expert,
    bound_text,
    call_expert,
    finite_number,
    image_blocks,
    parse_json_object,
    structured_asker,
    user_message,
)
from catts_graph.experts.critic import VERDICTS, Critic, CriticAnswer, critique_verdict, parse_critique
from catts_graph.experts.planner import MODULE_DESCRIPTIONS, Plan, Planner, PlannerAnswer, parse_plan
from catts_graph.experts.providers import (
    ROLES,
    ExpertConfigError,
    make_chat_model,
    resolve_experts,
)
from catts_graph.experts.voter import Voter, VoterAnswer, parse_probabilities

__all__ = [
    "MODULE_DESCRIPTIONS",
    "ROLES",
    "VERDICTS",
    "Critic",
    "CriticAnswer",
    "ExpertConfigError",
    "ExpertRequest",
    "ExpertResult",
    "ExpertRole",
    "MalformedAnswer",
    "Plan",
    "Planner",
    "PlannerAnswer",
    "Voter",
    "VoterAnswer",
    "acall_expert",
    "bound_text",
    "call_expert",
    "critique_verdict",
    "finite_number",
    "image_blocks",
    "make_chat_model",
    "parse_critique",
    "parse_json_object",
    "parse_plan",
    "parse_probabilities",
    "resolve_experts",
    "structured_asker",
    "user_message",
]
