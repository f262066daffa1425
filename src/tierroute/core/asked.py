"""What a message asks, apart from what it quotes: the router scores the request, not its bulk.

A long message is often a pasted text (a contract, a log, an email, a table, a code file) and a
one-line question about it. Mean-pooled over the whole message, the embedding is mostly the
pasted text, and past the embedder's token limit the question is not seen at all; a router
then learns that long means hard. `asked` finds the request in such a message, by its shape
only (cheap, deterministic, no model):

- fenced blocks (```...```) and triple-quoted blocks are context;
- paragraphs marked `Question:`/`Q:` are the request, `Context:`/`Text:`/`Document:` context;
- otherwise, of a message in several paragraphs, the last paragraph (else the first) is the
  request when it is short and reads as an ask (a question mark, or a sentence whose first
  word asks or commands, in one of the languages below) and the rest is longer than it, or is
  code, a table or a log;
- a single paragraph whose first or last line is such an ask, beside at least three lines or
  forty words of other text, is split the same way (one with lettered answer options, `A.
  ...`, is a question with its options, and stays whole).

A chat's routing text (`tierroute.core.prompts.routing_text`) is its last user turn, then
`EARLIER_TURNS`, then the user turns before it: the last turn is split as above and the earlier
turns join its request, so that a short follow-up ("and in Rust?") is scored with what it
follows, never set aside as its context.

Anything else is the request whole, with no context: a single paragraph (a word problem, a
chatty message) is scored as it is. What was set aside is summarised for the scorer: how many
words of context, and of what kind (prose, code, a table, a log).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

# Longest a request may be (words) and still be told apart from the text it asks about.
MAX_REQUEST_WORDS = 60
# Lines or words of other text that a one-paragraph message needs before its ask is split off.
MIN_CONTEXT_LINES = 3
MIN_CONTEXT_WORDS = 40
CONTEXT_KINDS = ("prose", "code", "table", "log")
# The line between a chat's last user turn and the turns before it, in a routing text.
EARLIER_TURNS = "[earlier turns]"

_FENCE = re.compile(r"```[^\n]*\n(.*?)(?:\n```|$)|\"\"\"(.*?)(?:\"\"\"|$)", re.S)
_MARKER = re.compile(
    r"^\s*(question|q|ask|request|task|context|text|document|passage|input|data)\s*[:\uff1a]\s*",
    re.I,
)
_REQUEST_MARKERS = {"question", "q", "ask", "request", "task"}
# First words of an ask: questions and imperatives (English, Spanish, German, French,
# Portuguese, Italian), lower case.
_ASK_WORDS = frozenset(
    """
    what whats what's which who whom whose when where why how is are was were do does did can
    could would will should shall may might please explain summarize summarise list write
    translate find fix rename add remove review assess analyze analyse design draft prove show
    compute calculate convert give tell describe compare evaluate identify extract classify
    rewrite format change make suggest recommend estimate check count sort solve derive outline
    walk decide look based using given considering according round use replace put turn move
    delete insert update set refactor optimize optimise simplify shorten expand correct spell
    define name choose pick plan create build implement generate answer help teach proofread
    edit reformat sum total add subtract multiply divide
    qué que cuál cual cuáles quién cómo como cuándo dónde por cuánto cuántos cuántas explica
    resume traduce escribe calcula analiza diseña demuestra dime dame
    was wer wie wann wo warum welche welcher welches wieviel wieviele erkläre fasse übersetze
    schreibe berechne analysiere entwirf beweise nenne gib
    quel quelle quels quelles qui comment quand où pourquoi combien explique résume traduis
    écris calcule analyse conçois démontre donne dis
    o qual quais quem quando onde porque quanto quantos explique resuma traduza escreva
    cosa chi come quando dove perché quanto quanti spiega riassumi traduci scrivi calcola
    """.split()
)
_SENTENCE = re.compile(r"(?<=[.!;:])\s+|\n")
_QUESTION = re.compile(r"[?\uff1f]\s*$|[¿]")
_OPTION = re.compile(r"^\s*(?:\(?[A-Ha-h][.)]|[A-H]\s*[:\uff1a])\s+\S")
_TIMESTAMP = re.compile(
    r"^\s*(?:\[[^\]]*\]\s*)?(?:\d{4}-\d{2}-\d{2}|\d{2}:\d{2}(?::\d{2})?|[A-Z][a-z]{2}\s+\d{1,2}\s"
    r"|\d{1,2}/\d{1,2}/\d{2,4})"
)
_LEVEL = re.compile(r"\b(?:INFO|WARN|WARNING|ERROR|DEBUG|TRACE|FATAL|PANIC)\b")
_CODE = re.compile(
    r"^\s*(?:def |class |import |from \S+ import|return\b|if\s*\(|for\s*\(|while\s*\(|#include"
    r"|func |public |private |static |const |let |var |function\b|SELECT\b|UPDATE\b|INSERT\b"
    r"|DELETE\b|CREATE\b|<\w+|\}|\{)|[;{}]\s*$|=>|->|\bself\.",
)


@dataclass(frozen=True)
class Asked:
    """A message's request, and what it set aside as context."""

    request: str
    context: str = ""
    # The context's kind: "" (none), or one of CONTEXT_KINDS.
    kind: str = ""

    @property
    def context_words(self) -> int:
        return len(self.context.split())


