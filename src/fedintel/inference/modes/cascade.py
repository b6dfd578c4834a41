"""``fedintel infer cascade``: the small model here answers first and escalates to the large model on an
edge process when unsure, against always asking the large model."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedintel.inference.cascade import Cascade, CascadeReport
from fedintel.inference.config import InferConfig
from fedintel.inference.modes.common import (
    DEFAULT_PROMPTS,
    link_security,
    load_draft,
    load_model,
    prompt_ids,
    runtime_args,
)
from fedintel.inference.modes.report import ModeReport, ReportTable, measured_vs_simulated
from fedintel.inference.simulate import ModelCost, cascade_s, remote_generate_s
from fedintel.inference.split import SplitPipeline
from fedintel.inference.stage import LocalLM


@dataclass
class CascadeModeReport(ModeReport):
    """The cascade's answers (``cascade``) and its latency against always-large, simulated in seconds."""

    model: str
    draft: str
    threshold: float
    confidence: str
    cascade: CascadeReport
    sim_cascade_s: float
    sim_large_s: float

    def render(self) -> list[ReportTable | str]:
        rep = self.cascade
        rows = [("queries", str(len(rep.answers)), ""),
                ("served on the end device", f"{rep.local_fraction:.0%}", ""),
                ("answers equal to the large model's", f"{rep.agreement:.0%}", ""),
                ("cascade / always-large latency", f"{rep.latency_ratio:.2f}x",
                 f"{self.sim_cascade_s / self.sim_large_s:.2f}x")]
        title = f"cascade: {self.draft} -> {self.model}, threshold {self.threshold} ({self.confidence})"
        return [measured_vs_simulated(title, rows)]


def run(cfg: InferConfig) -> CascadeModeReport:
    """Every prompt (``cfg.prompts``, default a built-in set) through the cascade over one edge process."""
    torch.set_num_threads(cfg.threads)
    big = load_model(cfg.model, cfg.num_layers, cfg)
    dname, small = load_draft(cfg)
    prompts = [prompt_ids(big.tokenizer, p, cfg.chat) for p in (cfg.prompts or DEFAULT_PROMPTS)]
    with SplitPipeline.launch(cfg.model, [], len(big.model.model.layers), cfg.num_layers, security=link_security(cfg),
                              threads=cfg.threads, timeout=cfg.timeout_s, extra_args=runtime_args(cfg)) as edge:
        casc = Cascade(LocalLM(small.model), edge, cfg.threshold, cfg.confidence, cfg.max_new_tokens,
                       big.tokenizer.eos_token_id)
        rep = casc.run(prompts)
    devices, links = cfg.device_specs(), cfg.link_specs()
    end, edge_dev, link = devices[0], devices[-1], links[(0, len(devices) - 1)]
    c_big = ModelCost.of(big.model.config)
    c_small = ModelCost.of(small.model.config, 1.0 if cfg.draft_quantize else 4.0)
    sim_c = sum(cascade_s(c_small, c_big, end, edge_dev, link, len(p), cfg.max_new_tokens, not a.served_locally)
                for p, a in zip(prompts, rep.answers, strict=True))
    sim_l = sum(remote_generate_s(c_big, edge_dev, link, len(p), cfg.max_new_tokens) for p in prompts)
    return CascadeModeReport(cfg.model, dname, cfg.threshold, cfg.confidence, rep, sim_c, sim_l)
