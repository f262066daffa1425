"""The answer envelope: the JSON a self-reporting tier is asked to answer in, and how it is read.

Defined once: the router asks the tier for it (`SCHEMA` as vLLM's structured output, and
`INSTRUCTION` as a system turn), the validator judges it (`parse`), and an answer delivered
without the validator is unwrapped the same way (`unwrap`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

CONTENT_KEY = "response_content"
CONFIDENCE_KEY = "confidence_score"

SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {
            CONTENT_KEY: {"type": "string"},
            CONFIDENCE_KEY: {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": [CONTENT_KEY, CONFIDENCE_KEY],
        "additionalProperties": False,
    }
)
INSTRUCTION = (
    f"Answer in JSON with two keys: {CONTENT_KEY} (your answer) and {CONFIDENCE_KEY} "
    "(a number from 0 to 1: how sure you are that the answer is correct)."
)


@dataclass(frozen=True)
class Envelope:
    content: str
    confidence: float


class NotJSON(ValueError):
    """The answer does not parse as JSON."""


class WrongShape(ValueError):
    """The answer is JSON but not the envelope; the message says which part is wrong."""


# The longest answer parsed, in characters: far beyond any tier's max_tokens, and small enough
# that parsing stays cheap. Longer ones are a parse failure, not a crash.
MAX_CHARS = 1_000_000


def parse(answer: str) -> Envelope:
    """The envelope in `answer`. Raises NotJSON or WrongShape, saying what is wrong."""
    if len(answer) > MAX_CHARS:
        raise NotJSON(f"the answer has {len(answer)} characters; at most {MAX_CHARS} are parsed")
    try:
        doc = json.loads(answer)
    except json.JSONDecodeError as exc:
        raise NotJSON(f"the answer is not valid JSON: {exc}") from None
    except RecursionError:
        raise NotJSON("the answer is not valid JSON: nested too deeply to parse") from None
    if not isinstance(doc, dict):
        raise WrongShape(f"the answer is JSON but a {type(doc).__name__}, not an object")
    content = doc.get(CONTENT_KEY)
    score = doc.get(CONFIDENCE_KEY)
    if not isinstance(content, str):
        raise WrongShape(f"{CONTENT_KEY} is missing or not a string")
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise WrongShape(f"{CONFIDENCE_KEY} is missing or not a number")
    if not 0.0 <= float(score) <= 1.0:
        raise WrongShape(f"{CONFIDENCE_KEY} is {score}, outside [0, 1]")
    return Envelope(content, float(score))


def unwrap(answer: str) -> str:
    """The content of an envelope; the raw text if `answer` is not one."""
    try:
        return parse(answer).content
    except ValueError:
        return answer
