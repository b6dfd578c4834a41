"""``fedintel infer speculative``: a small draft model here, the large model on an edge process verifying
``k`` drafted tokens at a time, against greedy decoding of the large model alone."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedintel.inference.config import InferConfig
from fedintel.inference.modes.common import link_security, load_draft, load_model, prompt_ids, runtime_args
from fedintel.inference.modes.report import ModeReport, ReportTable, measured_vs_simulated
from fedintel.inference.simulate import ModelCost, remote_generate_s, speculative_s
from fedintel.inference.speculative import SpeculativeResult, speculative_generate
from fedintel.inference.split import SplitPipeline
from fedintel.inference.stage import LocalLM, greedy_generate


@dataclass
class SpeculativeModeReport(ModeReport):
    """Speculative decoding (``spec``) against the large model's greedy decoding; latencies in seconds."""

    model: str
    draft: str
    k: int
    identical: bool
    spec: SpeculativeResult
    large_s: float
    sim_large_s: float
    sim_spec_s: float

    @property
    def ok(self) -> bool:
        """The output equals the large model's greedy output, as speculative decoding promises."""
        return self.identical

    def render(self) -> list[ReportTable | str]:
        spec = self.spec
        rows = [("identical to large greedy", str(self.identical), ""),
                ("acceptance rate", f"{spec.acceptance_rate:.2f}", ""),
                ("tokens per large-model call", f"{spec.tokens_per_round:.2f}", ""),
                ("always-large latency", f"{self.large_s:.3f} s", f"{self.sim_large_s:.3f} s"),
                ("speculative latency", f"{spec.total_s:.3f} s", f"{self.sim_spec_s:.3f} s"),
                ("speculative / always-large", f"{spec.total_s / self.large_s:.2f}x",
                 f"{self.sim_spec_s / self.sim_large_s:.2f}x")]
        return [measured_vs_simulated(f"speculative decoding: draft {self.draft}, target {self.model}, k={self.k}",
                                      rows)]


def run(cfg: InferConfig) -> SpeculativeModeReport:
    """Decode ``cfg.prompt`` both ways over one edge process; simulate both on the first and last device."""
    torch.set_num_threads(cfg.threads)
    big = load_model(cfg.model, cfg.num_layers, cfg)
    dname, small = load_draft(cfg)
    ids = prompt_ids(big.tokenizer, cfg.prompt, cfg.chat)
    eos = big.tokenizer.eos_token_id
    with SplitPipeline.launch(cfg.model, [], len(big.model.model.layers), cfg.num_layers, security=link_security(cfg),
                              threads=cfg.threads, timeout=cfg.timeout_s, extra_args=runtime_args(cfg)) as edge:
        draft = LocalLM(small.model)
        greedy_generate(edge, ids[:4], 2)
        ref = greedy_generate(edge, ids, cfg.max_new_tokens, eos)
        spec = speculative_generate(draft, edge, ids, cfg.max_new_tokens, cfg.k, eos)
    devices, links = cfg.device_specs(), cfg.link_specs()
    end, edge_dev, link = devices[0], devices[-1], links[(0, len(devices) - 1)]
    c_big = ModelCost.of(big.model.config)
    c_small = ModelCost.of(small.model.config, 1.0 if cfg.draft_quantize else 4.0)
    sim_large = remote_generate_s(c_big, edge_dev, link, len(ids), len(ref.tokens))
    sim_spec = speculative_s(c_small, c_big, end, edge_dev, link, len(ids), spec.accepted_per_round, cfg.k)
    return SpeculativeModeReport(cfg.model, dname, cfg.k, spec.tokens == ref.tokens, spec, ref.total_s, sim_large,
                                 sim_spec)
