"""Roofline arithmetic and the Markdown report of the kernel benchmark.

Formulas follow research/performance-anchors.md section 2 with W of shape (n_out, n_in), batch B,
fp32 values and int32 indices (4 bytes each), row pointers of 4 bytes:

* work: F = 2 B nnz for fwd, bwd and SDDMM; 4 B nnz for the fused backward;
* compulsory bytes Q_min: every operand once (pattern, values where read, dense in/out once);
* gather bytes Q_gather: every non-zero drags a whole 4 B-byte row of the gathered operand;
* T_floor = max(F / P, Q / BW) with P (sgemm) and BW (copy/triad) measured in the same run at
  the same thread count; the roofline fraction is T_floor / T_median.
"""

from __future__ import annotations

KERNELS = ("fwd", "bwd", "sddmm", "fused")
KERNEL_NAMES = {"fwd": "forward `matmul`", "bwd": "backward-to-input `matmul_t`",
                "sddmm": "`weight_grad` (SDDMM)", "fused": "fused `backward` (dx + grad)"}


def work(kern: str, nnz: int, batch: int) -> float:
    return (4 if kern == "fused" else 2) * batch * nnz


def q_min(kern: str, n_out: int, n_in: int, nnz: int, batch: int) -> float:
    act = 4 * batch
    if kern == "fwd":
        return nnz * 8 + (n_out + 1) * 4 + act * (n_in + n_out)
    if kern == "bwd":
        return nnz * 8 + (n_in + 1) * 4 + act * (n_in + n_out)
    if kern == "sddmm":  # pattern in, gradient out; W's values are not read
        return nnz * 8 + (n_out + 1) * 4 + act * (n_in + n_out)
    return nnz * 12 + (n_in + 1) * 4 + act * (2 * n_in + n_out)


def q_gather(kern: str, n_out: int, n_in: int, nnz: int, batch: int) -> float:
    act = 4 * batch
    if kern == "fwd":
        return nnz * (8 + act) + act * n_out
    if kern == "bwd":
        return nnz * (8 + act) + act * n_in
    if kern == "sddmm":
        return nnz * (8 + act) + act * n_out
    return nnz * (12 + act) + act * 2 * n_in


def _mm(entry) -> tuple[float, float, bool] | None:
    """(median, min, contended) of a timing entry."""
    if entry is None:
        return None
    return (entry["median"], entry["min"], bool(entry.get("contended")))


def _sum(*xs):
    if any(x is None for x in xs):
        return None
    return (sum(x[0] for x in xs), sum(x[1] for x in xs), any(x[2] for x in xs))


def peer_times(results: dict, layer: str, threads: int) -> dict:
    """(median, min) seconds per kernel and peer; fused = bwd + SDDMM for peers without one."""
    def get(peer):
        return results.get(peer, {}).get(str(threads), {}).get(layer)

    out: dict[str, dict] = {}
    sk = get("sparsekit")
    if sk and "kernels" in sk:
        out["sparsekit"] = {k: _mm(sk["kernels"][k]) for k in KERNELS}
    sc = get("scipy")
    if sc and "kernels" in sc:
        for which in ("ref", "best"):
            t = {k: _mm(sc["kernels"][k]["candidates"][sc["kernels"][k][which]])
                 for k in ("fwd", "bwd", "sddmm")}
            t["fused"] = _sum(t["bwd"], t["sddmm"])
            out[f"scipy_{which}"] = t
    to = get("torch")
    if to and "kernels" in to:
        t = {k: _mm(to["kernels"][k]["candidates"][to["kernels"][k]["best"]])
             for k in ("fwd", "bwd", "sddmm")}
        t["fused"] = _sum(t["bwd"], t["sddmm"])
        out["torch"] = t
    de = get("dense")
    if de and "kernels" in de:
        t = {k: _mm(de["kernels"].get(k)) for k in ("fwd", "bwd", "sddmm")}
        t["fused"] = _sum(t["bwd"], t["sddmm"])
        out["dense"] = t
    return out


