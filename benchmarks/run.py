"""PHMDiff bundle benchmark: training and sampling speed, FLOP efficiency, memory, and quality against baselines.

Writes ``benchmarks/results/latest.json`` and ``benchmarks/results/quality_vs_training_time.png`` and prints a
Markdown table. Every part runs in a process of its own (so peak-RSS figures do not mix); the OpenMP wait policy
of those processes is PASSIVE unless ``--omp-wait-policy`` says otherwise (see the ``omp_wait_policy_probe`` entry:
on a shared CPU the default spinning policy makes every parallel op wait for a descheduled thread).

Usage::

    python benchmarks/run.py --quick          # a few minutes on 2 cores: short budgets, 4 slices per test subject
    python benchmarks/run.py                  # full: 300 s per learned row, 16 slices per test subject (~1 h)
    python benchmarks/run.py --quick --parts quality --budget 60

Not part of the test suite. Numbers on a CPU shared with other work are not comparable with an idle one: the
load average before and after each part is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_plot import line_plot  # noqa: E402  (Pillow only)

PARTS = ["policy_probe", "train", "whatif", "rss_train", "sample", "volume_bundle", "volume_native", "quality"]
PAPER = {
    "dataset": "BraTS 2021 T1->T2 (real patients; these results use simulated demo data: not comparable)",
    "psnr": 28.32,
    "psnr_std": 1.16,
    "ssim": 0.9242,
    "ssim_std": 0.0153,
}


def settings(quick: bool) -> dict:
    if quick:
        return {
            "budget": 20.0,
            "eval_slices": 4,
            "curve_slices": 2,
            "curve_points": 1,
            "ddim_steps": 5,
            "mean_seeds": 3,
        }
    # 16 slices per subject, not whole volumes: the DDPM baseline needs ~0.4 s per slice and DDIM step on 2 cores
    return {"budget": 300.0, "eval_slices": 16, "curve_slices": 2, "curve_points": 2, "ddim_steps": 10, "mean_seeds": 3}


def concurrent_jobs() -> list[str]:
    """Other heavy Python jobs on the machine (the shipped-model training run, test runs)."""
    try:
        out = subprocess.run(["pgrep", "-af", "monai.bundle run|pytest"], capture_output=True, text=True).stdout
    except OSError:
        return []
    return [line[:160] for line in out.splitlines() if str(os.getpid()) not in line.split()[0] and "pgrep" not in line]


def run_part(name: str, args: list[str], env: dict, timeout: float, log: Path) -> dict:
    out = Path(tempfile.mkstemp(prefix=f"phmdiff_{name}_", suffix=".json")[1])
    script = HERE / ("bench_quality.py" if name == "quality" else "bench_speed.py")
    cmd = (
        [sys.executable, str(script)] + ([] if name == "quality" else [name.split(":")[0]]) + args + ["--out", str(out)]
    )
    before, start = list(os.getloadavg()), time.perf_counter()
    print(f"[{datetime.now():%H:%M:%S}] {name} ...", flush=True)
    try:
        with log.open("a") as fh:
            fh.write(f"\n### {name}: {' '.join(cmd)}\n")
            fh.flush()
            proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
        result = (
            json.loads(out.read_text()) if proc.returncode == 0 else {"error": f"exit {proc.returncode}, see {log}"}
        )
    except subprocess.TimeoutExpired:
        result = {"error": f"timed out after {timeout:.0f} s"}
    result["_wall_seconds"] = time.perf_counter() - start
    result["_load_average_before_after"] = [[round(v, 2) for v in before], [round(v, 2) for v in os.getloadavg()]]
    print(
        f"[{datetime.now():%H:%M:%S}] {name} done in {result['_wall_seconds']:.0f} s"
        + (f" -- {result['error']}" if "error" in result else ""),
        flush=True,
    )
    return result


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------------------------------------
# Summary: the headline keys, goals, table, plot
# ---------------------------------------------------------------------------------------------------------------


def headline(parts: dict) -> dict:
    r: dict = {}
    tr, sa, vb, vn, rs = (parts.get(k, {}) for k in ("train", "sample", "volume_bundle", "volume_native", "rss_train"))
    if "step_s" in tr:
        step = tr["step_s"]
        r["train_images_per_s"] = tr["images_per_s"]["phmdiff_r0.5"]
        r["train_speedup_mask_vs_nomask"] = step["phmdiff_r0"] / step["phmdiff_r0.5"]
        r["train_speedup_vs_ddpm_unet"] = step["ddpm_unet"] / step["phmdiff_r0.5"]
        r["train_gflops_per_s"] = tr["gflops_per_s"]["phmdiff_r0.5"]
        r["train_fraction_of_gemm_peak"] = r["train_gflops_per_s"] / tr["gemm_peak_gflops"]
        r["gemm_peak_gflops"] = tr["gemm_peak_gflops"]
        r["ddpm_unet_train_images_per_s"] = tr["images_per_s"]["ddpm_unet"]
        r["ddpm_unet_train_fraction_of_gemm_peak"] = tr["gflops_per_s"]["ddpm_unet"] / tr["gemm_peak_gflops"]
    if "phmdiff_seconds_per_slice" in sa:
        r["sample_seconds_per_slice"] = sa["phmdiff_seconds_per_slice"]
        r["sample_speedup_vs_ddpm_unet"] = (
            sa["ddpm_unet_1000_steps_seconds_per_slice"] / sa["phmdiff_seconds_per_slice"]
        )
        r["ddpm_unet_1000_steps_seconds_per_slice"] = sa["ddpm_unet_1000_steps_seconds_per_slice"]
    if "seconds_total" in vb:
        r["sample_seconds_per_volume"] = vb["seconds_total"]
        r["peak_rss_mb_sample_volume"] = vb["peak_rss_mb"]
    if "seconds_per_volume_extrapolated" in vn:
        r["sample_seconds_per_volume_native_1mm"] = vn["seconds_per_volume_extrapolated"]
    if "peak_rss_mb" in rs:
        r["peak_rss_mb_train"] = rs["peak_rss_mb"]
    return r


def goals(r: dict, quality: dict) -> dict:
    g = {}

    def add(key, value, op, target, note=""):
        met = None if value is None else {">=": value >= target, "<=": value <= target, "<": value < target}[op]
        g[key] = {"value": value, "goal": f"{op} {target}", "met": met, **({"note": note} if note else {})}

    add("train_speedup_mask_vs_nomask", r.get("train_speedup_mask_vs_nomask"), ">=", 2.0)
    add("train_speedup_vs_ddpm_unet", r.get("train_speedup_vs_ddpm_unet"), ">=", 5.0)
    add("train_fraction_of_gemm_peak", r.get("train_fraction_of_gemm_peak"), ">=", 0.5)
    add(
        "sample_speedup_vs_ddpm_unet",
        r.get("sample_speedup_vs_ddpm_unet"),
        ">=",
        100.0,
        "DDPM: 1000 steps, timed on a measured subset of steps and scaled linearly",
    )
    add(
        "sample_seconds_per_volume",
        r.get("sample_seconds_per_volume"),
        "<",
        180.0,
        "bundle pipeline: resampled to 2 mm, synthesised, inverted to 1 mm",
    )
    add(
        "sample_seconds_per_volume_native_1mm",
        r.get("sample_seconds_per_volume_native_1mm"),
        "<",
        180.0,
        "native 1 mm slice-wise, extrapolated from one measured batch",
    )
    rows = quality.get("rows", {})
    ph = rows.get("phmdiff", {})
    if "psnr_whole" in ph:
        for metric in ("psnr", "ssim"):
            for region in ("whole", "brain"):
                key = f"{metric}_{region}"
                others = {k: v[key] for k, v in rows.items() if k not in ("phmdiff", "phmdiff_shipped") and key in v}
                best_other = max(others, key=others.get) if others else None
                add(
                    f"phmdiff_best_{key}",
                    ph[key] - (others[best_other] if best_other else 0.0),
                    ">=",
                    0.0,
                    f"margin over the best other row ({best_other}: {others.get(best_other, float('nan')):.4f})",
                )
        for region in ("whole", "brain"):
            o = rows.get("oracle_remap", {}).get(f"psnr_{region}")
            add(
                f"phmdiff_psnr_{region}_minus_oracle_remap_db",
                None if o is None else ph[f"psnr_{region}"] - o,
                ">=",
                2.0,
            )
        add("phmdiff_blockiness", ph.get("blockiness"), "<=", 1.10, "finest token grid, inside the brain")
        contrast = ph.get("lesion_contrast")
        add("phmdiff_lesion_contrast_at_least", contrast, ">=", 0.75, "synthesis / target lesion-to-ring contrast")
        add("phmdiff_lesion_contrast_at_most", contrast, "<=", 1.25)
    return g


def fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def markdown(result: dict) -> str:
    r, g, parts = result, result["goals"], result["parts"]
    notes = {
        "train_images_per_s": "PHMDiff bundle defaults (S: hourglass 8/16/32, 8x8-pixel tokens, 3 levels, "
        "x0-prediction, r=0.5), batch 8 x 99x117",
        "train_speedup_mask_vs_nomask": "same network, r=0.5 vs r=0",
        "train_speedup_vs_ddpm_unet": "vs DiffusionModelUNet (64,128,128), attention at the lowest level, 2 res blocks",
        "train_gflops_per_s": "FlopCounterMode FLOPs of forward+backward / median step time",
        "train_fraction_of_gemm_peak": "of the fp32 2048^2 torch.matmul peak measured in the same run",
        "sample_seconds_per_slice": f"256x256, {parts.get('sample', {}).get('phmdiff_levels', 3)} levels x "
        f"{parts.get('sample', {}).get('phmdiff_steps_per_level', '?')} DDIM steps",
        "sample_speedup_vs_ddpm_unet": "DDPM 1000 steps at 256x256: measured subset of steps, scaled linearly",
        "sample_seconds_per_volume": "197x233x189 1 mm through inference.json "
        "(resample to 2 mm in-plane, synthesise every slice, invert, write)",
        "sample_seconds_per_volume_native_1mm": "189 slices of 197x233 at 1 mm: one measured batch, extrapolated",
        "peak_rss_mb_train": "own process, 3 bundle training steps",
        "peak_rss_mb_sample_volume": "own process, the inference.json volume run",
    }
    lines = ["| key | value | goal | met | what |", "| --- | ---: | --- | --- | --- |"]
    for key, note in notes.items():
        goal = g.get(key, {})
        met = fmt(goal.get("met")) if goal else ""
        lines.append(f"| `{key}` | {fmt(r.get(key))} | {goal.get('goal', '')} | {met} | {note} |")
    q = parts.get("quality", {})
    rows = q.get("rows", {})
    if rows:
        lines += [
            "",
            f"Quality on the demo test split ({len(q.get('test_subjects', []))} subjects, "
            f"{q.get('eval_slices_per_subject')} axial slices each; mean ± std over subjects; learned rows "
            f"trained {q.get('budget_seconds_per_row')} s each, seed {q.get('seed')}; DDPM sampled with DDIM "
            f"{q.get('ddim_steps_ddpm_unet')} steps)",
            "",
            "| row | PSNR whole | SSIM whole | PSNR brain | SSIM brain | MAE brain | PSNR lesion | lesion contrast "
            "| blockiness | steps | train s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]

        def row_line(name, v):
            if "psnr_whole" not in v:
                return f"| {name} | {v.get('skipped', v.get('error', '-'))} |" + " |" * 9
            cells = [
                "-"
                if k not in v
                else f"{v[k]:.2f} ± {v[k + '_std']:.2f}"
                if k.startswith("psnr")
                else f"{v[k]:.3f} ± {v[k + '_std']:.3f}"
                for k in ("psnr_whole", "ssim_whole", "psnr_brain", "ssim_brain", "mae_brain", "psnr_lesion")
            ]
            contrast = (
                "-" if v.get("lesion_contrast") is None else f"{v['lesion_contrast']:.2f} ({v['lesions_scored']})"
            )
            return (
                f"| {name} | "
                + " | ".join(cells)
                + f" | {contrast} | {fmt(v.get('blockiness'))} | {v.get('steps', '')} "
                f"| {fmt(v.get('train_seconds'))} |"
            )

        for name, v in rows.items():
            lines.append(row_line(name, v))
            if "one_step_x0" in v:
                lines.append(row_line(f"{name}, one-step x₀", v["one_step_x0"]))
            if "posterior_mean" in v:
                lines.append(
                    row_line(f"{name}, mean of {len(v['posterior_mean']['seeds'])} samples", v["posterior_mean"])
                )
            if "bundle_steps" in v:
                lines.append(
                    row_line(
                        f"{name}, {v['bundle_steps']['num_inference_steps']} steps (bundle default)", v["bundle_steps"]
                    )
                )
            for steps, sweep in v.get("steps_sweep", {}).items():
                lines.append(row_line(f"{name}, {steps} steps ({sweep['predict_seconds']:.0f} s to predict)", sweep))
        lines.append(
            f"| paper, BraTS T1→T2 (other data) | {PAPER['psnr']} ± {PAPER['psnr_std']} | "
            f"{PAPER['ssim']} ± {PAPER['ssim_std']} |" + " |" * 8
        )
        lines += ["", "| quality goal | value | goal | met |", "| --- | ---: | --- | --- |"]
        for key, v in g.items():
            if key.startswith("phmdiff_"):
                lines.append(f"| {key} | {fmt(v['value'])} | {v['goal']} | {fmt(v['met'])} |")
    return "\n".join(lines)


MERGE_KEYS = ("budget_seconds_per_row", "eval_slices_per_subject", "seed", "test_subjects", "slice_indices")


def merge_quality_rows(earlier: dict, later: dict) -> dict:
    """The quality part of a ``--rows`` run merged into an earlier one: the rows it trained (and its baselines)
    replace theirs, the other rows stay; a shipped-weights row it skipped keeps the earlier one. Runs whose budget,
    seed or test slices differ are refused: their rows would not be comparable."""
    differ = [k for k in MERGE_KEYS if k in earlier and earlier.get(k) != later.get(k)]
    if differ:
        raise ValueError(f"cannot merge quality rows of runs whose {', '.join(differ)} differ; use another --out.")
    rows = {k: v for k, v in later.get("rows", {}).items() if "skipped" not in v}
    return {**earlier, **later, "rows": {**earlier.get("rows", {}), **rows}}


def plot(quality: dict, path: Path) -> Path | None:
    """PSNR inside the brain against training time for every learned row (the issue's headline figure)."""
    rows = quality.get("rows", {})
    series = {
        name: [(c["train_seconds"], c["psnr_brain"]) for c in row["curve"]]
        for name, row in rows.items()
        if row.get("curve")
    }
    if not series:
        return None
    hlines = {
        k: rows[k]["psnr_brain"]
        for k in ("oracle_remap", "linear_remap", "phmdiff_shipped")
        if "psnr_brain" in rows.get(k, {})
    }
    return line_plot(
        series,
        path,
        f"PSNR inside the brain ({quality.get('curve_slices_per_subject')} slices/subject) "
        "vs training time (dashed: no-training rows, eval slices)",
        "training seconds (wall clock)",
        "PSNR dB",
        hlines=hlines,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short budgets and a slice subset (a few minutes)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    parser.add_argument("--budget", type=float, default=None, help="training seconds per learned row")
    parser.add_argument("--eval-slices", type=int, default=None, help="slices per test subject (0 = whole volume)")
    parser.add_argument("--rows", default=None, help="learned rows to train (default: all)")
    parser.add_argument("--shipped", default=str(HERE.parent / "bundle" / "models" / "model.pt"))
    parser.add_argument("--omp-wait-policy", default="PASSIVE", help="OMP_WAIT_POLICY of the parts ('' = inherit)")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="update the parts run here in an existing --out JSON (with --rows: only those quality rows)",
    )
    parser.add_argument("--out", default=str(HERE / "results" / "latest.json"))
    args = parser.parse_args()
    cfg = settings(args.quick)
    if args.budget is not None:
        cfg["budget"] = args.budget
    if args.eval_slices is not None:
        cfg["eval_slices"] = args.eval_slices
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = Path(tempfile.gettempdir()) / "phmdiff_benchmark.log"
    log.write_text("")
    env = dict(os.environ)
    if args.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    quick = ["--quick"] if args.quick else []
    started = datetime.now(timezone.utc)
    wall = time.perf_counter()
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "mode": "quick" if args.quick else "full",
        "started_utc": started.isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": env.get("OMP_NUM_THREADS"),
        "omp_wait_policy": env.get("OMP_WAIT_POLICY"),
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "concurrent_jobs_start": concurrent_jobs(),
        "settings": cfg,
    }
    parts: dict = {}
    selected = [p for p in args.parts.split(",") if p]
    if args.merge and args.rows and "quality" in selected and out.is_file():  # refuse now, not after the training
        earlier_quality = json.loads(out.read_text())["parts"].get("quality", {})
        planned = {"budget_seconds_per_row": cfg["budget"], "eval_slices_per_subject": cfg["eval_slices"] or "all"}
        try:
            merge_quality_rows(earlier_quality, {**earlier_quality, **planned})
        except ValueError as error:
            parser.error(str(error))
    for name in selected:
        if name == "policy_probe":  # the same sampling call under three OpenMP settings
            probe = {}
            for label, extra in (
                ("2 threads, OMP_WAIT_POLICY=ACTIVE (spinning)", {"OMP_WAIT_POLICY": "ACTIVE"}),
                ("2 threads, OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}),
                ("1 thread", {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}),
            ):
                probe[label] = run_part("policy_probe", quick, {**env, **extra}, 180, log)
            parts["omp_wait_policy_probe"] = probe
        elif name == "quality":
            qargs = (
                [
                    arg
                    for key in ("budget", "eval_slices", "curve_slices", "curve_points", "ddim_steps", "mean_seeds")
                    for arg in ("--" + key.replace("_", "-"), str(cfg[key]))
                ]
                + ["--shipped", args.shipped]
                + (["--rows", args.rows] if args.rows else [])
            )
            parts["quality"] = run_part("quality", qargs, env, 60 * 60 * 6, log)
        elif name == "volume_bundle":
            parts[name] = run_part(name, quick + ["--shipped", args.shipped], env, 3600, log)
        else:
            parts[name] = run_part(name, quick, env, 3600, log)
    meta["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    meta["concurrent_jobs_end"] = concurrent_jobs()
    meta["wall_seconds"] = time.perf_counter() - wall

    if args.merge and out.is_file():  # keep the other parts of an earlier run; record which parts are newer
        earlier = json.loads(out.read_text())
        meta = {**earlier["meta"], "merged_later": earlier["meta"].get("merged_later", []) + [meta]}
        if args.rows and "quality" in parts and "quality" in earlier["parts"]:
            parts["quality"] = merge_quality_rows(earlier["parts"]["quality"], parts["quality"])
        parts = {**earlier["parts"], **parts}
    result = {"meta": meta}
    head = headline(parts)
    result.update(head)
    result["quality"] = parts.get("quality", {}).get("rows", {})
    result["goals"] = goals(head, parts.get("quality", {}))
    result["paper_reference"] = PAPER
    result["parts"] = parts
    png = plot(parts.get("quality", {}), out.parent / "quality_vs_training_time.png")
    result["plot"] = str(png) if png else None
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(markdown(result))
    print(f"\nJSON: {out}" + (f"\nPNG: {png}" if png else "") + f"\nlog: {log}")


if __name__ == "__main__":
    main()
