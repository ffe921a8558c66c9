"""Profiles and drift statistics, cross-checked against scipy on the same data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr

from feedforge.config import MonitoringConfig
from feedforge.monitoring.drift import (
    PSI_FLOOR,
    compare,
    js_divergence,
    ks_statistic,
    psi,
    recent,
)
from feedforge.monitoring.profile import (
    OTHER,
    Profile,
    ProfileAccumulator,
    quantile_edges,
    reference_profile,
)

RNG = np.random.default_rng(7)


def _bin_index(values: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    return np.searchsorted(np.asarray(edges), values, side="right")


def test_quantile_bins_hold_equal_shares_and_few_values_get_a_bin_each() -> None:
    x = RNG.normal(size=100_000)
    edges = quantile_edges(x, 20)
    assert len(edges) == 19
    shares = np.bincount(_bin_index(x, edges), minlength=20) / len(x)
    assert np.allclose(shares, 0.05, atol=0.002)
    assert quantile_edges(np.array([0.0, 1.0, 1.0, 2.0, np.nan]), 20) == (1.0, 2.0)
    assert quantile_edges(np.array([np.nan]), 20) == ()


def test_profiles_merge_exactly_and_survive_the_store_form() -> None:
    a, b = RNG.exponential(size=5_000), RNG.exponential(size=3_000) * 2
    a[:10] = np.nan
    ref = reference_profile({"x": a}, {"c": np.array(["p", "q", "q"])}, bins=10, defaults={"x": 0})
    parts = []
    for values, cats in ((a, ["p", "r"]), (b, ["q"])):
        acc = ProfileAccumulator(ref.spec)
        acc.add_columns({"x": values}, {"c": cats})
        parts.append(acc.take())
    merged = parts[0].merge(parts[1])
    whole = ProfileAccumulator(ref.spec)
    whole.add_columns({"x": np.concatenate([a, b])}, {"c": ["p", "r", "q"]})
    expected = whole.take()
    for name in ("x", "c"):
        assert np.array_equal(merged.counts[name].bins, expected.counts[name].bins)
        assert merged.counts[name].nulls == expected.counts[name].nulls
    assert merged.counts["x"].nulls == 10
    assert merged.rows == 8_000
    # "r" was not in the reference: it counts as the other category.
    assert merged.counts["c"].bins[ref.spec.columns[1].categories.index(OTHER)] == 1
    # The store's flat fields (what workers add up) give the same profile back, per window.
    fields = parts[0].to_fields(3600)
    for key, n in parts[1].to_fields(7200).items():
        fields[key] = fields.get(key, 0) + n
    windows = Profile.windows_from_fields(ref.spec, fields)
    assert sorted(windows) == [3600, 7200]
    assert np.array_equal(windows[3600].counts["x"].bins, parts[0].counts["x"].bins)
    assert windows[7200].rows == 3_000
    back = recent(windows, 10**9, ref.spec.empty())
    assert np.array_equal(back.counts["x"].bins, expected.counts["x"].bins)


def test_a_profile_file_round_trips(tmp_path: pytest.TempPathFactory) -> None:
    x = RNG.normal(size=1_000)
    ref = reference_profile({"x": x}, {"c": np.array(["a", "b"])}, meta={"version": "v1"})
    path = tmp_path / "p.json"  # type: ignore[operator]
    ref.save(path)
    back = Profile.load(path)
    assert back.spec == ref.spec
    assert back.meta == {"version": "v1"}
    assert np.array_equal(back.counts["x"].bins, ref.counts["x"].bins)


def test_ks_is_scipys_statistic_of_the_bin_indices_and_close_to_the_raw_one() -> None:
    base, served = RNG.normal(size=20_000), RNG.normal(0.15, 1.1, size=15_000)
    ref = reference_profile({"x": base}, bins=20)
    acc = ProfileAccumulator(ref.spec)
    acc.add_columns({"x": served})
    ours = ks_statistic(ref.counts["x"], acc.take().counts["x"])
    edges = ref.spec.columns[0].edges
    binned = stats.ks_2samp(_bin_index(base, edges), _bin_index(served, edges)).statistic
    assert ours == pytest.approx(binned, abs=1e-12)
    raw = stats.ks_2samp(base, served).statistic
    assert ours <= raw + 1e-12
    assert raw - ours < 1 / 20  # within one quantile bin's share


def test_psi_is_the_symmetric_kl_divergence_scipy_computes() -> None:
    base, served = RNG.gamma(2.0, size=10_000), RNG.gamma(2.5, size=10_000)
    ref = reference_profile({"x": base}, bins=10)
    acc = ProfileAccumulator(ref.spec)
    acc.add_columns({"x": served})
    now = acc.take()
    ours = psi(ref.counts["x"], now.counts["x"])
    p = np.maximum(np.append(ref.counts["x"].bins, 0) / len(base), PSI_FLOOR)
    q = np.maximum(np.append(now.counts["x"].bins, 0) / len(served), PSI_FLOOR)
    assert ours == pytest.approx(float(np.sum(rel_entr(q, p) + rel_entr(p, q))), rel=1e-12)
    assert psi(ref.counts["x"], ref.counts["x"]) == pytest.approx(0.0, abs=1e-12)


def test_js_is_scipys_jensen_shannon_divergence_in_bits() -> None:
    cats = np.array(["tv", "web", "mobile"])
    base = RNG.choice(cats, size=5_000, p=[0.5, 0.3, 0.2])
    served = RNG.choice(cats, size=4_000, p=[0.2, 0.3, 0.5])
    ref = reference_profile({}, {"device": base})
    acc = ProfileAccumulator(ref.spec)
    acc.add_columns({}, {"device": list(served)})
    now = acc.take()
    ours = js_divergence(ref.counts["device"], now.counts["device"])
    p = np.append(ref.counts["device"].bins, 0) / len(base)
    q = np.append(now.counts["device"].bins, 0) / len(served)
    assert ours == pytest.approx(jensenshannon(p, q, base=2) ** 2, rel=1e-9)


def test_a_shift_is_flagged_and_the_same_distribution_is_not() -> None:
    config = MonitoringConfig(drift_min_rows=1_000)
    base = RNG.normal(size=50_000)
    ref = reference_profile(
        {"same": base, "shifted": base, "dead": base}, {"device": np.repeat(["tv", "web"], 25_000)}
    )
    acc = ProfileAccumulator(ref.spec)
    acc.add_columns(
        {
            "same": RNG.normal(size=5_000),
            "shifted": RNG.normal(0.5, 1.0, size=5_000),
            "dead": np.zeros(5_000),
        },
        {"device": ["tv"] * 4_000 + ["web"] * 1_000},
    )
    drift = {d.feature: d for d in compare(ref, acc.take(), config)}
    assert not drift["same"].drifted, drift["same"]
    assert drift["shifted"].drifted and "psi" in drift["shifted"].reason
    assert drift["dead"].drifted and drift["dead"].statistic == "ks"
    assert drift["device"].statistic == "js" and drift["device"].drifted
    # Too few served rows: reported, never flagged.
    few = ProfileAccumulator(ref.spec)
    few.add_columns({"shifted": RNG.normal(3.0, 1.0, size=100)})
    assert not {d.feature: d for d in compare(ref, few.take(), config)}["shifted"].drifted


def test_defaults_and_nulls_are_counted() -> None:
    ref = reference_profile({"ctr": np.full(100, 0.2)}, defaults={"ctr": 0.1})
    acc = ProfileAccumulator(ref.spec)
    acc.add_columns({"ctr": np.array([0.1, 0.1, np.nan, 0.3])})
    served = acc.take()
    assert served.counts["ctr"].defaults == 2
    assert served.counts["ctr"].nulls == 1
    (drift,) = compare(ref, served, MonitoringConfig(drift_min_rows=1))
    assert drift.default_rate == pytest.approx(0.5)
    assert drift.null_rate == pytest.approx(0.25)


# Evidently's import warns about its own dependencies (numpy.core, litestar).
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_psi_and_js_agree_with_evidently_on_the_same_bins() -> None:
    import pandas as pd
    from evidently.legacy.calculations.stattests import (
        jensenshannon_stat_test,
        psi_stat_test,
    )
    from evidently.legacy.core import ColumnType

    base, served = RNG.lognormal(size=30_000), RNG.lognormal(0.2, 1.1, size=20_000)
    ref = reference_profile({"x": base}, bins=20)
    acc = ProfileAccumulator(ref.spec)
    acc.add_columns({"x": served})
    now = acc.take()
    edges = ref.spec.columns[0].edges
    # Evidently bins a column of at most 20 values by value: give it our bin indices.
    ref_idx = pd.Series(_bin_index(base, edges))
    cur_idx = pd.Series(_bin_index(served, edges))
    theirs_psi = psi_stat_test.func(ref_idx, cur_idx, ColumnType.Numerical, 0.1)[0]
    assert psi(ref.counts["x"], now.counts["x"]) == pytest.approx(theirs_psi, rel=1e-9)
    theirs_js = jensenshannon_stat_test.func(ref_idx, cur_idx, ColumnType.Numerical, 0.1, base=2)[0]
    assert js_divergence(ref.counts["x"], now.counts["x"]) == pytest.approx(theirs_js**2, rel=1e-9)


def test_the_significance_gates_hold_their_false_positive_rate_when_nothing_moved() -> None:
    # 2,000 pairs of samples of one distribution: each gate should pass ~alpha of them.
    from feedforge.monitoring.drift import ks_critical, psi_critical

    alpha, runs = 0.05, 2_000
    ref = reference_profile({"x": RNG.normal(size=50_000)}, bins=20)
    passed = {"psi": 0, "ks": 0}
    for _ in range(runs):
        base, served = ProfileAccumulator(ref.spec), ProfileAccumulator(ref.spec)
        base.add_columns({"x": RNG.normal(size=2_000)})
        served.add_columns({"x": RNG.normal(size=500)})
        b, s = base.take().counts["x"], served.take().counts["x"]
        passed["psi"] += psi(b, s) > psi_critical(b, s, alpha)
        passed["ks"] += ks_statistic(b, s) > ks_critical(b, s, alpha)
    # Binomial(2000, 0.05): sd 0.5 pp; the KS critical value is conservative on bins.
    assert 0.03 < passed["psi"] / runs < 0.075, passed
    assert passed["ks"] / runs < 0.075, passed


def test_small_and_large_batches_bin_alike() -> None:
    values = np.concatenate([RNG.normal(size=997), [np.nan, 0.0, 0.0]])
    ref = reference_profile({"x": RNG.normal(size=5_000), "y": RNG.normal(size=5_000)})
    edge = ref.spec.columns[0].edges[3]
    values[:5] = edge  # ties at a cut point go to the bin above it on both paths
    large, small = ProfileAccumulator(ref.spec), ProfileAccumulator(ref.spec)
    large.add_columns({"x": values, "y": -values})  # searchsorted, column by column
    for start in range(0, len(values), 100):  # the request path's broadcast comparison
        chunk = values[start : start + 100]
        small.add_columns({"x": chunk, "y": -chunk})
    a, b = large.take(), small.take()
    for name in ("x", "y"):
        assert np.array_equal(a.counts[name].bins, b.counts[name].bins)
        assert a.counts[name].nulls == b.counts[name].nulls == 1


def test_drift_alpha_bounds_the_chance_a_check_flags_any_column_when_nothing_moved() -> None:
    # 10 unshifted columns, effect thresholds out of the way: only significance decides.
    names = [f"c{j}" for j in range(10)]
    ref = reference_profile({n: RNG.normal(size=20_000) for n in names}, bins=10)
    config = MonitoringConfig(
        drift_alpha=0.1, psi_threshold=1e-9, ks_threshold=1e-9, drift_min_rows=1, drift_ignore=[]
    )
    runs, any_flagged = 400, 0
    for _ in range(runs):
        base, served = ProfileAccumulator(ref.spec), ProfileAccumulator(ref.spec)
        base.add_columns({n: RNG.normal(size=1_000) for n in names})
        served.add_columns({n: RNG.normal(size=500) for n in names})
        any_flagged += any(d.drifted for d in compare(base.take(), served.take(), config))
    # Without the division by 10 columns this would be about 1 - 0.9**10 (65%) or more.
    assert any_flagged / runs < 0.15, any_flagged
