"""The spec section of kind ``bandit``: off-policy evaluation of a bandit policy on logged feedback."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Optional

from pydantic import Field

from .sections import Section

if TYPE_CHECKING:
    from .job import JobSpec

POLICIES = ("bernoulli_ts", "epsilon_greedy", "softmax", "linucb", "linear_ts")
ESTIMATORS = ("ips", "snips", "dm", "dr", "switch_dr", "dr_os")


class PolicySpec(Section):
    """The evaluation policy; parameters of other policies are ignored."""

    name: Literal[POLICIES] = "bernoulli_ts"  # type: ignore[valid-type]
    prior: Literal["uniform", "zozotown"] = Field("zozotown", description="bernoulli_ts: Beta prior per item")
    learn: bool = Field(False, description="bernoulli_ts: update the prior with the learning rounds")
    n_sim: int = Field(100_000, ge=1, description="bernoulli_ts, linear_ts: simulated draws for the marginals")
    seed: int = 12345
    epsilon: float = Field(0.1, ge=0.0, le=1.0, description="epsilon_greedy: share of uniformly random slates")
    temperature: float = Field(0.01, gt=0.0, description="softmax: scores (click probabilities) / temperature")
    alpha: float = Field(1.0, ge=0.0, description="linucb: width of the confidence bonus")
    v: float = Field(0.1, gt=0.0, description="linear_ts: posterior scale")
    reg: float = Field(1.0, gt=0.0, description="linucb, linear_ts: ridge regulariser")

    @property
    def learns(self) -> bool:
        return self.name != "bernoulli_ts" or self.learn


class RewardModelSpec(Section):
    folds: int = Field(3, ge=1, description="cross-fitting folds (1: fit and predict on the same rounds)")
    seed: int = 12345


class BootstrapSpec(Section):
    samples: int = Field(1000, ge=0, description="bootstrap resamples for the intervals (0: none)")
    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="1 - confidence level")
    seed: int = 12345


class BanditSpec(Section):
    policy: PolicySpec = Field(default_factory=PolicySpec)
    learn_fraction: float = Field(0.0, ge=0.0, lt=1.0,
                                  description="first share of rounds (by time) the policy learns from; "
                                              "the estimators use the rest")
    estimators: list[Literal[ESTIMATORS]] = Field(default_factory=lambda: list(ESTIMATORS))  # type: ignore[valid-type]
    reward_model: RewardModelSpec = Field(default_factory=RewardModelSpec)
    bootstrap: BootstrapSpec = Field(default_factory=BootstrapSpec)
    switch_tau: float = Field(100.0, gt=0.0, description="switch_dr: importance weights above tau use DM alone")
    dr_os_lambda: float = Field(100.0, ge=0.0, description="dr_os: shrinkage of the importance weights")
    on_policy_reference: Optional[Literal["random", "bts"]] = Field(
        "bts", description="logs whose mean reward is the ground truth the estimates are compared with")


def checks(spec: JobSpec, steps: list[str]) -> list[str]:
    bandit = spec.bandit or BanditSpec()
    problems = []
    if spec.data.source not in ("open-bandit", "served-logs"):
        problems.append(f"data.source: kind bandit evaluates logged bandit feedback; use open-bandit or "
                        f"served-logs, not {spec.data.source!r}")
    elif spec.data.source == "served-logs":
        if not spec.data.path:
            problems.append("data.path: served-logs needs the serve run directory (its logs/ folder)")
        if bandit.policy.name not in ("epsilon_greedy", "softmax"):
            problems.append(f"bandit.policy.name: served logs hold a ranker's scores per decision; evaluate "
                            f"epsilon_greedy or softmax over them, not {bandit.policy.name!r}")
        return problems
    if bandit.policy.learns and bandit.learn_fraction == 0.0:
        problems.append(f"bandit.learn_fraction: policy {bandit.policy.name!r} learns from logged rounds; "
                        "give it a share in (0, 1) (evaluating on the rounds it learnt from is biased)")
    if not bandit.estimators:
        problems.append("bandit.estimators: empty; choose from " + ", ".join(ESTIMATORS))
    return problems


