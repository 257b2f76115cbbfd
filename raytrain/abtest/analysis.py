"""A/B analysis of a serve run's variants (``kind: abtest``), from its request and feedback logs.

The unit is the user: the traffic split assigns users (by the sticky key) to variants, so users, not requests,
are the independent draws. The metric is the click-through rate of the chosen endpoint: clicks (the sum of
``/feedback`` rewards) over impressions (items shown by ``/recommend``, or rows scored by ``/predict``), a ratio
of two per-user sums, whose variance comes from the delta method (Deng, Knoblich and Lu, 2018):

    Var(R) ~= (1 / N) (s_c^2 / n^2 - 2 c s_cn / n^3 + c^2 s_n^2 / n^4)

with c, n the per-user means of clicks and impressions, s their (co)variances and N the users. Each treatment is
compared with the control: absolute lift R_t - R_c (variances add), relative lift R_t / R_c - 1 (delta method:
Var ~= Var(R_t) / R_c^2 + R_t^2 Var(R_c) / R_c^4), a two-sided z-test on the absolute lift.

Sample-ratio mismatch: the users per variant against the configured traffic shares, a chi-square test; p below
``srm_alpha`` (0.001) flags the split as untrustworthy (users lost or moved by a bug, a bot, a redirect).

CUPED (Deng et al., 2013): with ``cuped.pre_period_end``, the requests before it are the pre-period and a user's
pre-period CTR, linearised the same way (clicks - CTR impressions) / mean impressions, is the covariate X;
each variant's linearised metric L = (c - R n) / n-bar is adjusted by theta (X - X-bar) with
theta = cov(L, X) / var(X) pooled over variants, which keeps the estimate unbiased (X does not depend on the
assignment's effect) and shrinks the variance by the squared correlation.

Forced requests (a request that chose its variant) are left out unless ``include_forced``; users seen in more than
one variant are counted and left out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import RaytrainError
from ..log import get_logger

log = get_logger(__name__)


def per_user(requests: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, variant): impressions and clicks. ``requests``: request_id, variant, user, items;
    ``feedback``: request_id, item, reward."""
    shown = requests[["request_id", "variant", "user", "items"]].explode("items").dropna(subset=["items"])
    shown = shown.rename(columns={"items": "item"}).astype({"item": "int64"})
    imp = shown.groupby(["user", "variant"]).size().rename("impressions")
    if len(feedback):
        rewards = feedback.groupby(["request_id", "item"])["reward"].sum().rename("reward").reset_index()
        # a reward counts once for the (request, item) it names, for the user that request showed it to
        hit = shown.drop_duplicates(["request_id", "item"]).merge(rewards, on=["request_id", "item"])
        clicks = hit.groupby(["user", "variant"])["reward"].sum().rename("clicks")
    else:
        clicks = pd.Series(dtype=float, name="clicks")
    out = pd.concat([imp, clicks], axis=1).fillna({"clicks": 0.0}).reset_index()
    return out[out["impressions"] > 0]


def _ratio(c: np.ndarray, n: np.ndarray) -> tuple[float, float]:
    """(sum c / sum n, its delta-method variance) over users."""
    users = len(c)
    cm, nm = c.mean(), n.mean()
    r = cm / nm
    if users < 2:
        return float(r), float("nan")
    cov = np.cov(c, n, ddof=1)
    var = (cov[0, 0] / nm**2 - 2 * cm * cov[0, 1] / nm**3 + cm**2 * cov[1, 1] / nm**4) / users
    return float(r), float(var)


def _z(alpha: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - alpha / 2))


def srm_test(users: dict[str, int], shares: dict[str, float]) -> dict:
    """Chi-square of the observed users per variant against the configured shares (variants with a share)."""
    from scipy.stats import chisquare

    names = [v for v in shares if shares[v] > 0]
    observed = np.array([users.get(v, 0) for v in names], dtype=float)
    total = observed.sum()
    expected = np.array([shares[v] for v in names]) / sum(shares[v] for v in names) * total
    if len(names) < 2 or total == 0:
        return {"variants": names, "observed": observed.tolist(), "expected": expected.tolist(), "chi2": float("nan"),
                "p_value": float("nan")}
    chi2, p = chisquare(observed, expected)
    return {"variants": names, "observed": observed.astype(int).tolist(), "expected": expected.round(1).tolist(),
            "chi2": float(chi2), "p_value": float(p)}


