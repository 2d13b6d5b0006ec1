"""CATTSConfig: one declaration per field, from which validation, the environment variables,
``catts config`` and the graph's context schema (Studio's configuration panel) all come."""

from __future__ import annotations

import re
import typing

import pytest

from catts_graph import CATTSConfig, ConfigError, build_graph
from catts_graph.cli import main
from catts_graph.testing import ScriptedVLM

FIELDS = list(CATTSConfig.model_fields)
SCHEMA = CATTSConfig.model_json_schema()["properties"]


def _number_schema(name: str) -> dict[str, typing.Any]:
    schema = SCHEMA[name]
    return next((s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"), schema)


def _outside(name: str) -> list[typing.Any]:
    """Values just outside the field's declared bounds, as the schema states them."""
    schema = _number_schema(name)
    step = 1 if schema["type"] == "integer" else 0.5
    values = []
    if "minimum" in schema:
        values.append(schema["minimum"] - step)
    if "exclusiveMinimum" in schema:
        values.append(schema["exclusiveMinimum"])
    if "maximum" in schema:
        values.append(schema["maximum"] + step)
    if "exclusiveMaximum" in schema:
        values.append(schema["exclusiveMaximum"])
    return [float(v) if step == 0.5 else v for v in values]


NUMBERS = [name for name in FIELDS if _number_schema(name).get("type") in ("integer", "number")]
BOUNDED = [(name, value) for name in NUMBERS for value in _outside(name)]


def test_every_number_field_declares_its_bounds():
    # validate() used to list the fields by bound; now each field's type states its own.
    unbounded = [name for name in NUMBERS if not _outside(name)]
    assert unbounded == [], f"number fields without bounds: {unbounded}"


@pytest.mark.parametrize(("name", "value"), BOUNDED)
def test_a_value_out_of_bounds_is_an_error_naming_the_field_and_its_range(name, value):
    with pytest.raises(ConfigError, match=rf"^{name} must be .*, got {re.escape(repr(value))}") as raised:
        CATTSConfig(**{name: value})
    assert raised.value.fields == (name,)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_samples": 0}, "n_samples must be an integer >= 1, got 0"),
        ({"top_k": -1}, "top_k must be an integer >= 0, got -1"),
        ({"noise_step": 1000}, r"noise_step must be an integer in \[0, 1000\), got 1000"),
        ({"tau2": 1.5}, r"tau2 must be in \[0, 1\], got 1.5"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
        ({"top_eta": 0.0}, r"top_eta must be in \(0, 1\] or None \(off\), got 0.0"),
        ({"step_floor": -0.1}, r"step_floor must be in \[0, 1\] or None \(off\), got -0.1"),
        (
            {"repair_temperature": -1},
            r"repair_temperature must be >= 0 or None \(the run's temperature\), got -1",
        ),
        ({"url_timeout": 0.0}, "url_timeout must be > 0, got 0.0"),
        ({"max_aspect_ratio": 0.5}, "max_aspect_ratio must be >= 1, got 0.5"),
        ({"temperature": -1.0}, "temperature must be >= 0, got -1.0"),
        ({"allow_url_fetch": 1}, "allow_url_fetch must be True or False, got 1"),
        ({"step_calibrator": "  "}, "step_calibrator must be a non-blank string, got '  '"),
        ({"disabled_modules": "self_reflection"}, "disabled_modules must be a list of strings"),
        ({"disabled_modules": ["critic"]}, r"disabled_modules\[0\] must be one of 'self_consistency', "),
        ({"n_sampels": 4}, r"n_sampels is not a CATTSConfig field \(did you mean n_samples\?\)"),
        ({"n_samples": 0, "tau2": 2.0}, r"n_samples must be .* \(and 1 more\)$"),
    ],
)
def test_errors_say_what_was_expected(changes, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        CATTSConfig(**changes)


def test_rules_between_fields_name_both_fields():
    with pytest.raises(ConfigError, match=r"max_samples \(4\) must be >= n_samples \(8\)") as raised:
        CATTSConfig(max_samples=4)
    assert raised.value.fields == ("max_samples", "n_samples")
    # Checked on the whole config: a replace that moves both together is fine.
    assert CATTSConfig().replace(n_samples=64, max_samples=64).n_samples == 64


def test_replace_and_validate_check_the_whole_config():
    config = CATTSConfig(n_samples=4)
    assert config.replace(seed=3) == CATTSConfig(n_samples=4, seed=3)
    assert config.replace(seed=3) is not config and config.seed == 0
    with pytest.raises(ConfigError, match="^seed must be an integer >= 0"):
        config.replace(seed=-1)
    config.tau2 = 7.0  # assignment is not checked (as on the dataclass it was); validate() is
    with pytest.raises(ConfigError, match=r"^tau2 must be in \[0, 1\], got 7.0"):
        config.validate()


def test_a_json_list_is_a_tuple():
    # Studio's context and the server's JSON have no tuples.
    config = CATTSConfig(disabled_modules=["self_reflection"])
    assert config.disabled_modules == ("self_reflection",)


# -- the environment ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "raw", "field", "value"),
    [
        ("CATTS_N_SAMPLES", "16", "n_samples", 16),
        ("CATTS_SEED", " 7 ", "seed", 7),
        ("CATTS_TAU1", "0.25", "tau1", 0.25),
        ("CATTS_TEMPERATURE", "1", "temperature", 1.0),
        ("CATTS_ALLOW_URL_FETCH", "yes", "allow_url_fetch", True),
        ("CATTS_ALLOW_URL_FETCH", "true", "allow_url_fetch", True),
        ("CATTS_ALLOW_URL_FETCH", "1", "allow_url_fetch", True),
        ("CATTS_ALLOW_PRIVATE_URLS", "off", "allow_private_urls", False),
        ("CATTS_ALLOW_PRIVATE_URLS", "0", "allow_private_urls", False),
        ("CATTS_TOP_ETA", "0.1", "top_eta", 0.1),
        ("CATTS_TOP_ETA", "none", "top_eta", None),
        ("CATTS_NMLP_FLOOR", "null", "nmlp_floor", None),
        ("CATTS_STEP_FLOOR", "", "step_floor", None),
        ("CATTS_STEP_CALIBRATOR", "cal.json", "step_calibrator", "cal.json"),
        ("CATTS_STEP_CALIBRATOR", "None", "step_calibrator", None),
        ("CATTS_POLICY", "paper", "policy", "paper"),
        ("CATTS_SCORE_SCALE", " literal", "score_scale", "literal"),
        (
            "CATTS_DISABLED_MODULES",
            "self_reflection, step_repair,",
            "disabled_modules",
            ("self_reflection", "step_repair"),
        ),
        ("CATTS_DISABLED_MODULES", "", "disabled_modules", ()),
    ],
)
def test_each_kind_of_field_is_read_from_its_variable(variable, raw, field, value):
    config = CATTSConfig.from_env({variable: raw})
    assert getattr(config, field) == value
    assert type(getattr(config, field)) is type(value)
    assert config == CATTSConfig(**{field: value})


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("CATTS_N_SAMPLES", "many", "n_samples must be an integer, got 'many'"),
        ("CATTS_N_SAMPLES", "2.5", "n_samples must be an integer, got '2.5'"),
        ("CATTS_N_SAMPLES", "0", "n_samples must be an integer >= 1, got '0'"),
        ("CATTS_TAU1", "half", "tau1 must be a finite number, got 'half'"),
        ("CATTS_TAU2", "2", r"tau2 must be in \[0, 1\], got '2'"),
        ("CATTS_TAU1", "-1", r"tau1 must be >= 0, got '-1'"),
        ("CATTS_TEMPERATURE", "inf", "temperature must be a finite number"),
        ("CATTS_ALLOW_URL_FETCH", "maybe", "allow_url_fetch must be True or False, got 'maybe'"),
        ("CATTS_TOP_ETA", "0", r"top_eta must be in \(0, 1\] or None \(off\)"),
        ("CATTS_POLICY", "random", "policy must be one of 'adaptive', 'paper' or 'expert', got 'random'"),
        ("CATTS_DISABLED_MODULES", "critic", r"disabled_modules\[0\] must be one of"),
        ("CATTS_WEIGHTING", "tail", "weighting='tail' needs token confidence"),
        ("CATTS_N_SAMPLES", "64", r"max_samples \(32\) must be >= n_samples \(64\)"),
    ],
)
def test_a_bad_variable_is_an_error_naming_it_and_the_field(variable, raw, message):
    with pytest.raises(ConfigError, match=f"^{variable}={re.escape(repr(raw))}: {message}"):
        CATTSConfig.from_env({variable: raw})


