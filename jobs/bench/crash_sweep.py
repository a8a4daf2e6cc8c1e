"""Crash sweep (issue 13): kill -9 at random moments, resume, compare with an uninterrupted run of the same seed.

Three targets, each run as a user would (``python -m scalenas.cli ...`` in a subprocess):

* ``train-supernet``: the digits-tiny default job, small (``--steps 60 --checkpoint-every 5 --batch-size 32
  --threads 1 --panel-random 0 --log-every 1``). Each trial kills the run (SIGKILL) once or twice at seeded random
  moments, then ``--resume``s it until it finishes (a kill before the first checkpoint is followed by a fresh
  start, counted as a restart). Identical: every tensor of ``checkpoint.pt``'s model state ``torch.equal`` to the
  uninterrupted run's, at the same (final) step. Log rows complete: ``train_log.csv`` has the same steps with the
  same epoch, lr, loss, train_top1, stage and resolution (only the timing columns differ).
* ``search``: ``scalenas search`` (the driver, ``--workers 0``, ``--population 6 --generations 3 --elites 2``) on
  the uninterrupted supernet run, killed once or twice at random moments (the first one after the uninterrupted
  search wrote its first ``state.json``, so that there is something to resume) and ``--resume``d. Identical:
  ``pareto.csv``, ``family.csv``, ``best.json`` and ``chain.json`` byte-identical to the uninterrupted search.
  Log rows complete: ``search_log.csv`` has the same generations with the same fitness, feasible share,
  evaluation counts (only evaluations_per_s differs) and ``state.json`` the same number of evaluations.
* ``search-worker``: the same search with ``--workers 2`` (a private Ray on 127.0.0.1); once the Ray actors
  (processes below the search whose command line starts with ``ray::_EvaluatorActor``) are evaluating, one of
  them is killed (SIGKILL) at a random moment. The search must finish by itself (no resume), with reports
  identical to the uninterrupted ``--workers 0`` search (an uninterrupted ``--workers 2`` search is checked
  against it too).

Every trial also checks that nothing is left behind: no ``*.tmp`` or ``.lock`` file in the run folder, no
process of the run alive. One CSV row per trial (``--out-csv``, default results/bench/crash.csv) and a short
Markdown summary next to it (same name, ``.md``). Exit code 0 when every trial is identical and complete.

    python jobs/bench/crash_sweep.py                      # 10 + 10 + 3 trials (about 30 min on 2 cores)
    python jobs/bench/crash_sweep.py --smoke --targets train-supernet --trials 1 --out-csv /tmp/crash.csv
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jobs/: jobkit
import jobkit  # noqa: E402  (puts the checkout and jobs/ on sys.path)
ROOT = jobkit.REPO
from scalenas.runs import RunFolder, SearchFolder  # noqa: E402

TARGETS = ("train-supernet", "search", "search-worker")
COLUMNS = ["target", "trial", "kill_after_s", "kills", "resumes", "identical", "log_rows_complete", "seconds",
           "restarts", "note"]

TRAIN = ["--steps", "60", "--checkpoint-every", "5", "--batch-size", "32", "--threads", "1", "--panel-random", "0",
         "--log-every", "1", "--seed", "0", "--device", "cpu", "--no-progress"]
SMOKE_TRAIN = ["--steps", "12", "--checkpoint-every", "3", "--batch-size", "16", "--threads", "1", "--panel-random",
               "0", "--bn-calib-batches", "1", "--log-every", "1", "--seed", "0", "--device", "cpu", "--no-progress"]
SEARCH = ["--population", "6", "--generations", "3", "--elites", "2", "--seed", "0", "--device", "cpu",
          "--no-progress"]
SMOKE_SEARCH = ["--population", "3", "--generations", "2", "--elites", "2", "--calib-batches", "1", "--seed", "0",
                "--device", "cpu", "--no-progress"]
REPORTS = SearchFolder.REPORTS
TRAIN_LOG_COLUMNS = ("step", "epoch", "lr", "loss", "train_top1", "stage", "resolution")
SEARCH_LOG_SKIP = ("evaluations_per_s",)  # timing
ACTOR = "ray::_EvaluatorActor"

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
       "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
       "PYTHONUNBUFFERED": "1"}


# ------------------------------------------------------------------------------------------ processes
def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: no psutil needed)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            parent = _ppid(int(name))
            if parent is not None:
                children.setdefault(parent, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Run:
    """``python -m scalenas.cli ARGV`` in a subprocess (its own session), output appended to ``log``."""

    def __init__(self, argv: list[str], log: Path, cwd: Path):
        self.argv = argv
        self.fh = open(log, "a")  # noqa: SIM115 - open while the process runs
        self.fh.write(f"\n$ scalenas {' '.join(argv)}\n")
        self.fh.flush()
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "scalenas.cli", *argv], cwd=cwd, env=ENV,
                                     stdout=self.fh, stderr=subprocess.STDOUT, start_new_session=True)
        self.seen: set[int] = set()  # every process seen below it (Ray: gcs, raylet, workers)
        self.left: list[int] = []  # those still alive after it ended (killed by close)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def watch(self) -> list[int]:
        kids = descendants(self.proc.pid)
        self.seen.update(kids)
        return kids

    def wait(self, timeout: float) -> int:
        """Wait for the end (returns the exit code); past ``timeout`` the run is killed and 124 returned."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = 124
        self.close()
        return rc

    def kill(self) -> None:
        """kill -9 of the scalenas process (what the sweep is about), then of anything it left running."""
        self.watch()
        kill([self.proc.pid])
        self.proc.wait()
        time.sleep(0.2)
        kill([p for p in self.seen if alive(p)])

    def close(self) -> list[int]:
        """Close the log; returns the processes of the run still alive (and kills them: they are ours)."""
        self.fh.close()
        deadline = time.monotonic() + 10
        left = [p for p in self.seen if alive(p)]
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = [p for p in left if alive(p)]
        kill(left)
        self.left = left
        return left


