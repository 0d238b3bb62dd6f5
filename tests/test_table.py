"""Table 1 statistics: paired per-seed differences, their 95 % t-interval and the seeds ahead."""

import pytest

from sarmae.experiments.table import paired_differences, t_interval, write_table


def test_t_interval_uses_students_t_over_seeds():
    low, high = t_interval([1.0, 2.0, 3.0])  # mean 2, std 1, t(0.975, 2 dof) = 4.3027
    assert (low, high) == pytest.approx((2 - 4.302653 / 3 ** 0.5, 2 + 4.302653 / 3 ** 0.5), rel=1e-5)
    low, high = t_interval([0.5, 0.7, 0.6, 0.4, 0.8, 0.9, 0.3, 0.6, 0.5, 0.7])  # 10 seeds: t(0.975, 9) = 2.2622
    assert high - low == pytest.approx(2 * 2.262157 * 0.18257419 / 10 ** 0.5, rel=1e-4)
    assert t_interval([1.0]) is None


def run(map_, ap50):
    return {"mAP": map_, "AP50": ap50, "AP75": 0.0, "mAP_s": 0.0, "mAP_m": 0.0, "mAP_l": 0.0}


def test_paired_differences_pair_runs_by_seed(tmp_path):
    per_row = {"scratch": [run(0.10, 0.30), run(0.12, 0.33), run(0.08, 0.29)],
               "sar": [run(0.13, 0.36), run(0.13, 0.32), run(0.11, 0.35)]}
    p = paired_differences(per_row, "sar", "scratch")
    assert p["mAP"]["per_seed"] == pytest.approx([0.03, 0.01, 0.03])
    assert p["mAP"]["ahead"] == 3 and p["AP50"]["ahead"] == 2
    assert p["mAP"]["ci95"] == pytest.approx(t_interval([0.03, 0.01, 0.03]))
    text = write_table(per_row, tmp_path, "t", [("sar", "scratch"), ("missing row", "scratch")])
    assert "| sar − scratch" in text and "+2.3" in text and "3/3" in text and "2/3" in text
    assert "missing row" not in text
