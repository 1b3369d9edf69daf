"""`tunesweep plan`: the expanded study, models x decoding configs, without running anything."""

from __future__ import annotations

from .config import ExperimentConfig, expand_sweep, grid_warning, sweep_merges


def plan_entries(cfg: ExperimentConfig) -> list[dict]:
    configs = expand_sweep(cfg.generation)
    return [
        {"model": target.name, "base_model": target.is_base, **dc.as_dict()}
        for target in cfg.run_targets()
        for dc in configs
    ]


def plan_table(cfg: ExperimentConfig, entries: list[dict]) -> str:
    configs = expand_sweep(cfg.generation)
    targets = cfg.run_targets()
    lines = [f"{cfg.name}: {len(targets)} model(s) x {len(configs)} decoding configs = {len(entries)} runs "
             f"({cfg.generation.mode}, max_new_tokens {cfg.generation.max_new_tokens})", ""]
    lines.append("models: " + ", ".join(f"{t.name} ({'base ' if t.is_base else ''}{t.model.base})" for t in targets))
    lines.append("")
    width = max(len(c.name) for c in configs)
    lines.append(f"{'config':<{width}}  mode    varies       ignores")
    for c in configs:
        lines.append(f"{c.name:<{width}}  {c.mode:<6}  {c.varied or '(centre)':<11}  {', '.join(c.ignored) or '-'}")
    merges = sweep_merges(cfg.generation)
    if merges:
        lines += ["", "merged (they differ only in parameters their mode ignores, so they would generate the same text):"]
        lines += [f"  {kept} <- {', '.join(dropped)}" for kept, dropped in merges.items()]
    warning = grid_warning(cfg)
    if warning:
        lines += ["", f"warning: {warning}"]
    return "\n".join(lines)