def run_until(argv: list[str], log: Path, cwd: Path, kill_after: float | None, timeout: float) -> tuple[int, bool]:
    """Run ``argv``; with ``kill_after``, kill -9 it after that many seconds. Returns (exit code, killed)."""
    r = Run(argv, log, cwd)
    if kill_after is None:
        return r.wait(timeout), False
    try:
        rc = r.proc.wait(kill_after)
        r.close()
        return rc, False  # it finished before the kill
    except subprocess.TimeoutExpired:
        r.kill()
        r.close()
        return -9, True


# ------------------------------------------------------------------------------------------ comparisons
def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name == ".lock")


def same_weights(a: Path, b: Path) -> tuple[bool, str]:
    import torch

    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    if (x.get("step"), x.get("total_steps"), x.get("finished")) != (y.get("step"), y.get("total_steps"),
                                                                    y.get("finished")):
        return False, f"step {x.get('step')}/{x.get('total_steps')} vs {y.get('step')}/{y.get('total_steps')}"
    mx, my = x["model"], y["model"]
    if list(mx) != list(my):
        return False, "other tensor names"
    diff = [k for k in mx if not torch.equal(mx[k], my[k])]
    return not diff, (f"{len(diff)} of {len(mx)} tensors differ (first {diff[0]})" if diff else
                      f"{len(mx)} tensors equal")


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def same_rows(a: Path, b: Path, keep: tuple[str, ...] | None = None, skip: tuple[str, ...] = ()) -> tuple[bool, str]:
    ra, rb = read_rows(a), read_rows(b)
    if not ra:
        return False, f"{a.name} missing or empty"
    cols = [c for c in (keep or ra[0].keys()) if c not in skip]
    pa = [tuple(r.get(c) for c in cols) for r in ra]
    pb = [tuple(r.get(c) for c in cols) for r in rb]
    if pa == pb:
        return True, f"{len(pa)} rows"
    return False, f"{a.name}: {len(pa)} rows vs {len(pb)}; first difference at row " + \
        str(next((i for i, (p, q) in enumerate(zip(pa, pb)) if p != q), min(len(pa), len(pb))))


