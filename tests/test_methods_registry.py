"""methods.registry: the method names are conf/method/*.yaml, and create_method builds from those yamls."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from methods import create_method, list_methods
from methods.__main__ import main
from methods.base import CompressionMethod, MethodConfigError
from methods.registry import method_config, method_info

CONF_METHOD = Path(__file__).resolve().parents[1] / "conf" / "method"
YAMLS = sorted(p.stem for p in CONF_METHOD.glob("*.yaml"))


def test_the_names_are_the_method_yamls_and_a_pattern_filters_them():
    assert YAMLS and list_methods() == YAMLS
    assert list_methods("*fixed_point") == ["dynamic_fixed_point", "fixed_point"]
    assert list_methods("no_such_*") == []


@pytest.mark.parametrize("name", YAMLS)
def test_every_method_builds_from_its_yaml_alone(name):
    method = create_method(name)
    target = yaml.safe_load((CONF_METHOD / f"{name}.yaml").read_text())["_target_"]
    assert isinstance(method, CompressionMethod) and method.name == name
    assert f"{type(method).__module__}.{type(method).__qualname__}" == target


def test_create_method_builds_the_method_a_run_composes(compose_cfg):
    """Same yaml, same overrides: the method equals the one `+method=magnitude method.sparsity=0.9` instantiates."""
    from hydra.utils import instantiate

    run = instantiate(compose_cfg("+method=magnitude", "method.sparsity=0.9", "method.iterations=3").method,
                      _convert_="all")
    assert vars(create_method("magnitude", sparsity=0.9, iterations=3)) == vars(run)
    assert vars(create_method("magnitude")) != vars(run)


def test_the_yaml_not_the_class_gives_the_defaults():
    yaml_sparsity = yaml.safe_load((CONF_METHOD / "magnitude.yaml").read_text())["sparsity"]
    method = create_method("magnitude")
    assert vars(method) == vars(create_method("magnitude", sparsity=yaml_sparsity))
    assert vars(method) != vars(type(method)(name="magnitude"))  # the class's own defaults differ from the yaml's


def test_a_nested_override_keeps_the_yamls_other_nested_keys():
    cfg = method_config("compactnet", finetune={"lr": 0.5})
    defaults = yaml.safe_load((CONF_METHOD / "compactnet.yaml").read_text())["finetune"]
    assert cfg.finetune == {**defaults, "lr": 0.5}


def test_an_unknown_name_lists_the_available_ones_and_suggests_the_closest():
    with pytest.raises(MethodConfigError, match=r"unknown method 'magnitud' \(did you mean 'magnitude'\?\)") as err:
        create_method("magnitud")
    assert all(name in str(err.value) for name in YAMLS)


def test_an_unknown_key_names_it_and_the_valid_ones():
    with pytest.raises(MethodConfigError, match=r"no key\(s\) \['sparsty'\]; its keys: name, sparsity"):
        create_method("magnitude", sparsty=0.3)


def test_a_value_the_method_rejects_raises_its_own_error_naming_the_key():
    with pytest.raises(MethodConfigError, match=r"method\.sparsity must be in \[0, 1\)"):
        create_method("magnitude", sparsity=1.5)


def test_info_reads_family_and_summary_from_the_module_without_building():
    info = method_info("magnitude")
    assert (info.family, info.target) == ("pruning", "methods.pruning.magnitude.MagnitudePruning")
    assert info.summary.startswith("Magnitude pruning: Han") and "\n" not in info.summary
    assert method_info("baseline").family == ""


def test_cli_lists_every_method_with_family_and_summary(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == YAMLS
    ptq = next(line for line in lines if line.startswith("ptq "))
    assert ptq.split()[1] == "quantization" and "Post-training" in ptq


def test_cli_show_applies_dotted_overrides_and_refuses_a_bad_name(capsys):
    assert main(["show", "compactnet", "finetune.lr=0.5"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["finetune"]["lr"] == 0.5 and shown["_target_"] == "methods.pruning.compactnet.CompactNet"
    with pytest.raises(SystemExit) as exit_:
        main(["show", "no_such_method"])
    assert exit_.value.code == 2 and "unknown method 'no_such_method'" in capsys.readouterr().err
