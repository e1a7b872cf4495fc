"""Labeled subsets: class-balanced fractions, counts per class, SimCLR-style name lists."""

import pytest
import torch

from simclrv2.data.datasets import DataError
from simclrv2.data.subsets import by_count, by_fraction, check_covers_classes, from_file, save_list

LABELS = torch.arange(10).repeat_interleave(torch.tensor([100, 90, 80, 70, 60, 50, 40, 30, 20, 3]))


def test_fraction_is_class_balanced_deterministic_and_covers_every_class():
    chosen = by_fraction(LABELS, 0.1, seed=0)
    counts = torch.bincount(LABELS[chosen], minlength=10)
    assert counts.tolist() == [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]  # round(0.1 n), at least one
    assert torch.equal(chosen, by_fraction(LABELS, 0.1, seed=0))
    assert not torch.equal(chosen, by_fraction(LABELS, 0.1, seed=1))
    assert len(chosen.unique()) == len(chosen)
    assert len(by_fraction(LABELS, 1.0)) == len(LABELS)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.01])
def test_fraction_out_of_range(fraction):
    with pytest.raises(DataError, match="outside \\(0, 1\\]"):
        by_fraction(LABELS, fraction)


def test_count_per_class_and_too_many():
    chosen = by_count(LABELS, 3, seed=0)
    assert torch.bincount(LABELS[chosen]).tolist() == [3] * 10
    with pytest.raises(DataError, match="class 9 has only 3 images"):
        by_count(LABELS, 4)


def test_from_file_matches_base_names_and_reports_missing(tmp_path, caplog):
    names = [f"n0144/n01440764_{i}.JPEG" for i in range(20)]
    f = tmp_path / "1percent.txt"
    f.write_text("n01440764_3.JPEG\nn01440764_7.JPEG\n\nn0144/n01440764_11.JPEG\n")
    assert from_file(names, f).tolist() == [3, 7, 11]
    f.write_text("n01440764_3.JPEG\nnope_1.JPEG\nnope_2.JPEG\n")
    assert from_file(names, f).tolist() == [3]
    assert "2 of 3 names" in caplog.text and "nope_1.JPEG, nope_2.JPEG" in caplog.text
    f.write_text("nope_1.JPEG\n")
    with pytest.raises(DataError, match="none of the 1 names .* is in the dataset"):
        from_file(names, f)
    with pytest.raises(DataError, match="label file not found"):
        from_file(names, tmp_path / "none.txt")


def test_save_list_round_trips(tmp_path):
    names = [f"img_{i}.png" for i in range(30)]
    labels = torch.arange(30) % 3
    chosen = by_fraction(labels, 0.2)
    save_list(names, chosen, tmp_path / "labeled.txt")
    assert torch.equal(from_file(names, tmp_path / "labeled.txt"), chosen)


def test_class_without_labeled_image():
    with pytest.raises(DataError, match="1 class\\(es\\) have no labeled image: c2"):
        check_covers_classes(torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1]), ["c0", "c1", "c2"])
