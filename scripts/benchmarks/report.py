"""The README table of a bench result (between the bench markers)."""

from __future__ import annotations

README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


def readme_table(results: dict) -> str:
    t, step, nll = results["training"], results["lockstep"], results["nll"]
    floor, five_c = t["compute_floor"], 5 * t["torchvision_loader"]
    reach = (
        f"5 × (c) = {five_c:,.0f} images/s is beyond the floor itself: out of reach for any implementation here"
        if floor < five_c
        else f"5 × (c) = {five_c:,.0f} images/s needs a step that takes at most {floor / five_c:.2f} × the floor's "
        f"time; the hand-written loop (b') takes {floor / t['plain_loop_fused_adam']:.1f} × and is itself "
        f"{t['plain_loop_fused_adam'] / t['torchvision_loader']:.1f} × (c)"
    )
    a_label = "(a) vaelab through Lightning, `train.py`'s config" + "".join(f" `{o}`" for o in results["overrides"])
    lines = [
        README_START,
        f"Measured by `{results['command']}` on {results['machine']} ({results['date']}). Lockstep: one step of (a), "
        f"(b) and (b') in turn for {step['epochs']} epochs, so that all three see the same machine; alone: the best "
        f"of {len(t['runs']['a'])} interleaved runs of each.",
        "",
        "| what | images/s, lockstep | images/s, alone |",
        "|---|---|---|",
        f"| {a_label} | {step['a']:,.0f} | {t['vaelab_lightning']:,.0f} |",
        f"| (b) plain PyTorch loop, in-memory tensors, default Adam (pytorch/examples) | {step['b']:,.0f} "
        f"| {t['plain_loop']:,.0f} |",
        f"| (b') the same loop with vaelab's fused Adam | {step['b_fused']:,.0f} | {t['plain_loop_fused_adam']:,.0f} |",
        f"| (c) torchvision dataset + DataLoader, per-sample ToTensor | | {t['torchvision_loader']:,.0f} |",
        "| floor: the step's five 128×784×400 matrix products and one fused Adam update, nothing else | | "
        f"{t['compute_floor']:,.0f} |",
        f"| NLL, k = {nll['k']}, IWAE-paper MLP: `vaelab-eval`'s `evaluate_split` | | "
        f"{nll['vaelab_images_per_second']:.1f} |",
        f"| NLL, the same computation as a bare loop | | {nll['bare_images_per_second']:.1f} |",
        "",
        f"- (a)/(b) = **{step['a_over_b']:.2f}** in lockstep, {t['a_over_b']:.2f} alone (target ≥ 0.9).",
        f"- (a)/(b') = **{step['a_over_b_fused']:.2f}** in lockstep, {t['a_over_b_fused']:.2f} alone: Lightning, "
        f"vaelab's model code and callbacks add {step['overhead_ms_per_step']:.1f} ms to the plain loop's "
        f"{step['plain_ms_per_step']:.1f} ms step.",
        f"- (a)/(c) = **{t['a_over_c']:.1f}** (alone; target ≥ 5). No implementation of this float32 step is "
        f"faster than the floor; {reach}.",
        f"- NLL: vaelab's time ÷ the bare loop's = **{nll['time_ratio_vaelab_over_bare']:.2f}** (target ≤ 1.3).",
        f"- `python train.py --cfg job`: **{results['startup_seconds']:.2f} s** (median of 5; target < 1.5 s).",
        README_END,
    ]
    return "\n".join(lines)
