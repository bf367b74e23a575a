import pytest
import torch

from lmtune.config import DataConfig
from lmtune.data import Table
from lmtune.errors import DataError
from lmtune.tasks.classification import Classification, classification_metrics


def test_metrics_match_hand_computed_values():
    # true:      0 0 0 1 1 2
    # predicted: 0 0 1 1 2 2
    m = classification_metrics(torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 0, 0, 1, 1, 2]), ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3, abs=1e-6),
                                   "f1": pytest.approx(0.8, abs=1e-6), "support": 3}
    assert m["per_class"]["b"]["precision"] == 0.5 and m["per_class"]["b"]["recall"] == 0.5
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3, abs=1e-6)


def _table(labels, source="t.csv"):
    return Table(source, ["text", "label"], [{"text": f"x{i}", "label": v} for i, v in enumerate(labels)],
                 list(range(2, 2 + len(labels))))


def test_label_set_from_strings_and_integers():
    task = Classification()
    task.learn_from_rows(_table(["1", "0", "1"]), DataConfig(train="t.csv"))
    assert task.labels == [0, 1]
    task.learn_from_rows(_table(["pos", "neg", "neutral"]), DataConfig(train="t.csv"))
    assert task.labels == ["neg", "neutral", "pos"]


def test_one_class_and_unknown_label_are_clear_errors():
    task = Classification()
    with pytest.raises(DataError, match="label column 'label' has only one class"):
        task.learn_from_rows(_table(["pos", "pos"]), DataConfig(train="t.csv"))
    task.learn_from_rows(_table(["pos", "neg"]), DataConfig(train="t.csv"))
    with pytest.raises(DataError, match=r"dev.csv:3: label 'meh' is not one of the training labels \(neg, pos\)"):
        task.encode(_table(["pos", "meh"], "dev.csv"), _FakeTokenizer(), DataConfig(train="t.csv"), 16)


def test_predictions_are_json_ready():
    task = Classification(["neg", "pos"])
    (pred,) = task.predictions([torch.tensor([0.0, 2.0])], [{"input_ids": [1]}], 1)
    assert pred["label"] == "pos" and pred["scores"]["pos"] == pytest.approx(0.880797, abs=1e-5)


class _FakeTokenizer:
    name_or_path = "fake"

    def __len__(self):
        return 10

    def __call__(self, texts, pairs=None, truncation=True, max_length=16):
        return {"input_ids": [[1, 2] for _ in texts]}
