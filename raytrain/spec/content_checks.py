"""What the content-based recommender (model.arch content, ``models.content``) needs: the checks of spec.training."""

from __future__ import annotations

from typing import Any


def content_checks(spec: Any, steps: list[str]) -> list[str]:
    """What the content-based recommender (``models.content``) needs: item text, and a kind that uses a fitted model
    (it has no hyper-parameters to tune and nothing to distill into)."""
    problems = []
    if spec.data.text is None:
        problems.append("model.arch: content compares item texts; give data.text (the item text columns)")
    for kind in [k for k in steps if k in ("tune", "distill")]:
        problems.append(f"model.arch: content is fitted, not trained by steps: kind train, or a member of an "
                        f"ensemble or serve variant, not {kind}")
    if spec.train.cross_validation is not None:
        problems.append("train.cross_validation: not for model.arch content in this version")
    return problems
