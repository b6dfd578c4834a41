"""The paper-scale set (`fedintel reproduce paper --full`): the paper's settings exactly, and every file loads."""

from fedintel.cli import main
from fedintel.reproduce.paper import DEFAULT_EXPERIMENTS, experiment_configs, full_set, select_experiments


def test_the_full_set_holds_the_papers_settings():
    names = full_set(DEFAULT_EXPERIMENTS, select_experiments(None))
    assert set(names) == {"fig5_lora", "fig5_prefix", "fig5_prefix_faithful", "fig5_prompt", "fig6a_fl", "fig6a_cfl",
                          "fig6b_tasks_fl", "fig6b_tasks_cfl"}  # Fig. 6b on one task is our control, not the paper's
    cfgs = experiment_configs(DEFAULT_EXPERIMENTS, False, [], names, full=True)
    for name, c in cfgs.items():
        f, d, n = c.federation, c.data, c.network
        assert (f.batch_size, f.lr, d.max_length) == (80, 2e-4, 128), name  # section V: all experiments
        assert (n.cell_radius_m, n.bandwidth_hz, n.tx_power_dbm, n.noise_dbm) == (100, 20e6, 23, -80), name
        assert c.runtime.dtype == "bfloat16" and c.runtime.device == "auto", name
        if name.startswith("fig5"):
            assert (f.num_clients, d.samples_per_client, c.model.name) == (8, 1600, "huggyllama/llama-7b"), name
            assert d.dataset == "hf:Open-Orca/OpenOrca" and d.instruction, name
        else:
            assert (f.num_clients, c.model.name) == (16, "openai-community/gpt2"), name
            if name.endswith("cfl"):
                assert c.clustering.num_clusters == 4 and f.scheme == "clustered", name
    tasks = cfgs["fig6b_tasks_cfl"].data
    assert [(s.domain, s.subset) for s in tasks.sources] == [("sst2", "sst2"), ("qnli", "qnli"), ("qqp", "qqp"),
                                                             ("amazon", None)]
    assert cfgs["fig5_prefix_faithful"].peft.prefix_projection


def test_quick_and_full_together_are_refused(tmp_path, capsys):
    assert main(["reproduce", "paper", "--quick", "--full", "--runs-dir", str(tmp_path / "r"),
                 "--out", str(tmp_path / "o.md")]) == 2
    assert "--quick and --full" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "o.md").exists()


def _hub_cache_with_gpt2(root):
    """A Hugging Face hub cache laid out as `hf download openai-community/gpt2` leaves it (config only)."""
    rev = "607a30d783dfa663caf39e06633721c8d4cfcd7e"
    repo = root / "models--openai-community--gpt2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    (repo / "snapshots" / rev).mkdir(parents=True)
    (repo / "snapshots" / rev / "config.json").write_text('{"model_type": "gpt2"}')
    return root


def test_the_check_finds_each_hub_resource_in_the_caches_or_names_it_missing(tmp_path):
    from fedintel.reproduce.preflight import check

    hub = _hub_cache_with_gpt2(tmp_path / "hub")
    prepared = tmp_path / "datasets"
    (prepared / "nyu-mll___glue" / "sst2").mkdir(parents=True)  # a dataset prepared by an earlier load_dataset
    names = full_set(DEFAULT_EXPERIMENTS, select_experiments(None))
    cfgs = experiment_configs(DEFAULT_EXPERIMENTS, False, [], names, full=True)
    got = {r.repo_id: r for r in check(cfgs, reachable=False, hub_cache=hub, datasets_cache=prepared)}
    assert {k: r.status for k, r in got.items()} == {
        "huggyllama/llama-7b": "missing", "Open-Orca/OpenOrca": "missing", "openai-community/gpt2": "cached",
        "shf123/MDAAG": "missing", "nyu-mll/glue": "cached", "fancyzhx/amazon_polarity": "missing"}
    assert got["shf123/MDAAG"].used_by == ["fig6a_fl", "fig6a_cfl"] and got["nyu-mll/glue"].kind == "dataset"
    online = check(cfgs, reachable=True, hub_cache=hub, datasets_cache=prepared)
    assert {r.status for r in online if r.repo_id != "openai-community/gpt2" and r.repo_id != "nyu-mll/glue"} == {"hub"}
    # the default set uses packaged models and data: nothing to fetch
    assert check(experiment_configs(DEFAULT_EXPERIMENTS, False, [], ["fig5_lora", "fig6b_tasks_fl"]),
                 reachable=False, hub_cache=hub, datasets_cache=prepared) == []


def test_a_full_run_without_its_models_stops_before_any_run_and_says_what_to_fetch(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(_hub_cache_with_gpt2(tmp_path / "hub")))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    runs, out = tmp_path / "runs", tmp_path / "o.md"
    assert main(["reproduce", "paper", "--full", "--only", "fig6a", "--runs-dir", str(runs), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "dataset shf123/MDAAG (used by fig6a_fl, fig6a_cfl)" in err and "hf download shf123/MDAAG" in err
    assert "gpt2" not in err  # cached
    assert not runs.exists() and not out.exists()
    assert main(["reproduce", "paper", "--full", "--only", "fig6a", "--check"]) == 2
    table = capsys.readouterr().out
    assert "openai-community/gpt2" in table and "cached" in table and "missing" in table
