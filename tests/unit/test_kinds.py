"""The registry of job kinds and their rules: every kind declared once; its runner looked up in the registry by the
CLI and the pipeline, its rule (section, checks) in spec.job by the loader."""

from __future__ import annotations

import pytest

from raytrain.cli.main import run_spec
from raytrain.errors import SpecError
from raytrain.kinds import KINDS
from raytrain.kinds.base import Kind
from raytrain.spec import parse_spec
from raytrain.spec.job import RULES, JobSpec, Rule
from raytrain.spec.pipeline import steps_in_order


def test_every_kind_is_a_spec_kind_with_its_own_section_field():
    assert list(KINDS) == list(RULES) == list(JobSpec.model_fields["kind"].annotation.__args__)
    for name, kind in KINDS.items():
        assert kind.name == name and kind.outputs and RULES[name].name == name
        assert (kind.step is not None) == RULES[name].step
        if RULES[name].section is not None:
            assert RULES[name].section == name and JobSpec.model_fields[name].default is None
    # exactly the kinds that run as a step may stand in pipeline.steps
    assert steps_in_order() == ["train", "tune", "ensemble", "distill", "serve"]
    with pytest.raises(SpecError, match="pipeline.steps: 'bandit' cannot be a step; steps: train, tune, ensemble, "
                                        "distill, serve"):
        parse_spec({"name": "p", "kind": "pipeline", "pipeline": {"steps": ["bandit"]}})


def test_run_spec_dispatches_through_the_registry_and_tracks_the_summary(monkeypatch, tmp_path):
    calls = []

    def fake_run(spec, address):
        calls.append((spec.kind, address))
        return {"run_dir": str(tmp_path)}

    monkeypatch.setitem(KINDS, "ensemble", Kind(name="ensemble", run=fake_run, outputs=("x",)))
    tracked = []
    monkeypatch.setattr("raytrain.tracking.record", lambda spec, summary: tracked.append(summary))
    spec = parse_spec({"name": "e", "kind": "ensemble", "ensemble": {"runs": ["a", "b"]}})
    run_spec(spec, "ray://somewhere")
    assert calls == [("ensemble", "ray://somewhere")] and tracked == [{"run_dir": str(tmp_path)}]


def test_a_kinds_checks_and_section_rules_come_from_its_rule(monkeypatch):
    monkeypatch.setitem(RULES, "ensemble", Rule("ensemble", "ensemble", "members",
                                                checks=lambda spec, steps: [f"ensemble: checked with {steps}"]))
    with pytest.raises(SpecError) as e:
        parse_spec({"name": "e", "kind": "ensemble"})
    assert e.value.problems == ["ensemble: an ensemble spec needs an 'ensemble' section (members)"]
    with pytest.raises(SpecError) as e:
        parse_spec({"name": "e", "kind": "ensemble", "ensemble": {"runs": ["a"]}})
    assert e.value.problems == ["ensemble: checked with ['ensemble']"]
    with pytest.raises(SpecError) as e:  # this declaration has no pipeline step
        parse_spec({"name": "e", "kind": "train", "ensemble": {"runs": ["a", "b"]}})
    assert e.value.problems == ["ensemble: only for kind ensemble"]
    monkeypatch.undo()
    with pytest.raises(SpecError, match="ensemble: only for kind ensemble or pipeline"):
        parse_spec({"name": "e", "kind": "train", "ensemble": {"runs": ["a", "b"]}})