def summarize(results: dict, layers: list[dict], threads_list: list[int], batch: int) -> dict:
    """Every derived figure of the report, keyed by thread count, then layer, then kernel."""
    summary: dict = {}
    for t in threads_list:
        mach = results.get("machine", {}).get(str(t), {}).get("machine")
        per_layer = {}
        for spec in layers:
            name, nnz = spec["name"], spec["nnz"]
            times = peer_times(results, name, t)
            sk = times.get("sparsekit")
            if not sk:
                continue
            rows = {}
            for kern in KERNELS:
                ts, ts_min, cont = sk[kern]
                f = work(kern, nnz, batch)
                row = {"ms": ts * 1e3, "gflops": f / ts / 1e9, "min_ms": ts_min * 1e3,
                       "contended": ["sparsekit"] if cont else []}
                for peer in ("scipy_ref", "scipy_best", "torch", "dense"):
                    other = times.get(peer, {}).get(kern)
                    row[f"x_{peer}"] = None if other is None else other[0] / ts
                    row[f"x_{peer}_min"] = None if other is None else other[1] / ts_min
                    if other is not None and other[2]:
                        row["contended"].append(peer)
                if mach:
                    p, bw = mach["P_gflops"] * 1e9, mach["BW_gbs"] * 1e9
                    qm = q_min(kern, spec["n_out"], spec["n_in"], nnz, batch)
                    qg = q_gather(kern, spec["n_out"], spec["n_in"], nnz, batch)
                    row["floor_ms"] = max(f / p, qm / bw) * 1e3
                    row["bound"] = "compute" if f / p >= qm / bw else "memory"
                    row["roofline"] = max(f / p, qm / bw) / ts
                    row["roofline_min"] = max(f / p, qm / bw) / ts_min
                    row["of_sgemm"] = (f / ts) / p
                    row["of_sgemm_min"] = (f / ts_min) / p
                    row["gather_floor_ms"] = max(f / p, qg / bw) * 1e3
                    row["gather_roofline"] = max(f / p, qg / bw) / ts
                rows[kern] = row
            rows["fused_over_bwd"] = sk["fused"][0] / sk["bwd"][0]
            st = results["sparsekit"][str(t)][name].get("set_step")
            if st:
                rows["set"] = {
                    "contended": bool(st["total"].get("contended")),
                    "prune_ms": st["prune"]["median"] * 1e3,
                    "regrow_ms": st["regrow"]["median"] * 1e3,
                    "rebuild_ms": st["rebuild"]["median"] * 1e3,
                    "total_ms": st["total"]["median"] * 1e3,
                    "transpose_ms": st["transpose_index"]["median"] * 1e3,
                    "fwd_ms": sk["fwd"][0] * 1e3,
                    "ratio": st["total"]["median"] / sk["fwd"][0],
                    "ratio_min": st["total"]["min"] / sk["fwd"][1],
                    "ratio_with_transpose": (st["total"]["median"]
                                             + st["transpose_index"]["median"]) / sk["fwd"][0],
                    "dropped": st["dropped"],
                }
            per_layer[name] = rows
        summary[str(t)] = per_layer
    return summary


# --- Markdown ------------------------------------------------------------------------------------
def _f(x, fmt="{:.2f}", none="—"):
    return none if x is None else fmt.format(x)


def _x(x):
    return _f(x, "{:.2f}×")


def _pct(x):
    return _f(x, "{:.0%}")


CONTENDED = ("‡ = fewer than 5 of the calls ran while the rest of the machine stayed quiet, so "
             "the figure mixes in contended calls (marked on the sparsekit time when sparsekit "
             "was affected, on the ratio when the peer was).")


def _mark(text: str, flag: bool) -> str:
    return text + " ‡" if flag else text


