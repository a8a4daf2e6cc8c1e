"""Cost of channel slicing, and of counting FLOPs with fvcore instead of analytically.

    python jobs/bench/bench_slicing.py [--spaces digits-tiny scalenet-mbv3] [--subnets 10] [--reps N]
                                       [--warmup N] [--threads 2] [--seed 0] [--out results/bench/slicing.csv]

1. Training step (forward + backward of a cross-entropy loss, no optimiser) of ``--subnets`` seeded random subnets
   (hierarchical sampling, so every scaling stage appears), each run through the super-supernet (train mode,
   ``sn(x, sub, side=0)``) and as the standalone model ``export_subnet`` builds from it. Batch 64 for digits-tiny,
   2 for scalenet-mbv3 (224-354 px), at the subnet's own resolution. The two are interleaved repetition by
   repetition after a warm-up (default 2 warm-up + 5 timed for digits-tiny, 1 + 3 for scalenet-mbv3: one of its
   steps takes seconds on a CPU), and each keeps its median. ratio = supernet / standalone; target median <= 1.25.
2. FLOPs: ``flops_params(derive_subnet(space, sub))`` (uncached, the median of many calls) vs ``fvcore_flops``
   of the prebuilt standalone model (median of a few calls); identical results, target speedup >= 1000x.

Writes one CSV (columns: space, metric, subnet, supernet_s, standalone_s, ratio, analytic_s, fvcore_s, speedup,
identical, threads) atomically, with a summary row ``subnet=median`` per space and metric, and prints a short table.

Threads: 2 by default (the build machine's cores). On a 2-core machine that other jobs also load, two OpenMP
threads spin-wait on each other and a step gets 5-15x slower and very noisy; ``--threads 1`` then measures the
slicing overhead far more reliably (the CSV records the thread count).
"""
from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jobs/: jobkit
import jobkit  # noqa: E402  (puts the checkout and jobs/ on sys.path)
REPO = jobkit.REPO

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from scalenas.spaces.arch import derive_subnet, sample_subnet  # noqa: E402
from scalenas.spaces.flops import flops_params, fvcore_flops  # noqa: E402
from scalenas.io import atomic_write_csv  # noqa: E402
from scalenas.spaces.space import load_space  # noqa: E402
from scalenas.models.standalone import StandaloneNet  # noqa: E402
from scalenas.models.supernet import SuperNet, export_subnet  # noqa: E402

BATCH = {"digits-tiny": 64, "cifar-mbv3": 32, "scalenet-mbv3": 2}
REPS = {"digits-tiny": (2, 5), "cifar-mbv3": (1, 3), "scalenet-mbv3": (1, 3)}  # (warm-up, timed)


def train_step(fn, params, x, y) -> float:
    """Seconds for one forward + backward; gradients cleared (untimed) afterwards."""
    t = time.perf_counter()
    loss = F.cross_entropy(fn(x), y)
    loss.backward()
    seconds = time.perf_counter() - t
    for p in params:
        p.grad = None
    return seconds


def bench_train(space, sn, subs, reps: int, warmup: int, batch: int) -> list[dict]:
    rows = []
    sn.train()
    sn_params = list(sn.parameters())
    for i, sub in enumerate(subs):
        model = export_subnet(sn, sub, 0).train()
        m_params = list(model.parameters())
        g = torch.Generator().manual_seed(i)
        x = torch.randn(batch, space.in_channels, sub.resolution, sub.resolution, generator=g)
        y = torch.randint(0, space.num_classes, (batch,), generator=g)
        runs = {"supernet": [], "standalone": []}
        for r in range(warmup + reps):
            a = train_step(lambda v: sn(v, sub, 0), sn_params, x, y)
            b = train_step(model, m_params, x, y)
            if r >= warmup:
                runs["supernet"].append(a)
                runs["standalone"].append(b)
        s, m = statistics.median(runs["supernet"]), statistics.median(runs["standalone"])
        rows.append({"space": space.name, "metric": "train_step", "subnet": sub.to_json(),
                     "supernet_s": s, "standalone_s": m, "ratio": s / m})
        print(f"  train {space.name} {i}: {sub.short():44s} supernet {s * 1e3:8.1f} ms  "
              f"standalone {m * 1e3:8.1f} ms  ratio {s / m:5.2f}", flush=True)
    return rows


