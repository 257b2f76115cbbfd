"""Ray Tune's search algorithm and trial scheduler for a spec's ``tune`` section."""

from __future__ import annotations

from ..spec.job import JobSpec
from ..spec.tune_space import parse_dist, tune_of


def searcher(spec: JobSpec):
    from ray.tune.search import BasicVariantGenerator

    s = tune_of(spec).search
    points = [dict(p) for p in s.points_to_evaluate] or None
    if s.algorithm in ("random", "grid"):
        # Tune ignores TuneConfig.max_concurrent_trials for a BasicVariantGenerator (it warns and starts every
        # trial the CPUs allow), so the limit goes to the generator itself
        return BasicVariantGenerator(random_state=s.seed, points_to_evaluate=points,
                                     max_concurrent=tune_of(spec).max_concurrent_trials)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    # Optuna samples its first 10 trials at random by default: a 9-trial "TPE" run would be random search
    startup = s.startup_trials if s.startup_trials is not None else max(2, tune_of(spec).num_samples // 3)
    sampler = (optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=startup) if s.algorithm == "optuna_tpe"
               else optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=startup))
    return OptunaSearch(sampler=sampler, points_to_evaluate=points)


def scheduler(spec: JobSpec):
    from ray.tune.schedulers import (
        ASHAScheduler,
        FIFOScheduler,
        HyperBandScheduler,
        MedianStoppingRule,
        PopulationBasedTraining,
    )

    sc = tune_of(spec).scheduler
    if sc.name == "pbt":
        mutations = {key: parse_dist(text).to_tune() for key, text in tune_of(spec).space.items()}
        return PopulationBasedTraining(time_attr="epoch", perturbation_interval=sc.perturbation_interval,
                                       hyperparam_mutations=mutations, quantile_fraction=sc.quantile_fraction,
                                       resample_probability=sc.resample_probability, synch=sc.synch)
    max_t = sc.max_t or spec.train.epochs
    if sc.name == "asha":
        return ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=sc.grace_period,
                             reduction_factor=sc.reduction_factor)
    if sc.name == "hyperband":
        return HyperBandScheduler(time_attr="epoch", max_t=max_t, reduction_factor=sc.reduction_factor)
    if sc.name == "median_stopping":
        return MedianStoppingRule(time_attr="epoch", grace_period=sc.grace_period,
                                  min_samples_required=sc.min_samples_required)
    return FIFOScheduler()