def analyze(requests: pd.DataFrame, feedback: pd.DataFrame, shares: dict[str, float], control: str | None = None,
            alpha: float = 0.05, srm_alpha: float = 0.001, pre_period_end: float | None = None) -> dict:
    """The report: per-variant users, requests, impressions, clicks, CTR with its interval; each treatment against
    the control; the sample-ratio check; CUPED-adjusted figures when a pre-period is given."""
    if pre_period_end is not None:
        pre_req, requests = requests[requests["time"] < pre_period_end], requests[requests["time"] >= pre_period_end]
    if requests.empty:
        raise RaytrainError("abtest: no requests to analyse (after the filters: endpoint, forced, pre-period)")
    users = per_user(requests, feedback)
    mixed = users["user"].duplicated(keep=False)
    contaminated = int(users.loc[mixed, "user"].nunique())
    users = users[~mixed]
    variants = sorted(users["variant"].unique(), key=lambda v: (-shares.get(v, 0.0), v))
    control = control or variants[0]
    if control not in variants:
        raise RaytrainError(f"abtest.control: variant {control!r} served no user; variants: {', '.join(variants)}")
    z = _z(alpha)
    counts = requests.groupby("variant")["request_id"].nunique()
    x = None
    if pre_period_end is not None:
        # the covariate: the user's own pre-period metric, linearised like the experiment's (Deng et al. 2013), 0 for
        # users new in the experiment
        pre = per_user(pre_req, feedback).groupby("user")[["clicks", "impressions"]].sum()
        rate = pre["clicks"].sum() / max(pre["impressions"].sum(), 1)
        lin = (pre["clicks"] - rate * pre["impressions"]) / max(pre["impressions"].mean(), 1e-12)
        x = users["user"].map(lin).fillna(0.0).to_numpy()
    report: dict = {"control": control, "alpha": alpha, "users_in_two_variants": contaminated, "variants": {},
                    "comparisons": {}}
    stats = {}
    for v in variants:
        sel = (users["variant"] == v).to_numpy()
        c, n = users.loc[sel, "clicks"].to_numpy(float), users.loc[sel, "impressions"].to_numpy(float)
        r, var = _ratio(c, n)
        stats[v] = {"r": r, "var": var, "c": c, "n": n, "x": None if x is None else x[sel]}
        half = z * math.sqrt(var) if var == var else float("nan")
        report["variants"][v] = {"share": shares.get(v), "users": int(sel.sum()), "requests": int(counts.get(v, 0)),
                                 "impressions": int(n.sum()), "clicks": float(c.sum()), "ctr": r,
                                 "ctr_ci": [r - half, r + half]}
    if x is not None:
        theta, reduction = _cuped(stats)
        report["cuped"] = {"pre_period_end": pre_period_end, "theta": theta, "variance_reduction": reduction}
        for v, s in stats.items():
            report["variants"][v]["ctr_cuped"] = s["r_adj"]
    from scipy.stats import norm

    for v in variants:
        if v == control:
            continue
        report["comparisons"][v] = _compare(stats[v], stats[control], z, norm, adjusted=False)
        if x is not None:
            report["comparisons"][v]["cuped"] = _compare(stats[v], stats[control], z, norm, adjusted=True)
    observed = users.groupby("variant")["user"].nunique().to_dict()
    srm = srm_test(observed, shares)
    srm["alpha"], srm["flagged"] = srm_alpha, bool(srm["p_value"] < srm_alpha)
    report["srm"] = srm
    return report


def _cuped(stats: dict) -> tuple[float, float]:
    """Pooled theta; sets each variant's adjusted ratio and variance; returns (theta, the pooled variance reduction)."""
    all_x = np.concatenate([s["x"] for s in stats.values()])
    mean_x = all_x.mean()
    covs, vars_, before, after = 0.0, 0.0, 0.0, 0.0
    for s in stats.values():
        s["lin"] = (s["c"] - s["r"] * s["n"]) / s["n"].mean()
        if len(s["x"]) > 1:
            covs += np.cov(s["lin"], s["x"], ddof=1)[0, 1] * (len(s["x"]) - 1)
            vars_ += s["x"].var(ddof=1) * (len(s["x"]) - 1)
    theta = covs / vars_ if vars_ > 0 else 0.0
    for s in stats.values():
        adjusted = s["lin"] - theta * (s["x"] - mean_x)
        s["r_adj"] = float(s["r"] - theta * (s["x"].mean() - mean_x))
        s["var_adj"] = float(adjusted.var(ddof=1) / len(adjusted)) if len(adjusted) > 1 else float("nan")
        before += s["var"]
        after += s["var_adj"]
    return float(theta), float(1 - after / before) if before > 0 else float("nan")


def _compare(t: dict, c: dict, z: float, norm, adjusted: bool) -> dict:
    rt, vt = (t["r_adj"], t["var_adj"]) if adjusted else (t["r"], t["var"])
    rc, vc = (c["r_adj"], c["var_adj"]) if adjusted else (c["r"], c["var"])
    diff, se = rt - rc, math.sqrt(vt + vc)
    rel = rt / rc - 1 if rc > 0 else float("nan")
    rel_se = math.sqrt(vt / rc**2 + rt**2 * vc / rc**4) if rc > 0 else float("nan")
    p = float(2 * (1 - norm.cdf(abs(diff) / se))) if se > 0 else float("nan")
    return {"abs_lift": diff, "abs_ci": [diff - z * se, diff + z * se], "rel_lift": rel,
            "rel_ci": [rel - z * rel_se, rel + z * rel_se], "p_value": p}