def kernel_table(summary_t: dict, layers: list[dict], with_peers: bool) -> list[str]:
    out = []
    for spec in layers:
        rows = summary_t.get(spec["name"])
        if not rows:
            continue
        out.append(f"\n**{spec['title']}** — W {spec['n_out']}×{spec['n_in']}, nnz "
                   f"{spec['nnz']:,} (density {spec['density']:.3%})\n")
        head = ("| kernel | median ms | min ms | GFLOP/s | × SciPy ref | × SciPy best | (min/min) |"
                + (" × torch | × dense |" if with_peers else "")
                + " floor ms (bound) | roofline | of sgemm | gather-floor frac |")
        out.append(head)
        out.append("|" + "---|" * (head.count("|") - 1))
        for kern in KERNELS:
            r = rows[kern]
            c = r.get("contended", [])
            ms = _mark(f"{r['ms']:.3f}", "sparsekit" in c)
            line = (f"| {KERNEL_NAMES[kern]} | {ms} | {r['min_ms']:.3f} | {r['gflops']:.1f} | "
                    f"{_mark(_x(r['x_scipy_ref']), 'scipy_ref' in c)} | "
                    f"{_mark(_x(r['x_scipy_best']), 'scipy_best' in c)} | "
                    f"{_x(r['x_scipy_best_min'])} |")
            if with_peers:
                line += (f" {_mark(_x(r['x_torch']), 'torch' in c)} | "
                         f"{_mark(_x(r['x_dense']), 'dense' in c)} |")
            line += (f" {_f(r.get('floor_ms'), '{:.3f}')} ({r.get('bound', '—')}) | "
                     f"{_pct(r.get('roofline'))} | {_pct(r.get('of_sgemm'))} | "
                     f"{_pct(r.get('gather_roofline'))} |")
            out.append(line)
        out.append(f"\nfused backward / `matmul_t` alone: {rows['fused_over_bwd']:.2f}× "
                   "(anchor goal ≤ 1.3×)")
    return out


