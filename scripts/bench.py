"""Speed of vaelab against hand-written PyTorch, measured side by side in one process (`make bench`).

    python scripts/bench.py [--epochs 2] [--out logs/bench/bench.json] [--readme README.md]

On the real MNIST training images, the 784-400-20 MLP VAE, batch 128, Adam, dynamic binarization:
  (a) vaelab: `train.py`'s own configuration (Lightning Trainer, callbacks, offline W&B logger)
      through `vaelab.training.train`, validation switched off so that only training steps are timed;
  (b) a plain PyTorch loop over in-memory tensors (the pytorch/examples VAE, batches sliced from
      one tensor) with torch's default Adam, as pytorch/examples writes it;
  (b') the same loop with the fused Adam (`fused=True`) that vaelab's model configs use, so that
      (a)/(b') is the cost of Lightning and vaelab's callbacks alone;
  (c) the same loop fed by torchvision's MNIST dataset with a per-sample ToTensor transform and a
      DataLoader, as in pytorch/examples.
  floor: only the work every one of them must do per step in float32, the five 128x784x400
      matrix products (two forward, three backward) and one fused Adam update, so that the
      table says how fast any implementation of this step could be on the machine.
Images per second are counted after `--warmup` steps. It also times the importance-sampled NLL
(k = 5000) of the IWAE-paper MLP through `vaelab.evaluation.evaluate_split` against the same
batched computation written out by hand, and the start-up time of `python train.py --cfg job`.
Results go to a JSON file and, with --readme, into the README between the bench markers.
`--override KEY=VALUE` (repeatable) passes Hydra overrides to (a), e.g. `--override compile=true`;
the README is then left alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from vaelab.errors import one_line_errors  # noqa: E402

BATCH = 128
README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


class PlainVAE(nn.Module):
    """The pytorch/examples VAE: 784-400-20, ReLU, Bernoulli logits."""

    def __init__(self, latent_dim: int = 20, hidden: int = 400):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, hidden), nn.Linear(hidden, latent_dim), nn.Linear(hidden, latent_dim)
        self.fc3, self.fc4 = nn.Linear(latent_dim, hidden), nn.Linear(hidden, 784)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        mean, logvar = self.fc21(h), self.fc22(h)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        return self.fc4(F.relu(self.fc3(z))), mean, logvar


def plain_loss(logits, x, mean, logvar):
    """Negative ELBO, nats per image: summed over pixels and latents, averaged over the batch."""
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kl = -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp())
    return (recon + kl) / x.shape[0]


class Meter:
    """Images per second over the steps after `warmup`."""

    def __init__(self, warmup: int):
        self.warmup, self.steps, self.images, self.started = warmup, 0, 0, None

    def step(self, batch_size: int) -> None:
        self.steps += 1
        if self.steps == self.warmup:
            self.started = time.perf_counter()
        elif self.steps > self.warmup:
            self.images += batch_size
        self.ended = time.perf_counter()

    @property
    def images_per_second(self) -> float:
        return self.images / (self.ended - self.started)


def plain_model(fused: bool | None) -> tuple[PlainVAE, torch.optim.Optimizer]:
    """A fresh PlainVAE and its Adam. fused=None is torch's default Adam, as pytorch/examples writes
    it (the per-tensor loop on a CPU); fused=True is the fused kernel that vaelab's configs use."""
    torch.manual_seed(0)
    model = PlainVAE()
    return model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)