# One Route asks this of the same text several times (the scorer's features and embedding
# text, the score span, the routing log); a long prompt takes about a millisecond per 4,000
# characters, so the latest answers are kept (Asked is immutable).
@functools.lru_cache(maxsize=256)
def asked(text: str) -> Asked:
    """The request in `text` and its context (see the module's docstring)."""
    text = text.strip()
    last, marker, earlier = text.partition(f"\n{EARLIER_TURNS}\n")
    if marker:
        turn = _asked(last)
        return Asked(f"{turn.request}\n\n{earlier.strip()}", turn.context, turn.kind)
    return _asked(text)


def _asked(text: str) -> Asked:
    """`asked` of one message."""
    text = text.strip()
    fenced: list[str] = []

    def set_aside(match: re.Match[str]) -> str:
        fenced.append(match.group(1) if match.group(1) is not None else match.group(2) or "")
        return "\n\n"

    outside = _FENCE.sub(set_aside, text) if ("```" in text or '"""' in text) else text
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", outside) if p.strip()]
    if fenced:
        request = "\n\n".join(paragraphs) or text
        context = "\n\n".join(fenced)
        return Asked(request, context, kind_of(context)) if paragraphs else Asked(text)
    marked = _by_marker(paragraphs)
    if marked is not None:
        return marked
    if len(paragraphs) >= 2:
        split = _split_off(paragraphs)
        if split is not None:
            return split
    elif len(paragraphs) == 1:
        lines = [ln for ln in paragraphs[0].split("\n") if ln.strip()]
        if len(lines) >= 2:
            split = _split_lines(lines)
            if split is not None:
                return split
    return Asked(text)


def _by_marker(paragraphs: list[str]) -> Asked | None:
    """`Question:` and `Context:` (and their kin) say which is which; an unmarked paragraph
    belongs with the marked one above it, and before any marker it is an instruction (the
    request)."""
    if not any(_MARKER.match(p) for p in paragraphs):
        return None
    request: list[str] = []
    context: list[str] = []
    current = request
    for p in paragraphs:
        m = _MARKER.match(p)
        if m is not None:
            current = request if m.group(1).lower() in _REQUEST_MARKERS else context
            p = p[m.end() :].strip()
        if p:
            current.append(p)
    if not request or not context:
        return None
    joined = "\n\n".join(context)
    return Asked("\n\n".join(request), joined, kind_of(joined))


def _split_off(parts: list[str]) -> Asked | None:
    """The last paragraph (else the first) as the request, when it is a short ask and the
    rest is longer than it, or is code, a table or a log (which may be short)."""
    for i, rest in ((len(parts) - 1, parts[:-1]), (0, parts[1:])):
        candidate = parts[i]
        words = len(candidate.split())
        rest_text = "\n\n".join(rest)
        kind = kind_of(rest_text)
        quoted = kind != "prose" or len(rest_text.split()) > words
        if words <= MAX_REQUEST_WORDS and is_ask(candidate) and quoted:
            return Asked(candidate, rest_text, kind)
    return None


def _split_lines(lines: list[str]) -> Asked | None:
    """One paragraph: its last line (else its first) as the request, beside enough other
    text."""
    if sum(bool(_OPTION.match(line)) for line in lines) >= 2:
        return None  # a question with its answer options: the whole is the request
    for request, rest in ((lines[-1], lines[:-1]), (lines[0], lines[1:])):
        words = len(request.split())
        rest_words = sum(len(r.split()) for r in rest)
        enough = len(rest) >= MIN_CONTEXT_LINES or rest_words >= MIN_CONTEXT_WORDS
        if enough and words <= MAX_REQUEST_WORDS and is_ask(request) and rest_words > words:
            context = "\n".join(rest)
            return Asked(request, context, kind_of(context))
    return None


def is_ask(text: str) -> bool:
    """Whether `text` reads as a request: a question mark, or a sentence whose first word
    asks or commands."""
    if _QUESTION.search(text) or "?" in text or "\uff1f" in text:
        return True
    for sentence in _SENTENCE.split(text.strip()):
        first = re.split(r"[\s,:;.!¡¿]+", sentence.strip().lower(), maxsplit=1)[0]
        if first in _ASK_WORDS:
            return True
    return False


def kind_of(context: str) -> str:
    """What kind of text the context is: code, a table, a log, or prose."""
    lines = [ln for ln in context.split("\n") if ln.strip()]
    if not lines:
        return ""
    n = len(lines)
    logs = sum(bool(_TIMESTAMP.match(ln) or _LEVEL.search(ln)) for ln in lines)
    if n >= 2 and logs >= max(2, n // 2):
        return "log"
    tables = sum(ln.count("|") >= 2 or bool(re.search(r"\S(?:\s{2,}|\t|\.{3,})\S", ln))
                 for ln in lines)  # fmt: skip
    if n >= 3 and tables >= max(3, (2 * n) // 3):
        return "table"
    code = sum(bool(_CODE.search(ln)) for ln in lines)
    indented = sum(ln.startswith(("    ", "\t")) for ln in lines)
    if code >= max(1, n // 3) or (n >= 3 and indented >= n // 2 and code):
        return "code"
    return "prose"
