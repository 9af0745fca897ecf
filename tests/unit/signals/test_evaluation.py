"""The measuring instruments themselves, on examples worked out by hand."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from tend.signals.evaluation import checkup_quality, precision_recall, roc_auc

NIGHT = dt.date(2026, 11, 20)


@pytest.mark.parametrize(
    ("score", "label", "auc"),
    [
        # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 0.35 beats one, 0.8 both: 3/4
        ([0.1, 0.4, 0.35, 0.8], [False, False, True, True], 0.75),
        ([0.1, 0.9, 0.8], [False, True, True], 1.0),
        ([0.9, 0.1], [False, True], 0.0),
        ([1.0, 1.0], [True, False], 0.5),  # a tie counts half
        # ties inside: pos {2, 3}, neg {2, 1}: (0.5 + 1) + (1 + 1) = 3.5 of 4 pairs
        ([2, 3, 2, 1], [True, True, False, False], 0.875),
    ],
)
def test_roc_auc_by_hand(score: list[float], label: list[bool], auc: float) -> None:
    assert roc_auc(np.array(score), np.array(label)) == pytest.approx(auc)


def test_roc_auc_needs_both_classes() -> None:
    assert math.isnan(roc_auc(np.array([0.2, 0.3]), np.array([True, True])))


def test_precision_recall_by_hand() -> None:
    assert precision_recall({"a", "b", "c"}, {"b", "c", "d", "e"}) == (2 / 3, 2 / 4)
    p, r = precision_recall(set(), {"a"})
    assert math.isnan(p) and r == 0.0


def test_checkup_quality_by_hand() -> None:
    truth = pd.DataFrame({
        "archetype": ["service", "service", "service", "occasional"],
        "service_sku": ["BOILER", "CAR", "DENTAL", None],
        "next_due_on": [NIGHT + dt.timedelta(days=5), NIGHT - dt.timedelta(days=3),
                        NIGHT + dt.timedelta(days=60), None],
    }, index=["A", "B", "C", "D"])
    signals = pd.DataFrame({"customer_id": ["A", "C", "D", "A"],
                            "signal": ["checkup", "checkup", "checkup", "seasonal"],
                            "sku": ["BOILER", "DENTAL", "BOILER", None]})
    # signalled A/BOILER (true), C/DENTAL (true), D/BOILER (false): 2/3; due in the window:
    # A and B, of which A was found: 1/2 (C is due in 60 days, outside -7..+14)
    assert checkup_quality(signals, truth, NIGHT) == (pytest.approx(2 / 3), 0.5)
