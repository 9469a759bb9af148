"""Proposer / Solver output parsing (SPEC.md "One training iteration" steps 1 and 3, "Step extraction")."""

from __future__ import annotations

import random

import pytest

from ireasoner_core.parsing import (
    ParsedRollout,
    extract_steps,
    normalize_answer,
    parse_question,
    parse_rollout,
)

FALLBACK = "What is shown?"


# --- normalize_answer -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  The Answer,  IS\n 42. ", "the answer is 42"),  # lower-case, whitespace collapsed, trailing '.' stripped
        ("1,000", "1000"),  # commas removed, even inside numbers
        ("Paris, France", "paris france"),
        ("3.5", "3.5"),  # inner punctuation kept
        ("3.5.", "3.5"),
        ("-2", "-2"),  # leading minus of a number survives
        ("(-2)", "-2"),  # surrounding brackets go, the sign stays
        ("$-2.", "-2"),
        ("--2", "-2"),  # only the dash that starts the number is a sign
        ("\u22123.5", "-3.5"),  # Unicode minus read as '-'
        ("-.5", "-.5"),
        (".5", ".5"),
        ("- x", "x"),  # a dash before a word is a bullet, not a sign
        ("(A)", "a"),
        ("'x-ray'", "x-ray"),
        ("\u201cyes\u201d", "yes"),  # Unicode quotes are punctuation too
        ("...", ""),
        ("-", ""),
        ("", ""),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


# --- parse_question ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<question> How many bars? </question><rationale>count</rationale>", "How many bars?"),
        ("<QUESTION>How many bars?</QUESTION>", "How many bars?"),  # tags are case-insensitive
        ("  How many bars are red?\n", "How many bars are red?"),  # no tag: whole output, stripped
        ("<question>Which is tallest?<rationale>compare", "Which is tallest?"),  # unclosed: up to rationale
        ("<question>Which is tallest?", "Which is tallest?"),  # unclosed, cut off
        ("<question>Is it red?</question><|im_end|>", "Is it red?"),
        ("<question>  </question><rationale>x</rationale>", FALLBACK),  # empty tag: fallback
        ("", FALLBACK),
        ("   \n ", FALLBACK),
        ("<|im_end|>", FALLBACK),  # only a special token is empty too
    ],
)
def test_parse_question(text: str, expected: str) -> None:
    assert parse_question(text, FALLBACK) == expected


# --- extract_steps ----------------------------------------------------------------------------

def test_steps_rule1_step_blocks_win_and_lose_their_markers() -> None:
    think = "Intro. <step>Step 1: read the axis</step> noise <step> 2. find the bar </step><step> </step><step>add"
    # Rule 1 applies because <step> blocks exist: text outside blocks is ignored, markers at the
    # start of a block are removed, the empty block is dropped, the unclosed last block runs to the end.
    assert extract_steps(think, 8) == ["read the axis", "find the bar", "add"]


def test_steps_rule2_step_markers_inline() -> None:
    # The prompt's own format on one line: markers mid-line still split.
    think = " Step 1: the chart has 3 bars. Step 2: the tallest is 3.5 m. Step 3 - so B "
    assert extract_steps(think, 8) == ["the chart has 3 bars.", "the tallest is 3.5 m.", "so B"]


def test_steps_rule2_other_lines_continue_current_step_and_preamble_joins_step1() -> None:
    think = "Let me look.\nStep 1: Count the bars.\nThere are 4.\n**Step 2:** Sum them:\n1. 2+3\n2. 5+1\nstep 3 - done"
    # The preamble is joined to step 1; the numbered sub-list stays inside step 2 because
    # "Step k" markers take precedence over "k." lines; markdown bold is part of the marker.
    assert extract_steps(think, 8) == [
        "Let me look. Count the bars. There are 4.",
        "Sum them: 1. 2+3 2. 5+1",
        "done",
    ]


def test_steps_rule2_numbered_lines() -> None:
    think = "1. Find red bars\nthey are A and C\n2) A is 3.5\n3.5 plus 2 is 5.5\n  3. Answer C"
    # "3.5 plus…" at a line start is a number, not item 3, so it continues step 2.
    assert extract_steps(think, 8) == ["Find red bars they are A and C", "A is 3.5 3.5 plus 2 is 5.5", "Answer C"]


def test_steps_rule3_sentences() -> None:
    think = "The bars are red. The sum is 3.5! Is it larger?\nYes it is"
    assert extract_steps(think, 8) == ["The bars are red.", "The sum is 3.5!", "Is it larger?", "Yes it is"]


def test_steps_empty_steps_dropped_before_budget() -> None:
    think = "Step 1:\nStep 2: ...\nStep 3: a\nStep 4: b"
    assert extract_steps(think, 1) == ["a"]


def test_steps_budget() -> None:
    think = " ".join(f"Step {k}: s{k}" for k in range(1, 11))
    assert extract_steps(think, 8) == [f"s{k}" for k in range(1, 9)]
    assert extract_steps(think, 4) == ["s1", "s2", "s3", "s4"]


def test_steps_empty_think() -> None:
    assert extract_steps("", 8) == []
    assert extract_steps("  \n ", 8) == []


def test_steps_rejects_zero_budget() -> None:
    with pytest.raises(ValueError, match="max_steps"):
        extract_steps("Step 1: a", 0)


# --- parse_rollout ----------------------------------------------------------------------------

