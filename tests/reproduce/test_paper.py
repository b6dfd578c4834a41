"""`fedintel reproduce paper --quick` end to end on a tiny model: report written from the metrics stores."""

import re
import sqlite3

from fedintel.cli import main
from fedintel.reproduce.cli import SETUP
from fedintel.reproduce.paper import FIGURES, paper_runs
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
    section = text.split("## Claims", 1)[1].split("## Curves", 1)[0]
    claims = [ln for ln in section.splitlines() if ln.startswith("| Fig.") or ln.startswith("| (setup")]
    assert len(claims) == 10
    for row in claims:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 4 and all(cells), row
        assert "nan" not in cells[2] and re.search(r"\d", cells[2]), row
        assert cells[3] in ("**holds**", "**does not hold**")
    plots = tmp_path / "results_plots"
    assert len(list(plots.glob("*.png"))) == 10
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
    runs = paper_runs(tmp_path / "runs", [0, 1])
    write_report(runs, out, SETUP, quick=True)
    row = next(ln for ln in out.read_text().splitlines() if ln.startswith("| Fig. 5a"))
    con1 = sqlite3.connect(tmp_path / "runs" / "fig5_lora-s1" / "metrics.db")
    seed1 = con1.execute("SELECT value FROM round_metrics WHERE name='train_loss' ORDER BY round DESC LIMIT 1").fetchone()[0]
    assert "does not hold" in row and f"FL-LoRA {(987.654 + seed1) / 2:.3f}" in row

    # resumable: a second invocation finds every run finished and reruns nothing
    capsys.readouterr()
    assert main(args + TINY) == 0
    assert "ran" not in capsys.readouterr().out.replace("done already", "")
