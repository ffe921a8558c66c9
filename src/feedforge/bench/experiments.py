"""``feedforge bench experiments``: the experiment statistics, interleaving and off-policy
estimates checked against the simulator's ground truth, over thousands of simulated
experiments.

Set-up (once): simulate a world, build, train and publish it as ``feedforge demo`` does,
then, through the in-process service (:class:`~feedforge.serving.pipeline.FeedService`),
compute every population user's feed under each arm at the world's end:

* ``control``: the published pipeline (retrieval, the configured ranker, re-ranking);
* ``treatment``: the ranker choosing from 20 retrieval candidates instead of
  ``serving.candidates`` (the variant override ``candidates: 20``).

The response model (:func:`~feedforge.events.response.response_probabilities`) gives each
slot's examination and attraction probabilities, completion and purchase, so each arm's
**true** value per session is known exactly. A simulated experiment then draws, per run: its
users (uniformly from the population), their sessions (``Poisson(activity *
sessions_per_user_day)`` per day, over ``days`` days, and as many pre-period days for CUPED's
covariate, under control), their assignment (the service's own BLAKE2b buckets with a fresh
salt), and every session's clicks and watch seconds from the response model. Each run is
analysed with :mod:`feedforge.experiments.stats`, as ``feedforge experiment analyze`` does.

What is re-drawn per run and what is not: assignment, users, sessions and responses are
fresh in every run; the feeds are computed once per user and arm (users' live histories do
not change between sessions here, as they would in the closed loop, where clicks remove
items from later feeds). ``feedforge simulate-online`` runs the full loop; this benchmark
needs its thousands of repetitions.

Sections (targets from issue 15):

* **aa**: control against control; false-positive rate of Welch's test at 0.05 on watch
  minutes per user; the always-valid test read after every simulated day.
* **ab**: control against treatment; the 95% intervals' coverage of the true lift, power,
  CUPED's variance reduction (and its intervals' coverage).
* **srm**: 100,000 units assigned with the real hash; a 1 percentage-point skew injected
  (treatment's share of the buckets 51% instead of 50%); detection and false-alarm rates.
* **interleaving**: team-draft interleaving of two arms' feeds against the A/B test of the
  same pair; power curves over user counts, users for 80% power, agreement of the
  preferred arm with the A/B winner. Two pairs: control vs treatment (a small loss, which
  items the feed holds) and control vs ``retrieval-order`` (the same candidates in
  retrieval order: a large loss, mostly which items come first).
* **ope**: see :mod:`feedforge.bench.experiments_ope`.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from feedforge.bench.report import run_info, write_report
from feedforge.bench.service import set_up_world
from feedforge.config import Settings
from feedforge.events.response import BETA_CONCENTRATION, response_probabilities
from feedforge.events.simulator import WORLD_FILE
from feedforge.events.world import World
from feedforge.experiments import stats
from feedforge.experiments.assignment import VARIANT_BUCKETS, bucket
from feedforge.experiments.interleaving import team_draft
from feedforge.serving.experiments import default_plan
from feedforge.serving.pipeline import FeedService
from feedforge.store.factory import open_store
from feedforge.workdir import Workdir

Progress = Callable[[str], None]
ORDER_ARM = "retrieval-order"
"""The second interleaving pair's treatment: the control's candidates in retrieval order
(``ranker: false``), a large loss."""
ORDER_AB_GRID = (25, 50, 100, 200, 400, 800)
ORDER_INTERLEAVING_GRID = (5, 10, 20, 40, 80, 160)
TREATMENT: dict[str, Any] = {"candidates": 20}
"""The treatment arm: the ranker picks from 20 retrieval candidates instead of
``serving.candidates`` (the variant override ``candidates: 20``): a small loss, where an
experiment's sensitivity matters."""


