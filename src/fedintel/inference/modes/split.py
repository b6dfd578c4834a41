"""``fedintel infer split``: the model's layers over a chain of device processes, token by token, compared
with the same model in this process."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedintel.inference.config import InferConfig
from fedintel.inference.modes.common import (
    link_security,
    load_model,
    pack_local,
    plan_for,
    prompt_ids,
    runtime_args,
)
from fedintel.inference.modes.report import ModeReport, ReportTable, measured_vs_simulated, ms
from fedintel.inference.planner import SplitPlan
from fedintel.inference.split import SplitPipeline
from fedintel.inference.stage import LocalLM, greedy_generate


@dataclass
class Reference:
    """The same generation in one process: its speed and how far the split run's logits are from it."""

    tokens_per_s: float
    identical: bool
    max_logit_diff: float


@dataclass
class SplitModeReport(ModeReport):
    """Split generation measured here (``layout``: ``address:start:end`` of each of the ``hops`` stages) against
    the plan; seconds, tokens per second."""

    model: str
    plan: SplitPlan
    device_names: list[str]
    layout: str
    hops: int
    max_new_tokens: int
    tokens_per_s: float
    overhead_per_hop_s: float
    total_s: float
    answer: str
    reference: Reference | None = None

    @property
    def ok(self) -> bool:
        """The split output equals the one-process output (true without a reference)."""
        return self.reference is None or self.reference.identical

    def render(self) -> list[ReportTable | str]:
        plan, hops = self.plan, self.hops
        rows = [("stages", self.layout, ", ".join(f"{self.device_names[d]}:{a}:{b}" for d, a, b in plan.stages)),
                ("tokens/s (split)", f"{self.tokens_per_s:.1f}",
                 f"{(self.max_new_tokens - 1) / max(1e-12, plan.latency_s):.1f} (whole generation)"),
                ("transport overhead per hop", ms(self.overhead_per_hop_s),
                 ms(sum(plan.link_s) / max(1, hops) / max(1, self.max_new_tokens))),
                ("end-to-end", f"{self.total_s:.3f} s", f"{plan.latency_s:.3f} s")]
        if self.reference is not None:
            ref = self.reference
            rows += [("tokens/s (one process)", f"{ref.tokens_per_s:.1f}", ""),
                     ("split / single time per token", f"{ref.tokens_per_s / self.tokens_per_s:.2f}x", ""),
                     ("identical output", f"{ref.identical} (max |dlogit| {ref.max_logit_diff:.1e})", "")]
        return [measured_vs_simulated(f"split inference: {self.model}", rows), f"answer: {self.answer!r}"]


def run(cfg: InferConfig, reference: bool = True, notify: Callable[[str], None] | None = None) -> SplitModeReport:
    """Generate over stage processes (started here, or ``cfg.stages`` already running) and, with
    ``reference``, again in this process to compare; ``notify`` hears about processes being started."""
    torch.set_num_threads(cfg.threads)
    lm = load_model(cfg.model, cfg.num_layers, cfg)
    ids = prompt_ids(lm.tokenizer, cfg.prompt, cfg.chat)
    total = len(lm.model.model.layers)
    plan = plan_for(cfg, len(ids), lm.model.config)
    if cfg.stages:
        pipe = SplitPipeline.connect(cfg.stages, link_security(cfg, "stages"), cfg.timeout_s)
    else:
        if notify:
            notify(f"starting {len(plan.stages)} stage processes: layers "
                   + ", ".join(f"{a}:{b}" for _, a, b in plan.stages))
        pipe = SplitPipeline.launch(cfg.model, plan.cuts, total, cfg.num_layers, security=link_security(cfg),
                                    threads=cfg.threads, timeout=cfg.timeout_s, extra_args=runtime_args(cfg))
    with pipe:
        layout = ", ".join(f"{s.address}:{s.start}:{s.end}" for s in pipe.stages)
        greedy_generate(pipe, ids[:4], 2)  # warm-up
        out = greedy_generate(pipe, ids, cfg.max_new_tokens, lm.tokenizer.eos_token_id, keep_logits=reference)
        steps = len(out.decode_s)
        overhead = statistics.median(pipe.stats.overhead_s()[-steps:]) if steps else float("nan")
    report = SplitModeReport(cfg.model, plan, [d.name for d in cfg.device_specs()], layout, len(pipe.stages),
                             cfg.max_new_tokens, out.tokens_per_s, overhead / len(pipe.stages), out.total_s,
                             lm.tokenizer.decode(out.tokens, skip_special_tokens=True))
    if reference:
        pack_local(lm.model, cfg)  # packed like the stages, so the time ratio compares like with like
        greedy_generate(LocalLM(lm.model), ids[:4], 2)
        ref = greedy_generate(LocalLM(lm.model), ids, cfg.max_new_tokens, lm.tokenizer.eos_token_id, keep_logits=True)
        dmax = max(float((a - b).abs().max()) for a, b in zip(out.logits, ref.logits, strict=False))
        report.reference = Reference(ref.tokens_per_s, out.tokens == ref.tokens, dmax)
    return report
