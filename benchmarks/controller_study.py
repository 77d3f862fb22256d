"""How a fitted controller does on dev rows that neither its fit nor its tuning saw, against each member alone,
the per-item oracle (any member right) and, where given, today's default decoder.

Usage: python benchmarks/controller_study.py [--work runs/fit] [--controller builtin] [--default-runs DIR]
       [--resamples 1000]

Collects the report rows as ``adafuse fit`` collects its rows (``WORK/<form>/predictions.jsonl``, the neutral
controller's decoding; only rows still missing are decoded, loading the built-in models) and replays each item's
decision (``control.fit.decide``: the same function of the same signals as a live request): a routed item
gets its member's greedy line, a fused one the line the pick commits. Each member alone is its own greedy line, as
``single`` writes it. ``--default-runs DIR``: ``DIR/<form>/predictions.jsonl`` of ``adafuse eval`` runs on the
same rows, shown beside. Paired bootstrap over items (the same draw for every method of a form): EM for QA,
corpus BLEU for translation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from adafuse.backends import DEFAULT_ENSEMBLE
from adafuse.control.fit import collect, decide, example, task_form
from adafuse.control.model import load_controller
from adafuse.control.signals import pick_feature_names, repeats
from adafuse.evaluation.compare import bootstrap_values
from adafuse.evaluation.metrics import corpus_bleu, corpus_chrf, exact_match, item_quality, token_f1
from adafuse.evaluation.runner import PREDICTIONS, LazyEnsemble, read_predictions

#: the rows reported on, after each form's fit and tune rows (control.fit.DEV_SPLITS).
REPORT_ROWS = {
    "triviaqa": (325, 475),
    "nq": (625, 775),
    "squad": (320, 400),
    "flores-en-de": (100, 150),
    "flores-de-en": (100, 150),
    "triviaqa-0shot": (325, 475),
    "nq-0shot": (625, 775),
    "squad-0shot": (320, 400),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("runs/fit"))
    ap.add_argument("--controller", default="builtin")
    ap.add_argument("--default-runs", type=Path)
    ap.add_argument("--forms", default=",".join(REPORT_ROWS))
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per member, for rows still to collect")
    args = ap.parse_args()
    with LazyEnsemble(list(DEFAULT_ENSEMBLE), n_threads=args.threads) as lazy:
        study(args, lazy)


def study(args: argparse.Namespace, lazy: LazyEnsemble) -> None:
    ctl = load_controller(args.controller)
    names = list(DEFAULT_ENSEMBLE) if args.controller == "builtin" else ctl.names
    averages: dict[str, dict[str, list]] = {}
    for seed, form in enumerate(args.forms.split(",")):
        lo, hi = REPORT_ROWS[form]
        task = task_form(form, args.data_dir)
        # The report rows' neutral decoding, collected as `adafuse fit` collects (only what is missing is decoded).
        collect(task, form, lazy, names, args.work, lo, hi - lo, progress=True)
        records = read_predictions(args.work / form / PREDICTIONS)
        rows = [records[i] for i in range(lo, hi) if i in records]
        examples = [example(r, task, names) for r in rows]
        kept = [(r, ex) for r, ex in zip(rows, examples, strict=True) if ex is not None]
        golds = [r["gold"] for r, _ in kept]
        methods: dict[str, list[str]] = {}
        routed = 0
        for _, ex in kept:
            chosen, was_routed = decide(ctl, ex)
            routed += was_routed
            methods.setdefault("controller", []).append(ex.prediction[chosen])
            for k, n in enumerate(names):
                methods.setdefault(n, []).append(ex.prediction[ex.own[k]])
        methods["oracle"] = [oracle(task.kind, ex, g) for (_, ex), g in zip(kept, golds, strict=True)]
        subset = None
        if args.default_runs is not None and (args.default_runs / form / PREDICTIONS).exists():
            default = read_predictions(args.default_runs / form / PREDICTIONS)
            if all(r["index"] in default for r, _ in kept):
                methods["today's default"] = [default[r["index"]]["prediction"] for r, _ in kept]
            else:
                subset = [k for k, (r, _) in enumerate(kept) if r["index"] in default]
                subset_default = [default[kept[k][0]["index"]]["prediction"] for k in subset]
        kind, metric = ("translation", "bleu") if task.kind == "translation" else ("qa", "em")
        scores = {m: whole(metric, preds, golds) for m, preds in methods.items()}
        draws = {m: bootstrap_values(kind, metric, p, golds, args.resamples, seed) for m, p in methods.items()}
        best_member = max(names, key=lambda n: scores[n])
        print(f"\n### {form} (rows {lo}-{hi - 1}, n={len(kept)}; routed {routed}/{len(kept)})\n")
        second = "chrF" if metric == "bleu" else "F1"
        print(f"| method | {metric.upper()} | minus {best_member} (best member), 95% interval | {second} |")
        print("|---|---|---|---|")
        for m, s in scores.items():
            diff = draws[m] - draws[best_member]
            q = np.quantile(diff, [0.025, 0.975])
            other = whole("chrf" if metric == "bleu" else "f1", methods[m], golds)
            print(f"| {m} | {s:.2f} | {s - scores[best_member]:+.2f} [{q[0]:+.2f}, {q[1]:+.2f}] | {other:.2f} |")
        if subset:
            sub_golds = [golds[k] for k in subset]
            sub = {m: [p[k] for k in subset] for m, p in methods.items() if m != "oracle"}
            sub["today's default"] = subset_default
            shown = ", ".join(f"{m} {whole(metric, p, sub_golds):.2f}" for m, p in sub.items())
            d = bootstrap_values(kind, metric, sub["controller"], sub_golds, args.resamples, seed) - bootstrap_values(
                kind, metric, subset_default, sub_golds, args.resamples, seed
            )
            q = np.quantile(d, [0.025, 0.975])
            print(
                f"\nOn the {len(subset)} rows today's default was run on: {shown}; controller minus today's default "
                f"[{q[0]:+.2f}, {q[1]:+.2f}]."
            )
        print(gap(task.kind, names, [ex for _, ex in kept], golds, methods["controller"]))
        print(loops({**methods, **({"today's default": subset_default} if subset else {})}))
        group = "zero-shot" if form.endswith("-0shot") else "few-shot"
        avg = averages.setdefault(group, {"controller": [], "best": [], "default": [], "d_best": [], "d_def": []})
        avg["controller"].append(scores["controller"])
        avg["best"].append(scores[best_member])
        avg["d_best"].append(draws["controller"] - draws[best_member])
        if "today's default" in scores:
            avg["default"].append(scores["today's default"])
            avg["d_def"].append(draws["controller"] - draws["today's default"])
    for group, avg in averages.items():
        n = len(avg["controller"])
        line = f"\n{group}, {n} forms: controller {np.mean(avg['controller']):.2f}, per-form best member "
        line += f"{np.mean(avg['best']):.2f} ({np.mean(avg['controller']) / max(1e-9, np.mean(avg['best'])):.3f}x)"
        d = np.mean(avg["d_best"], axis=0)
        line += f"; difference [{np.quantile(d, 0.025):+.2f}, {np.quantile(d, 0.975):+.2f}]"
        if len(avg["default"]) == n:
            d = np.mean(avg["d_def"], axis=0)
            line += f"; today's default {np.mean(avg['default']):.2f}, controller minus it "
            line += f"[{np.quantile(d, 0.025):+.2f}, {np.quantile(d, 0.975):+.2f}]"
        print(line)


def gap(kind: str, names: list[str], examples: list, golds: list, chosen: list[str]) -> str:
    """What limits the controller: on the items where some member's line is better than the one it committed,
    whether any signal it reads would have told the better line apart."""
    n = lone = by_scores = 0
    nll = pick_feature_names(names).index(f"nll:{names[0]}")  # the nll:<member> columns, in member order
    prefer = dict.fromkeys(names, 0)
    for ex, gold, pred in zip(examples, golds, chosen, strict=True):
        values = [item_quality(kind, p, gold) for p in ex.prediction]
        best = int(np.argmax(values))
        if values[best] <= item_quality(kind, pred, gold):
            continue
        n += 1
        got = ex.prediction.index(pred)
        lone += sum(ex.prediction[k] == ex.prediction[best] for k in ex.own) == 1
        for k, m in enumerate(names):
            prefer[m] += ex.pick.x[best, nll + k] < ex.pick.x[got, nll + k]
        by_scores += ex.pick.x[best, nll : nll + len(names)].mean() < ex.pick.x[got, nll : nll + len(names)].mean()
    # How often each member scores its own line best of all: a score that follows authorship says little.
    own_best = dict.fromkeys(names, 0)
    split = [ex for ex in examples if len(ex.pick.y) > 1]
    for ex in split:
        for k, m in enumerate(names):
            own_best[m] += int(np.argmin(ex.pick.x[:, nll + k])) == ex.own[k]
    if not n:
        return "\nNo item where another line was better."
    liked = ", ".join(f"{m} {v}" for m, v in prefer.items())
    selfish = ", ".join(f"{m} {v}/{len(split)}" for m, v in own_best.items())
    return (
        f"\nItems where a member's line was better than the committed one: {n}; written by one member alone: {lone}; "
        f"the better line has the lower NLL per token under {liked}; under the members' mean: {by_scores}. "
        f"Items where members wrote different lines and each member scored its own best: {selfish}."
    )


def loops(methods: dict[str, list[str]]) -> str:
    """Degenerate answers per method: more than half of an answer's character 4-grams seen before in it."""
    counts = ", ".join(f"{m} {sum(repeats('', p) > 0.5 for p in preds)}/{len(preds)}" for m, preds in methods.items())
    return f"Loops: {counts}."


def oracle(kind: str, ex, gold) -> str:  # type: ignore[no-untyped-def]
    """The member line that scores best on this item (the first of equals)."""
    values = [item_quality(kind, p, gold) for p in ex.prediction]
    return ex.prediction[int(np.argmax(values))]


def whole(metric: str, predictions: list[str], golds: list) -> float:
    if metric == "bleu":
        return corpus_bleu(predictions, golds)
    if metric == "chrf":
        return corpus_chrf(predictions, golds)
    score = token_f1 if metric == "f1" else exact_match
    return 100.0 * float(np.mean([score(p, g) for p, g in zip(predictions, golds, strict=True)]))


if __name__ == "__main__":
    main()