@dataclass(frozen=True)
class BenchSpec:
    """The sizes of ``feedforge bench experiments`` (its CLI options)."""

    users_per_run: int = 2_000
    days: int = 7
    aa_runs: int = 2_000
    ab_runs: int = 1_000
    srm_units: int = 100_000
    srm_runs: int = 500
    srm_clean_runs: int = 1_000
    power_runs: int = 300
    ab_grid: tuple[int, ...] = (500, 1_000, 2_000, 4_000, 8_000, 16_000)
    interleaving_grid: tuple[int, ...] = (100, 200, 400, 800, 1_600, 3_200)
    ope_runs: int = 200
    ope_users: int = 2_000
    ope_bank: int = 50
    ope_sessions: int = 20_000
    seed: int = 0


@dataclass
class Arms:
    """Per population user and arm: each slot's response probabilities of the arm's feed."""

    users: np.ndarray  # (U,) world user indices
    rate: np.ndarray  # (U,) expected sessions per day
    feeds: dict[str, np.ndarray]  # arm -> (U, K) world item indices (-1 padding)
    p_examine: dict[str, np.ndarray]  # arm -> (U, K)
    p_attract: dict[str, np.ndarray]
    completion: dict[str, np.ndarray]
    duration: dict[str, np.ndarray]
    true_watch_s: dict[str, np.ndarray]  # arm -> (U,) expected watch seconds per session
    true_clicks: dict[str, np.ndarray]


def build_world(settings: Settings, root: Path, progress: Progress) -> tuple[Workdir, World]:
    """Simulate, build, train and publish into ``root`` (the settings' store), as
    ``feedforge bench serve`` sets up its world."""
    workdir = Workdir.at(root)
    set_up_world(workdir, settings, progress)
    return workdir, World.load(workdir.catalog_dir / WORLD_FILE)


def compute_arms(
    settings: Settings,
    workdir: Workdir,
    world: World,
    k: int,
    progress: Progress,
    treatment: dict[str, Any] | None = None,
) -> tuple[Arms, dict[str, Any]]:
    """Every user's feed under each arm through the in-process service, with its truth.

    ``treatment`` is the treatment arm's plan fields (default :data:`TREATMENT`). Returns the
    arms and, for the OPE section, each user's scored candidates."""
    plans = {
        "control": default_plan(settings),
        "treatment": replace(default_plan(settings), **(treatment or TREATMENT)),
        ORDER_ARM: replace(default_plan(settings), use_ranker=False),
    }
    user_ids = world.user_ids().to_list()
    item_index = {item: j for j, item in enumerate(world.item_ids().to_list())}
    users = np.arange(world.n_users)
    feeds = {arm: np.full((len(users), k), -1, dtype=np.int64) for arm in plans}
    candidates: dict[int, Any] = {}
    with open_store(settings.store, workdir.store_path) as store:
        service = FeedService(settings, workdir, store)
        try:
            service.versions.preload()
            for n, u in enumerate(users):
                if n % 2_000 == 0:
                    progress(f"feeds of user {n:,} / {len(users):,}")
                for arm, plan in plans.items():
                    feed = service.recommend(user_ids[u], k, None, plan, f"bench-{u}")
                    idx = [item_index.get(i, -1) for i in feed.item_ids[:k]]
                    feeds[arm][n, : len(idx)] = idx
                cands = service.scored_candidates(user_ids[u], k, plans["control"])
                if cands is not None:
                    candidates[int(u)] = cands
        finally:
            service.close()
    now_s = float(world.end_s)
    arms = Arms(
        users=users,
        rate=world.user_activity[users].astype(np.float64)
        * settings.simulator.sessions_per_user_day,
        feeds=feeds,
        p_examine={},
        p_attract={},
        completion={},
        duration={},
        true_watch_s={},
        true_clicks={},
    )
    positions = np.arange(k)[None, :]
    for arm, f in feeds.items():
        valid = f >= 0
        r = response_probabilities(world, users[:, None], np.where(valid, f, 0), positions, now_s)
        arms.p_examine[arm] = np.where(valid, r.p_examine, 0.0)
        arms.p_attract[arm] = np.where(valid, r.p_attract, 0.0)
        arms.completion[arm] = r.completion_mean
        arms.duration[arm] = world.item_duration[np.where(valid, f, 0)]
        arms.true_watch_s[arm] = np.where(valid, r.expected_watch_seconds, 0.0).sum(axis=1)
        arms.true_clicks[arm] = np.where(valid, r.p_click, 0.0).sum(axis=1)
    return arms, {"candidates": candidates, "item_index": item_index, "now_s": now_s}