def same_reports(out: Path, ref: Path) -> tuple[bool, str]:
    bad = [name for name in REPORTS if not (out / name).is_file() or (out / name).read_bytes() !=
           (ref / name).read_bytes()]
    return not bad, ("differ: " + ", ".join(bad)) if bad else "reports byte-identical"


def search_log_complete(out: Path, ref: Path) -> tuple[bool, str]:
    ok, why = same_rows(out / SearchFolder.LOG, ref / SearchFolder.LOG, skip=SEARCH_LOG_SKIP)
    try:
        ea = SearchFolder(out).read_state()["evaluations"]
        eb = SearchFolder(ref).read_state()["evaluations"]
    except (OSError, ValueError, KeyError) as exc:
        return False, f"state.json: {type(exc).__name__}"
    if ea != eb:
        return False, f"{ea} evaluations vs {eb}"
    return ok, why + f", {ea} evaluations"


# ------------------------------------------------------------------------------------------ the sweep
class Sweep:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rng = random.Random(args.seed)
        self.work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="crash_sweep-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = self.work / "commands.log"
        self.train = SMOKE_TRAIN if args.smoke else TRAIN
        self.search = SMOKE_SEARCH if args.smoke else SEARCH
        self.rows: list[dict] = []
        self.refs: dict[str, dict] = {}
        self.t0 = time.monotonic()

    # -------------------------------------------------------------- references (uninterrupted runs)
    def ref_train(self) -> dict:
        if "train" not in self.refs:
            out = self.work / "ref-train"
            t = time.monotonic()
            rc = Run(["train-supernet", *self.train, "--out", str(out)], self.log, self.work).wait(self.args.timeout)
            if rc != 0:
                raise SystemExit(f"the uninterrupted train-supernet run failed (exit {rc}); see {self.log}")
            self.refs["train"] = {"out": out, "wall": time.monotonic() - t}
            print(f"reference train-supernet: {self.refs['train']['wall']:.1f} s", flush=True)
        return self.refs["train"]

    def target(self) -> str:
        from scalenas.spaces.space import load_space
        from scalenas.spaces.targets import reachable_target

        return str(reachable_target(load_space("digits-tiny")))

    def search_argv(self, out: Path, workers: int) -> list[str]:
        return ["search", "--run", str(self.ref_train()["out"]), "--target-flops", self.target(), *self.search,
                "--workers", str(workers), "--out", str(out)]

    def ref_search(self) -> dict:
        if "search" not in self.refs:
            out = self.work / "ref-search"
            r = Run(self.search_argv(out, 0), self.log, self.work)
            state_at = None  # when the first state.json (what --resume needs) appeared
            while r.proc.poll() is None and r.elapsed() < self.args.timeout:
                if state_at is None and SearchFolder(out).holds_state():
                    state_at = r.elapsed()
                time.sleep(0.1)
            wall = r.elapsed()
            rc = r.wait(1)
            if rc != 0:
                raise SystemExit(f"the uninterrupted search failed (exit {rc}); see {self.log}")
            self.refs["search"] = {"out": out, "wall": wall, "state_at": state_at or 1.0}
            print(f"reference search (--workers 0): {wall:.1f} s, first state.json at {state_at or 0:.1f} s",
                  flush=True)
        return self.refs["search"]

    def ref_worker_search(self) -> dict:
        if "worker" not in self.refs:
            out = self.work / "ref-search-workers2"
            r = Run(self.search_argv(out, 2), self.log, self.work)
            busy_at = None
            while r.proc.poll() is None and r.elapsed() < self.args.timeout:
                if busy_at is None and any(cmdline(p).startswith(ACTOR + ".evaluate") for p in r.watch()):
                    busy_at = r.elapsed()
                time.sleep(0.2)
            wall = r.elapsed()
            rc = r.wait(1)
            if rc != 0 or busy_at is None:
                raise SystemExit(f"the uninterrupted --workers 2 search failed (exit {rc}, actors seen busy: "
                                 f"{busy_at is not None}); see {self.log}")
            ok, why = same_reports(out, self.ref_search()["out"])
            self.refs["worker"] = {"out": out, "wall": wall, "busy_at": busy_at, "same_as_workers0": ok}
            print(f"reference search (--workers 2): {wall:.1f} s, actors busy from {busy_at:.1f} s; "
                  f"vs --workers 0: {why}", flush=True)
        return self.refs["worker"]

    # -------------------------------------------------------------- trials
    def kill_and_resume(self, out: Path, fresh: list[str], marker: str, hi: float, lo: float = 1.0) -> dict:
        """Kill ``fresh`` once or twice at random moments (the first one in [lo, 0.9 hi] seconds, a second one,
        in half of the trials, 1 to 0.6 hi seconds into the next run), resume (``--resume`` when ``marker``
        exists in ``out``, else start again) until it finishes. Returns the counts."""
        n_kills = 1 if self.rng.random() < 0.5 else 2
        plan = [self.rng.uniform(lo, 0.9 * hi)] + [self.rng.uniform(1.0, 0.6 * hi) for _ in range(n_kills - 1)]
        kills = resumes = restarts = redo = 0
        times: list[float] = []
        argv, nxt = fresh, 0
        while True:
            kill_after = plan[nxt] if nxt < len(plan) else None
            rc, killed = run_until(argv, self.log, self.work, kill_after, self.args.timeout)
            if killed:
                kills, nxt = kills + 1, nxt + 1
                times.append(kill_after)
                if (out / marker).exists():
                    argv, resumes = [*fresh, "--resume"], resumes + 1
                else:  # killed before anything resumable was written: start again
                    argv, restarts = fresh, restarts + 1
                continue
            if kills == 0 and rc == 0 and redo < 3:  # finished before the first kill (a faster moment): again,
                shutil.rmtree(out, ignore_errors=True)  # killing earlier
                plan[0], redo, argv = plan[0] * 0.5, redo + 1, fresh
                continue
            break
        return {"rc": rc, "kills": kills, "resumes": resumes, "restarts": restarts,
                "kill_after_s": ";".join(f"{t:.2f}" for t in times)}

    def train_trial(self, k: int) -> dict:
        ref = self.ref_train()
        out = self.work / f"train-{k}"
        t = time.monotonic()
        res = self.kill_and_resume(out, ["train-supernet", *self.train, "--out", str(out)], RunFolder.CHECKPOINT,
                                   ref["wall"])
        notes = []
        if res["rc"] != 0:
            notes.append(f"final exit {res['rc']}")
        ident, why = same_weights(out / RunFolder.CHECKPOINT, ref["out"] / RunFolder.CHECKPOINT) if \
            (out / RunFolder.CHECKPOINT).is_file() else (False, "no checkpoint")
        complete, why_log = same_rows(out / "train_log.csv", ref["out"] / "train_log.csv", keep=TRAIN_LOG_COLUMNS)
        notes += [why, why_log]
        if leftovers(out):
            notes.append("left: " + " ".join(leftovers(out)))
            complete = False
        return self.row("train-supernet", k, res, ident and res["rc"] == 0, complete, t, notes)

    def search_trial(self, k: int) -> dict:
        ref = self.ref_search()
        out = self.work / f"search-{k}"
        t = time.monotonic()
        # the first kill after the reference's first state.json: a kill before it leaves nothing to resume (a
        # fresh start, as for train-supernet), after it every kill is followed by --resume
        res = self.kill_and_resume(out, self.search_argv(out, 0), SearchFolder.STATE, ref["wall"], lo=ref["state_at"])
        ident, why = same_reports(out, ref["out"])
        complete, why_log = search_log_complete(out, ref["out"])
        notes = ([f"final exit {res['rc']}"] if res["rc"] != 0 else []) + [why, why_log]
        if leftovers(out):
            notes.append("left: " + " ".join(leftovers(out)))
            complete = False
        return self.row("search", k, res, ident and res["rc"] == 0, complete, t, notes)

    def worker_trial(self, k: int) -> dict:
        ref = self.ref_worker_search()
        base = self.ref_search()
        out = self.work / f"search-worker-{k}"
        window = max(1.0, ref["wall"] - ref["busy_at"])  # how long the actors evaluate in the reference
        delay = self.rng.uniform(0.0, 0.6 * window)
        t = time.monotonic()
        for _ in range(3):  # a search that ends before the kill (a faster moment) is run again, killing earlier
            log = self.work / f"search-worker-{k}.log"
            r = Run(self.search_argv(out, 2), log, self.work)
            busy_since, victim, kill_at = None, None, None
            while r.proc.poll() is None and r.elapsed() < self.args.timeout:
                busy = sorted(p for p in r.watch() if cmdline(p).startswith(ACTOR + ".evaluate"))
                if busy and busy_since is None:
                    busy_since = r.elapsed()
                if victim is None and busy and r.elapsed() - busy_since >= delay:
                    victim, kill_at = self.rng.choice(busy), r.elapsed()
                    kill([victim])
                time.sleep(0.2)
            rc = r.wait(max(1.0, self.args.timeout - r.elapsed()))
            if victim is not None or rc != 0:
                break
            shutil.rmtree(out, ignore_errors=True)
            delay *= 0.5
        res = {"rc": rc, "kills": int(victim is not None), "resumes": 0, "restarts": 0,
               "kill_after_s": f"{kill_at:.2f}" if kill_at is not None else ""}
        ident, why = same_reports(out, base["out"])
        complete, why_log = search_log_complete(out, base["out"])
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in log.read_text().splitlines()]
        said = [line for line in lines if "worker" in line.lower() and not line.startswith("(")
                and any(w in line.lower() for w in ("died", "lost", "dead", "replac", "re-run"))]
        notes = ([f"final exit {rc}"] if rc != 0 else []) + [why, why_log, f"killed actor pid {victim}" if victim
                                                             else "no kill"]
        if said:
            notes.append("search said: " + said[0][:110])
        if r.left:
            notes.append(f"{len(r.left)} processes left running (killed)")
            complete = False
        if leftovers(out):
            notes.append("left: " + " ".join(leftovers(out)))
            complete = False
        return self.row("search-worker", k, res, ident and rc == 0, complete, t, notes)

    def row(self, target: str, k: int, res: dict, identical: bool, complete: bool, t: float,
            notes: list[str]) -> dict:
        row = {"target": target, "trial": k, "kill_after_s": res["kill_after_s"], "kills": res["kills"],
               "resumes": res["resumes"], "identical": bool(identical), "log_rows_complete": bool(complete),
               "seconds": round(time.monotonic() - t, 1), "restarts": res["restarts"], "note": "; ".join(notes)}
        self.rows.append(row)
        self.write_csv()
        print(f"{target} trial {k}: kills {row['kills']} at {row['kill_after_s'] or '-'} s, resumes {row['resumes']}"
              f", restarts {row['restarts']}, identical {row['identical']}, complete {row['log_rows_complete']} "
              f"({row['seconds']} s) {row['note']}", flush=True)
        return row

    # -------------------------------------------------------------- output
    def write_csv(self) -> None:
        jobkit.write_rows(self.args.out_csv, self.rows, COLUMNS)

    def write_md(self, command: str) -> Path:
        path = Path(self.args.out_csv).with_suffix(".md")
        head = (f"`{command}` on {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPU(s), load average "
                f"{os.getloadavg()[0]:.1f} at the end; total {time.monotonic() - self.t0:.0f} s; kill times seeded "
                f"(--seed {self.args.seed}). One row per trial in `{Path(self.args.out_csv).name}`.")
        lines = ["# Crash sweep (issue 13)", "", head, "",
                 "| target | trials | kills | resumes | restarts | identical | log rows complete | seconds |",
                 "|---|---|---|---|---|---|---|---|"]
        for target in TARGETS:
            rows = [r for r in self.rows if r["target"] == target]
            if rows:
                lines.append(f"| {target} | {len(rows)} | {sum(r['kills'] for r in rows)} | "
                             f"{sum(r['resumes'] for r in rows)} | {sum(r['restarts'] for r in rows)} | "
                             f"{sum(r['identical'] for r in rows)}/{len(rows)} | "
                             f"{sum(r['log_rows_complete'] for r in rows)}/{len(rows)} | "
                             f"{sum(r['seconds'] for r in rows):.0f} |")
        train = (f"- train-supernet (digits-tiny default job): `{' '.join(self.train)}`; identical = every tensor "
                 "of checkpoint.pt's model state `torch.equal` to the uninterrupted run's, at the same final step; "
                 f"complete = train_log.csv rows equal in {', '.join(TRAIN_LOG_COLUMNS)}; no `*.tmp` / `.lock` "
                 "left.")
        search = (f"- search (driver killed, `--workers 0`): `{' '.join(self.search)}` on the uninterrupted "
                  "supernet run; the first kill of a trial falls after the uninterrupted search wrote its first "
                  "state.json" + (f" ({self.refs['search']['state_at']:.1f} s of {self.refs['search']['wall']:.1f} s)"
                                  if "search" in self.refs else "") +
                  f"; identical = {', '.join(REPORTS)} byte-identical; complete = search_log.csv rows "
                  "equal (but evaluations_per_s) and the same number of evaluations in state.json.")
        worker = ("- search-worker (`--workers 2`, private Ray on 127.0.0.1): one `ray::_EvaluatorActor` process "
                  "killed while evaluating; no resume; compared with the uninterrupted `--workers 0` search")
        if "worker" in self.refs:
            worker += (" (an uninterrupted `--workers 2` search gives the same reports: "
                       f"{self.refs['worker']['same_as_workers0']})")
        restart = ("- A kill before the first checkpoint / state file is followed by a fresh start (restart), "
                   "every later one by `--resume`.")
        lines += ["", "Settings:", "", train, search, worker + ".", restart, ""]
        path.write_text("\n".join(lines))
        return path


