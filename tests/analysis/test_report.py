import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.report import main
from core.run import schema

REPO = Path(__file__).resolve().parents[2]


def _set_status(run_dir, status, reason=""):
    schema.status_path(run_dir).write_text(json.dumps({"status": status, "reason": reason}))


def test_the_report_holds_counts_reasons_tables_and_figures_by_relative_path(cloning_sweep):
    _set_status(cloning_sweep / "runs" / "cnn_3", "diverged", "loss 1e9 above the ceiling")
    _set_status(cloning_sweep / "runs" / "mlp_4", "failed", "CUDA out of memory")
    _set_status(cloning_sweep / "runs" / "mlp_5", "failed", "CUDA out of memory")
    damaged = schema.chunk_path(cloning_sweep / "runs" / "mlp_1", 0)
    damaged.write_bytes(b"PAR1")
    report = main([str(cloning_sweep)])
    assert report == cloning_sweep / "analysis" / "report.md"
    text = report.read_text()
    assert "Experiment: cloning." in text
    assert "| cloning | completed | 5 |" in text and "| cloning | failed | 2 |" in text
    assert "- 2 x CUDA out of memory: `runs/mlp_4`, `runs/mlp_5`" in text
    assert "- 1 x loss 1e9 above the ceiling: `runs/cnn_3`" in text
    assert "- `runs/mlp_1/metrics/part-000000.parquet`: ArrowInvalid: " in text
    # the default table: final clone_train loss; cnn 10, 20 (cnn_3 diverged), mlp 1, 2, 3
    default = text[text.index("### clone_train loss (final)") :]
    cnn = next(ln for ln in default.splitlines() if ln.startswith("| cnn |"))
    # n, mean, std = sqrt(50), t_{0.975,1} * 5: 15 -+ 63.5310; n_failed 0, n_diverged 1
    assert cnn.split(" | ")[1:8] == ["2", "15", "7.07107", "-48.531", "78.531", "0", "1"]
    mlp = next(ln for ln in default.splitlines() if ln.startswith("| mlp |"))
    assert mlp.split(" | ")[1:3] == ["3", "2"] and mlp.split(" | ")[6:8] == ["2", "0"]
    assert "### base_train loss (final)" in text and "### clone_train acc (final)" in text
    links = re.findall(r"!\[([^]]*)\]\(([^)]+)\)", text)
    assert {name for name, _ in links} >= {"curves-clone_train-loss", "cloning-score"}
    for _, link in links:
        assert not Path(link).is_absolute()
        assert (report.parent / link).read_bytes()[:4] == b"\x89PNG"


def test_report_options_name_the_report_and_its_figures(cloning_sweep):
    report = main([str(cloning_sweep), "--where", "model.arch=mlp", "--facet", "model.arch"])
    assert report.name == "report__facet-model.arch__where-model.arch=mlp.md"
    text = report.read_text()
    assert "Runs selected: `model.arch=mlp`" in text and "#### model.arch=mlp" in text
    assert "#### model.arch=cnn" not in text
    links = re.findall(r"\]\((figures/[^)]+)\)", text)
    assert links and all(
        link.endswith("__facet-model.arch__where-model.arch=mlp.png") for link in links
    )
    assert (cloning_sweep / "analysis" / "report.md").exists() is False


def test_report_runs_as_a_module_and_refuses_unknown_keys(cloning_sweep):
    out = subprocess.run(
        [sys.executable, "-m", "analysis.report", str(cloning_sweep)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip().endswith(str(cloning_sweep / "analysis" / "report.md"))
    with pytest.raises(SystemExit, match="unknown --hue keys"):
        main([str(cloning_sweep), "--hue", "norm"])