def plain_step(model: PlainVAE, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> int:
    """One training step on a batch of grey levels (B, 784); returns the batch size."""
    x = torch.bernoulli(x)  # dynamic binarization, per batch
    logits, mean, logvar = model(x)
    loss = plain_loss(logits, x, mean, logvar)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return len(x)


def train_loop(batches, epochs: int, warmup: int, max_steps: int | None = None, fused: bool | None = None) -> float:
    """Train a fresh PlainVAE on the batches (a callable returning an iterator of (B, 784) floats)."""
    model, optimizer = plain_model(fused)
    meter = Meter(warmup)
    for _ in range(epochs):
        for x in batches():
            meter.step(plain_step(model, optimizer, x))
            if max_steps and meter.steps >= max_steps:
                return meter.images_per_second
    return meter.images_per_second


def in_memory_batches(images: torch.Tensor):
    """A callable returning the batches of one epoch: (B, 784) slices of one in-memory float
    tensor, in a new random order every epoch."""
    x_all = images.float().div(255).view(len(images), -1)

    def batches():
        order = torch.randperm(len(x_all))
        for start in range(0, len(order), BATCH):
            yield x_all[order[start:start + BATCH]]

    return batches


def bench_plain(images: torch.Tensor, epochs: int, warmup: int, fused: bool | None = None) -> float:
    """(b): batches sliced from in-memory tensors. With fused=True, (b'): vaelab's fused Adam."""
    return train_loop(in_memory_batches(images), epochs, warmup, fused=fused)


def bench_torchvision(root: str, steps: int, warmup: int) -> float:
    """(c): torchvision MNIST with a per-sample ToTensor, through a DataLoader (pytorch/examples)."""
    from torchvision import datasets, transforms

    dataset = datasets.MNIST(root, train=True, download=False, transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True)
    return train_loop(lambda: (x.view(len(x), -1) for x, _ in loader), epochs=10, warmup=warmup, max_steps=steps)


def bench_compute_floor(repeats: int = 300) -> float:
    """Images/s of a step that does nothing but the five 128x784x400 float32 matrix products of the
    784-400-20 VAE (encoder and decoder layers forward; the decoder layer's weight and input
    gradients and the encoder layer's weight gradient backward) and one fused Adam update of all
    its parameters: an upper bound for (a), (b) and (b') on this machine."""
    torch.manual_seed(0)
    model, optimizer = plain_model(fused=True)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    x, hidden, grad_out = torch.rand(BATCH, 784), torch.rand(BATCH, 400), torch.randn(BATCH, 784)
    encoder_weight, decoder_weight = model.fc1.weight.detach(), model.fc4.weight.detach()  # (400, 784), (784, 400)

    def step():
        F.linear(x, encoder_weight), F.linear(hidden, decoder_weight)
        grad_out.t().mm(hidden), grad_out.mm(decoder_weight), hidden.t().mm(x)
        optimizer.step()

    for _ in range(20):
        step()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return BATCH * repeats / (time.perf_counter() - started)


class StepTimer(L.Callback):
    """Feeds a Meter from Lightning's training steps; the last one made is StepTimer.last."""

    last: Meter | None = None

    def __init__(self, warmup: int = 20):
        self.meter = StepTimer.last = Meter(warmup)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.meter.step(len(batch[0]))


class Lockstep(L.Callback):
    """After each of vaelab's training steps, one step of (b) and one of (b'), each timed.

    The three paths then run under the same machine conditions, step by step, which a shared
    machine's slow spells (seconds to minutes long) cannot tilt. (a)'s time is the interval
    between its batch starts minus the plain steps inside it, so it keeps the data fetch, the
    logging steps, the progress bar and the epoch-end checkpoint. Set Lockstep.images first;
    the last one made is Lockstep.last."""

    images: torch.Tensor | None = None
    last: Lockstep | None = None

    def __init__(self, warmup: int = 20):
        self.warmup, self.steps, self.started, self.inside = warmup, 0, None, 0.0
        self.loops = {"b": plain_model(fused=None), "b_fused": plain_model(fused=True)}
        self.batches = {name: self.endless(in_memory_batches(Lockstep.images)) for name in self.loops}
        self.seconds = dict.fromkeys(("a", "b", "b_fused"), 0.0)
        self.timed_steps = dict.fromkeys(("a", "b", "b_fused"), 0)
        Lockstep.last = self

    @staticmethod
    def endless(batches):
        while True:
            yield from batches()

    def count(self, name: str, seconds: float) -> None:
        if self.steps > self.warmup:
            self.seconds[name] += seconds
            self.timed_steps[name] += 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self.started is not None:
            self.count("a", now - self.started - self.inside)
        self.started, self.inside = now, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps += 1
        for name, (model, optimizer) in self.loops.items():
            started = time.perf_counter()
            plain_step(model, optimizer, next(self.batches[name]))
            seconds = time.perf_counter() - started
            self.inside += seconds
            self.count(name, seconds)

    def images_per_second(self) -> dict[str, float]:
        return {name: BATCH * self.timed_steps[name] / self.seconds[name] for name in self.seconds}


def lightning_overrides(root: str, epochs: int, work: Path, extra: list[str] = ()) -> list[str]:
    """train.py's default config with validation and test off, for `epochs` epochs, then `extra`."""
    return [f"data.root={root}", f"trainer.max_epochs={epochs}", "trainer.limit_val_batches=0", "test=false",
            f"paths.output_dir={work}", *extra]


def compose_train_config(overrides: list[str]):
    """train.py's config with the overrides, its values checked; a bad override is a UserError."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from vaelab.cli import CONFIG_DIR
    from vaelab.config import validate
    from vaelab.errors import UserError

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
    except HydraException as error:
        raise UserError(f"--override: {str(error).splitlines()[0]}") from None
    validate(cfg)
    return cfg


def run_train(overrides: list[str]) -> None:
    from vaelab.training import train

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    train(compose_train_config(overrides))


def bench_lockstep(images: torch.Tensor, root: str, epochs: int, warmup: int, work: Path,
                   extra: list[str] = ()) -> dict[str, float]:
    """(a), (b) and (b') in turn, one step each, for `epochs` epochs of (a): images/s of each."""
    Lockstep.images = images
    run_train([*lightning_overrides(root, epochs, work, extra), "+callbacks.lockstep._target_=__main__.Lockstep",
               f"+callbacks.lockstep.warmup={warmup}"])
    return Lockstep.last.images_per_second()


def bench_lightning(root: str, epochs: int, warmup: int, work: Path, extra: list[str] = ()) -> float:
    """(a): vaelab.training.train with train.py's default config (and `extra` overrides); validation and test off."""
    run_train([*lightning_overrides(root, epochs, work, extra), "+callbacks.bench_timer._target_=__main__.StepTimer",
               f"+callbacks.bench_timer.warmup={warmup}"])
    return StepTimer.last.images_per_second


@torch.no_grad()
def bare_iwae_nll(vae, images: torch.Tensor, k: int, batch_images: int) -> float:
    """The importance-sampled NLL written out: same networks, no torch.distributions. Nats per image."""
    total = 0.0
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    for x in images.split(batch_images):
        mean, logvar = vae.encode(x)
        std = (0.5 * logvar).exp()
        eps = torch.randn(k, *mean.shape)
        z = mean + std * eps  # (k, B, D)
        logits = vae.decode(z.reshape(-1, z.shape[-1])).view(k, len(x), -1)
        log_px_z = -F.binary_cross_entropy_with_logits(logits, x.view(1, len(x), -1).expand_as(logits),
                                                       reduction="none").sum(-1)
        log_pz = (-0.5 * z.pow(2) - half_log_2pi).sum(-1)
        log_qz = (-0.5 * eps.pow(2) - half_log_2pi - 0.5 * logvar).sum(-1)
        log_w = (log_px_z + log_pz - log_qz).double()
        total -= float((torch.logsumexp(log_w, 0) - math.log(k)).sum())
    return total / len(images)


def bench_nll(root: str, n_images: int, k: int) -> dict:
    """Seconds for the test NLL of the first n_images at k samples: vaelab-eval's path and the bare one."""
    from vaelab.data import VAEDataModule
    from vaelab.evaluation import evaluate_split, images_per_forward
    from vaelab.module import VAELitModule

    cfg = compose_train_config(["experiment=iwae_paper_vae_mnist", f"data.root={root}"])

    datamodule = VAEDataModule(name="mnist", root=root, binarize="dynamic")
    datamodule.setup("test")
    torch.manual_seed(0)
    module = VAELitModule.from_config(cfg, datamodule).eval()
    images, labels = datamodule.test_set.images[:n_images], datamodule.test_set.labels[:n_images]
    batch_images = images_per_forward(k)
    timings = {}
    for name, run in (("bare", lambda: bare_iwae_nll(module.vae, images, k, batch_images)),
                      ("vaelab", lambda: evaluate_split(module, images, labels, k=k)["nll"])):
        run_times = []
        for _ in range(2):  # the second run is timed warm
            torch.manual_seed(0)
            started = time.perf_counter()
            nll = run()
            run_times.append(time.perf_counter() - started)
        timings[name] = {"seconds": min(run_times), "nll": nll}
    return {"n_images": n_images, "k": k,
            "vaelab_images_per_second": n_images / timings["vaelab"]["seconds"],
            "bare_images_per_second": n_images / timings["bare"]["seconds"],
            "time_ratio_vaelab_over_bare": timings["vaelab"]["seconds"] / timings["bare"]["seconds"],
            "nll_vaelab": timings["vaelab"]["nll"], "nll_bare": timings["bare"]["nll"]}


def bench_startup(repeats: int = 5) -> float:
    """Median seconds of `python train.py --cfg job` in a fresh process."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "train.py"), "--cfg", "job"], cwd=ROOT, check=True,
                       capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def readme_table(results: dict) -> str:
    t, step, nll = results["training"], results["lockstep"], results["nll"]
    floor, five_c = t["compute_floor"], 5 * t["torchvision_loader"]
    reach = (f"5 × (c) = {five_c:,.0f} images/s is beyond the floor itself: out of reach for any implementation here"
             if floor < five_c else
             f"5 × (c) = {five_c:,.0f} images/s needs a step that takes at most {floor / five_c:.2f} × the floor's "
             f"time; the hand-written loop (b') takes {floor / t['plain_loop_fused_adam']:.1f} × and is itself "
             f"{t['plain_loop_fused_adam'] / t['torchvision_loader']:.1f} × (c)")
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
        f"| (b) plain PyTorch loop, in-memory tensors, default Adam (pytorch/examples) | {step['b']:,.0f} | {t['plain_loop']:,.0f} |",
        f"| (b') the same loop with vaelab's fused Adam | {step['b_fused']:,.0f} | {t['plain_loop_fused_adam']:,.0f} |",
        f"| (c) torchvision dataset + DataLoader, per-sample ToTensor | | {t['torchvision_loader']:,.0f} |",
        f"| floor: the step's five 128×784×400 matrix products and one fused Adam update, nothing else | | {t['compute_floor']:,.0f} |",
        f"| NLL, k = {nll['k']}, IWAE-paper MLP: `vaelab-eval`'s `evaluate_split` | | {nll['vaelab_images_per_second']:.1f} |",
        f"| NLL, the same computation as a bare loop | | {nll['bare_images_per_second']:.1f} |",
        "",
        f"- (a)/(b) = **{step['a_over_b']:.2f}** in lockstep, {t['a_over_b']:.2f} alone (target ≥ 0.9).",
        f"- (a)/(b') = **{step['a_over_b_fused']:.2f}** in lockstep, {t['a_over_b_fused']:.2f} alone: Lightning, vaelab's "
        f"model code and callbacks add {step['overhead_ms_per_step']:.1f} ms to the plain loop's "
        f"{step['plain_ms_per_step']:.1f} ms step.",
        f"- (a)/(c) = **{t['a_over_c']:.1f}** (alone; target ≥ 5). No implementation of this float32 step is "
        f"faster than the floor; {reach}.",
        f"- NLL: vaelab's time ÷ the bare loop's = **{nll['time_ratio_vaelab_over_bare']:.2f}** (target ≤ 1.3).",
        f"- `python train.py --cfg job`: **{results['startup_seconds']:.2f} s** (median of 5; target < 1.5 s).",
        README_END,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=os.environ.get("VAELAB_DATA_DIR", "data"))
    parser.add_argument("--epochs", type=int, default=2, help="training epochs for (a) and (b)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, interleaved; the best counts")
    parser.add_argument("--warmup", type=int, default=20, help="steps not timed")
    parser.add_argument("--torchvision-steps", type=int, default=300, help="steps of (c), which is slow")
    parser.add_argument("--nll-images", type=int, default=50)
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--out", type=Path, help="the JSON file (default: logs/bench/bench.json, or "
                        "logs/bench/bench-<overrides>.json with --override)")
    parser.add_argument("--readme", type=Path, help="replace the table between the bench markers in this file")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a Hydra override for (a), e.g. compile=true (repeatable; the README is then left alone)")
    args = parser.parse_args()
    if args.out is None:
        suffix = "".join(f"-{o}" for o in args.override).replace("/", "_")
        args.out = Path("logs") / "bench" / f"bench{suffix}.json"  # of the folder it runs in

    with one_line_errors():  # no MNIST, or a bad --override: one line that says what to fix
        measure(args)


def measure(args: argparse.Namespace) -> None:
    from vaelab.data import load_split

    compose_train_config(args.override)
    images, _, _ = load_split("mnist", args.data_root, train=True, download=False)
    a_runs, b_runs, bf_runs, c_runs, floor_runs = [], [], [], [], []
    for _ in range(args.repeats):  # interleaved, so that a slow spell of the machine hits all of them
        with tempfile.TemporaryDirectory() as work:
            a_runs.append(bench_lightning(args.data_root, args.epochs, args.warmup, Path(work), args.override))
        b_runs.append(bench_plain(images, args.epochs, args.warmup))
        bf_runs.append(bench_plain(images, args.epochs, args.warmup, fused=True))
        c_runs.append(bench_torchvision(args.data_root, args.torchvision_steps, args.warmup))
        floor_runs.append(bench_compute_floor())
    with tempfile.TemporaryDirectory() as work:
        lockstep = bench_lockstep(images, args.data_root, args.epochs, args.warmup, Path(work), args.override)
    # the best of the repeats: the least disturbed by the other tenants of the machine
    a, b, bf, c = max(a_runs), max(b_runs), max(bf_runs), max(c_runs)
    results = {
        "command": "make bench" if not args.override else "python scripts/bench.py " + " ".join(
            f"--override {o}" for o in args.override),
        "overrides": args.override,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "training": {"vaelab_lightning": a, "plain_loop": b, "torchvision_loader": c, "plain_loop_fused_adam": bf,
                     "compute_floor": max(floor_runs),
                     "a_over_b": a / b, "a_over_b_fused": a / bf, "a_over_c": a / c,
                     "plain_ms_per_step": 1000 * BATCH / bf, "overhead_ms_per_step": 1000 * BATCH * (1 / a - 1 / bf),
                     "epochs": args.epochs, "batch_size": BATCH, "warmup_steps": args.warmup,
                     "runs": {"a": a_runs, "b": b_runs, "b_fused": bf_runs, "c": c_runs, "floor": floor_runs}},
        "lockstep": {**lockstep, "a_over_b": lockstep["a"] / lockstep["b"],
                     "a_over_b_fused": lockstep["a"] / lockstep["b_fused"],
                     "plain_ms_per_step": 1000 * BATCH / lockstep["b_fused"],
                     "overhead_ms_per_step": 1000 * BATCH * (1 / lockstep["a"] - 1 / lockstep["b_fused"]),
                     "epochs": args.epochs},
        "nll": bench_nll(args.data_root, args.nll_images, args.k),
        "startup_seconds": bench_startup(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    table = readme_table(results)
    print(table)
    print(f"wrote {args.out}")
    if args.readme and args.override:
        print(f"{args.readme} left alone: its table is of train.py's own config, without overrides")
    elif args.readme:
        text = args.readme.read_text()
        if README_START not in text or README_END not in text:
            raise SystemExit(f"error: {args.readme} has no {README_START} ... {README_END} block")
        head, rest = text.split(README_START, 1)
        args.readme.write_text(head + table + rest.split(README_END, 1)[1])
        print(f"updated {args.readme}")


if __name__ == "__main__":
    main()
