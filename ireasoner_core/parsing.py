"""Parse Proposer and Solver outputs (SPEC.md "One training iteration" steps 1 and 3).

Everything here takes raw decoded text and never raises on it: sampled text can be empty,
truncated mid-tag, or carry chat special tokens such as ``<|im_end|>``. The choices that
SPEC.md leaves open are made as follows, and the tests pin each of them:

* Tags are matched case-insensitively and tolerate inner spaces (``< answer >``).
* Answer: the last *closed* ``<answer>…</answer>`` block (a model that restates its answer
  means the last one); with only an unclosed ``<answer>`` (generation cut off), the text after
  the last opening tag; with no tag, the last non-empty line of the text with tags removed.
* Think: the first ``<think>…</think>`` block; an unclosed ``<think>`` runs to ``<answer>`` or
  the end; a lone ``</think>`` (the opening tag was in the prompt) ends the think text; with
  no think tag, everything before the first ``<answer>`` (the whole text when there is none,
  so that un-tagged reasoning still yields steps).
* Words before the answer (eq. 5's length penalty): whitespace-separated words before the
  first ``<answer>`` tag, or in the whole text when there is none, with tags not counted.
* Steps, in SPEC order: ``<step>`` blocks; else step markers; else sentences (see
  ``extract_steps``). A step needs at least one letter or digit to count.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass, field

# Chat-template special tokens (<|im_end|>, <|endoftext|>, <|vision_start|>, ...) left in
# decoded text when it is decoded without skip_special_tokens.
_SPECIAL_TOKEN = re.compile(r"<\|[^<>|]{0,64}\|>")
_KNOWN_TAG = re.compile(r"<\s*/?\s*(?:think|answer|step|question|rationale)\s*>", re.IGNORECASE)


def _open(name: str) -> str:
    return rf"<\s*{name}\s*>"


def _close(name: str) -> str:
    return rf"<\s*/\s*{name}\s*>"


_ANSWER_OPEN = re.compile(_open("answer"), re.IGNORECASE)
_ANSWER_BLOCK = re.compile(_open("answer") + r"(.*?)" + _close("answer"), re.IGNORECASE | re.DOTALL)
_THINK_OPEN = re.compile(_open("think"), re.IGNORECASE)
_THINK_CLOSE = re.compile(_close("think"), re.IGNORECASE)
_QUESTION_BLOCK = re.compile(_open("question") + r"(.*?)" + _close("question"), re.IGNORECASE | re.DOTALL)
_QUESTION_OPEN = re.compile(_open("question"), re.IGNORECASE)
_RATIONALE_OPEN = re.compile(_open("rationale"), re.IGNORECASE)
# A <step> block ends at </step>, at the next <step> (a missing closing tag), or at the end.
_STEP_BLOCK = re.compile(
    _open("step") + r"(.*?)(?:" + _close("step") + r"|(?=" + _open("step") + r")|\Z)",
    re.IGNORECASE | re.DOTALL,
)
# "Step k:" / "Step k -" (optionally in markdown bold). Recognised anywhere after whitespace,
# not only at a line start: the prompt's own format "<think> Step 1: … Step 2: … </think>"
# often comes back on a single line.
_STEP_WORD_MARKER = re.compile(
    r"(?:(?<=\s)|^)\**\s*step\s*\d+\s*\**\s*(?::|-|–|—)\s*\**", re.IGNORECASE | re.MULTILINE
)
# "k." / "k)" only at a line start; mid-line they are ordinary numbers ("is 3. Then").
# The lookahead keeps "3.5 cm" from reading as item 3.
_NUMBERED_LINE_MARKER = re.compile(r"^[ \t]*\**\d+[.)]\**(?=\s|$)", re.MULTILINE)
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")
_HAS_WORD_CHAR = re.compile(r"[^\W_]")
# A number that starts with a sign or a decimal point: "-2", "-.5", ".5".
_SIGNED_NUMBER_START = re.compile(r"-\.?\d|\.\d")


def _strip_special_tokens(text: str) -> str:
    return _SPECIAL_TOKEN.sub("", text)


def _is_punct(ch: str) -> bool:
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def normalize_answer(s: str) -> str:
    """Eq. 1 answer normalisation: lower-case, commas removed, whitespace collapsed, surrounding punctuation stripped.

    A leading minus sign or decimal point that starts a number is not "surrounding
    punctuation" ("-2" stays "-2", ".5" stays ".5"); the Unicode minus U+2212 is read as "-".
    Inner punctuation ("3.5", "x-ray") is kept.
    """
    s = s.replace("\u2212", "-").lower().replace(",", "")
    s = " ".join(s.split())
    start = 0
    while start < len(s) and (s[start].isspace() or _is_punct(s[start])):
        if _SIGNED_NUMBER_START.match(s, start):
            break
        start += 1
    end = len(s)
    while end > start and (s[end - 1].isspace() or _is_punct(s[end - 1])):
        end -= 1
    return s[start:end]


def parse_question(text: str, fallback: str) -> str:
    """Step 1: the Proposer's question, inside <question>, else the whole output, else ``fallback``."""
    text = _strip_special_tokens(text)
    block = _QUESTION_BLOCK.search(text)
    if block:
        question = block.group(1)
    elif opening := _QUESTION_OPEN.search(text):
        # Cut off before </question>: keep what was written, up to the rationale if it started.
        rest = text[opening.end():]
        rationale = _RATIONALE_OPEN.search(rest)
        question = rest[: rationale.start()] if rationale else rest
    else:
        question = text
    question = question.strip()
    return question if question else fallback