def main() -> int:
    ap = jobkit.parser(__doc__)
    ap.add_argument("--trials", type=int, default=None,
                    help="trials per target (default 10 for train-supernet and search, 3 for search-worker; "
                    "--smoke: 2)")
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma list of {', '.join(TARGETS)}")
    ap.add_argument("--smoke", action="store_true", help="tiny runs (12 steps, a 3x2 search), 2 trials each")
    ap.add_argument("--out-csv", default=str(ROOT / "results/bench/crash.csv"),
                    help="CSV of the trials (the summary goes next to it as .md)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds any one run may take")
    ap.add_argument("--work-dir", default=None, help="where the runs go (default: a temp folder, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or (args.trials is not None and args.trials < 1):
        ap.error(f"unknown target(s) {unknown}" if unknown else "--trials must be >= 1")
    command = "python jobs/bench/crash_sweep.py " + " ".join(sys.argv[1:])
    sweep = Sweep(args)
    print(f"crash sweep: {', '.join(targets)}; runs in {sweep.work}", flush=True)
    try:
        for target in targets:
            n = args.trials or (2 if args.smoke else (3 if target == "search-worker" else 10))
            trial = {"train-supernet": sweep.train_trial, "search": sweep.search_trial,
                     "search-worker": sweep.worker_trial}[target]
            for k in range(n):
                trial(k)
        md = sweep.write_md(command.strip())
    finally:
        if not args.keep and not args.work_dir:
            shutil.rmtree(sweep.work, ignore_errors=True)
    bad = [r for r in sweep.rows if not (r["identical"] and r["log_rows_complete"] and r["kills"] >= 1)]
    print(f"{len(sweep.rows)} trials, {len(bad)} not identical/complete; {args.out_csv}, {md}; "
          f"{time.monotonic() - sweep.t0:.0f} s", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