def set_table(summary: dict, layers: list[dict], threads_list: list[int]) -> list[str]:
    out = ["| layer | threads | dropped | prune ms | regrow ms | rebuild ms | SET step ms "
           "| forward ms | step / forward | transpose index ms | (step + transpose) / forward |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for spec in layers:
        for t in threads_list:
            s = summary.get(str(t), {}).get(spec["name"], {}).get("set")
            if not s:
                continue
            ratio = _mark(f"{s['ratio']:.2f}×", s["contended"])
            out.append(f"| {spec['title']} | {t} | {s['dropped']:,} | {s['prune_ms']:.3f} | "
                       f"{s['regrow_ms']:.3f} | {s['rebuild_ms']:.3f} | {s['total_ms']:.3f} | "
                       f"{s['fwd_ms']:.3f} | **{ratio}** | {s['transpose_ms']:.3f} | "
                       f"{s['ratio_with_transpose']:.2f}× |")
    return out


def verdicts(summary: dict, layers: list[dict], headline: int) -> list[str]:
    """Met / missed per Target of issue 2, from the headline (2-thread) figures."""
    s = summary.get(str(headline), {})
    target_layers = [sp["name"] for sp in layers if sp["name"] in ("1000x1000", "10000x10000")]
    out = []
    for kern, label in (("fwd", "matmul"), ("bwd", "matmul_t"), ("sddmm", "weight_grad")):
        figs = []
        ok_ref = ok_best = True
        for name in target_layers:
            r = s.get(name, {}).get(kern)
            if r is None:
                continue
            figs.append(_mark(f"{name}: {_x(r['x_scipy_ref'])} ref / {_x(r['x_scipy_best'])} best"
                              f" (min/min {_x(r['x_scipy_best_min'])})", bool(r["contended"])))
            ok_ref &= (r["x_scipy_ref"] or 0) >= 3
            ok_best &= (r["x_scipy_best"] or 0) >= 3
        state = ("not measured" if not figs else "met" if ok_best
                 else "met against the reference orientation only" if ok_ref else "missed")
        out.append(f"- `{label}` ≥ 3× SciPy: **{state}** ({'; '.join(figs)})")
    figs, ok = [], True
    for name in target_layers:
        r = s.get(name, {}).get("sddmm")
        if r is not None:
            figs.append(_mark(f"{name}: {_x(r['x_torch'])} (min/min {_x(r['x_torch_min'])})",
                              bool(r["contended"])))
            ok &= (r["x_torch"] or 0) >= 2
    state = "not measured" if not figs else "met" if ok else "missed"
    out.append(f"- `weight_grad` ≥ 2× `torch.sparse.sampled_addmm`: **{state}**"
               f" ({'; '.join(figs)})")
    r = s.get("1000x1000", {})
    if r:
        figs = [_mark(f"{k}: {_pct(r[k].get('of_sgemm'))} of sgemm (min {_pct(r[k].get('of_sgemm_min'))}), "
                      f"{_pct(r[k].get('roofline'))} of max(F/P, Q_min/BW)", bool(r[k]["contended"]))
                for k in ("fwd", "bwd", "sddmm")]
        ok_sgemm = all((r[k].get("of_sgemm") or 0) >= 0.4 for k in ("fwd", "bwd", "sddmm"))
        ok_roof = all((r[k].get("roofline") or 0) >= 0.4 for k in ("fwd", "bwd", "sddmm"))
        state = ("met" if ok_sgemm else "met against max(F/P, Q_min/BW) only" if ok_roof
                 else "missed")
        out.append(f"- ≥ 40 % of the cache-resident roofline at 1000×1000: **{state}** "
                   f"({'; '.join(figs)})")
    figs, ok = [], True
    for spec in layers:
        st = s.get(spec["name"], {}).get("set")
        if st:
            figs.append(_mark(f"{spec['name']}: {st['ratio']:.2f}× (min/min {st['ratio_min']:.2f}×)",
                              st["contended"]))
            ok &= st["ratio"] <= 1.0
    out.append(f"- SET step ≤ one forward `matmul`: **{'met' if ok else 'missed'}** "
               f"(step / forward, transpose index excluded: {'; '.join(figs)})")
    return out


def render_markdown(results: dict, layers: list[dict], threads_list: list[int],
                    headline: int) -> str:
    m = results["machine"]
    peers = results["peers"]
    summary = results["summary"]
    versions: dict = {}
    pools = []
    for by_t in peers.values():
        for r in by_t.values():
            versions.update(r.get("versions", {}))
            if r.get("peer") == "machine" and r.get("threads") == headline:
                pools = r.get("threadpools", [])
    wait_policy = next((r.get("omp_wait_policy") for by_t in peers.values()
                        for r in by_t.values() if r.get("omp_wait_policy")), "unset")
    blas = ", ".join(f"{p['internal_api']} {p['version']} ({p.get('architecture')})"
                     for p in pools) or "unknown"
    L = [
        "# CPU kernel benchmark: sparsekit vs SciPy, torch and dense NumPy",
        "",
        f"Generated by `{results['command']}` (from the repository root) on "
        f"{results['started']}; the whole run took {results['wall_s']:.0f} s. "
        f"Batch {results['batch']}, float32 values, int32 indices, ER layers built by "
        "`sparsekit.nn.init.erdos_renyi`, X ReLU-like (about half zeros), dY Gaussian. "
        "Raw figures: the JSON file of the same name.",
        "",
        "## Machine",
        "",
        f"- CPU: {m.get('cpu_model')} — {m.get('cpus_usable')} usable cores, "
        f"hypervisor {m.get('hypervisor')}, caches {m.get('caches')}",
        f"- SIMD flags: {' '.join(m.get('flags', []))}",
        f"- memory {m.get('memory_gib')} GiB; {m.get('platform')}",
        f"- Python {m.get('python')}, NumPy {versions.get('numpy')} (BLAS: {blas}), "
        f"SciPy {versions.get('scipy')}, torch {versions.get('torch')}",
        f"- sparsekit {m.get('sparsekit_commit')}"
        + (" (with uncommitted changes in the benchmarked modules)" if m.get("sparsekit_tree_dirty")
           else "")
        + (f"; WARNING: compiled modules older than their .pyx: {m['stale_build']}"
           if m.get("stale_build") else ""),
        f"- /proc/loadavg: {results['loadavg_start']} at the start, {results['loadavg_end']} "
        "at the end (per-process values at the bottom). The machine is shared with other "
        "developers, so 2-thread timings in particular are noisy.",
        "",
        "## Method",
        "",
        "Each peer (sparsekit, SciPy, torch, dense NumPy, the machine-limit probe) runs in its "
        "own process with `OMP_NUM_THREADS`, `MKL_NUM_THREADS`, `OPENBLAS_NUM_THREADS` (and "
        "threadpoolctl / `torch.set_num_threads`) set to the thread count and "
        f"`OMP_WAIT_POLICY={wait_policy}` for all (sparsekit's default). Every kernel result "
        "is checked against a float64 SciPy/NumPy oracle before it is timed (error relative to "
        "the sum of |terms| ≤ 1e-4; SDDMM checked on all entries, or 200 000 sampled ones on "
        "the large layers). Timings: warm-up, then ≥ "
        f"{results['cfg']['min_repeats']} calls (more for fast kernels, up to "
        f"{results['cfg']['budget_s']} s per kernel); median (and min) of single calls. "
        "Because the machine is shared, calls are timed in rounds of about 0.15 s and a round "
        "only counts when the rest of the machine used at most 0.3 cores meanwhile (/proc/stat minus the peer's own CPU time); a "
        f"kernel waits up to {results['cfg']['clean_wait_s']} s (a process "
        f"{results['cfg']['clean_wait_total_s']} s) for ≥ {results['cfg']['min_repeats']} clean "
        "calls and otherwise uses all calls, marked ‡. "
        "GFLOP/s = 2·B·nnz / median (4·B·nnz for the fused backward). Ratios ×peer = peer "
        "median / sparsekit median (> 1: sparsekit is faster). *SciPy ref* is what the "
        "SET/Curci reference code does (W as in×out CSR, batch-major `X @ W`, `dY @ W.T`, and "
        "the SDDMM as `(X[:, i] * dY[:, o]).sum(0)` in chunks of 4096 connections); *SciPy best* "
        "is the fastest of the orientations tried (fwd: the reference, CSR-left `W @ X` and "
        "CSC-left `W_ref.T @ X` on feature-major operands; bwd: the reference and CSC-left "
        "`W.T @ dY`; SDDMM: the reference and a feature-major chunked `einsum`). torch = the "
        "fastest of int64/int32 indices of `torch.sparse.mm` (CSR-left) for fwd/bwd and "
        "`torch.sparse.sampled_addmm` for SDDMM. dense = NumPy sgemm of the same shape "
        "(`W_dense @ X`, `W_dense.T @ dY`, `dY @ X.T`) into preallocated outputs. Peers without "
        "a fused backward are charged bwd + SDDMM. Above 2 M connections (the 100 000² layer) "
        "the reference SDDMM, about 10 s a call, is timed on every k-th chunk of 4096 "
        "connections (same access pattern over the whole layer) and scaled by the share done; "
        "the peer details give one full call for comparison. Roofline: T_floor = max(F/P, Q_min/BW) "
        "(performance-anchors.md §2) with P = the best sgemm rate and BW = the best of "
        "copy/triad (best-of-N samples, as STREAM reports), both measured in this run at the "
        "same thread count; *roofline* = "
        "T_floor / T, *of sgemm* = achieved GFLOP/s / P (the issue's cache-resident roofline), "
        "*gather-floor frac* uses Q_gather (every non-zero pulls a 512-byte row from memory), "
        "the relevant bound only when the gathered operand does not fit in cache.",
        "",
        "## Machine limits measured in this run",
        "",
        "Measured at the start and at the end of the run. Each cell: median rate / best rate "
        "of the samples; P and BW are the best rates of both.",
        "",
        "| threads | sgemm N³ GF/s | sgemm N×N×128 GF/s | copy GB/s | triad GB/s | P used | BW used |",
        "|---|---|---|---|---|---|---|",
    ]
    def rate(e, key):
        return f"{e[key]:.1f} / {e[key + '_best']:.1f}"

    for t in threads_list:
        slot = peers.get("machine", {}).get(str(t), {})
        best = slot.get("machine")
        for i, mm in enumerate(slot.get("machine_runs", [])):
            n = mm["sgemm_large"]["shape"][0]
            used = (f"{best['P_gflops']:.1f} GF/s | {best['BW_gbs']:.1f} GB/s" if i == 0
                    else "″ | ″")
            L.append(f"| {t} ({'start' if i == 0 else 'end'}) | "
                     f"{rate(mm['sgemm_large'], 'gflops')} (N={n}) | "
                     f"{rate(mm['sgemm_b128'], 'gflops')} | {rate(mm['stream_copy'], 'gbs')} | "
                     f"{rate(mm['stream_triad'], 'gbs')} | {used} |")
    L += ["", "Copy moves 8 bytes per element, triad 12 (STREAM's counting; NumPy's triad takes "
          "two passes, so it understates the hardware). With 2 threads the arrays are split "
          "between two Python threads (NumPy releases the GIL)."]
    for t in threads_list:
        L += ["", f"## Kernels, {t} thread{'s' if t > 1 else ''}"
              + (" (headline)" if t == headline else "")]
        L += kernel_table(summary.get(str(t), {}), layers, with_peers=True)
        L += ["", CONTENDED]
    L += ["", "## Input alignment", "",
          "The tables above use the operands as NumPy allocated them (byte offset of x_ib / dy_ob "
          "past a 64-byte boundary in the first column). The same sparsekit calls on copies "
          "that start on a 64-byte boundary (every 512-byte batch row then fills whole cache "
          "lines):", "",
          "| layer | threads | offsets x / dy | fwd ms (aligned) | bwd ms (aligned) | "
          "SDDMM ms (aligned) | fused ms (aligned) |", "|---|---|---|---|---|---|---|"]
    for spec in layers:
        for t in threads_list:
            r = peers.get("sparsekit", {}).get(str(t), {}).get("layers", {}).get(spec["name"])
            if not r or "aligned64" not in r:
                continue
            cells = " | ".join(
                f"{r['kernels'][k]['median'] * 1e3:.3f} ({r['aligned64'][k]['median'] * 1e3:.3f})"
                for k in KERNELS)
            L.append(f"| {spec['title']} | {t} | {r['input_align']['x_ib']} / "
                     f"{r['input_align']['dy_ob']} | {cells} |")
    L += ["", "## One SET step vs one forward `matmul` (same layer, batch 128)", "",
          "Prune 30 % of the positive and 30 % of the negative weights closest to zero "
          "(`magnitude_keep_mask`: one fused sign-wise selection on the CPU), regrow as many uniformly (`sample_absent` + He-uniform "
          "values), `rebuild` with one aligned state array (momentum). The transposed index "
          "that `matmul_t`/`backward` need afterwards is rebuilt once per topology change and "
          "is shown apart. The step is verified (pattern = kept ∪ new, values and state "
          "permuted alike, new positions absent) before timing.", ""]
    L += set_table(summary, layers, threads_list)
    L += ["", CONTENDED]
    L += ["", f"## Verdict against issue 2's Targets ({headline} threads)", ""]
    L += ["Judged on medians (min/min in brackets); ‡ as above.", ""]
    L += verdicts(summary, layers, headline)
    L += ["", "## Peer details", ""]
    for spec in layers:
        L.append(f"**{spec['title']}**")
        for peer in ("scipy", "torch"):
            r = peers.get(peer, {}).get(str(headline), {}).get("layers", {}).get(spec["name"])
            if not r or "kernels" not in r:
                continue
            for kern, k in r["kernels"].items():
                cands = ", ".join(
                    f"{name} {c['median'] * 1e3:.3f} ms"
                    + (f" (estimated from {c['estimated_from_share']:.0%} of the chunks, scaled; "
                       f"one full call during verification: {c['full_single_call_s']:.1f} s)"
                       if "estimated_from_share" in c else "")
                    for name, c in k["candidates"].items())
                L.append(f"- {peer} {kern} ({headline} threads): {cands}")
        d = peers.get("dense", {}).get(str(headline), {}).get("layers", {}).get(spec["name"])
        if d and "skipped" in d:
            L.append(f"- dense: skipped — {d['skipped']}")
        L.append("")
    L += ["## Load per process", "",
          "*other jobs* = CPU time the whole machine spent on anything but the peer, per "
          "second of the peer's run (from /proc/stat and the peer's own rusage), in cores out "
          "of 2; each peer first waited (up to the limit) for other jobs to drop under a "
          "quarter of a core.", "",
          "| peer | threads | wall s | waited s | other jobs, cores | peak RSS MiB "
          "| loadavg start | loadavg end |", "|---|---|---|---|---|---|---|---|"]
    for r in results.get("processes", []):
        q = r.get("quiet") or {}
        L.append(f"| {r['peer']} {' '.join(r['layers'])} | {r['threads']} | "
                 f"{r.get('wall_s') or 0:.0f} | {q.get('waited_s', '—')} | "
                 f"{q.get('other_cores_busy_during', '—')} | "
                 f"{_f(r.get('maxrss_mib'), '{:.0f}')} | {r.get('loadavg_start')} | "
                 f"{r.get('loadavg_end')} |")
    errors = [f"{peer}/{t}/{name}: {v['error']}" for peer, by_t in peers.items()
              for t, r in by_t.items() for name, v in r.get("layers", {}).items()
              if isinstance(v, dict) and "error" in v]
    if errors:
        L += ["", "## Errors", ""] + [f"- {e}" for e in errors]
    return "\n".join(L) + "\n"