def test_parse_rollout_full_format() -> None:
    text = "<think> Step 1: read the bars. Step 2: add 3.5 and 2. </think><answer> 5.5 </answer><|im_end|>"
    r = parse_rollout(text, 8)
    assert r == ParsedRollout(
        answer="5.5",
        raw_answer="5.5",
        think="Step 1: read the bars. Step 2: add 3.5 and 2.",
        steps=["read the bars.", "add 3.5 and 2."],
        # "Step 1: read the bars. Step 2: add 3.5 and 2." = 11 words; the <think> tags do not count
        words_before_answer=11,
        has_answer_tag=True,
        has_think_tag=True,
    )


def test_parse_rollout_missing_answer_tag_uses_last_nonempty_line() -> None:
    text = "<think>Step 1: a\nStep 2: b</think>So it is\n  -2.  \n\n"
    r = parse_rollout(text, 8)
    assert (r.answer, r.raw_answer, r.has_answer_tag) == ("-2", "-2.", False)
    assert r.steps == ["a", "b"]
    # No <answer>: the whole text is counted: "Step 1: a Step 2: b So it is -2." = 10 words
    assert r.words_before_answer == 10


def test_parse_rollout_missing_think_tag_uses_text_before_answer() -> None:
    r = parse_rollout("1. look\n2. count\n<answer>Four</answer>", 8)
    assert (r.think, r.has_think_tag, r.steps, r.answer) == ("1. look\n2. count", False, ["look", "count"], "four")
    assert r.words_before_answer == 4


def test_parse_rollout_no_tags_at_all() -> None:
    r = parse_rollout("The bars are red. The answer is\nB", 8)
    assert r.answer == "b"
    assert r.think == "The bars are red. The answer is\nB"  # no <answer>: everything is "before" it
    assert r.steps == ["The bars are red.", "The answer is", "B"]
    assert r.words_before_answer == 8  # The bars are red. The answer is B


def test_parse_rollout_lone_closing_think_tag() -> None:
    # The chat template may hold the opening <think>; the model then only writes the closing one.
    r = parse_rollout("Step 1: x\nStep 2: y</think><answer>7</answer>", 8)
    assert (r.think, r.steps, r.answer, r.has_think_tag) == ("Step 1: x\nStep 2: y", ["x", "y"], "7", False)


def test_parse_rollout_unclosed_tags() -> None:
    r = parse_rollout("<think>Step 1: x<answer>12", 8)
    assert (r.think, r.answer, r.has_answer_tag, r.has_think_tag) == ("Step 1: x", "12", True, True)
    r = parse_rollout("<think>Step 1: x. Step 2: y", 8)  # cut off inside the think block
    # No <answer>: the last non-empty line (here the only one) is the answer, however long.
    assert (r.steps, r.answer, r.has_answer_tag) == (["x.", "y"], "step 1: x. step 2: y", False)


def test_parse_rollout_last_closed_answer_wins() -> None:
    r = parse_rollout("<think>use <answer> tags</think><answer>3</answer> wait <answer>4</answer> <answer>", 8)
    assert r.answer == "4"
    assert r.think == "use <answer> tags"
    assert r.words_before_answer == 1  # only "use" precedes the first <answer>


def test_parse_rollout_empty_answer_and_empty_think() -> None:
    r = parse_rollout("<think></think><answer> . </answer>", 8)
    assert (r.answer, r.think, r.steps, r.words_before_answer) == ("", "", [], 0)


def test_parse_rollout_more_steps_than_budget() -> None:
    text = "<think>" + "\n".join(f"Step {k}: s{k}" for k in range(1, 13)) + "</think><answer>x</answer>"
    assert parse_rollout(text, 8).steps == [f"s{k}" for k in range(1, 9)]


def test_parse_rollout_empty_string() -> None:
    assert parse_rollout("", 8) == ParsedRollout("", "", "", [], 0, False, False)


def test_parse_rollout_never_raises_on_garbage() -> None:
    pieces = ["<think>", "</think>", "<answer>", "</answer>", "<step>", "</step>", "<|im_end|>", "<|", "|>",
              "Step 1:", "Step", "2.", "3)", "-", ".", "\n", " ", "é", "42", "<", ">", "/", "\x00", "**"]
    rng = random.Random(0)
    for _ in range(500):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        r = parse_rollout(text, 4)
        assert isinstance(r.answer, str) and len(r.steps) <= 4 and r.words_before_answer >= 0
        assert "<|im_end|>" not in r.think and all(s.strip() for s in r.steps)


# --- what mutation testing found unpinned (docs/testing.md) -----------------------------------

def test_step_budget_applies_to_step_blocks_and_to_sentences_too() -> None:
    # The budget K (SPEC "Step extraction") bounds every extraction path, not only step markers.
    blocks = "".join(f"<step>s{k}</step>" for k in range(1, 6))
    assert extract_steps(blocks, 3) == ["s1", "s2", "s3"]
    assert extract_steps("One. Two. Three. Four.", 2) == ["One.", "Two."]


def test_stray_tags_inside_steps_and_answers_become_plain_spaces() -> None:
    # A tag is a separator, never text: nothing of it may reach the step embeddings or the answer.
    assert extract_steps("<step>Area is <answer> 6</step>", 8) == ["Area is 6"]
    assert extract_steps("Step 1: add </answer> 2 Step 2: done", 8) == ["add 2", "done"]
    assert parse_rollout("<think>a</think><answer>4<step>2</answer>", 8).raw_answer == "4 2"
    assert parse_rollout("<think>a</think><answer> 42 <step>", 8).raw_answer == "42"


def test_think_is_read_after_its_own_opening_tag() -> None:
    # A closing tag before the opening one, or an answer before an unclosed think, does not end it.
    assert parse_rollout("</think>x <think>Step 1: a.</think><answer>1</answer>", 8).think == "Step 1: a."
    assert parse_rollout("<answer>1</answer><think>Step 1: a.", 8).think == "Step 1: a."
