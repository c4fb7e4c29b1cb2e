"""Finite-width networks against their infinite-width kernel model, and transfer of certified attacks.

Setting (docs/math.md §2): a one-hidden-layer ReLU network in the NTK parameterization
(`kernelcert.finite`, neural-tangents' stax conventions) trained by full-batch gradient descent on
`0.5 ||g(X) - onehot(y)||^2` with the initial function subtracted (`g = f - f_0`), for a FIXED
number of steps T with step size eta = 1 / lambda_max(Θ). Its infinite-width model is the
finite-time kernel regression `KernelRegression(train_time=T, learning_rate=eta)` on the analytic
NTK `FullyConnected(1, sqrt(2), 0.1)` (gradient flow for time eta*T from zero; GD and flow differ
by the "discretisation floor" reported below, which bounds how close any width can get).
Converged training (ridge 0) is not used: on MNIST the NTK is ill-conditioned (condition number
~1e4 at n = 200), so convergence would take ~1e5 steps per network.

Data: real MNIST subsets (stratified, seed 0), images 2x2 average-pooled to 14x14 (d = 196, to
keep width-8192 training affordable on a CPU): "binary" = digits 1 vs 7, "tenclass" = all digits.

1. Distance to the kernel: for widths 256 ... 8192 and several initialisation seeds, the relative
   L2 distance ||G_net - S_kernel||_F / ||S_kernel||_F of the test outputs, the prediction
   agreement rate, and the distance of the seed-averaged network outputs (which removes the
   initialisation fluctuation and leaves the systematic finite-width error).
2. Certified attacks: ScaLabelCert certifies the kernel model; for selected test points (half of
   them the smallest radii) its minimal attack `witness(i)` (radius + 1 flips, which provably flips
   the kernel model) is applied to the training labels, every network is retrained from the SAME
   initialisation, and we count how often the network's prediction at that point changes (against
   the network trained on clean labels). Control: a random relabelling of the same size.

    .venv/bin/python -m benchmarks.finite_width [--quick] [--fresh]

Writes benchmarks/results/finite_width[_quick].json and finite_width[_quick].png atomically. Full
mode caches every (task, width, seed) result in benchmarks/results/finite_width_cache.json (written
atomically after each piece, keyed by a fingerprint of the configuration and the attacks), so an
interrupted run resumes; --fresh ignores the cache. --quick is always recomputed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks._machine import machine_info, machine_line
from kernelcert import finite
from kernelcert.certificates import certify
from kernelcert.data import mnist
from kernelcert.kernels import FullyConnected
from kernelcert.learners import KernelRegression, onehot
from kernelcert.pipeline.store import atomic_write_bytes, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "finite_width"

ARCH = dict(depth=1, W_std=math.sqrt(2.0), b_std=0.1, activation="relu")
TASKS = {
    "binary": dict(label="MNIST 1 vs 7", classes=(1, 7)),
    "tenclass": dict(label="MNIST 10 classes", classes=None),
}
FULL = dict(widths=[256, 512, 1024, 2048, 4096, 8192], seeds=[0, 1, 2], n_train=200, n_test=200, steps=200,
            lr_factor=1.0, pool=2, attacks={"binary": 6, "tenclass": 3})
QUICK = dict(widths=[256, 1024, 4096], seeds=[0], n_train=200, n_test=200, steps=200, lr_factor=1.0, pool=2,
             attacks={"binary": 4, "tenclass": 2})


# --------------------------------------------------------------------------- kernel side
def _pool(x: np.ndarray, factor: int) -> np.ndarray:
    """(N, 784) MNIST rows -> (N, (28/factor)^2) by factor x factor average pooling."""
    side = 28 // factor
    return x.reshape(len(x), side, factor, side, factor).mean(axis=(2, 4)).reshape(len(x), side * side)


def _select_points(radius: np.ndarray, n_train: int, count: int) -> list[int]:
    """Half the attacked points are the smallest radii, the rest spread over the radius quantiles."""
    finite_pts = [int(i) for i in np.lexsort((np.arange(len(radius)), radius)) if radius[i] < n_train]
    small = finite_pts[: count // 2]
    rest = [i for i in finite_pts if i not in small]
    spread = []
    if rest and count > len(small):
        for q in np.linspace(0.25, 0.9, count - len(small)):
            cand = rest[int(round(q * (len(rest) - 1)))]
            if cand not in spread:
                spread.append(cand)
    return small + spread


def _apply_attack(y: np.ndarray, attack) -> np.ndarray:
    y2 = y.copy()
    for j, v in attack:
        y2[j] = v
    return y2


def _random_attack(y: np.ndarray, size: int, num_classes: int, rng) -> list[tuple[int, int]]:
    idx = rng.choice(len(y), size=size, replace=False)
    return [(int(j), int((y[j] + rng.integers(1, num_classes)) % num_classes)) for j in idx]


def prepare_task(name: str, cfg: dict) -> dict:
    """Data, kernel model, certificate, attacked points and attacks for one task (deterministic)."""
    spec = TASKS[name]
    opts = dict(n_train=cfg["n_train"], n_test=cfg["n_test"], seed=0, stratify=True)
    if spec["classes"] is not None:
        opts["classes"] = spec["classes"]
    xtr, ytr, xte, yte = mnist(**opts)
    xtr, xte = _pool(xtr, cfg["pool"]), _pool(xte, cfg["pool"])
    K = int(max(ytr.max(), yte.max()) + 1)
    kern = FullyConnected(ARCH["depth"], ARCH["W_std"], ARCH["b_std"], activation=ARCH["activation"])
    gram, cross = kern.ntk(xtr), kern.ntk(xte, xtr)
    evals, evecs = np.linalg.eigh(gram)
    lr = cfg["lr_factor"] / float(evals[-1])  # = finite.gd_learning_rate(params, xtr, lr_factor)
    model = KernelRegression(train_time=cfg["steps"], learning_rate=lr).fit(gram, ytr, K)
    W = model.label_weights(cross)
    S = W @ onehot(ytr, K)
    pred = np.argmax(S, axis=1)
    # linearised discrete GD from zero: filter (1 - (1 - eta e)^T) / e instead of (1 - exp(-eta T e)) / e
    # (eigenvalues are >= 0 up to rounding; 1 / e is only taken where e is clearly positive)
    safe = np.abs(evals) > 1e-12 * evals[-1]
    filt = np.where(safe, (1.0 - np.power(1.0 - lr * evals, cfg["steps"])) / np.where(safe, evals, 1.0),
                    lr * cfg["steps"])
    S_gd = cross @ (evecs * filt) @ evecs.T @ onehot(ytr, K)
    cert = certify(W, ytr, K)
    points = _select_points(cert.radius, len(ytr), cfg["attacks"][name])
    witness = {i: cert.witness(i) for i in points}
    for i, att in witness.items():  # the witness provably flips the kernel model: re-check
        assert np.argmax(W[i] @ onehot(_apply_attack(ytr, att), K)) != pred[i]
    return dict(name=name, label=spec["label"], xtr=xtr, ytr=ytr, xte=xte, yte=yte, K=K, lr=lr, W=W, S=S,
                pred=pred, cert=cert, points=points, witness=witness,
                floor=float(np.linalg.norm(S_gd - S) / np.linalg.norm(S)),
                kernel_acc=float((pred == yte).mean()), lambda_max=float(evals[-1]),
                lambda_min=float(evals[0]))


def _fingerprint(task: dict, cfg: dict) -> str:
    blob = json.dumps(dict(arch=ARCH, task=task["name"], n_train=cfg["n_train"], n_test=cfg["n_test"],
                           steps=cfg["steps"], lr_factor=cfg["lr_factor"], pool=cfg["pool"], points=task["points"],
                           witness={str(k): v for k, v in task["witness"].items()}), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _compact(a: np.ndarray) -> list:
    """Nested lists of 7-significant-digit floats (the networks are float32): a small cache file."""
    return [[float(f"{v:.7g}") for v in row] for row in np.asarray(a, np.float64)]


def _margin(scores: np.ndarray, p: int) -> float:
    """score of class p minus the best other class (> 0: p is predicted)."""
    others = np.delete(scores, p)
    return float(scores[p] - others.max())


# --------------------------------------------------------------------------- one (task, width, seed)
def run_piece(task: dict, width: int, seed: int, cfg: dict) -> dict:
    """Train the clean network and one per attack from the same init; return the measured numbers."""
    t0 = time.perf_counter()
    ytr, K = task["ytr"], task["K"]
    points = task["points"]
    rng = np.random.default_rng([seed, 12345])
    randoms = {i: _random_attack(ytr, len(task["witness"][i]), K, rng) for i in points}
    label_sets = [ytr] + [_apply_attack(ytr, task["witness"][i]) for i in points] + \
                 [_apply_attack(ytr, randoms[i]) for i in points]
    params = finite.init_params(jax.random.PRNGKey(seed), task["xtr"].shape[1], width, ARCH["depth"], K,
                                W_std=ARCH["W_std"], b_std=ARCH["b_std"], activation=ARCH["activation"])
    nets = finite.train_many(params, task["xtr"], np.stack(label_sets), K, steps=cfg["steps"],
                             learning_rate=task["lr"])
    G = nets[0].decision_function(task["xte"])
    S = task["S"]
    net_pred = np.argmax(G, axis=1)
    attacks = []
    A = len(points)
    for j, i in enumerate(points):
        xi = task["xte"][i:i + 1]
        g_w = nets[1 + j].decision_function(xi)[0]
        g_r = nets[1 + A + j].decision_function(xi)[0]
        p_k = int(task["pred"][i])
        s_after = task["W"][i] @ onehot(label_sets[1 + j], K)
        attacks.append(dict(
            test_index=int(i), radius=int(task["cert"].radius[i]), attack_size=len(task["witness"][i]),
            kernel_pred=p_k, kernel_attacked_pred=int(np.argmax(s_after)), clean_net_pred=int(net_pred[i]),
            witness_net_pred=int(np.argmax(g_w)), random_net_pred=int(np.argmax(g_r)),
            kernel_margin=_margin(S[i], p_k), kernel_overshoot=-_margin(s_after, p_k),
            net_margin=_margin(G[i], int(net_pred[i]))))
    return dict(width=width, seed=seed, outputs=_compact(G),
                rel_l2=float(np.linalg.norm(G - S) / np.linalg.norm(S)),
                agreement=float((net_pred == task["pred"]).mean()),
                net_acc=float((net_pred == task["yte"]).mean()),
                final_loss=float(nets[0].loss[-1]), initial_loss=float(nets[0].loss[0]),
                attacks=attacks, seconds=round(time.perf_counter() - t0, 2))


# --------------------------------------------------------------------------- aggregation
def _kernel_random_flip_rate(task: dict, seeds) -> float:
    flips = []
    for seed in seeds:
        rng = np.random.default_rng([seed, 12345])
        for i in task["points"]:
            att = _random_attack(task["ytr"], len(task["witness"][i]), task["K"], rng)
            s = task["W"][i] @ onehot(_apply_attack(task["ytr"], att), task["K"])
            flips.append(int(np.argmax(s)) != int(task["pred"][i]))
    return float(np.mean(flips))


def summarise(task: dict, pieces: list[dict], cfg: dict) -> dict:
    rows = []
    for width in cfg["widths"]:
        ps = [p for p in pieces if p["width"] == width]
        rel = np.array([p["rel_l2"] for p in ps])
        mean_out = np.mean([np.asarray(p["outputs"]) for p in ps], axis=0)
        att = [a for p in ps for a in p["attacks"]]
        flip_w = [a["witness_net_pred"] != a["clean_net_pred"] for a in att]
        flip_r = [a["random_net_pred"] != a["clean_net_pred"] for a in att]
        agree = [a["clean_net_pred"] == a["kernel_pred"] for a in att]
        flip_w_agree = [f for f, g in zip(flip_w, agree) if g]
        follow = [a["witness_net_pred"] == a["kernel_attacked_pred"] for a in att]
        overs = np.array([a["kernel_overshoot"] for a in att])
        rows.append(dict(
            width=width, seeds=len(ps),
            rel_l2_mean=float(rel.mean()), rel_l2_std=float(rel.std(ddof=1)) if len(rel) > 1 else 0.0,
            seed_mean_rel_l2=float(np.linalg.norm(mean_out - task["S"]) / np.linalg.norm(task["S"])),
            agreement=float(np.mean([p["agreement"] for p in ps])),
            net_acc=float(np.mean([p["net_acc"] for p in ps])),
            final_loss=float(np.mean([p["final_loss"] for p in ps])),
            attacked=len(att),
            witness_flip_rate=float(np.mean(flip_w)) if att else None,
            witness_flip_rate_agreeing=float(np.mean(flip_w_agree)) if flip_w_agree else None,
            witness_follows_kernel=float(np.mean(follow)) if att else None,
            random_flip_rate=float(np.mean(flip_r)) if att else None,
            overshoot_flipped=float(overs[np.array(flip_w)].mean()) if any(flip_w) else None,
            overshoot_not_flipped=float(overs[~np.array(flip_w)].mean()) if not all(flip_w) else None,
            seconds=float(sum(p["seconds"] for p in ps))))
    widths = np.array([r["width"] for r in rows], float)
    slope = float(np.polyfit(np.log(widths), np.log([r["rel_l2_mean"] for r in rows]), 1)[0]) \
        if len(rows) > 1 else None
    cert = task["cert"]
    return dict(
        label=task["label"], num_classes=task["K"], n_train=len(task["ytr"]), n_test=len(task["yte"]),
        input_dim=int(task["xtr"].shape[1]), learning_rate=task["lr"], lambda_max=task["lambda_max"],
        lambda_min=task["lambda_min"], steps=cfg["steps"], kernel_acc=task["kernel_acc"],
        kernel_median_radius=float(np.median(cert.radius)), discretisation_floor=task["floor"],
        attacked_points=[dict(test_index=i, radius=int(cert.radius[i]), attack_size=len(task["witness"][i]))
                         for i in task["points"]],
        kernel_witness_flip_rate=1.0, kernel_random_flip_rate=_kernel_random_flip_rate(task, cfg["seeds"]),
        rows=rows, fitted_exponent=slope,
        runs=[{k: v for k, v in p.items() if k != "outputs"} for p in pieces])


# --------------------------------------------------------------------------- findings, tables, plot
def _pct(x):
    return "n/a" if x is None else f"{100 * x:.0f}%"


def findings(result: dict) -> list[str]:
    out = []
    for name, t in result["tasks"].items():
        rows = t["rows"]
        lo, hi = rows[0], rows[-1]
        s = (f"{t['label']}: the relative L2 distance between the networks' and the kernel model's test outputs "
             f"goes from {lo['rel_l2_mean']:.3f} at width {lo['width']} to {hi['rel_l2_mean']:.3f} at width "
             f"{hi['width']}")
        if t["fitted_exponent"] is not None:
            s += (f" (log-log slope {t['fitted_exponent']:.2f}; an O(width^-1/2) fluctuation predicts -0.5)")
        out.append(s + ".")
        if hi["seeds"] > 1:
            ratio = hi["seed_mean_rel_l2"] / hi["rel_l2_mean"]
            noise = 1 / math.sqrt(hi["seeds"])
            verdict = ("so the gap is mostly initialisation fluctuation" if ratio < 0.5 * (1 + noise)
                       else "so a large part of the gap is systematic (the same for every initialisation)")
            out.append(f"{t['label']}: averaging the outputs over the {hi['seeds']} seeds changes the distance at "
                       f"width {hi['width']} from {hi['rel_l2_mean']:.3f} to {hi['seed_mean_rel_l2']:.3f} (ratio "
                       f"{ratio:.2f}; independent noise alone would give {noise:.2f}, a purely systematic error 1), "
                       f"{verdict}.")
        out.append(f"{t['label']}: networks and kernel agree on {_pct(lo['agreement'])} of the test predictions at "
                   f"width {lo['width']} and {_pct(hi['agreement'])} at width {hi['width']} (test accuracy "
                   f"{_pct(hi['net_acc'])} network, {_pct(t['kernel_acc'])} kernel); the gradient-descent vs "
                   f"gradient-flow floor is {t['discretisation_floor']:.1e}.")
        if hi["attacked"]:
            out.append(f"{t['label']}: the certified minimal attack (always a flip for the kernel model) flips the "
                       f"retrained network's prediction in {_pct(lo['witness_flip_rate'])} of the cases at width "
                       f"{lo['width']} and {_pct(hi['witness_flip_rate'])} at width {hi['width']} "
                       f"({hi['attacked']} attacks per width; {_pct(hi['witness_flip_rate_agreeing'])} among points "
                       f"where the clean network agreed with the kernel; the attacked network predicts the attacked "
                       f"kernel model's class in {_pct(hi['witness_follows_kernel'])}); random relabellings of the "
                       f"same size flip it in {_pct(hi['random_flip_rate'])} at width {hi['width']} (kernel model: "
                       f"{_pct(t['kernel_random_flip_rate'])}).")
            flipped = [r["overshoot_flipped"] for r in rows if r["overshoot_flipped"] is not None]
            failed = [r["overshoot_not_flipped"] for r in rows if r["overshoot_not_flipped"] is not None]
            if flipped and failed:
                f_bad, f_good = float(np.mean(failed)), float(np.mean(flipped))
                if f_bad < 0.5 * f_good:
                    tail = (": the attacks that fail to transfer are mostly those that barely cross the kernel's "
                            "boundary")
                elif f_bad > 2 * f_good:
                    tail = ": failures are not explained by a small kernel margin"
                else:
                    tail = ": the margins are of the same order, so the margin alone does not explain the failures"
                out.append(f"{t['label']}: the minimal attack pushes the kernel model past its decision boundary by a "
                           f"mean score margin of {f_bad:.3g} where it did not flip the network and {f_good:.3g} where "
                           f"it did (means over the per-width means){tail}.")
    return out


def _tables(result: dict) -> list[str]:
    lines = []
    for name, t in result["tasks"].items():
        lines.append(f"### {t['label']} (n_train={t['n_train']}, n_test={t['n_test']}, d={t['input_dim']}, "
                     f"T={t['steps']} steps, eta={t['learning_rate']:.4g} = 1/lambda_max)")
        lines.append("")
        lines.append(f"Kernel model: test accuracy {_pct(t['kernel_acc'])}, median certified radius "
                     f"{t['kernel_median_radius']:g} flips, GD-vs-flow floor {t['discretisation_floor']:.1e}; attacked "
                     f"points (radius): " + ", ".join(f"#{a['test_index']} ({a['radius']})"
                                                       for a in t["attacked_points"]) + ".")
        lines.append("")
        lines.append("| width | seeds | rel. L2 to kernel (mean ± std) | seed-averaged rel. L2 | agreement | "
                     "net accuracy | witness flips | witness flips (net agreed) | net follows attacked kernel | "
                     "random flips | seconds |")
        lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in t["rows"]:
            lines.append(f"| {r['width']} | {r['seeds']} | {r['rel_l2_mean']:.4f} ± {r['rel_l2_std']:.4f} | "
                         f"{r['seed_mean_rel_l2']:.4f} | {_pct(r['agreement'])} | {_pct(r['net_acc'])} | "
                         f"{_pct(r['witness_flip_rate'])} | {_pct(r['witness_flip_rate_agreeing'])} | "
                         f"{_pct(r['witness_follows_kernel'])} | {_pct(r['random_flip_rate'])} | {r['seconds']:.0f} |")
        lines.append(f"| kernel (∞) | – | 0 | 0 | 100% | {_pct(t['kernel_acc'])} | "
                     f"{_pct(t['kernel_witness_flip_rate'])} | – | 100% | "
                     f"{_pct(t['kernel_random_flip_rate'])} | – |")
        lines.append("")
    return lines


def markdown(result: dict) -> str:
    """Markdown section for docs/results.md (tables, plot, findings computed from the numbers)."""
    plot = f"../benchmarks/results/{Path(result['plot']).name}"
    lines = ["## Finite-width networks vs their NTK kernel model", "",
             "One-hidden-layer ReLU networks in the NTK parameterization (W_std = sqrt 2, b_std = 0.1), trained by "
             "full-batch gradient descent on the squared loss with the initial function subtracted (g = f - f0), "
             "for T steps at eta = 1/lambda_max, against `KernelRegression(train_time=T, learning_rate=eta)` on the "
             "analytic NTK (ScaLabelCert certifies the latter). 'witness flips': the kernel certificate's minimal "
             "attack (radius + 1 flips, `Certificate.witness`) is applied to the training labels, the network is "
             "retrained from the same initialisation, and the prediction at the attacked point changes; "
             "'net agreed': only points where the clean network predicts what the kernel model predicts; 'net follows "
             "attacked kernel': the retrained network predicts the class the attacked kernel model predicts; "
             "'random flips': a random relabelling of the same size. MNIST subsets, images 2x2-pooled to 14x14.", ""]
    lines += _tables(result)
    lines += [f"![distance to the kernel model vs width]({plot})", "", "Findings:", ""]
    lines += [f"- {f}" for f in findings(result)]  # recomputed from the stored numbers
    lines += ["", f"Command: `{result['command']}` (training {result['training_seconds']:.0f} s over all widths and "
              f"seeds, from the resumable cache where available; this invocation {result['seconds']:.0f} s); machine: "
              f"{machine_line(result['machine'])}.", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Two panels over the network width (log axis, ticks at the trained widths): the relative L2
    distance of the networks' test outputs to the kernel model's (with the gradient-descent vs
    gradient-flow floor and a width^-1/2 guide), and the agreement / attack-transfer rates. Colour =
    task, line style = quantity (one legend per panel, below it); the setting is in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    cfg = result["config"]
    seeds = len(cfg["seeds"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    colours = dict(zip(result["tasks"], ("C0", "C1", "C2")))
    styles1 = {"one": ("o", "-", f"one network (mean ± sd over {seeds} seeds)" if seeds > 1 else "one network"),
               "avg": ("s", "--", "seed-averaged outputs"),
               "floor": ("", ":", "floor: GD steps vs gradient flow")}
    styles2 = {"agreement": ("o", "-", "prediction agrees with the kernel model"),
               "witness_flip_rate": ("^", "-", "certificate's witness attack flips the network"),
               "witness_follows_kernel": ("d", "--", "network follows the attacked kernel model"),
               "random_flip_rate": ("x", ":", "random flips of the same size flip it")}
    attacked = {}
    for name, t in result["tasks"].items():
        c = colours[name]
        w = np.array([r["width"] for r in t["rows"]])
        m = np.array([r["rel_l2_mean"] for r in t["rows"]])
        sd = np.array([r["rel_l2_std"] for r in t["rows"]])
        ax1.errorbar(w, m, yerr=sd, marker="o", color=c, capsize=3)
        if t["rows"][0]["seeds"] > 1:
            ax1.plot(w, [r["seed_mean_rel_l2"] for r in t["rows"]], "s--", color=c, alpha=0.7)
        ax1.axhline(t["discretisation_floor"], color=c, ls=":", lw=1)
        ax2.plot(w, [r["agreement"] for r in t["rows"]], "o-", color=c)
        if t["rows"][-1]["attacked"]:
            attacked[name] = len(t["attacked_points"])
            for key, (marker, ls, _) in list(styles2.items())[1:]:
                ax2.plot(w, [r[key] for r in t["rows"]], marker=marker, linestyle=ls, color=c, alpha=0.75)
    first = next(iter(result["tasks"].values()))["rows"]
    w0, m0 = first[0]["width"], first[0]["rel_l2_mean"]
    ws = np.array([first[0]["width"], first[-1]["width"]], float)
    ax1.plot(ws, m0 * (ws / w0) ** -0.5, "k-", lw=0.8, alpha=0.5)
    ax1.set(xscale="log", yscale="log", xlabel="hidden width (units per layer)",
            ylabel="||f_net - f_kernel|| / ||f_kernel||  (test outputs)",
            title="relative L2 distance to the NTK kernel model")
    ax2.set(xscale="log", xlabel="hidden width (units per layer)",
            ylabel="fraction of test points (attacks: of attacked points)",
            ylim=(-0.03, 1.03), title="prediction agreement and label-flip attack transfer")
    task_handles = [Line2D([], [], color=colours[n], lw=6,
                           label=t["label"] + (f" ({attacked[n]} attacked points)" if n in attacked else ""))
                    for n, t in result["tasks"].items()]

    def style_handles(styles: dict) -> list:
        return [Line2D([], [], color="0.3", marker=mk, linestyle=ls, label=lab) for mk, ls, lab in styles.values()]

    guide = [Line2D([], [], color="k", lw=0.8, alpha=0.5, label="guide: slope width^(-1/2)")]
    if first[0]["seeds"] <= 1:
        styles1.pop("avg")
    for ax, handles in ((ax1, task_handles + style_handles(styles1) + guide),
                        (ax2, task_handles + style_handles(styles2))):
        ax.set_xticks([r["width"] for r in first])
        ax.set_xticklabels([str(r["width"]) for r in first])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(handles=handles, fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2,
                  frameon=False)
    tasks = next(iter(result["tasks"].values()))
    act = {"relu": "ReLU", "erf": "erf"}.get(cfg["architecture"]["activation"], cfg["architecture"]["activation"])
    fig.suptitle(f"Finite-width {act} networks vs their NTK limit: MNIST subsets "
                 f"(n_train = {tasks['n_train']}, n_test = {tasks['n_test']}, {cfg['pool']}x{cfg['pool']}-pooled), "
                 f"depth {cfg['architecture']['depth']}, {cfg['steps']} full-batch GD steps", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------- driver
def _load_cache(path: Path, fresh: bool) -> dict:
    if fresh or not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 widths, 1 seed, fewer attacks (about a minute or two)")
    ap.add_argument("--fresh", action="store_true", help="ignore cached (task, width, seed) results")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    suffix = "_quick" if args.quick else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    cache_path = RESULTS / f"{NAME}_cache.json"
    use_cache = not args.quick  # the quick run is short: always recomputed, never cached
    cache = _load_cache(cache_path, args.fresh) if use_cache else {}
    t0 = time.perf_counter()
    tasks = {}
    for name in TASKS:
        task = prepare_task(name, cfg)
        fp = _fingerprint(task, cfg)
        print(f"[{task['label']}] kernel accuracy {task['kernel_acc']:.3f}, eta {task['lr']:.4g}, "
              f"attacked points {task['points']} (radii {[int(task['cert'].radius[i]) for i in task['points']]})",
              flush=True)
        pieces = []
        for width in cfg["widths"]:
            for seed in cfg["seeds"]:
                key = f"{name}/w{width}/s{seed}"
                entry = cache.get(key)
                if entry is None or entry.get("fingerprint") != fp:
                    entry = dict(run_piece(task, width, seed, cfg), fingerprint=fp)
                    cache[key] = entry
                    if use_cache:
                        atomic_write_text(cache_path, json.dumps(cache))
                    state = f"{entry['seconds']:.1f} s"
                else:
                    state = "cached"
                pieces.append(entry)
                print(f"  width {width:5d} seed {seed}: rel L2 {entry['rel_l2']:.4f}, agreement "
                      f"{entry['agreement']:.3f}, witness flips "
                      f"{sum(a['witness_net_pred'] != a['clean_net_pred'] for a in entry['attacks'])}/"
                      f"{len(entry['attacks'])} ({state})", flush=True)
        tasks[name] = summarise(task, pieces, cfg)
    result = dict(
        command=f".venv/bin/python -m benchmarks.{NAME}" + (" --quick" if args.quick else ""),
        machine=machine_info(), quick=bool(args.quick), seconds=round(time.perf_counter() - t0, 1),
        training_seconds=round(sum(r["seconds"] for t in tasks.values() for r in t["rows"]), 1),
        config=dict(cfg, architecture=ARCH, data="MNIST (kernelcert.data.mnist, stratified, seed 0), 2x2 pooled",
                    training="full-batch GD, centred (f - f0), fixed steps; kernel = KernelRegression(train_time)"),
        tasks=tasks, plot=str((RESULTS / f"{NAME}{suffix}.png").relative_to(RESULTS.parent.parent)))
    result["findings"] = findings(result)
    plot(result, RESULTS / f"{NAME}{suffix}.png")
    atomic_write_text(RESULTS / f"{NAME}{suffix}.json", json.dumps(result, indent=1))
    print()
    print("\n".join(_tables(result)))
    print("Findings:")
    for f in result["findings"]:
        print(" -", f)
    return result


if __name__ == "__main__":
    main()
