"""A chat request read as atp's work: one image (or none), a system message, the earlier turns, the question, and
how to sample and prune. Everything a request can get wrong is found here, before any model work.

OpenAI's chat API is stateless: every request carries the whole conversation. atp answers about one image per
conversation, given in the first user message (the image is prefilled once and pruned inside the decoder; later
turns extend the caches), so an image anywhere else, or two of them, is refused with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from atp_cli.embedding_cache import image_key
from atp_cli.errors import InputError
from atp_cli.prompt import check_question
from atp_cli.sampling import SamplerConfig
from atp_cli.server.images import ImagePolicy, image_from_url
from atp_cli.server.schema import ChatRequest, ImagePart, Message

IMAGE_ONLY_QUESTION = "Describe the image."  # a user turn with an image and no text asks this


@dataclass(frozen=True)
class Pruning:
    strategy: str
    budget: float | None = None


@dataclass(frozen=True)
class ServeDefaults:
    """What a request gets when it does not say: the server's pruning, sampling and limits."""

    pruning: Pruning = Pruning("atp")
    low_detail_budget: float = 64.0  # an image part with detail "low" is pruned to this budget
    low_detail: Pruning | None = None  # how (open_served: atp's operating point there if it has one, else cdpruner)
    sampler: SamplerConfig = SamplerConfig()
    max_tokens: int = 512  # the most a request may ask for (and what it gets when it does not ask)
    images: ImagePolicy = field(default_factory=ImagePolicy)


@dataclass(frozen=True)
class Job:
    image: Image.Image | None
    image_key: str | None
    system: str | None
    transcript: tuple[tuple[str, str], ...]  # earlier turns: (role, text), user and assistant alternating
    question: str
    sampler: SamplerConfig
    max_tokens: int
    stops: tuple[str, ...]
    pruning: Pruning

    def history(self) -> tuple:
        """What the caches must hold for this request to continue them instead of prefilling again."""
        return (self.pruning, self.image_key, self.system, self.transcript)

    def history_after(self, answer: str) -> tuple:
        """What the caches hold once this request is answered with `answer`."""
        return (self.pruning, self.image_key, self.system,
                (*self.transcript, ("user", self.question), ("assistant", answer)))

    def transcript_messages(self) -> list[dict]:
        return [{"role": role, "content": text} for role, text in self.transcript]


def read_job(req: ChatRequest, defaults: ServeDefaults) -> Job:
    """The request's work, or InputError naming what is wrong with it."""
    try:
        stops = tuple(req.stops())
    except ValueError as e:
        raise InputError(str(e)) from e
    system, turns = _split_system(req.messages)
    turns = _merge_consecutive(turns)
    _check_alternation(turns)
    image_part = _the_image(turns)
    texts = [(m.role, _text_of(m, i)) for i, m in enumerate(turns)]
    image = image_from_url(image_part.image_url.url, defaults.images) if image_part is not None else None
    if image is not None and not texts[0][1].strip():  # the first user turn is the image alone
        texts[0] = ("user", IMAGE_ONLY_QUESTION)
    *earlier, (_, question) = texts
    check_question(question)
    return Job(image=image, image_key=image_key(image) if image is not None else None, system=system,
               transcript=tuple(earlier), question=question, sampler=_sampler(req, defaults.sampler),
               max_tokens=_max_tokens(req, defaults.max_tokens), stops=stops,
               pruning=_pruning(req, image_part, defaults))


def _split_system(messages: list[Message]) -> tuple[str | None, list[Message]]:
    """Leading system (or developer) messages joined into one; one anywhere else is refused."""
    n = 0
    while n < len(messages) and messages[n].role in ("system", "developer"):
        n += 1
    if any(m.role in ("system", "developer") for m in messages[n:]):
        raise InputError("system messages are accepted only at the start of the conversation")
    parts = [_text_of(m, i) for i, m in enumerate(messages[:n])]
    if any(isinstance(m.content, list) and any(isinstance(p, ImagePart) for p in m.content) for m in messages[:n]):
        raise InputError("a system message cannot hold an image")
    return ("\n\n".join(parts) if parts else None), messages[n:]


def _merge_consecutive(turns: list[Message]) -> list[Message]:
    """Consecutive messages of one role read as one (their parts in order)."""
    merged: list[Message] = []
    for m in turns:
        parts = _parts(m)
        if merged and merged[-1].role == m.role:
            merged[-1] = Message(role=m.role, content=[*_parts(merged[-1]), *parts])
        else:
            merged.append(Message(role=m.role, content=parts))
    return merged


def _parts(m: Message) -> list:
    if m.content is None:
        return []
    if isinstance(m.content, str):
        return [{"type": "text", "text": m.content}]
    return [p.model_dump() for p in m.content]


def _check_alternation(turns: list[Message]) -> None:
    if not turns or turns[0].role != "user":
        raise InputError("the conversation must start with a user message (after any system message)")
    if turns[-1].role != "user":
        raise InputError("the last message must be the user's: it is the question to answer")
    for i, m in enumerate(turns):
        if m.role != ("user" if i % 2 == 0 else "assistant"):
            raise InputError("user and assistant messages must alternate")


def _the_image(turns: list[Message]) -> ImagePart | None:
    found = [(i, p) for i, m in enumerate(turns) for p in (m.content or []) if isinstance(p, ImagePart)]
    if len(found) > 1:
        raise InputError("atp answers about one image per conversation; this request holds "
                         f"{len(found)} images")
    if found and found[0][0] != 0:
        raise InputError("the image must be in the first user message (atp prefills it once, then extends)")
    return found[0][1] if found else None


def _text_of(m: Message, i: int) -> str:
    if m.content is None:
        if m.role == "assistant":
            raise InputError(f"message {i}: an assistant message without content (tool calls are not supported)")
        return ""
    if isinstance(m.content, str):
        return m.content
    return "\n".join(p.text for p in m.content if not isinstance(p, ImagePart))


def _sampler(req: ChatRequest, default: SamplerConfig) -> SamplerConfig:
    return SamplerConfig(temperature=default.temperature if req.temperature is None else req.temperature,
                         top_p=default.top_p if req.top_p is None else req.top_p,
                         seed=default.seed if req.seed is None else req.seed)


def _max_tokens(req: ChatRequest, cap: int) -> int:
    asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if asked is None:
        return cap
    if asked > cap:
        raise InputError(f"max_tokens {asked} is above this server's limit of {cap}")
    return asked


def _pruning(req: ChatRequest, image: ImagePart | None, defaults: ServeDefaults) -> Pruning:
    """The request's `atp` extension, else the image part's detail, else the server's default."""
    if req.atp is not None and (req.atp.strategy is not None or req.atp.budget is not None):
        return Pruning(req.atp.strategy or defaults.pruning.strategy, req.atp.budget)
    detail = image.image_url.detail if image is not None else "auto"
    if detail == "low":
        return defaults.low_detail or Pruning("cdpruner", defaults.low_detail_budget)
    if detail == "high":
        return Pruning("none")
    return defaults.pruning
