"""The Markdown table of a bench result, written into docs/benchmarks.md between the bench markers."""

from __future__ import annotations

TABLE_START, TABLE_END = "<!-- bench:start -->", "<!-- bench:end -->"
GPU_TABLE_START, GPU_TABLE_END = "<!-- bench-gpu:start -->", "<!-- bench-gpu:end -->"


def markdown_table(results: dict) -> str:
    """The table of images per second, the ratios under it, and one line saying where it was measured."""
    t, step, nll, cost = results["training"], results["lockstep"], results["nll"], results["throughput_callback"]
    folder, tiny, sweep = results["folder_lockstep"], results["tiny_run"], results["sweep"]
    mlp, one = results["iwae_mlp_lockstep"], results["lockstep_one_step_per_fetch"]
    hooks = results["hook_dispatch"]
    a_label = "(a) vaelab through Lightning, `train.py`'s config" + "".join(f" `{o}`" for o in results["overrides"])
    lines = [
        TABLE_START,
        "| what | images/s, lockstep | images/s, alone |",
        "|---|---|---|",
        f"| {a_label} | {step['a']:,.0f} | {t['vaelab_lightning']:,.0f} |",
        f"| (a) with one optimizer step per Lightning step, `steps_per_fetch=1` | {one['a']:,.0f} | |",
        f"| (b) plain PyTorch loop, in-memory tensors, default Adam, `torch.bernoulli` | {step['b']:,.0f} "
        f"| {t['plain_loop']:,.0f} |",
        f"| (b') the same loop with vaelab's fused Adam and bit drawing | {step['b_fused']:,.0f} "
        f"| {t['plain_loop_fused_adam']:,.0f} |",
        f"| (c) torchvision dataset + DataLoader, per-sample ToTensor | | {t['torchvision_loader']:,.0f} |",
        "| floor: the step's five 128×784×400 matrix products and one fused Adam update, nothing else | | "
        f"{t['compute_floor']:,.0f} |",
        f"| (a) with the IWAE-paper MLP, `experiment=iwae_paper_vae_mnist` (784-200-200-50, batch {mlp['batch_size']}) "
        f"| {mlp['a']:,.0f} | |",
        f"| (b_same) a plain loop over a copy of the same network and objective | {mlp['b_same']:,.0f} | |",
        "| (a) on a folder of 32×32 RGB PNGs, `model/net=conv likelihood=discretized_logistic` | "
        f"{folder['a']:,.0f} | |",
        f"| (b_same) a plain loop over a copy of the same network, likelihood and cached tensors | "
        f"{folder['b_same']:,.0f} | |",
        f"| NLL, k = {nll['k']}, IWAE-paper MLP: `vaelab-eval`'s `evaluate_split` | | "
        f"{nll['vaelab_images_per_second']:.1f} |",
        f"| NLL, the same computation as a bare loop | | {nll['bare_images_per_second']:.1f} |",
        "",
        f"- (a)/(b) = **{step['a_over_b']:.2f}** in lockstep, {t['a_over_b']:.2f} alone.",
        f"- (a)/(b') = **{step['a_over_b_fused']:.2f}** in lockstep, {t['a_over_b_fused']:.2f} alone: Lightning, "
        f"vaelab's model code and callbacks add {step['overhead_ms_per_step']:.2f} ms to the plain loop's "
        f"{step['plain_ms_per_step']:.1f} ms step.",
        f"- With one step per fetch (`steps_per_fetch=1`, Lightning's automatic optimization): (a)/(b') = "
        f"**{one['a_over_b_fused']:.2f}** in lockstep, {one['overhead_ms_per_step']:.1f} ms over the plain loop's "
        f"{one['plain_ms_per_step']:.1f} ms step.",
        f"- (a)/(c) = **{t['a_over_c']:.1f}** alone; the hand-written loop (b') runs at "
        f"{t['plain_loop_fused_adam'] / t['compute_floor']:.0%} of the floor.",
        f"- IWAE-paper MLP: (a)/(b_same) = **{mlp['a_over_b_same']:.2f}** in lockstep: vaelab adds "
        f"{1000 * mlp['batch_size'] * (1 / mlp['a'] - 1 / mlp['b_same']):.1f} ms to the plain loop's "
        f"{1000 * mlp['batch_size'] / mlp['b_same']:.1f} ms step.",
        f"- Folder of RGB images: (a)/(b_same) = **{folder['a_over_b_same']:.2f}** in lockstep.",
        f"- NLL: vaelab's time ÷ the bare loop's = **{nll['time_ratio_vaelab_over_bare']:.2f}**.",
        f"- `callbacks.throughput`: {cost['microseconds_per_step']:.0f} µs per step in its hooks (SimpleProfiler, "
        f"its self.log on the logging steps included) = **{cost['fraction_of_lockstep_step']:.2%}** of (a)'s step "
        "in lockstep.",
        f"- The three hooks of an optimizer step (`on_before_backward`, `on_after_backward`, "
        f"`on_before_optimizer_step`), on {hooks['callbacks']} callbacks and the module: "
        f"**{hooks['vaelab_microseconds']:.0f} µs** per step as vaelab has Lightning call them (only where they are "
        f"defined), against {hooks['lightning_microseconds']:.0f} µs through Lightning's own dispatch.",
        f"- `python train.py --cfg job`: **{results['startup_seconds']:.2f} s** (median of 5).",
        f"- A tiny run (one batch each of training, validation and test, W&B offline): "
        f'{tiny["tiny_run_seconds"]:.1f} s against {tiny["imports_seconds"]:.1f} s for `python -c "import lightning, '
        f'torchvision, wandb, hydra"`: **{tiny["extra"]:.1f} s** more (medians of 3, in turn).',
        f"- An {sweep['jobs']}-job in-process sweep of 1-epoch runs: {sweep['wall_seconds']:.0f} s, of which "
        f"{sweep['fit_seconds']:.0f} s fitting; **{sweep['per_job_beyond_fit']:.2f} s** per job beyond its fit "
        "once the libraries are imported.",
        *peer_lines(results.get("peer")),
        "",
        "Where the step goes with one step per fetch (`steps_per_fetch=1`; Lightning's SimpleProfiler over one "
        "epoch, which adds about 1 µs per hook call). A fetch of several steps pays the data fetch, the callbacks' "
        "batch hooks, the progress bar and Lightning's loop once:",
        "",
        "| part of the step | µs per step |",
        "|---|---|",
        *[f"| {part} | {micros:,.0f} |" for part, micros in results["step_profile"].items() if part != "step"],
        f"| the whole step | {results['step_profile']['step']:,.0f} |",
        "",
        f"Measured by `{results['command']}` on {results['machine']}, vaelab {results['commit']}; lockstep: one step "
        f"of (a), (b) and (b') in turn for {step['epochs']} epochs; alone: the best of {len(t['runs']['a'])} "
        "interleaved runs of each.",
        TABLE_END,
    ]
    return "\n".join(lines)