def _clean_step(text: str) -> str:
    text = _KNOWN_TAG.sub(" ", text)
    return " ".join(text.split())


def _keep(steps: list[str], max_steps: int) -> list[str]:
    kept = [s for s in (_clean_step(s) for s in steps) if _HAS_WORD_CHAR.search(s)]
    return kept[:max_steps]


def _split_at_markers(think: str, markers: list[re.Match[str]]) -> list[str]:
    # Text before the first marker (a preamble such as "The chart shows sales.") is joined to
    # step 1 rather than made a step of its own, so that index j still means "the model's
    # step j" across rollouts, which is what the per-position prototypes compare.
    preamble = think[: markers[0].start()]
    steps = []
    for k, m in enumerate(markers):
        stop = markers[k + 1].start() if k + 1 < len(markers) else len(think)
        steps.append(think[m.end():stop])
    steps[0] = preamble + " " + steps[0]
    return steps


def _drop_leading_marker(block: str) -> str:
    for marker in (_STEP_WORD_MARKER, _NUMBERED_LINE_MARKER):
        m = marker.match(block)
        if m:
            return block[m.end():]
    return block


def extract_steps(think: str, max_steps: int) -> list[str]:
    """SPEC "Step extraction": <step> blocks, else step markers, else sentences; at most ``max_steps``.

    Markers: "Step k:" / "Step k -" anywhere after whitespace; if there are none, lines that
    start with "k." or "k)". Only one marker kind is used per text, so a numbered sub-list
    inside "Step 2:" stays part of step 2. Marker text is not part of the step, and a step
    marker at the start of a <step> block is removed too. Steps without a letter or digit are
    dropped before the budget is applied.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    think = _strip_special_tokens(think)
    blocks = _STEP_BLOCK.findall(think)
    if blocks:
        return _keep([_drop_leading_marker(b.strip()) for b in blocks], max_steps)
    text = _KNOWN_TAG.sub(" ", think)
    for marker in (_STEP_WORD_MARKER, _NUMBERED_LINE_MARKER):
        found = list(marker.finditer(text))
        if found:
            return _keep(_split_at_markers(text, found), max_steps)
    return _keep(_SENTENCE_BREAK.split(text), max_steps)


@dataclass(frozen=True)
class ParsedRollout:
    """One Solver rollout after step 3 of an iteration."""

    answer: str
    """Normalised answer a_i (eq. 1); "" when the rollout gave none."""
    raw_answer: str
    think: str
    steps: list[str] = field(default_factory=list)
    words_before_answer: int = 0
    has_answer_tag: bool = False
    has_think_tag: bool = False


def _last_nonempty_line(text: str) -> str:
    # Tags become line breaks so "…</think>42" yields "42", not the last think line glued to it.
    for line in reversed(_KNOWN_TAG.sub("\n", text).splitlines()):
        if line.strip():
            return line.strip()
    return ""


def _raw_answer(text: str) -> tuple[str, bool]:
    blocks = _ANSWER_BLOCK.findall(text)
    if blocks:
        return _KNOWN_TAG.sub(" ", blocks[-1]).strip(), True
    openings = list(_ANSWER_OPEN.finditer(text))
    if openings:
        return _KNOWN_TAG.sub(" ", text[openings[-1].end():]).strip(), True
    return _last_nonempty_line(text), False


def _think_text(text: str, answer_at: int) -> tuple[str, bool]:
    opening = _THINK_OPEN.search(text)
    if opening:
        closing = _THINK_CLOSE.search(text, opening.end())
        if closing:
            return text[opening.end():closing.start()], True
        answer = _ANSWER_OPEN.search(text, opening.end())
        return text[opening.end(): answer.start() if answer else len(text)], True
    closing = _THINK_CLOSE.search(text)
    if closing and closing.start() <= answer_at:
        return text[: closing.start()], False
    return text[:answer_at], False


def parse_rollout(text: str, max_steps: int) -> ParsedRollout:
    """Step 3: answer a_i, think text t_i, steps s_i,j and the pre-answer word count of one rollout."""
    text = _strip_special_tokens(text)
    first_answer = _ANSWER_OPEN.search(text)
    answer_at = first_answer.start() if first_answer else len(text)
    raw_answer, has_answer_tag = _raw_answer(text)
    think, has_think_tag = _think_text(text, answer_at)
    think = think.strip()
    words = len(_KNOWN_TAG.sub(" ", text[:answer_at]).split())
    return ParsedRollout(
        answer=normalize_answer(raw_answer),
        raw_answer=raw_answer,
        think=think,
        steps=extract_steps(think, max_steps),
        words_before_answer=words,
        has_answer_tag=has_answer_tag,
        has_think_tag=has_think_tag,
    )