def _watch(
    arms: Arms, arm: str, rows: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sampled clicks and watch seconds of one session per entry of ``rows`` (user rows)."""
    pe, pa = arms.p_examine[arm][rows], arms.p_attract[arm][rows]
    click = (rng.random(pe.shape) < pe) & (rng.random(pa.shape) < pa)
    m = np.clip(arms.completion[arm][rows], 1e-6, 1 - 1e-6)
    completion = rng.beta(BETA_CONCENTRATION * m, BETA_CONCENTRATION * (1 - m))
    seconds = click * arms.duration[arm][rows] * completion
    return click.sum(axis=1), seconds.sum(axis=1)


def _sessions(arms: Arms, rows: np.ndarray, days: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, days)`` session counts."""
    return rng.poisson(arms.rate[rows][:, None], size=(len(rows), days))


def simulate_ab(
    arms: Arms,
    rows: np.ndarray,
    treated: np.ndarray,
    arm_of: tuple[str, str],
    days: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Per user: ``(n, days)`` watch minutes per day in the experiment, and the pre-period
    total (under the first arm)."""
    counts = _sessions(arms, rows, days, rng)
    pre_counts = _sessions(arms, rows, days, rng).sum(axis=1)
    daily = np.zeros((len(rows), days))
    for day in range(days):
        for flag, arm in ((False, arm_of[0]), (True, arm_of[1])):
            who = np.flatnonzero(treated == flag)
            session_rows = np.repeat(who, counts[who, day])
            if not len(session_rows):
                continue
            _, seconds = _watch(arms, arm, rows[session_rows], rng)
            np.add.at(daily[:, day], session_rows, seconds / 60.0)
    pre = np.zeros(len(rows))
    session_rows = np.repeat(np.arange(len(rows)), pre_counts)
    if len(session_rows):
        _, seconds = _watch(arms, arm_of[0], rows[session_rows], rng)
        np.add.at(pre, session_rows, seconds / 60.0)
    return daily, pre


def assign(n: int, salt: str, share: float = 0.5) -> np.ndarray:
    """Treatment flags of ``n`` units by the service's variant hash (treatment gets the top
    ``share`` of the buckets)."""
    cut = round((1 - share) * VARIANT_BUCKETS)
    return np.fromiter((bucket(f"{salt}:u{i}", VARIANT_BUCKETS) >= cut for i in range(n)), bool, n)


def true_lift(arms: Arms, days: int, a: str = "control", b: str = "treatment") -> float:
    """Population mean of watch minutes per user over ``days``: ``b`` minus ``a``."""
    per_user = arms.rate * days * (arms.true_watch_s[b] - arms.true_watch_s[a]) / 60.0
    return float(per_user.mean())


def run_aa(
    arms: Arms, spec: BenchSpec, rng: np.random.Generator, progress: Progress
) -> dict[str, Any]:
    fixed = sequential = 0
    for run in range(spec.aa_runs):
        if run % 500 == 0:
            progress(f"A/A run {run:,} / {spec.aa_runs:,}")
        rows = rng.choice(len(arms.users), spec.users_per_run, replace=False)
        treated = assign(len(rows), f"aa-{spec.seed}-{run}")
        daily, _ = simulate_ab(arms, rows, treated, ("control", "control"), spec.days, rng)
        total = daily.sum(axis=1)
        fixed += stats.welch(total[treated], total[~treated]).p_value < 0.05
        cumulative = daily.cumsum(axis=1)
        hit = False
        for day in range(spec.days):
            y = cumulative[:, day]
            if y[treated].var() == 0 and y[~treated].var() == 0:
                continue
            lift = stats.welch(y[treated], y[~treated])
            sd = math.sqrt((y[treated].var(ddof=1) + y[~treated].var(ddof=1)) / 2)
            hit |= sd > 0 and stats.sequential_lift(lift, sd).p_value < 0.05
        sequential += hit
    return {
        "runs": spec.aa_runs,
        "alpha": 0.05,
        "users_per_run": spec.users_per_run,
        "days": spec.days,
        "metric": "watch_minutes per user",
        "false_positive_rate": fixed / spec.aa_runs,
        "false_positive_rate_se": math.sqrt(0.05 * 0.95 / spec.aa_runs),
        "sequential_false_positive_rate": sequential / spec.aa_runs,
        "sequential_looks": spec.days,
        "sequential_method": "mixture SPRT (normal mixture, tau = 0.1 pooled sd), read daily",
    }


def run_ab(
    arms: Arms, spec: BenchSpec, rng: np.random.Generator, progress: Progress
) -> dict[str, Any]:
    truth = true_lift(arms, spec.days)
    covered = covered_cuped = significant = 0
    reductions: list[float] = []
    for run in range(spec.ab_runs):
        if run % 250 == 0:
            progress(f"A/B run {run:,} / {spec.ab_runs:,}")
        rows = rng.choice(len(arms.users), spec.users_per_run, replace=False)
        treated = assign(len(rows), f"ab-{spec.seed}-{run}")
        daily, pre = simulate_ab(arms, rows, treated, ("control", "treatment"), spec.days, rng)
        y = daily.sum(axis=1)
        lift = stats.welch(y[treated], y[~treated])
        covered += lift.absolute_ci[0] <= truth <= lift.absolute_ci[1]
        significant += lift.p_value < 0.05
        adjusted = stats.cuped(y, pre)
        reductions.append(adjusted.variance_reduction)
        cuped_lift = stats.welch(adjusted.adjusted[treated], adjusted.adjusted[~treated])
        covered_cuped += cuped_lift.absolute_ci[0] <= truth <= cuped_lift.absolute_ci[1]
    base = float((arms.rate * spec.days * arms.true_watch_s["control"] / 60).mean())
    return {
        "runs": spec.ab_runs,
        "users_per_run": spec.users_per_run,
        "days": spec.days,
        "arms": {
            "control": "the published pipeline (serving.candidates retrieval candidates)",
            "treatment": f"variant overrides {TREATMENT}",
        },
        "metric": "watch_minutes per user",
        "true_control_mean": base,
        "true_lift": truth,
        "true_relative_lift": truth / base if base else None,
        "ci_coverage": covered / spec.ab_runs,
        "power": significant / spec.ab_runs,
        "cuped_variance_reduction": float(np.mean(reductions)),
        "cuped_ci_coverage": covered_cuped / spec.ab_runs,
        "cuped_covariate": (
            f"the user's watch minutes over the {spec.days} days before, under control"
        ),
    }


def run_srm(spec: BenchSpec, progress: Progress) -> dict[str, Any]:
    flagged = clean_flags = 0
    for run in range(spec.srm_runs + spec.srm_clean_runs):
        if run % 250 == 0:
            progress(f"SRM run {run:,} / {spec.srm_runs + spec.srm_clean_runs:,}")
        skewed = run < spec.srm_runs
        treated = assign(spec.srm_units, f"srm-{spec.seed}-{run}", 0.51 if skewed else 0.5)
        n_t = int(treated.sum())
        check = stats.sample_ratio(
            {"control": spec.srm_units - n_t, "treatment": n_t}, {"control": 0.5, "treatment": 0.5}
        )
        if skewed:
            flagged += check.mismatch
        else:
            clean_flags += check.mismatch
    return {
        "injected_skew": 0.01,
        "skew_definition": "treatment gets 51% of the variant buckets instead of 50%",
        "units": spec.srm_units,
        "runs": spec.srm_runs,
        "clean_runs": spec.srm_clean_runs,
        "threshold_p": stats.SRM_ALPHA,
        "detection_rate": flagged / spec.srm_runs,
        "no_flag_rate_unskewed": 1 - clean_flags / spec.srm_clean_runs,
    }


def _interleaving_run(
    arms: Arms,
    world: World,
    rows: np.ndarray,
    days: int,
    now_s: float,
    rng: np.random.Generator,
    pair: tuple[str, str] = ("control", "treatment"),
) -> np.ndarray:
    """Per unit of one interleaving experiment: control's credit minus treatment's, a team's
    credit being the watch seconds on the slots it placed (the objective's value, as
    ``feedforge experiment analyze`` credits it)."""
    counts = _sessions(arms, rows, days, rng).sum(axis=1)
    session_rows = np.repeat(np.arange(len(rows)), counts)
    k = arms.feeds[pair[0]].shape[1]
    merged = np.full((len(session_rows), k), -1, dtype=np.int64)
    teams = np.zeros((len(session_rows), k), dtype=np.int8)
    for s, r in enumerate(session_rows):
        a = [int(i) for i in arms.feeds[pair[0]][rows[r]] if i >= 0]
        b = [int(i) for i in arms.feeds[pair[1]][rows[r]] if i >= 0]
        got = team_draft([str(i) for i in a], [str(i) for i in b], k, rng)
        merged[s, : len(got.item_ids)] = [int(i) for i in got.item_ids]
        teams[s, : len(got.teams)] = got.teams
    valid = merged >= 0
    users = arms.users[rows[session_rows]]
    r = response_probabilities(
        world, users[:, None], np.where(valid, merged, 0), np.arange(k)[None, :], now_s
    )
    click = (
        (rng.random(valid.shape) < r.p_examine) & (rng.random(valid.shape) < r.p_attract) & valid
    )
    m = np.clip(r.completion_mean, 1e-6, 1 - 1e-6)
    completion = rng.beta(BETA_CONCENTRATION * m, BETA_CONCENTRATION * (1 - m))
    seconds = click * world.item_duration[np.where(valid, merged, 0)] * completion
    credit = np.zeros((len(rows), 2))
    for team in (0, 1):
        np.add.at(credit[:, team], session_rows, (seconds * (teams == team)).sum(axis=1))
    return credit[:, 0] - credit[:, 1]


def _n_for_power(grid: tuple[int, ...], power: list[float], target: float = 0.8) -> float | None:
    """Users for ``target`` power: log-linear interpolation on the grid (None: not reached)."""
    for i, p in enumerate(power):
        if p >= target:
            if i == 0:
                return float(grid[0])
            lo, hi, plo = grid[i - 1], grid[i], power[i - 1]
            t = (target - plo) / (p - plo)
            return float(math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo))))
    return None


def run_interleaving(
    arms: Arms,
    world: World,
    spec: BenchSpec,
    now_s: float,
    rng: np.random.Generator,
    progress: Progress,
    pair: tuple[str, str] = ("control", "treatment"),
    ab_grid: tuple[int, ...] | None = None,
    interleaving_grid: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Power curves of the A/B test and of interleaving on one pair of arms."""
    ab_grid = ab_grid or spec.ab_grid
    interleaving_grid = interleaving_grid or spec.interleaving_grid
    truth = true_lift(arms, spec.days, *pair)
    winner = "treatment" if truth > 0 else "control"
    ab_power = []
    for n in ab_grid:
        progress(f"A/B power at {n:,} users ({pair[1]})")
        hits = 0
        for run in range(spec.power_runs):
            rows = rng.choice(len(arms.users), n, replace=n > len(arms.users))
            treated = assign(n, f"abp-{spec.seed}-{n}-{run}")
            daily, _ = simulate_ab(arms, rows, treated, pair, spec.days, rng)
            y = daily.sum(axis=1)
            lift = stats.welch(y[treated], y[~treated])
            hits += lift.p_value < 0.05 and (lift.absolute > 0) == (winner == "treatment")
        ab_power.append(hits / spec.power_runs)
    il_power, agreement, vote_power, vote_agreement = [], [], [], []
    for n in interleaving_grid:
        progress(f"interleaving power at {n:,} users ({pair[1]})")
        hits = agree = vote_hits = vote_agree = 0
        for _ in range(spec.power_runs):
            rows = rng.choice(len(arms.users), n, replace=n > len(arms.users))
            diff = _interleaving_run(arms, world, rows, spec.days, now_s, rng, pair)
            # The decision of `experiment analyze`: the mean credit difference's t-test.
            preferred = "control" if diff.mean() > 0 else "treatment"
            if diff.std() > 0:
                hits += sps.ttest_1samp(diff, 0.0).pvalue < 0.05 and preferred == winner
            agree += diff.mean() != 0 and preferred == winner
            # The classic per-user vote (sign test), for comparison.
            wins_c, wins_t = int((diff > 0).sum()), int((diff < 0).sum())
            voted = "control" if wins_c > wins_t else "treatment"
            if wins_c + wins_t:
                p = sps.binomtest(wins_c, wins_c + wins_t, 0.5).pvalue
                vote_hits += p < 0.05 and voted == winner
            vote_agree += wins_c != wins_t and voted == winner
        il_power.append(hits / spec.power_runs)
        agreement.append(agree / spec.power_runs)
        vote_power.append(vote_hits / spec.power_runs)
        vote_agreement.append(vote_agree / spec.power_runs)
    n_ab = _n_for_power(ab_grid, ab_power)
    n_il = _n_for_power(interleaving_grid, il_power)
    at = next((i for i, p in enumerate(il_power) if p >= 0.8), len(il_power) - 1)
    return {
        "pair": list(pair),
        "true_lift": truth,
        "ab_winner": pair[1] if winner == "treatment" else pair[0],
        "runs_per_size": spec.power_runs,
        "days": spec.days,
        "ab_grid": list(ab_grid),
        "ab_power": ab_power,
        "interleaving_grid": list(interleaving_grid),
        "interleaving_power": il_power,
        "interleaving_test": "one-sample t-test of the per-user credit difference",
        "vote_power": vote_power,
        "vote_agreement_with_ab": vote_agreement,
        "users_for_80pct_power": n_il,
        "ab_users_for_80pct_power": n_ab,
        "ratio": n_ab / n_il if n_ab and n_il else None,
        "agreement_with_ab": agreement[at],
        "agreement": agreement,
        "agreement_at_users": interleaving_grid[at],
        "credit": (
            "watch seconds on each team's slots (the objective's value); preference per user, "
            "sign test"
        ),
    }


def run_experiments_bench(
    settings: Settings, out_dir: Path, spec: BenchSpec, progress: Progress, k: int = 10
) -> dict[str, Any]:
    """The whole benchmark; writes ``experiments.json`` and ``.md`` into ``out_dir``."""
    from feedforge.bench.experiments_ope import run_ope

    started = time.perf_counter()
    rng = np.random.default_rng(spec.seed)
    with tempfile.TemporaryDirectory(prefix="ff-bench-exp-") as tmp:
        workdir, world = build_world(settings, Path(tmp) / "w", progress)
        arms, extra = compute_arms(settings, workdir, world, k, progress)
    report: dict[str, Any] = {
        "world": {
            "users": world.n_users,
            "items": world.n_items,
            "days": settings.simulator.n_days,
            "sessions_per_user_day": settings.simulator.sessions_per_user_day,
            "ranker": settings.models.ranker.type,
            "feed_size": k,
        }
    }
    report["aa"] = run_aa(arms, spec, rng, progress)
    report["ab"] = run_ab(arms, spec, rng, progress)
    report["srm"] = run_srm(spec, progress)
    report["interleaving"] = run_interleaving(arms, world, spec, extra["now_s"], rng, progress)
    report["interleaving_retrieval_order"] = run_interleaving(
        arms,
        world,
        spec,
        extra["now_s"],
        rng,
        progress,
        pair=("control", ORDER_ARM),
        ab_grid=ORDER_AB_GRID,
        interleaving_grid=ORDER_INTERLEAVING_GRID,
    )
    report["ope"] = run_ope(world, extra, spec, rng, progress)
    report.update(run_info(started))
    write_report(out_dir, "experiments", report, render_markdown(report))
    return report


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _check(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _users(n: float | None) -> str:
    return "not reached on the grid" if n is None else f"{n:,.0f}"


def _interleaving_rows(il: dict[str, Any]) -> list[str]:
    ratio = il["ratio"]
    name = " vs ".join(str(p) for p in il["pair"]) if isinstance(il["pair"], list) else il["pair"]
    return [
        f"| {name}: users for 80% power, interleaving / A/B | "
        f"{_users(il['users_for_80pct_power'])} / {_users(il['ab_users_for_80pct_power'])}"
        + (f" (ratio {ratio:.1f}x)" if ratio else "")
        + f" | ratio >= 10x | {_check(ratio is not None and ratio >= 10)} |",
        f"| {name}: interleaving agrees with the A/B winner (at "
        f"{il['agreement_at_users']:,} users) | {_pct(il['agreement_with_ab'])} | >= 95% | "
        f"{_check(il['agreement_with_ab'] >= 0.95)} |",
    ]


def _curves(il: dict[str, Any]) -> list[str]:
    def row(label: str, values: list[float]) -> str:
        return f"| {label} | " + " | ".join(_pct(v) for v in values) + " |"

    name = " vs ".join(str(p) for p in il["pair"]) if isinstance(il["pair"], list) else il["pair"]
    return [
        f"{name}:",
        "",
        "| A/B users | " + " | ".join(f"{n:,}" for n in il["ab_grid"]) + " |",
        "|---" * (len(il["ab_grid"]) + 1) + "|",
        row("power", il["ab_power"]),
        "",
        "| interleaving users | " + " | ".join(f"{n:,}" for n in il["interleaving_grid"]) + " |",
        "|---" * (len(il["interleaving_grid"]) + 1) + "|",
        row("power (credit t-test, the decision)", il["interleaving_power"]),
        row("agreement with the A/B winner (sign of the mean credit)", il["agreement"]),
        row("power of the per-user vote (sign test)", il["vote_power"]),
        row("agreement of the vote with the A/B winner", il["vote_agreement_with_ab"]),
        "",
    ]


def render_markdown(report: dict[str, Any]) -> str:
    """The committed table."""
    aa, ab, srm, il, ope = (report[k] for k in ("aa", "ab", "srm", "interleaving", "ope"))
    fpr_ok = 0.04 <= aa["false_positive_rate"] <= 0.06
    lines = [
        "# Experiments benchmark (simulator ground truth)",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']['cpus']} CPUs, Python {report['machine']['python']}; "
        f"{report['total_seconds']:.0f} s in all.",
        "",
        f"World: {report['world']['users']:,} users, {report['world']['items']:,} items, "
        f"ranker {report['world']['ranker']}; feeds of {report['world']['feed_size']} items "
        "computed once per user and arm by the in-process service (arms: control, the "
        f"published pipeline; treatment, the override {TREATMENT}; {ORDER_ARM}, the "
        "override {'ranker': False}); users, sessions, "
        "assignment (the service's hash, a fresh salt per run) and responses drawn per run.",
        "",
        "| section | measured | target | |",
        "|---|---|---|---|",
        f"| A/A false-positive rate at 0.05 ({aa['runs']:,} runs x {aa['users_per_run']:,} users) "
        f"| {_pct(aa['false_positive_rate'])} (SE {_pct(aa['false_positive_rate_se'])}) "
        f"| 4-6% | {_check(fpr_ok)} |",
        f"| A/A always-valid test read daily ({aa['sequential_looks']} looks) | "
        f"{_pct(aa['sequential_false_positive_rate'])} | <= 6% | "
        f"{_check(aa['sequential_false_positive_rate'] <= 0.06)} |",
        f"| A/B 95% CI coverage of the true lift ({ab['runs']:,} runs; true lift "
        f"{ab['true_lift']:.3f} min/user, {_pct(ab['true_relative_lift'])}) "
        f"| {_pct(ab['ci_coverage'])} "
        f"| >= 93% | {_check(ab['ci_coverage'] >= 0.93)} |",
        f"| A/B power at {ab['users_per_run']:,} users | {_pct(ab['power'])} | reported | |",
        f"| CUPED variance reduction (watch minutes) | {_pct(ab['cuped_variance_reduction'])} "
        f"(CUPED CI coverage {_pct(ab['cuped_ci_coverage'])}) | reported | |",
        f"| SRM: 1-point skew at {srm['units']:,} units flagged ({srm['runs']} runs) | "
        f"{_pct(srm['detection_rate'])} | >= 95% | {_check(srm['detection_rate'] >= 0.95)} |",
        f"| SRM: unskewed runs not flagged ({srm['clean_runs']} runs) | "
        f"{_pct(srm['no_flag_rate_unskewed'])} | >= 99% "
        f"| {_check(srm['no_flag_rate_unskewed'] >= 0.99)} |",
    ]
    pairs = [il] + (
        [report["interleaving_retrieval_order"]] if "interleaving_retrieval_order" in report else []
    )
    for pair in pairs:
        lines += _interleaving_rows(pair)
    for policy in ope["policies"]:
        for name in ("snips", "dr"):
            est = policy["estimates"][name]
            lines.append(
                f"| OPE {policy['name']}: {name} relative error "
                f"(true {policy['true_value']:.4f}) | "
                f"{_pct(est['relative_error'])} | <= 5% | {_check(est['relative_error'] <= 0.05)} |"
            )
    lines.append(
        f"| OPE 95% interval coverage (SNIPS and DR, {ope['runs']} runs x {len(ope['policies'])} "
        f"policies) | {_pct(ope['ci_coverage'])} | >= 90% | {_check(ope['ci_coverage'] >= 0.90)} |"
    )
    lines += [
        "",
        "Power curves (share of runs significant at 0.05 in the true direction):",
        "",
        *(line for pair in pairs for line in _curves(pair)),
        "OPE (one logged data set of the first run shown; coverage over all runs):",
        "",
        "| policy | true value | " + " | ".join(ope["estimators"]) + " | ESS | support |",
        "|---" * (len(ope["estimators"]) + 4) + "|",
    ]
    for policy in ope["policies"]:
        cells = [
            f"{policy['estimates'][e]['value']:.4f} [{policy['estimates'][e]['ci'][0]:.4f}, "
            f"{policy['estimates'][e]['ci'][1]:.4f}]"
            for e in ope["estimators"]
        ]
        lines.append(
            f"| {policy['name']} | {policy['true_value']:.4f} | "
            + " | ".join(cells)
            + f" | {policy['ess']:.0f} | {_pct(policy['support'])} |"
        )
    lines += ["", ope["setup"], ""]
    return "\n".join(lines)
