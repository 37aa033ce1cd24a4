"""The OpenAI-compatible gateway: route a chat completion, call the chosen model, price it, time it, fall back on
failure, and learn, in one request (`POST /v1/chat/completions`).

    upstreams.py   calling OpenAI-compatible endpoints: pooled httpx clients, limits, `UpstreamFailure`
    pricing.py     usage from a reply, or counted here; cost from the catalog's prices
    chat.py        the request: the body to forward and the routing knobs
    active.py      deciding among models a retirement may remove meanwhile (`decide_among_active`)
    gateway.py     `Gateway`: decisions, tries and fallbacks, call records
    judge.py       `Judge`: an LLM scores a sample of the answers as feedback

HTTP translation lives in `bandit_router.service.gateway_routes`.
"""

from .chat import BadChatRequest, ChatRequest, PromptTooLarge, parse_chat
from .gateway import Answer, Gateway, GatewayFailed, ModelNotFound, NoUpstream, Rejected, StreamAnswer
from .judge import Judge
from .pricing import Usage, estimated, usage_of
from .upstreams import Endpoint, Reply, Stream, UpstreamError, UpstreamFailure, UpstreamRejected, Upstreams

__all__ = [
    "Answer",
    "BadChatRequest",
    "ChatRequest",
    "Endpoint",
    "Gateway",
    "GatewayFailed",
    "Judge",
    "ModelNotFound",
    "NoUpstream",
    "PromptTooLarge",
    "Rejected",
    "Reply",
    "Stream",
    "StreamAnswer",
    "UpstreamError",
    "UpstreamFailure",
    "UpstreamRejected",
    "Upstreams",
    "Usage",
    "estimated",
    "parse_chat",
    "usage_of",
]