def device_table(results: dict) -> str:
    """The GPU block: (a), (b) and (b') in lockstep on the device, and (a)'s per-step overhead."""
    step = results["lockstep"]
    return "\n".join(
        [
            GPU_TABLE_START,
            "| what | images/s, lockstep |",
            "|---|---|",
            f"| (a) vaelab through Lightning, data on the GPU | {step['a']:,.0f} |",
            f"| (b) plain PyTorch loop, tensors on the GPU, default Adam | {step['b']:,.0f} |",
            f"| (b') the same loop with the fused Adam and vaelab's bit drawing | {step['b_fused']:,.0f} |",
            "",
            f"- (a)/(b') = **{step['a_over_b_fused']:.2f}**: vaelab adds {step['overhead_ms_per_step']:.2f} ms to the "
            f"plain loop's {step['plain_ms_per_step']:.2f} ms step.",
            "",
            f"Measured by `{results['command']}` on {results['machine']}, vaelab {results['commit']}; one step of "
            f"(a), (b) and (b') in turn for {step['epochs']} epochs, each read after the GPU finished its work.",
            GPU_TABLE_END,
        ]
    )


def peer_lines(peer: dict | None) -> list[str]:
    """Whole runs against pytorch/examples' vae/main.py, when the bench was given it."""
    if not peer:
        return []
    ours, theirs = peer["vaelab"], peer["peer"]
    return [
        "",
        "| whole run (wall seconds) | 1 epoch | 3 epochs | per epoch | fixed |",
        "|---|---|---|---|---|",
        f"| pytorch/examples `vae/main.py`, as written (its epoch includes its test pass) | {theirs['one_epoch']:.1f} "
        f"| {theirs['three_epochs']:.1f} | {theirs['per_epoch']:.2f} | {theirs['fixed']:.1f} |",
        f"| vaelab `python train.py` (its epoch includes validation, diagnostics and panels) | {ours['one_epoch']:.1f} "
        f"| {ours['three_epochs']:.1f} | {ours['per_epoch']:.2f} | {ours['fixed']:.1f} |",
        "",
        f"- vaelab is **{peer['speedup_per_epoch']:.2f}×** faster per epoch, and **{peer['speedup_10_epochs']:.2f}×** "
        "end to end for the 10-epoch default run (projected from the fixed and per-epoch costs); the fastest of 2 "
        "runs of each, in turn.",
    ]