def test_the_environment_applies_over_a_base_and_names_every_variable_a_rule_read():
    base = CATTSConfig(n_samples=4, max_samples=64)
    assert CATTSConfig.from_env({"CATTS_N_SAMPLES": "64"}, base=base).max_samples == 64
    with pytest.raises(ConfigError, match=r"^CATTS_MAX_SAMPLES='2', CATTS_N_SAMPLES='3': max_samples \(2\)"):
        CATTSConfig.from_env({"CATTS_N_SAMPLES": "3", "CATTS_MAX_SAMPLES": "2"})
    assert CATTSConfig.from_env({"CATTS_UNRELATED": "x", "OTHER": "y"}) == CATTSConfig()


# -- the schema: the CLI's table and Studio's panel --------------------------------------------------


def test_describe_gives_every_field_in_order_with_its_default_and_description():
    rows = CATTSConfig.describe()
    assert [name for name, _, _ in rows] == FIELDS
    assert rows[0] == ("policy", "'adaptive'", "How the planner routes: 'adaptive', 'paper' or 'expert'.")
    assert ("top_eta", "None", CATTSConfig.model_fields["top_eta"].description) in rows
    assert ("disabled_modules", "()", CATTSConfig.model_fields["disabled_modules"].description) in rows
    assert all(description for _, _, description in rows)


