"""`fedintel reproduce paper --quick` end to end on a tiny model: report written from the metrics stores."""

import re
import sqlite3

import pytest

from fedintel.cli import main
from fedintel.errors import ConfigError
from fedintel.reproduce.paper import FIGURES, existing_runs, paper_runs, seed_counts, select_experiments
from fedintel.reproduce.report import write_report

TINY = ["--set", "model.name=tiny-llama", "--set", "model.num_layers=null", "--set", "data.max_length=16",
        "--set", "federation.rounds=2", "--set", "network.enabled=false", "--set", "federation.local_steps=1",
        "--set", "data.samples_per_client=10", "--set", "eval.max_samples=4", "--set", "data.global_eval_samples=8",
        "--set", "output.overview=false"]  # 14 runs: their overview figures would add seconds, the report draws its own


def test_quick_reproduction_writes_a_full_report_from_the_store(tmp_path, capsys):
    out = tmp_path / "results.md"
    args = ["reproduce", "paper", "--quick", "--seeds", "2", "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]
    assert main(args + TINY) == 0
    text = out.read_text()
    # which set ran, and where: each run recorded its hardware in its store
    assert "**Set:** the scaled set that runs on a CPU" in text
    assert re.search(r"\*\*Hardware\*\* \(recorded by each run\): CPU .+, \d+ cores; cpu float32; torch \S+ \(\d+ runs\)", text)
    section = text.split("## Claims", 1)[1].split("## Curves", 1)[0]
    claims = [ln for ln in section.splitlines() if ln.startswith("| Fig.") or ln.startswith("| (setup")]
    assert len(claims) == 14  # Fig. 5: 3; Fig. 6a: 2 + purity; Fig. 6b different tasks and same task: 3 + purity each
    assert sum("Fig. 6b (different tasks)" in r for r in claims) == 4 and sum("Fig. 6b (same task)" in r for r in claims) == 4
    for row in claims:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 7 and all(cells), row
        assert "nan" not in cells[2] and re.search(r"\d", cells[2]), row
        assert re.fullmatch(r"(.*: )?\d/2(; .*: \d/2)*", cells[3]), row  # seeds where the ordering holds, k/n
        assert cells[6] in ("**holds**", "**does not hold**", "**inconclusive**")
        if not row.startswith("| (setup"):
            assert re.search(r"\d", cells[4]) or "n/a" in cells[4], row  # the paired test's p-value
    # the contrast paragraph is written from the numbers of both Fig. 6b experiments
    contrast = text.split("### Fig. 6b: different tasks against the same task", 1)[1].split("##", 1)[0]
    assert "four different tasks (tasks4)" in contrast and "one task in four domains (VADER-4)" in contrast
    assert "contrast" in contrast.lower() and "not run" not in contrast
    # the setup's "here" column is read from the runs: model and parameter count, data, network
    setup_table = text.split("## Setup", 1)[1].split("Each experiment as it ran", 1)[0]
    assert re.search(r"tiny-llama \(\d+\.\dM parameters as loaded", setup_table)
    assert "tasks4: 4 tasks that differ in kind" in setup_table and "network | 100 m cell" in setup_table
    assert "not simulated" in setup_table  # TINY turns the network off: the report says so, not the paper's cell
    plots = tmp_path / "results_plots"
    assert len(list(plots.glob("*.png"))) == 13
    # the setup table's "here" rows and the cost table come from the runs, one row per experiment
    n_exp = sum(len(v) for v in FIGURES.values())
    setup = text.split("Each experiment as it ran", 1)[1].split("## Claims", 1)[0]
    assert sum(ln.startswith("| FL-") or ln.startswith("| CFL-") for ln in setup.splitlines()) == n_exp
    assert "| FL-LoRA (fig5) | tiny-llama | chatterbot (iid) | lora r=8 | fedavg | 8 x 10 | 2 | 1 |" in setup
    costs = text.split("## Cost on the simulated edge network", 1)[1].split("## Curves", 1)[0]
    cost_rows = [ln for ln in costs.splitlines() if ln.startswith("| fig")]
    assert len(cost_rows) == n_exp and all("nan" not in r for r in cost_rows)
    # the report links small published copies of each store (no checkpoints) and can be rebuilt from them alone
    published = tmp_path / "results_runs"
    assert sorted(p.name for p in (published / "fig6b_cfl-s1").iterdir()) == ["config.yaml", "metrics.db"]
    assert "`results_runs/fig5_lora-s0`" in text
    out.unlink()
    assert main(["reproduce", "paper", "--quick", "--seeds", "2", "--report-only", "--out", str(out)]) == 0
    assert out.read_text() == text

    # the numbers come from the metrics stores: change one value, regenerate, and the report follows
    db = tmp_path / "runs" / "fig5_lora-s0" / "metrics.db"
    con = sqlite3.connect(db)
    con.execute("UPDATE round_metrics SET value=987.654 WHERE name='train_loss' AND round=(SELECT MAX(round) FROM round_metrics)")
    con.commit()
    con.close()
    runs = paper_runs(tmp_path / "runs", seed_counts(quick=True))
    write_report(runs, out, quick=True)
    row = next(ln for ln in out.read_text().splitlines() if ln.startswith("| Fig. 5a"))
    con1 = sqlite3.connect(tmp_path / "runs" / "fig5_lora-s1" / "metrics.db")
    seed1 = con1.execute("SELECT value FROM round_metrics WHERE name='train_loss' ORDER BY round DESC LIMIT 1").fetchone()[0]
    assert all(int(k) <= 1 for k in re.findall(r"(\d)/2", row))  # seed 0 now breaks the ordering
    assert "**holds**" not in row and f"FL-LoRA {(987.654 + seed1) / 2:.3f}" in row

    # resumable: a second invocation finds every run finished and reruns nothing
    capsys.readouterr()
    assert main(args + TINY) == 0
    assert "ran" not in capsys.readouterr().out.replace("done already", "")


def test_runs_missing_from_the_store_show_as_not_run_and_only_selects_figures(tmp_path):
    seeds = seed_counts()
    assert seeds["fig5"] == 3 and seeds["fig6b"] == 5 and seeds["fig6b_tasks"] == 5  # cheap MiniLM runs: 5 seeds
    assert seed_counts(quick=True) == dict.fromkeys(FIGURES, 2) and seed_counts(seeds=4)["fig5"] == 4
    assert select_experiments(["fig6b_tasks", "fig5_lora"]) == ["fig5_lora", "fig6b_tasks_fl", "fig6b_tasks_cfl"]
    with pytest.raises(ConfigError, match="--only: unknown fig7"):
        select_experiments(["fig7"])
    assert existing_runs(tmp_path, seeds) == []
    out = tmp_path / "results.md"
    write_report([], out, quick=False)
    text = out.read_text()
    claims = [ln for ln in text.split("## Claims", 1)[1].splitlines() if ln.startswith("| Fig.")]
    assert claims and all(ln.rstrip(" |").endswith("not run") for ln in claims)
    assert "On four different tasks (tasks4): not run." in text
