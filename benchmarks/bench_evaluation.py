"""Time the robustness evaluation at several subject batch sizes, and check that batches give the per-subject rows.

The demo's evaluation in small: ``--models`` random-weight ``UNet3D(base_filters=8)`` model bundles at the quick
overlay's 48^3 grid (the first undefended, the others distilled at T = 100, so white-box, adaptive and transfer rows
are all computed), ``--subjects`` synthetic test subjects (``python -m common data synth``, 64^3 resampled to 48^3),
the default attacks with a shorter sweep. Each batch size runs in its own fresh process (one after the other,
``--repeats`` rounds in alternating order; the median is shown), timing ``RobustnessEvaluation.run`` only.

Printed:

1. seconds per batch size and the ratio to ``batch_size=1`` of this code (target for the chosen default: <= 0.6);
   with ``--old-code DIR`` (a copy of an earlier commit, e.g. ``git archive fe17324 | tar -x -C DIR``) also that
   code's per-subject evaluation, whose network ran a batch of one as two copies;
2. batched rows against ``batch_size=1`` rows (and the old code's): the largest difference of the clean Dice (target
   1e-5) and of the attacked Dice per subject and region (target 0.005), with the number of rows compared.

Usage::

    python benchmarks/bench_evaluation.py                                   # batch sizes 1 2 4, 4 subjects, 2 models
    python benchmarks/bench_evaluation.py --old-code /tmp/old --threads 1 --steps 5    # busy machine: shorter
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# fp32 fixed (the bundles' precision "auto" needs common.engines.choose_precision, which older code lacks)
OVERRIDES = {"spatial_size": [48, 48, 48], "base_filters": 8, "n4": False, "amp": False, "amp_dtype": "bfloat16"}
CONFIGS = ["configs/inference.json", "configs/quick.json"]

_RUNNER = """
import json, sys, time, torch
settings = json.loads(sys.argv[1])
threads = settings.pop("threads")
if threads:
    torch.set_num_threads(threads)
from common.engines import RobustnessEvaluation
bundles, out = settings.pop("bundles"), settings.pop("out")
evaluation = RobustnessEvaluation(bundles, out, **settings)
start = time.perf_counter()
evaluation.run()
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def make_bundles(root: Path, count: int) -> list[str]:
    """``count`` model bundles with random weights: an undefended one, then distilled ones (T = 100)."""
    from monai.bundle import ConfigParser

    from common.bundles import bundle_specs, render_bundle

    specs = {(s.net, s.family): s for s in bundle_specs()}
    folders = []
    for index in range(count):
        family = "baseline" if index == 0 else "distill"
        name = f"bench_{family}_{index}"
        folder = root / name
        for rel, content in render_bundle(specs[("3d", family)]).items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        meta_path = folder / "configs" / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta["name"] = name
        if family == "distill":
            meta["robustseg"].update(defense="distillation", defense_param="T=100", temperature=100.0)
        meta_path.write_text(json.dumps(meta))
        parser = ConfigParser()
        parser.read_config([str(folder / f) for f in CONFIGS])
        for key, value in OVERRIDES.items():
            parser[key] = value
        torch.manual_seed(index)
        (folder / "models").mkdir()
        torch.save(parser.get_parsed_content("network_def").state_dict(), folder / "models" / "model.pt")
        folders.append(str(folder))
    return folders