def bench_flops(space, subs, fv_reps: int = 2, analytic_calls: int = 300) -> list[dict]:
    rows = []
    for i, sub in enumerate(subs):
        times = []
        for _ in range(analytic_calls):
            t = time.perf_counter()
            ours = flops_params(derive_subnet(space, sub))[0]  # uncached: derivation + count
            times.append(time.perf_counter() - t)
        analytic = statistics.median(times)
        d = derive_subnet(space, sub)
        model = StandaloneNet(d)
        fv_times, fv = [], None
        for _ in range(fv_reps):
            t = time.perf_counter()
            fv = fvcore_flops(model, d.resolution, d.in_channels)
            fv_times.append(time.perf_counter() - t)
        fvs = statistics.median(fv_times)
        rows.append({"space": space.name, "metric": "flops", "subnet": sub.to_json(), "analytic_s": analytic,
                     "fvcore_s": fvs, "speedup": fvs / analytic, "identical": fv == ours})
        print(f"  flops {space.name} {i}: analytic {analytic * 1e6:7.1f} us  fvcore {fvs * 1e3:8.1f} ms  "
              f"speedup {fvs / analytic:8.0f}x  identical {fv == ours}", flush=True)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    out = []
    frame = pd.DataFrame(rows)
    for (space, metric), grp in frame.groupby(["space", "metric"], sort=False):
        row = {"space": space, "metric": metric, "subnet": "median"}
        cols = ["supernet_s", "standalone_s", "ratio"] if metric == "train_step" else \
            ["analytic_s", "fvcore_s", "speedup"]
        for c in cols:
            row[c] = float(grp[c].median())
        if metric == "flops":
            row["identical"] = bool(grp["identical"].all())
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = jobkit.parser(__doc__)
    ap.add_argument("--spaces", nargs="+", default=["digits-tiny", "scalenet-mbv3"])
    ap.add_argument("--subnets", type=int, default=10)
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per subnet (median kept)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed repetitions first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "results" / "bench" / "slicing.csv"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rows: list[dict] = []
    for name in args.spaces:
        space = load_space(name)
        rng = random.Random(args.seed)
        subs = [sample_subnet(space, rng)[1] for _ in range(args.subnets)]
        t = time.perf_counter()
        sn = SuperNet(space)
        print(f"{name}: supernet built in {time.perf_counter() - t:.1f} s "
              f"({sum(p.numel() for p in sn.parameters()) / 1e6:.1f} M parameters)", flush=True)
        warmup, reps = REPS.get(name, (1, 3))
        reps = args.reps if args.reps is not None else reps
        warmup = args.warmup if args.warmup is not None else warmup
        rows += bench_train(space, sn, subs, reps, warmup, BATCH.get(name, 16))
        del sn
        rows += bench_flops(space, subs)
    rows += summary(rows)
    frame = pd.DataFrame(rows, columns=["space", "metric", "subnet", "supernet_s", "standalone_s", "ratio",
                                        "analytic_s", "fvcore_s", "speedup", "identical"])
    frame["threads"] = args.threads
    atomic_write_csv(args.out, frame)
    print(f"\nwrote {args.out}  (torch threads {args.threads})")
    med = frame[frame.subnet == "median"]
    print(f"{'space':15s} {'metric':10s} {'supernet ms':>12s} {'standalone ms':>14s} {'ratio':>6s} "
          f"{'analytic us':>12s} {'fvcore ms':>10s} {'speedup':>9s} identical")
    for _, r in med.iterrows():
        if r.metric == "train_step":
            print(f"{r.space:15s} {r.metric:10s} {r.supernet_s * 1e3:12.1f} {r.standalone_s * 1e3:14.1f} "
                  f"{r.ratio:6.2f}   (target <= 1.25)")
        else:
            print(f"{r.space:15s} {r.metric:10s} {'':12s} {'':14s} {'':6s} {r.analytic_s * 1e6:12.1f} "
                  f"{r.fvcore_s * 1e3:10.1f} {r.speedup:8.0f}x {r.identical}   (target >= 1000x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
