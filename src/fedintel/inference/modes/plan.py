"""``fedintel infer plan``: where to cut the model for the configured devices and links (no processes)."""

from __future__ import annotations

from dataclasses import dataclass

from fedintel.inference.config import InferConfig
from fedintel.inference.modes.common import load_model, plan_for, prompt_ids
from fedintel.inference.modes.report import ModeReport, ReportTable, ms
from fedintel.inference.planner import SplitPlan


@dataclass
class PlanModeReport(ModeReport):
    """The planner's stages (device index, layers) with their modelled compute and incoming-link seconds."""

    model: str
    plan: SplitPlan
    device_names: list[str]

    def render(self) -> list[ReportTable | str]:
        rows = [(str(i), self.device_names[d], f"{a}:{b}", ms(self.plan.compute_s[i]), ms(self.plan.link_s[i]))
                for i, (d, a, b) in enumerate(self.plan.stages)]
        table = ReportTable(f"split plan for {self.model} ({self.plan.stages[-1][2]} layers)",
                            ("stage", "device", "layers", "compute (sim)", "link in (sim)"), rows)
        return [table, f"modelled end-to-end latency: {self.plan.latency_s:.4f} s"]


def run(cfg: InferConfig) -> PlanModeReport:
    """The planner's choice (or the configured ``cuts``) for ``cfg``'s prompt, model, devices and links."""
    lm = load_model(cfg.model, cfg.num_layers)
    plan = plan_for(cfg, len(prompt_ids(lm.tokenizer, cfg.prompt, cfg.chat)), lm.model.config)
    return PlanModeReport(cfg.model, plan, [d.name for d in cfg.device_specs()])