def run_evaluation(code: Path, settings: dict, out: Path) -> float:
    """Run one evaluation in a fresh process with ``code`` first on the path; return its ``run()`` seconds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), *filter(None, [os.environ.get("PYTHONPATH")])])}
    result = subprocess.run(
        [sys.executable, "-c", _RUNNER, json.dumps({**settings, "out": str(out)})],
        env=env, capture_output=True, text=True, cwd=str(code),
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"evaluation with {code} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def read_rows(path: Path) -> dict[tuple, dict]:
    from common.report import load_results

    keys = ("model", "subject", "attack", "threat", "source_model", "epsilon", "iteration", "loss")
    return {tuple(r[k] for k in keys): r for r in load_results(path)}


def compare(rows: dict[tuple, dict], reference: dict[tuple, dict]) -> tuple[float, float, int]:
    """Largest |difference| of clean Dice and of attacked Dice over the rows both have, and their number."""
    clean, attacked, shared = 0.0, 0.0, 0
    for key in rows.keys() & reference.keys():
        shared += 1
        for name in ("dice_wt", "dice_tc", "dice_et"):
            difference = abs(rows[key][name] - reference[key][name])
            if rows[key]["threat"] == "clean":
                clean = max(clean, difference)
            else:
                attacked = max(attacked, difference)
    return clean, attacked, shared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4], help="subject batch sizes")
    parser.add_argument("--subjects", type=int, default=4, help="test subjects (default 4)")
    parser.add_argument("--models", type=int, default=2, help="model bundles (default 2: baseline + distilled)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of runs; medians are shown")
    parser.add_argument("--steps", type=int, default=10, help="steps of i-FGSM and ti-FGSM (default 10, the paper's)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's default)")
    parser.add_argument("--old-code", type=Path, default=None, help="a copy of earlier code to time per subject")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep data, bundles and CSVs here")
    args = parser.parse_args()

    from common.data.synthetic import write_synthetic_dataset

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_evaluation_"))
    data = work / "data"
    if not (data / "datalist.json").is_file():
        # test_fraction so that the seeded split keeps --subjects for testing (one subject left to train on)
        write_synthetic_dataset(data, subjects=args.subjects + 1, seed=0, shape=64,
                                test_fraction=args.subjects / (args.subjects + 1))  # fmt: skip
    bundles = make_bundles(work / "bundles", args.models) if not (work / "bundles").is_dir() else sorted(
        str(p) for p in (work / "bundles").iterdir()
    )  # fmt: skip
    settings = {
        "bundles": bundles, "model_config_files": CONFIGS, "model_overrides": OVERRIDES,
        "datalist": str(data / "datalist.json"), "device": "cpu", "sweep_epsilons": [0.02, 0.05, 0.1],
        "example_subject": False, "tables": False, "progress": False, "threads": args.threads,
        "attacks": [{"name": "FGSM"}, {"name": "i-FGSM", "steps": args.steps},
                    {"name": "ti-FGSM", "steps": args.steps, "target": 1}],
    }  # fmt: skip
    runs: dict[str, tuple[Path, dict]] = {
        f"batch_size={b}": (REPO, {**settings, "batch_size": b}) for b in args.batch_sizes
    }
    if args.old_code is not None:
        runs["old code, per subject"] = (args.old_code.resolve(), dict(settings))
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(args.repeats):
        for name in list(runs)[:: 1 if repeat % 2 == 0 else -1]:
            code, config = runs[name]
            out = work / "runs" / f"{name.replace(' ', '_').replace(',', '')}_{repeat}"
            times[name].append(run_evaluation(code, config, out))
            print(f"  {name}: {times[name][-1]:.1f} s", flush=True)

    threads = args.threads if args.threads > 0 else torch.get_num_threads()
    print(
        f"\n{args.models} random-weight UNet3D(base_filters=8) bundles at 48^3, {args.subjects} synthetic test "
        f"subjects, FGSM sweep (3 eps) + i-FGSM({args.steps}) + ti-FGSM({args.steps}), white-box/adaptive/transfer; "
        f"torch {torch.__version__}, {threads} threads, median of {args.repeats}"
    )
    reference = f"batch_size={args.batch_sizes[0]}"
    base = statistics.median(times[reference])
    print(f"\n{'run':<24} {'seconds':>8} {'vs ' + reference:>16}  target")
    for name, values in times.items():
        target = "<= 0.6 (chosen default)" if name != reference and not name.startswith("old") else ""
        print(f"{name:<24} {statistics.median(values):8.1f} {statistics.median(values) / base:16.3f}  {target}")

    first = read_rows(work / "runs" / f"{reference.replace(' ', '_')}_0" / "results.csv")
    print(f"\nrows vs {reference}: largest |difference| of Dice (clean target 1e-5, attacked 0.005)")
    for name in runs:
        if name == reference:
            continue
        rows = read_rows(work / "runs" / f"{name.replace(' ', '_').replace(',', '')}_0" / "results.csv")
        clean, attacked, shared = compare(rows, first)
        print(f"{name:<24} clean {clean:.2e}  attacked {attacked:.4f}  ({shared} rows)")
    print(f"(work folder: {work})")


if __name__ == "__main__":
    main()
