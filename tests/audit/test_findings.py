"""Flagged vs possible label issues, on out-of-fold probabilities generated with a known answer
(no training): labels flipped on images the model is sure of are flagged; images the model
finds borderline between two classes it confuses are cleanlab candidates, kept as possible."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

CLASSES = ["a", "b", "c", "d"]
PER_CLASS = 120
AMBIGUOUS = 30  # per class of the confused pair (a, b)
FLIPS_PER_CLASS = 3


def generated_oof(seed: int = 0):
    """OutOfFold with known noise: classes a and b confused by the model on AMBIGUOUS images
    each (top class the wrong one of the pair, labels right), FLIPS_PER_CLASS labels per class
    moved to another class on images the model recognises with certainty."""
    from visiondeck.audit.oof import OutOfFold

    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    truth = np.repeat(np.arange(k), PER_CLASS)
    probs = np.empty((len(truth), k))
    for i, t in enumerate(truth):
        if t in (0, 1):  # the confused pair: less sure, the rest mostly on the partner
            top = rng.uniform(0.55, 0.8)
            rest = np.array([0.7, 0.15, 0.15]) * (1 - top)
        else:
            top = rng.uniform(0.85, 0.97)
            rest = rng.dirichlet(np.ones(k - 1)) * (1 - top)
        probs[i] = np.insert(rest, t, top)
    labels = truth.copy()
    ambiguous: list[int] = []
    for c, other in ((0, 1), (1, 0)):
        for i in np.flatnonzero(truth == c)[:AMBIGUOUS]:
            # the model leans to the other class of the pair, yet still sees some of c
            mine, theirs = rng.uniform(0.2, 0.3), rng.uniform(0.6, 0.7)
            probs[i] = (1 - mine - theirs) / (k - 2)
            probs[i, c], probs[i, other] = mine, theirs
            ambiguous.append(int(i))
    flipped: list[int] = []
    for c in range(k):
        for i in np.flatnonzero(truth == c)[-FLIPS_PER_CLASS:]:
            given = (c + 1 + int(rng.integers(k - 1))) % k
            probs[i] = 0.01
            probs[i, given] = 0.002  # sure it is not the given class
            probs[i, c] = 1 - probs[i].sum() + probs[i, c]
            labels[i] = given
            flipped.append(int(i))
    embeddings = rng.normal(size=(len(truth), 64))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    relpaths = [f"{CLASSES[labels[i]]}/{i:04d}.png" for i in range(len(truth))]
    oof = OutOfFold(
        root=Path("."),
        classes=CLASSES,
        relpaths=relpaths,
        labels=labels.astype(np.int64),
        probs=probs.astype(np.float32),
        embeddings=embeddings.astype(np.float32),
        fold_of=np.arange(len(truth)) % 2,
        split_id="generated",
        prepared=Path("."),
    )
    return oof, set(flipped), set(ambiguous)


@pytest.fixture(scope="module")
def generated():
    from visiondeck.audit.findings import find_suspects

    oof, flipped, ambiguous = generated_oof()
    return oof, flipped, ambiguous, find_suspects(oof)


def test_only_the_flips_are_flagged_while_cleanlab_also_lists_the_confusions(generated) -> None:
    from cleanlab.filter import find_label_issues

    oof, flipped, ambiguous, findings = generated
    candidates = set(
        find_label_issues(oof.labels, oof.probs, filter_by="prune_by_noise_rate", n_jobs=1)
        .nonzero()[0]
        .tolist()
    )
    # the generated case is what the audit must sort out: cleanlab's own set holds every flip
    # and many of the model's a/b confusions (right labels)
    assert flipped <= candidates
    assert len(candidates & ambiguous) >= 10
    assert set(findings.label_issues) == flipped
    assert set(findings.possible_label_issues) == candidates - flipped
    assert set(findings.possible_label_issues) <= ambiguous
    assert {s.path for s in findings.suspects} == {oof.relpaths[i] for i in flipped}
    assert {s.path for s in findings.possible} == {oof.relpaths[i] for i in candidates - flipped}
    assert all(s.reasons == ("possible_label",) for s in findings.possible)
    counts = findings.counts()
    assert counts["label_issues"] == len(flipped)
    assert counts["cleanlab_candidates"] == len(candidates)
    for s in findings.suspects:  # the suggestion is the class the image shows
        i = s.index
        assert s.suggested == CLASSES[i // PER_CLASS] and s.reasons == ("label",)


def test_flagged_are_ranked_most_suspect_first(generated) -> None:
    oof, _, _, findings = generated
    scores = [1 - oof.probs[i, oof.labels[i]] for i in findings.label_issues]
    assert scores == sorted(scores, reverse=True)
    assert [s.score for s in findings.possible] == sorted(
        (s.score for s in findings.possible), reverse=True
    )


def test_confident_both_ways_matches_a_hand_computation() -> None:
    from visiondeck.audit.findings import confident_both_ways

    labels = np.array([0, 0, 0, 1, 1, 2])
    probs = np.array(
        [
            [0.9, 0.05, 0.05],
            [0.6, 0.3, 0.1],
            [0.05, 0.9, 0.05],  # labelled 0, clearly 1
            [0.1, 0.8, 0.1],
            [0.45, 0.5, 0.05],  # labelled 1, leaning 0 but p(1) is high
            [0.3, 0.6, 0.1],  # labelled 2, looks 1 and not 2
        ]
    )
    # present (mean self-confidence): class 0 (0.9+0.6+0.05)/3, 1 (0.8+0.5)/2, 2 0.1
    present = np.array([1.55 / 3, 0.65, 0.1])
    # absent (mean over the other labels): class 0 (0.1+0.45+0.3)/3, 1 (0.05+0.3+0.9+0.6)/4,
    # class 2 (0.05+0.1+0.05+0.1+0.05)/5
    absent = np.array([0.85 / 3, 1.85 / 4, 0.35 / 5])
    top = probs.argmax(axis=1)
    rows = np.arange(len(labels))
    expected = (
        (top != labels)
        & (probs[rows, top] >= present[top])
        & (probs[rows, labels] <= absent[labels])
    )
    assert expected.tolist() == [False, False, True, False, False, False]
    assert confident_both_ways(labels, probs).tolist() == expected.tolist()
    # image 5: p(1) 0.6 < 0.65 — not confidently 1; with more confidence it is flagged
    probs[5] = [0.2, 0.75, 0.05]
    assert confident_both_ways(labels, probs).tolist() == [
        False, False, True, False, False, True,
    ]


def test_possible_issues_go_to_their_own_csv_not_to_suspects(generated, tmp_path) -> None:
    from visiondeck.audit.report import CSV_COLUMNS, write_csv

    oof, flipped, _, findings = generated
    suspects = write_csv(findings, tmp_path / "suspects.csv")
    possible = write_csv(findings, tmp_path / "possible.csv", possible=True)
    with suspects.open(newline="") as handle:
        flagged_rows = list(csv.DictReader(handle))
    with possible.open(newline="") as handle:
        possible_rows = list(csv.DictReader(handle))
    assert tuple(flagged_rows[0]) == CSV_COLUMNS
    assert {r["path"] for r in flagged_rows} == {oof.relpaths[i] for i in flipped}
    assert {r["path"] for r in possible_rows} == {s.path for s in findings.possible}
    assert {r["reasons"] for r in possible_rows} == {"possible_label"}
    assert not {r["path"] for r in flagged_rows} & {r["path"] for r in possible_rows}


def test_the_report_lists_possible_issues_after_the_flagged_ones(generated, tmp_path) -> None:
    from visiondeck.audit.report import write_html

    oof, _, _, findings = generated
    page = write_html(findings, oof, tmp_path / "report.html", source="generated", folds=2)
    text = page.read_text()
    heading = text.index("Possible wrong labels")
    for s in findings.suspects:
        assert text.index(f'alt="{s.path}"') < heading
    for s in findings.possible:
        assert text.index(f'alt="{s.path}"') > heading
    # `show` bounds the page: the flagged first, then as many possible ones as fit
    short = write_html(
        findings, oof, tmp_path / "short.html", source="generated", folds=2, show=15
    ).read_text()
    assert short.count('<img class="thumb"') == 15