def format_report(report: dict) -> str:
    lines = [f"{'variant':12s} {'share':>6s} {'users':>8s} {'requests':>9s} {'impr.':>9s} {'clicks':>8s} "
             f"{'ctr':>8s}  ctr interval"]
    for v, r in report["variants"].items():
        share = "-" if r["share"] is None else f"{r['share']:.2f}"
        lines.append(f"{v:12s} {share:>6s} {r['users']:8,d} {r['requests']:9,d} {r['impressions']:9,d} "
                     f"{r['clicks']:8,.0f} {r['ctr']:8.4f}  [{r['ctr_ci'][0]:.4f}, {r['ctr_ci'][1]:.4f}]")
    for v, cmp in report["comparisons"].items():
        lines.append(f"{v} vs {report['control']}: lift {cmp['abs_lift']:+.4f} [{cmp['abs_ci'][0]:+.4f}, "
                     f"{cmp['abs_ci'][1]:+.4f}], relative {cmp['rel_lift']:+.1%} [{cmp['rel_ci'][0]:+.1%}, "
                     f"{cmp['rel_ci'][1]:+.1%}], p {cmp['p_value']:.4g}")
        if "cuped" in cmp:
            cu = cmp["cuped"]
            lines.append(f"  CUPED: lift {cu['abs_lift']:+.4f} [{cu['abs_ci'][0]:+.4f}, {cu['abs_ci'][1]:+.4f}], "
                         f"relative {cu['rel_lift']:+.1%}, p {cu['p_value']:.4g}")
    if "cuped" in report:
        lines.append(f"CUPED: theta {report['cuped']['theta']:.4f}, variance reduced by "
                     f"{report['cuped']['variance_reduction']:.1%}")
    srm = report["srm"]
    verdict = "MISMATCH: the split is not trustworthy" if srm["flagged"] else "ok"
    lines.append(f"sample ratio: observed {srm['observed']} expected {srm['expected']}, chi2 {srm['chi2']:.2f}, "
                 f"p {srm['p_value']:.3g} -> {verdict}")
    if report["users_in_two_variants"]:
        lines.append(f"{report['users_in_two_variants']} user(s) seen in two variants were left out")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["variants"])
    ctr = [report["variants"][v]["ctr"] for v in names]
    err = [[c - report["variants"][v]["ctr_ci"][0] for v, c in zip(names, ctr)],
           [report["variants"][v]["ctr_ci"][1] - c for v, c in zip(names, ctr)]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(names, ctr, yerr=err, capsize=6, color=["#4c72b0" if v == report["control"] else "#dd8452" for v in names])
    ax.set_ylabel("click-through rate")
    ax.set_title(f"CTR per variant ({1 - report['alpha']:.0%} intervals)" +
                 (" - SAMPLE RATIO MISMATCH" if report["srm"]["flagged"] else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_abtest(spec) -> dict:
    """Analyse ``spec.abtest.serve_run`` (a serve run directory, or one above it: its newest) into a new run
    directory: report.json, report.txt, ctr.png."""
    from ..runs import new_run_dir
    from ..serve.decisions import read_log
    from ..serve.sources import newest

    cfg = spec.abtest
    serve_dir = newest(cfg.serve_run, "serve.json")
    served = json.loads((serve_dir / "serve.json").read_text())
    shares = {v: float(info.get("share", 0.0)) for v, info in served.get("variants", {}).items()}
    requests = read_log(serve_dir / "logs", "requests").to_pandas()
    feedback = read_log(serve_dir / "logs", "feedback").to_pandas()
    if requests.empty:
        raise RaytrainError(f"{serve_dir / 'logs'}: no request logs (serve.json's application logged no request)")
    requests = requests[requests["endpoint"] == cfg.endpoint]
    forced = int(requests["forced"].sum())
    if not cfg.include_forced:
        requests = requests[~requests["forced"]]
    report = analyze(requests, feedback, shares, cfg.control, cfg.alpha, cfg.srm_alpha,
                     cfg.cuped.pre_period_end if cfg.cuped else None)
    report.update(serve_run=str(serve_dir), endpoint=cfg.endpoint, forced_requests=forced,
                  forced_left_out=not cfg.include_forced)
    run_dir = new_run_dir(spec)
    text = format_report(report)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    (run_dir / "report.txt").write_text(text + "\n")
    plot(report, run_dir / "ctr.png")
    log.info(f"A/B analysis of {serve_dir} ({cfg.endpoint}; {forced} forced request(s) "
         f"{'included' if cfg.include_forced else 'left out'}):\n{text}")
    log.info(f"report: {run_dir / 'report.json'}, {run_dir / 'ctr.png'}")
    report["run_dir"] = str(run_dir)
    return report