def test_field_docs_give_types_and_bounds_from_the_schema():
    docs = {doc.name: doc for doc in CATTSConfig.field_docs()}
    assert list(docs) == FIELDS
    assert docs["n_samples"][1:4] == ("integer", "8", ">= 1")
    assert docs["top_p"][1:4] == ("number", "1.0", "(0, 1]")
    assert docs["tau2"].bounds == "[0, 1]"
    assert docs["tau1"].bounds == ">= 0"
    assert docs["noise_step"].bounds == "[0, 1000)"
    assert docs["top_eta"][1:4] == ("number | null", "None", "(0, 1]")
    assert docs["policy"][1:4] == ("string", "'adaptive'", "'adaptive' | 'paper' | 'expert'")
    assert docs["disabled_modules"][1:3] == ("list of string", "()")
    assert docs["disabled_modules"].bounds.startswith("'self_consistency' | 'self_reflection' | ")
    assert docs["step_calibrator"].type == "string | null"
    assert docs["allow_url_fetch"][1:4] == ("boolean", "False", "")


def test_catts_config_prints_types_bounds_and_descriptions(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if "│ n_samples " in line)
    assert re.search(r"n_samples\s+│ integer\s+│ 8\s+│ >= 1\s+│ Samples drawn in the first wave", row)
    row = next(line for line in lines if "│ top_p " in line)
    assert re.search(r"top_p\s+│ number\s+│ 1.0\s+│ \(0, 1\]\s+│ Nucleus sampling mass", row)


def test_the_graphs_context_schema_lists_every_field_with_its_description_and_bounds():
    """What Studio's configuration panel shows (LangGraph makes it from the context schema)."""
    schema = build_graph(ScriptedVLM.answering("\\boxed{1}")).get_context_jsonschema()
    properties = schema["properties"]
    assert list(properties) == FIELDS
    for name, field in CATTSConfig.model_fields.items():
        assert properties[name]["description"] == field.description, name
        # No defaults: a field left empty keeps the graph's own config (from CATTS_* for Studio's).
        assert "default" not in properties[name], name
    assert schema.get("required", []) == [] and schema["additionalProperties"] is False
    assert (properties["n_samples"]["type"], properties["n_samples"]["minimum"]) == ("integer", 1)
    assert (properties["tau2"]["minimum"], properties["tau2"]["maximum"]) == (0, 1)
    assert properties["tau1"]["minimum"] == 0 and "maximum" not in properties["tau1"]
    assert (properties["top_p"]["exclusiveMinimum"], properties["top_p"]["maximum"]) == (0, 1)
    assert properties["noise_step"]["exclusiveMaximum"] == 1000
    assert properties["policy"]["enum"] == ["adaptive", "paper", "expert"]
    assert {"type": "null"} in properties["top_eta"]["anyOf"]
    assert {"exclusiveMinimum": 0, "maximum": 1, "type": "number"} in properties["top_eta"]["anyOf"]
    assert properties["disabled_modules"]["items"]["enum"] == [
        "self_consistency",
        "self_reflection",
        "visual_self_check",
        "step_repair",
    ]
    assert properties["allow_url_fetch"]["type"] == "boolean"


def test_a_context_mapping_overrides_single_fields_of_the_graphs_config(image_path):
    vlm = ScriptedVLM.answering("\\boxed{1}")
    graph = build_graph(vlm, config=CATTSConfig(n_samples=2, max_samples=64))
    # n_samples=40 is fine over the graph's max_samples=64 (over the class default of 32 it is not).
    result = graph.invoke({"image": image_path, "question": "Q"}, context={"n_samples": 40})
    assert len(result["samples"]) == 40
    with pytest.raises(ConfigError, match=r"^n_sampels is not a CATTSConfig field \(did you mean n_samples"):
        graph.invoke({"image": image_path, "question": "Q"}, context={"n_sampels": 4})
