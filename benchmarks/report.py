"""The benchmark's table and JSON file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def format_results(results: dict[str, Any]) -> str:
    lines = []
    if "machine" in results:
        cpu = results["machine"]["cpu"]
        isa = cpu.get("onednn_max_cpu_isa")
        lines.append(
            f"CPU: {cpu['model']} ({results['machine']['threads']} threads); flags: "
            f"{' '.join(cpu['flags']) or 'none of avx2/avx512/amx'}"
            + (f"; ONEDNN_MAX_CPU_ISA={isa}" if isa else "")
        )
    if "peak" in results:
        p = results["peak"]
        lines.append("Peak: " + ", ".join(f"{k} {v:.2f}" for k, v in p.items()))
    if "inference" in results:
        lines += [
            "",
            "Inference: default Segmenter path vs plain PyTorch (U-Net ResNet-50; light = "
            "decoder 256..16)",
            f"{'model':<14}{'variant':<20}{'size':>5}{'batch':>6}{'img/s':>8}{'p50 s':>8}"
            f"{'GFLOP/s':>9}{'of peak':>9}{'vs eager':>9}{'vs plain':>9}  chosen",
        ]
        for r in results["inference"]:
            lines.append(
                f"{r.get('model', 'guide'):<14}{r['variant']:<20}{r['size']:>5}{r['batch']:>6}"
                f"{r['images_per_s']:>8.2f}{r['latency_p50_s']:>8.3f}{r['gflops']:>9.0f}"
                f"{r.get('fraction_of_bf16_peak', float('nan')):>9.2f}"
                f"{r['speedup_vs_eager_fp32']:>8.2f}x{r['speedup_vs_best_plain']:>8.2f}x"
                f"  {r.get('chosen', '')}"
            )
        first = next((r["first_call_s"] for r in results["inference"] if "first_call_s" in r), None)
        if first is not None:
            lines.append(f"compiled: first call (compilation) {first:.1f} s, not in the rows above")
    if results.get("isa"):
        lines += [
            "",
            "CPU classes (ONEDNN_MAX_CPU_ISA caps, a process each, batch 1): default path vs "
            "plain PyTorch",
            f"{'class':<22}{'model':<14}{'size':>5}{'eager s':>9}{'autocast s':>11}"
            f"{'default s':>10}{'of peak':>9}{'vs plain':>9}  chosen (build s)",
        ]
        groups: dict[tuple, dict[str, dict]] = {}
        for r in results["isa"]:
            groups.setdefault((r["cpu_class"], r["model"], r["size"]), {})[r["variant"]] = r
        for (name, model, size), by in groups.items():
            d, autocast = by["default"], by.get("autocast_bf16_cl")
            lines.append(
                f"{name:<22}{model:<14}{size:>5}{by['eager_fp32']['latency_p50_s']:>9.3f}"
                f"{autocast['latency_p50_s'] if autocast else float('nan'):>11.3f}"
                f"{d['latency_p50_s']:>10.3f}"
                f"{d['fraction_of_bf16_peak']:>6.2f} {d['peak_dtype']}"
                f"{d['speedup_vs_best_plain']:>8.2f}x  {d['chosen']} ({d['build_s']:.1f})"
            )
    if results.get("encoders"):
        first = results["encoders"][0]
        lines += [
            "",
            f"Encoders in the guide's U-Net ({first['size']}x{first['size']}, batch "
            f"{first['batch']}, default Segmenter path, random init)",
            f"{'encoder':<26}{'params M':>9}{'GFLOP':>8}{'img/s':>8}{'of peak':>9}"
            f"{'vs eager':>9}{'vs plain':>9}{'roofline ms':>12}{'of roofline':>12}  chosen",
        ]
        for r in results["encoders"]:
            lines.append(
                f"{r['encoder']:<26}{r['params_m']:>9.1f}{r['gflop_per_image']:>8.1f}"
                f"{r['images_per_s']:>8.2f}{r.get('fraction_of_bf16_peak', float('nan')):>9.2f}"
                f"{r['speedup_vs_eager_fp32']:>8.2f}x"
                f"{r.get('speedup_vs_best_plain', float('nan')):>8.2f}x"
                f"{1000 * r.get('roofline_s', float('nan')):>12.1f}"
                f"{r.get('fraction_of_roofline', float('nan')):>12.2f}  {r['chosen']}"
            )
    if "training" in results:
        lines += [
            "",
            "Training step (fwd+bwd+Adam), guide's model",
            f"{'variant':<28}{'size':>6}{'batch':>6}{'img/s':>8}{'vs guide':>10}{'of peak':>9}"
            f"{'peak TF':>9}{'peak MB':>9}",
        ]
        for r in results["training"]:
            lines.append(
                f"{r['variant']:<28}{r['size']:>6}{r['batch']:>6}{r['images_per_s']:>8.2f}"
                f"{r['speedup_vs_guide_loop']:>9.2f}x"
                f"{r.get('fraction_of_bf16_peak', float('nan')):>9.2f}"
                f"{r.get('bf16_peak_tflops', float('nan')):>9.2f}{r['peak_rss_mb']:>9.0f}"
            )
    if "profile" in results:
        p = results["profile"]
        lines += [
            "",
            f"Where the default training step goes ({p['size']}x{p['size']}, batch "
            f"{p['batch']}, one profiled step; {p['step_s']:.2f} s unprofiled, "
            f"{p['fraction_of_bf16_peak']:.2f} of the peak)",
            f"{'part':<28}{'ms':>8}{'share':>8}{'GB/s':>8}",
        ]
        for r in p["categories"]:
            gbps = f"{r['gbps']:>8.1f}" if r.get("gbps") is not None else f"{'':>8}"
            lines.append(f"{r['category']:<28}{r['ms']:>8.0f}{100 * r['share']:>7.0f}%{gbps}")
        lines.append(
            f"matrix operators: {100 * p['matrix_share']:.0f}% of the step at "
            f"{p['matrix_fraction_of_bf16_peak']:.2f} of the peak while they run; copy "
            f"bandwidth {p['copy_gbps_in_cache']:.0f} GB/s in cache, "
            f"{p['copy_gbps_out_of_cache']:.0f} GB/s out of it"
        )
    if "epoch" in results:
        e = results["epoch"]
        lines += [
            "",
            f"Whole training epoch (demo data, guide's model, {e['size']}x{e['size']}, batch "
            f"{e['batch']}): {e['epoch_s']:.1f} s for {e['steps_per_epoch']} steps of "
            f"{e['isolated_step_s']:.2f} s isolated = {e['epoch_throughput_vs_step']:.2f} of "
            "the isolated step throughput (steady epochs)",
        ]
        if "run_epoch_throughput_vs_step" in e:
            lines.append(
                f"  with the run's final writes ({e['final_writes_s']:.1f} s, once per run) "
                f"spread over its {e['epochs'] - 1} timed epochs: "
                f"{e['run_epoch_throughput_vs_step']:.2f}"
            )
    if "data" in results:
        d = results["data"]
        lines += [
            "",
            f"Data loader: {d['images_per_s']:.1f} images/s ({d['preset']} preset, "
            f"{d['size']}x{d['size']}, {d['workers']} workers)",
        ]
    if "tiling" in results:
        lines += [
            "",
            "Tiled GeoTIFF prediction (U-Net ResNet-18, tile 512, batch 4)",
            f"{'scene':<14}{'tiles':>7}{'seconds':>9}{'tiles x batch':>15}{'overhead':>10}"
            f"{'peak MB':>9}",
        ]
        for r in results["tiling"]:
            lines.append(
                f"{r['scene']:<14}{r['tiles']:>7}{r['seconds']:>9.1f}"
                f"{r['tiles_x_batch_time_s']:>15.1f}{100 * r['overhead']:>9.1f}%"
                f"{r['peak_rss_mb']:>9.0f}"
            )
    if "serve" in results:
        lines += [
            "",
            "HTTP service under load (guide's model, 2 inference threads, queue 4)",
            f"{'load':<18}{'clients':>8}{'ok':>5}{'503':>5}{'errors':>7}{'req/s':>7}"
            f"{'p50 s':>7}{'p95 s':>7}{'p99 s':>7}",
        ]
        for r in results["serve"]:
            lines.append(
                f"{r['load']:<18}{r['concurrency']:>8}{r['ok']:>5}{r['shed_503']:>5}"
                f"{r['errors']:>7}{r['throughput_per_s']:>7.2f}{r['latency_p50_s']:>7.2f}"
                f"{r['latency_p95_s']:>7.2f}{r['latency_p99_s']:>7.2f}"
            )
    if results.get("scale"):
        first = results["scale"][0]
        lines += [
            "",
            f"Prediction engines ({first['inputs']} PNGs of {first['size']}x{first['size']}, "
            "U-Net ResNet-18; actor start-up included)",
            f"{'engine':<8}{'workers':>8}{'seconds':>9}{'inputs/s':>10}{'vs local':>10}"
            f"{'w/o start-up':>14}",
        ]
        for r in results["scale"]:
            lines.append(
                f"{r['engine']:<8}{r['workers']:>8}{r['seconds']:>9.1f}{r['inputs_per_s']:>10.2f}"
                f"{r['vs_local']:>9.2f}x{r['vs_local_without_startup']:>13.2f}x"
            )
    if "backends" in results:
        lines += format_backends(results["backends"])
    return "\n".join(lines)


def format_backends(backends: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "Backends (guide's model, batch 1): vs default = the default path's p50 over the row's",
        f"{'variant':<22}{'size':>5}{'p50 s':>8}{'GFLOP/s':>9}{'vs default':>11}",
    ]
    for r in backends["speed"]:
        lines.append(
            f"{r['variant']:<22}{r['size']:>5}{r['latency_p50_s']:>8.3f}{r['gflops']:>9.0f}"
            f"{r['vs_default']:>11.2f}"
        )
    choice = backends.get("auto_choice")
    if choice:
        timed = ", ".join(f"{k} {v:.3f} s" for k, v in sorted(choice["timings"].items()))
        lines.append(
            f"--backend auto chose {choice['backend']} ({choice['source']}"
            f"{'; timed at 512 px: ' + timed if timed else ''})"
        )
    for r in backends.get("accuracy", []):
        if "miou" in r:
            lines.append(
                f"  {r['variant']:<22} mIoU {r['miou']:.4f}  agreement with torch fp32 "
                f"{100 * r['agreement_with_fp32']:.2f}% ({r['images']} images)"
            )
        else:
            lines.append(f"  {r['variant']}: {r['report']}")
    return lines


def save_results(results: dict[str, Any], path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
